//! A counter whose count lives in the vatstore, so it survives every restart.
//!
//! Methods: `increment()` adds one and returns the new count; `get()` returns it.

use std::rc::Rc;

use vom::{Args, Exo, Reply, Value, vatstore};

struct Counter;

const COUNT_KEY: &str = "count";

fn count() -> u64 {
    vatstore::get(COUNT_KEY).map_or(0, |text| {
        text.parse()
            .expect("counter invariant: the stored count is a number")
    })
}

impl Exo for Counter {
    fn interface_name(&self) -> &str {
        "Counter"
    }

    fn call(self: Rc<Self>, method: &str, args: Args) -> Reply {
        match method {
            "increment" => Reply::ready(args.expect_count(0).map(|()| {
                let next = count() + 1;
                vatstore::set(COUNT_KEY, &next.to_string());
                Value::from(next)
            })),
            "get" => Reply::ready(args.expect_count(0).map(|()| Value::from(count()))),
            other => Reply::no_such_method(other),
        }
    }
}

vom::vat_main!(Counter);
