//! What the kernel allocated since its last commit. SQLite changes only at
//! a commit, so no committed key can name a kref (or an import vref) made
//! after it: a read of such a key is answered from the store's memory
//! ([`swingstore::SwingStore::get_uncommitted`]) instead of by a SQLite
//! query that would find nothing. A crank that delivers a message to a new
//! result promise reads about ten such keys (its count, queue, decider,
//! subscribers, the c-list entries the delivery adds).
//!
//! Only the kernel's own tables are matched, by their layout (`state.rs`):
//! `<kref>.<field...>`, and `<endpoint>.c.<ref>` / `<endpoint>.decided.<kref>`.
//! A vatstore key (`v<N>.vs.<anything>`) never matches, whatever the vat
//! named it.

use rustc_hash::FxHashSet;

/// `fresh_refs_max`: how many krefs and import vrefs allocated since the
/// last commit are remembered as such; past it, newer ones are read from
/// SQLite as any other (slower, never wrong).
pub(crate) const FRESH_REFS_MAX: usize = 100_000;

/// The refs allocated since the last commit.
#[derive(Debug, Default)]
pub(crate) struct Fresh {
    /// Krefs, as (is a promise, number).
    krefs: FxHashSet<(bool, u64)>,
    /// C-list keys of import vrefs (`v<N>.c.p-<M>`).
    import_keys: FxHashSet<String>,
}

/// `ko<N>` or `kp<N>` as (is a promise, N).
fn kref_number(text: &str) -> Option<(bool, u64)> {
    kref_number_of(text.as_bytes())
}

/// [`kref_number`] of a key's segment, read byte by byte: it runs for
/// every key the kernel reads or deletes.
fn kref_number_of(segment: &[u8]) -> Option<(bool, u64)> {
    let (promise, digits) = match segment {
        [b'k', b'p', digits @ ..] => (true, digits),
        [b'k', b'o', digits @ ..] => (false, digits),
        _ => return None,
    };
    if digits.is_empty() {
        return None;
    }
    let mut number: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        number = number
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    Some((promise, number))
}

/// `key` cut at its dots: its first segment, and up to three more (the
/// fourth holds the rest of the key).
fn segments(key: &[u8]) -> [Option<&[u8]>; 4] {
    let mut found = [None; 4];
    let mut rest = key;
    for slot in &mut found {
        match rest.iter().position(|&b| b == b'.') {
            Some(dot) => {
                *slot = Some(&rest[..dot]);
                rest = &rest[dot + 1..];
            }
            None => {
                *slot = Some(rest);
                break;
            }
        }
    }
    found
}

impl Fresh {
    fn full(&self) -> bool {
        self.krefs.len() + self.import_keys.len() >= FRESH_REFS_MAX
    }

    /// `kref` was allocated in this commit group.
    pub(crate) fn note_kref(&mut self, kref: &str) {
        let number = kref_number(kref)
            .unwrap_or_else(|| panic!("kernel invariant: a new kref is ko<N> or kp<N> ({kref})"));
        if !self.full() {
            self.krefs.insert(number);
        }
    }

    /// `key`, a c-list entry of an import vref, was allocated in this commit group.
    pub(crate) fn note_import_key(&mut self, key: String) {
        if !self.full() {
            self.import_keys.insert(key);
        }
    }

    fn is_fresh_kref(&self, segment: &[u8]) -> bool {
        kref_number_of(segment).is_some_and(|number| self.krefs.contains(&number))
    }

    /// Whether `key` (or every key under it, for a scan's prefix) names a
    /// ref allocated since the last commit, so SQLite cannot hold it.
    pub(crate) fn names_fresh(&self, key: &str) -> bool {
        if self.krefs.is_empty() && self.import_keys.is_empty() {
            return false;
        }
        let [first, second, third, fourth] = segments(key.as_bytes());
        if first.is_some_and(|first| self.is_fresh_kref(first)) {
            return true;
        }
        match (second, third, fourth) {
            // Only an import vref's c-list key is looked up whole: hashing
            // every key the kernel deletes cost more than the rest of this.
            (Some(b"c"), Some([b'p' | b'o', b'-', ..]), None) => self.import_keys.contains(key),
            (Some(b"c" | b"decided"), Some(kref), None) => self.is_fresh_kref(kref),
            _ => false,
        }
    }

    /// A commit: what was fresh may be in SQLite from now on.
    pub(crate) fn forget_all(&mut self) {
        self.krefs.clear();
        self.import_keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_with(krefs: &[&str]) -> Fresh {
        let mut fresh = Fresh::default();
        for kref in krefs {
            fresh.note_kref(kref);
        }
        fresh
    }

    #[test]
    fn a_new_krefs_own_keys_and_its_clist_entries_are_fresh() {
        let mut fresh = fresh_with(&["kp12", "ko3"]);
        fresh.note_import_key("v1.c.p-4".into());
        for key in [
            "kp12.state",
            "kp12.sub.v2",
            "kp12.queue.0000000001",
            "ko3.refs",
            "v1.c.kp12",
            "r2.c.ko3",
            "v7.decided.kp12",
            "v1.c.p-4",
        ] {
            assert!(fresh.names_fresh(key), "{key} names a fresh ref");
        }
    }

    #[test]
    fn older_refs_vatstore_keys_and_lookalikes_are_not_fresh() {
        let fresh = fresh_with(&["kp12", "ko3"]);
        for key in [
            "kp1.state",
            "kp120.state",
            "ko30.refs",
            "v1.c.kp1",
            "v1.c.p-4",
            // A vat may name its own keys after krefs: they are its, not the kernel's.
            "v1.vs.kp12",
            "v1.vs.c.kp12",
            "v1.c.kp12.extra",
            "kp.state",
            "kpx12.state",
            "gc.drop.v1.ko3",
        ] {
            assert!(!fresh.names_fresh(key), "{key} is not fresh");
        }
    }

    #[test]
    fn a_commit_forgets_every_fresh_ref() {
        let mut fresh = fresh_with(&["kp12"]);
        fresh.note_import_key("v1.c.p-4".into());
        fresh.forget_all();
        assert!(!fresh.names_fresh("kp12.state"));
        assert!(!fresh.names_fresh("v1.c.p-4"));
    }
}
