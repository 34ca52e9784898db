//! How values look on the command line, in both directions.
//!
//! Output is JSON. Plain data stands for itself; what JSON cannot say is a
//! one-key object: `{"$ref": "counter"}` (a reference, by pet name where one
//! is bound, else by kref), `{"$promise": "kp4"}`, `{"$bigint": "12"}`,
//! `{"$undefined": true}`, `{"$number": "NaN"}`, `{"$symbol": "name"}`,
//! `{"$error": "message", "name": "TypeError"}`, `{"$tag": "t", "payload": ...}`.
//!
//! Input (each ARG of `vat send`) is a bound pet name or a kref (a reference),
//! else JSON (with the same `$` forms), else a plain string. To pass a string
//! that is also a pet name, quote it as JSON: `'"counter"'`.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};
use vom::{ErrorValue, Ref, Value};

/// Renders `value` for people and scripts; `name_of` maps a kref to its display name.
pub fn to_display(value: &Value, name_of: &dyn Fn(&str) -> String) -> Json {
    match value {
        Value::Undefined => json!({"$undefined": true}),
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) if n.is_finite() => vom::capdata::finite_number_json(*n),
        Value::Number(n) => json!({"$number": n.to_string().replace("inf", "Infinity")}),
        Value::BigInt(n) => json!({"$bigint": n.to_string()}),
        Value::String(s) => Json::from(s.as_str()),
        Value::Symbol(s) => json!({"$symbol": s}),
        Value::Array(items) => Json::Array(items.iter().map(|v| to_display(v, name_of)).collect()),
        Value::Record(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), to_display(v, name_of)))
                .collect(),
        ),
        Value::Tagged { tag, payload } => {
            json!({"$tag": tag, "payload": to_display(payload, name_of)})
        }
        Value::Remotable(r) => json!({"$ref": name_of(&r.slot)}),
        Value::Promise(r) => json!({"$promise": name_of(&r.slot)}),
        Value::Error(e) => json!({"$error": e.message, "name": e.name}),
    }
}

/// Why a command-line argument does not read as a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("unknown reference {0:?}")]
    UnknownReference(String),
    #[error("bad $bigint {0:?}: an integer of at most 128 bits")]
    BadBigint(String),
    #[error("bad $number {0:?}")]
    BadNumber(String),
    #[error("unknown special form {0:?} (see `vat send --help`)")]
    UnknownForm(String),
}

/// Parses one command-line argument. `resolve` maps a pet name or kref to a
/// kref, or says it is unknown.
pub fn parse_arg(text: &str, resolve: &dyn Fn(&str) -> Option<String>) -> Result<Value, ArgError> {
    if let Some(kref) = resolve(text) {
        return Ok(reference(kref));
    }
    match serde_json::from_str::<Json>(&exact_integers(text)) {
        Ok(json) => from_display(&json, resolve),
        Err(_) => Ok(Value::String(text.to_owned())),
    }
}

/// `text` with every JSON integer literal beyond ±(2^53 - 1) written as
/// `{"$bigint":"N"}`, so that it is read exactly (serde_json would round
/// it to a float). Text that is not JSON comes back unchanged in meaning.
fn exact_integers(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let (mut copied, mut at, mut in_string) = (0, 0, false);
    while at < bytes.len() {
        let byte = bytes[at];
        if in_string {
            match byte {
                b'\\' => at += 1,
                b'"' => in_string = false,
                _ => {}
            }
            at += 1;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            at += 1;
            continue;
        }
        if byte != b'-' && !byte.is_ascii_digit() {
            at += 1;
            continue;
        }
        let end = at
            + bytes[at..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')))
                .unwrap_or(bytes.len() - at);
        let literal = &text[at..end];
        let digits = literal.strip_prefix('-').unwrap_or(literal);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let safe = literal
                .parse::<i64>()
                .is_ok_and(|n| n.unsigned_abs() <= vom::capdata::MAX_SAFE_INTEGER as u64);
            if !safe {
                out.push_str(&text[copied..at]);
                out.push_str(&format!("{{\"$bigint\":\"{literal}\"}}"));
                copied = end;
            }
        }
        at = end;
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

fn reference(kref: String) -> Value {
    if kref.starts_with("kp") {
        Value::Promise(Ref::new(kref))
    } else {
        Value::Remotable(Ref::new(kref))
    }
}

fn from_display(json: &Json, resolve: &dyn Fn(&str) -> Option<String>) -> Result<Value, ArgError> {
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| from_display(v, resolve))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => {
            let single = |key: &str| (map.len() == 1).then(|| map.get(key)).flatten();
            if let Some(Json::String(name)) = single("$ref").or_else(|| single("$promise")) {
                let kref = resolve(name).ok_or_else(|| ArgError::UnknownReference(name.clone()))?;
                return Ok(reference(kref));
            }
            if let Some(Json::String(digits)) = single("$bigint") {
                return digits
                    .parse()
                    .map(Value::BigInt)
                    .map_err(|_| ArgError::BadBigint(digits.clone()));
            }
            if single("$undefined").is_some() {
                return Ok(Value::Undefined);
            }
            if let Some(Json::String(n)) = single("$number") {
                return match n.as_str() {
                    "NaN" => Ok(Value::Number(f64::NAN)),
                    "Infinity" => Ok(Value::Number(f64::INFINITY)),
                    "-Infinity" => Ok(Value::Number(f64::NEG_INFINITY)),
                    _ => Err(ArgError::BadNumber(n.clone())),
                };
            }
            if let Some(Json::String(message)) = map.get("$error") {
                let name = map.get("name").and_then(Json::as_str).unwrap_or("Error");
                return Ok(Value::Error(ErrorValue {
                    name: name.to_owned(),
                    message: message.clone(),
                }));
            }
            let mut record = BTreeMap::new();
            for (key, value) in map {
                if key.starts_with('$') {
                    return Err(ArgError::UnknownForm(key.clone()));
                }
                record.insert(key.clone(), from_display(value, resolve)?);
            }
            Value::Record(record)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(name: &str) -> Option<String> {
        match name {
            "counter" | "ko1" => Some("ko1".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn arguments_are_pet_names_then_json_then_strings() {
        assert_eq!(
            parse_arg("counter", &resolve).unwrap(),
            Value::Remotable(Ref::new("ko1"))
        );
        assert_eq!(
            parse_arg("ko1", &resolve).unwrap(),
            Value::Remotable(Ref::new("ko1"))
        );
        assert_eq!(parse_arg("42", &resolve).unwrap(), Value::Number(42.0));
        assert_eq!(
            parse_arg("\"counter\"", &resolve).unwrap(),
            Value::string("counter")
        );
        assert_eq!(
            parse_arg("hello world", &resolve).unwrap(),
            Value::string("hello world")
        );
        assert_eq!(
            parse_arg(r#"{"to":{"$ref":"counter"},"n":{"$bigint":"7"}}"#, &resolve).unwrap(),
            Value::record([
                ("to", Value::Remotable(Ref::new("ko1"))),
                ("n", Value::BigInt(7))
            ])
        );
    }

    #[test]
    fn integer_literals_are_read_exactly() {
        let big = |digits: &str| Value::BigInt(digits.parse().unwrap());
        assert_eq!(
            parse_arg("9007199254740991", &resolve).unwrap(),
            Value::Number(9007199254740991.0)
        );
        assert_eq!(
            parse_arg("9007199254740993", &resolve).unwrap(),
            big("9007199254740993")
        );
        assert_eq!(
            parse_arg("-9007199254740993", &resolve).unwrap(),
            big("-9007199254740993")
        );
        assert_eq!(
            parse_arg("18446744073709551616", &resolve).unwrap(),
            big("18446744073709551616")
        );
        assert_eq!(
            parse_arg(
                r#"[1, {"n": 18446744073709551616}, "123456789012345678901", 2.5e30]"#,
                &resolve
            )
            .unwrap(),
            Value::Array(vec![
                Value::Number(1.0),
                Value::record([("n", big("18446744073709551616"))]),
                Value::string("123456789012345678901"),
                Value::Number(2.5e30),
            ])
        );
        // A literal beyond what a bigint holds here is refused, never rounded.
        let huge = "1".repeat(60);
        assert_eq!(
            parse_arg(&huge, &resolve).unwrap_err().to_string(),
            format!("bad $bigint {huge:?}: an integer of at most 128 bits")
        );
    }

    #[test]
    fn unknown_references_and_forms_in_json_are_errors() {
        assert_eq!(
            parse_arg(r#"{"$ref":"nobody"}"#, &resolve),
            Err(ArgError::UnknownReference("nobody".into()))
        );
        assert_eq!(
            parse_arg(r#"{"$weird":1}"#, &resolve),
            Err(ArgError::UnknownForm("$weird".into()))
        );
    }

    #[test]
    fn display_names_references_and_marks_what_json_cannot_say() {
        let value = Value::Array(vec![
            Value::Number(3.0),
            Value::Remotable(Ref::new("ko1")),
            Value::Undefined,
            Value::BigInt(-5),
        ]);
        let shown = to_display(&value, &|kref| {
            if kref == "ko1" {
                "counter".into()
            } else {
                kref.into()
            }
        });
        assert_eq!(
            shown.to_string(),
            r#"[3,{"$ref":"counter"},{"$undefined":true},{"$bigint":"-5"}]"#
        );
    }

    #[test]
    fn display_round_trips_through_parse() {
        let value = Value::record([
            ("big", Value::BigInt(1 << 70)),
            ("nan", Value::Number(f64::INFINITY)),
            ("who", Value::Remotable(Ref::new("ko1"))),
        ]);
        let shown = to_display(&value, &|k| k.to_owned());
        assert_eq!(parse_arg(&shown.to_string(), &resolve).unwrap(), value);
    }
}
