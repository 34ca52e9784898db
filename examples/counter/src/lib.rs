//! A counter that is a durable exo: its count survives every restart, with no
//! replay, and an upgrade to `counter-v2` keeps it.
//!
//! Methods: `increment()` adds one and returns the new count; `get()` returns it.

use serde::{Deserialize, Serialize};
use vom::{Baggage, Durable};

#[derive(Serialize, Deserialize, vom::Schema)]
struct Counter {
    count: u64,
}

#[vom::exo]
impl Counter {
    pub fn increment(&mut self) -> u64 {
        self.count += 1;
        self.count
    }

    pub fn get(&self) -> u64 {
        self.count
    }
}

/// Runs each time the vat starts: defines the kind, finds (or makes) the counter.
fn start(baggage: &Baggage) -> Durable<Counter> {
    vom::define::<Counter>();
    baggage.get_or_init("counter", || Durable::new(Counter { count: 0 }))
}

vom::vat_main!(start: start);
