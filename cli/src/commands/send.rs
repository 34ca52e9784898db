//! `vat send`: a message to a reference, run until its result settles, and
//! the result shown with pet names (and held, where it has no name, so the
//! next command can use what it shows).

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};
use kernel::{Kernel, KernelError, Kref, PromiseState};
use vom::Value;

use crate::display::{parse_arg, to_display};
use crate::request::{Outcome, SendArgs};

/// Sends, runs the kernel until the result settles, and reports it.
pub fn send(kernel: &mut Kernel, request: &SendArgs, out: &mut Outcome) -> Result<()> {
    let kpid = start_send(kernel, request)?;
    let keyed = request.idempotency_key.is_some();
    finish_send(kernel, &kpid, request.bind_as.as_deref(), keyed, out)
}

/// The timer device is made on first use: when a send names `timer` and
/// no pet name `timer` is bound yet.
fn install_devices_named(kernel: &mut Kernel, request: &SendArgs) -> Result<()> {
    let named = std::iter::once(&request.target)
        .chain(&request.args)
        .any(|text| text == devices::timer::NAME);
    if named && kernel.pet_name(devices::timer::NAME)?.is_none() {
        devices::timer::install(kernel)?;
    }
    Ok(())
}

/// Queues a send; returns its result promise.
pub fn start_send(kernel: &mut Kernel, request: &SendArgs) -> Result<Kref> {
    if let Some(name) = request.bind_as.as_deref() {
        kernel::check_name(name)?;
    }
    install_devices_named(kernel, request)?;
    let target = kernel.resolve_reference(&request.target)?;
    let resolve = |text: &str| kernel.resolve_reference(text).ok().map(String::from);
    let values = request
        .args
        .iter()
        .map(|arg| parse_arg(arg, &resolve).map_err(|e| anyhow!("argument {arg:?}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let args = vom::capdata::encode(&Value::Array(values));
    let Some(key) = request.idempotency_key.as_deref() else {
        check_unbound(kernel, request.bind_as.as_deref())?;
        return Ok(kernel.queue_message(&target, &request.method, args)?);
    };
    // A retry may find the name bound by its first try, to its result.
    if kernel.kept_send(key)?.is_none() {
        check_unbound(kernel, request.bind_as.as_deref())?;
    }
    let queued = kernel.queue_message_once(key, &target, &request.method, args)?;
    Ok(queued.kpid().clone())
}

fn check_unbound(kernel: &Kernel, bind_as: Option<&str>) -> Result<()> {
    if let Some(name) = bind_as
        && let Some(kref) = kernel.pet_name(name)?
    {
        bail!("pet name {name:?} is already bound (to {kref})");
    }
    Ok(())
}

/// Reports a send's settlement and lets go of its result promise (unless
/// an idempotency key keeps it for retries: `keyed`).
pub fn finish_send(
    kernel: &mut Kernel,
    kpid: &Kref,
    bind_as: Option<&str>,
    keyed: bool,
    out: &mut Outcome,
) -> Result<()> {
    let reported = report(kernel, kpid, bind_as, out);
    // Reported or not, nobody will read the result promise again.
    if !keyed {
        kernel.release(kpid)?;
    }
    kernel.commit()?;
    reported
}

/// Runs the kernel until `kpid` settles, then reports the settlement.
fn report(
    kernel: &mut Kernel,
    kpid: &Kref,
    bind_as: Option<&str>,
    out: &mut Outcome,
) -> Result<()> {
    // A message the HTTP device keeps settles once its request is sent.
    let settled = loop {
        match kernel.run_until_settled(kpid) {
            Err(KernelError::Unsettled(_)) if devices::http::send_pending(kernel)? > 0 => continue,
            other => break other?,
        }
    };
    let names: HashMap<String, String> = kernel
        .pet_names()?
        .into_iter()
        .map(|(name, kref)| (kref.into(), name))
        .collect();
    let name_of = |kref: &str| names.get(kref).cloned().unwrap_or_else(|| kref.to_owned());
    match settled {
        PromiseState::Fulfilled(data) => {
            let value = vom::capdata::decode(&data).context("result")?;
            if let Some(name) = bind_as {
                let Some(reference) = value.as_ref() else {
                    bail!("the result is not a reference, so --as {name} cannot bind it");
                };
                // An idempotent retry finds the name its first try bound.
                if kernel.pet_name(name)?.as_deref() != Some(reference.slot.as_str()) {
                    let kref = Kref::parse(&reference.slot).context("the result's reference")?;
                    kernel.bind_pet_name(name, &kref)?;
                    kernel.commit()?;
                }
            }
            hold_unnamed(kernel, &data, &names)?;
            let shown = to_display(&value, &|kref| match (bind_as, value.as_ref()) {
                (Some(name), Some(r)) if r.slot == kref => name.to_owned(),
                _ => name_of(kref),
            });
            out.line(shown);
        }
        PromiseState::Rejected(data) => {
            hold_unnamed(kernel, &data, &names)?;
            let reason = match vom::capdata::decode(&data) {
                Ok(Value::Error(e)) => e.to_string(),
                Ok(other) => to_display(&other, &name_of).to_string(),
                Err(e) => e.to_string(),
            };
            *out = Outcome::error(&reason);
        }
        PromiseState::Unresolved => unreachable!("run_until_settled returns settled promises"),
    }
    Ok(())
}

/// Holds the references a result shows by kref (those without a pet name),
/// so that the next command can use them.
fn hold_unnamed(
    kernel: &mut Kernel,
    data: &vom::CapData,
    names: &HashMap<String, String>,
) -> Result<()> {
    let unnamed: Vec<String> = data
        .slots
        .iter()
        .filter(|kref| !names.contains_key(*kref))
        .cloned()
        .collect();
    kernel.hold_shown(&unnamed)?;
    Ok(kernel.commit()?)
}
