//! Conversions between Rust types and passable [`Value`]s, which double as a
//! method's interface guard: the `#[vom::exo]` macro converts every argument
//! with [`FromPassable`] before the method runs, so a call with the wrong
//! arity or argument types is rejected with a clear `TypeError` and the
//! object's state is never touched.

use crate::capdata::{self, Ref, Value};
use crate::{Error, Reply};

/// A type a method can take as an argument. `SHAPE` names what the guard
/// accepts, for error messages.
pub trait FromPassable: Sized {
    const SHAPE: &'static str;
    fn from_passable(value: &Value) -> Option<Self>;
}

/// A type a method can return or pass in a message.
pub trait ToPassable {
    fn to_passable(&self) -> Value;
}

/// What a method may return: a passable value, a `Result` of one, or a [`Reply`].
pub trait IntoReply {
    fn into_reply(self) -> Reply;
}

impl IntoReply for Reply {
    fn into_reply(self) -> Reply {
        self
    }
}

impl<T: ToPassable> IntoReply for T {
    fn into_reply(self) -> Reply {
        Reply::Ready(Ok(self.to_passable()))
    }
}

impl<T: ToPassable> IntoReply for Result<T, Error> {
    fn into_reply(self) -> Reply {
        Reply::Ready(self.map(|value| value.to_passable()))
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Remotable(r) => {
            return match &r.iface {
                Some(iface) => format!("a remotable ({iface})"),
                None => "a remotable".to_owned(),
            };
        }
        Value::Promise(_) => return "a promise".to_owned(),
        _ => {}
    }
    let body = capdata::encode(value).body;
    let body = body.strip_prefix('#').unwrap_or(&body);
    if body.len() > 60 {
        format!("{}...", &body[..body.floor_char_boundary(60)])
    } else {
        body.to_owned()
    }
}

/// Checks a call against a method's guard: its arity, then each argument's
/// shape. Used by the code `#[vom::exo]` generates.
#[doc(hidden)]
pub fn guard_arity(
    interface: &str,
    method: &str,
    args: &[Value],
    count: usize,
) -> Result<(), Error> {
    if args.len() == count {
        Ok(())
    } else {
        Err(Error::type_error(format!(
            "{interface}.{method}: expected {count} argument(s), got {}",
            args.len()
        )))
    }
}

#[doc(hidden)]
pub fn guard_arg<T: FromPassable>(
    interface: &str,
    method: &str,
    args: &[Value],
    index: usize,
) -> Result<T, Error> {
    let value = &args[index];
    T::from_passable(value).ok_or_else(|| {
        Error::type_error(format!(
            "{interface}.{method}: argument {index} must be {}, got {}",
            T::SHAPE,
            describe(value)
        ))
    })
}

#[doc(hidden)]
pub fn unknown_method(interface: &str, method: &str, methods: &[&str]) -> Error {
    Error::type_error(format!(
        "{interface} has no method {method:?} (it has: {})",
        methods.join(", ")
    ))
}

impl FromPassable for Value {
    const SHAPE: &'static str = "any passable";
    fn from_passable(value: &Value) -> Option<Self> {
        Some(value.clone())
    }
}

impl ToPassable for Value {
    fn to_passable(&self) -> Value {
        self.clone()
    }
}

impl FromPassable for u64 {
    const SHAPE: &'static str =
        "a natural number (u64: 0 to 18446744073709551615, a bigint beyond 2^53 - 1)";
    fn from_passable(value: &Value) -> Option<Self> {
        value.as_u64()
    }
}

impl ToPassable for u64 {
    fn to_passable(&self) -> Value {
        // Beyond 2^53 - 1 a JavaScript number loses precision: large values pass as bigints.
        Value::from(*self)
    }
}

impl FromPassable for u32 {
    const SHAPE: &'static str = "a natural number below 2^32 (u32: 0 to 4294967295)";
    fn from_passable(value: &Value) -> Option<Self> {
        value.as_u64().and_then(|n| u32::try_from(n).ok())
    }
}

impl ToPassable for u32 {
    fn to_passable(&self) -> Value {
        Value::Number(f64::from(*self))
    }
}

impl FromPassable for i64 {
    const SHAPE: &'static str =
        "an integer (i64: -9223372036854775808 to 9223372036854775807, a bigint beyond 2^53 - 1)";
    fn from_passable(value: &Value) -> Option<Self> {
        value.as_i64()
    }
}

impl ToPassable for i64 {
    fn to_passable(&self) -> Value {
        Value::from(*self)
    }
}

impl FromPassable for f64 {
    const SHAPE: &'static str = "a number";
    fn from_passable(value: &Value) -> Option<Self> {
        value.as_f64()
    }
}

impl ToPassable for f64 {
    fn to_passable(&self) -> Value {
        Value::Number(*self)
    }
}

impl FromPassable for bool {
    const SHAPE: &'static str = "a boolean";
    fn from_passable(value: &Value) -> Option<Self> {
        match value {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl ToPassable for bool {
    fn to_passable(&self) -> Value {
        Value::Bool(*self)
    }
}

impl FromPassable for String {
    const SHAPE: &'static str = "a string";
    fn from_passable(value: &Value) -> Option<Self> {
        value.as_str().map(str::to_owned)
    }
}

impl ToPassable for String {
    fn to_passable(&self) -> Value {
        Value::String(self.clone())
    }
}

impl ToPassable for &str {
    fn to_passable(&self) -> Value {
        Value::String((*self).to_owned())
    }
}

impl ToPassable for () {
    fn to_passable(&self) -> Value {
        Value::Undefined
    }
}

impl FromPassable for Ref {
    const SHAPE: &'static str = "a remotable reference";
    fn from_passable(value: &Value) -> Option<Self> {
        match value {
            Value::Remotable(r) => Some(r.clone()),
            _ => None,
        }
    }
}

impl ToPassable for Ref {
    fn to_passable(&self) -> Value {
        Value::Remotable(self.clone())
    }
}

impl<T: FromPassable> FromPassable for Option<T> {
    const SHAPE: &'static str = "undefined, null, or the inner shape";
    fn from_passable(value: &Value) -> Option<Self> {
        match value {
            Value::Undefined | Value::Null => Some(None),
            other => T::from_passable(other).map(Some),
        }
    }
}

impl<T: ToPassable> ToPassable for Option<T> {
    fn to_passable(&self) -> Value {
        self.as_ref()
            .map_or(Value::Undefined, ToPassable::to_passable)
    }
}

impl<T: FromPassable> FromPassable for Vec<T> {
    const SHAPE: &'static str = "an array";
    fn from_passable(value: &Value) -> Option<Self> {
        match value {
            Value::Array(items) => items.iter().map(T::from_passable).collect(),
            _ => None,
        }
    }
}

impl<T: ToPassable> ToPassable for Vec<T> {
    fn to_passable(&self) -> Value {
        Value::Array(self.iter().map(ToPassable::to_passable).collect())
    }
}

/// A serde struct (or any plain serde data) passed as a record: return
/// `Record(best)` from a method, or take `Record<Bid>` as an argument, in
/// place of building `Value::record` by hand. Plain data only: numbers,
/// strings, booleans, null, arrays and maps (references are not data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<T>(pub T);

fn json_to_value(json: serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(b),
        Json::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(i)) => Value::from(i),
            _ => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(s),
        Json::Array(items) => Value::Array(items.into_iter().map(json_to_value).collect()),
        Json::Object(map) => Value::Record(
            map.into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        ),
    }
}

fn value_to_json(value: &Value) -> Option<serde_json::Value> {
    use serde_json::Value as Json;
    Some(match value {
        Value::Null | Value::Undefined => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        // An integral number reads as an integer (serde will not read 5.0 as a u64).
        Value::Number(n) if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_991.0 => {
            Json::from(*n as i64)
        }
        Value::Number(n) => serde_json::Number::from_f64(*n).map(Json::Number)?,
        Value::BigInt(n) => match (u64::try_from(*n), i64::try_from(*n)) {
            (Ok(u), _) => Json::from(u),
            (_, Ok(i)) => Json::from(i),
            _ => return None,
        },
        Value::String(s) => Json::String(s.clone()),
        Value::Array(items) => Json::Array(items.iter().map(value_to_json).collect::<Option<_>>()?),
        Value::Record(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Some((k.clone(), value_to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

impl<T: serde::Serialize> ToPassable for Record<T> {
    fn to_passable(&self) -> Value {
        let json = serde_json::to_value(&self.0)
            .unwrap_or_else(|e| panic!("vom invariant: a Record is plain serde data: {e}"));
        json_to_value(json)
    }
}

impl<T: serde::de::DeserializeOwned> FromPassable for Record<T> {
    const SHAPE: &'static str = "a record of plain data of the expected shape";
    fn from_passable(value: &Value) -> Option<Self> {
        serde_json::from_value(value_to_json(value)?)
            .ok()
            .map(Record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Bid {
        name: String,
        amount: u64,
    }

    #[test]
    fn serde_structs_pass_as_records_and_back() {
        let bid = Record(Bid {
            name: "alice".into(),
            amount: 9_007_199_254_740_993,
        });
        let value = bid.to_passable();
        assert_eq!(
            value,
            Value::record([
                ("amount", Value::from(9_007_199_254_740_993u64)),
                ("name", Value::string("alice")),
            ])
        );
        assert_eq!(Record::<Bid>::from_passable(&value), Some(bid));
        // As a number comes from another vat or the CLI.
        let sent = Value::record([
            ("amount", Value::Number(5.0)),
            ("name", Value::string("bob")),
        ]);
        assert_eq!(
            Record::<Bid>::from_passable(&sent).map(|r| r.0.amount),
            Some(5)
        );
        let wrong = Value::record([("name", Value::from(3u64))]);
        assert_eq!(Record::<Bid>::from_passable(&wrong), None);
    }

    #[test]
    fn guards_name_the_method_the_argument_and_the_expected_shape() {
        let args = vec![Value::string("ten")];
        let error = guard_arg::<u64>("Purse", "withdraw", &args, 0).unwrap_err();
        assert_eq!(error.name, "TypeError");
        assert_eq!(
            error.message,
            r#"Purse.withdraw: argument 0 must be a natural number (u64: 0 to 18446744073709551615, a bigint beyond 2^53 - 1), got "ten""#
        );
        let error = guard_arity("Purse", "withdraw", &args, 2).unwrap_err();
        assert_eq!(
            error.message,
            "Purse.withdraw: expected 2 argument(s), got 1"
        );
        assert_eq!(guard_arg::<String>("P", "m", &args, 0).unwrap(), "ten");
    }

    #[test]
    fn large_naturals_pass_as_bigints_and_come_back() {
        let big = u64::MAX;
        let value = big.to_passable();
        assert_eq!(value, Value::BigInt(i128::from(big)));
        assert_eq!(u64::from_passable(&value), Some(big));
        assert_eq!(7u64.to_passable(), Value::Number(7.0));
        assert_eq!(u64::from_passable(&Value::Number(-1.0)), None);
        assert_eq!(u64::from_passable(&Value::Number(1.5)), None);
    }

    #[test]
    fn integers_are_taken_only_when_exact_and_in_range() {
        let safe = crate::capdata::MAX_SAFE_INTEGER;
        // Numbers: safe integers only; beyond, a number may have been rounded.
        assert_eq!(
            u64::from_passable(&Value::Number(safe as f64)),
            Some(safe as u64)
        );
        assert_eq!(u64::from_passable(&Value::Number((safe + 1) as f64)), None);
        assert_eq!(
            u64::from_passable(&Value::Number(1.8446744073709552e19)),
            None
        );
        assert_eq!(
            i64::from_passable(&Value::Number(-(safe as f64))),
            Some(-safe)
        );
        assert_eq!(
            i64::from_passable(&Value::Number(-(safe as f64) - 1.0)),
            None
        );
        // Bigints: any value in the type's range, nothing outside it (never clamped).
        assert_eq!(
            u64::from_passable(&Value::BigInt(u64::MAX.into())),
            Some(u64::MAX)
        );
        assert_eq!(
            u64::from_passable(&Value::BigInt(i128::from(u64::MAX) + 1)),
            None
        );
        assert_eq!(u64::from_passable(&Value::BigInt(-1)), None);
        assert_eq!(
            i64::from_passable(&Value::BigInt(i64::MIN.into())),
            Some(i64::MIN)
        );
        assert_eq!(
            i64::from_passable(&Value::BigInt(i128::from(i64::MAX) + 1)),
            None
        );
        assert_eq!(u32::from_passable(&Value::BigInt(1 << 32)), None);
        // Results: beyond the safe range they are bigints, both ways.
        assert_eq!((safe as u64).to_passable(), Value::Number(safe as f64));
        assert_eq!(
            (safe as u64 + 1).to_passable(),
            Value::BigInt((safe + 1).into())
        );
        assert_eq!(Value::from(-safe - 1), Value::BigInt((-safe - 1).into()));
        assert_eq!(Value::from(u64::MAX), Value::BigInt(u64::MAX.into()));
    }

    #[test]
    fn arrays_and_options_check_their_items() {
        let ok = Value::Array(vec![Value::Number(1.0), Value::Number(2.0)]);
        assert_eq!(Vec::<u64>::from_passable(&ok), Some(vec![1, 2]));
        let mixed = Value::Array(vec![Value::Number(1.0), Value::string("x")]);
        assert_eq!(Vec::<u64>::from_passable(&mixed), None);
        assert_eq!(Option::<u64>::from_passable(&Value::Undefined), Some(None));
    }
}
