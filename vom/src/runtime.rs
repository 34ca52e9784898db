//! The guest side of the membrane: the exports table, vref allocation,
//! dispatch of deliveries to objects, eventual sends and the promises they
//! return, and a small single-threaded executor so methods can `await`.
//!
//! A vat's heap is a cache of its vatstore. What must survive a restart is
//! kept there: the id counters (so a restarted vat never reuses a vref) and
//! whatever the program stores itself.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use rustc_hash::FxHashMap as HashMap;

use crate::abi::{Delivery, Resolution, Syscall};
use crate::capdata::{self, CapData, ErrorValue, Ref, Value};
use crate::collections::Baggage;
use crate::{Args, Error, Exo, Reply, durable, sys};

/// The vatstore key under which vom keeps its id counters: for each of
/// exports and promises, the highest id this vat may have used.
const IDS_KEY: &str = "vom.ids";
/// How many ids of a kind one write of [`IDS_KEY`] reserves. A vat writes
/// the key when it passes its reservation, not at each send; a restarted
/// vat starts after what was reserved, so the unused rest of a block is
/// skipped, never reused.
const IDS_RESERVED_PER_WRITE: u64 = 100;
/// Vatstore keys with this prefix belong to vom; programs may not touch them.
pub(crate) const RESERVED_PREFIX: &str = "vom.";
/// The vref of every vat's root object.
pub const ROOT_VREF: &str = "o+0";

type LocalFuture = Pin<Box<dyn Future<Output = Result<Value, Error>>>>;

#[derive(Debug, Default)]
struct PromiseRecord {
    subscribed: bool,
    settled: Option<Result<Value, Value>>,
    waker: Option<Waker>,
    /// Nothing in the vat refers to the promise any more: its settlement,
    /// when it comes, is not kept.
    abandoned: bool,
}

struct Task {
    future: LocalFuture,
    result: Option<String>,
}

/// A message the kernel pipelined to a promise this vat decides: it waits
/// here until the promise settles, then goes where the promise went.
struct Pipelined {
    method: String,
    args: Vec<Value>,
    result: Option<String>,
}

/// What a vat's start function returns as its root object (`o+0`).
pub enum Root {
    /// An object on the heap, built again each time the vat starts.
    Heap(Rc<dyn Exo>),
    /// A durable object: messages to `o+0` go to it.
    Durable(Ref),
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Root::Heap(_) => f.write_str("Root::Heap(..)"),
            Root::Durable(r) => write!(f, "Root::Durable({})", r.slot),
        }
    }
}

impl<S: durable::Kind> From<durable::Durable<S>> for Root {
    fn from(object: durable::Durable<S>) -> Root {
        Root::Durable(object.reference())
    }
}

impl<E: Exo> From<E> for Root {
    fn from(object: E) -> Root {
        Root::Heap(Rc::new(object))
    }
}

#[derive(Default)]
struct VatState {
    /// The durable object `o+0` stands for, if the root is durable.
    durable_root: Option<String>,
    exports: HashMap<String, Rc<dyn Exo>>,
    export_ids: HashMap<usize, String>,
    next_export_id: u64,
    next_promise_id: u64,
    /// The ids [`IDS_KEY`] reserves (or will, once written): up to these,
    /// an id is allocated without a write.
    reserved_export_id: u64,
    reserved_promise_id: u64,
    ids_dirty: bool,
    promises: HashMap<String, PromiseRecord>,
    tasks: HashMap<u64, Task>,
    /// Result promises of methods still running: messages may be pipelined to them.
    deciding: std::collections::HashSet<String>,
    pipelined: HashMap<String, Vec<Pipelined>>,
    next_task_id: u64,
}

thread_local! {
    static VAT: RefCell<VatState> = RefCell::new(VatState::default());
}

/// Tasks woken since they were last polled. A `Mutex` because `Waker`s must be
/// `Send + Sync`; a Wasm guest has one thread, so it never contends.
static READY: Mutex<VecDeque<u64>> = Mutex::new(VecDeque::new());

struct TaskWaker(u64);

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        READY.lock().expect("vom ready queue").push_back(self.0);
    }
}

fn with_vat<T>(f: impl FnOnce(&mut VatState) -> T) -> T {
    VAT.with(|vat| f(&mut vat.borrow_mut()))
}

/// Exports `object` (once: the same object keeps its vref) and returns a
/// reference to it that can be passed in messages and results.
pub fn export(object: Rc<dyn Exo>) -> Value {
    let key = Rc::as_ptr(&object) as *const () as usize;
    let iface = format!("Alleged: {}", object.interface_name());
    let slot = with_vat(|vat| {
        if let Some(vref) = vat.export_ids.get(&key) {
            return vref.clone();
        }
        vat.next_export_id += 1;
        vat.ids_dirty |= reserve(vat.next_export_id, &mut vat.reserved_export_id);
        let vref = format!("o+{}", vat.next_export_id);
        vat.export_ids.insert(key, vref.clone());
        vat.exports.insert(vref.clone(), object);
        vref
    });
    Value::Remotable(Ref::with_iface(slot, Some(iface)))
}

/// Reserves a new block of ids when `id` is past `reserved`; says whether
/// it did (and so [`IDS_KEY`] must be written).
fn reserve(id: u64, reserved: &mut u64) -> bool {
    if id <= *reserved {
        return false;
    }
    *reserved = id + (IDS_RESERVED_PER_WRITE - 1);
    true
}

pub(crate) fn allocate_promise() -> String {
    allocate_promise_subscribed(false)
}

/// A new promise id, `subscribed` already when the kernel subscribes the
/// vat itself (to a send's result).
fn allocate_promise_subscribed(subscribed: bool) -> String {
    with_vat(|vat| {
        vat.next_promise_id += 1;
        vat.ids_dirty |= reserve(vat.next_promise_id, &mut vat.reserved_promise_id);
        let vpid = format!("p+{}", vat.next_promise_id);
        let record = PromiseRecord {
            subscribed,
            ..PromiseRecord::default()
        };
        vat.promises.insert(vpid.clone(), record);
        vpid
    })
}

/// The eventual result of a message sent with [`send`]. Await it for the
/// outcome; pass [`Promise::to_value`] in a message to hand the promise on.
///
/// vom subscribes to every promise the vat holds, so the kernel can forget
/// it once it has told the vat how it settled; the settlement is kept while
/// a `Promise` or a [`Value`] naming it exists in the vat.
#[derive(Debug)]
pub struct Promise {
    vpid: String,
    holder: Option<Arc<crate::imports::Holder>>,
    /// For a reference to an object rather than a promise (the kernel hands
    /// a vat what a promise became once it resolved to an object): the
    /// object, which awaiting yields at once.
    object: Option<Ref>,
}

impl Promise {
    /// A promise received in a message or result (or kept as a value), to
    /// await it. A reference to an object is a promise already fulfilled
    /// with that object.
    pub fn from_ref(reference: &Ref) -> Promise {
        let mut reference = reference.clone();
        crate::imports::hold(&mut reference);
        if reference.slot.starts_with('o') {
            return Promise {
                vpid: reference.slot.clone(),
                holder: None,
                object: Some(reference),
            };
        }
        Promise {
            vpid: reference.slot,
            holder: reference.holder,
            object: None,
        }
    }

    pub fn to_value(&self) -> Value {
        if let Some(object) = &self.object {
            return Value::Remotable(object.clone());
        }
        let mut reference = Ref::new(self.vpid.clone());
        reference.holder = self.holder.clone();
        Value::Promise(reference)
    }

    pub(crate) fn vpid(&self) -> &str {
        &self.vpid
    }

    /// How it settled, if this vat knows already (an object is a promise
    /// fulfilled with itself).
    pub(crate) fn settled_now(&self) -> Option<Result<Value, Value>> {
        match &self.object {
            Some(object) => Some(Ok(Value::Remotable(object.clone()))),
            None => settled_here(&self.vpid),
        }
    }
}

/// A promise this vat decides itself, to await here: the kernel does not
/// notify a decider, so no subscription is made; [`settled_locally`] wakes it.
pub(crate) fn local_promise(vpid: &str) -> Promise {
    with_vat(|vat| vat.promises.entry(vpid.to_owned()).or_default().subscribed = true);
    Promise::from_ref(&Ref::new(vpid))
}

/// How `vpid` settled, if this vat was told and still keeps it.
pub(crate) fn settled_here(vpid: &str) -> Option<Result<Value, Value>> {
    with_vat(|vat| vat.promises.get(vpid).and_then(|r| r.settled.clone()))
}

/// `vpid`, a promise this vat decided, was settled by the vat itself (a
/// durable resolver): what awaits it here or was pipelined to it goes on.
pub(crate) fn settled_locally(vpid: &str, outcome: &Result<Value, Value>) {
    let queued = with_vat(|vat| {
        vat.deciding.remove(vpid);
        vat.pipelined.remove(vpid).unwrap_or_default()
    });
    let (rejected, value) = match outcome {
        Ok(value) => (false, value),
        Err(reason) => (true, reason),
    };
    wake_awaiting(vpid, rejected, value);
    for message in queued {
        forward_pipelined(message, rejected, value);
    }
}

/// Runs `future` as a task of this crank whose outcome nothing awaits.
pub(crate) fn spawn_detached(future: LocalFuture) {
    spawn(future, None);
}

/// Vom holds promise `vpid` (a `Promise` or a value names it): keep its
/// settlement, and subscribe to it once.
pub(crate) fn promise_held(vpid: &str) {
    let subscribe = with_vat(|vat| {
        let record = vat.promises.entry(vpid.to_owned()).or_default();
        record.abandoned = false;
        !std::mem::replace(&mut record.subscribed, true)
    });
    if subscribe {
        sys::syscall(&Syscall::Subscribe {
            promise: vpid.to_owned(),
        });
    }
}

/// Nothing in the vat names promise `vpid` any more.
pub(crate) fn promise_released(vpid: &str) {
    with_vat(|vat| {
        let settled = match vat.promises.get_mut(vpid) {
            Some(record) if record.settled.is_some() => true,
            Some(record) => {
                record.abandoned = true;
                false
            }
            None => false,
        };
        if settled {
            vat.promises.remove(vpid);
        }
    });
}

impl Future for Promise {
    type Output = Result<Value, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(object) = &self.object {
            return Poll::Ready(Ok(Value::Remotable(object.clone())));
        }
        let (settled, subscribe) = with_vat(|vat| {
            // The settlement stays for other holders; it goes with the last one.
            let record = vat.promises.entry(self.vpid.clone()).or_default();
            if let Some(settled) = &record.settled {
                return (Some(settled.clone()), false);
            }
            record.waker = Some(cx.waker().clone());
            let first = !record.subscribed;
            record.subscribed = true;
            (None, first)
        });
        match settled {
            Some(Ok(value)) => Poll::Ready(Ok(value)),
            Some(Err(reason)) => Poll::Ready(Err(rejection_error(reason))),
            None => {
                if subscribe {
                    sys::syscall(&Syscall::Subscribe {
                        promise: self.vpid.clone(),
                    });
                }
                Poll::Pending
            }
        }
    }
}

fn rejection_error(reason: Value) -> Error {
    match reason {
        Value::Error(error) => error,
        other => ErrorValue {
            name: "Error".into(),
            message: format!("rejected with {}", capdata::encode(&other).body),
        },
    }
}

/// Sends `method(args)` to `target` eventually; the reply comes as a [`Promise`].
/// The kernel subscribes the vat to a send's result, so no `subscribe` follows.
pub fn send(target: &Ref, method: &str, args: Vec<Value>) -> Promise {
    let vpid = allocate_promise_subscribed(true);
    let (args, settled) = outgoing(&Value::Array(args));
    sys::syscall(&Syscall::Send {
        target: target.slot.clone(),
        method: method.to_owned(),
        args,
        result: Some(vpid.clone()),
    });
    resolve_substitutes(settled);
    Promise::from_ref(&Ref::new(vpid))
}

/// Encodes data leaving the vat: durable objects in it are now exported.
/// A promise that already settled here (the kernel has forgotten its vpid)
/// goes out as a fresh promise, resolved the same way right after the
/// syscall that carries it: the resolutions to make are returned.
pub(crate) fn outgoing(value: &Value) -> (CapData, Vec<Resolution>) {
    let mut data = capdata::encode(value);
    let mut settled = Vec::new();
    for slot in &mut data.slots {
        durable::note_exported(slot);
        if !slot.starts_with('p') {
            continue;
        }
        let outcome = with_vat(|vat| {
            vat.promises
                .get(slot.as_str())
                .and_then(|r| r.settled.clone())
        });
        if let Some(outcome) = outcome {
            let fresh = allocate_promise();
            with_vat(|vat| vat.promises.remove(&fresh));
            let (rejected, value) = match outcome {
                Ok(value) => (false, value),
                Err(reason) => (true, reason),
            };
            let (inner, more) = outgoing(&value);
            settled.push(Resolution {
                promise: fresh.clone(),
                rejected,
                data: inner,
            });
            settled.extend(more);
            *slot = fresh;
        }
    }
    (data, settled)
}

fn resolve_substitutes(resolutions: Vec<Resolution>) {
    if !resolutions.is_empty() {
        sys::syscall(&Syscall::Resolve { resolutions });
    }
}

fn settle(result_vpid: Option<String>, outcome: Result<Value, Error>) {
    let Some(promise) = result_vpid else { return };
    // A result that is itself a promise is followed: the caller's promise
    // settles as that one does (a promise chain, across as many vats as it takes).
    // A durable promise is followed in durable state, not by a heap task.
    if let Ok(Value::Promise(next)) = &outcome {
        if crate::inflight::forward(&next.slot, &promise) {
            return;
        }
        let next = Promise::from_ref(next);
        return spawn(Box::pin(next), Some(promise));
    }
    let queued = with_vat(|vat| {
        vat.deciding.remove(&promise);
        vat.pipelined.remove(&promise).unwrap_or_default()
    });
    let (rejected, value) = match outcome {
        Ok(value) => (false, value),
        Err(error) => (true, Value::Error(error)),
    };
    // The kernel forgets a promise for its decider once it is resolved, and
    // tells the decider nothing: a task here awaiting it (a send to one of
    // this vat's own objects) hears of it now; woken here, it runs after.
    wake_awaiting(&promise, rejected, &value);
    let (data, settled) = outgoing(&value);
    sys::syscall(&Syscall::Resolve {
        resolutions: vec![Resolution {
            promise,
            rejected,
            data,
        }],
    });
    resolve_substitutes(settled);
    for message in queued {
        forward_pipelined(message, rejected, &value);
    }
}

/// Records `vpid`'s settlement for whatever here awaits it, and wakes it.
fn wake_awaiting(vpid: &str, rejected: bool, value: &Value) {
    let waker = with_vat(|vat| {
        vat.promises.get_mut(vpid).and_then(|record| {
            let value = value.clone();
            record.settled = Some(if rejected { Err(value) } else { Ok(value) });
            record.waker.take()
        })
    });
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Sends a pipelined message on to what its target promise settled to:
/// delivered here if that is one of this vat's objects, sent on otherwise.
fn forward_pipelined(message: Pipelined, rejected: bool, settled: &Value) {
    let outcome = match (rejected, settled) {
        (true, Value::Error(error)) => Err(error.clone()),
        (true, other) => Err(rejection_error(other.clone())),
        (false, Value::Remotable(target)) if target.slot.starts_with("o+") => {
            return deliver_local(&target.slot, &message.method, message.args, message.result);
        }
        (false, Value::Remotable(target)) => {
            let promise = send(target, &message.method, message.args);
            Ok(promise.to_value())
        }
        (false, _) => Err(Error::type_error(format!(
            "cannot deliver {:?}: its target was fulfilled with data, not an object",
            message.method
        ))),
    };
    settle(message.result, outcome);
}

fn spawn(future: LocalFuture, result: Option<String>) {
    let id = with_vat(|vat| {
        if let Some(vpid) = &result {
            vat.deciding.insert(vpid.clone());
        }
        vat.next_task_id += 1;
        let id = vat.next_task_id;
        vat.tasks.insert(id, Task { future, result });
        id
    });
    READY.lock().expect("vom ready queue").push_back(id);
}

/// Polls woken tasks until none is ready: what a delivery set in motion runs
/// as far as it can before the crank ends.
fn run_ready_tasks() {
    loop {
        let next = READY.lock().expect("vom ready queue").pop_front();
        let Some(id) = next else { break };
        // The task leaves the table while it runs, so it may spawn or send freely.
        let Some(mut task) = with_vat(|vat| vat.tasks.remove(&id)) else {
            continue;
        };
        let waker = Waker::from(Arc::new(TaskWaker(id)));
        let mut cx = Context::from_waker(&waker);
        match task.future.as_mut().poll(&mut cx) {
            Poll::Ready(outcome) => settle(task.result, outcome),
            Poll::Pending => with_vat(|vat| {
                vat.tasks.insert(id, task);
            }),
        }
    }
}

fn load_ids() {
    let (export_id, promise_id) = match sys::vatstore_get(IDS_KEY) {
        Some(text) => {
            let (e, p) = text
                .split_once(',')
                .expect("vom invariant: vom.ids is 'exports,promises'");
            (
                e.parse().expect("vom invariant: vom.ids export counter"),
                p.parse().expect("vom invariant: vom.ids promise counter"),
            )
        }
        None => (0, 0),
    };
    // Any id up to what was reserved may have been used before the restart.
    with_vat(|vat| {
        vat.next_export_id = export_id;
        vat.next_promise_id = promise_id;
        vat.reserved_export_id = export_id;
        vat.reserved_promise_id = promise_id;
    });
}

fn save_ids_if_dirty() {
    let ids = with_vat(|vat| {
        std::mem::take(&mut vat.ids_dirty)
            .then(|| format!("{},{}", vat.reserved_export_id, vat.reserved_promise_id))
    });
    if let Some(ids) = ids {
        sys::vatstore_set(IDS_KEY, &ids);
    }
}

fn deliver_message(target: &str, method: &str, args: &capdata::CapData, result: Option<String>) {
    let args = match capdata::decode(args) {
        Ok(Value::Array(mut items)) => {
            items.iter_mut().for_each(crate::imports::hold_all);
            items
        }
        Ok(_) => return settle(result, Err(Error::type_error("arguments must be an array"))),
        Err(e) => return settle(result, Err(Error::type_error(e.to_string()))),
    };
    if target.starts_with('p') {
        // Pipelined: the kernel sent it to the promise this vat decides.
        let method = method.to_owned();
        let waiting = with_vat(|vat| {
            if !vat.deciding.contains(target) {
                return Some((method, args, result));
            }
            vat.pipelined
                .entry(target.to_owned())
                .or_default()
                .push(Pipelined {
                    method,
                    args,
                    result,
                });
            None
        });
        if let Some((method, _, result)) = waiting {
            let message =
                format!("cannot deliver {method:?} to {target}: this vat no longer decides it");
            settle(result, Err(Error::new(message)));
        }
        return;
    }
    deliver_local(target, method, args, result);
}

/// Delivers a message to one of this vat's own objects, heap or durable.
fn deliver_local(target: &str, method: &str, args: Vec<Value>, result: Option<String>) {
    let durable_target = if target.starts_with("o+d") {
        Some(target.to_owned())
    } else if target == ROOT_VREF {
        with_vat(|vat| vat.durable_root.clone())
    } else {
        None
    };
    if let Some(target) = durable_target {
        return match durable::dispatch(&target, method, args) {
            Reply::Ready(outcome) => settle(result, outcome),
            Reply::Later(future) => spawn(future, result),
        };
    }
    let object = with_vat(|vat| vat.exports.get(target).cloned());
    let Some(object) = object else {
        let message = format!(
            "object {target} is gone: it was not durable and its vat restarted since it was exported"
        );
        return settle(result, Err(Error::new(message)));
    };
    match object.call(method, Args::new(args)) {
        Reply::Ready(outcome) => settle(result, outcome),
        Reply::Later(future) => spawn(future, result),
    }
}

fn deliver_notify(resolutions: Vec<Resolution>) {
    for resolution in resolutions {
        let outcome = match capdata::decode(&resolution.data) {
            Ok(mut value) => {
                crate::imports::hold_all(&mut value);
                if resolution.rejected {
                    Err(value)
                } else {
                    Ok(value)
                }
            }
            Err(e) => Err(Value::error(e.to_string())),
        };
        crate::inflight::settled(&resolution.promise, &outcome);
        crate::flow::settled(&resolution.promise, &outcome);
        // A promise nothing in the vat names any more is forgotten now.
        let waker = with_vat(|vat| match vat.promises.get_mut(&resolution.promise) {
            Some(record) if !record.abandoned => {
                record.settled = Some(outcome);
                record.waker.take()
            }
            _ => {
                vat.promises.remove(&resolution.promise);
                None
            }
        });
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Reports a panic to the kernel as the vat's failure, with its message,
/// rather than as a bare trap.
fn report_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| info.to_string());
        // The location tells the vat's author where to look; the kernel
        // reports it with the failed message.
        let message = match info.location() {
            Some(at) => format!("panicked at {}:{}: {message}", at.file(), at.line()),
            None => format!("panicked: {message}"),
        };
        sys::syscall(&Syscall::Exit {
            failure: true,
            info: capdata::encode(&Value::String(message)),
        });
    }));
}

fn start_vat(make_root: impl FnOnce(&Baggage) -> Root, imports: Vec<String>) {
    report_panics();
    load_ids();
    // Whatever held these on the previous worker's heap is gone; those the
    // durable state does not refer to are dropped at the end of this delivery.
    for vref in &imports {
        crate::imports::maybe_dropped(vref);
    }
    let baggage = Baggage::open();
    let root = make_root(&baggage);
    let unreadable = durable::unreadable_kinds();
    if !unreadable.is_empty() {
        sys::syscall(&Syscall::Exit {
            failure: true,
            info: capdata::encode(&Value::string(format!(
                "this version cannot read the stored state of {}",
                unreadable.join("; ")
            ))),
        });
    }
    let missing = durable::missing_kinds();
    if !missing.is_empty() {
        sys::syscall(&Syscall::Exit {
            failure: true,
            info: capdata::encode(&Value::string(format!(
                "this version does not define the durable kind(s) {} that an earlier version made",
                missing.join(", ")
            ))),
        });
    }
    match root {
        Root::Heap(root) => {
            let key = Rc::as_ptr(&root) as *const () as usize;
            with_vat(|vat| {
                vat.export_ids.insert(key, ROOT_VREF.to_owned());
                vat.exports.insert(ROOT_VREF.to_owned(), root);
            });
        }
        Root::Durable(root) => {
            durable::note_exported(&root.slot);
            with_vat(|vat| vat.durable_root = Some(root.slot));
        }
    }
}

/// Handles one delivery (the body of the guest's `vat_deliver` export).
pub fn dispatch(delivery: Delivery, make_root: impl FnOnce(&Baggage) -> Root) {
    match delivery {
        Delivery::StartVat { imports } => start_vat(make_root, imports),
        Delivery::BringOutYourDead => {
            durable::bring_out_your_dead();
        }
        Delivery::DropExports { vrefs } => {
            for vref in vrefs {
                durable::note_dropped(&vref);
                forget_heap_export(&vref);
            }
        }
        Delivery::RetireExports { vrefs } => {
            for vref in vrefs {
                durable::note_retired(&vref);
                forget_heap_export(&vref);
            }
        }
        Delivery::RetireImports { vrefs } => {
            for vref in vrefs {
                crate::imports::forget(&vref);
            }
        }
        Delivery::Message {
            target,
            method,
            args,
            result,
        } => deliver_message(&target, &method, &args, result),
        Delivery::Notify { resolutions } => deliver_notify(resolutions),
    }
    run_ready_tasks();
    durable::flush();
    crate::imports::release_dropped(durable::import_count);
    save_ids_if_dirty();
    report_heap();
}

/// What a heap holds that its vatstore does not, counted: what a heap
/// report says in words. Counted at each delivery's end, and put in words
/// only when the counts changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeapHolds {
    /// Methods awaiting in memory (not flows: their journals rebuild them).
    tasks: usize,
    /// Heap objects exported (not the root).
    exports: usize,
    /// Promises held in memory (not those a flow's journal waits for).
    promises: usize,
    /// Imports only the heap refers to.
    imports: usize,
}

impl HeapHolds {
    fn words(self) -> String {
        let mut parts = Vec::new();
        if self.tasks > 0 {
            parts.push(format!("{} method(s) awaiting in memory", self.tasks));
        }
        if self.exports > 0 {
            parts.push(format!("{} heap object(s) exported", self.exports));
        }
        if self.promises > 0 {
            parts.push(format!("{} promise(s) held in memory", self.promises));
        }
        if self.imports > 0 {
            parts.push(format!(
                "{} import(s) only the heap refers to",
                self.imports
            ));
        }
        parts.join(", ")
    }
}

thread_local! {
    /// The last report of what the heap holds (`None`: none made yet, as
    /// in a fresh worker).
    static HEAP_REPORTED: Cell<Option<HeapHolds>> = const { Cell::new(None) };
    /// The held references as last counted: (promises, imports).
    static HELD_COUNTED: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Tells the kernel what this heap holds that the vatstore does not, when
/// that changed: a vat that holds nothing may sleep (its worker stopped)
/// and wake with nothing lost.
fn report_heap() {
    let (tasks, exports) = with_vat(|vat| {
        let heap_root = usize::from(vat.exports.contains_key(ROOT_VREF));
        (vat.tasks.len(), vat.exports.len() - heap_root)
    });
    let mut counted = (0, 0);
    // With no flow waiting, no promise is a flow's to keep: the heap's
    // promises are counted as they come and go, not visited.
    let flows_wait = crate::flow::any_pending();
    let recounted = crate::imports::visit_held_on_heap(flows_wait, |vref| {
        if vref.starts_with('p') && !crate::flow::awaits(vref) {
            counted.0 += 1;
        } else if vref.starts_with("o-") && durable::import_count(vref) == 0 {
            counted.1 += 1;
        }
    });
    if recounted && !flows_wait {
        counted.0 = crate::imports::promises_held_on_heap();
    }
    let (promises, imports) = if recounted {
        HELD_COUNTED.set(counted);
        counted
    } else {
        HELD_COUNTED.get()
    };
    let holds = HeapHolds {
        // A flow's body is a task its journal rebuilds: it keeps nothing.
        tasks: tasks.saturating_sub(crate::flow::live_count()),
        exports,
        promises,
        imports,
    };
    if HEAP_REPORTED.replace(Some(holds)) != Some(holds) {
        sys::syscall(&Syscall::Heap {
            holds: holds.words(),
        });
    }
}

/// The kernel can no longer reach heap export `vref`: the vat lets go of it
/// (the root, `o+0`, is the vat's for good).
fn forget_heap_export(vref: &str) {
    if vref == ROOT_VREF || vref.starts_with("o+d") {
        return;
    }
    with_vat(|vat| {
        if let Some(object) = vat.exports.remove(vref) {
            let key = Rc::as_ptr(&object) as *const () as usize;
            vat.export_ids.remove(&key);
        }
    });
}

/// The guest's `vat_alloc` export: a buffer of `len` bytes for the host to fill.
pub fn alloc(len: i32) -> i32 {
    let buffer = vec![0u8; len.max(0) as usize].into_boxed_slice();
    Box::into_raw(buffer) as *mut u8 as usize as i32
}

/// The guest's `vat_deliver` export: decodes the buffer made by [`alloc`] and dispatches it.
///
/// # Safety
/// `ptr` and `len` must come from one call of [`alloc`], and be used once.
pub unsafe fn deliver_raw(ptr: i32, len: i32, make_root: impl FnOnce(&Baggage) -> Root) -> i32 {
    let slice = std::ptr::slice_from_raw_parts_mut(ptr as usize as *mut u8, len.max(0) as usize);
    // SAFETY: per this function's contract, the buffer came from `alloc(len)`.
    let bytes = unsafe { Box::from_raw(slice) };
    match crate::abi::Encoding::native().decode_delivery(&bytes) {
        Ok(delivery) => {
            dispatch(delivery, make_root);
            0
        }
        Err(_) => 1,
    }
}
