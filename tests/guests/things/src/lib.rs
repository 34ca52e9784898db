//! Test guest: many small durable objects in durable collections, for the
//! tests and benchmarks of the virtual object manager.
//!
//! The root is a registry. `make(count)` makes `count` things (kept in a map
//! by id); `add(id)` makes thing `id` (refused if the map has it);
//! `thing(id)` returns one; `forget(from, to)` drops the ids in
//! `[from, to)` from the map, so their things become garbage; `ids(from, to)`
//! lists the ids kept in that range; `tag(id, note)`/`note(id)` use a weak map;
//! `loose(count)` makes things nothing keeps; `count()` is the map's size.
//!
//! Built with the feature `migrated` (`things_migrated.wasm`), a thing has a
//! `note` too, migrated from the plain version's state (`vom::define_migrating`).

use std::ops::Bound;

use serde::{Deserialize, Serialize};
use vom::{Baggage, Durable, Error, MapStore, WeakMapStore};

#[cfg(not(feature = "migrated"))]
#[derive(Serialize, Deserialize, vom::Schema)]
struct Thing {
    id: u64,
    label: String,
}

#[cfg(not(feature = "migrated"))]
impl Thing {
    fn new(id: u64, label: String) -> Thing {
        Thing { id, label }
    }

    fn described(&self) -> String {
        format!("thing {}: {}", self.id, self.label)
    }
}

#[cfg(feature = "migrated")]
#[derive(Serialize, Deserialize, vom::Schema)]
struct Thing {
    id: u64,
    label: String,
    note: String,
}

/// A thing as the plain version stores it: what the migration reads.
#[cfg(feature = "migrated")]
#[derive(Serialize, Deserialize, vom::Schema)]
struct ThingV1 {
    id: u64,
    label: String,
}

#[cfg(feature = "migrated")]
impl Thing {
    fn new(id: u64, label: String) -> Thing {
        Thing {
            id,
            label,
            note: String::new(),
        }
    }

    fn migrate(old: ThingV1) -> Thing {
        Thing {
            id: old.id,
            label: old.label,
            note: "migrated".to_owned(),
        }
    }

    fn described(&self) -> String {
        format!("thing {}: {} ({})", self.id, self.label, self.note)
    }
}

#[vom::exo]
impl Thing {
    pub fn describe(&self) -> String {
        self.described()
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
            let thing = Durable::new(Thing::new(id, format!("t{id}")));
            self.things.init(&id, &thing)?;
        }
        Ok(self.things.len())
    }

    /// Makes thing `id` and keeps it in the map, which must not hold `id`
    /// yet. Returns the map's size.
    pub fn add(&mut self, id: u64) -> Result<u64, Error> {
        let thing = Durable::new(Thing::new(id, format!("t{id}")));
        self.things.init(&id, &thing)?;
        Ok(self.things.len())
    }

    pub fn loose(&mut self, count: u64) -> u64 {
        for _ in 0..count {
            let id = self.next_id;
            self.next_id += 1;
            Durable::new(Thing::new(id, "loose".into()));
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

    /// The `n` largest ids kept, largest first (reverse iteration).
    pub fn last_ids(&self, n: u64) -> Vec<u64> {
        self.things
            .entries_rev()
            .take(n as usize)
            .map(|(id, _)| id)
            .collect()
    }

    /// `[smallest, largest]` id kept, or nothing when none is.
    pub fn first_and_last(&self) -> Vec<u64> {
        match (self.things.first(), self.things.last()) {
            (Some((first, _)), Some((last, _))) => vec![first, last],
            _ => Vec::new(),
        }
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
    #[cfg(not(feature = "migrated"))]
    vom::define::<Thing>();
    #[cfg(feature = "migrated")]
    vom::define_migrating::<Thing, ThingV1>(Thing::migrate);
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
