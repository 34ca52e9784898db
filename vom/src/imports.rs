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
        if is_promise(&self.vref) {
            PROMISE_HOLDERS.with(|holders| {
                let left = holders.get().checked_sub(1);
                holders.set(left.expect("vom invariant: a promise holder was counted when made"));
            });
        }
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
    /// The holder of each import (`o-N`) a `Ref` on the heap names.
    static LIVE: RefCell<FxHashMap<String, Weak<Holder>>> = RefCell::new(FxHashMap::default());
    /// The holder of each promise (`p±N`) a `Ref` on the heap names: apart
    /// from imports, so that counting what the heap holds does not visit
    /// every promise in flight (a burst of 500 calls holds 500) at the end
    /// of every delivery.
    static LIVE_PROMISES: RefCell<FxHashMap<String, Weak<Holder>>> =
        RefCell::new(FxHashMap::default());
    /// Promise holders alive: the promises the heap holds. At most one is
    /// alive per promise, and it is the one in [`LIVE_PROMISES`].
    static PROMISE_HOLDERS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Whether what the heap holds may have changed since [`held_on_heap`]
    /// last looked: a holder came or went, or a durable count reached zero.
    static HELD_CHANGED: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn is_promise(vref: &str) -> bool {
    vref.starts_with('p')
}

/// The table `vref`'s holder belongs in.
fn with_live<T>(vref: &str, f: impl FnOnce(&mut FxHashMap<String, Weak<Holder>>) -> T) -> T {
    let table = if is_promise(vref) {
        &LIVE_PROMISES
    } else {
        &LIVE
    };
    table.with(|live| f(&mut live.borrow_mut()))
}

/// Makes `reference` hold what it names, if it is an import or a promise.
pub(crate) fn hold(reference: &mut Ref) {
    let slot = &reference.slot;
    if !(slot.starts_with("o-") || is_promise(slot)) || reference.holder.is_some() {
        return;
    }
    let (holder, new) = with_live(slot, |live| {
        if let Some(holder) = live.get(slot).and_then(Weak::upgrade) {
            return (holder, false);
        }
        let holder = Arc::new(Holder { vref: slot.clone() });
        live.insert(slot.clone(), Arc::downgrade(&holder));
        HELD_CHANGED.with(|changed| changed.set(true));
        (holder, true)
    });
    if new && is_promise(slot) {
        PROMISE_HOLDERS.with(|holders| holders.set(holders.get() + 1));
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
            let held = with_live(vref, |live| {
                live.get(vref.as_str())
                    .is_some_and(|holder| holder.strong_count() > 0)
            });
            // Promises are not counted in durable state (it cannot hold them).
            !held && (vref.starts_with('p') || durable_count(vref) == 0)
        })
        .collect();
    if released.is_empty() {
        return;
    }
    for vref in &released {
        with_live(vref, |live| live.remove(vref));
    }
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
    with_live(vref, |live| live.remove(vref));
}

/// Shows `visit` each import (and each promise, if `promises_too`) a `Ref`
/// on the heap names, when that may have changed since the last call
/// (returns false, showing nothing, when it has not). Entries of holders
/// that are gone are pruned on the way, so the next look is as short as
/// what the heap holds. Without `promises_too`, [`promises_held_on_heap`]
/// counts them.
pub(crate) fn visit_held_on_heap(promises_too: bool, mut visit: impl FnMut(&str)) -> bool {
    if !HELD_CHANGED.with(|changed| changed.replace(false)) {
        return false;
    }
    let mut visit_all = |table: &'static std::thread::LocalKey<RefCell<_>>| {
        table.with(|live: &RefCell<FxHashMap<String, Weak<Holder>>>| {
            let mut live = live.borrow_mut();
            live.retain(|_, holder| holder.strong_count() > 0);
            for vref in live.keys() {
                visit(vref);
            }
        });
    };
    visit_all(&LIVE);
    if promises_too {
        visit_all(&LIVE_PROMISES);
    }
    true
}

/// How many promises the heap holds (each through one holder).
pub(crate) fn promises_held_on_heap() -> usize {
    PROMISE_HOLDERS.with(std::cell::Cell::get)
}
