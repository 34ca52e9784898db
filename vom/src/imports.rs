//! Which imports the vat still holds, so that it can tell the kernel when it
//! drops one (`dropImports`, then `retireImports`).
//!
//! Every [`Ref`] to an import (`o-N`) that vom hands the program (decoded
//! from a delivery, or read from durable state) shares one [`Holder`] per
//! import. Rust drops values deterministically, so when the last `Ref` goes,
//! the holder's `drop` notes the import; at the end of the delivery, an import
//! with no holder and no reference from durable state is dropped and retired.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Weak};

use rustc_hash::FxHashMap;

use crate::abi::Syscall;
use crate::capdata::{Ref, Value};
use crate::sys;

/// Keeps import `vref` alive while any `Ref` to it exists in the vat.
#[derive(Debug)]
pub(crate) struct Holder {
    vref: String,
}

impl Drop for Holder {
    fn drop(&mut self) {
        HELD_CHANGED.with(|changed| changed.set(true));
        DROPPED
            .lock()
            .expect("vom dropped-imports list")
            .push(std::mem::take(&mut self.vref));
    }
}

/// Imports whose last holder went (or whose durable count reached zero).
/// A `Mutex` because holders live in `Arc`s; a guest has one thread.
static DROPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    static LIVE: RefCell<FxHashMap<String, Weak<Holder>>> = RefCell::new(FxHashMap::default());
    /// Whether what the heap holds may have changed since [`held_on_heap`]
    /// last looked: a holder came or went, or a durable count reached zero.
    static HELD_CHANGED: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Makes `reference` hold what it names, if it is an import or a promise.
pub(crate) fn hold(reference: &mut Ref) {
    let slot = &reference.slot;
    if !(slot.starts_with("o-") || slot.starts_with('p')) || reference.holder.is_some() {
        return;
    }
    let (holder, new) = LIVE.with(|live| {
        let mut live = live.borrow_mut();
        if let Some(holder) = live.get(slot).and_then(Weak::upgrade) {
            return (holder, false);
        }
        let holder = Arc::new(Holder { vref: slot.clone() });
        live.insert(slot.clone(), Arc::downgrade(&holder));
        HELD_CHANGED.with(|changed| changed.set(true));
        (holder, true)
    });
    if new && slot.starts_with('p') {
        crate::runtime::promise_held(slot);
    }
    reference.holder = Some(holder);
}

/// Makes every import reference in `value` hold its import.
pub(crate) fn hold_all(value: &mut Value) {
    match value {
        Value::Remotable(reference) | Value::Promise(reference) => hold(reference),
        Value::Array(items) => items.iter_mut().for_each(hold_all),
        Value::Record(entries) => entries.values_mut().for_each(hold_all),
        Value::Tagged { payload, .. } => hold_all(payload),
        _ => {}
    }
}

/// Notes that durable state no longer counts `vref`: it may be droppable.
pub(crate) fn maybe_dropped(vref: &str) {
    HELD_CHANGED.with(|changed| changed.set(true));
    DROPPED
        .lock()
        .expect("vom dropped-imports list")
        .push(vref.to_owned());
}

/// Tells the kernel about the imports nothing in the vat holds any more:
/// no `Ref` on the heap and no durable reference. Runs at the end of each delivery.
pub(crate) fn release_dropped(durable_count: impl Fn(&str) -> u64) {
    let mut candidates = std::mem::take(&mut *DROPPED.lock().expect("vom dropped-imports list"));
    if candidates.is_empty() {
        return;
    }
    candidates.sort_unstable();
    candidates.dedup();
    let released: Vec<String> = candidates
        .into_iter()
        .filter(|vref| {
            let held = LIVE.with(|live| {
                live.borrow()
                    .get(vref)
                    .is_some_and(|holder| holder.strong_count() > 0)
            });
            // Promises are not counted in durable state (it cannot hold them).
            !held && (vref.starts_with('p') || durable_count(vref) == 0)
        })
        .collect();
    if released.is_empty() {
        return;
    }
    LIVE.with(|live| {
        let mut live = live.borrow_mut();
        for vref in &released {
            live.remove(vref);
        }
    });
    // Promises: the vat keeps no settlement for them; the kernel forgets
    // them when it has told the vat (every held promise is subscribed to).
    let (promises, released): (Vec<String>, Vec<String>) =
        released.into_iter().partition(|vref| vref.starts_with('p'));
    for vpid in &promises {
        crate::runtime::promise_released(vpid);
    }
    if released.is_empty() {
        return;
    }
    sys::syscall(&Syscall::DropImports {
        vrefs: released.clone(),
    });
    sys::syscall(&Syscall::RetireImports { vrefs: released });
}

/// The exporter retired `vref`: no reference to it will arrive again.
pub(crate) fn forget(vref: &str) {
    LIVE.with(|live| live.borrow_mut().remove(vref));
}

/// Shows `visit` each import and promise a `Ref` on the heap names, when
/// that may have changed since the last call (returns false, showing
/// nothing, when it has not). Entries of holders that are gone are pruned
/// on the way, so the next look is as short as what the heap holds.
pub(crate) fn visit_held_on_heap(mut visit: impl FnMut(&str)) -> bool {
    if !HELD_CHANGED.with(|changed| changed.replace(false)) {
        return false;
    }
    LIVE.with(|live| {
        let mut live = live.borrow_mut();
        live.retain(|_, holder| holder.strong_count() > 0);
        for vref in live.keys() {
            visit(vref);
        }
    });
    true
}
