//! Records that a crate beside the kernel (IPVM jobs) keeps in the kernel's
//! store, under a namespace of its own. They are written in the kernel's
//! cranks and commits, so a record and the kernel state it describes (a
//! task's state and the promise its message returned) commit together.
//!
//! The kernel never reads these records: they hold no references the
//! kernel counts. A record that names a kref holds it only through the
//! kernel's own API (the caller keeps the promise until it calls
//! [`Kernel::release`]).

use crate::kernel::{Kernel, KernelError};

/// The first segments of the keys the kernel itself writes: no namespace
/// may take one of them.
const KERNEL_PREFIXES: &[&str] = &[
    "kernel", "runQueue", "vat", "pet", "gc", "shown", "cleanup", "peer", "idem", "sturdy",
    "store", "ko", "kp", "kd", "v",
];

/// A namespace of records: keys `<name>.<key>` in the kernel's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    name: &'static str,
}

impl Namespace {
    /// A namespace called `name`.
    ///
    /// # Panics
    ///
    /// If `name` is empty, holds a `.`, or is one of the kernel's own key
    /// prefixes (a namespace is chosen by a programmer, not by input).
    pub const fn new(name: &'static str) -> Namespace {
        let bytes = name.as_bytes();
        assert!(!bytes.is_empty(), "namespace invariant: a name");
        let mut i = 0;
        while i < bytes.len() {
            assert!(bytes[i] != b'.', "namespace invariant: no '.' in a name");
            i += 1;
        }
        let mut k = 0;
        while k < KERNEL_PREFIXES.len() {
            assert!(
                !same(KERNEL_PREFIXES[k].as_bytes(), bytes),
                "namespace invariant: not one of the kernel's key prefixes"
            );
            k += 1;
        }
        Namespace { name }
    }

    fn key(self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }
}

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl Kernel {
    /// The record `key` in `namespace`, if there is one.
    pub fn record(&self, namespace: Namespace, key: &str) -> Result<Option<String>, KernelError> {
        Ok(self.state_ref().get(&namespace.key(key))?)
    }

    /// Writes the record `key` in `namespace`; it is durable at the next commit.
    pub fn set_record(
        &mut self,
        namespace: Namespace,
        key: &str,
        value: &str,
    ) -> Result<(), KernelError> {
        Ok(self.state_mut().set(&namespace.key(key), value)?)
    }

    /// The records in `namespace` whose keys start with `prefix`, in key
    /// order, each with its key less `prefix`.
    pub fn records_under(
        &self,
        namespace: Namespace,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, KernelError> {
        let full = namespace.key(prefix);
        Ok(self
            .state_ref()
            .scan_prefix(&full)?
            .into_iter()
            .map(|(key, value)| (key[full.len()..].to_owned(), value))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_build_their_keys() {
        assert_eq!(Namespace::new("job").key("abc.t.x"), "job.abc.t.x");
    }

    #[test]
    #[should_panic(expected = "not one of the kernel's key prefixes")]
    fn a_namespace_cannot_take_a_kernel_prefix() {
        let _ = Namespace::new("kernel");
    }
}
