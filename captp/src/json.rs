//! @endo/captp 4.x's JSON messages, as the same [`Message`]s the Cap'n
//! Proto codec reads and writes, so one engine serves both kinds of peer.
//!
//! A message is a JSON object with a `type`: `CTP_BOOTSTRAP`, `CTP_CALL`,
//! `CTP_RETURN`, `CTP_RESOLVE`, `CTP_DROP`, `CTP_DISCONNECT` (and
//! `CTP_TRAP_ITERATE`, read and ignored: trap calls are answered with an
//! exception). Over a byte stream each is a netstring (`<len>:<json>,`).
//!
//! Slots are written from their sender's side: `o+N`/`p+N` are the
//! sender's objects and promises, `o-N`/`p-N` the receiver's, `q-N` the
//! sender's question N. Objects and promises are numbered apart in
//! @endo/captp and together here, so the peer's `o+N` is import `2N` and
//! its `p+N` import `2N+1`; our exports keep their one numbering.
//! Questions are `q-N` both ways (each side's own numbers). Bodies are
//! read in either format, legacy `@qclass` or smallcaps, and written as
//! legacy capdata, which is what @endo/captp 4.5.1 writes.

use serde_json::{Map, Value as Json, json};
use vom::{CapData, Value};

use crate::wire::{
    Body, Call, CallContent, CapDescriptor, Limits, Message, ResultContent, Return, ReturnKind,
    ReturnOutcome, Target, WireError,
};

fn malformed<T>(text: impl Into<String>) -> Result<T, WireError> {
    Err(WireError::Malformed(text.into()))
}

/// The number after a slot's two-character prefix.
fn slot_number(slot: &str) -> Result<u32, WireError> {
    match slot.get(2..).map(str::parse::<u32>) {
        Some(Ok(n)) => Ok(n),
        _ => malformed(format!("bad slot {slot:?}")),
    }
}

/// Import ids of the peer's objects and promises (see the module's notes).
fn import_id(n: u32, promise: bool) -> Result<u32, WireError> {
    n.checked_mul(2)
        .and_then(|id| id.checked_add(u32::from(promise)))
        .map_or_else(|| malformed(format!("slot number {n} is too large")), Ok)
}

/// A slot the peer wrote, as the capability it names.
fn descriptor(slot: &str) -> Result<CapDescriptor, WireError> {
    let n = slot_number(slot)?;
    Ok(match slot.get(..2) {
        Some("o+") => CapDescriptor::SenderHosted(import_id(n, false)?),
        Some("p+") => CapDescriptor::SenderPromise(import_id(n, true)?),
        Some("o-" | "p-") => CapDescriptor::ReceiverHosted(n),
        Some("q-") => CapDescriptor::ReceiverAnswer {
            question: n,
            transform: vec![],
        },
        _ => return malformed(format!("unknown slot {slot:?} (traps are not served here)")),
    })
}

/// A capability we write, as the peer is to read it.
fn slot(descriptor: &CapDescriptor) -> String {
    match descriptor {
        CapDescriptor::SenderHosted(id) => format!("o+{id}"),
        CapDescriptor::SenderPromise(id) => format!("p+{id}"),
        CapDescriptor::ReceiverHosted(id) => their_slot(*id),
        CapDescriptor::ReceiverAnswer { question, .. } => format!("q-{question}"),
        CapDescriptor::None => panic!("captp invariant: the engine writes no null capability"),
    }
}

/// How we name the peer's object or promise with import id `id`.
fn their_slot(id: u32) -> String {
    let kind = if id.is_multiple_of(2) { 'o' } else { 'p' };
    format!("{kind}-{}", id / 2)
}

fn question_id(field: Option<&Json>) -> Result<u32, WireError> {
    match field.and_then(Json::as_str) {
        Some(text) if text.starts_with("q-") => slot_number(text),
        _ => malformed(format!("expected a question id q-N, not {field:?}")),
    }
}

fn target(field: Option<&Json>) -> Result<Target, WireError> {
    let Some(text) = field.and_then(Json::as_str) else {
        return malformed("a call needs a target slot");
    };
    match descriptor(text)? {
        CapDescriptor::ReceiverHosted(id) => Ok(Target::Imported(id)),
        CapDescriptor::ReceiverAnswer {
            question,
            transform,
        } => Ok(Target::Answer {
            question,
            transform,
        }),
        _ => malformed(format!("target {text:?} is not ours")),
    }
}

/// A capdata record `{body, slots}` the peer wrote, as a value whose
/// references are the peer's slots.
fn read_capdata(field: Option<&Json>, limits: &Limits) -> Result<Value, WireError> {
    let Some(Json::Object(record)) = field else {
        return malformed("expected capdata {body, slots}");
    };
    let (Some(Json::String(body)), Some(Json::Array(slots))) =
        (record.get("body"), record.get("slots"))
    else {
        return malformed("capdata needs a string body and a slots list");
    };
    if slots.len() > limits.cap_table_max {
        return Err(WireError::TooManyCaps(slots.len(), limits.cap_table_max));
    }
    let slots: Vec<String> = slots
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .map_or_else(|| malformed("slots must be strings"), Ok)?;
    for slot in &slots {
        descriptor(slot)?;
    }
    if body.starts_with('#') {
        let data = CapData {
            body: body.clone(),
            slots,
        };
        return vom::capdata::decode(&data).map_err(|e| WireError::Malformed(e.to_string()));
    }
    let json: Json = serde_json::from_str(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    crate::legacy::decode(&json, &slots).map_err(|e| WireError::Malformed(e.to_string()))
}

/// A value the peer sent, as the engine's smallcaps body and cap table.
fn to_body(value: &Value) -> Result<(Body, Vec<CapDescriptor>), WireError> {
    let data = vom::capdata::encode(value);
    let caps = data
        .slots
        .iter()
        .map(|s| descriptor(s))
        .collect::<Result<Vec<_>, _>>()?;
    let body = Body {
        body: data.body,
        caps: (0..caps.len() as u32).collect(),
    };
    Ok((body, caps))
}

/// A body of ours (smallcaps, its slots in `caps`), as the peer's value.
fn from_body(body: &Body, caps: &[CapDescriptor]) -> Value {
    let slots = body.caps.iter().map(|i| slot(&caps[*i as usize])).collect();
    let data = CapData {
        body: body.body.clone(),
        slots,
    };
    vom::capdata::decode(&data)
        .unwrap_or_else(|e| panic!("captp invariant: the engine writes valid capdata: {e}"))
}

fn write_capdata(value: &Value) -> Json {
    let (body, slots) = crate::legacy::encode(value);
    json!({"body": body.to_string(), "slots": slots})
}

fn reason_of(value: &Value) -> String {
    match value {
        Value::Error(e) => e.to_string(),
        Value::String(text) => text.clone(),
        other => format!("{other:?}"),
    }
}

/// Decodes one message (a netstring's or a WebSocket frame's text).
/// Returns it and the epoch it carried (0 when it had none).
pub fn decode(
    text: &[u8],
    limits: &Limits,
    returns: &dyn Fn(u32) -> Option<ReturnKind>,
) -> Result<(Message, u64), WireError> {
    if text.len() > limits.frame_bytes_max {
        return Err(WireError::FrameTooLarge(text.len(), limits.frame_bytes_max));
    }
    let json: Json =
        serde_json::from_slice(text).map_err(|e| WireError::Malformed(e.to_string()))?;
    let Json::Object(obj) = json else {
        return malformed("a message is a JSON object");
    };
    let epoch = obj.get("epoch").and_then(Json::as_u64).unwrap_or(0);
    let kind = obj.get("type").and_then(Json::as_str).unwrap_or_default();
    let message = match kind {
        "CTP_BOOTSTRAP" => Message::Bootstrap {
            question: question_id(obj.get("questionID"))?,
        },
        "CTP_CALL" => Message::Call(read_call(&obj, limits)?),
        "CTP_RETURN" => Message::Return(read_return(&obj, limits, returns)?),
        "CTP_RESOLVE" => read_resolve(&obj, limits)?,
        "CTP_DROP" => read_drop(&obj)?,
        "CTP_DISCONNECT" => Message::Abort {
            reason: match obj.get("reason") {
                Some(Json::String(text)) => text.clone(),
                // An Error, as JSON.stringify writes it.
                Some(Json::Object(o)) if o.is_empty() => "the peer disconnected".into(),
                Some(other) => other.to_string(),
                None => "the peer disconnected".into(),
            },
        },
        "CTP_TRAP_ITERATE" => Message::Unimplemented {
            call_question: None,
        },
        other => return malformed(format!("unknown message type {other:?}")),
    };
    Ok((message, epoch))
}

fn read_call(obj: &Map<String, Json>, limits: &Limits) -> Result<Call, WireError> {
    let question = question_id(obj.get("questionID"))?;
    let target = target(obj.get("target"))?;
    // A trap asks us to block for the answer: not served, answered with
    // an exception (an unknown method).
    let unknown = CallContent::Unknown {
        interface_id: 0,
        method_id: 0,
    };
    if obj.get("trap").and_then(Json::as_bool) == Some(true) {
        return Ok(Call {
            question,
            target,
            content: unknown,
            caps: vec![],
        });
    }
    let (content, caps) = match read_capdata(obj.get("method"), limits)? {
        Value::Array(mut parts) if parts.len() == 2 => {
            let args = parts.pop().expect("two parts");
            match (parts.pop(), args) {
                (Some(Value::String(method)), args @ Value::Array(_)) => {
                    let (args, caps) = to_body(&args)?;
                    (CallContent::Exo { method, args }, caps)
                }
                // Calling the object as a function (method null).
                _ => (unknown, vec![]),
            }
        }
        // A property get (`[prop]`): objects here have methods only.
        Value::Array(parts) if parts.len() == 1 => (unknown, vec![]),
        _ => return malformed("a call's method is [name, args]"),
    };
    Ok(Call {
        question,
        target,
        content,
        caps,
    })
}

fn read_return(
    obj: &Map<String, Json>,
    limits: &Limits,
    returns: &dyn Fn(u32) -> Option<ReturnKind>,
) -> Result<Return, WireError> {
    let answer = question_id(obj.get("answerID"))?;
    let outcome = if obj.contains_key("exception") {
        ReturnOutcome::Exception(reason_of(&read_capdata(obj.get("exception"), limits)?))
    } else {
        let value = read_capdata(obj.get("result"), limits)?;
        let (result, caps) = to_body(&value)?;
        let single = matches!(value, Value::Remotable(_) | Value::Promise(_));
        match returns(answer) {
            Some(ReturnKind::Bootstrap) if single => ReturnOutcome::Results {
                content: ResultContent::Bootstrap(Some(0)),
                caps,
            },
            Some(ReturnKind::Restore) if single => ReturnOutcome::Results {
                content: ResultContent::Restored(Some(0)),
                caps,
            },
            Some(ReturnKind::Bootstrap | ReturnKind::Restore) => {
                ReturnOutcome::Exception("the peer returned no object".into())
            }
            _ => ReturnOutcome::Results {
                content: ResultContent::Exo {
                    result,
                    object: None,
                },
                caps,
            },
        }
    };
    Ok(Return {
        answer,
        release_param_caps: false,
        no_finish_needed: true,
        outcome,
    })
}

fn read_resolve(obj: &Map<String, Json>, limits: &Limits) -> Result<Message, WireError> {
    let Some(Json::String(id)) = obj.get("promiseID") else {
        return malformed("a resolve needs a promiseID");
    };
    if !id.starts_with("p-") {
        return malformed(format!("promiseID {id:?} names no promise of the sender"));
    }
    let promise = import_id(slot_number(id)?, true)?;
    if obj.contains_key("rej") {
        let reason = reason_of(&read_capdata(obj.get("rej"), limits)?);
        return Ok(Message::Resolve {
            promise,
            resolution: Err(reason),
        });
    }
    let value = read_capdata(obj.get("res"), limits)?;
    let (result, caps) = to_body(&value)?;
    if matches!(value, Value::Remotable(_) | Value::Promise(_)) {
        let cap = caps.into_iter().next().expect("a reference has its slot");
        return Ok(Message::Resolve {
            promise,
            resolution: Ok(cap),
        });
    }
    Ok(Message::ResolveData {
        promise,
        result,
        caps,
    })
}

fn read_drop(obj: &Map<String, Json>) -> Result<Message, WireError> {
    let Some(Json::String(id)) = obj.get("slotID") else {
        return malformed("a drop needs a slotID");
    };
    let count = obj.get("decRefs").and_then(Json::as_u64).unwrap_or(0);
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    Ok(match descriptor(id)? {
        // The peer is done with its question (its answer promise was collected).
        CapDescriptor::ReceiverAnswer { question, .. } => Message::Finish {
            question,
            release_result_caps: false,
        },
        CapDescriptor::ReceiverHosted(id) => Message::Release { id, count },
        _ => return malformed(format!("drop of {id:?}, which is not ours")),
    })
}

/// Encodes a message as @endo/captp JSON in a netstring, tagged with
/// `epoch`; `None` for what @endo/captp has no message for (`Finish`,
/// `Disembargo`, `unimplemented`): it never needs them.
pub fn encode(message: &Message, epoch: u64) -> Option<Vec<u8>> {
    let json = match message {
        Message::Bootstrap { question } => {
            json!({"type": "CTP_BOOTSTRAP", "epoch": epoch, "questionID": format!("q-{question}")})
        }
        Message::Call(call) => write_call(call, epoch),
        Message::Return(ret) => write_return(ret, epoch),
        Message::Resolve {
            promise,
            resolution,
        } => {
            let (key, value) = match resolution {
                Ok(cap) => ("res", reference_value(cap, None)),
                Err(reason) => ("rej", Value::error(reason.clone())),
            };
            json!({"type": "CTP_RESOLVE", "epoch": epoch, "promiseID": format!("p-{promise}"),
                   key: write_capdata(&value)})
        }
        Message::ResolveData {
            promise,
            result,
            caps,
        } => json!({"type": "CTP_RESOLVE", "epoch": epoch, "promiseID": format!("p-{promise}"),
                    "res": write_capdata(&from_body(result, caps))}),
        Message::Release { id, count } => {
            json!({"type": "CTP_DROP", "epoch": epoch, "slotID": their_slot(*id), "decRefs": count})
        }
        Message::Abort { reason } => {
            json!({"type": "CTP_DISCONNECT", "epoch": epoch, "reason": reason})
        }
        Message::Finish { .. }
        | Message::Disembargo { .. }
        | Message::Unimplemented { .. }
        | Message::Unsupported { .. } => return None,
    };
    Some(netstring(json.to_string().as_bytes()))
}

/// `bytes` as a netstring: `<len>:<bytes>,`.
pub fn netstring(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.push(b',');
    out
}

/// The text of a netstring `encode` made (for WebSocket frames, one
/// message each, unframed).
pub fn netstring_payload(frame: &[u8]) -> &[u8] {
    let colon = frame.iter().position(|b| *b == b':').unwrap_or(0);
    &frame[colon + 1..frame.len().saturating_sub(1)]
}

/// A single capability as a value: a promise or a remotable, by its slot.
fn reference_value(cap: &CapDescriptor, iface: Option<&str>) -> Value {
    crate::legacy::reference(&slot(cap), iface.map(str::to_owned))
}

fn write_call(call: &Call, epoch: u64) -> Json {
    let method = match &call.content {
        CallContent::Exo { method, args } => Value::Array(vec![
            Value::string(method.clone()),
            from_body(args, &call.caps),
        ]),
        CallContent::Restore { swiss } => Value::Array(vec![
            Value::string("restore"),
            Value::Array(vec![Value::string(swiss.clone())]),
        ]),
        other => panic!("captp invariant: kernel sessions are Cap'n Proto only, not {other:?}"),
    };
    let target = match &call.target {
        Target::Imported(id) => their_slot(*id),
        Target::Answer { question, .. } => format!("q-{question}"),
    };
    json!({"type": "CTP_CALL", "epoch": epoch, "questionID": format!("q-{}", call.question),
           "target": target, "method": write_capdata(&method)})
}

fn write_return(ret: &Return, epoch: u64) -> Json {
    let answer = format!("q-{}", ret.answer);
    let settled = match &ret.outcome {
        ReturnOutcome::Results { content, caps } => match content {
            ResultContent::Exo { result, .. } => Ok(from_body(result, caps)),
            ResultContent::Bootstrap(Some(i)) => {
                Ok(reference_value(&caps[*i as usize], Some("Alleged: Gate")))
            }
            ResultContent::Restored(Some(i)) => Ok(reference_value(&caps[*i as usize], None)),
            _ => Err("no result".to_owned()),
        },
        ReturnOutcome::Exception(reason) => Err(reason.clone()),
        ReturnOutcome::Canceled => Err("the call was canceled".to_owned()),
    };
    match settled {
        Ok(value) => json!({"type": "CTP_RETURN", "epoch": epoch, "answerID": answer,
                            "result": write_capdata(&value)}),
        Err(reason) => json!({"type": "CTP_RETURN", "epoch": epoch, "answerID": answer,
                              "exception": write_capdata(&Value::error(reason))}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(_: u32) -> Option<ReturnKind> {
        Some(ReturnKind::Exo)
    }

    fn read(text: &str) -> Message {
        decode(text.as_bytes(), &Limits::default(), &kinds)
            .unwrap()
            .0
    }

    #[test]
    fn messages_read_as_endo_captp_writes_them() {
        // As @endo/captp 4.5.1 sends them (JSON.stringify of its objects).
        assert_eq!(
            read(r#"{"type":"CTP_BOOTSTRAP","epoch":0,"questionID":"q-1"}"#),
            Message::Bootstrap { question: 1 }
        );
        let call = read(
            r#"{"type":"CTP_CALL","epoch":0,"questionID":"q-2","target":"q-1",
               "method":{"body":"[\"restore\",[\"swiss\",{\"@qclass\":\"slot\",\"iface\":\"Alleged: cb\",\"index\":0}]]","slots":["o+5"]}}"#,
        );
        let Message::Call(call) = call else {
            panic!("{call:?}")
        };
        assert_eq!(call.question, 2);
        assert_eq!(
            call.target,
            Target::Answer {
                question: 1,
                transform: vec![]
            }
        );
        assert_eq!(call.caps, vec![CapDescriptor::SenderHosted(10)]);
        let CallContent::Exo { method, args } = &call.content else {
            panic!()
        };
        assert_eq!(method, "restore");
        assert_eq!(args.body, r##"#["swiss","$0.Alleged: cb"]"##);
        assert_eq!(
            read(r#"{"type":"CTP_DROP","slotID":"o-3","decRefs":2,"epoch":0}"#),
            Message::Release { id: 3, count: 2 }
        );
        assert_eq!(
            read(r#"{"type":"CTP_DROP","slotID":"q-4","decRefs":1,"epoch":0}"#),
            Message::Finish {
                question: 4,
                release_result_caps: false
            }
        );
        let resolve = read(
            r#"{"type":"CTP_RESOLVE","promiseID":"p-2","res":{"body":"{\"n\":{\"@qclass\":\"bigint\",\"digits\":\"5\"}}","slots":[]}}"#,
        );
        assert_eq!(
            resolve,
            Message::ResolveData {
                promise: 5,
                result: Body {
                    body: r##"#{"n":"+5"}"##.into(),
                    caps: vec![]
                },
                caps: vec![]
            }
        );
        // A trap call is an unknown method (answered with an exception).
        let Message::Call(trap) = read(
            r#"{"type":"CTP_CALL","epoch":0,"trap":true,"questionID":"q-7","target":"o-1","method":{"body":"[\"get\",[]]","slots":[]}}"#,
        ) else {
            panic!()
        };
        assert!(matches!(trap.content, CallContent::Unknown { .. }));
    }

    #[test]
    fn messages_written_are_what_endo_captp_reads() {
        let ret = Message::Return(Return {
            answer: 2,
            release_param_caps: false,
            no_finish_needed: false,
            outcome: ReturnOutcome::Results {
                content: ResultContent::Exo {
                    result: Body {
                        body: "#[\"$0.Alleged: Counter\",\"+7\"]".into(),
                        caps: vec![0],
                    },
                    object: None,
                },
                caps: vec![CapDescriptor::SenderHosted(4)],
            },
        });
        let frame = encode(&ret, 3).unwrap();
        let text = std::str::from_utf8(netstring_payload(&frame)).unwrap();
        assert!(frame.starts_with(format!("{}:", text.len()).as_bytes()));
        let json: Json = serde_json::from_str(text).unwrap();
        assert_eq!(json["type"], "CTP_RETURN");
        assert_eq!(json["answerID"], "q-2");
        assert_eq!(json["epoch"], 3);
        assert_eq!(json["result"]["slots"], json!(["o+4"]));
        assert_eq!(
            json["result"]["body"],
            r#"[{"@qclass":"slot","iface":"Alleged: Counter","index":0},{"@qclass":"bigint","digits":"7"}]"#
        );
        let release = encode(&Message::Release { id: 7, count: 2 }, 0).unwrap();
        assert!(
            String::from_utf8(release)
                .unwrap()
                .contains(r#""slotID":"p-3""#)
        );
        assert_eq!(
            encode(
                &Message::Finish {
                    question: 1,
                    release_result_caps: false
                },
                0
            ),
            None
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        for text in [
            "[]",
            r#"{"type":"CTP_NOPE"}"#,
            r#"{"type":"CTP_BOOTSTRAP","questionID":7}"#,
            r#"{"type":"CTP_CALL","questionID":"q-1","target":"o+1","method":{"body":"[]","slots":[]}}"#,
            r#"{"type":"CTP_CALL","questionID":"q-1","target":"o-1","method":{"body":"[\"m\",[]]","slots":["x+1"]}}"#,
            r#"{"type":"CTP_RESOLVE","promiseID":"o-1","res":{"body":"1","slots":[]}}"#,
            r#"{"type":"CTP_DROP","slotID":"o+1"}"#,
            "not json",
        ] {
            assert!(
                decode(text.as_bytes(), &Limits::default(), &kinds).is_err(),
                "{text}"
            );
        }
    }
}
