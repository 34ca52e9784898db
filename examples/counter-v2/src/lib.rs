//! Version 2 of `counter`, for `vat upgrade`: the same durable kind (so the
//! count carries over) with a new method.
//!
//! Methods: `increment()`, `get()`, and new: `add(n)` adds `n` and returns the count.

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

    pub fn add(&mut self, n: u64) -> Result<u64, vom::Error> {
        self.count = self
            .count
            .checked_add(n)
            .ok_or_else(|| vom::Error::new("the count would overflow"))?;
        Ok(self.count)
    }
}

fn start(baggage: &Baggage) -> Durable<Counter> {
    vom::define::<Counter>();
    baggage.get_or_init("counter", || Durable::new(Counter { count: 0 }))
}

vom::vat_main!(start: start);
