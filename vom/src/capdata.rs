//! Capdata: `{ body, slots }`, where `body` is Endo "smallcaps" JSON behind a
//! `#` prefix and `slots` lists the references the body names by index.
//!
//! The same encoding crosses every boundary (vat <-> kernel, kernel <-> kernel,
//! disk): only the slots are translated, the body never changes shape.
//!
//! Smallcaps in brief: JSON values stand for themselves, except strings whose
//! first character is one of `!"#$%&'()*+,-`, which carry special meaning:
//! `!` escapes a string, `#undefined`/`#NaN`/`#Infinity`/`#-Infinity` are
//! constants, `+12`/`-3` are bigints, `%name` a symbol, `$0.Alleged: name` a
//! remotable in slot 0, `&1` a promise in slot 1. Records whose key is `#tag`
//! or `#error` are tagged values and errors.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The largest nesting depth a body may have: deeper bodies are refused
/// rather than risk exhausting the stack of whoever decodes them.
pub const BODY_DEPTH_MAX: usize = 64;

/// Marshalled data: a smallcaps body and the references it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapData {
    pub body: String,
    pub slots: Vec<String>,
}

/// A reference to an object or promise, named by its slot in the receiver's
/// namespace (a vref inside a vat, a kref inside the kernel).
///
/// Inside a vat, a reference to an import also holds it: when the last one
/// is dropped (and no durable state refers to it), vom tells the kernel the
/// vat dropped the import. Equality, order and hashing ignore the holder.
#[derive(Clone)]
pub struct Ref {
    pub slot: String,
    /// The alleged interface name, such as `Alleged: Counter`, if the sender gave one.
    pub iface: Option<String>,
    pub(crate) holder: Option<std::sync::Arc<crate::imports::Holder>>,
}

impl Ref {
    pub fn new(slot: impl Into<String>) -> Ref {
        Ref::with_iface(slot, None)
    }

    pub fn with_iface(slot: impl Into<String>, iface: Option<String>) -> Ref {
        Ref {
            slot: slot.into(),
            iface,
            holder: None,
        }
    }
}

impl fmt::Debug for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ref")
            .field("slot", &self.slot)
            .field("iface", &self.iface)
            .finish()
    }
}

impl PartialEq for Ref {
    fn eq(&self, other: &Ref) -> bool {
        (&self.slot, &self.iface) == (&other.slot, &other.iface)
    }
}

impl Eq for Ref {}

impl std::hash::Hash for Ref {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.slot, &self.iface).hash(state);
    }
}

impl PartialOrd for Ref {
    fn partial_cmp(&self, other: &Ref) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ref {
    fn cmp(&self, other: &Ref) -> std::cmp::Ordering {
        (&self.slot, &self.iface).cmp(&(&other.slot, &other.iface))
    }
}

/// An error as data: what a rejected promise or a thrown method carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorValue {
    pub name: String,
    pub message: String,
}

impl fmt::Display for ErrorValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name == "Error" {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.name, self.message)
        }
    }
}

/// A passable value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    BigInt(i128),
    String(String),
    Symbol(String),
    Array(Vec<Value>),
    Record(BTreeMap<String, Value>),
    Tagged { tag: String, payload: Box<Value> },
    Remotable(Ref),
    Promise(Ref),
    Error(ErrorValue),
}

/// Why a body could not be decoded. Always a problem with the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed capdata: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn bad<T>(what: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(what.into()))
}

fn starts_special(text: &str) -> bool {
    matches!(text.as_bytes().first(), Some(b'!'..=b'-'))
}

fn escape_string(text: &str) -> String {
    if starts_special(text) {
        format!("!{text}")
    } else {
        text.to_owned()
    }
}

/// A JSON number as JavaScript would print it: integral values without a fraction.
fn number_json(n: f64) -> Json {
    if n == 0.0 {
        // -0 passes as 0, as in Endo.
        return Json::from(0);
    }
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        return Json::from(n as i64);
    }
    serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
}

impl Value {
    pub fn string(text: impl Into<String>) -> Value {
        Value::String(text.into())
    }

    pub fn record<K: Into<String>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Record(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn error(message: impl Into<String>) -> Value {
        Value::Error(ErrorValue {
            name: "Error".to_owned(),
            message: message.into(),
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// A natural number, if this is one exactly: a bigint in `u64`'s range,
    /// or a number that is a safe integer (beyond 2^53 - 1 a number may
    /// have been rounded, so it is not taken as an integer).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(_) => self.as_safe_integer().and_then(|n| u64::try_from(n).ok()),
            Value::BigInt(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    /// An integer, if this is one exactly: a bigint in `i64`'s range, or a
    /// number that is a safe integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(_) => self.as_safe_integer(),
            Value::BigInt(n) => i64::try_from(*n).ok(),
            _ => None,
        }
    }

    /// A number that is an integer of at most [`MAX_SAFE_INTEGER`] in magnitude.
    fn as_safe_integer(&self) -> Option<i64> {
        match self {
            Value::Number(n) if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER as f64 => {
                Some(*n as i64)
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_ref(&self) -> Option<&Ref> {
        match self {
            Value::Remotable(r) | Value::Promise(r) => Some(r),
            _ => None,
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(n: f64) -> Value {
        Value::Number(n)
    }
}
/// The largest integer a number (an IEEE double, as in JavaScript) holds
/// exactly with all its neighbours: beyond it, integers travel as bigints.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        if n <= MAX_SAFE_INTEGER as u64 {
            Value::Number(n as f64)
        } else {
            Value::BigInt(i128::from(n))
        }
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Value {
        if n.unsigned_abs() <= MAX_SAFE_INTEGER as u64 {
            Value::Number(n as f64)
        } else {
            Value::BigInt(i128::from(n))
        }
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}
impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
}

/// Encodes `value` as capdata. A reference that appears twice gets one slot.
pub fn encode(value: &Value) -> CapData {
    let mut slots: Vec<String> = Vec::new();
    let json = encode_recur(value, &mut slots);
    CapData {
        body: format!("#{json}"),
        slots,
    }
}

fn slot_index(slots: &mut Vec<String>, slot: &str) -> (usize, bool) {
    match slots.iter().position(|s| s == slot) {
        Some(index) => (index, false),
        None => {
            slots.push(slot.to_owned());
            (slots.len() - 1, true)
        }
    }
}

fn encode_recur(value: &Value, slots: &mut Vec<String>) -> Json {
    match value {
        Value::Undefined => Json::from("#undefined"),
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) if n.is_nan() => Json::from("#NaN"),
        Value::Number(n) if n.is_infinite() && *n > 0.0 => Json::from("#Infinity"),
        Value::Number(n) if n.is_infinite() => Json::from("#-Infinity"),
        Value::Number(n) => number_json(*n),
        Value::BigInt(n) if *n < 0 => Json::from(n.to_string()),
        Value::BigInt(n) => Json::from(format!("+{n}")),
        Value::String(s) => Json::from(escape_string(s)),
        Value::Symbol(name) => Json::from(format!("%{name}")),
        Value::Array(items) => Json::Array(items.iter().map(|v| encode_recur(v, slots)).collect()),
        Value::Record(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (escape_string(k), encode_recur(v, slots)))
                .collect(),
        ),
        Value::Tagged { tag, payload } => {
            let mut map = serde_json::Map::new();
            map.insert("#tag".to_owned(), Json::from(escape_string(tag)));
            map.insert("payload".to_owned(), encode_recur(payload, slots));
            Json::Object(map)
        }
        Value::Remotable(r) => {
            let (index, first) = slot_index(slots, &r.slot);
            match (&r.iface, first) {
                (Some(iface), true) => Json::from(format!("${index}.{iface}")),
                _ => Json::from(format!("${index}")),
            }
        }
        Value::Promise(r) => {
            let (index, _) = slot_index(slots, &r.slot);
            Json::from(format!("&{index}"))
        }
        Value::Error(e) => {
            let mut map = serde_json::Map::new();
            map.insert("#error".to_owned(), Json::from(escape_string(&e.message)));
            map.insert("name".to_owned(), Json::from(escape_string(&e.name)));
            Json::Object(map)
        }
    }
}

/// A finite number as plain JSON, as JavaScript prints it: integral values
/// (below 2^53) without a fraction. The CLI's display and IPVM outputs
/// both show numbers this way.
pub fn finite_number_json(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Json::from(n as i64)
    } else {
        Json::from(n)
    }
}

/// Decodes capdata, validating the body and every slot index it uses.
pub fn decode(data: &CapData) -> Result<Value, DecodeError> {
    let Some(json_text) = data.body.strip_prefix('#') else {
        return bad("body does not start with '#' (not smallcaps)");
    };
    let json: Json = serde_json::from_str(json_text).map_err(|e| DecodeError(e.to_string()))?;
    let mut ifaces: Vec<Option<String>> = vec![None; data.slots.len()];
    decode_recur(&json, &data.slots, &mut ifaces, 0)
}

fn decode_slot(
    text: &str,
    slots: &[String],
    ifaces: &mut [Option<String>],
) -> Result<Ref, DecodeError> {
    let (digits, iface) = match text.split_once('.') {
        Some((d, i)) => (d, Some(i.to_owned())),
        None => (text, None),
    };
    let index: usize = digits
        .parse()
        .map_err(|_| DecodeError(format!("bad slot index in {text:?}")))?;
    let Some(slot) = slots.get(index) else {
        return bad(format!(
            "slot index {index} out of range ({} slots)",
            slots.len()
        ));
    };
    if iface.is_some() {
        ifaces[index] = iface;
    }
    Ok(Ref::with_iface(slot.clone(), ifaces[index].clone()))
}

fn unescape_key(key: &str) -> Result<String, DecodeError> {
    match key.strip_prefix('!') {
        Some(rest) => Ok(rest.to_owned()),
        None if starts_special(key) => bad(format!("record key {key:?} is not a plain string")),
        None => Ok(key.to_owned()),
    }
}

fn decode_recur(
    json: &Json,
    slots: &[String],
    ifaces: &mut [Option<String>],
    depth: usize,
) -> Result<Value, DecodeError> {
    if depth > BODY_DEPTH_MAX {
        return bad(format!(
            "nesting deeper than BODY_DEPTH_MAX ({BODY_DEPTH_MAX})"
        ));
    }
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) if !starts_special(s) => Value::String(s.clone()),
        Json::String(s) => decode_special(s, slots, ifaces)?,
        Json::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| decode_recur(v, slots, ifaces, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) if map.contains_key("#tag") => {
            let (Some(Json::String(tag)), Some(payload), 2) =
                (map.get("#tag"), map.get("payload"), map.len())
            else {
                return bad("a #tag record needs a string tag and a payload, nothing else");
            };
            Value::Tagged {
                tag: unescape_key(tag)?,
                payload: Box::new(decode_recur(payload, slots, ifaces, depth + 1)?),
            }
        }
        Json::Object(map) if map.contains_key("#error") => decode_error(map)?,
        Json::Object(map) => {
            let mut record = BTreeMap::new();
            for (key, value) in map {
                if key.starts_with('#') {
                    return bad(format!("unrecognized record type {key:?}"));
                }
                record.insert(
                    unescape_key(key)?,
                    decode_recur(value, slots, ifaces, depth + 1)?,
                );
            }
            Value::Record(record)
        }
    })
}

/// A string that starts with a special character: an escaped string, a
/// constant, a bigint, a symbol, or a reference by slot.
fn decode_special(
    s: &str,
    slots: &[String],
    ifaces: &mut [Option<String>],
) -> Result<Value, DecodeError> {
    let rest = &s[1..];
    Ok(match s.as_bytes()[0] {
        b'!' => Value::String(rest.to_owned()),
        b'#' => match rest {
            "undefined" => Value::Undefined,
            "NaN" => Value::Number(f64::NAN),
            "Infinity" => Value::Number(f64::INFINITY),
            "-Infinity" => Value::Number(f64::NEG_INFINITY),
            _ => return bad(format!("unknown constant {s:?}")),
        },
        b'+' | b'-' => {
            let digits = if s.starts_with('+') { rest } else { s };
            Value::BigInt(
                digits
                    .parse()
                    .map_err(|_| DecodeError(format!("bad bigint {s:?}")))?,
            )
        }
        b'%' => Value::Symbol(rest.to_owned()),
        b'$' => Value::Remotable(decode_slot(rest, slots, ifaces)?),
        b'&' => Value::Promise(decode_slot(rest, slots, ifaces)?),
        _ => return bad(format!("special character reserved for future use: {s:?}")),
    })
}

/// A `#error` record.
fn decode_error(map: &serde_json::Map<String, Json>) -> Result<Value, DecodeError> {
    let Some(Json::String(message)) = map.get("#error") else {
        return bad("#error needs a string message");
    };
    let name = match map.get("name") {
        Some(Json::String(name)) => unescape_key(name)?,
        None => "Error".to_owned(),
        Some(_) => return bad("#error name must be a string"),
    };
    Ok(Value::Error(ErrorValue {
        name,
        message: unescape_key(message)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: &Value) -> String {
        encode(value).body
    }

    fn round_trip(value: Value) {
        let data = encode(&value);
        assert_eq!(decode(&data).unwrap(), value, "{}", data.body);
    }

    #[test]
    fn primitives_encode_as_endo_smallcaps_does() {
        assert_eq!(body(&Value::Null), "#null");
        assert_eq!(body(&Value::Bool(true)), "#true");
        assert_eq!(body(&Value::Number(3.0)), "#3");
        assert_eq!(body(&Value::Number(-0.0)), "#0");
        assert_eq!(body(&Value::Number(1.5)), "#1.5");
        assert_eq!(body(&Value::Number(f64::NAN)), "#\"#NaN\"");
        assert_eq!(body(&Value::Number(f64::INFINITY)), "#\"#Infinity\"");
        assert_eq!(body(&Value::Number(f64::NEG_INFINITY)), "#\"#-Infinity\"");
        assert_eq!(body(&Value::Undefined), "#\"#undefined\"");
        assert_eq!(body(&Value::BigInt(12)), "#\"+12\"");
        assert_eq!(body(&Value::BigInt(-3)), "#\"-3\"");
        assert_eq!(body(&Value::Symbol("foo".into())), "#\"%foo\"");
        assert_eq!(body(&Value::string("hello")), "#\"hello\"");
    }

    #[test]
    fn strings_starting_with_a_special_character_are_escaped() {
        for (plain, encoded) in [
            ("#undefined", "#\"!#undefined\""),
            ("$0", "#\"!$0\""),
            ("!bang", "#\"!!bang\""),
            ("-3", "#\"!-3\""),
            (".dot", "#\".dot\""),
            ("", "#\"\""),
        ] {
            assert_eq!(body(&Value::string(plain)), encoded);
            round_trip(Value::string(plain));
        }
    }

    #[test]
    fn records_sort_keys_and_escape_special_ones() {
        let value = Value::record([
            ("zeta", Value::Number(1.0)),
            ("alpha", Value::Null),
            ("#hash", Value::Bool(false)),
        ]);
        assert_eq!(body(&value), r##"#{"!#hash":false,"alpha":null,"zeta":1}"##);
        round_trip(value);
    }

    #[test]
    fn remotables_and_promises_use_slots_once_each() {
        let counter = Ref::with_iface("o-4", Some("Alleged: Counter".into()));
        let value = Value::Array(vec![
            Value::Remotable(counter.clone()),
            Value::Promise(Ref::new("p+2")),
            Value::Remotable(counter.clone()),
        ]);
        let data = encode(&value);
        assert_eq!(data.body, r#"#["$0.Alleged: Counter","&1","$0"]"#);
        assert_eq!(data.slots, ["o-4", "p+2"]);
        // The interface given on first use applies to later uses of the slot.
        assert_eq!(decode(&data).unwrap(), value);
    }

    #[test]
    fn errors_and_tagged_values_are_records_with_hash_keys() {
        let error = Value::error("no such method: frob");
        assert_eq!(
            body(&error),
            r##"#{"#error":"no such method: frob","name":"Error"}"##
        );
        round_trip(error);
        let tagged = Value::Tagged {
            tag: "copySet".into(),
            payload: Box::new(Value::Array(vec![Value::Number(1.0)])),
        };
        assert_eq!(body(&tagged), r##"#{"#tag":"copySet","payload":[1]}"##);
        round_trip(tagged);
    }

    #[test]
    fn decodes_bodies_written_by_endo() {
        // A body as @endo/marshal writes it for
        // harden({ amount: 10n, brand: remotable, memo: undefined, note: '$5' }).
        let data = CapData {
            body: r##"#{"amount":"+10","brand":"$0.Alleged: BLD brand","memo":"#undefined","note":"!$5"}"##
                .into(),
            slots: vec!["ko7".into()],
        };
        let value = decode(&data).unwrap();
        let Value::Record(map) = &value else {
            panic!("{value:?}")
        };
        assert_eq!(map["amount"], Value::BigInt(10));
        assert_eq!(map["memo"], Value::Undefined);
        assert_eq!(map["note"], Value::string("$5"));
        assert_eq!(map["brand"].as_ref().unwrap().slot, "ko7");
        assert_eq!(encode(&value), data);
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        let cases = [
            ("3", vec![]),                       // no '#'
            ("#[", vec![]),                      // not JSON
            ("#\"$1\"", vec!["o+1".to_owned()]), // slot out of range
            ("#\"#bogus\"", vec![]),             // unknown constant
            ("#\"*reserved\"", vec![]),          // reserved prefix
            ("#{\"#weird\":1}", vec![]),         // unknown record type
            ("#\"+12x\"", vec![]),               // bad bigint
            ("#{\"#tag\":\"t\"}", vec![]),       // tag without payload
        ];
        for (text, slots) in cases {
            let data = CapData {
                body: text.into(),
                slots,
            };
            assert!(decode(&data).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused() {
        let deep = format!(
            "#{}{}",
            "[".repeat(BODY_DEPTH_MAX + 2),
            "]".repeat(BODY_DEPTH_MAX + 2)
        );
        let err = decode(&CapData {
            body: deep,
            slots: vec![],
        })
        .unwrap_err();
        assert!(err.to_string().contains("BODY_DEPTH_MAX"), "{err}");
    }
}
