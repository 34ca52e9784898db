//! Pure task functions for IPVM jobs: each is a method of this module's
//! root object, called with the task's inputs as arguments (positional
//! inputs), or with one record of them (the seeds' named inputs).
//!
//! - `fullName(first, last)` or `fullName({firstName, lastName})`:
//!   `"first last"`.
//! - `count(text)` or `count({NAME: text})`: how many characters `text` has.
//! - `countWords(text)`: `{word: occurrences}`, words lower-cased.
//! - `merge(counts...)`: adds word counts together.
//! - `spin(n)`: loops `n` times (CPU-bound), returns `n`.

use std::collections::BTreeMap;
use std::rc::Rc;

use vom::{Args, Error, Exo, Reply, Value};

struct Tasks;

fn count_words(text: &str) -> Value {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    Value::record(counts.into_iter().map(|(w, n)| (w, Value::from(n))))
}

fn merge(args: Args) -> Result<Value, Error> {
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for (index, counts) in args.into_vec().into_iter().enumerate() {
        let Value::Record(counts) = counts else {
            return Err(Error::type_error(format!(
                "argument {index} must be word counts"
            )));
        };
        for (word, n) in counts {
            let n = n
                .as_u64()
                .ok_or_else(|| Error::type_error(format!("count of {word:?} is not a number")))?;
            *total.entry(word).or_default() += n;
        }
    }
    Ok(Value::record(
        total.into_iter().map(|(w, n)| (w, Value::from(n))),
    ))
}

/// The one argument of a task called with `count` positional arguments
/// (`count` = 1), or the one value of a record of named inputs.
fn named_or_positional(args: &Args, count: usize) -> Result<Value, Error> {
    if let (1, Ok(Value::Record(named))) = (args.len(), args.get(0))
        && named.len() == 1
    {
        return Ok(named.values().next().cloned().unwrap_or(Value::Null));
    }
    args.expect_count(count)?;
    Ok(args.get(0)?.clone())
}

fn full_name(args: &Args) -> Result<Value, Error> {
    if let (1, Ok(Value::Record(named))) = (args.len(), args.get(0)) {
        let part = |key: &str| {
            named
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::type_error(format!("fullName takes {key}, a string")))
        };
        return Ok(Value::from(format!(
            "{} {}",
            part("firstName")?,
            part("lastName")?
        )));
    }
    args.expect_count(2)?;
    Ok(Value::from(format!(
        "{} {}",
        args.string(0)?,
        args.string(1)?
    )))
}

fn spin(n: u64) -> u64 {
    let mut x: u64 = 0;
    for i in 0..n {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    std::hint::black_box(x);
    n
}

impl Exo for Tasks {
    fn interface_name(&self) -> &str {
        "Tasks"
    }

    fn call(self: Rc<Self>, method: &str, args: Args) -> Reply {
        match method {
            "fullName" => Reply::ready(full_name(&args)),
            "count" => Reply::ready(named_or_positional(&args, 1).and_then(|text| {
                let text = text
                    .as_str()
                    .ok_or_else(|| Error::type_error("count takes a string"))?;
                Ok(Value::from(text.chars().count() as u64))
            })),
            "countWords" => Reply::ready((|| {
                args.expect_count(1)?;
                Ok(count_words(&args.string(0)?))
            })()),
            "merge" => Reply::ready(merge(args)),
            "spin" => Reply::ready((|| {
                args.expect_count(1)?;
                Ok(Value::from(spin(args.u64(0)?)))
            })()),
            other => Reply::no_such_method(other),
        }
    }
}

vom::vat_main!(Tasks);
