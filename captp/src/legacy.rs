//! Legacy `@qclass` capdata, the body format @endo/captp 4.x sends
//! (`serializeBodyFormat: 'capdata'`), to and from [`vom::Value`].
//!
//! A body is JSON where special values are records with an `@qclass` key:
//! `undefined`, `NaN`, `Infinity`, `-Infinity`, `bigint {digits}`,
//! `symbol {name}`, `@@asyncIterator`, `error {name, message}`,
//! `slot {index, iface?}`, `tagged {tag, payload}`, and `hilbert
//! {original, rest?}` (a record that itself has an `@qclass` key).
//! Whether a slot is a promise or a remotable is its slot's first letter
//! (`p`/`q` promises, `o` remotables).

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};
use vom::{ErrorValue, Ref, Value};

const QCLASS: &str = "@qclass";

/// The deepest body accepted (as smallcaps's `BODY_DEPTH_MAX`).
const DEPTH_MAX: usize = vom::capdata::BODY_DEPTH_MAX;

/// Why a legacy body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed capdata: {0}")]
pub struct LegacyError(pub String);

fn bad<T>(text: impl Into<String>) -> Result<T, LegacyError> {
    Err(LegacyError(text.into()))
}

/// A reference's value: a promise for `p` and `q` slots, a remotable else.
pub(crate) fn reference(slot: &str, iface: Option<String>) -> Value {
    let r = Ref::with_iface(slot, iface);
    if slot.starts_with('p') || slot.starts_with('q') {
        Value::Promise(r)
    } else {
        Value::Remotable(r)
    }
}

/// Reads a legacy body whose slot `i` is `slots[i]`.
pub fn decode(body: &Json, slots: &[String]) -> Result<Value, LegacyError> {
    decode_recur(body, slots, 0)
}

fn decode_recur(json: &Json, slots: &[String], depth: usize) -> Result<Value, LegacyError> {
    if depth > DEPTH_MAX {
        return bad(format!("nesting deeper than BODY_DEPTH_MAX ({DEPTH_MAX})"));
    }
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| decode_recur(item, slots, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => match map.get(QCLASS) {
            None => Value::Record(decode_record(map, slots, depth)?),
            Some(Json::String(class)) => decode_class(class, map, slots, depth)?,
            Some(other) => return bad(format!("@qclass {other} is not a string")),
        },
    })
}

fn decode_record(
    map: &Map<String, Json>,
    slots: &[String],
    depth: usize,
) -> Result<BTreeMap<String, Value>, LegacyError> {
    map.iter()
        .map(|(key, value)| Ok((key.clone(), decode_recur(value, slots, depth + 1)?)))
        .collect()
}

fn text_field<'a>(
    map: &'a Map<String, Json>,
    field: &str,
    class: &str,
) -> Result<&'a str, LegacyError> {
    match map.get(field) {
        Some(Json::String(text)) => Ok(text),
        _ => bad(format!("@qclass {class} needs a string {field}")),
    }
}

/// One `@qclass` record.
fn decode_class(
    class: &str,
    map: &Map<String, Json>,
    slots: &[String],
    depth: usize,
) -> Result<Value, LegacyError> {
    Ok(match class {
        "undefined" => Value::Undefined,
        "NaN" => Value::Number(f64::NAN),
        "Infinity" => Value::Number(f64::INFINITY),
        "-Infinity" => Value::Number(f64::NEG_INFINITY),
        "bigint" => {
            let digits = text_field(map, "digits", class)?;
            Value::BigInt(
                digits
                    .parse()
                    .map_err(|_| LegacyError(format!("bad bigint digits {digits:?}")))?,
            )
        }
        "@@asyncIterator" => Value::Symbol("@@asyncIterator".into()),
        "symbol" => Value::Symbol(text_field(map, "name", class)?.to_owned()),
        "error" => Value::Error(ErrorValue {
            name: text_field(map, "name", class).unwrap_or("Error").to_owned(),
            message: text_field(map, "message", class)?.to_owned(),
        }),
        "slot" => {
            let index = map.get("index").and_then(Json::as_u64);
            let Some(slot) = index.and_then(|i| slots.get(i as usize)) else {
                return bad(format!(
                    "slot index {:?} out of range ({} slots)",
                    map.get("index"),
                    slots.len()
                ));
            };
            let iface = map.get("iface").and_then(Json::as_str).map(str::to_owned);
            reference(slot, iface)
        }
        "tagged" => {
            let tag = text_field(map, "tag", class)?.to_owned();
            let Some(payload) = map.get("payload") else {
                return bad("@qclass tagged needs a payload");
            };
            Value::Tagged {
                tag,
                payload: Box::new(decode_recur(payload, slots, depth + 1)?),
            }
        }
        "hilbert" => decode_hilbert(map, slots, depth)?,
        other => return bad(format!("unknown @qclass {other:?}")),
    })
}

/// A record that had an `@qclass` key of its own: `original` is that
/// key's value, `rest` the other keys.
fn decode_hilbert(
    map: &Map<String, Json>,
    slots: &[String],
    depth: usize,
) -> Result<Value, LegacyError> {
    let Some(original) = map.get("original") else {
        return bad("@qclass hilbert needs an original");
    };
    let mut record = match map.get("rest") {
        None => BTreeMap::new(),
        Some(Json::Object(rest)) => decode_record(rest, slots, depth)?,
        Some(_) => return bad("@qclass hilbert's rest must be a record"),
    };
    record.insert(QCLASS.to_owned(), decode_recur(original, slots, depth + 1)?);
    Ok(Value::Record(record))
}

/// Writes `value` as a legacy body and its slots (a reference that
/// appears twice gets one slot).
pub fn encode(value: &Value) -> (Json, Vec<String>) {
    let mut slots = Vec::new();
    let body = encode_recur(value, &mut slots);
    (body, slots)
}

fn number(n: f64) -> Json {
    if n.is_nan() {
        json!({QCLASS: "NaN"})
    } else if n.is_infinite() {
        json!({QCLASS: if n > 0.0 { "Infinity" } else { "-Infinity" }})
    } else {
        vom::capdata::finite_number_json(n)
    }
}

fn encode_recur(value: &Value, slots: &mut Vec<String>) -> Json {
    match value {
        Value::Undefined => json!({QCLASS: "undefined"}),
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => number(*n),
        Value::BigInt(n) => json!({QCLASS: "bigint", "digits": n.to_string()}),
        Value::String(s) => Json::from(s.clone()),
        Value::Symbol(name) if name == "@@asyncIterator" => json!({QCLASS: "@@asyncIterator"}),
        Value::Symbol(name) => json!({QCLASS: "symbol", "name": name}),
        Value::Array(items) => Json::Array(items.iter().map(|v| encode_recur(v, slots)).collect()),
        Value::Record(map) => encode_record(map, slots),
        Value::Tagged { tag, payload } => {
            json!({QCLASS: "tagged", "tag": tag, "payload": encode_recur(payload, slots)})
        }
        Value::Remotable(r) | Value::Promise(r) => {
            let index = match slots.iter().position(|s| *s == r.slot) {
                Some(index) => index,
                None => {
                    slots.push(r.slot.clone());
                    slots.len() - 1
                }
            };
            match &r.iface {
                Some(iface) => json!({QCLASS: "slot", "iface": iface, "index": index}),
                None => json!({QCLASS: "slot", "index": index}),
            }
        }
        Value::Error(e) => json!({QCLASS: "error", "name": e.name, "message": e.message}),
    }
}

fn encode_record(map: &BTreeMap<String, Value>, slots: &mut Vec<String>) -> Json {
    let mut out = Map::new();
    let mut original = None;
    for (key, value) in map {
        if key == QCLASS {
            original = Some(encode_recur(value, slots));
        } else {
            out.insert(key.clone(), encode_recur(value, slots));
        }
    }
    match original {
        None => Json::Object(out),
        Some(original) if out.is_empty() => json!({QCLASS: "hilbert", "original": original}),
        Some(original) => json!({QCLASS: "hilbert", "original": original, "rest": out}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(value: Value) {
        let (body, slots) = encode(&value);
        assert_eq!(decode(&body, &slots).unwrap(), value, "{body}");
    }

    #[test]
    fn bodies_read_as_endo_marshal_writes_them() {
        // Bodies as @endo/marshal 1.x writes them with serializeBodyFormat 'capdata'.
        let body: Json = serde_json::from_str(
            r#"["increment",[{"@qclass":"undefined"},{"@qclass":"bigint","digits":"-12"},
               {"@qclass":"slot","iface":"Alleged: Counter","index":0},{"@qclass":"slot","index":1},
               {"@qclass":"error","errorId":"error:captp:x#20001","message":"boom","name":"TypeError"},
               {"@qclass":"hilbert","original":3,"rest":{"a":1}}]]"#,
        )
        .unwrap();
        let slots = vec!["o+3".to_owned(), "p+4".to_owned()];
        let value = decode(&body, &slots).unwrap();
        let Value::Array(items) = value else { panic!() };
        let Value::Array(args) = &items[1] else {
            panic!()
        };
        assert_eq!(args[0], Value::Undefined);
        assert_eq!(args[1], Value::BigInt(-12));
        assert_eq!(
            args[2],
            Value::Remotable(Ref::with_iface("o+3", Some("Alleged: Counter".into())))
        );
        assert_eq!(args[3], Value::Promise(Ref::new("p+4")));
        assert_eq!(
            args[4],
            Value::Error(ErrorValue {
                name: "TypeError".into(),
                message: "boom".into()
            })
        );
        assert_eq!(
            args[5],
            Value::record([("@qclass", Value::Number(3.0)), ("a", Value::Number(1.0))])
        );
    }

    #[test]
    fn every_value_round_trips_and_slots_are_shared() {
        round_trip(Value::Array(vec![
            Value::Number(f64::INFINITY),
            Value::Number(-2.5),
            Value::Symbol("@@asyncIterator".into()),
            Value::Symbol("foo".into()),
            Value::Tagged {
                tag: "copySet".into(),
                payload: Box::new(Value::Array(vec![])),
            },
            Value::record([("@qclass", Value::Null)]),
        ]));
        let counter = Value::Remotable(Ref::new("o-1"));
        let (body, slots) = encode(&Value::Array(vec![counter.clone(), counter]));
        assert_eq!(slots, vec!["o-1".to_owned()]);
        assert_eq!(
            body.to_string(),
            r#"[{"@qclass":"slot","index":0},{"@qclass":"slot","index":0}]"#
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for text in [
            r#"{"@qclass":"slot","index":3}"#,
            r#"{"@qclass":"bigint","digits":"x"}"#,
            r#"{"@qclass":"wat"}"#,
            r#"{"@qclass":7}"#,
        ] {
            let body: Json = serde_json::from_str(text).unwrap();
            assert!(decode(&body, &[]).is_err(), "{text}");
        }
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(decode(&serde_json::from_str(&deep).unwrap(), &[]).is_err());
    }
}
