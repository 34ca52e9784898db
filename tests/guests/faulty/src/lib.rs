//! A guest for fault tests. `write_then_trap(key)` writes `key` to the vatstore
//! and then traps, so a test can check that the crank's writes are rolled back.
//! `set(key, value)` and `get(key)` let the test look at the vatstore;
//! `me()` returns a reference to this vat's root object; `item(i)` indexes a
//! three-element list, an ordinary Rust panic for `i` past its end.

use std::rc::Rc;

use vom::{Args, Exo, Reply, Value, vatstore};

struct Faulty;

impl Exo for Faulty {
    fn interface_name(&self) -> &str {
        "Faulty"
    }

    fn call(self: Rc<Self>, method: &str, args: Args) -> Reply {
        match method {
            "set" => Reply::ready(args.string(0).and_then(|key| {
                let value = args.string(1)?;
                vatstore::set(&key, &value);
                Ok(Value::Undefined)
            })),
            "get" => Reply::ready(
                args.string(0)
                    .map(|key| vatstore::get(&key).map_or(Value::Null, Value::from)),
            ),
            "me" => Reply::ready(args.expect_count(0).map(|()| vom::export(self))),
            "item" => Reply::ready(args.u64(0).map(|index| {
                let items = [10u64, 20, 30];
                vatstore::set("item.asked", &index.to_string());
                Value::from(items[index as usize])
            })),
            "write_then_trap" => {
                if let Ok(key) = args.string(0) {
                    vatstore::set(&key, "written before the trap");
                }
                // A Wasm `unreachable`: the guest traps mid-crank.
                std::process::abort()
            }
            other => Reply::no_such_method(other),
        }
    }
}

vom::vat_main!(Faulty);
