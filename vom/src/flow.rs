//! Durable flows: ordinary `async` Rust whose sends survive restarts
//! without replaying the vat. A flow's sends and their outcomes are kept in
//! a journal, per flow, in the vatstore. When a settlement arrives for a
//! flow that is not running on this heap (the vat restarted since it
//! started), its body runs again from its arguments against the journal:
//! sends already made are not made again, their outcomes are fed back, and
//! it carries on from where it was. A body that asks for a different send
//! than its journal holds has diverged: it fails, and makes no send.
//!
//! A body must be deterministic given its arguments and the outcomes of its
//! sends (vats have no clock or randomness, so that is the default). Its
//! journal is bounded ([`FLOW_JOURNAL_MAX`]): a long loop ends its body with
//! [`FlowEnd::ContinueAsNew`], which starts it again with new arguments and
//! an empty journal, as the same flow, settling the same promise.
//!
//! Vatstore keys: `vom.f.<id>` (the flow: its kind, arguments, resolver and
//! journal length), `vom.fj.<id>.<step>` (a send and, once known, its
//! outcome), `vom.fw.<vpid>` (which flow step a send's result belongs to).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};

use crate::capdata::{self, CapData, Ref, Value};
use crate::inflight::Resolver;
use crate::{Error, Promise, durable, runtime, sys};

/// `flow_journal_max`: how many sends one flow's journal may hold before the
/// flow must continue as new.
pub const FLOW_JOURNAL_MAX: u64 = 10_000;

const FLOW_PREFIX: &str = "vom.f.";
const JOURNAL_PREFIX: &str = "vom.fj.";
const WAITING_PREFIX: &str = "vom.fw.";
const NEXT_FLOW_KEY: &str = "vom.fnext";
/// How many flows have not ended: none means a settlement needs no
/// vatstore read for them.
const FLOWS_COUNT_KEY: &str = "vom.fcount";

/// How a flow's body ends.
#[derive(Debug)]
pub enum FlowEnd {
    /// The flow is done: its promise is fulfilled with this.
    Done(Value),
    /// Start the body again with these arguments and an empty journal (its
    /// promise stays the same): how a long loop bounds its journal.
    ContinueAsNew(Vec<Value>),
}

/// What a flow's body returns.
pub type FlowFuture = Pin<Box<dyn Future<Output = Result<FlowEnd, Error>>>>;

/// A flow's body: from its handle and arguments, its future.
pub type FlowBody = fn(Rc<Flow>, Vec<Value>) -> FlowFuture;

#[derive(Debug, Serialize, Deserialize)]
struct FlowRecord {
    kind: String,
    args: CapData,
    resolver: Resolver,
    steps: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct JournalEntry {
    target: String,
    method: String,
    args: CapData,
    result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<(bool, CapData)>,
}

thread_local! {
    static KINDS: RefCell<HashMap<String, FlowBody>> = RefCell::new(HashMap::new());
    /// Flows whose body runs on this heap.
    static LIVE: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
    static FLOWS_PENDING: Cell<Option<u64>> = const { Cell::new(None) };
}

fn flows_pending() -> u64 {
    FLOWS_PENDING.with(|pending| match pending.get() {
        Some(count) => count,
        None => {
            let count = read::<u64>(FLOWS_COUNT_KEY).unwrap_or(0);
            pending.set(Some(count));
            count
        }
    })
}

fn add_flows_pending(delta: i64) {
    let count = flows_pending().saturating_add_signed(delta);
    FLOWS_PENDING.with(|pending| pending.set(Some(count)));
    if count == 0 {
        sys::vatstore_delete(FLOWS_COUNT_KEY);
    } else {
        write(FLOWS_COUNT_KEY, &count);
    }
}

/// How many flows' bodies run on this heap. Each is a task the journal can
/// rebuild, so it does not keep the vat awake.
pub(crate) fn live_count() -> usize {
    LIVE.with(|live| live.borrow().len())
}

/// Whether any flow is pending (its journal may wait for promises).
pub(crate) fn any_pending() -> bool {
    flows_pending() > 0
}

/// Whether a flow's journal waits for promise `vpid` (what a flow's body
/// awaits on the heap, a restart finds again).
pub(crate) fn awaits(vpid: &str) -> bool {
    flows_pending() > 0 && sys::vatstore_get(&format!("{WAITING_PREFIX}{vpid}")).is_some()
}

/// Registers the body of the flows of kind `kind`. Call it every time the
/// vat starts (as kinds are defined), before flows of that kind may resume.
pub fn define(kind: &str, body: FlowBody) {
    KINDS.with(|kinds| kinds.borrow_mut().insert(kind.to_owned(), body));
}

/// A running flow's handle: what its body sends through.
#[derive(Debug)]
pub struct Flow {
    id: u64,
    step: Cell<u64>,
}

fn flow_key(id: u64) -> String {
    format!("{FLOW_PREFIX}{id}")
}

fn journal_key(id: u64, step: u64) -> String {
    format!("{JOURNAL_PREFIX}{id}.{step:010}")
}

fn read<T: for<'de> Deserialize<'de>>(key: &str) -> Option<T> {
    sys::vatstore_get(key).map(|text| {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("vom invariant: {key} holds what vom wrote: {e}"))
    })
}

fn write<T: Serialize>(key: &str, value: &T) {
    let text = serde_json::to_string(value).expect("vom invariant: flow records serialize");
    sys::vatstore_set(key, &text);
}

/// Starts a flow of kind `kind` (see [`define`]) with `args`; returns the
/// promise of its outcome, which this vat keeps durably: a method can
/// answer with it and its caller's result settles when the flow ends,
/// across restarts.
pub fn start(kind: &str, args: Vec<Value>) -> Result<Promise, Error> {
    if !KINDS.with(|kinds| kinds.borrow().contains_key(kind)) {
        return Err(Error::new(format!("no flow kind {kind:?} is defined")));
    }
    let id = read::<u64>(NEXT_FLOW_KEY).unwrap_or(1);
    write(NEXT_FLOW_KEY, &(id + 1));
    let (promise, resolver) = crate::inflight::durable_promise();
    let args = capdata::encode(&Value::Array(args));
    durable::replace_refs(&[], &args.slots);
    let record = FlowRecord {
        kind: kind.to_owned(),
        args,
        resolver,
        steps: 0,
    };
    write(&flow_key(id), &record);
    add_flows_pending(1);
    run(id, record);
    Ok(promise)
}

/// Runs flow `id`'s body from its arguments, against its journal.
fn run(id: u64, record: FlowRecord) {
    let body = KINDS
        .with(|kinds| kinds.borrow().get(&record.kind).copied())
        .unwrap_or_else(|| {
            panic!(
                "vom invariant: flow kind {:?} is defined at start",
                record.kind
            )
        });
    let args = match capdata::decode(&record.args) {
        Ok(Value::Array(mut items)) => {
            items.iter_mut().for_each(crate::imports::hold_all);
            items
        }
        _ => panic!("vom invariant: a flow's arguments are an array"),
    };
    LIVE.with(|live| live.borrow_mut().insert(id));
    let flow = Rc::new(Flow {
        id,
        step: Cell::new(0),
    });
    let future = body(flow, args);
    runtime::spawn_detached(Box::pin(async move {
        let outcome = future.await;
        end(id, outcome);
        Ok(Value::Undefined)
    }));
}

/// The body ended: the flow settles its promise, or starts over as new.
fn end(id: u64, outcome: Result<FlowEnd, Error>) {
    LIVE.with(|live| live.borrow_mut().remove(&id));
    let Some(mut record) = read::<FlowRecord>(&flow_key(id)) else {
        return;
    };
    forget_journal(id, record.steps);
    match outcome {
        Ok(FlowEnd::ContinueAsNew(args)) => {
            let args = capdata::encode(&Value::Array(args));
            durable::replace_refs(&record.args.slots, &args.slots);
            record.args = args;
            record.steps = 0;
            write(&flow_key(id), &record);
            run(id, record);
        }
        Ok(FlowEnd::Done(value)) => finish(id, &record, record.resolver.resolve(value)),
        Err(error) => finish(id, &record, record.resolver.reject(error)),
    }
}

fn finish(id: u64, record: &FlowRecord, settled: Result<(), Error>) {
    settled.expect("vom invariant: a flow's promise is settled only when it ends");
    durable::replace_refs(&record.args.slots, &[]);
    sys::vatstore_delete(&flow_key(id));
    add_flows_pending(-1);
}

/// Deletes a journal, and what its entries kept alive.
fn forget_journal(id: u64, steps: u64) {
    for step in 0..steps {
        let key = journal_key(id, step);
        if let Some(entry) = read::<JournalEntry>(&key) {
            sys::vatstore_delete(&format!("{WAITING_PREFIX}{}", entry.result));
            drop_entry_refs(&entry);
            sys::vatstore_delete(&key);
        }
    }
}

fn drop_entry_refs(entry: &JournalEntry) {
    durable::replace_refs(&entry.args.slots, &[]);
    if let Some((_, data)) = &entry.outcome {
        durable::replace_refs(&data.slots, &[]);
    }
}

/// A settlement arrived for `vpid`: if a flow's send was waiting for it,
/// its journal keeps the outcome, and a flow no heap runs resumes.
pub(crate) fn settled(vpid: &str, outcome: &Result<Value, Value>) {
    if flows_pending() == 0 {
        return;
    }
    let waiting = format!("{WAITING_PREFIX}{vpid}");
    let Some((id, step)) = read::<(u64, u64)>(&waiting) else {
        return;
    };
    sys::vatstore_delete(&waiting);
    let key = journal_key(id, step);
    let Some(mut entry) = read::<JournalEntry>(&key) else {
        return;
    };
    let (rejected, value) = match outcome {
        Ok(value) => (false, value),
        Err(reason) => (true, reason),
    };
    let data = capdata::encode(value);
    durable::replace_refs(&[], &data.slots);
    entry.outcome = Some((rejected, data));
    write(&key, &entry);
    if !LIVE.with(|live| live.borrow().contains(&id))
        && let Some(record) = read::<FlowRecord>(&flow_key(id))
    {
        run(id, record);
    }
}

impl Flow {
    /// Sends `method(args)` to `target` as step of this flow: once, however
    /// often the flow resumes. Await it for the outcome.
    pub fn send(&self, target: &Ref, method: &str, args: Vec<Value>) -> FlowSend {
        let step = self.step.get();
        self.step.set(step + 1);
        let args = capdata::encode(&Value::Array(args));
        match read::<JournalEntry>(&journal_key(self.id, step)) {
            Some(entry) => self.replayed(step, entry, target, method, &args),
            None => self.first_send(step, target, method, args),
        }
    }

    fn replayed(
        &self,
        step: u64,
        entry: JournalEntry,
        target: &Ref,
        method: &str,
        args: &CapData,
    ) -> FlowSend {
        if entry.target != target.slot || entry.method != method || entry.args != *args {
            return FlowSend::Ready(Some(Err(Error::new(format!(
                "flow {} diverged from its journal at step {step}: it sent {}.{}, now {}.{method}",
                self.id, entry.target, entry.method, target.slot
            )))));
        }
        match entry.outcome {
            Some((rejected, data)) => FlowSend::Ready(Some(outcome_of(rejected, &data))),
            None => FlowSend::Waiting(Promise::from_ref(&Ref::new(entry.result))),
        }
    }

    fn first_send(&self, step: u64, target: &Ref, method: &str, args: CapData) -> FlowSend {
        let key = flow_key(self.id);
        let Some(mut record) = read::<FlowRecord>(&key) else {
            return FlowSend::Ready(Some(Err(Error::new("the flow has ended"))));
        };
        if record.steps >= FLOW_JOURNAL_MAX {
            return FlowSend::Ready(Some(Err(Error::new(format!(
                "flow {} made {FLOW_JOURNAL_MAX} sends (flow_journal_max): continue it as new",
                self.id
            )))));
        }
        let values = match capdata::decode(&args) {
            Ok(Value::Array(items)) => items,
            _ => unreachable!("encoded from an array just now"),
        };
        let promise = runtime::send(target, method, values);
        durable::replace_refs(&[], &args.slots);
        let entry = JournalEntry {
            target: target.slot.clone(),
            method: method.to_owned(),
            args,
            result: promise.vpid().to_owned(),
            outcome: None,
        };
        write(&journal_key(self.id, step), &entry);
        write(
            &format!("{WAITING_PREFIX}{}", entry.result),
            &(self.id, step),
        );
        record.steps = step + 1;
        write(&key, &record);
        FlowSend::Waiting(promise)
    }
}

fn outcome_of(rejected: bool, data: &CapData) -> Result<Value, Error> {
    let mut value = capdata::decode(data)
        .unwrap_or_else(|e| panic!("vom invariant: a journaled outcome decodes: {e}"));
    crate::imports::hold_all(&mut value);
    if !rejected {
        return Ok(value);
    }
    Err(match value {
        Value::Error(error) => error,
        other => Error::new(format!("rejected with {}", capdata::encode(&other).body)),
    })
}

/// A flow's send, to await.
#[derive(Debug)]
pub enum FlowSend {
    /// Its outcome is known (from the journal, or a refusal).
    Ready(Option<Result<Value, Error>>),
    /// It is in flight.
    Waiting(Promise),
}

impl Future for FlowSend {
    type Output = Result<Value, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            FlowSend::Ready(outcome) => Poll::Ready(
                outcome
                    .take()
                    .expect("vom invariant: a flow send is polled after it is ready once"),
            ),
            FlowSend::Waiting(promise) => Pin::new(promise).poll(cx),
        }
    }
}
