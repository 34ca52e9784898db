//! IPVM jobs from the command line: values to name as inputs, signing a
//! job (with the UCAN delegations that let its requestor run it), running
//! it with progress, and what its tasks did.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use ipvm::{JobEvent, Jobs, TaskOutcome};
use kernel::Kernel;
use serde_json::{Value as Json, json};

use crate::home::Home;
use crate::request::Outcome;

fn read_json(file: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

/// Twelve random bytes in base58: a job's or a delegation's nonce.
fn nonce() -> Result<String> {
    Ok(bs58::encode(super::ucan::nonce()?).into_string())
}

pub fn add_value(kernel: &mut Kernel, json: &str, out: &mut Outcome) -> Result<()> {
    let value: Json = serde_json::from_str(json).context("the value is not JSON")?;
    out.line(Jobs::new(kernel).add_value(&value)?);
    Ok(())
}

/// Signs the job file in place as this home (its requestor), with `proofs`
/// attached as its delegation chain.
pub fn sign(home: &Home, file: &Path, proofs: &[PathBuf], out: &mut Outcome) -> Result<()> {
    let mut job = read_json(file)?;
    let chain = proofs
        .iter()
        .map(|proof| {
            super::ucan::read_token(proof)
                .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let map = job
        .as_object_mut()
        .with_context(|| format!("{} is not a JSON object", file.display()))?;
    map.insert("requestor".into(), home.did().into());
    if !chain.is_empty() {
        map.insert("prf".into(), chain.into());
    }
    if !map.contains_key("nonce") {
        map.insert("nonce".into(), nonce()?.into());
    }
    map.remove("signature");
    let signature = home.sign(&ipvm::signing_bytes(&job));
    job["signature"] = ipvm::encode_signature(&signature).into();
    let text = serde_json::to_string_pretty(&job).expect("JSON serializes");
    std::fs::write(file, format!("{text}\n"))
        .with_context(|| format!("cannot write {}", file.display()))?;
    out.line(format!(
        "signed job {} as {}",
        ipvm::value_cid(&job),
        home.did()
    ));
    Ok(())
}

fn progress_line(event: JobEvent) -> String {
    let ok = |ok: bool| if ok { "ok" } else { "failed" };
    match event {
        JobEvent::Started { label } => format!("  {label}: started"),
        JobEvent::Memoized { label, ok: done } => {
            format!("  {label}: {} (receipt found: not run again)", ok(done))
        }
        JobEvent::Finished {
            label,
            ok: done,
            fuel,
        } => format!(
            "  {label}: {}{}",
            ok(done),
            fuel.map(|f| format!(" (fuel {f})")).unwrap_or_default()
        ),
        JobEvent::Skipped { label } => format!("  {label}: skipped"),
    }
}

/// Validates and runs a job file: progress per task on stderr as it
/// happens (the daemon's, when a daemon runs it), then the outputs; it
/// fails when a task failed that names no handler.
pub fn run(home: &Home, kernel: &mut Kernel, file: &Path, out: &mut Outcome) -> Result<()> {
    let mut jobs = Jobs::new(kernel);
    let job = jobs.validate(read_json(file)?, &home.did())?;
    out.line(format!("job {}", job.cid));
    let outcomes = jobs.run(
        &job,
        &home.did(),
        &|message| home.sign(message),
        &mut |event| {
            eprintln!("{}", progress_line(event));
        },
    )?;
    // A failed task that names no handler fails the job: its outputs are
    // still printed, and the command exits non-zero.
    let unhandled: Vec<&str> = outcomes
        .iter()
        .filter(|(label, outcome)| {
            let task = &job.tasks[label.as_str()];
            matches!(outcome, TaskOutcome::Error(_))
                && task.on_error.is_empty()
                && task.always.is_empty()
        })
        .map(|(label, _)| label.as_str())
        .collect();
    if !unhandled.is_empty() {
        out.stderr = format!(
            "error: task {} failed with no onError or always handler\n",
            unhandled.join(", ")
        );
        out.failed = true;
    }
    let outputs: serde_json::Map<String, Json> = outcomes
        .into_iter()
        .map(|(label, outcome)| {
            let shown = match outcome {
                TaskOutcome::Ok(value) => json!({"ok": value}),
                TaskOutcome::Error(reason) => json!({"error": reason}),
                TaskOutcome::Skipped => json!({"skipped": true}),
            };
            (label, shown)
        })
        .collect();
    out.line(Json::Object(outputs));
    Ok(())
}

pub fn status(kernel: &mut Kernel, id: &str, out: &mut Outcome) -> Result<()> {
    let Some(states) = Jobs::new(kernel).status(id)? else {
        bail!("no job {id} has run here");
    };
    for (label, state) in states {
        out.line(format!("{label}: {state}"));
    }
    Ok(())
}

pub fn receipts(kernel: &mut Kernel, id: &str, out: &mut Outcome) -> Result<()> {
    let jobs = Jobs::new(kernel);
    if jobs.status(id)?.is_none() {
        bail!("no job {id} has run here");
    }
    for (label, receipt) in jobs.receipts(id)? {
        out.line(json!({"task": label, "receipt": receipt}));
    }
    Ok(())
}
