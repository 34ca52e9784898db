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

use std::cell::RefCell;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
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
///
/// The body is written straight from `value` (no JSON tree in between): a
/// delivery, a send and a resolution each encode one.
pub fn encode(value: &Value) -> CapData {
    let slots = RefCell::new(Vec::new());
    let mut body = Vec::with_capacity(32);
    body.push(b'#');
    serde_json::to_writer(
        &mut body,
        &Smallcaps {
            value,
            slots: &slots,
        },
    )
    .expect("vom invariant: a value encodes as JSON (every key is a string)");
    CapData {
        body: String::from_utf8(body).expect("vom invariant: serde_json writes UTF-8"),
        slots: slots.into_inner(),
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

/// A value as the smallcaps JSON it encodes to, naming references by their
/// place in `slots` (added on first use).
struct Smallcaps<'a> {
    value: &'a Value,
    slots: &'a RefCell<Vec<String>>,
}

/// A string or record key, with `!` before it when it starts with a
/// special character.
struct Escaped<'a>(&'a str);

impl Serialize for Escaped<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if starts_special(self.0) {
            serializer.collect_str(&format_args!("!{}", self.0))
        } else {
            serializer.serialize_str(self.0)
        }
    }
}

impl Serialize for Smallcaps<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let nested = |value| Smallcaps {
            value,
            slots: self.slots,
        };
        match self.value {
            Value::Undefined => serializer.serialize_str("#undefined"),
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Number(n) => serialize_number(*n, serializer),
            Value::BigInt(n) if *n < 0 => serializer.collect_str(n),
            Value::BigInt(n) => serializer.collect_str(&format_args!("+{n}")),
            Value::String(s) => Escaped(s).serialize(serializer),
            Value::Symbol(name) => serializer.collect_str(&format_args!("%{name}")),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&nested(item))?;
                }
                seq.end()
            }
            // A record's keys are written in the map's order, which is
            // also the order of the escaped keys: `!` sorts before every
            // other special character, and the special characters are
            // contiguous, so escaping moves no key past a plain one.
            Value::Record(map) => {
                let mut record = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map {
                    record.serialize_entry(&Escaped(key), &nested(value))?;
                }
                record.end()
            }
            Value::Tagged { tag, payload } => {
                let mut record = serializer.serialize_map(Some(2))?;
                record.serialize_entry("#tag", &Escaped(tag))?;
                record.serialize_entry("payload", &nested(payload))?;
                record.end()
            }
            Value::Remotable(r) => {
                let (index, first) = slot_index(&mut self.slots.borrow_mut(), &r.slot);
                match (&r.iface, first) {
                    (Some(iface), true) => {
                        serializer.collect_str(&format_args!("${index}.{iface}"))
                    }
                    _ => serializer.collect_str(&format_args!("${index}")),
                }
            }
            Value::Promise(r) => {
                let (index, _) = slot_index(&mut self.slots.borrow_mut(), &r.slot);
                serializer.collect_str(&format_args!("&{index}"))
            }
            Value::Error(e) => {
                let mut record = serializer.serialize_map(Some(2))?;
                record.serialize_entry("#error", &Escaped(&e.message))?;
                record.serialize_entry("name", &Escaped(&e.name))?;
                record.end()
            }
        }
    }
}

/// A number as smallcaps writes it: the non-finite ones as constants, -0
/// as 0, and integral values (below 2^53) without a fraction, as
/// JavaScript prints them.
fn serialize_number<S: Serializer>(n: f64, serializer: S) -> Result<S::Ok, S::Error> {
    if n.is_nan() {
        serializer.serialize_str("#NaN")
    } else if n.is_infinite() && n > 0.0 {
        serializer.serialize_str("#Infinity")
    } else if n.is_infinite() {
        serializer.serialize_str("#-Infinity")
    } else if n == 0.0 {
        serializer.serialize_i64(0)
    } else if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        serializer.serialize_i64(n as i64)
    } else {
        serializer.serialize_f64(n)
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
///
/// The body is decoded straight into a [`Value`]. A record with a key that
/// starts with `#` (an error, a tagged value, or a malformed record) is
/// decoded again by way of a JSON tree, where all of its keys can be seen
/// before its shape is decided: such records are rare on the hot path.
pub fn decode(data: &CapData) -> Result<Value, DecodeError> {
    let Some(json_text) = data.body.strip_prefix('#') else {
        return bad("body does not start with '#' (not smallcaps)");
    };
    let decoding = Decoding {
        slots: &data.slots,
        ifaces: RefCell::new(vec![None; data.slots.len()]),
        stopped: RefCell::new(None),
    };
    let mut deserializer = serde_json::Deserializer::from_str(json_text);
    let decoded = Node {
        decoding: &decoding,
        depth: 0,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    match (decoded, decoding.stopped.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(Stop::Bad(e))) => Err(e),
        (Err(_), Some(Stop::HashKey)) => decode_by_tree(json_text, &data.slots),
        (Err(e), None) => Err(DecodeError(e.to_string())),
    }
}

fn decode_by_tree(json_text: &str, slots: &[String]) -> Result<Value, DecodeError> {
    let json: Json = serde_json::from_str(json_text).map_err(|e| DecodeError(e.to_string()))?;
    let mut ifaces: Vec<Option<String>> = vec![None; slots.len()];
    decode_recur(&json, slots, &mut ifaces, 0)
}

/// What a body being decoded names, and why decoding stopped early.
struct Decoding<'a> {
    slots: &'a [String],
    ifaces: RefCell<Vec<Option<String>>>,
    stopped: RefCell<Option<Stop>>,
}

enum Stop {
    /// The body is malformed, for this reason.
    Bad(DecodeError),
    /// A record has a `#` key: decode the body by way of a JSON tree.
    HashKey,
}

impl Decoding<'_> {
    fn stop<E: de::Error>(&self, stop: Stop) -> E {
        let what = match &stop {
            Stop::Bad(e) => e.0.clone(),
            Stop::HashKey => "a record key starts with '#'".to_owned(),
        };
        *self.stopped.borrow_mut() = Some(stop);
        E::custom(what)
    }

    fn special<E: de::Error>(&self, text: &str) -> Result<Value, E> {
        decode_special(text, self.slots, &mut self.ifaces.borrow_mut())
            .map_err(|e| self.stop(Stop::Bad(e)))
    }
}

/// One node of a body, `depth` deep.
#[derive(Clone, Copy)]
struct Node<'d, 'a> {
    decoding: &'d Decoding<'a>,
    depth: usize,
}

impl Node<'_, '_> {
    fn child(self) -> Self {
        Node {
            depth: self.depth + 1,
            ..self
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.depth > BODY_DEPTH_MAX {
            let e = DecodeError(format!(
                "nesting deeper than BODY_DEPTH_MAX ({BODY_DEPTH_MAX})"
            ));
            return Err(self.decoding.stop(Stop::Bad(e)));
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a smallcaps value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n as f64))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n as f64))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Ok(Value::Number(n))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        if starts_special(s) {
            self.decoding.special(s)
        } else {
            Ok(Value::String(s.to_owned()))
        }
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        if starts_special(&s) {
            self.decoding.special(&s)
        } else {
            Ok(Value::String(s))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(item) = seq.next_element_seed(self.child())? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut record = BTreeMap::new();
        while let Some(mut key) = map.next_key::<String>()? {
            match key.as_bytes().first() {
                Some(b'#') => return Err(self.decoding.stop(Stop::HashKey)),
                Some(b'!') => {
                    key.remove(0);
                }
                Some(b'"'..=b'-') => {
                    let e = DecodeError(format!("record key {key:?} is not a plain string"));
                    return Err(self.decoding.stop(Stop::Bad(e)));
                }
                _ => {}
            }
            record.insert(key, map.next_value_seed(self.child())?);
        }
        Ok(Value::Record(record))
    }
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

    /// Decoding straight into a value agrees with decoding by way of a JSON
    /// tree, on good bodies and bad ones alike.
    #[test]
    fn direct_decoding_agrees_with_the_tree() {
        let slots = vec!["o-1".to_owned(), "p+2".to_owned()];
        let bodies = [
            r#"#[1,-2,3.5,1e300,18446744073709551616,true,null,"x","\u00e9"]"#,
            r##"#{"a":{"b":["$0.Alleged: X","$0","&1"]},"!#k":"!!v","":""}"##,
            r##"#{"z":1,"#error":"boom","name":"TypeError"}"##,
            r##"#{"#tag":"copySet","payload":["+5","-7","%sym","#undefined","#NaN"]}"##,
            r##"#[{"x":{"#tag":"t","payload":{"#error":"e"}}}]"##,
            r##"#{"x":1,"#weird":2}"##,
            r##"#{"$bad":1}"##,
            r#"#["$2"]"#,
            r#"#["$x"]"#,
            r#"#[1,]"#,
            r#"#[1] 2"#,
            r#"#"*reserved""#,
            r#"#{"a":1,"a":2}"#,
        ];
        for body in bodies {
            let data = CapData {
                body: body.to_owned(),
                slots: slots.clone(),
            };
            let direct = decode(&data);
            let tree = decode_by_tree(&body[1..], &slots);
            assert_eq!(
                direct.is_ok(),
                tree.is_ok(),
                "{body}: {direct:?} / {tree:?}"
            );
            if let (Ok(direct), Ok(tree)) = (direct, tree) {
                assert_eq!(format!("{direct:?}"), format!("{tree:?}"), "{body}");
            }
        }
    }

    // The encoder as it was before bodies were written straight from a
    // value, by way of a JSON tree: the reference the direct one must match.
    fn escape_string(text: &str) -> String {
        if starts_special(text) {
            format!("!{text}")
        } else {
            text.to_owned()
        }
    }
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
    fn encode_recur_by_tree(value: &Value, slots: &mut Vec<String>) -> Json {
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
            Value::Array(items) => Json::Array(
                items
                    .iter()
                    .map(|v| encode_recur_by_tree(v, slots))
                    .collect(),
            ),
            Value::Record(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (escape_string(k), encode_recur_by_tree(v, slots)))
                    .collect(),
            ),
            Value::Tagged { tag, payload } => {
                let mut map = serde_json::Map::new();
                map.insert("#tag".to_owned(), Json::from(escape_string(tag)));
                map.insert("payload".to_owned(), encode_recur_by_tree(payload, slots));
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

    /// Values built at random (from a fixed seed) encode and decode back to
    /// themselves, and decode the same way by way of a JSON tree.
    #[test]
    fn random_values_round_trip() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let texts = [
            "",
            "a",
            "!x",
            "#undefined",
            "$0",
            "&1",
            "-3",
            "+4",
            "%s",
            "é\"\n",
            "zz",
        ];
        fn build(next: &mut dyn FnMut(u64) -> u64, texts: &[&str], depth: u32) -> Value {
            let text = |next: &mut dyn FnMut(u64) -> u64| {
                texts[next(texts.len() as u64) as usize].to_owned()
            };
            match next(if depth > 3 { 9 } else { 12 }) {
                0 => Value::Undefined,
                1 => Value::Null,
                2 => Value::Bool(next(2) == 1),
                3 => Value::Number(
                    [0.0, -0.0, 1.5, 7.0, -1e300, f64::NAN, f64::INFINITY][next(7) as usize],
                ),
                4 => Value::BigInt(next(1 << 40) as i128 - (1 << 39)),
                5 => Value::String(text(next)),
                6 => Value::Symbol(text(next)),
                7 => Value::Remotable(Ref::with_iface(
                    format!("o-{}", next(3)),
                    Some("Alleged: T".into()),
                )),
                8 => Value::Promise(Ref::new(format!("p+{}", next(3)))),
                9 => Value::Array(
                    (0..next(4))
                        .map(|_| build(next, texts, depth + 1))
                        .collect(),
                ),
                10 => Value::Record(
                    (0..next(4))
                        .map(|_| (text(next), build(next, texts, depth + 1)))
                        .collect(),
                ),
                _ => Value::Tagged {
                    tag: text(next),
                    payload: Box::new(build(next, texts, depth + 1)),
                },
            }
        }
        for _ in 0..2_000 {
            let value = build(&mut next, &texts, 0);
            let data = encode(&value);
            let mut slots = Vec::new();
            let tree_body = format!("#{}", encode_recur_by_tree(&value, &mut slots));
            assert_eq!((&data.body, &data.slots), (&tree_body, &slots));
            let decoded = decode(&data).unwrap_or_else(|e| panic!("{}: {e}", data.body));
            let tree = decode_by_tree(&data.body[1..], &data.slots).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{tree:?}"), "{}", data.body);
            // NaN is not equal to itself: compare the encodings instead.
            assert_eq!(encode(&decoded), data, "{value:?}");
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
