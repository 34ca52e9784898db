//! The run queue's newest items, kept in memory until the commit.
//!
//! Most items are queued by one crank and taken by a later one before the
//! next commit. Writing such an item to the store as JSON and parsing it
//! back was a tenth of a crank's kernel time, for a key the commit then
//! drops. So the items queued since the last commit stay here, typed, and
//! only those still queued when the kernel commits are written to the store
//! (`runQueue.<n>`, JSON), just before the commit.
//!
//! The store keeps the queue's head and tail counts as before, so a crank's
//! abort restores them; this holds a log of what the open crank did here, so
//! its abort can restore the items too.

use std::collections::VecDeque;

/// Items `first..first + items.len()` of the run queue: its tail, queued
/// since the last commit. Every item before `first` and after the head is
/// in the store. (Generic over the item only so that this module does not
/// depend on the one that defines the queue's items.)
#[derive(Debug)]
pub(crate) struct UnstoredItems<T> {
    first: u64,
    items: VecDeque<T>,
    /// How many items the open crank added at the back.
    pushed_in_crank: usize,
    /// The items the open crank took from the front, in order, that were
    /// here before it.
    taken_in_crank: Vec<T>,
    /// `first` as the open crank found it, once it changed something here.
    first_in_crank: Option<u64>,
}

impl<T> Default for UnstoredItems<T> {
    fn default() -> Self {
        UnstoredItems {
            first: 0,
            items: VecDeque::new(),
            pushed_in_crank: 0,
            taken_in_crank: Vec::new(),
            first_in_crank: None,
        }
    }
}

impl<T: Clone> UnstoredItems<T> {
    /// Adds item number `index`, the queue's new tail.
    pub(crate) fn push(&mut self, index: u64, item: T, in_crank: bool) {
        self.note_crank(in_crank);
        if self.items.is_empty() {
            self.first = index;
        }
        assert_eq!(
            self.first + self.items.len() as u64,
            index,
            "kernel invariant: unstored run-queue items end at the tail"
        );
        self.items.push_back(item);
        if in_crank {
            self.pushed_in_crank += 1;
        }
    }

    /// Takes item number `index`, the queue's head, if it is here (if not,
    /// the store holds it).
    pub(crate) fn take(&mut self, index: u64, in_crank: bool) -> Option<T> {
        if self.items.is_empty() || index < self.first {
            return None;
        }
        assert_eq!(
            index, self.first,
            "kernel invariant: the run queue's head is at or before its unstored items"
        );
        self.note_crank(in_crank);
        // Every item left is the crank's own when it pushed them all: such
        // an item is neither here nor taken once the crank is undone.
        let own = in_crank && self.items.len() == self.pushed_in_crank;
        let item = self
            .items
            .pop_front()
            .expect("kernel invariant: a non-empty queue has a front");
        self.first += 1;
        if own {
            self.pushed_in_crank -= 1;
        } else if in_crank {
            self.taken_in_crank.push(item.clone());
        }
        Some(item)
    }

    /// Remembers where the open crank found the items, at its first change.
    fn note_crank(&mut self, in_crank: bool) {
        if in_crank && self.first_in_crank.is_none() {
            self.first_in_crank = Some(self.first);
        }
    }

    /// Keeps what the crank did.
    pub(crate) fn end_crank(&mut self) {
        self.pushed_in_crank = 0;
        self.taken_in_crank.clear();
        self.first_in_crank = None;
    }

    /// Undoes what the crank did: its items go, the items it took come back.
    pub(crate) fn abort_crank(&mut self) {
        let kept = self.items.len() - self.pushed_in_crank;
        self.items.truncate(kept);
        for item in self.taken_in_crank.drain(..).rev() {
            self.items.push_front(item);
        }
        self.pushed_in_crank = 0;
        if let Some(first) = self.first_in_crank.take() {
            self.first = first;
        }
    }

    /// The items, with their numbers, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        (self.first..).zip(&self.items)
    }

    /// Takes every item, with its number (for the store, at a commit).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (u64, T)> + '_ {
        assert!(
            self.first_in_crank.is_none(),
            "kernel invariant: run-queue items are stored outside a crank"
        );
        (self.first..).zip(self.items.drain(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u64) -> String {
        format!("item {n}")
    }

    fn numbers(items: &UnstoredItems<String>) -> Vec<(u64, String)> {
        items.iter().map(|(n, item)| (n, item.clone())).collect()
    }

    #[test]
    fn an_aborted_crank_leaves_the_items_as_they_were() {
        let mut items = UnstoredItems::<String>::default();
        items.push(5, item(5), false);
        items.push(6, item(6), false);
        let before = numbers(&items);
        assert_eq!(items.take(5, true), Some(item(5)));
        items.push(7, item(7), true);
        items.push(8, item(8), true);
        items.abort_crank();
        assert_eq!(numbers(&items), before);
        // Kept, the same crank's work stays.
        assert_eq!(items.take(5, true), Some(item(5)));
        items.push(7, item(7), true);
        items.end_crank();
        items.abort_crank();
        assert_eq!(numbers(&items), [(6, item(6)), (7, item(7))]);
    }

    #[test]
    fn an_item_a_crank_queued_and_took_is_gone_after_its_abort() {
        let mut items = UnstoredItems::<String>::default();
        items.push(3, item(3), false);
        assert_eq!(items.take(3, true), Some(item(3)));
        items.push(4, item(4), true);
        assert_eq!(items.take(4, true), Some(item(4)));
        items.push(5, item(5), true);
        items.abort_crank();
        assert_eq!(numbers(&items), [(3, item(3))]);
    }

    #[test]
    fn items_before_the_unstored_ones_are_the_stores() {
        let mut items = UnstoredItems::<String>::default();
        items.push(10, item(10), false);
        assert_eq!(items.take(9, true), None);
        let stored: Vec<_> = items.drain().collect();
        assert_eq!(stored, [(10, item(10))]);
        assert_eq!(items.take(10, false), None);
    }
}
