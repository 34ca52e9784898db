//! The keys written since the last commit.
//!
//! Most keys a kernel writes between two commits are made and deleted again
//! before the commit (run-queue entries, the records of promises that settle
//! at once), and nothing reads them in key order. So the keys are kept in
//! the order they were first written, which costs a push; the key-ordered
//! set that ordered reads merge with SQLite's keys is built only when such a
//! read asks, from the keys written since it was last asked.
//!
//! A prefix scan (`kp12.sub.`, a promise's subscribers, asked for each
//! promise that settles) needs only the keys that share the prefix's first
//! segment (`kp12`), so it is answered from a second lazy index, by first
//! segment, which costs a hash per key instead of the ordered set's chain
//! of string comparisons: a crank that makes 50,000 durable objects writes
//! 100,000 vatstore keys, and its result promise's subscriber scan sorted
//! them all.

use std::cell::{Cell, Ref, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use rustc_hash::FxHashMap;

/// A key's first segment: up to its first `.`, or all of it.
fn head(key: &str) -> &str {
    key.split_once('.').map_or(key, |(head, _)| head)
}

#[derive(Debug, Default)]
pub(crate) struct DirtyKeys {
    /// Each dirty key once, in the order it became dirty.
    written: Vec<Rc<str>>,
    /// The first `ordered_len` keys of `written`, in key order.
    ordered: RefCell<BTreeSet<Rc<str>>>,
    ordered_len: Cell<usize>,
    /// The first `by_head_len` keys of `written`, by first segment, each
    /// segment's in the order they became dirty.
    by_head: RefCell<FxHashMap<Box<str>, Vec<Rc<str>>>>,
    by_head_len: Cell<usize>,
}

impl DirtyKeys {
    /// Adds a key that was not dirty.
    pub(crate) fn push(&mut self, key: Rc<str>) {
        self.written.push(key);
    }

    pub(crate) fn len(&self) -> usize {
        self.written.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// The dirty keys, in the order they became dirty.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Rc<str>> {
        self.written.iter()
    }

    /// Forgets the keys that became dirty after the first `len` (an aborted
    /// crank's: its undo log has made them clean again).
    pub(crate) fn truncate(&mut self, len: usize) {
        let ordered_len = self.ordered_len.get();
        if ordered_len > len {
            let ordered = self.ordered.get_mut();
            for key in &self.written[len..ordered_len] {
                ordered.remove(key);
            }
            self.ordered_len.set(len);
        }
        let by_head_len = self.by_head_len.get();
        if by_head_len > len {
            let by_head = self.by_head.get_mut();
            // Each segment's keys are in written order, so the truncated
            // ones are at the ends of their lists.
            for key in self.written[len..by_head_len].iter().rev() {
                let keys = by_head
                    .get_mut(head(key))
                    .expect("swingstore invariant: an indexed key has its segment's list");
                let last = keys.pop();
                assert!(
                    last.as_ref() == Some(key),
                    "swingstore invariant: a segment's keys are in written order"
                );
            }
            self.by_head_len.set(len);
        }
        self.written.truncate(len);
    }

    /// Forgets every key (the commit has written them).
    pub(crate) fn clear(&mut self) {
        self.written.clear();
        self.ordered.get_mut().clear();
        self.ordered_len.set(0);
        self.by_head.get_mut().clear();
        self.by_head_len.set(0);
    }

    /// The dirty keys that start with `prefix`, in key order.
    pub(crate) fn under(&self, prefix: &str) -> Vec<Rc<str>> {
        let Some((segment, _)) = prefix.split_once('.') else {
            // A prefix within the first segment spans many segments.
            return self
                .ordered()
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|key| key.starts_with(prefix))
                .cloned()
                .collect();
        };
        let from = self.by_head_len.get();
        let mut by_head = self.by_head.borrow_mut();
        for key in &self.written[from..] {
            match by_head.get_mut(head(key)) {
                Some(keys) => keys.push(key.clone()),
                None => {
                    by_head.insert(head(key).into(), vec![key.clone()]);
                }
            }
        }
        self.by_head_len.set(self.written.len());
        let mut found: Vec<Rc<str>> = by_head
            .get(segment)
            .map(|keys| {
                keys.iter()
                    .filter(|key| key.starts_with(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        found.sort_unstable();
        found
    }

    /// The dirty keys in key order.
    pub(crate) fn ordered(&self) -> Ref<'_, BTreeSet<Rc<str>>> {
        let from = self.ordered_len.get();
        if from < self.written.len() {
            let mut ordered = self.ordered.borrow_mut();
            ordered.extend(self.written[from..].iter().cloned());
            self.ordered_len.set(self.written.len());
        }
        let ordered = self.ordered.borrow();
        assert_eq!(
            ordered.len(),
            self.written.len(),
            "swingstore invariant: a key is dirty once"
        );
        ordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dirty: &DirtyKeys) -> Vec<String> {
        dirty.ordered().iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn ordered_keys_follow_pushes_and_truncation() {
        let mut dirty = DirtyKeys::default();
        dirty.push("b".into());
        dirty.push("a".into());
        assert_eq!(keys(&dirty), ["a", "b"]);
        dirty.push("d".into());
        dirty.push("c".into());
        // Truncating below what the ordered set holds takes keys out of it.
        dirty.truncate(3);
        assert_eq!(keys(&dirty), ["a", "b", "d"]);
        dirty.truncate(1);
        assert_eq!(keys(&dirty), ["b"]);
        assert_eq!(dirty.len(), 1);
        dirty.clear();
        assert!(dirty.is_empty());
        assert!(keys(&dirty).is_empty());
    }

    fn under(dirty: &DirtyKeys, prefix: &str) -> Vec<String> {
        dirty.under(prefix).iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn keys_under_a_prefix_follow_pushes_and_truncation() {
        let mut dirty = DirtyKeys::default();
        for key in [
            "kp1.sub.v2",
            "kp12.sub.v1",
            "kp1.promise",
            "kp1.sub.v1",
            "kp1",
            "v1.c.kp1",
        ] {
            dirty.push(key.into());
        }
        assert_eq!(under(&dirty, "kp1.sub."), ["kp1.sub.v1", "kp1.sub.v2"]);
        assert_eq!(
            under(&dirty, "kp1."),
            ["kp1.promise", "kp1.sub.v1", "kp1.sub.v2"]
        );
        assert_eq!(
            under(&dirty, "kp1"),
            [
                "kp1",
                "kp1.promise",
                "kp1.sub.v1",
                "kp1.sub.v2",
                "kp12.sub.v1"
            ]
        );
        assert_eq!(under(&dirty, "kp2.sub."), Vec::<String>::new());
        // Keys pushed after an index was built are found; truncated ones are not.
        dirty.push("kp1.sub.v3".into());
        dirty.push("kp1.data".into());
        assert_eq!(
            under(&dirty, "kp1.sub."),
            ["kp1.sub.v1", "kp1.sub.v2", "kp1.sub.v3"]
        );
        dirty.truncate(3);
        assert_eq!(under(&dirty, "kp1."), ["kp1.promise", "kp1.sub.v2"]);
        dirty.push("kp1.queue.1".into());
        assert_eq!(
            under(&dirty, "kp1."),
            ["kp1.promise", "kp1.queue.1", "kp1.sub.v2"]
        );
        dirty.clear();
        assert!(under(&dirty, "kp1.").is_empty());
    }
}
