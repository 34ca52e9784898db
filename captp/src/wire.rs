//! Cap'n Proto RPC level-1 messages as plain Rust values, and their codec.
//!
//! The wire types are capnp-rpc's (`capnp_rpc::rpc_capnp`); payloads are the
//! structs of `exo.capnp`. Decoding checks every limit in [`Limits`] and
//! never panics on any input: a frame is either a [`Message`] or a
//! [`WireError`] naming what is wrong.
//!
//! A payload's capabilities are pointers into the message's cap table. The
//! codec keeps them as indexes into [`Call::caps`] / [`ReturnOutcome::Results`]
//! (descriptors), so nothing here holds a live capability.

use capnp::message::{Builder, HeapAllocator, ReaderOptions};
use capnp::private::capability::ClientHook;
use capnp::private::layout::CapTable;
use capnp::traits::{HasTypeId, Imbue, ImbueMut};
use capnp_rpc::rpc_capnp::{
    cap_descriptor, disembargo, exception, message, message_target, payload, promised_answer,
    return_,
};

use crate::exo_capnp::{exo, gate};

/// The bounds a decoded frame must keep. Each has a name the errors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame, header included (`frame_bytes_max`).
    pub frame_bytes_max: usize,
    /// The most segments in a frame (`segments_max`).
    pub segments_max: usize,
    /// How deep structs and lists may nest (`nesting_depth_max`).
    pub nesting_depth_max: i32,
    /// How many words a decode may visit (`traversal_words_max`): bounds
    /// amplification through shared pointers.
    pub traversal_words_max: usize,
    /// The most capabilities in one payload (`cap_table_max`).
    pub cap_table_max: usize,
    /// The most operations in a promised answer's transform (`transform_ops_max`).
    pub transform_ops_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 1 << 20,
            segments_max: 64,
            nesting_depth_max: 32,
            traversal_words_max: 1 << 18,
            cap_table_max: 256,
            transform_ops_max: 8,
        }
    }
}

/// A frame that is not an acceptable message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds frame_bytes_max ({1})")]
    FrameTooLarge(usize, usize),
    #[error("frame has {0} segments, more than segments_max ({1})")]
    TooManySegments(usize, usize),
    #[error("payload has {0} capabilities, more than cap_table_max ({1})")]
    TooManyCaps(usize, usize),
    #[error("transform has {0} operations, more than transform_ops_max ({1})")]
    TransformTooLong(usize, usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl From<capnp::Error> for WireError {
    fn from(e: capnp::Error) -> Self {
        WireError::Malformed(e.to_string())
    }
}

impl From<capnp::NotInSchema> for WireError {
    fn from(e: capnp::NotInSchema) -> Self {
        WireError::Malformed(format!("unknown union member {}", e.0))
    }
}

impl From<std::str::Utf8Error> for WireError {
    fn from(e: std::str::Utf8Error) -> Self {
        WireError::Malformed(format!("text is not UTF-8: {e}"))
    }
}

/// Where a call or disembargo goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An export of the receiver.
    Imported(u32),
    /// A field of the results of a question the sender asked the receiver:
    /// each number is a pointer field index, applied in order.
    Answer { question: u32, transform: Vec<u16> },
}

/// A capability in a payload's cap table, as its sender describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapDescriptor {
    None,
    SenderHosted(u32),
    SenderPromise(u32),
    ReceiverHosted(u32),
    ReceiverAnswer { question: u32, transform: Vec<u16> },
}

/// Smallcaps capdata whose slot `i` is cap-table entry `caps[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body {
    pub body: String,
    pub caps: Vec<u32>,
}

/// What a call asks, by interface and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallContent {
    /// `Exo.call`.
    Exo { method: String, args: Body },
    /// `Gate.restore`.
    Restore { swiss: String },
    /// `Gate.hello`.
    Hello { did: String, nonce: Vec<u8> },
    /// `Gate.prove`.
    Prove { signature: Vec<u8>, received: u64 },
    /// `Gate.ack`.
    Ack { received: u64 },
    /// Any other interface or method: answered with an exception.
    Unknown { interface_id: u64, method_id: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub question: u32,
    pub target: Target,
    pub content: CallContent,
    pub caps: Vec<CapDescriptor>,
}

/// What the results of a question are expected to be; the decoder needs it
/// because a `Return` does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnKind {
    Exo,
    Bootstrap,
    Restore,
    Hello,
    Prove,
    Empty,
}

/// A return's results, by the kind of question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultContent {
    /// `Exo.call`'s results; `object` is the cap-table index of the result
    /// when it is a single reference.
    Exo {
        result: Body,
        object: Option<u32>,
    },
    /// A bootstrap answer: the capability itself.
    Bootstrap(Option<u32>),
    /// `Gate.restore`'s results.
    Restored(Option<u32>),
    Hello {
        did: String,
        nonce: Vec<u8>,
        signature: Vec<u8>,
    },
    Prove {
        received: u64,
    },
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnOutcome {
    Results {
        content: ResultContent,
        caps: Vec<CapDescriptor>,
    },
    Exception(String),
    Canceled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Return {
    pub answer: u32,
    pub release_param_caps: bool,
    pub no_finish_needed: bool,
    pub outcome: ReturnOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Embargo {
    SenderLoopback(u32),
    ReceiverLoopback(u32),
}

/// One Cap'n Proto RPC message, level 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Bootstrap {
        question: u32,
    },
    Call(Call),
    Return(Return),
    Finish {
        question: u32,
        release_result_caps: bool,
    },
    Resolve {
        promise: u32,
        resolution: Result<CapDescriptor, String>,
    },
    /// A promise the sender exported settled to data, not a capability
    /// (@endo/captp's `CTP_RESOLVE` with `res`); written over Cap'n Proto
    /// as a `Resolve` to an exception saying so.
    ResolveData {
        promise: u32,
        result: Body,
        caps: Vec<CapDescriptor>,
    },
    Release {
        id: u32,
        count: u32,
    },
    Disembargo {
        target: Target,
        context: Embargo,
    },
    Abort {
        reason: String,
    },
    /// The peer did not understand a message we sent; `call_question` is
    /// set when that message was a call (whose question then fails).
    Unimplemented {
        call_question: Option<u32>,
    },
    /// A message this engine does not implement (level 2 and up, results
    /// sent elsewhere, unknown kinds): to be echoed back as `unimplemented`.
    Unsupported {
        what: String,
        frame: Vec<u8>,
    },
}

/// A cap-table placeholder: it stands for descriptor `.0` and is never called.
struct CapIndex(u32);

impl ClientHook for CapIndex {
    fn add_ref(&self) -> Box<dyn ClientHook> {
        Box::new(CapIndex(self.0))
    }
    fn new_call(
        &self,
        _interface_id: u64,
        _method_id: u16,
        _size_hint: Option<capnp::MessageSize>,
    ) -> capnp::capability::Request<capnp::any_pointer::Owned, capnp::any_pointer::Owned> {
        panic!("captp invariant: cap-table placeholders are never called")
    }
    fn call(
        &self,
        _interface_id: u64,
        _method_id: u16,
        _params: Box<dyn capnp::private::capability::ParamsHook>,
        _results: Box<dyn capnp::private::capability::ResultsHook>,
    ) -> capnp::capability::Promise<(), capnp::Error> {
        panic!("captp invariant: cap-table placeholders are never called")
    }
    fn get_brand(&self) -> usize {
        0
    }
    fn get_ptr(&self) -> usize {
        self.0 as usize
    }
    fn get_resolved(&self) -> Option<Box<dyn ClientHook>> {
        None
    }
    fn when_more_resolved(
        &self,
    ) -> Option<capnp::capability::Promise<Box<dyn ClientHook>, capnp::Error>> {
        None
    }
    fn when_resolved(&self) -> capnp::capability::Promise<(), capnp::Error> {
        capnp::capability::Promise::ok(())
    }
}

fn placeholder_table(len: usize) -> CapTable {
    (0..len)
        .map(|i| Some(Box::new(CapIndex(i as u32)) as Box<dyn ClientHook>))
        .collect()
}

fn cap_index(hook: &dyn ClientHook, len: usize) -> Result<u32, WireError> {
    let index = hook.get_ptr();
    if index >= len {
        return Err(WireError::Malformed(format!(
            "capability index {index} outside the cap table ({len})"
        )));
    }
    Ok(index as u32)
}

fn text(reader: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, WireError> {
    Ok(reader?.to_str()?.to_owned())
}

/// Checks a frame's segment table against the limits before it is read
/// whole: `Some(total bytes)` once `header` holds all of the table.
pub fn frame_length(header: &[u8], limits: &Limits) -> Result<Option<usize>, WireError> {
    if header.len() < 4 {
        return Ok(None);
    }
    let segments = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize + 1;
    if segments > limits.segments_max {
        return Err(WireError::TooManySegments(segments, limits.segments_max));
    }
    // The table: a count, one size per segment, padded to a whole word.
    let table_bytes = (4 + 4 * segments).div_ceil(8) * 8;
    if header.len() < 4 + 4 * segments {
        return Ok(None);
    }
    let mut words: usize = 0;
    for i in 0..segments {
        let at = 4 + 4 * i;
        let size = u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes")) as usize;
        words = words.saturating_add(size);
    }
    let total = table_bytes.saturating_add(words.saturating_mul(8));
    if total > limits.frame_bytes_max {
        return Err(WireError::FrameTooLarge(total, limits.frame_bytes_max));
    }
    Ok(Some(total))
}

/// Decodes one frame. `returns` says what each of our questions expects,
/// for `Return` messages (`None`: a question we never asked).
pub fn decode(
    frame: &[u8],
    limits: &Limits,
    returns: &dyn Fn(u32) -> Option<ReturnKind>,
) -> Result<Message, WireError> {
    match frame_length(frame, limits)? {
        Some(total) if total == frame.len() => {}
        Some(total) => {
            return Err(WireError::Malformed(format!(
                "frame is {} bytes, its segment table says {total}",
                frame.len()
            )));
        }
        None => return Err(WireError::Malformed("truncated segment table".into())),
    }
    let options = *ReaderOptions::new()
        .nesting_limit(limits.nesting_depth_max)
        .traversal_limit_in_words(Some(limits.traversal_words_max));
    let mut slice = frame;
    let reader = capnp::serialize::read_message_from_flat_slice(&mut slice, options)?;
    let root: message::Reader = reader.get_root()?;
    read_message(root, frame, limits, returns)
}

/// A message this codec does not carry, kept to echo as `unimplemented`.
fn unsupported(what: &str, frame: &[u8]) -> Message {
    Message::Unsupported {
        what: what.to_owned(),
        frame: frame.to_vec(),
    }
}

/// One function per message kind: the root of a frame, read.
fn read_message(
    root: message::Reader<'_>,
    frame: &[u8],
    limits: &Limits,
    returns: &dyn Fn(u32) -> Option<ReturnKind>,
) -> Result<Message, WireError> {
    Ok(match root.which()? {
        message::Bootstrap(b) => Message::Bootstrap {
            question: b?.get_question_id(),
        },
        message::Call(call) => read_call(call?, frame, limits)?,
        message::Return(ret) => read_return(ret?, frame, limits, returns)?,
        message::Finish(f) => {
            let f = f?;
            Message::Finish {
                question: f.get_question_id(),
                release_result_caps: f.get_release_result_caps(),
            }
        }
        message::Resolve(r) => {
            let r = r?;
            let resolution = match r.which()? {
                capnp_rpc::rpc_capnp::resolve::Cap(cap) => Ok(read_descriptor(cap?, limits)?),
                capnp_rpc::rpc_capnp::resolve::Exception(e) => Err(text(e?.get_reason())?),
            };
            Message::Resolve {
                promise: r.get_promise_id(),
                resolution,
            }
        }
        message::Release(r) => {
            let r = r?;
            Message::Release {
                id: r.get_id(),
                count: r.get_reference_count(),
            }
        }
        message::Disembargo(d) => read_disembargo(d?, frame, limits)?,
        message::Abort(e) => Message::Abort {
            reason: text(e?.get_reason())?,
        },
        message::Unimplemented(original) => {
            let call_question = match original?.which() {
                Ok(message::Call(Ok(call))) => Some(call.get_question_id()),
                _ => None,
            };
            Message::Unimplemented { call_question }
        }
        message::ObsoleteSave(_) | message::ObsoleteDelete(_) => {
            unsupported("obsolete message", frame)
        }
        message::Provide(_) | message::Accept(_) | message::Join(_) => {
            unsupported("level-3 message", frame)
        }
    })
}

fn read_call(
    call: capnp_rpc::rpc_capnp::call::Reader<'_>,
    frame: &[u8],
    limits: &Limits,
) -> Result<Message, WireError> {
    if !matches!(
        call.get_send_results_to().which()?,
        capnp_rpc::rpc_capnp::call::send_results_to::Caller(())
    ) {
        return Ok(unsupported("call with results sent elsewhere", frame));
    }
    let target = read_target(call.get_target()?, limits)?;
    let params = call.get_params()?;
    let caps = read_cap_table(params, limits)?;
    let table = placeholder_table(caps.len());
    let mut content = params.get_content();
    content.imbue(&table);
    let content = read_call_content(
        call.get_interface_id(),
        call.get_method_id(),
        content,
        caps.len(),
    )?;
    Ok(Message::Call(Call {
        question: call.get_question_id(),
        target,
        content,
        caps,
    }))
}

/// A call's parameters, by interface and method: `Exo.call`, the gate's
/// methods, or an unknown method (answered `unimplemented`).
fn read_call_content(
    interface_id: u64,
    method_id: u16,
    content: capnp::any_pointer::Reader<'_>,
    caps: usize,
) -> Result<CallContent, WireError> {
    let unknown = CallContent::Unknown {
        interface_id,
        method_id,
    };
    if interface_id == exo::Client::TYPE_ID {
        if method_id != 0 {
            return Ok(unknown);
        }
        let p: exo::call_params::Reader = content.get_as()?;
        return Ok(CallContent::Exo {
            method: text(p.get_method())?,
            args: read_body(p.get_args()?, caps)?,
        });
    }
    if interface_id != gate::Client::TYPE_ID {
        return Ok(unknown);
    }
    Ok(match method_id {
        0 => {
            let p: gate::restore_params::Reader = content.get_as()?;
            CallContent::Restore {
                swiss: text(p.get_swiss())?,
            }
        }
        1 => {
            let p: gate::hello_params::Reader = content.get_as()?;
            CallContent::Hello {
                did: text(p.get_did())?,
                nonce: p.get_nonce()?.to_vec(),
            }
        }
        2 => {
            let p: gate::prove_params::Reader = content.get_as()?;
            CallContent::Prove {
                signature: p.get_signature()?.to_vec(),
                received: p.get_received(),
            }
        }
        3 => {
            let p: gate::ack_params::Reader = content.get_as()?;
            CallContent::Ack {
                received: p.get_received(),
            }
        }
        _ => unknown,
    })
}

fn read_return(
    ret: return_::Reader<'_>,
    frame: &[u8],
    limits: &Limits,
    returns: &dyn Fn(u32) -> Option<ReturnKind>,
) -> Result<Message, WireError> {
    let answer = ret.get_answer_id();
    let outcome = match ret.which()? {
        return_::Results(results) => {
            let results = results?;
            let caps = read_cap_table(results, limits)?;
            let table = placeholder_table(caps.len());
            let mut content = results.get_content();
            content.imbue(&table);
            let kind = returns(answer).ok_or_else(|| {
                WireError::Malformed(format!("return for unknown question {answer}"))
            })?;
            let content = read_results(content, kind, caps.len())?;
            ReturnOutcome::Results { content, caps }
        }
        return_::Exception(e) => ReturnOutcome::Exception(text(e?.get_reason())?),
        return_::Canceled(()) => ReturnOutcome::Canceled,
        return_::ResultsSentElsewhere(())
        | return_::TakeFromOtherQuestion(_)
        | return_::AcceptFromThirdParty(_) => {
            return Ok(unsupported("return not carrying results", frame));
        }
    };
    Ok(Message::Return(Return {
        answer,
        release_param_caps: ret.get_release_param_caps(),
        no_finish_needed: ret.get_no_finish_needed(),
        outcome,
    }))
}

fn read_disembargo(
    d: disembargo::Reader<'_>,
    frame: &[u8],
    limits: &Limits,
) -> Result<Message, WireError> {
    let context = match d.get_context().which()? {
        disembargo::context::SenderLoopback(id) => Embargo::SenderLoopback(id),
        disembargo::context::ReceiverLoopback(id) => Embargo::ReceiverLoopback(id),
        _ => return Ok(unsupported("level-3 disembargo", frame)),
    };
    Ok(Message::Disembargo {
        target: read_target(d.get_target()?, limits)?,
        context,
    })
}

fn read_transform(
    answer: promised_answer::Reader<'_>,
    limits: &Limits,
) -> Result<Vec<u16>, WireError> {
    let ops = answer.get_transform()?;
    if ops.len() as usize > limits.transform_ops_max {
        return Err(WireError::TransformTooLong(
            ops.len() as usize,
            limits.transform_ops_max,
        ));
    }
    let mut fields = Vec::new();
    for op in ops.iter() {
        match op.which()? {
            promised_answer::op::Noop(()) => {}
            promised_answer::op::GetPointerField(field) => fields.push(field),
        }
    }
    Ok(fields)
}

fn read_target(target: message_target::Reader<'_>, limits: &Limits) -> Result<Target, WireError> {
    Ok(match target.which()? {
        message_target::ImportedCap(id) => Target::Imported(id),
        message_target::PromisedAnswer(answer) => {
            let answer = answer?;
            Target::Answer {
                question: answer.get_question_id(),
                transform: read_transform(answer, limits)?,
            }
        }
    })
}

fn read_descriptor(
    cap: cap_descriptor::Reader<'_>,
    limits: &Limits,
) -> Result<CapDescriptor, WireError> {
    Ok(match cap.which()? {
        cap_descriptor::None(()) => CapDescriptor::None,
        cap_descriptor::SenderHosted(id) => CapDescriptor::SenderHosted(id),
        cap_descriptor::SenderPromise(id) => CapDescriptor::SenderPromise(id),
        cap_descriptor::ReceiverHosted(id) => CapDescriptor::ReceiverHosted(id),
        cap_descriptor::ReceiverAnswer(answer) => {
            let answer = answer?;
            CapDescriptor::ReceiverAnswer {
                question: answer.get_question_id(),
                transform: read_transform(answer, limits)?,
            }
        }
        cap_descriptor::ThirdPartyHosted(_) => {
            return Err(WireError::Malformed(
                "third-party capabilities (level 3) are not accepted".into(),
            ));
        }
    })
}

fn read_cap_table(
    payload: payload::Reader<'_>,
    limits: &Limits,
) -> Result<Vec<CapDescriptor>, WireError> {
    let table = payload.get_cap_table()?;
    if table.len() as usize > limits.cap_table_max {
        return Err(WireError::TooManyCaps(
            table.len() as usize,
            limits.cap_table_max,
        ));
    }
    table
        .iter()
        .map(|cap| read_descriptor(cap, limits))
        .collect()
}

fn read_body(data: crate::exo_capnp::cap_data::Reader<'_>, len: usize) -> Result<Body, WireError> {
    let caps = data.get_caps()?;
    let mut indexes = Vec::with_capacity(caps.len() as usize);
    for i in 0..caps.len() {
        let client = caps.get(i)?;
        indexes.push(cap_index(&*client.client.hook, len)?);
    }
    Ok(Body {
        body: text(data.get_body())?,
        caps: indexes,
    })
}

fn read_object(
    object: capnp::Result<exo::Client>,
    has: bool,
    len: usize,
) -> Result<Option<u32>, WireError> {
    if !has {
        return Ok(None);
    }
    Ok(Some(cap_index(&*object?.client.hook, len)?))
}

fn read_results(
    content: capnp::any_pointer::Reader<'_>,
    kind: ReturnKind,
    len: usize,
) -> Result<ResultContent, WireError> {
    Ok(match kind {
        ReturnKind::Exo => {
            let r: exo::call_results::Reader = content.get_as()?;
            ResultContent::Exo {
                result: read_body(r.get_result()?, len)?,
                object: read_object(r.get_object(), r.has_object(), len)?,
            }
        }
        ReturnKind::Bootstrap => {
            if content.is_null() {
                ResultContent::Bootstrap(None)
            } else {
                let client: exo::Client = content.get_as_capability()?;
                ResultContent::Bootstrap(Some(cap_index(&*client.client.hook, len)?))
            }
        }
        ReturnKind::Restore => {
            let r: gate::restore_results::Reader = content.get_as()?;
            ResultContent::Restored(read_object(r.get_object(), r.has_object(), len)?)
        }
        ReturnKind::Hello => {
            let r: gate::hello_results::Reader = content.get_as()?;
            ResultContent::Hello {
                did: text(r.get_did())?,
                nonce: r.get_nonce()?.to_vec(),
                signature: r.get_signature()?.to_vec(),
            }
        }
        ReturnKind::Prove => {
            let r: gate::prove_results::Reader = content.get_as()?;
            ResultContent::Prove {
                received: r.get_received(),
            }
        }
        ReturnKind::Empty => ResultContent::Empty,
    })
}

/// Encodes a message as one frame (the standard stream framing).
pub fn encode(message: &Message) -> Vec<u8> {
    if let Message::Unsupported { frame, .. } = message
        && let Some(echo) = echo_unimplemented(frame)
    {
        return echo;
    }
    let words = u32::try_from(first_segment_words(message)).unwrap_or(u32::MAX);
    let mut builder = Builder::new(HeapAllocator::new().first_segment_words(words));
    write_message(builder.init_root(), message);
    capnp::serialize::write_message_to_words(&builder)
}

/// Words of any message's fixed parts (its root, target, payload and
/// their pointers, a text's padding): what [`first_segment_words`] adds
/// to the message's text and bytes.
const MESSAGE_FIXED_WORDS: usize = 48;

/// Words of one capability descriptor in a payload's cap table.
const WORDS_PER_CAP: usize = 3;

/// The first segment for `message`: enough for it to be one segment,
/// and no more to zero. capnp's default first segment is 8 KB, allocated
/// and zeroed for every frame: a third of encoding a small call. A message
/// larger than this (an estimate) takes a second segment.
fn first_segment_words(message: &Message) -> usize {
    let body = |body: &Body| body.body.len() + 8 * body.caps.len();
    let (bytes, caps) = match message {
        Message::Call(call) => {
            let content = match &call.content {
                CallContent::Exo { method, args } => method.len() + body(args),
                CallContent::Restore { swiss } => swiss.len(),
                CallContent::Hello { did, nonce } => did.len() + nonce.len(),
                CallContent::Prove { signature, .. } => signature.len(),
                _ => 0,
            };
            (content, call.caps.len())
        }
        Message::Return(ret) => match &ret.outcome {
            ReturnOutcome::Results { content, caps } => {
                let content = match content {
                    ResultContent::Exo { result, .. } => body(result),
                    ResultContent::Hello {
                        did,
                        nonce,
                        signature,
                    } => did.len() + nonce.len() + signature.len(),
                    _ => 0,
                };
                (content, caps.len())
            }
            ReturnOutcome::Exception(reason) => (reason.len(), 0),
            ReturnOutcome::Canceled => (0, 0),
        },
        Message::ResolveData { result, caps, .. } => (body(result), caps.len()),
        Message::Resolve {
            resolution: Err(reason),
            ..
        }
        | Message::Abort { reason } => (reason.len(), 0),
        _ => (0, 0),
    };
    MESSAGE_FIXED_WORDS + bytes.div_ceil(8) + caps * WORDS_PER_CAP
}

/// One function per message kind: the message, written at `root`.
fn write_message(root: message::Builder<'_>, message: &Message) {
    match message {
        Message::Bootstrap { question } => {
            root.init_bootstrap().set_question_id(*question);
        }
        Message::Call(call) => write_call(root.init_call(), call),
        Message::Return(ret) => write_return(root.init_return(), ret),
        Message::Finish {
            question,
            release_result_caps,
        } => {
            let mut f = root.init_finish();
            f.set_question_id(*question);
            f.set_release_result_caps(*release_result_caps);
        }
        Message::Resolve {
            promise,
            resolution,
        } => {
            let mut r = root.init_resolve();
            r.set_promise_id(*promise);
            match resolution {
                Ok(cap) => write_descriptor(r.init_cap(), cap),
                Err(reason) => write_exception(r.init_exception(), reason),
            }
        }
        // Cap'n Proto resolves promises to capabilities only: it says so.
        Message::ResolveData { promise, .. } => {
            let mut r = root.init_resolve();
            r.set_promise_id(*promise);
            write_exception(
                r.init_exception(),
                "the promise settled to data, not a capability",
            );
        }
        Message::Release { id, count } => {
            let mut r = root.init_release();
            r.set_id(*id);
            r.set_reference_count(*count);
        }
        Message::Disembargo { target, context } => {
            let mut d = root.init_disembargo();
            write_target(d.reborrow().init_target(), target);
            match context {
                Embargo::SenderLoopback(id) => d.init_context().set_sender_loopback(*id),
                Embargo::ReceiverLoopback(id) => d.init_context().set_receiver_loopback(*id),
            }
        }
        Message::Abort { reason } => write_exception(root.init_abort(), reason),
        // Nothing of ours to echo (or an unsupported frame that cannot be
        // copied): an empty unimplemented message.
        Message::Unimplemented { .. } | Message::Unsupported { .. } => {
            root.init_unimplemented();
        }
    }
}

fn write_call(mut c: capnp_rpc::rpc_capnp::call::Builder<'_>, call: &Call) {
    let mut table: CapTable = Vec::new();
    c.set_question_id(call.question);
    write_target(c.reborrow().init_target(), &call.target);
    c.reborrow().init_send_results_to().set_caller(());
    let (interface_id, method_id) = match &call.content {
        CallContent::Exo { .. } => (exo::Client::TYPE_ID, 0),
        CallContent::Restore { .. } => (gate::Client::TYPE_ID, 0),
        CallContent::Hello { .. } => (gate::Client::TYPE_ID, 1),
        CallContent::Prove { .. } => (gate::Client::TYPE_ID, 2),
        CallContent::Ack { .. } => (gate::Client::TYPE_ID, 3),
        CallContent::Unknown {
            interface_id,
            method_id,
        } => (*interface_id, *method_id),
    };
    c.set_interface_id(interface_id);
    c.set_method_id(method_id);
    let mut params = c.init_params();
    {
        let mut content = params.reborrow().init_content();
        content.imbue_mut(&mut table);
        write_call_content(content, &call.content);
    }
    write_cap_table(params, &reorder_caps(&table, &call.caps));
}

fn write_call_content(content: capnp::any_pointer::Builder<'_>, call: &CallContent) {
    match call {
        CallContent::Exo { method, args } => {
            let mut p = content.init_as::<exo::call_params::Builder>();
            p.set_method(method);
            write_body(p.init_args(), args);
        }
        CallContent::Restore { swiss } => {
            content
                .init_as::<gate::restore_params::Builder>()
                .set_swiss(swiss);
        }
        CallContent::Hello { did, nonce } => {
            let mut p = content.init_as::<gate::hello_params::Builder>();
            p.set_did(did);
            p.set_nonce(nonce);
        }
        CallContent::Prove {
            signature,
            received,
        } => {
            let mut p = content.init_as::<gate::prove_params::Builder>();
            p.set_signature(signature);
            p.set_received(*received);
        }
        CallContent::Ack { received } => {
            content
                .init_as::<gate::ack_params::Builder>()
                .set_received(*received);
        }
        CallContent::Unknown { .. } => {}
    }
}

fn write_return(mut r: return_::Builder<'_>, ret: &Return) {
    r.set_answer_id(ret.answer);
    r.set_release_param_caps(ret.release_param_caps);
    r.set_no_finish_needed(ret.no_finish_needed);
    match &ret.outcome {
        ReturnOutcome::Results { content, caps } => {
            let mut table: CapTable = Vec::new();
            let mut results = r.init_results();
            {
                let mut any = results.reborrow().init_content();
                any.imbue_mut(&mut table);
                write_results(any, content);
            }
            write_cap_table(results, &reorder_caps(&table, caps));
        }
        ReturnOutcome::Exception(reason) => {
            write_exception(r.init_exception(), reason);
        }
        ReturnOutcome::Canceled => r.set_canceled(()),
    }
}

/// `unimplemented` carrying a copy of `frame`'s message, if it can be copied
/// (a frame with capability pointers cannot be, without their table) within
/// the echo's bound (`echo_bytes_max`: no larger than the frame echoed, plus
/// [`ECHO_OVERHEAD_BYTES`]). The copy is read with a traversal limit of the
/// frame's own words, so pointers that share one blob cannot make an echo
/// many times the frame they came in.
fn echo_unimplemented(frame: &[u8]) -> Option<Vec<u8>> {
    let mut slice = frame;
    let words = frame.len() / 8 + 1;
    let options = *ReaderOptions::new().traversal_limit_in_words(Some(words));
    let original = capnp::serialize::read_message_from_flat_slice(&mut slice, options).ok()?;
    let mut builder = Builder::new_default();
    builder
        .init_root::<message::Builder>()
        .set_unimplemented(original.get_root::<message::Reader>().ok()?)
        .ok()?;
    let echo = capnp::serialize::write_message_to_words(&builder);
    (echo.len() <= frame.len() + ECHO_OVERHEAD_BYTES).then_some(echo)
}

/// What wrapping a message in `unimplemented` may add to its size.
const ECHO_OVERHEAD_BYTES: usize = 64;

/// The cap table as written: one descriptor per capability pointer, in the
/// order the pointers were set (a capability set twice appears twice).
fn reorder_caps(table: &CapTable, caps: &[CapDescriptor]) -> Vec<CapDescriptor> {
    table
        .iter()
        .map(|hook| {
            let index = hook
                .as_ref()
                .expect("captp invariant: the encoder only adds placeholders")
                .get_ptr();
            caps.get(index).cloned().unwrap_or_else(|| {
                panic!("captp invariant: a body's cap indexes are within its descriptors ({index})")
            })
        })
        .collect()
}

fn write_body(mut data: crate::exo_capnp::cap_data::Builder<'_>, body: &Body) {
    data.set_body(&body.body);
    let mut caps = data.init_caps(body.caps.len() as u32);
    for (i, index) in body.caps.iter().enumerate() {
        caps.set(i as u32, Box::new(CapIndex(*index)));
    }
}

fn write_results(content: capnp::any_pointer::Builder<'_>, results: &ResultContent) {
    match results {
        ResultContent::Exo { result, object } => {
            let mut r = content.init_as::<exo::call_results::Builder>();
            write_body(r.reborrow().init_result(), result);
            if let Some(index) = object {
                r.set_object(capnp::capability::FromClientHook::new(Box::new(CapIndex(
                    *index,
                ))));
            }
        }
        ResultContent::Bootstrap(object) => {
            if let Some(index) = object {
                let mut any = content;
                any.set_as_capability(Box::new(CapIndex(*index)));
            }
        }
        ResultContent::Restored(object) => {
            let mut r = content.init_as::<gate::restore_results::Builder>();
            if let Some(index) = object {
                r.set_object(capnp::capability::FromClientHook::new(Box::new(CapIndex(
                    *index,
                ))));
            }
        }
        ResultContent::Hello {
            did,
            nonce,
            signature,
        } => {
            let mut r = content.init_as::<gate::hello_results::Builder>();
            r.set_did(did);
            r.set_nonce(nonce);
            r.set_signature(signature);
        }
        ResultContent::Prove { received } => {
            content
                .init_as::<gate::prove_results::Builder>()
                .set_received(*received);
        }
        ResultContent::Empty => {
            // An empty struct: the results of a method that returns nothing.
            content.init_as::<gate::ack_results::Builder>();
        }
    }
}

fn write_target(mut builder: message_target::Builder<'_>, target: &Target) {
    match target {
        Target::Imported(id) => builder.set_imported_cap(*id),
        Target::Answer {
            question,
            transform,
        } => write_promised_answer(builder.init_promised_answer(), *question, transform),
    }
}

fn write_promised_answer(
    mut builder: promised_answer::Builder<'_>,
    question: u32,
    transform: &[u16],
) {
    builder.set_question_id(question);
    let mut ops = builder.init_transform(transform.len() as u32);
    for (i, field) in transform.iter().enumerate() {
        ops.reborrow().get(i as u32).set_get_pointer_field(*field);
    }
}

fn write_descriptor(mut builder: cap_descriptor::Builder<'_>, cap: &CapDescriptor) {
    match cap {
        CapDescriptor::None => builder.set_none(()),
        CapDescriptor::SenderHosted(id) => builder.set_sender_hosted(*id),
        CapDescriptor::SenderPromise(id) => builder.set_sender_promise(*id),
        CapDescriptor::ReceiverHosted(id) => builder.set_receiver_hosted(*id),
        CapDescriptor::ReceiverAnswer {
            question,
            transform,
        } => write_promised_answer(builder.init_receiver_answer(), *question, transform),
    }
}

fn write_cap_table(payload: payload::Builder<'_>, caps: &[CapDescriptor]) {
    let mut table = payload.init_cap_table(caps.len() as u32);
    for (i, cap) in caps.iter().enumerate() {
        write_descriptor(table.reborrow().get(i as u32), cap);
    }
}

fn write_exception(mut builder: exception::Builder<'_>, reason: &str) {
    builder.set_reason(reason);
    builder.set_type(exception::Type::Failed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(question: u32) -> Option<ReturnKind> {
        Some(match question {
            0 => ReturnKind::Bootstrap,
            1 => ReturnKind::Exo,
            2 => ReturnKind::Restore,
            3 => ReturnKind::Hello,
            4 => ReturnKind::Prove,
            5 => ReturnKind::Empty,
            _ => return None,
        })
    }

    fn samples() -> Vec<Message> {
        let caps = vec![
            CapDescriptor::SenderHosted(4),
            CapDescriptor::ReceiverAnswer {
                question: 9,
                transform: vec![1],
            },
        ];
        vec![
            Message::Bootstrap { question: 0 },
            Message::Call(Call {
                question: 12,
                target: Target::Answer {
                    question: 3,
                    transform: vec![1, 0],
                },
                content: CallContent::Exo {
                    method: "deposit".into(),
                    args: Body {
                        body: "#[\"$0.Alleged: purse\",\"$1.Alleged: x\"]".into(),
                        caps: vec![0, 1],
                    },
                },
                caps: caps.clone(),
            }),
            Message::Call(Call {
                question: 1,
                target: Target::Imported(0),
                content: CallContent::Restore {
                    swiss: "abc".into(),
                },
                caps: vec![],
            }),
            Message::Call(Call {
                question: 2,
                target: Target::Imported(0),
                content: CallContent::Hello {
                    did: "did:key:z6Mk".into(),
                    nonce: vec![1, 2, 3],
                },
                caps: vec![],
            }),
            Message::Return(Return {
                answer: 0,
                release_param_caps: false,
                no_finish_needed: false,
                outcome: ReturnOutcome::Results {
                    content: ResultContent::Bootstrap(Some(0)),
                    caps: vec![CapDescriptor::SenderHosted(0)],
                },
            }),
            Message::Return(Return {
                answer: 1,
                release_param_caps: true,
                no_finish_needed: false,
                outcome: ReturnOutcome::Results {
                    content: ResultContent::Exo {
                        result: Body {
                            body: "#\"$0.Alleged: counter\"".into(),
                            caps: vec![0],
                        },
                        object: Some(0),
                    },
                    caps: vec![CapDescriptor::SenderPromise(8)],
                },
            }),
            Message::Return(Return {
                answer: 2,
                release_param_caps: false,
                no_finish_needed: true,
                outcome: ReturnOutcome::Results {
                    content: ResultContent::Restored(Some(0)),
                    caps: vec![CapDescriptor::SenderHosted(5)],
                },
            }),
            Message::Return(Return {
                answer: 4,
                release_param_caps: false,
                no_finish_needed: false,
                outcome: ReturnOutcome::Results {
                    content: ResultContent::Prove { received: 77 },
                    caps: vec![],
                },
            }),
            Message::Return(Return {
                answer: 1,
                release_param_caps: false,
                no_finish_needed: false,
                outcome: ReturnOutcome::Exception("no such method".into()),
            }),
            Message::Finish {
                question: 4,
                release_result_caps: false,
            },
            Message::Resolve {
                promise: 3,
                resolution: Ok(CapDescriptor::SenderHosted(9)),
            },
            Message::Resolve {
                promise: 3,
                resolution: Err("broken".into()),
            },
            Message::Release { id: 5, count: 2 },
            Message::Disembargo {
                target: Target::Imported(3),
                context: Embargo::ReceiverLoopback(6),
            },
            Message::Abort {
                reason: "bye".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let frame = encode(&message);
            let decoded = decode(&frame, &Limits::default(), &kinds).unwrap();
            // The cap table is written in pointer order: a result whose
            // `object` repeats a body cap lists that descriptor twice.
            match (&message, &decoded) {
                (
                    Message::Return(Return {
                        outcome: ReturnOutcome::Results { caps, .. },
                        ..
                    }),
                    Message::Return(Return {
                        outcome: ReturnOutcome::Results { caps: got, .. },
                        ..
                    }),
                ) if caps.len() != got.len() => {
                    assert!(
                        got.iter().all(|c| caps.contains(c)),
                        "{message:?} -> {decoded:?}"
                    );
                }
                _ => assert_eq!(decoded, message),
            }
        }
    }

    /// How many segments `frame` has (the stream framing's first word).
    fn segments(frame: &[u8]) -> u32 {
        u32::from_le_bytes(frame[..4].try_into().unwrap()) + 1
    }

    #[test]
    fn frames_are_one_segment_whatever_their_payload() {
        let big = |bytes: usize, caps: u32| {
            Message::Call(Call {
                question: 3,
                target: Target::Imported(1),
                content: CallContent::Exo {
                    method: "store".into(),
                    args: Body {
                        body: "x".repeat(bytes),
                        caps: (0..caps).collect(),
                    },
                },
                caps: (0..caps).map(CapDescriptor::SenderHosted).collect(),
            })
        };
        let mut messages = samples();
        messages.extend([big(0, 0), big(100_000, 0), big(7, 200), big(5_000, 50)]);
        for message in messages {
            let frame = encode(&message);
            assert_eq!(segments(&frame), 1, "{message:?}");
            let decoded = decode(&frame, &Limits::default(), &kinds).unwrap();
            if let Message::Call(_) = message {
                assert_eq!(decoded, message);
            }
        }
    }

    #[test]
    fn limits_are_named_when_broken() {
        let many = Message::Call(Call {
            question: 1,
            target: Target::Imported(0),
            content: CallContent::Exo {
                method: "m".into(),
                args: Body {
                    body: "#[]".into(),
                    caps: (0..300).collect(),
                },
            },
            caps: (0..300).map(CapDescriptor::SenderHosted).collect(),
        });
        let err = decode(&encode(&many), &Limits::default(), &kinds).unwrap_err();
        assert!(err.to_string().contains("cap_table_max"), "{err}");

        let deep = Message::Call(Call {
            question: 1,
            target: Target::Answer {
                question: 2,
                transform: vec![0; 20],
            },
            content: CallContent::Exo {
                method: "m".into(),
                args: Body::default(),
            },
            caps: vec![],
        });
        let err = decode(&encode(&deep), &Limits::default(), &kinds).unwrap_err();
        assert!(err.to_string().contains("transform_ops_max"), "{err}");

        let big = Message::Abort {
            reason: "x".repeat(2 << 20),
        };
        let err = decode(&encode(&big), &Limits::default(), &kinds).unwrap_err();
        assert!(err.to_string().contains("frame_bytes_max"), "{err}");
    }

    #[test]
    fn returns_for_questions_never_asked_and_foreign_methods_are_told_apart() {
        let ret = encode(&Message::Return(Return {
            answer: 99,
            release_param_caps: false,
            no_finish_needed: false,
            outcome: ReturnOutcome::Results {
                content: ResultContent::Empty,
                caps: vec![],
            },
        }));
        let err = decode(&ret, &Limits::default(), &kinds).unwrap_err();
        assert!(err.to_string().contains("unknown question 99"), "{err}");
        let foreign = Message::Call(Call {
            question: 1,
            target: Target::Imported(0),
            content: CallContent::Unknown {
                interface_id: 0x1234,
                method_id: 2,
            },
            caps: vec![],
        });
        assert_eq!(
            decode(&encode(&foreign), &Limits::default(), &kinds).unwrap(),
            foreign
        );
    }

    /// A `provide` whose recipient is a list of `pointers` pointers to one
    /// blob of `blob_words` words (each pointer's offset aims at the same
    /// place): small on the wire, large when copied pointer by pointer.
    fn provide_sharing_one_blob(pointers: u64, blob_words: u64) -> Vec<u8> {
        let struct_pointer = |data: u64, ptrs: u64| (data << 32) | (ptrs << 48);
        let list_pointer =
            |offset: u64, size: u64, count: u64| 1 | (offset << 2) | (size << 32) | (count << 35);
        let mut words = vec![
            struct_pointer(1, 1),
            10, // Message.provide
            struct_pointer(1, 2),
            4, // questionId
            0, // target: null
            list_pointer(0, 6, pointers),
        ];
        let blob_at = 6 + pointers;
        for i in 0..pointers {
            words.push(list_pointer(blob_at - (6 + i + 1), 2, blob_words * 8));
        }
        words.extend(std::iter::repeat_n(
            0x4141_4141_4141_4141,
            blob_words as usize,
        ));
        let mut frame = 0u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&(words.len() as u32).to_le_bytes());
        for word in words {
            frame.extend_from_slice(&word.to_le_bytes());
        }
        frame
    }

    #[test]
    fn an_echo_is_never_larger_than_the_frame_it_echoes() {
        let frame = provide_sharing_one_blob(130, 1000);
        let decoded = decode(&frame, &Limits::default(), &kinds).unwrap();
        assert!(
            matches!(&decoded, Message::Unsupported { what, .. } if what == "level-3 message"),
            "{decoded:?}"
        );
        let echo = encode(&decoded);
        assert!(
            echo.len() <= frame.len() + ECHO_OVERHEAD_BYTES,
            "{} bytes echo {}",
            frame.len(),
            echo.len()
        );
        // A plain provide is still echoed in full.
        let plain = provide_sharing_one_blob(1, 10);
        let echo = encode(&decode(&plain, &Limits::default(), &kinds).unwrap());
        let mut slice = echo.as_slice();
        let echoed =
            capnp::serialize::read_message_from_flat_slice(&mut slice, ReaderOptions::new())
                .unwrap();
        let root: message::Reader = echoed.get_root().unwrap();
        assert!(
            matches!(root.which(), Ok(message::Unimplemented(Ok(inner))) if matches!(inner.which(), Ok(message::Provide(_))))
        );
    }

    #[test]
    fn corrupted_frames_are_errors_never_panics() {
        // Every single-byte corruption and every truncation of every sample.
        for message in samples() {
            let frame = encode(&message);
            for cut in 0..frame.len() {
                let _ = decode(&frame[..cut], &Limits::default(), &kinds);
            }
            for at in 0..frame.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = frame.clone();
                    bad[at] ^= flip;
                    if let Ok(Message::Unsupported { frame, .. }) =
                        decode(&bad, &Limits::default(), &kinds)
                    {
                        let _ = encode(&Message::Unsupported {
                            what: String::new(),
                            frame,
                        });
                    }
                }
            }
        }
    }
}
