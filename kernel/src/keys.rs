//! Every key of the kernel's own tables, built in one place. The layout is
//! documented at the top of `state.rs`; an endpoint engine's keys (a peer's
//! questions and answers) are the engine's, under its endpoint ids.
//!
//! Ids are taken as anything that is text (a `&str`, a `String`, a `Kref`),
//! so a key reads as what it is: `keys::clist(vat, kref)`. Keys are built by
//! concatenation, not `format!`: a crank builds dozens.

/// Counters: the next id of each kind.
pub(crate) const NEXT_VAT: &str = "kernel.nextVat";
pub(crate) const NEXT_OBJECT: &str = "kernel.nextObject";
pub(crate) const NEXT_PROMISE: &str = "kernel.nextPromise";
pub(crate) const NEXT_IDEMPOTENCY: &str = "kernel.nextIdem";
pub(crate) const NEXT_SHOWN: &str = "kernel.nextShown";
/// How many idempotency keys and shown references are held.
pub(crate) const IDEMPOTENCY_COUNT: &str = "kernel.idemCount";
pub(crate) const SHOWN_COUNT: &str = "kernel.shownCount";
/// The layout's version.
pub(crate) const SCHEMA: &str = "kernel.schema";
/// The run queue's bounds.
pub(crate) const RUN_QUEUE_HEAD: &str = "runQueue.head";
pub(crate) const RUN_QUEUE_TAIL: &str = "runQueue.tail";

type Id<'a> = &'a (dyn AsRef<str> + 'a);

/// `parts` joined, in one allocation.
fn join(parts: &[&str]) -> String {
    let mut key = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        key.push_str(part);
    }
    key
}

fn key(id: Id<'_>, field: &str) -> String {
    join(&[id.as_ref(), ".", field])
}

/// An endpoint's (vat's or peer's) c-list entry for `r`, a kref or a vref.
pub(crate) fn clist(endpoint: Id<'_>, r: Id<'_>) -> String {
    join(&[endpoint.as_ref(), ".c.", r.as_ref()])
}

/// Where an endpoint's c-list entries start.
pub(crate) fn clist_prefix(endpoint: Id<'_>) -> String {
    key(endpoint, "c.")
}

/// The state of a vat, a peer, or a promise.
pub(crate) fn state(id: Id<'_>) -> String {
    key(id, "state")
}

/// Why a vat or peer is in its state.
pub(crate) fn reason(id: Id<'_>) -> String {
    key(id, "reason")
}

pub(crate) fn vat_name(vat: Id<'_>) -> String {
    key(vat, "name")
}

pub(crate) fn vat_bundle(vat: Id<'_>) -> String {
    key(vat, "bundle")
}

pub(crate) fn vat_options(vat: Id<'_>) -> String {
    key(vat, "options")
}

pub(crate) fn vat_incarnation(vat: Id<'_>) -> String {
    key(vat, "incarnation")
}

/// When the vat was last delivered to (Unix seconds, to a minute).
pub(crate) fn vat_active(vat: Id<'_>) -> String {
    key(vat, "active")
}

pub(crate) fn vat_faults(vat: Id<'_>) -> String {
    key(vat, "faults")
}

/// A vat's counters of the import vrefs it is given.
pub(crate) fn vat_next_object(vat: Id<'_>) -> String {
    key(vat, "nextObject")
}

pub(crate) fn vat_next_promise(vat: Id<'_>) -> String {
    key(vat, "nextPromise")
}

/// Where a vat's vatstore entries start.
pub(crate) fn vatstore_prefix(vat: Id<'_>) -> String {
    key(vat, "vs.")
}

/// A vat's vatstore entry `key` (whatever the vat named it).
pub(crate) fn vatstore(vat: Id<'_>, key: &str) -> String {
    join(&[vat.as_ref(), ".vs.", key])
}

/// Present while vat `vat`'s heap may hold what its vatstore does not
/// (its last report said what, or it has not reported): such a vat stays
/// awake, and a kernel that starts wakes it to tell it it restarted.
pub(crate) fn heap_dirty(vat: Id<'_>) -> String {
    join(&[HEAP_DIRTY_PREFIX, vat.as_ref()])
}

pub(crate) const HEAP_DIRTY_PREFIX: &str = "heapDirty.";

/// The vat with name `name`.
pub(crate) fn vat_by_name(name: Id<'_>) -> String {
    join(&["vat.name.", name.as_ref()])
}

/// The reference counts of a kref (`N` for a promise, `R,C` for an object).
pub(crate) fn refs(kref: Id<'_>) -> String {
    key(kref, "refs")
}

/// The endpoint that exports an object.
pub(crate) fn owner(ko: Id<'_>) -> String {
    key(ko, "owner")
}

/// A promise's record: its state, count, queue length, pin and decider
/// (`crate::promise::PromiseRecord`).
pub(crate) fn promise(kpid: Id<'_>) -> String {
    key(kpid, "promise")
}

/// A settled promise's data.
/// The unresolved promises `endpoint` decides, a key each, so that a
/// restart finds them without reading every promise its c-list names. The
/// value is [`KEPT`] when the decider keeps the promise in durable state
/// (a restart does not reject it), empty otherwise.
pub(crate) fn decided(endpoint: Id<'_>, kpid: Id<'_>) -> String {
    join(&[endpoint.as_ref(), ".decided.", kpid.as_ref()])
}

pub(crate) fn decided_prefix(endpoint: Id<'_>) -> String {
    key(endpoint, "decided.")
}

pub(crate) const KEPT: &str = "kept";

pub(crate) fn settlement(kpid: Id<'_>) -> String {
    key(kpid, "data")
}

/// How many messages waited on a promise in schema 4 and earlier.
pub(crate) fn queued(kpid: Id<'_>) -> String {
    key(kpid, "queued")
}

/// Where the messages waiting on a promise start.
pub(crate) fn queue_prefix(kpid: Id<'_>) -> String {
    key(kpid, "queue.")
}

/// Endpoint `subscriber`'s subscription to a promise, in schemas 2 to 5
/// (schema 6 keeps subscribers in the promise's record).
pub(crate) fn subscriber(kpid: Id<'_>, subscriber: Id<'_>) -> String {
    join(&[kpid.as_ref(), ".sub.", subscriber.as_ref()])
}

/// `prefix` followed by `n` in decimal (`ko12`, `p-3`): ids and counts
/// are made every crank, and `format!` costs several times more.
pub(crate) fn numbered(prefix: &str, n: u64) -> String {
    let mut digits = itoa::Buffer::new();
    join(&[prefix, digits.format(n)])
}

pub(crate) fn pet_name(name: Id<'_>) -> String {
    join(&["pet.", name.as_ref()])
}

/// A run-queue entry.
pub(crate) fn run_queue(n: u64) -> String {
    format!("runQueue.{n}")
}

/// A terminated endpoint whose c-list is being released.
pub(crate) fn cleanup(endpoint: Id<'_>) -> String {
    join(&["cleanup.", endpoint.as_ref()])
}

/// Where a GC action's entries for an endpoint start, and one entry.
pub(crate) fn gc_prefix(action: &str, endpoint: Id<'_>) -> String {
    join(&["gc.", action, ".", endpoint.as_ref(), "."])
}

pub(crate) fn gc_action(action: &str, endpoint: Id<'_>, kref: Id<'_>) -> String {
    join(&["gc.", action, ".", endpoint.as_ref(), ".", kref.as_ref()])
}

/// A reference a CLI result showed, by its place (`seq`, 20 digits), and
/// the place of each kref held.
pub(crate) fn shown(seq: Id<'_>) -> String {
    join(&["shown.", seq.as_ref()])
}

pub(crate) fn shown_kref(kref: Id<'_>) -> String {
    join(&["shown.kref.", kref.as_ref()])
}

/// A send kept under an idempotency key, and the keys in the order made.
pub(crate) fn idempotency_record(key: Id<'_>) -> String {
    join(&["idem.key.", key.as_ref()])
}

pub(crate) fn idempotency_order(seq: u64) -> String {
    format!("idem.order.{seq:020}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_layout() {
        let vat = "v3".to_owned();
        assert_eq!(clist(&vat, &"ko7"), "v3.c.ko7");
        assert_eq!(clist(&"r1", &"o-2"), "r1.c.o-2");
        assert_eq!(state(&"kp9"), "kp9.state");
        assert_eq!(vatstore_prefix(&vat), "v3.vs.");
        assert_eq!(gc_action("drop", &vat, &"ko7"), "gc.drop.v3.ko7");
        assert_eq!(run_queue(12), "runQueue.12");
        assert_eq!(vatstore(&vat, "vom.ids"), "v3.vs.vom.ids");
        assert_eq!(subscriber(&"kp4", &vat), "kp4.sub.v3");
        assert_eq!(numbered("ko", 0), "ko0");
        assert_eq!(numbered("p-", u64::MAX), "p-18446744073709551615");
    }
}
