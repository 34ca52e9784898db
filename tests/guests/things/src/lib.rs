//! Test guest: many small durable objects in durable collections, for the
//! tests and benchmarks of the virtual object manager.
//!
//! The root is a registry. `make(count)` makes `count` things (kept in a map
//! by id); `thing(id)` returns one; `forget(from, to)` drops the ids in
//! `[from, to)` from the map, so their things become garbage; `ids(from, to)`
//! lists the ids kept in that range; `tag(id, note)`/`note(id)` use a weak map;
//! `loose(count)` makes things nothing keeps; `count()` is the map's size.

use std::ops::Bound;

use serde::{Deserialize, Serialize};
use vom::{Baggage, Durable, Error, MapStore, WeakMapStore};

#[derive(Serialize, Deserialize, vom::Schema)]
struct Thing {
    id: u64,
    label: String,
}

#[vom::exo]
impl Thing {
    pub fn describe(&self) -> String {
        format!("thing {}: {}", self.id, self.label)
    }

    pub fn relabel(&mut self, label: String) -> String {
        std::mem::replace(&mut self.label, label)
    }
}

#[derive(Serialize, Deserialize, vom::Schema)]
struct Registry {
    next_id: u64,
    things: MapStore<u64, Durable<Thing>>,
    notes: WeakMapStore<Durable<Thing>, String>,
}

#[vom::exo]
impl Registry {
    pub fn make(&mut self, count: u64) -> Result<u64, Error> {
        for _ in 0..count {
            let id = self.next_id;
            self.next_id += 1;
            let thing = Durable::new(Thing {
                id,
                label: format!("t{id}"),
            });
            self.things.init(&id, &thing)?;
        }
        Ok(self.things.len())
    }

    pub fn loose(&mut self, count: u64) -> u64 {
        for _ in 0..count {
            let id = self.next_id;
            self.next_id += 1;
            Durable::new(Thing {
                id,
                label: "loose".into(),
            });
        }
        count
    }

    pub fn thing(&self, id: u64) -> Result<Durable<Thing>, Error> {
        self.things
            .get(&id)
            .ok_or_else(|| Error::new(format!("no thing {id}")))
    }

    pub fn count(&self) -> u64 {
        self.things.len()
    }

    pub fn forget(&mut self, from: u64, to: u64) -> u64 {
        (from..to).filter(|id| self.things.delete(id)).count() as u64
    }

    pub fn ids(&self, from: u64, to: u64) -> Vec<u64> {
        self.things
            .entries_in(Bound::Included(&from), Bound::Excluded(&to))
            .map(|(id, _)| id)
            .collect()
    }

    pub fn tag(&mut self, id: u64, note: String) -> Result<(), Error> {
        let thing = self.thing(id)?;
        self.notes.insert(&thing, &note)
    }

    pub fn note(&self, id: u64) -> Result<Option<String>, Error> {
        Ok(self.notes.get(&self.thing(id)?))
    }
}

fn start(baggage: &Baggage) -> Durable<Registry> {
    vom::define::<Thing>();
    vom::define::<Registry>();
    baggage.get_or_init("registry", || {
        Durable::new(Registry {
            next_id: 0,
            things: MapStore::new(),
            notes: WeakMapStore::new(),
        })
    })
}

vom::vat_main!(start: start);
