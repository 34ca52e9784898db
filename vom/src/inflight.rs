//! Work in flight that outlives the heap: durable watchers and durable
//! promises. Both live in the vatstore, so a restart, an upgrade or a kill
//! between a send and its answer loses nothing, and nothing is replayed.
//!
//! - A watcher (`vom.w.<vpid>`) names a durable object's method to run when
//!   a promise settles: it runs in the crank that delivers the settlement,
//!   once (the entry goes in the same crank).
//! - A durable promise (`vom.dp.<vpid>`) is one the vat decides and keeps:
//!   its [`Resolver`] is plain data a durable object can store, and a method
//!   that answers with the promise forwards its caller's result to it. The
//!   kernel is told (`keepDecided`), so a restart does not reject them.

use serde::{Deserialize, Serialize};

use crate::abi::{Resolution, Syscall};
use crate::capdata::{self, CapData, Ref, Value};
use crate::{Error, Promise, Reply, durable, runtime, sys};

const WATCHERS_PREFIX: &str = "vom.w.";
const DURABLE_PROMISE_PREFIX: &str = "vom.dp.";
/// How many watchers are pending in the vat: none means a settlement needs
/// no vatstore read.
const WATCHERS_COUNT_KEY: &str = "vom.wcount";

/// `watchers_per_promise_max`: how many watchers one promise may have.
pub const WATCHERS_PER_PROMISE_MAX: usize = 64;
/// `forwards_per_promise_max`: how many results one durable promise may settle.
pub const FORWARDS_PER_PROMISE_MAX: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Watcher {
    target: String,
    method: String,
    extra: CapData,
}

impl Watcher {
    /// What the watcher keeps alive: its object and what `extra` names.
    fn refs(&self) -> Vec<String> {
        std::iter::once(self.target.clone())
            .chain(self.extra.slots.iter().cloned())
            .collect()
    }
}

thread_local! {
    static WATCHERS_PENDING: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

fn watchers_pending() -> u64 {
    WATCHERS_PENDING.with(|pending| match pending.get() {
        Some(count) => count,
        None => {
            let count = sys::vatstore_get(WATCHERS_COUNT_KEY)
                .map(|text| text.parse().expect("vom invariant: vom.wcount is a count"))
                .unwrap_or(0);
            pending.set(Some(count));
            count
        }
    })
}

fn set_watchers_pending(count: u64) {
    WATCHERS_PENDING.with(|pending| pending.set(Some(count)));
    if count == 0 {
        sys::vatstore_delete(WATCHERS_COUNT_KEY);
    } else {
        sys::vatstore_set(WATCHERS_COUNT_KEY, &count.to_string());
    }
}

/// The settlement a watcher's method gets as its first argument, as
/// `Promise.allSettled` spells it: `{status: "fulfilled", value}` or
/// `{status: "rejected", reason}`.
pub fn settlement(outcome: &Result<Value, Value>) -> Value {
    match outcome {
        Ok(value) => Value::record([
            ("status", Value::string("fulfilled")),
            ("value", value.clone()),
        ]),
        Err(reason) => Value::record([
            ("status", Value::string("rejected")),
            ("reason", reason.clone()),
        ]),
    }
}

/// When `promise` settles, runs `method(settlement, extra)` on the durable
/// object `target` (see [`settlement`]): in the crank that delivers the
/// settlement, exactly once, whatever restarts, upgrades or kills of this
/// vat happen in between. `target` must be a durable object (or one of its
/// facets) of this vat; `extra` is kept with the watcher, references too.
pub fn watch(promise: &Promise, target: &Ref, method: &str, extra: Value) -> Result<(), Error> {
    if durable::parse_durable(&target.slot).is_none() {
        return Err(Error::type_error(format!(
            "a watcher runs a method of a durable object of this vat, not of {}",
            target.slot
        )));
    }
    let vpid = promise.vpid().to_owned();
    let watcher = Watcher {
        target: target.slot.clone(),
        method: method.to_owned(),
        extra: capdata::encode(&extra),
    };
    if let Some(outcome) = promise.settled_now() {
        // The kernel told this vat already: run it now, as a task of this crank.
        runtime::spawn_detached(Box::pin(async move {
            run_watcher(&watcher, &outcome);
            Ok(Value::Undefined)
        }));
        return Ok(());
    }
    let key = format!("{WATCHERS_PREFIX}{vpid}");
    let mut watchers: Vec<Watcher> = sys::vatstore_get(&key)
        .map(|text| serde_json::from_str(&text).expect("vom invariant: vom.w.* holds watchers"))
        .unwrap_or_default();
    if watchers.len() >= WATCHERS_PER_PROMISE_MAX {
        return Err(Error::new(format!(
            "{vpid} has {WATCHERS_PER_PROMISE_MAX} watchers already (watchers_per_promise_max)"
        )));
    }
    durable::replace_refs(&[], &watcher.refs());
    watchers.push(watcher);
    let text = serde_json::to_string(&watchers).expect("vom invariant: watchers serialize");
    sys::vatstore_set(&key, &text);
    set_watchers_pending(watchers_pending() + 1);
    runtime::promise_held(&vpid);
    Ok(())
}

/// Runs the watchers of `vpid`, which just settled with `outcome`, and
/// forgets them. Called for every settlement a notify brings.
pub(crate) fn settled(vpid: &str, outcome: &Result<Value, Value>) {
    if watchers_pending() == 0 {
        return;
    }
    let key = format!("{WATCHERS_PREFIX}{vpid}");
    let Some(text) = sys::vatstore_get(&key) else {
        return;
    };
    let watchers: Vec<Watcher> =
        serde_json::from_str(&text).expect("vom invariant: vom.w.* holds watchers");
    sys::vatstore_delete(&key);
    set_watchers_pending(watchers_pending().saturating_sub(watchers.len() as u64));
    for watcher in &watchers {
        run_watcher(watcher, outcome);
        durable::replace_refs(&watcher.refs(), &[]);
    }
}

fn run_watcher(watcher: &Watcher, outcome: &Result<Value, Value>) {
    let mut extra = capdata::decode(&watcher.extra)
        .expect("vom invariant: a watcher's extra decodes as it was encoded");
    crate::imports::hold_all(&mut extra);
    let args = vec![settlement(outcome), extra];
    // What the method answers goes nowhere: nothing awaits a watcher.
    if let Reply::Later(future) = durable::dispatch(&watcher.target, &watcher.method, args) {
        runtime::spawn_detached(future);
    }
}

/// The deciding side of a durable promise: plain data a durable object can
/// keep in its state. [`Resolver::resolve`] settles the promise, and every
/// result forwarded to it, whenever it is called: in this incarnation of the
/// vat or a later one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolver {
    promise: String,
}

/// A new promise this vat decides and keeps in durable state, and its
/// resolver. Answering a method with the promise (`promise.to_value()`)
/// settles the caller's result when the resolver is used, across restarts.
pub fn durable_promise() -> (Promise, Resolver) {
    let vpid = runtime::allocate_promise();
    sys::vatstore_set(&format!("{DURABLE_PROMISE_PREFIX}{vpid}"), "[]");
    sys::syscall(&Syscall::KeepDecided {
        promises: vec![vpid.clone()],
    });
    let promise = runtime::local_promise(&vpid);
    (promise, Resolver { promise: vpid })
}

/// If `vpid` is a durable promise of this vat, makes `result` (a promise
/// this vat decides) settle as it does, and returns true.
pub(crate) fn forward(vpid: &str, result: &str) -> bool {
    let key = format!("{DURABLE_PROMISE_PREFIX}{vpid}");
    let Some(text) = sys::vatstore_get(&key) else {
        return false;
    };
    let mut forwards: Vec<String> =
        serde_json::from_str(&text).expect("vom invariant: vom.dp.* holds forwards");
    if forwards.len() >= FORWARDS_PER_PROMISE_MAX {
        panic!(
            "{vpid} settles {FORWARDS_PER_PROMISE_MAX} results already (forwards_per_promise_max)"
        );
    }
    forwards.push(result.to_owned());
    let text = serde_json::to_string(&forwards).expect("vom invariant: forwards serialize");
    sys::vatstore_set(&key, &text);
    sys::syscall(&Syscall::KeepDecided {
        promises: vec![result.to_owned()],
    });
    true
}

impl Resolver {
    /// Fulfills the promise (and the results forwarded to it) with `value`.
    pub fn resolve(&self, value: impl Into<Value>) -> Result<(), Error> {
        self.settle(Ok(value.into()))
    }

    /// Rejects the promise (and the results forwarded to it) with `error`.
    pub fn reject(&self, error: Error) -> Result<(), Error> {
        self.settle(Err(Value::Error(error)))
    }

    fn settle(&self, outcome: Result<Value, Value>) -> Result<(), Error> {
        let key = format!("{DURABLE_PROMISE_PREFIX}{}", self.promise);
        let Some(text) = sys::vatstore_get(&key) else {
            return Err(Error::new(format!("{} is settled already", self.promise)));
        };
        let forwards: Vec<String> =
            serde_json::from_str(&text).expect("vom invariant: vom.dp.* holds forwards");
        sys::vatstore_delete(&key);
        let (rejected, value) = match &outcome {
            Ok(value) => (false, value),
            Err(reason) => (true, reason),
        };
        let (data, substitutes) = runtime::outgoing(value);
        let resolutions = std::iter::once(&self.promise)
            .chain(&forwards)
            .map(|promise| Resolution {
                promise: promise.clone(),
                rejected,
                data: data.clone(),
            })
            .collect();
        sys::syscall(&Syscall::Resolve { resolutions });
        if !substitutes.is_empty() {
            sys::syscall(&Syscall::Resolve {
                resolutions: substitutes,
            });
        }
        // The kernel tells no decider how its own promise settled: what
        // waits for it here, watchers too, is told now.
        for promise in std::iter::once(&self.promise).chain(&forwards) {
            runtime::settled_locally(promise, &outcome);
            settled(promise, &outcome);
        }
        Ok(())
    }
}
