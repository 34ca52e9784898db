//! The keys written since the last commit.
//!
//! Most keys a kernel writes between two commits are made and deleted again
//! before the commit (run-queue entries, the records of promises that settle
//! at once), and nothing reads them in key order. So the keys are kept in
//! the order they were first written, which costs a push; the key-ordered
//! set that ordered reads merge with SQLite's keys is built only when such a
//! read asks, from the keys written since it was last asked.

use std::cell::{Cell, Ref, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

#[derive(Debug, Default)]
pub(crate) struct DirtyKeys {
    /// Each dirty key once, in the order it became dirty.
    written: Vec<Rc<str>>,
    /// The first `ordered_len` keys of `written`, in key order.
    ordered: RefCell<BTreeSet<Rc<str>>>,
    ordered_len: Cell<usize>,
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
        self.written.truncate(len);
    }

    /// Forgets every key (the commit has written them).
    pub(crate) fn clear(&mut self) {
        self.written.clear();
        self.ordered.get_mut().clear();
        self.ordered_len.set(0);
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
}
