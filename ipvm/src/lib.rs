//! IPVM jobs: signed, content-addressed workflows of Wasm tasks, run as
//! messages to vats.
//!
//! A job (`{type: "ipvm/job", version: "0.1.0", requestor, nonce, run:
//! {label: task}, signature}`) is parsed and validated whole before anything
//! runs: labels, CIDs, acyclicity (a cycle is named), each task's shape, the
//! requestor's signature over the job's canonical DAG-CBOR encoding, and the
//! requestor's authority. Then the runner (`jobs.rs`) runs each task:
//! a pure task (`ipvm/wasm`) as a delivery of `func(inputs)` to a fresh
//! instance of the module its CID names, with `maxGas` as its fuel; an
//! effect task (`ipvm/effect`) as a message to a capability the kernel's
//! owner named. An input `{from: label}` waits
//! for that task's output. A finished task gets a receipt (`{ran, out, fuel}`,
//! signed by the kernel) kept in the store, written in one crank with the
//! task's new state; a pure task whose receipt exists is not run again.
//!
//! The API boundary: [`Job`] (parse and validate), [`Jobs`] (values, the
//! runner, status and receipts, on a [`kernel::Kernel`]), and the signing
//! helpers the CLI uses to sign a job. A job's authority is UCAN 1.0 (the
//! `ucan` crate): its `prf` holds delegations from the kernel's owner.
//!
//! # Store layout
//!
//! | key | value |
//! |---|---|
//! | `ipvm.value.<cid>` | a value (JSON), addressed by the CID of its DAG-CBOR encoding |
//! | `ipvm.receipt.<cid>` | a receipt (JSON), by its own CID |
//! | `ipvm.memo.<instruction cid>` | the receipt CID of a pure task already run |
//! | `job.<cid>` | a submitted job (its signed JSON) |
//! | `job.<cid>.t.<label>` | `pending`, `running <kpid>`, `ok <receipt>`, `error <receipt>` |
//!
//! The bucket VM's records (`ipvm.block.*`, `ipvm.car.*`, `ipvm.ran.*`)
//! are listed in `bucket.rs`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use cid::Cid;
use serde_json::{Value as Json, json};
use vom::Value;

mod bucket;
mod car;
mod content;
mod outcome;
mod runner;

pub use content::{dag_cbor, encode_signature, signing_bytes, value_cid, verify};

pub use bucket::{Bucket, BucketError, Enqueued};
pub use car::{
    CAR_BLOCKS_MAX, CAR_BYTES_MAX, Car, CarError, car_cid, read as read_car, write as write_car,
};
pub use runner::{JobEvent, Jobs, PURE_TASKS_PARALLEL_MAX, RunError, TaskOutcome};

/// The most tasks a job may have.
pub const JOB_TASKS_MAX: usize = 1000;
/// The most inputs a task may have.
pub const TASK_INPUTS_MAX: usize = 64;
/// The gas a pure task gets when it names no `maxGas`: seed 002's default.
pub const MAX_GAS_DEFAULT: u64 = 1000;
/// The largest `maxGas` a task may ask for.
pub const MAX_GAS_LIMIT: u64 = 100_000_000;
/// Wasm fuel (about one instruction) per unit of gas: a gas is a thousand
/// instructions, so the seed's default of 1000 gas runs a small task.
pub const FUEL_PER_GAS: u64 = 1000;

/// Why a job was refused before anything ran. Each names what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("malformed job: {0}")]
    Malformed(String),
    #[error("malformed task {label:?}: {reason}")]
    MalformedTask { label: String, reason: String },
    #[error("task {task:?} names unknown label {label:?}")]
    UnknownLabel { task: String, label: String },
    #[error("task {task:?} names unknown CID {cid}")]
    UnknownCid { task: String, cid: String },
    #[error("the job has a cycle: {0}")]
    Cycle(String),
    #[error("the job is not signed (sign it with `vat job sign`)")]
    Unsigned,
    #[error("bad signature: {0}")]
    BadSignature(did_key::DidKeyError),
    #[error("bad signature: it is not a string")]
    SignatureNotString,
    #[error("requestor {requestor} may not run jobs here: {reason}")]
    Unauthorized { requestor: String, reason: String },
    #[error("task {task:?}: effect on {target:?}, which the requestor was not granted")]
    NotGranted { task: String, target: String },
}

/// A task's input.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Literal(Json),
    /// A stored value, by CID (`{"/": cid}`).
    Link(String),
    /// Output `out` of task `label`.
    From {
        label: String,
        out: usize,
    },
}

/// What a task does.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// Call `func` of the Wasm module `module` (a vom vat) with `max_gas`
    /// gas (`max_gas` × [`FUEL_PER_GAS`] fuel).
    Wasm {
        module: String,
        func: String,
        max_gas: u64,
    },
    /// Send `method` to capability `target` (a pet name).
    Effect { target: String, method: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub label: String,
    pub kind: TaskKind,
    pub inputs: Vec<Input>,
    /// The inputs' names, when they are named (the seeds' `[{name: value}]`):
    /// the function then gets one record of them.
    pub input_names: Option<Vec<String>>,
    /// Tasks to run if this one fails (`onError`, `on.error`).
    pub on_error: Vec<String>,
    /// Tasks to run if this one succeeds (`on.success`).
    pub on_success: Vec<String>,
    /// Tasks to run once this one finishes, either way.
    pub always: Vec<String>,
}

impl Task {
    /// The labels this task waits for: its `from` inputs.
    pub fn depends_on(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().filter_map(|input| match input {
            Input::From { label, .. } => Some(label.as_str()),
            _ => None,
        })
    }
}

/// A parsed, validated job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The CID of the signed job's DAG-CBOR encoding: its id.
    pub cid: String,
    pub requestor: String,
    pub tasks: BTreeMap<String, Task>,
    /// The job as submitted (signed).
    pub json: Json,
}

fn malformed_task(label: &str, reason: impl Into<String>) -> JobError {
    JobError::MalformedTask {
        label: label.to_owned(),
        reason: reason.into(),
    }
}

/// The labels listed at `pointer` (`/onError`, `/on/error`, ...).
fn labels(label: &str, task: &Json, pointer: &str) -> Result<Vec<String>, JobError> {
    let field = pointer.trim_start_matches('/').replace('/', ".");
    match task.pointer(pointer) {
        None => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| malformed_task(label, format!("{field} lists labels")))
            })
            .collect(),
        Some(_) => Err(malformed_task(
            label,
            format!("{field} must be a list of labels"),
        )),
    }
}

/// An input value: `{from, out}`, a link (`{"/": cid}`, or a string that
/// is a CID), or a literal.
fn parse_input(label: &str, input: &Json) -> Result<Input, JobError> {
    if let Some(map) = input.as_object() {
        if let Some(from) = map.get("from") {
            let from = from
                .as_str()
                .ok_or_else(|| malformed_task(label, "from names a label"))?;
            let out = match map.get("out") {
                None => 0,
                Some(out) => out
                    .as_u64()
                    .ok_or_else(|| malformed_task(label, "out is a natural number"))?
                    as usize,
            };
            if map.len() > 2 || (map.len() == 2 && !map.contains_key("out")) {
                return Err(malformed_task(label, "a from input is {from, out}"));
            }
            return Ok(Input::From {
                label: from.to_owned(),
                out,
            });
        }
        if let (Some(Json::String(cid)), 1) = (map.get("/"), map.len()) {
            return Ok(Input::Link(cid.clone()));
        }
    }
    if let Json::String(text) = input
        && text.len() >= CID_TEXT_BYTES_MIN
        && Cid::try_from(text.as_str()).is_ok()
    {
        return Ok(Input::Link(text.clone()));
    }
    Ok(Input::Literal(input.clone()))
}

/// The shortest string read as a CID (a CIDv0 is 46 characters).
const CID_TEXT_BYTES_MIN: usize = 46;

/// A named input, as the seeds write them: a map of one key that is not
/// `from` or `/` (which are positional inputs' forms).
fn input_name(input: &Json) -> Option<(&str, &Json)> {
    let map = input.as_object()?;
    let (name, value) = map.iter().next()?;
    (map.len() == 1 && name != "from" && name != "/").then_some((name.as_str(), value))
}

/// A task's inputs: all named (`[{name: value}, ...]`) or all positional.
fn parse_inputs(
    label: &str,
    items: &[Json],
) -> Result<(Vec<Input>, Option<Vec<String>>), JobError> {
    if items.len() > TASK_INPUTS_MAX {
        return Err(malformed_task(
            label,
            format!("more than TASK_INPUTS_MAX ({TASK_INPUTS_MAX}) inputs"),
        ));
    }
    let named: Vec<(&str, &Json)> = items.iter().filter_map(input_name).collect();
    if named.is_empty() || items.is_empty() {
        let inputs = items
            .iter()
            .map(|input| parse_input(label, input))
            .collect::<Result<_, _>>()?;
        return Ok((inputs, None));
    }
    if named.len() != items.len() {
        return Err(malformed_task(
            label,
            "inputs are all named ({name: value}) or all positional",
        ));
    }
    let mut names = BTreeSet::new();
    if let Some((name, _)) = named.iter().find(|(name, _)| !names.insert(*name)) {
        return Err(malformed_task(
            label,
            format!("input {name:?} is named twice"),
        ));
    }
    let inputs = named
        .iter()
        .map(|(_, value)| parse_input(label, value))
        .collect::<Result<_, _>>()?;
    Ok((
        inputs,
        Some(named.iter().map(|(name, _)| (*name).to_owned()).collect()),
    ))
}

fn parse_max_gas(label: &str, map: &serde_json::Map<String, Json>) -> Result<u64, JobError> {
    match map.get("maxGas") {
        None => Ok(MAX_GAS_DEFAULT),
        Some(gas) => gas
            .as_u64()
            .filter(|gas| (1..=MAX_GAS_LIMIT).contains(gas))
            .ok_or_else(|| {
                malformed_task(
                    label,
                    format!(
                        "maxGas must be a natural number from 1 to MAX_GAS_LIMIT ({MAX_GAS_LIMIT})"
                    ),
                )
            }),
    }
}

fn parse_task(label: &str, task: &Json) -> Result<Task, JobError> {
    let map = task
        .as_object()
        .ok_or_else(|| malformed_task(label, "a task is an object"))?;
    let string = |field: &str| -> Result<String, JobError> {
        map.get(field)
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed_task(label, format!("{field} is missing or not a string")))
    };
    let (inputs, input_names) = match map.get("input") {
        None => (Vec::new(), None),
        Some(Json::Array(items)) => parse_inputs(label, items)?,
        Some(_) => return Err(malformed_task(label, "input must be a list")),
    };
    let kind = match string("type")?.as_str() {
        "ipvm/wasm" | "ipvm/wasm/1.0" | "wasm/1.0" => {
            let module = string("with")?;
            Cid::try_from(module.as_str())
                .map_err(|e| malformed_task(label, format!("with is not a CID: {e}")))?;
            // Without `func`, the task's label names the function, as the
            // seeds' `fullName({...})[0].count()` reads.
            let func = match map.get("func") {
                None => label.to_owned(),
                Some(_) => string("func")?,
            };
            TaskKind::Wasm {
                module,
                func,
                max_gas: parse_max_gas(label, map)?,
            }
        }
        "ipvm/effect" => TaskKind::Effect {
            target: string("with")?,
            method: string("do")?,
        },
        other => {
            return Err(malformed_task(
                label,
                format!(
                    "unknown task type {other:?} (ipvm/wasm, ipvm/wasm/1.0, wasm/1.0 or ipvm/effect)"
                ),
            ));
        }
    };
    if map.get("on").is_some_and(|on| !on.is_object()) {
        return Err(malformed_task(
            label,
            "on must be {error: [labels], success: [labels]}",
        ));
    }
    let mut on_error = labels(label, task, "/onError")?;
    on_error.extend(labels(label, task, "/on/error")?);
    Ok(Task {
        label: label.to_owned(),
        kind,
        inputs,
        input_names,
        on_error,
        on_success: labels(label, task, "/on/success")?,
        always: labels(label, task, "/always")?,
    })
}

/// Finds a cycle through the tasks' dependencies (`from`, and the edges to
/// `onError`/`always` tasks, which run after their task) and names it.
fn find_cycle(tasks: &BTreeMap<String, Task>) -> Option<String> {
    // Edges point from a task to what must finish before it.
    let mut before: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for task in tasks.values() {
        let entry = before.entry(&task.label).or_default();
        entry.extend(task.depends_on());
        for next in task
            .on_error
            .iter()
            .chain(&task.on_success)
            .chain(&task.always)
        {
            before.entry(next).or_default().insert(&task.label);
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        label: &'a str,
        before: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<String> {
        match marks.get(label) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|l| *l == label).unwrap_or(0);
                let mut cycle: Vec<&str> = path[start..].to_vec();
                cycle.push(label);
                return Some(cycle.join(" -> "));
            }
            None => {}
        }
        marks.insert(label, Mark::Visiting);
        path.push(label);
        for dependency in before.get(label).into_iter().flatten() {
            if let Some(cycle) = visit(dependency, before, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(label, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for label in before.keys() {
        if let Some(cycle) = visit(label, &before, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// What validation needs to know of the kernel: stored modules and values,
/// the owner's identity and capabilities.
pub trait JobContext {
    fn has_module(&self, cid: &str) -> bool;
    fn has_value(&self, cid: &str) -> bool;
    fn owner(&self) -> String;
    fn has_capability(&self, pet_name: &str) -> bool;
}

impl Job {
    /// Parses and validates a job: nothing runs unless all of it is sound.
    pub fn parse(json: Json, context: &dyn JobContext) -> Result<Job, JobError> {
        let map = json
            .as_object()
            .ok_or_else(|| JobError::Malformed("a job is a JSON object".into()))?;
        let requestor = parse_header(map)?;
        let tasks = parse_tasks(map)?;
        for task in tasks.values() {
            check_names(task, &tasks, context)?;
        }
        if let Some(cycle) = find_cycle(&tasks) {
            return Err(JobError::Cycle(cycle));
        }
        let signature = match map.get("signature") {
            None => return Err(JobError::Unsigned),
            Some(Json::String(signature)) => signature,
            Some(_) => return Err(JobError::SignatureNotString),
        };
        verify(&requestor, &signing_bytes(&json), signature).map_err(JobError::BadSignature)?;
        let proofs = proofs(map)?;
        for task in tasks.values() {
            check_granted(task, &requestor, &proofs, context)?;
        }
        Ok(Job {
            cid: value_cid(&json),
            requestor,
            tasks,
            json,
        })
    }
}

/// Checks a job's type, version and nonce; returns its requestor.
fn parse_header(map: &serde_json::Map<String, Json>) -> Result<String, JobError> {
    let field = |name: &str| -> Result<&str, JobError> {
        map.get(name)
            .and_then(Json::as_str)
            .ok_or_else(|| JobError::Malformed(format!("{name} is missing or not a string")))
    };
    if field("type")? != "ipvm/job" {
        return Err(JobError::Malformed("type must be \"ipvm/job\"".into()));
    }
    if field("version")? != "0.1.0" {
        return Err(JobError::Malformed("version must be \"0.1.0\"".into()));
    }
    let requestor = field("requestor")?.to_owned();
    did_key::DidKey::parse(&requestor).map_err(|e| JobError::Malformed(e.to_string()))?;
    if !map.contains_key("nonce") {
        return Err(JobError::Malformed("nonce is missing".into()));
    }
    Ok(requestor)
}

/// The job's tasks, by label (at most [`JOB_TASKS_MAX`]).
fn parse_tasks(map: &serde_json::Map<String, Json>) -> Result<BTreeMap<String, Task>, JobError> {
    let run = map
        .get("run")
        .and_then(Json::as_object)
        .ok_or_else(|| JobError::Malformed("run is missing or not an object".into()))?;
    if run.is_empty() {
        return Err(JobError::Malformed("run names no tasks".into()));
    }
    if run.len() > JOB_TASKS_MAX {
        return Err(JobError::Malformed(format!(
            "more than JOB_TASKS_MAX ({JOB_TASKS_MAX}) tasks"
        )));
    }
    run.iter()
        .map(|(label, task)| Ok((label.clone(), parse_task(label, task)?)))
        .collect()
}

/// Every label a task names is a task of the job; every CID it names is
/// stored here.
fn check_names(
    task: &Task,
    tasks: &BTreeMap<String, Task>,
    context: &dyn JobContext,
) -> Result<(), JobError> {
    let named = task
        .depends_on()
        .chain(task.on_error.iter().map(String::as_str))
        .chain(task.on_success.iter().map(String::as_str))
        .chain(task.always.iter().map(String::as_str));
    for label in named {
        if !tasks.contains_key(label) {
            return Err(JobError::UnknownLabel {
                task: task.label.clone(),
                label: label.to_owned(),
            });
        }
    }
    let unknown = |cid: &str| JobError::UnknownCid {
        task: task.label.clone(),
        cid: cid.to_owned(),
    };
    if let TaskKind::Wasm { module, .. } = &task.kind
        && !context.has_module(module)
    {
        return Err(unknown(module));
    }
    for input in &task.inputs {
        if let Input::Link(cid) = input
            && !context.has_value(cid)
        {
            return Err(unknown(cid));
        }
    }
    Ok(())
}

/// The delegations a job carries as its authority: `prf`, UCAN 1.0
/// delegation tokens in base64, root first.
fn proofs(map: &serde_json::Map<String, Json>) -> Result<Vec<Vec<u8>>, JobError> {
    let malformed =
        || JobError::Malformed("prf must be a list of UCAN delegations in base64".into());
    match map.get("prf") {
        None => Ok(Vec::new()),
        Some(Json::Array(chain)) => chain
            .iter()
            .map(|token| {
                let text = token.as_str().ok_or_else(malformed)?;
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| malformed())
            })
            .collect(),
        Some(_) => Err(malformed()),
    }
}

/// What a task asks of the kernel, as a UCAN command and arguments: a pure
/// task is `/ipvm/run`; an effect is `/ipvm/effect/<pet name>` with
/// `{do: method}`, so a delegation's policy may name the methods allowed.
fn task_request(task: &Task) -> Result<(ucan::Command, ucan::Ipld), ucan::CommandError> {
    let (command, args) = match &task.kind {
        TaskKind::Wasm { .. } => ("/ipvm/run".to_owned(), BTreeMap::new()),
        TaskKind::Effect { target, method } => (
            format!("/ipvm/effect/{}", target.to_lowercase()),
            BTreeMap::from([("do".to_owned(), ucan::Ipld::String(method.clone()))]),
        ),
    };
    Ok((ucan::Command::parse(&command)?, ucan::Ipld::Map(args)))
}

/// The requestor may run every task: it is the kernel's owner, or the
/// job's delegations from the owner (UCAN 1.0) cover each task's command
/// and satisfy their policies now; and the owner holds the capability an
/// effect names.
fn check_granted(
    task: &Task,
    requestor: &str,
    proofs: &[Vec<u8>],
    context: &dyn JobContext,
) -> Result<(), JobError> {
    if let TaskKind::Effect { target, .. } = &task.kind
        && !context.has_capability(target)
    {
        return Err(JobError::NotGranted {
            task: task.label.clone(),
            target: target.clone(),
        });
    }
    let owner = context.owner();
    if requestor == owner {
        return Ok(());
    }
    let unauthorized = |reason: String| JobError::Unauthorized {
        requestor: requestor.to_owned(),
        reason,
    };
    let parse = |did: &str| did_key::DidKey::parse(did).map_err(|e| unauthorized(e.to_string()));
    let (invoker, subject) = (parse(requestor)?, parse(&owner)?);
    let (cmd, args) = task_request(task).map_err(|e| unauthorized(e.to_string()))?;
    let request = ucan::Request {
        invoker: &invoker,
        subject: &subject,
        cmd: &cmd,
        args: &args,
    };
    let chain: Vec<&[u8]> = proofs.iter().map(Vec::as_slice).collect();
    let now_s = devices::timer::now_ms() / 1000;
    ucan::authorize(&request, &chain, now_s)
        .map(|_| ())
        .map_err(|e| unauthorized(format!("task {:?}: {} ({e})", task.label, e.name())))
}

/// A task output that is not plain data (a reference, an error, a
/// non-finite number): what it is instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a task output must be plain data, not {0}")]
pub struct NotPlainData(String);

/// A task's output as plain JSON, or why it is not plain data.
pub fn value_to_json(value: &Value) -> Result<Json, NotPlainData> {
    Ok(match value {
        Value::Undefined | Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) if n.is_finite() => vom::capdata::finite_number_json(*n),
        Value::BigInt(n) => match i64::try_from(*n) {
            Ok(n) => Json::from(n),
            Err(_) => Json::from(n.to_string()),
        },
        Value::String(s) => Json::from(s.as_str()),
        Value::Array(items) => {
            Json::Array(items.iter().map(value_to_json).collect::<Result<_, _>>()?)
        }
        Value::Record(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), value_to_json(v)?)))
                .collect::<Result<_, NotPlainData>>()?,
        ),
        other => return Err(NotPlainData(format!("{other:?}"))),
    })
}

/// A JSON input as a passable value.
pub fn json_to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n
            .as_i64()
            .map(|n| Value::Number(n as f64))
            .or_else(|| n.as_f64().map(Value::Number))
            .unwrap_or(Value::Null),
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(json_to_value).collect()),
        Json::Object(map) => Value::Record(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        ),
    }
}

/// How a task ended, as its receipt records it: its output (`out.ok`), or
/// the text of its failure (`out.error`). The failure is data a receipt
/// carries, not an error of the runner's.
pub type ReceiptOut = Result<Json, String>;

/// A receipt's body: what ran, how it ended, what it cost.
pub fn receipt_body(ran: &str, outcome: &ReceiptOut, fuel: Option<u64>, issuer: &str) -> Json {
    let out = match outcome {
        Ok(value) => json!({"ok": value}),
        Err(reason) => json!({"error": reason}),
    };
    json!({"ran": ran, "out": out, "fuel": fuel, "iss": issuer})
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Everything;

    impl JobContext for Everything {
        fn has_module(&self, _: &str) -> bool {
            true
        }
        fn has_value(&self, _: &str) -> bool {
            true
        }
        fn owner(&self) -> String {
            String::new()
        }
        fn has_capability(&self, _: &str) -> bool {
            true
        }
    }

    fn task(from: &[&str], on_error: &[&str]) -> Json {
        let inputs: Vec<Json> = from.iter().map(|l| json!({"from": l})).collect();
        json!({"type": "ipvm/wasm", "with": "bafkreibjkd6hsvnmwidyrps4jh5afrelvr675z3vgjeraiceovcxrrlxky", "func": "f", "input": inputs, "onError": on_error})
    }

    fn tasks(run: Json) -> BTreeMap<String, Task> {
        run.as_object()
            .unwrap()
            .iter()
            .map(|(l, t)| (l.clone(), parse_task(l, t).unwrap()))
            .collect()
    }

    #[test]
    fn a_cycle_is_named_along_its_path() {
        let run = json!({"a": task(&["b"], &[]), "b": task(&["a"], &[]), "c": task(&[], &[])});
        assert_eq!(find_cycle(&tasks(run)).as_deref(), Some("a -> b -> a"));
        // b runs after a fails, and a after b fails: neither can go first.
        let run = json!({"a": task(&[], &["b"]), "b": task(&[], &["a"])});
        assert!(find_cycle(&tasks(run)).is_some(), "onError edges count");
        // b runs after a fails, and takes a's output: one order, no cycle.
        let run = json!({"a": task(&[], &["b"]), "b": task(&["a"], &[])});
        assert_eq!(find_cycle(&tasks(run)), None);
        let run = json!({"a": task(&[], &[]), "b": task(&["a"], &[]), "c": task(&["a", "b"], &[])});
        assert_eq!(find_cycle(&tasks(run)), None);
    }

    #[test]
    fn values_are_addressed_by_canonical_dag_cbor() {
        // Key order does not change the encoding: DAG-CBOR sorts map keys.
        let a = json!({"b": 1, "aa": [true, "x"]});
        let b: Json = serde_json::from_str(r#"{"aa": [true, "x"], "b": 1}"#).unwrap();
        assert_eq!(dag_cbor(&a), dag_cbor(&b));
        assert!(value_cid(&a).starts_with("bafyrei"), "{}", value_cid(&a));
        // Shorter keys sort first, as DAG-CBOR requires.
        assert_eq!(dag_cbor(&json!({"b": 1, "aa": 2}))[1], 0x61);
    }

    #[test]
    fn inputs_are_literals_links_or_task_outputs() {
        assert_eq!(
            parse_input("t", &json!({"from": "a", "out": 1})).unwrap(),
            Input::From {
                label: "a".into(),
                out: 1
            }
        );
        assert_eq!(
            parse_input("t", &json!({"/": "bafy"})).unwrap(),
            Input::Link("bafy".into())
        );
        assert_eq!(
            parse_input("t", &json!({"x": 1})).unwrap(),
            Input::Literal(json!({"x": 1}))
        );
        assert!(parse_input("t", &json!({"from": "a", "to": 1})).is_err());
        assert!(matches!(
            Job::parse(json!({"type": "ipvm/job"}), &Everything),
            Err(JobError::Malformed(_))
        ));
    }
}
