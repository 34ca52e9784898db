//! The IPVM job runner: runs a validated [`Job`]'s tasks as their inputs
//! become ready, and keeps receipts. Durable: a job's task states and
//! receipts live in the store, each task's outcome written in one crank with
//! its receipt, so a runner that is killed and started again on the same job
//! continues where it stopped, and never runs a finished task twice.
//!
//! A pure task is a delivery of `func(inputs)` to a fresh instance of its
//! module (a vom vat) with `maxGas` as fuel and a scratch vatstore: it can
//! answer, not act (a send is refused). Pure tasks that are ready together
//! run in parallel, on up to `Kernel::set_pure_task_threads` threads (one per
//! core by default, at most [`PURE_TASKS_PARALLEL_MAX`]). An
//! effect task is a message to a capability, through the run queue.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value as Json, json};
use vom::{CapData, Value};

use vat_supervisor::{
    Limits, SyscallHandler, SyscallRefusal, ThreadWorker, VatFault, VatModule, WasmHost, Worker,
};
use vom::abi::{Delivery, Syscall, SyscallResult};

use kernel::{Kernel, KernelError, Kref, Namespace, PromiseState};

use crate::outcome::{decode_output, rejection};
use crate::{self as ipvm, Input, Job, JobContext, ReceiptOut, TaskKind};

/// Values, receipts and memos: `ipvm.value.<cid>`, `ipvm.receipt.<cid>`,
/// `ipvm.memo.<instruction cid>`.
const IPVM: Namespace = Namespace::new("ipvm");
/// Submitted jobs and their tasks' states: `job.<cid>`, `job.<cid>.t.<label>`.
const JOB: Namespace = Namespace::new("job");

/// The most pure tasks that run at once (also bounded by the machine's cores).
pub const PURE_TASKS_PARALLEL_MAX: usize = 16;

/// A pure task ready to run.
struct PureRun {
    label: String,
    instruction: String,
    module: VatModule,
    func: String,
    args: CapData,
    fuel_max: u64,
}

/// Answers a pure task's syscalls: its vatstore is a scratch map, its only
/// effect is answering (resolving its result promise, `p-1`).
#[derive(Default)]
struct PureHandler {
    vatstore: BTreeMap<String, String>,
    answer: Option<(bool, CapData)>,
}

const PURE_RESULT: &str = "p-1";

impl SyscallHandler for PureHandler {
    fn syscall(&mut self, call: Syscall) -> Result<SyscallResult, SyscallRefusal> {
        match call {
            Syscall::VatstoreGet { key } => Ok(self.vatstore.get(&key).cloned()),
            Syscall::VatstoreSet { key, value } => {
                self.vatstore.insert(key, value);
                Ok(None)
            }
            Syscall::VatstoreDelete { key } => {
                self.vatstore.remove(&key);
                Ok(None)
            }
            Syscall::VatstoreGetNextKey { key } => Ok(self
                .vatstore
                .range::<String, _>((std::ops::Bound::Excluded(&key), std::ops::Bound::Unbounded))
                .next()
                .map(|(k, _)| k.clone())),
            Syscall::VatstoreGetPrevKey { key } => Ok(self
                .vatstore
                .range::<String, _>((std::ops::Bound::Unbounded, std::ops::Bound::Excluded(&key)))
                .next_back()
                .map(|(k, _)| k.clone())),
            Syscall::Resolve { resolutions } => {
                for resolution in resolutions {
                    if resolution.promise != PURE_RESULT || self.answer.is_some() {
                        return Err(SyscallRefusal::Illegal(format!(
                            "a pure task may only answer once ({} is not its result)",
                            resolution.promise
                        )));
                    }
                    self.answer = Some((resolution.rejected, resolution.data));
                }
                Ok(None)
            }
            Syscall::DropImports { .. }
            | Syscall::RetireImports { .. }
            | Syscall::RetireExports { .. }
            | Syscall::Log { .. }
            | Syscall::Heap { .. } => Ok(None),
            Syscall::Send { .. }
            | Syscall::Subscribe { .. }
            | Syscall::Exit { .. }
            | Syscall::KeepDecided { .. } => Err(SyscallRefusal::Illegal(
                "a pure task may not send messages or await anything".to_owned(),
            )),
        }
    }
}

/// A pure task's outcome and the fuel it used.
type PureOutcome = (ReceiptOut, Option<u64>);

/// Runs one pure task to its answer.
fn run_pure(host: &WasmHost, run: &PureRun) -> PureOutcome {
    let limits = Limits {
        fuel_per_delivery: run.fuel_max,
        ..Limits::default()
    };
    let mut worker = match ThreadWorker::start(host, &run.module, limits) {
        Ok(worker) => worker,
        Err(e) => return (Err(e.to_string()), None),
    };
    let mut handler = PureHandler::default();
    if let Err(fault) = worker.deliver(&Delivery::start_vat(), &mut handler) {
        return (
            Err(format!("the module failed to start: {fault}")),
            worker.fuel_used(),
        );
    }
    let message = Delivery::Message {
        target: vom::runtime::ROOT_VREF.to_owned(),
        method: run.func.clone(),
        args: run.args.clone(),
        result: Some(PURE_RESULT.to_owned()),
    };
    let delivered = worker.deliver(&message, &mut handler);
    // A task that ran out of fuel used all it had, whether or not the
    // worker could count it.
    let out_of_fuel = matches!(delivered, Err(VatFault::OutOfFuel { .. }));
    let fuel = worker
        .fuel_used()
        .or_else(|| out_of_fuel.then_some(run.fuel_max));
    let outcome = match (delivered, handler.answer) {
        (Err(fault), _) => Err(fault.to_string()),
        (Ok(()), Some((false, data))) => decode_output(&data),
        (Ok(()), Some((true, data))) => Err(rejection(&data)),
        (Ok(()), None) => Err(format!("{} did not answer within its delivery", run.func)),
    };
    (outcome, fuel)
}

/// What happened to a task, as the runner reports it while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    Started {
        label: String,
    },
    /// A pure task whose receipt existed: not run again.
    Memoized {
        label: String,
        ok: bool,
    },
    Finished {
        label: String,
        ok: bool,
        fuel: Option<u64>,
    },
    Skipped {
        label: String,
    },
}

/// When a handler task runs, as its parent finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Error,
    Success,
    Always,
}

/// The tasks that name `label` as a handler (`onError`, `on.error`,
/// `on.success`, `always`), each with when it runs.
fn handler_parents<'a>(job: &'a ipvm::Job, label: &str) -> Vec<(&'a str, When)> {
    let label = label.to_owned();
    job.tasks
        .values()
        .filter_map(|parent| {
            let when = if parent.always.contains(&label) {
                When::Always
            } else if parent.on_error.contains(&label) {
                When::Error
            } else if parent.on_success.contains(&label) {
                When::Success
            } else {
                return None;
            };
            Some((parent.label.as_str(), when))
        })
        .collect()
}

/// A task's final state.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Ok(Json),
    Error(String),
    Skipped,
}

fn task_key(job: &str, label: &str) -> String {
    format!("{job}.t.{label}")
}

fn value_key(cid: &str) -> String {
    format!("value.{cid}")
}

fn receipt_key(cid: &str) -> String {
    format!("receipt.{cid}")
}

fn memo_key(instruction: &str) -> String {
    format!("memo.{instruction}")
}

/// What goes wrong running a job.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Store(#[from] swingstore::StoreError),
    #[error("no capability is named {0:?}")]
    UnknownCapability(String),
    #[error("job {0} cannot finish: its tasks' messages did not settle")]
    Unsettled(String),
}

struct StoreContext<'a> {
    kernel: &'a Kernel,
    owner: String,
}

impl JobContext for StoreContext<'_> {
    fn has_module(&self, cid: &str) -> bool {
        self.kernel.has_bundle(cid)
    }

    fn has_value(&self, cid: &str) -> bool {
        matches!(self.kernel.record(IPVM, &value_key(cid)), Ok(Some(_)))
    }

    fn owner(&self) -> String {
        self.owner.clone()
    }

    fn has_capability(&self, pet_name: &str) -> bool {
        matches!(self.kernel.pet_name(pet_name), Ok(Some(_)))
    }
}

/// IPVM jobs on a kernel: values to name as inputs, validation, the
/// runner, and what each job's tasks did.
#[derive(Debug)]
pub struct Jobs<'k> {
    kernel: &'k mut Kernel,
    pure_task_threads: usize,
}

impl<'k> Jobs<'k> {
    /// Jobs on `kernel`, running up to one pure task per core at once.
    pub fn new(kernel: &'k mut Kernel) -> Jobs<'k> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Jobs {
            kernel,
            pure_task_threads: cores.min(PURE_TASKS_PARALLEL_MAX),
        }
    }

    /// How many pure tasks may run at once (at least 1; at most
    /// [`PURE_TASKS_PARALLEL_MAX`]).
    pub fn with_pure_task_threads(mut self, threads: usize) -> Jobs<'k> {
        self.pure_task_threads = threads.clamp(1, PURE_TASKS_PARALLEL_MAX);
        self
    }

    /// Stores a value and returns its CID (DAG-CBOR, sha2-256).
    pub fn add_value(&mut self, value: &Json) -> Result<String, RunError> {
        let cid = ipvm::value_cid(value);
        self.kernel
            .set_record(IPVM, &value_key(&cid), &value.to_string())?;
        self.kernel.commit()?;
        Ok(cid)
    }

    /// Parses and validates a job against this kernel (its modules, values,
    /// capabilities, and its owner `owner`).
    pub fn validate(&self, json: Json, owner: &str) -> Result<Job, ipvm::JobError> {
        let context = StoreContext {
            kernel: self.kernel,
            owner: owner.to_owned(),
        };
        Job::parse(json, &context)
    }

    /// Each task's state, by label, or `None` for a job never run here.
    pub fn status(&self, job: &str) -> Result<Option<Vec<(String, String)>>, RunError> {
        if self.kernel.record(JOB, job)?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.kernel.records_under(JOB, &format!("{job}.t."))?))
    }

    /// The receipts of a job's finished tasks, by label.
    pub fn receipts(&self, job: &str) -> Result<Vec<(String, Json)>, RunError> {
        let mut receipts = Vec::new();
        for (label, state) in self.status(job)?.unwrap_or_default() {
            if let Some(cid) = state
                .strip_prefix("ok ")
                .or_else(|| state.strip_prefix("error "))
                && let Some(text) = self.kernel.record(IPVM, &receipt_key(cid))?
            {
                let receipt: Json = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("ipvm invariant: receipt {cid} is JSON: {e}"));
                receipts.push((label, receipt));
            }
        }
        Ok(receipts)
    }

    /// Runs `job` to the end (or continues it, if it ran here before), and
    /// returns each task's outcome. `sign` signs receipts as `issuer`.
    pub fn run(
        &mut self,
        job: &Job,
        issuer: &str,
        sign: &dyn Fn(&[u8]) -> [u8; 64],
        progress: &mut dyn FnMut(JobEvent),
    ) -> Result<BTreeMap<String, TaskOutcome>, RunError> {
        let id = job.cid.clone();
        if self.kernel.record(JOB, &id)?.is_none() {
            self.kernel.set_record(JOB, &id, &job.json.to_string())?;
            for label in job.tasks.keys() {
                self.kernel
                    .set_record(JOB, &task_key(&id, label), "pending")?;
            }
            self.kernel.commit()?;
        }
        let mut runner = Runner {
            kernel: self.kernel,
            pure_task_threads: self.pure_task_threads,
            job,
            issuer,
            sign,
            progress,
            outcomes: BTreeMap::new(),
            pending: BTreeSet::new(),
            running: BTreeMap::new(),
        };
        runner.load()?;
        let outcomes = runner.run()?;
        self.kernel.commit()?;
        Ok(outcomes)
    }
}

/// Drives one job. Task states are read from the store once, then kept in
/// memory as well as written, so each step costs what it changes.
struct Runner<'a> {
    kernel: &'a mut Kernel,
    pure_task_threads: usize,
    job: &'a Job,
    issuer: &'a str,
    sign: &'a dyn Fn(&[u8]) -> [u8; 64],
    progress: &'a mut dyn FnMut(JobEvent),
    outcomes: BTreeMap<String, TaskOutcome>,
    pending: BTreeSet<String>,
    /// Label -> (result promise, instruction CID or `-` for an effect).
    running: BTreeMap<String, (Kref, String)>,
}

impl Runner<'_> {
    fn receipt(&self, cid: &str) -> Result<Json, RunError> {
        let text = self
            .kernel
            .record(IPVM, &receipt_key(cid))?
            .unwrap_or_else(|| panic!("ipvm invariant: receipt {cid} is stored"));
        Ok(serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("ipvm invariant: receipt {cid} is JSON: {e}")))
    }

    fn receipt_outcome(&self, cid: &str) -> Result<TaskOutcome, RunError> {
        let receipt = self.receipt(cid)?;
        Ok(match &receipt["out"] {
            out if out.get("ok").is_some() => TaskOutcome::Ok(out["ok"].clone()),
            out => TaskOutcome::Error(out["error"].as_str().unwrap_or("failed").to_owned()),
        })
    }

    /// Reads every task's state once.
    fn load(&mut self) -> Result<(), RunError> {
        for label in self.job.tasks.keys() {
            let state = self
                .kernel
                .record(JOB, &task_key(&self.job.cid, label))?
                .unwrap_or_else(|| panic!("ipvm invariant: job task {label} has a state"));
            if state == "pending" {
                self.pending.insert(label.clone());
            } else if state == "skipped" {
                self.outcomes.insert(label.clone(), TaskOutcome::Skipped);
            } else if let Some(rest) = state.strip_prefix("running ") {
                let (kpid, instruction) = rest.split_once(' ').unwrap_or_else(|| {
                    panic!("ipvm invariant: running state is 'running kpid cid'")
                });
                let kpid = Kref::parse(kpid)
                    .unwrap_or_else(|| panic!("ipvm invariant: a running task names a kref"));
                self.running
                    .insert(label.clone(), (kpid, instruction.to_owned()));
            } else if let Some(cid) = state
                .strip_prefix("ok ")
                .or_else(|| state.strip_prefix("error "))
            {
                let outcome = self.receipt_outcome(cid)?;
                self.outcomes.insert(label.clone(), outcome);
            } else {
                panic!("ipvm invariant: job task {label} has a known state ({state})");
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<BTreeMap<String, TaskOutcome>, RunError> {
        loop {
            if self.outcomes.len() == self.job.tasks.len() {
                return Ok(self.outcomes.clone());
            }
            let mut moved = false;
            let mut batch = Vec::new();
            let pending: Vec<String> = self.pending.iter().cloned().collect();
            for label in pending {
                let task = &self.job.tasks[&label];
                let parents = handler_parents(self.job, &label);
                let waiting = task
                    .depends_on()
                    .chain(parents.iter().map(|(p, _)| *p))
                    .any(|dependency| !self.outcomes.contains_key(dependency));
                if waiting {
                    continue;
                }
                moved = true;
                if !parents.is_empty() {
                    let triggered = parents.iter().any(|(parent, when)| {
                        let ok = matches!(self.outcomes.get(*parent), Some(TaskOutcome::Ok(_)));
                        match when {
                            When::Always => true,
                            When::Error => !ok,
                            When::Success => ok,
                        }
                    });
                    if !triggered {
                        self.finish_skipped(&label)?;
                        continue;
                    }
                }
                match self.inputs(task) {
                    Ok(inputs) => {
                        if let Some(run) = self.start(task, inputs)? {
                            batch.push(run);
                        }
                    }
                    Err(reason) => self.finish(&label, "-", Err(reason), None, false, None)?,
                }
            }
            if !batch.is_empty() {
                self.run_batch(std::mem::take(&mut batch))?;
                moved = true;
            }
            if self.collect_running()? {
                moved = true;
            }
            if !moved {
                // Work is in flight: run what the kernel has queued (every
                // started task, as far as it goes), then collect outcomes.
                crate::outcome::run_until_quiet(self.kernel)?;
                if !self.collect_running()? {
                    return Err(RunError::Unsettled(self.job.cid.clone()));
                }
            }
        }
    }

    /// The task's arguments, or why it cannot run (an input that failed).
    fn inputs(&self, task: &ipvm::Task) -> Result<Vec<Json>, String> {
        task.inputs
            .iter()
            .map(|input| match input {
                Input::Literal(value) => Ok(value.clone()),
                Input::Link(cid) => {
                    let text = self
                        .kernel
                        .record(IPVM, &value_key(cid))
                        .ok()
                        .flatten()
                        .ok_or_else(|| format!("value {cid} is gone"))?;
                    serde_json::from_str(&text).map_err(|e| format!("value {cid}: {e}"))
                }
                Input::From { label, out } => match self.outcomes.get(label) {
                    Some(TaskOutcome::Ok(value)) => match (out, value) {
                        (0, _) => Ok(value.clone()),
                        (i, Json::Array(items)) => items
                            .get(*i)
                            .cloned()
                            .ok_or_else(|| format!("task {label} has no output {i}")),
                        (i, _) => Err(format!("task {label} has no output {i}")),
                    },
                    _ => Err(format!("input from task {label} failed")),
                },
            })
            .collect()
    }

    /// Starts a task: a memo hit finishes it at once; a pure task is
    /// returned to run (with the others ready now); an effect's message is
    /// queued (its state is committed with the next commit: a task lost before
    /// then had not run, and starts again).
    fn start(&mut self, task: &ipvm::Task, inputs: Vec<Json>) -> Result<Option<PureRun>, RunError> {
        let label = task.label.clone();
        // Named inputs (the seeds' form) are one record argument.
        let inputs = match &task.input_names {
            Some(names) => vec![Json::Object(names.iter().cloned().zip(inputs).collect())],
            None => inputs,
        };
        let args = vom::capdata::encode(&Value::Array(
            inputs.iter().map(ipvm::json_to_value).collect(),
        ));
        match &task.kind {
            TaskKind::Wasm {
                module,
                func,
                max_gas,
            } => {
                let instruction = ipvm::value_cid(&json!({
                    "with": module, "func": func, "input": inputs, "maxGas": max_gas
                }));
                let memo = self.kernel.record(IPVM, &memo_key(&instruction))?;
                if let Some(receipt) = memo {
                    let outcome = self.receipt_outcome(&receipt)?;
                    let ok = matches!(outcome, TaskOutcome::Ok(_));
                    let state = format!("{} {receipt}", if ok { "ok" } else { "error" });
                    self.kernel
                        .set_record(JOB, &task_key(&self.job.cid, &label), &state)?;
                    self.pending.remove(&label);
                    self.outcomes.insert(label.clone(), outcome);
                    (self.progress)(JobEvent::Memoized { label, ok });
                    return Ok(None);
                }
                let (_, compiled) = self.kernel.compiled(module)?;
                Ok(Some(PureRun {
                    label,
                    instruction,
                    module: compiled,
                    func: func.clone(),
                    args,
                    fuel_max: max_gas.saturating_mul(ipvm::FUEL_PER_GAS),
                }))
            }
            TaskKind::Effect { target, method } => {
                let kref = self
                    .kernel
                    .pet_name(target)?
                    .ok_or_else(|| RunError::UnknownCapability(target.clone()))?;
                let kpid = self.kernel.queue_message(&kref, method, args)?;
                self.kernel.set_record(
                    JOB,
                    &task_key(&self.job.cid, &label),
                    &format!("running {kpid} -"),
                )?;
                self.pending.remove(&label);
                self.running.insert(label.clone(), (kpid, "-".to_owned()));
                (self.progress)(JobEvent::Started { label });
                Ok(None)
            }
        }
    }

    /// Runs ready pure tasks in parallel, then records each outcome.
    fn run_batch(&mut self, batch: Vec<PureRun>) -> Result<(), RunError> {
        for run in &batch {
            (self.progress)(JobEvent::Started {
                label: run.label.clone(),
            });
        }
        let threads = self.pure_task_threads.min(batch.len()).max(1);
        let (host, _) = match batch.first() {
            Some(first) => self
                .kernel
                .compiled(&module_cid_of(self.job, &first.label))?,
            None => return Ok(()),
        };
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut results: Vec<Option<PureOutcome>> = (0..batch.len()).map(|_| None).collect();
        let slots: Vec<std::sync::Mutex<&mut Option<_>>> =
            results.iter_mut().map(std::sync::Mutex::new).collect();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(run) = batch.get(index) else { break };
                        let result = run_pure(host, run);
                        **slots[index].lock().expect("result slot") = Some(result);
                    }
                });
            }
        });
        drop(slots);
        for (run, result) in batch.iter().zip(results) {
            let (outcome, fuel) = result.expect("kernel invariant: every pure task ran");
            self.finish(&run.label, &run.instruction, outcome, fuel, true, None)?;
        }
        Ok(())
    }

    /// Writes receipts for running tasks whose promise settled. Returns
    /// whether any did.
    fn collect_running(&mut self) -> Result<bool, RunError> {
        let mut any = false;
        let running: Vec<(String, (Kref, String))> = self
            .running
            .iter()
            .map(|(l, r)| (l.clone(), r.clone()))
            .collect();
        for (label, (kpid, instruction)) in running {
            let outcome = match self.kernel.promise_state(&kpid)? {
                Some(PromiseState::Fulfilled(data)) => decode_output(&data),
                Some(PromiseState::Rejected(data)) => Err(rejection(&data)),
                Some(PromiseState::Unresolved) => continue,
                None => Err("the task's result promise is gone".to_owned()),
            };
            // Effects run as messages: their fuel is the capability's business.
            self.finish(&label, &instruction, outcome, None, false, Some(&kpid))?;
            any = true;
        }
        Ok(any)
    }

    /// Records a task's outcome: its signed receipt, the memo (for pure
    /// tasks) and its state, in one crank, then commits (letting go of the
    /// task's result promise in the same commit).
    fn finish(
        &mut self,
        label: &str,
        instruction: &str,
        outcome: ReceiptOut,
        fuel: Option<u64>,
        pure: bool,
        kpid: Option<&Kref>,
    ) -> Result<(), RunError> {
        let ok = outcome.is_ok();
        let body = ipvm::receipt_body(instruction, &outcome, fuel, self.issuer);
        let signature = (self.sign)(&ipvm::dag_cbor(&body));
        let mut receipt = body;
        receipt["sig"] = Json::from(ipvm::encode_signature(&signature));
        let cid = ipvm::value_cid(&receipt);
        let task = task_key(&self.job.cid, label);
        self.kernel.in_crank(|kernel| {
            kernel.set_record(IPVM, &receipt_key(&cid), &receipt.to_string())?;
            if pure {
                kernel.set_record(IPVM, &memo_key(instruction), &cid)?;
            }
            let outcome = if ok { "ok" } else { "error" };
            kernel.set_record(JOB, &task, &format!("{outcome} {cid}"))
        })?;
        if let Some(kpid) = kpid {
            self.kernel.release(kpid)?;
        }
        self.kernel.commit()?;
        self.pending.remove(label);
        self.running.remove(label);
        self.outcomes.insert(
            label.to_owned(),
            match outcome {
                Ok(value) => TaskOutcome::Ok(value),
                Err(reason) => TaskOutcome::Error(reason),
            },
        );
        (self.progress)(JobEvent::Finished {
            label: label.to_owned(),
            ok,
            fuel,
        });
        Ok(())
    }

    fn finish_skipped(&mut self, label: &str) -> Result<(), RunError> {
        self.kernel
            .set_record(JOB, &task_key(&self.job.cid, label), "skipped")?;
        self.pending.remove(label);
        self.outcomes.insert(label.to_owned(), TaskOutcome::Skipped);
        (self.progress)(JobEvent::Skipped {
            label: label.to_owned(),
        });
        Ok(())
    }
}

/// The module CID of pure task `label`.
fn module_cid_of(job: &Job, label: &str) -> String {
    match &job.tasks[label].kind {
        TaskKind::Wasm { module, .. } => module.clone(),
        TaskKind::Effect { .. } => unreachable!("only pure tasks are batched"),
    }
}
