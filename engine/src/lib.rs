//! The CapTP engine: a remote peer (`r<N>`) is an endpoint of the kernel,
//! beside the vats. This crate translates between the peer's references
//! (its Cap'n Proto questions, answers, imports and exports) and the
//! kernel's krefs. Its tables live in the kernel's store, changed inside
//! the kernel's cranks through [`kernel::Tables`] like a vat's c-list, so a
//! peer's references are counted like a vat's and nothing it is sent leaves
//! before the crank's commit.
//!
//! The API boundary: [`Membrane`] (the [`kernel::Endpoint`] the kernel
//! routes peer deliveries to; [`attach`] gives it to a kernel), [`Peers`]
//! (the peer operations on a kernel: frames in, sessions, sturdy refs,
//! listing), and [`node::Node`] (the network driver: connections, the
//! kernel handshake, output after commit).
//!
//! | key | value |
//! |---|---|
//! | `kernel.nextPeer` | next peer id |
//! | `r<N>.name`, `.state`, `.reason`, `.direction`, `.address` | the peer's record (`inbound`: it dialled us; `outbound`: we dialled it) |
//! | `r<N>.c.<kref>` / `r<N>.c.<ref>` | its c-list: `o+I`/`p+I` are the peer's exports to us (import id I), `o-E`/`p-E` ours to it (export id E) |
//! | `r<N>.ec.<E>` | how many times we sent export E (what the peer's `Release`s count down) |
//! | `r<N>.ic.<I>` | how many times the peer sent us its export I (what our `Release` says) |
//! | `r<N>.q.<Q>` | our question Q: JSON [`Question`] (its result promise holds a reference) |
//! | `r<N>.qk.<kp>` | the question whose result `kp` is |
//! | `r<N>.a.<A>` | the peer's question A: JSON [`Answer`] |
//! | `r<N>.ak.<kp>` | the answer `kp` settles |
//! | `r<N>.nextQuestion`, `.nextExport`, `.answers`, `.imports` | counters (answers open, imports held: each bounded) |
//! | `r<N>.did`, `peer.did.<did>` | a kernel peer (durable session) and its did:key |
//! | `r<N>.sent`, `.received`, `.out.<seq>` | session frames sent and applied; those sent but not yet acknowledged (hex) |
//! | `r<N>.lastSeen` | when a session's peer was last connected (unix seconds): it ends once away `session_away_max_s` |
//! | `peer.open.<rN>`, `peer.ended.<rN>` | peers live, and ended ones `vat peers` still shows (with when they ended); `peer.indexed` once both cover every peer |
//! | `sturdy.<swiss>` | the kref a sturdy ref restores (a reference, like a pet name) |
//!
//! On the wire every object is an `Exo` (`captp/schema/exo.capnp`); export 0
//! is the `Gate`, the bootstrap object, which reaches nothing but what a
//! sturdy ref's swiss number names.

use captp::wire::{
    self, Body, Call, CallContent, CapDescriptor, Embargo, Message as Wire, ResultContent, Return,
    ReturnOutcome, Target,
};
use serde::{Deserialize, Serialize};
use swingstore::StoreError;
use vom::{CapData, Value};

use kernel::{
    EndpointId, Kernel, KernelError, Kref, Message, PromiseState, Tables, TablesRef, error_capdata,
};

mod check;
mod endo;
mod keys;
mod net;
pub mod node;
mod peers;

pub use peers::Peers;

/// The export id of a kernel's `Gate` (its bootstrap object).
const GATE_EXPORT_ID: u32 = 0;
/// Questions a peer may have outstanding with us at once
/// (`answers_per_peer_max`): past it, calls are answered with an exception.
pub const ANSWERS_PER_PEER_MAX: u64 = 4096;
/// Distinct references a peer may hold from us or give us
/// (`references_per_peer_max`): past it, the connection is aborted.
pub const REFERENCES_PER_PEER_MAX: u64 = 1 << 16;
/// The pointer field of `Exo.call`'s results that holds the result when it
/// is a reference: the one field a call can be pipelined on.
const OBJECT_FIELD: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum QuestionKind {
    Exo,
    Bootstrap,
    Restore,
}

/// A question we asked the peer.
#[derive(Debug, Serialize, Deserialize)]
struct Question {
    kind: QuestionKind,
    /// The kernel promise the answer settles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Kref>,
    /// Exports sent in the call's parameters (released if the peer's
    /// `Return` says `releaseParamCaps`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exports: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum AnswerKind {
    Exo,
    Gate,
    Restored,
}

/// A question the peer asked us.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    kind: AnswerKind,
    /// The result promise (`exo`), or the restored object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kref: Option<Kref>,
    /// Why it failed, if it was answered with an exception: calls
    /// pipelined on it fail the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    broken: Option<String>,
    /// The peer sent `Finish` before we returned: the entry goes with the `Return`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    finished: bool,
}

impl Answer {
    fn new(kind: AnswerKind, kref: Option<Kref>) -> Answer {
        Answer {
            kind,
            kref,
            broken: None,
            finished: false,
        }
    }
}

/// How a session's connection is doing, as the network side last said
/// (memory only: it is about this process's connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerLink {
    Connecting,
    Connected,
    /// Down, and why.
    NotConnected(String),
}

impl std::fmt::Display for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerLink::Connecting => f.write_str("connecting"),
            PeerLink::Connected => f.write_str("connected"),
            PeerLink::NotConnected(why) => write!(f, "not connected: {why}"),
        }
    }
}

/// A peer as `vat peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: EndpointId,
    pub name: String,
    /// How it is, as `vat peers` shows it.
    pub state: String,
    /// Its connection is gone for good (a client peer, or a session ended).
    pub gone: bool,
    pub direction: String,
    pub references: usize,
}

/// What a peer did wrong: the connection is aborted with this reason.
#[derive(Debug)]
struct ProtocolError(String);

impl From<StoreError> for MembraneError {
    fn from(e: StoreError) -> Self {
        MembraneError::Kernel(e.into())
    }
}

impl From<KernelError> for MembraneError {
    fn from(e: KernelError) -> Self {
        MembraneError::Kernel(e)
    }
}

enum MembraneError {
    Protocol(ProtocolError),
    Kernel(KernelError),
}

fn protocol<T>(text: impl Into<String>) -> Result<T, MembraneError> {
    Err(MembraneError::Protocol(ProtocolError(text.into())))
}

type Result<T, E = MembraneError> = std::result::Result<T, E>;

/// `VAT_CAPTP_TRACE=1`: every frame in and out, decoded, on stderr (read once).
fn tracing_frames() -> bool {
    static TRACING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACING.get_or_init(|| std::env::var_os("VAT_CAPTP_TRACE").is_some())
}

/// The import or export id in a peer c-list ref (`o+3` -> 3).
fn ref_id(text: &str) -> u32 {
    text[2..].parse().unwrap_or_else(|_| {
        panic!("kernel invariant: peer c-list refs are <o|p><+|-><id> ({text})")
    })
}

/// Capdata for a single reference to `kref`.
fn reference_capdata(kref: &str) -> CapData {
    let r = vom::capdata::Ref::new(kref);
    if kref.starts_with("kp") {
        vom::capdata::encode(&Value::Promise(r))
    } else {
        vom::capdata::encode(&Value::Remotable(r))
    }
}

/// The engine the kernel routes peers' deliveries to. It keeps nothing
/// itself: every table is in the kernel's store, every frame it makes
/// leaves through the kernel's outbox.
#[derive(Debug, Default, Clone, Copy)]
pub struct Membrane;

/// Gives `kernel` the CapTP engine for its peers. A kernel that may hold
/// peers (any home's) gets it before it runs a crank.
pub fn attach(kernel: &mut Kernel) {
    kernel.attach(kernel::EndpointKind::Peer, Box::new(Membrane));
}

impl kernel::Endpoint for Membrane {
    fn deliver(
        &self,
        tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        target: &Kref,
        message: Message,
    ) -> Result<(), StoreError> {
        deliver_to_peer(tables, endpoint, target, message)
    }

    fn notify(
        &self,
        tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        kpid: &Kref,
    ) -> Result<(), StoreError> {
        notify_peer(tables, endpoint, kpid)
    }

    fn drop_export(
        &self,
        tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        ko: &Kref,
    ) -> Result<(), StoreError> {
        release_to_peer(tables, endpoint, ko)
    }

    fn input(
        &self,
        tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        input: &str,
    ) -> Result<(), StoreError> {
        let mut words = input.split(' ');
        let (Some("disembargo"), Some(export), Some(embargo), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            panic!("kernel invariant: the CapTP engine queues only disembargo inputs ({input:?})")
        };
        let parse = |n: &str| -> u32 {
            n.parse().unwrap_or_else(|_| {
                panic!("kernel invariant: disembargo ids are numbers ({input:?})")
            })
        };
        reflect_disembargo(tables, endpoint, parse(export), parse(embargo))
    }

    fn references_in_record(&self, _peer: &EndpointId, field: &str, value: &str) -> Vec<String> {
        check::references_in_record(field, value)
    }

    fn check_records(&self, tables: &TablesRef<'_>) -> Result<Vec<String>, StoreError> {
        check::check_records(tables)
    }
}

/// Whether `peer` is a kernel with a durable session (its frames are kept
/// in the store until acknowledged).
/// The wall clock in unix seconds (0 if it is before 1970).
fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_session(t: &TablesRef<'_>, peer: &str) -> Result<bool, StoreError> {
    Ok(t.get(&keys::record(&peer, "did"))?.is_some() && is_running(t, peer)?)
}

/// Whether `peer`'s connection is live (not terminated).
fn is_running(t: &TablesRef<'_>, peer: &str) -> Result<bool, StoreError> {
    Ok(t.get(&keys::record(&peer, "state"))?.as_deref() == Some("running"))
}

// ---- the peer's lifecycle (each a crank of its own) ----

/// Tells the peer why it is cut off (`Abort`) and terminates it.
fn abort_in_crank(
    t: &mut Tables<'_>,
    peer: &str,
    reason: &str,
    why: &str,
) -> Result<(), StoreError> {
    emit(
        t,
        peer,
        &Wire::Abort {
            reason: reason.to_owned(),
        },
    )?;
    terminate_peer(t, peer, why)
}

fn terminate_peer(t: &mut Tables<'_>, peer: &str, reason: &str) -> Result<(), StoreError> {
    t.set(&keys::record(&peer, "state"), "terminated")?;
    t.delete(&keys::peer_open(&peer))?;
    t.set(&keys::peer_ended(&peer), &unix_now_s().to_string())?;
    if let Some(did) = t.get(&keys::record(&peer, "did"))? {
        t.delete(&keys::peer_of_did(&did))?;
        for (key, _) in t.scan_prefix(&keys::prefix(&peer, "out."))? {
            t.delete(&key)?;
        }
    }
    t.set(&keys::record(&peer, "reason"), reason)?;
    let prefix = keys::prefix(&peer, "q.");
    for (key, _) in t.scan_prefix(&prefix)? {
        let question = key[prefix.len()..]
            .parse()
            .unwrap_or_else(|_| panic!("kernel invariant: {key} names a question number"));
        fail_question(t, peer, question, reason)?;
    }
    for (key, text) in t.scan_prefix(&keys::prefix(&peer, "a."))? {
        t.delete(&key)?;
        let answer: Answer = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kernel invariant: {key} is an answer: {e}"));
        if let Some(kref) = answer.kref {
            t.decref(&kref)?;
        }
    }
    for prefix in ["ak.", "ec.", "ic."] {
        for (key, _) in t.scan_prefix(&format!("{peer}.{prefix}"))? {
            t.delete(&key)?;
        }
    }
    t.delete(&keys::record(&peer, "answers"))?;
    t.delete(&keys::record(&peer, "imports"))?;
    // Promises it decided (imports of its promises) are rejected too.
    for (key, _) in t.scan_prefix(&keys::prefix(&peer, "c.kp"))? {
        let kpid = &key[keys::prefix(&peer, "c.").len()..];
        if t.promise_decider(kpid)?.as_deref() == Some(peer) {
            t.reject_if_unresolved(Some(kpid), reason)?;
        }
    }
    t.schedule_cleanup(peer)
}

fn enliven_in_crank(t: &mut Tables<'_>, peer: &str, swiss: &str) -> Result<Kref, KernelError> {
    let bootstrap = next_question(t, peer)?;
    put_question(
        t,
        peer,
        bootstrap,
        &Question {
            kind: QuestionKind::Bootstrap,
            result: None,
            exports: vec![],
        },
    )?;
    emit(
        t,
        peer,
        &Wire::Bootstrap {
            question: bootstrap,
        },
    )?;
    let kp = t.allocate_promise(Some(peer))?;
    t.pin(&kp)?;
    let restore = next_question(t, peer)?;
    put_question(
        t,
        peer,
        restore,
        &Question {
            kind: QuestionKind::Restore,
            result: Some(kp.clone()),
            exports: vec![],
        },
    )?;
    emit(
        t,
        peer,
        &Wire::Call(Call {
            question: restore,
            target: Target::Answer {
                question: bootstrap,
                transform: vec![],
            },
            content: CallContent::Restore {
                swiss: swiss.to_owned(),
            },
            caps: vec![],
        }),
    )?;
    Ok(kp)
}

// ---- frames in ----

/// Counts a session frame and applies it, in the current crank.
fn receive_in_crank(
    t: &mut Tables<'_>,
    peer: &str,
    decoded: Result<Wire, wire::WireError>,
) -> Result<()> {
    if is_session(&t.read(), peer)? {
        t.add_to_count(&keys::record(&peer, "received"), 1)?;
    }
    match decoded {
        Ok(message) => handle_message(t, peer, message),
        Err(e) => protocol(e.to_string()),
    }
}

/// One function per wire message: the peer's frame, applied to the tables.
fn handle_message(t: &mut Tables<'_>, peer: &str, message: Wire) -> Result<()> {
    match message {
        Wire::Bootstrap { question } => on_bootstrap(t, peer, question),
        Wire::Call(call) => handle_call(t, peer, call),
        Wire::Return(ret) => handle_return(t, peer, ret),
        Wire::Finish { question, .. } => on_finish(t, peer, question),
        Wire::Resolve {
            promise,
            resolution,
        } => {
            let settled = match resolution {
                Ok(cap) => Settled::Reference(cap),
                Err(reason) => Settled::Broken(reason),
            };
            on_resolve(t, peer, promise, settled)
        }
        Wire::ResolveData {
            promise,
            result,
            caps,
        } => on_resolve(t, peer, promise, Settled::Data(result, caps)),
        Wire::Release { id, count } => on_release(t, peer, id, count),
        Wire::Disembargo { target, context } => on_disembargo(t, peer, &target, context),
        Wire::Abort { reason } => protocol(format!("the peer aborted: {reason}")),
        Wire::Unimplemented { call_question } => {
            if let Some(question) = call_question {
                fail_question(t, peer, question, "the peer does not implement this call")?;
            }
            Ok(())
        }
        Wire::Unsupported { what, frame } => {
            emit(t, peer, &Wire::Unsupported { what, frame })?;
            Ok(())
        }
    }
}

/// The peer asks for our bootstrap object: the gate.
fn on_bootstrap(t: &mut Tables<'_>, peer: &str, question: u32) -> Result<()> {
    open_answer(t, peer, question, &Answer::new(AnswerKind::Gate, None))?;
    emit(
        t,
        peer,
        &return_results(
            question,
            ResultContent::Bootstrap(Some(0)),
            vec![CapDescriptor::SenderHosted(GATE_EXPORT_ID)],
        ),
    )?;
    Ok(())
}

/// The peer is done with its question `question`.
fn on_finish(t: &mut Tables<'_>, peer: &str, question: u32) -> Result<()> {
    let key = keys::answer(&peer, &question);
    if t.get(&key)?.is_none() {
        return protocol(format!("finish for unknown question {question}"));
    }
    let mut answer = answer(&t.read(), peer, question)?;
    let returned = match &answer.kref {
        Some(kp) if answer.kind == AnswerKind::Exo => {
            t.get(&keys::answer_of(&peer, &kp))?.is_none()
        }
        _ => true,
    };
    if returned {
        close_answer(t, peer, question)?;
    } else {
        answer.finished = true;
        let text = serde_json::to_string(&answer).expect("answers serialize");
        t.set(&key, &text)?;
    }
    Ok(())
}

/// What a promise the peer exported settled to.
enum Settled {
    Reference(CapDescriptor),
    /// Data, possibly holding references (JSON CapTP only).
    Data(Body, Vec<CapDescriptor>),
    Broken(String),
}

/// A promise the peer exported to us settled.
fn on_resolve(t: &mut Tables<'_>, peer: &str, promise: u32, settled: Settled) -> Result<()> {
    let vref = format!("p+{promise}");
    let Some(kp) = t.clist_kref(peer, &vref)? else {
        return protocol(format!("resolve for unknown promise {promise}"));
    };
    let (rejected, data) = match settled {
        Settled::Reference(cap) => {
            let kref = import_descriptor(t, peer, &cap)?;
            (false, reference_capdata(&kref))
        }
        Settled::Data(body, caps) => (false, capdata_from_peer(t, peer, body, &caps)?),
        Settled::Broken(reason) => (true, error_capdata(&reason)),
    };
    if t.promise_state(&kp)? == Some(PromiseState::Unresolved) {
        t.resolve(&kp, rejected, &data)?;
    }
    // The promise import is done with: release it.
    t.add_to_count(&keys::record(&peer, "imports"), -1)?;
    let count = t.count(&keys::import_count(&peer, &promise))?;
    t.delete(&keys::import_count(&peer, &promise))?;
    t.clist_remove(peer, &kp)?;
    emit(
        t,
        peer,
        &Wire::Release {
            id: promise,
            count: count.max(1) as u32,
        },
    )?;
    Ok(())
}

/// The peer lets go of `count` references to our export `id`.
fn on_release(t: &mut Tables<'_>, peer: &str, id: u32, count: u32) -> Result<()> {
    if id == GATE_EXPORT_ID {
        return Ok(());
    }
    let key = keys::export_count(&peer, &id);
    let held = t.count(&key)?;
    if held == 0 {
        return protocol(format!("release of unknown export {id}"));
    }
    // @endo/captp counts a call's target among the references it got, so
    // its drops may say more than we sent: all of them, then.
    let count = match endo::codec(&t.read(), peer)? {
        endo::Codec::Json { .. } => u64::from(count).min(held),
        endo::Codec::CapnProto if u64::from(count) > held => {
            return protocol(format!(
                "release of export {id} {count} times, more than it was sent ({held})"
            ));
        }
        endo::Codec::CapnProto => u64::from(count),
    };
    if t.add_to_count(&key, -(count as i64))? == 0 {
        forget_export(t, peer, id)?;
    }
    Ok(())
}

/// The peer's disembargo: reflected back to it, in order.
fn on_disembargo(t: &mut Tables<'_>, peer: &str, target: &Target, context: Embargo) -> Result<()> {
    let Embargo::SenderLoopback(id) = context else {
        return protocol("receiverLoopback disembargo for an embargo we never asked");
    };
    // The target is a promise we resolved to one of the peer's
    // own objects: reflect the disembargo back to it, after
    // everything we sent it so far (frames leave in order).
    let kref = target_kref(t, peer, target)?;
    let resolved = match t.promise_state(&kref)? {
        Some(PromiseState::Fulfilled(data)) => data.slots.first().cloned(),
        _ => None,
    };
    let back = match resolved {
        Some(ko) => t.clist_vref(peer, &ko)?,
        None => None,
    };
    match back {
        Some(vref) if vref.starts_with("o+") => {
            // Messages for that promise may still wait in the
            // run queue, to be forwarded to the peer: the
            // reflection goes after them.
            t.queue_input(peer, &format!("disembargo {} {id}", ref_id(&vref)))?;
            Ok(())
        }
        _ => protocol("disembargo target did not resolve to the sender's object"),
    }
}

/// The peer calls one of our objects (or the gate, or an answer it
/// pipelines on).
fn handle_call(t: &mut Tables<'_>, peer: &str, call: Call) -> Result<()> {
    let Call {
        question,
        target,
        content,
        caps,
    } = call;
    if t.get(&keys::answer(&peer, &question))?.is_some() {
        return protocol(format!("question {question} is already in use"));
    }
    if t.count(&keys::record(&peer, "answers"))? >= ANSWERS_PER_PEER_MAX
        && !endo::evict_returned(t, peer, ANSWERS_PER_PEER_MAX)?
    {
        return refuse_call(t, peer, question);
    }
    // Every capability in the table is a reference the peer gave us,
    // used or not: import them all.
    let krefs = import_all(t, peer, &caps)?;
    let on_gate = match &target {
        Target::Imported(id) => *id == GATE_EXPORT_ID,
        Target::Answer {
            question: q,
            transform,
        } => {
            let answer = answer(&t.read(), peer, *q)?;
            answer.kind == AnswerKind::Gate && transform.is_empty()
        }
    };
    if on_gate {
        return call_gate(t, peer, question, gate_content(content));
    }
    if let Target::Answer { question: q, .. } = &target
        && let Some(reason) = answer(&t.read(), peer, *q)?.broken
    {
        return answer_exception(t, peer, question, reason);
    }
    let target_kref = target_kref(t, peer, &target)?;
    let CallContent::Exo { method, args } = content else {
        let reason = "unimplemented: objects here are Exo (exo.capnp)".into();
        return answer_exception(t, peer, question, reason);
    };
    let args = body_capdata(args, &krefs)?;
    if let Err(e) = vom::capdata::decode(&args) {
        let reason = format!("malformed capdata in the arguments: {e}");
        return answer_exception(t, peer, question, reason);
    }
    call_exo(t, peer, question, &target_kref, method, args)
}

/// An `Exo.call` of `restore(swiss)` on the gate is `Gate.restore`: how a
/// peer that knows no Gate interface (JSON CapTP) restores a sturdy ref.
fn gate_content(content: CallContent) -> CallContent {
    if let CallContent::Exo { method, args } = &content
        && method == "restore"
        && args.caps.is_empty()
        && let Ok(Value::Array(items)) = vom::capdata::decode(&CapData {
            body: args.body.clone(),
            slots: vec![],
        })
        && let [Value::String(swiss)] = items.as_slice()
    {
        return CallContent::Restore {
            swiss: swiss.clone(),
        };
    }
    content
}

/// A call past `answers_per_peer_max`, refused without keeping anything:
/// no answer entry (nothing to finish), and its capabilities are not taken
/// (released).
fn refuse_call(t: &mut Tables<'_>, peer: &str, question: u32) -> Result<()> {
    let reason =
        format!("too many questions in flight (answers_per_peer_max {ANSWERS_PER_PEER_MAX})");
    let refusal = Wire::Return(Return {
        answer: question,
        release_param_caps: true,
        no_finish_needed: true,
        outcome: ReturnOutcome::Exception(reason),
    });
    Ok(emit(t, peer, &refusal)?)
}

/// Answers the peer's question with an exception; calls pipelined on it
/// fail the same way.
fn answer_exception(t: &mut Tables<'_>, peer: &str, question: u32, reason: String) -> Result<()> {
    let answer = Answer {
        kind: AnswerKind::Exo,
        kref: None,
        broken: Some(reason.clone()),
        finished: false,
    };
    open_answer(t, peer, question, &answer)?;
    Ok(emit(t, peer, &return_exception(question, &reason))?)
}

/// A call to the gate: only `Gate.restore` of a sturdy ref's swiss number.
fn call_gate(t: &mut Tables<'_>, peer: &str, question: u32, content: CallContent) -> Result<()> {
    let CallContent::Restore { swiss } = content else {
        let reason = "the gate only restores sturdy refs (Gate.restore)".into();
        return answer_exception(t, peer, question, reason);
    };
    // A sturdy record is a kref the engine wrote; one that is not reads as
    // no record.
    match t
        .get(&keys::sturdy(&swiss))?
        .and_then(|text| Kref::parse(&text))
    {
        Some(kref) if t.kref_exists(&kref)? => {
            let answer = Answer::new(AnswerKind::Restored, Some(kref.clone()));
            open_answer(t, peer, question, &answer)?;
            let descriptor = export_kref(t, peer, &kref)?;
            let content = ResultContent::Restored(Some(0));
            Ok(emit(
                t,
                peer,
                &return_results(question, content, vec![descriptor]),
            )?)
        }
        // Guessing gets nothing, and says nothing about why.
        _ => answer_exception(t, peer, question, "no object for that sturdy ref".into()),
    }
}

/// A call to one of our objects: queued as a message whose result the
/// peer's answer waits on.
fn call_exo(
    t: &mut Tables<'_>,
    peer: &str,
    question: u32,
    target: &str,
    method: String,
    args: CapData,
) -> Result<()> {
    let kp = t.allocate_promise(None)?;
    let answer = Answer::new(AnswerKind::Exo, Some(kp.clone()));
    open_answer(t, peer, question, &answer)?;
    // Usually deleted in the same commit group, when the vat answers.
    t.set_new(&keys::answer_of(&peer, &kp), &question.to_string())?;
    t.subscribe(&kp, peer)?;
    let result = Some(kp);
    Ok(t.send(
        target,
        Message {
            method,
            args,
            result,
        },
    )?)
}

fn handle_return(t: &mut Tables<'_>, peer: &str, ret: Return) -> Result<()> {
    let key = keys::question(&peer, &ret.answer);
    let Some(text) = t.get(&key)? else {
        return protocol(format!("return for unknown question {}", ret.answer));
    };
    let question: Question = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("kernel invariant: {key} is a question: {e}"));
    t.delete(&key)?;
    if ret.release_param_caps {
        for id in &question.exports {
            if t.add_to_count(&keys::export_count(&peer, &id), -1)? == 0 {
                forget_export(t, peer, *id)?;
            }
        }
    }
    let settlement: (bool, CapData) = match ret.outcome {
        ReturnOutcome::Results { content, caps } => {
            let krefs = import_all(t, peer, &caps)?;
            match content {
                ResultContent::Exo { result, .. } => {
                    let data = body_capdata(result, &krefs)?;
                    match vom::capdata::decode(&data) {
                        Ok(_) => (false, data),
                        Err(e) => (
                            true,
                            error_capdata(&format!("malformed capdata in the result: {e}")),
                        ),
                    }
                }
                ResultContent::Restored(Some(i)) => (false, reference_capdata(&krefs[i as usize])),
                ResultContent::Bootstrap(_) => {
                    // We bootstrap only to restore; the gate itself is not kept.
                    (false, vom::capdata::encode(&Value::Undefined))
                }
                _ => (true, error_capdata("the peer returned no object")),
            }
        }
        ReturnOutcome::Exception(reason) => (true, error_capdata(&reason)),
        ReturnOutcome::Canceled => (true, error_capdata("the call was canceled")),
    };
    if !ret.no_finish_needed {
        emit(
            t,
            peer,
            &Wire::Finish {
                question: ret.answer,
                release_result_caps: false,
            },
        )?;
    }
    if let Some(kp) = question.result {
        t.delete(&keys::question_of(&peer, &kp))?;
        if t.promise_state(&kp)? == Some(PromiseState::Unresolved) {
            let (rejected, data) = settlement;
            t.resolve(&kp, rejected, &data)?;
        }
        t.decref(&kp)?;
    }
    Ok(())
}

/// Our question fails: its result promise is rejected with `reason`.
fn fail_question(
    t: &mut Tables<'_>,
    peer: &str,
    question: u32,
    reason: &str,
) -> Result<(), StoreError> {
    let key = keys::question(&peer, &question);
    let Some(text) = t.get(&key)? else {
        return Ok(());
    };
    t.delete(&key)?;
    let question: Question = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("kernel invariant: {key} is a question: {e}"));
    if let Some(kp) = question.result {
        t.delete(&keys::question_of(&peer, &kp))?;
        t.reject_if_unresolved(Some(&kp), reason)?;
        t.decref(&kp)?;
    }
    Ok(())
}

// ---- tables ----

fn next_question(t: &mut Tables<'_>, peer: &str) -> Result<u32, StoreError> {
    let id = t.next_id(&keys::record(&peer, "nextQuestion"))?;
    Ok(u32::try_from(id).expect("kernel invariant: fewer than 2^32 questions per peer"))
}

fn put_question(
    t: &mut Tables<'_>,
    peer: &str,
    id: u32,
    question: &Question,
) -> Result<(), StoreError> {
    if let Some(kp) = &question.result {
        t.incref(kp)?;
        t.set(&keys::question_of(&peer, &kp), &id.to_string())?;
    }
    let text = serde_json::to_string(question).expect("questions serialize");
    t.set(&keys::question(&peer, &id), &text)
}

fn answer(t: &TablesRef<'_>, peer: &str, question: u32) -> Result<Answer> {
    let key = keys::answer(&peer, &question);
    match t.get(&key)? {
        Some(text) => Ok(serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kernel invariant: {key} is an answer: {e}"))),
        None => protocol(format!("no question {question} to pipeline on")),
    }
}

fn answer_entry(t: &TablesRef<'_>, peer: &str, question: u32) -> Result<Answer, ()> {
    match t.get(&keys::answer(&peer, &question)) {
        Ok(Some(text)) => serde_json::from_str(&text).map_err(|_| ()),
        _ => Err(()),
    }
}

/// Records the peer's question; the answer holds a reference to what
/// it names until the peer's `Finish`.
fn open_answer(t: &mut Tables<'_>, peer: &str, question: u32, answer: &Answer) -> Result<()> {
    let key = keys::answer(&peer, &question);
    if t.get(&key)?.is_some() {
        return protocol(format!("question {question} is already in use"));
    }
    if let Some(kref) = &answer.kref {
        t.incref(kref)?;
    }
    t.add_to_count(&keys::record(&peer, "answers"), 1)?;
    let text = serde_json::to_string(answer).expect("answers serialize");
    Ok(t.set(&key, &text)?)
}

fn close_answer(t: &mut Tables<'_>, peer: &str, question: u32) -> Result<(), StoreError> {
    let key = keys::answer(&peer, &question);
    if let Some(text) = t.get(&key)? {
        let answer: Answer = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kernel invariant: {key} is an answer: {e}"));
        if let Some(kref) = answer.kref {
            t.decref(&kref)?;
        }
    }
    t.delete(&key)?;
    t.add_to_count(&keys::record(&peer, "answers"), -1)?;
    Ok(())
}

/// The kref a peer's message target names.
fn target_kref(t: &mut Tables<'_>, peer: &str, target: &Target) -> Result<Kref> {
    match target {
        Target::Imported(id) => {
            for vref in [format!("o-{id}"), format!("p-{id}")] {
                if let Some(kref) = t.clist_kref(peer, &vref)? {
                    return Ok(kref);
                }
            }
            protocol(format!("no export {id} (never exported, or released)"))
        }
        Target::Answer {
            question,
            transform,
        } => {
            let answer = answer(&t.read(), peer, *question)?;
            // An empty path is the answer itself: how JSON CapTP pipelines.
            match (answer.kind, transform.as_slice(), answer.kref) {
                (AnswerKind::Exo, [OBJECT_FIELD] | [], Some(kp)) => Ok(kp),
                (AnswerKind::Restored, [0] | [], Some(kref)) => Ok(kref),
                (kind, transform, _) => protocol(format!(
                    "cannot pipeline on field path {transform:?} of a {kind:?} answer \
                     (Exo.call results: only `object`, field {OBJECT_FIELD})"
                )),
            }
        }
    }
}

/// The kref for a capability the peer sent us, importing it if new.
fn import_descriptor(t: &mut Tables<'_>, peer: &str, cap: &CapDescriptor) -> Result<Kref> {
    match cap {
        CapDescriptor::SenderHosted(id) | CapDescriptor::SenderPromise(id) => {
            let promise = matches!(cap, CapDescriptor::SenderPromise(_));
            let vref = format!("{}+{id}", if promise { 'p' } else { 'o' });
            let kref = match t.clist_kref(peer, &vref)? {
                Some(kref) => kref,
                None => {
                    let imports = keys::record(&peer, "imports");
                    if t.add_to_count(&imports, 1)? > REFERENCES_PER_PEER_MAX {
                        return protocol(format!(
                            "too many references (references_per_peer_max {REFERENCES_PER_PEER_MAX})"
                        ));
                    }
                    // An object nothing takes in this crank (a capability
                    // the body never names) is dropped again at its end.
                    let kref = if promise {
                        t.allocate_promise(Some(peer))?
                    } else {
                        t.allocate_import(peer)?
                    };
                    t.clist_add(peer, &kref, &vref)?;
                    kref
                }
            };
            t.add_to_count(&keys::import_count(&peer, &id), 1)?;
            Ok(kref)
        }
        CapDescriptor::ReceiverHosted(id) => target_kref(t, peer, &Target::Imported(*id)),
        CapDescriptor::ReceiverAnswer {
            question,
            transform,
        } => target_kref(
            t,
            peer,
            &Target::Answer {
                question: *question,
                transform: transform.clone(),
            },
        ),
        CapDescriptor::None => protocol("a null capability where a reference was expected"),
    }
}

/// How the peer is to name `kref`, exporting it if it is new to the peer.
fn export_kref(t: &mut Tables<'_>, peer: &str, kref: &str) -> Result<CapDescriptor, StoreError> {
    // A promise already fulfilled with a reference goes as that reference.
    let mut kref = kref.to_owned();
    for _ in 0..kernel::FORWARDING_DEPTH_MAX {
        if !kref.starts_with("kp") {
            break;
        }
        match t.promise_state(&kref)? {
            Some(PromiseState::Fulfilled(data)) => match vom::capdata::decode(&data) {
                Ok(Value::Remotable(r)) | Ok(Value::Promise(r)) => kref = r.slot,
                _ => break,
            },
            _ => break,
        }
    }
    // JSON CapTP cannot take its own answers back as references: such a
    // promise goes as a promise of ours.
    if let Some(text) = t.get(&keys::question_of(&peer, &kref))?
        && endo::codec(&t.read(), peer)? == endo::Codec::CapnProto
    {
        let question = text
            .parse()
            .expect("kernel invariant: question ids are numbers");
        return Ok(CapDescriptor::ReceiverAnswer {
            question,
            transform: vec![OBJECT_FIELD],
        });
    }
    if let Some(vref) = t.clist_vref(peer, &kref)? {
        let id = ref_id(&vref);
        if vref.starts_with("o+") || vref.starts_with("p+") {
            return Ok(CapDescriptor::ReceiverHosted(id));
        }
        t.add_to_count(&keys::export_count(&peer, &id), 1)?;
        // Given again, it is reachable again.
        t.clist_set_reachable(peer, &kref, true)?;
        return Ok(if vref.starts_with('p') {
            CapDescriptor::SenderPromise(id)
        } else {
            CapDescriptor::SenderHosted(id)
        });
    }
    let id = t.next_id(&keys::record(&peer, "nextExport"))?;
    let id = u32::try_from(id).expect("kernel invariant: fewer than 2^32 exports per peer");
    let promise = kref.starts_with("kp");
    let vref = format!("{}-{id}", if promise { 'p' } else { 'o' });
    t.clist_add(peer, &kref, &vref)?;
    t.add_to_count(&keys::export_count(&peer, &id), 1)?;
    if promise {
        match t.promise_state(&kref)? {
            Some(PromiseState::Unresolved) => t.subscribe(&kref, peer)?,
            _ => t.queue_notify(peer, &kref)?,
        }
        return Ok(CapDescriptor::SenderPromise(id));
    }
    Ok(CapDescriptor::SenderHosted(id))
}

/// The peer released every reference to export `id`.
fn forget_export(t: &mut Tables<'_>, peer: &str, id: u32) -> Result<(), StoreError> {
    for vref in [format!("o-{id}"), format!("p-{id}")] {
        if let Some(kref) = t.clist_kref(peer, &vref)? {
            t.clist_remove(peer, &kref)?;
        }
    }
    Ok(())
}

/// Capdata the peer sent (a body and its cap table), as the kernel's: each
/// capability imported.
fn capdata_from_peer(
    t: &mut Tables<'_>,
    peer: &str,
    body: Body,
    caps: &[CapDescriptor],
) -> Result<CapData> {
    let krefs = import_all(t, peer, caps)?;
    let data = body_capdata(body, &krefs)?;
    if let Err(e) = vom::capdata::decode(&data) {
        return protocol(format!("malformed capdata: {e}"));
    }
    Ok(data)
}

/// Every capability in a payload's cap table, imported: each is a
/// reference the peer gave us, whether its body names it or not.
fn import_all(t: &mut Tables<'_>, peer: &str, caps: &[CapDescriptor]) -> Result<Vec<Kref>> {
    caps.iter()
        .map(|cap| import_descriptor(t, peer, cap))
        .collect()
}

/// A body whose slots are indexes into `krefs`, as the kernel's capdata
/// (not yet checked: each caller says what a malformed body costs).
fn body_capdata(body: Body, krefs: &[Kref]) -> Result<CapData> {
    let mut slots = Vec::with_capacity(body.caps.len());
    for index in &body.caps {
        match krefs.get(*index as usize) {
            Some(kref) => slots.push(kref.to_string()),
            None => return protocol(format!("cap index {index} is outside the cap table")),
        }
    }
    Ok(CapData {
        body: body.body,
        slots,
    })
}

fn capdata_to_peer(
    t: &mut Tables<'_>,
    peer: &str,
    data: &CapData,
) -> Result<(Body, Vec<CapDescriptor>), StoreError> {
    let mut caps = Vec::with_capacity(data.slots.len());
    for kref in &data.slots {
        caps.push(export_kref(t, peer, kref)?);
    }
    Ok((
        Body {
            body: data.body.clone(),
            caps: (0..caps.len() as u32).collect(),
        },
        caps,
    ))
}

// ---- frames out (inside cranks) ----

/// Queues a frame to `peer`; it leaves after the crank commits. A
/// session's frames are also kept in the store (`r<N>.out.<seq>`), in the
/// same crank, until the peer acknowledges them.
fn emit(t: &mut Tables<'_>, peer: &str, message: &Wire) -> Result<(), StoreError> {
    if tracing_frames() {
        eprintln!("{peer} -> {message:?}");
    }
    let frame = match endo::codec(&t.read(), peer)? {
        endo::Codec::CapnProto => wire::encode(message),
        endo::Codec::Json { epoch } => match captp::json::encode(message, epoch) {
            Some(frame) => frame,
            // Finish, Disembargo, unimplemented: JSON CapTP needs none.
            None => return Ok(()),
        },
    };
    if is_session(&t.read(), peer)? {
        let key = keys::record(&peer, "sent");
        let seq = t.count(&key)?;
        t.set(&keys::frame_out(&peer, seq), &hex_text(&frame))?;
        t.set(&key, &(seq + 1).to_string())?;
    }
    t.emit(peer, frame);
    Ok(())
}

/// `bytes` in lowercase hex, as `hex::encode` writes them, without its
/// iterator of chars (a tenth of the instructions).
fn hex_text(bytes: &[u8]) -> String {
    let mut text = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut text)
        .expect("captp-engine invariant: hex takes two digits per byte");
    String::from_utf8(text).expect("captp-engine invariant: hex digits are ASCII")
}

/// A message for one of the peer's objects (or a promise it decides).
fn deliver_to_peer(
    t: &mut Tables<'_>,
    peer: &str,
    target: &str,
    message: Message,
) -> Result<(), StoreError> {
    let wire_target = if let Some(text) = t.get(&keys::question_of(&peer, &target))? {
        Target::Answer {
            question: text
                .parse()
                .expect("kernel invariant: question ids are numbers"),
            transform: vec![OBJECT_FIELD],
        }
    } else {
        match t.clist_vref(peer, target)? {
            Some(vref) if vref.contains('+') => Target::Imported(ref_id(&vref)),
            _ => {
                let reason = format!("{target} is no longer reachable on peer {peer}");
                return t.reject_if_unresolved(message.result.as_deref(), &reason);
            }
        }
    };
    let (args, caps) = capdata_to_peer(t, peer, &message.args)?;
    let exports = caps
        .iter()
        .filter_map(|c| match c {
            CapDescriptor::SenderHosted(id) | CapDescriptor::SenderPromise(id) => Some(*id),
            _ => None,
        })
        .collect();
    let question = next_question(t, peer)?;
    if let Some(kp) = &message.result {
        t.set_promise_decider(kp, Some(peer))?;
    }
    put_question(
        t,
        peer,
        question,
        &Question {
            kind: QuestionKind::Exo,
            result: message.result.clone(),
            exports,
        },
    )?;
    emit(
        t,
        peer,
        &Wire::Call(Call {
            question,
            target: wire_target,
            content: CallContent::Exo {
                method: message.method,
                args,
            },
            caps,
        }),
    )?;
    Ok(())
}

/// `kp`, which the peer asked about or we exported to it, settled.
fn notify_peer(t: &mut Tables<'_>, peer: &str, kp: &str) -> Result<(), StoreError> {
    if !is_running(&t.read(), peer)? {
        return Ok(());
    }
    let (rejected, data) = match t.promise_state(kp)? {
        Some(PromiseState::Fulfilled(data)) => (false, data),
        Some(PromiseState::Rejected(data)) => (true, data),
        other => panic!("kernel invariant: notify for settled promises only ({kp}: {other:?})"),
    };
    if let Some(text) = t.get(&keys::answer_of(&peer, &kp))? {
        let answer: u32 = text
            .parse()
            .expect("kernel invariant: answer ids are numbers");
        t.delete(&keys::answer_of(&peer, &kp))?;
        return_answer(t, peer, answer, rejected, &data)?;
    }
    if let Some(vref) = t.clist_vref(peer, kp)?
        && let Some(id) = vref.strip_prefix("p-")
    {
        let promise: u32 = id
            .parse()
            .expect("kernel invariant: export ids are numbers");
        let resolution = if rejected {
            Err(rejection_reason(&data))
        } else {
            match vom::capdata::decode(&data) {
                Ok(Value::Remotable(r) | Value::Promise(r)) => Ok(export_kref(t, peer, &r.slot)?),
                _ if endo::codec(&t.read(), peer)? != endo::Codec::CapnProto => {
                    let (result, caps) = capdata_to_peer(t, peer, &data)?;
                    return emit(
                        t,
                        peer,
                        &Wire::ResolveData {
                            promise,
                            result,
                            caps,
                        },
                    );
                }
                _ => Err("the promise settled to data, not a capability".to_owned()),
            }
        };
        emit(
            t,
            peer,
            &Wire::Resolve {
                promise,
                resolution,
            },
        )?;
    }
    Ok(())
}

/// Why a promise was rejected, as the peer is told.
fn rejection_reason(data: &CapData) -> String {
    match vom::capdata::decode(data) {
        Ok(Value::Error(e)) => e.to_string(),
        Ok(other) => format!("rejected: {other:?}"),
        Err(e) => e.to_string(),
    }
}

/// Returns the settlement of the peer's question `answer`. The answer's
/// entry (and its reference) stays until the peer's `Finish`: it may still
/// pipeline on it.
fn return_answer(
    t: &mut Tables<'_>,
    peer: &str,
    answer: u32,
    rejected: bool,
    data: &CapData,
) -> Result<(), StoreError> {
    let json = endo::codec(&t.read(), peer)? != endo::Codec::CapnProto;
    let message = if rejected {
        return_exception(answer, &rejection_reason(data))
    } else {
        let (result, mut caps) = capdata_to_peer(t, peer, data)?;
        // A single reference is also `object`, for pipelining; the cap
        // table then lists it twice, and the peer counts both. (JSON
        // CapTP pipelines on the answer itself.)
        let object = match vom::capdata::decode(data) {
            Ok(Value::Remotable(_) | Value::Promise(_)) if caps.len() == 1 && !json => {
                if let CapDescriptor::SenderHosted(id) | CapDescriptor::SenderPromise(id) = &caps[0]
                {
                    t.add_to_count(&keys::export_count(&peer, &id), 1)?;
                }
                caps.push(caps[0].clone());
                Some(1)
            }
            _ => None,
        };
        return_results(answer, ResultContent::Exo { result, object }, caps)
    };
    emit(t, peer, &message)?;
    if let Ok(entry) = answer_entry(&t.read(), peer, answer)
        && entry.finished
    {
        close_answer(t, peer, answer)?;
    } else if json {
        endo::note_returned(t, peer, answer)?;
    }
    Ok(())
}

/// Sends a queued disembargo reflection (see [`Membrane::input`]).
fn reflect_disembargo(
    t: &mut Tables<'_>,
    peer: &str,
    export: u32,
    embargo: u32,
) -> Result<(), StoreError> {
    emit(
        t,
        peer,
        &Wire::Disembargo {
            target: Target::Imported(export),
            context: Embargo::ReceiverLoopback(embargo),
        },
    )
}

/// The kernel dropped its last reference to one of the peer's objects.
fn release_to_peer(t: &mut Tables<'_>, peer: &str, ko: &str) -> Result<(), StoreError> {
    let Some(vref) = t.clist_vref(peer, ko)? else {
        return Ok(());
    };
    let id = ref_id(&vref);
    let key = keys::import_count(&peer, &id);
    let count = t.count(&key)?;
    t.delete(&key)?;
    // The peer may reuse the id once released: forget the mapping now.
    t.add_to_count(&keys::record(&peer, "imports"), -1)?;
    t.clist_remove(peer, ko)?;
    if is_running(&t.read(), peer)? && count > 0 {
        emit(
            t,
            peer,
            &Wire::Release {
                id,
                count: u32::try_from(count).unwrap_or(u32::MAX),
            },
        )?;
    }
    Ok(())
}

fn return_results(answer: u32, content: ResultContent, caps: Vec<CapDescriptor>) -> Wire {
    Wire::Return(Return {
        answer,
        release_param_caps: false,
        no_finish_needed: false,
        outcome: ReturnOutcome::Results { content, caps },
    })
}

fn return_exception(answer: u32, reason: &str) -> Wire {
    Wire::Return(Return {
        answer,
        release_param_caps: false,
        no_finish_needed: false,
        outcome: ReturnOutcome::Exception(reason.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_frames_are_written_as_hex_encode_writes_them() {
        let bytes: Vec<u8> = (0..=255u8).chain([0, 255, 16]).collect();
        for len in [0, 1, 2, 17, bytes.len()] {
            assert_eq!(hex_text(&bytes[..len]), hex::encode(&bytes[..len]));
        }
    }
}
