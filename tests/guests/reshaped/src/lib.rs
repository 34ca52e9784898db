//! `examples/counter`'s kind `Counter`, with its state reshaped: one shape
//! per feature, each built to its own file by `scripts/build-guests`.
//!
//! - no feature (`counter_with_default.wasm`): adds `label`, with a default;
//! - `missing-default` (`counter_missing_default.wasm`): adds `label`, no default;
//! - `renamed` (`counter_renamed.wasm`): `count` renamed to `total`;
//! - `retyped` (`counter_retyped.wasm`): `count` is a string;
//! - `migrated` (`counter_migrated.wasm`): `count` renamed to `total` and a
//!   `label` added, with a migration from the first counter's state.
//!
//! Methods: `get()` returns the count (and label, where there is one).

use serde::{Deserialize, Serialize};
use vom::{Baggage, Durable, Value};

#[cfg(not(any(
    feature = "missing-default",
    feature = "renamed",
    feature = "retyped",
    feature = "migrated"
)))]
#[derive(Serialize, Deserialize, vom::Schema)]
struct Counter {
    count: u64,
    #[serde(default)]
    label: String,
}

#[cfg(feature = "missing-default")]
#[derive(Serialize, Deserialize, vom::Schema)]
struct Counter {
    count: u64,
    label: String,
}

#[cfg(feature = "renamed")]
#[derive(Serialize, Deserialize, vom::Schema)]
struct Counter {
    total: u64,
}

#[cfg(feature = "retyped")]
#[derive(Serialize, Deserialize, vom::Schema)]
struct Counter {
    count: String,
}

#[cfg(not(any(
    feature = "missing-default",
    feature = "renamed",
    feature = "retyped",
    feature = "migrated"
)))]
impl Counter {
    fn shown(&self) -> Value {
        Value::record([
            ("count", Value::from(self.count)),
            ("label", Value::from(self.label.as_str())),
        ])
    }
    fn fresh() -> Counter {
        Counter {
            count: 0,
            label: String::new(),
        }
    }
}

#[cfg(feature = "missing-default")]
impl Counter {
    fn shown(&self) -> Value {
        Value::from(self.count)
    }
    fn fresh() -> Counter {
        Counter {
            count: 0,
            label: String::new(),
        }
    }
}

#[cfg(feature = "renamed")]
impl Counter {
    fn shown(&self) -> Value {
        Value::from(self.total)
    }
    fn fresh() -> Counter {
        Counter { total: 0 }
    }
}

#[cfg(feature = "retyped")]
impl Counter {
    fn shown(&self) -> Value {
        Value::from(self.count.as_str())
    }
    fn fresh() -> Counter {
        Counter {
            count: String::new(),
        }
    }
}

#[cfg(feature = "migrated")]
#[derive(Serialize, Deserialize, vom::Schema)]
struct Counter {
    total: u64,
    label: String,
}

/// The first counter's state, as the migration reads it.
#[cfg(feature = "migrated")]
#[derive(Serialize, Deserialize, vom::Schema)]
struct CounterV1 {
    count: u64,
}

#[cfg(feature = "migrated")]
impl Counter {
    fn shown(&self) -> Value {
        Value::record([
            ("total", Value::from(self.total)),
            ("label", Value::from(self.label.as_str())),
        ])
    }
    fn fresh() -> Counter {
        Counter {
            total: 0,
            label: String::new(),
        }
    }
}

#[vom::exo]
impl Counter {
    pub fn get(&self) -> Value {
        self.shown()
    }
}

fn start(baggage: &Baggage) -> Durable<Counter> {
    #[cfg(not(feature = "migrated"))]
    vom::define::<Counter>();
    #[cfg(feature = "migrated")]
    vom::define_migrating::<Counter, CounterV1>(|old| Counter {
        total: old.count,
        label: "migrated".to_owned(),
    });
    baggage.get_or_init("counter", || Durable::new(Counter::fresh()))
}

vom::vat_main!(start: start);
