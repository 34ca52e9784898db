//! The timer device. Its root object answers `now()` (the Unix time in ms),
//! `after(ms)` and `at(unixMs)`: a promise the device decides, kept in the
//! store, fulfilled with the time it fired. Whoever runs the kernel turns
//! the timer ([`fire_due`]): the daemon on every turn, a CLI run when it
//! opens the home. A kernel that was down fires what fell due when it
//! starts, once.

use std::time::{SystemTime, UNIX_EPOCH};

use kernel::{EndpointId, Kernel, KernelError, Kref, Message, Tables, TablesRef};
use swingstore::StoreError;
use vom::Value;

use crate::keys;

/// The timer device's name, and the pet name its root is bound to.
pub const NAME: &str = "timer";
/// `timers_max`: how many timers may be pending at once.
pub const TIMERS_MAX: u64 = 100_000;
/// `timers_fired_per_crank_max`: how many timers one crank fires (the rest
/// fire in the next).
pub const TIMERS_FIRED_PER_CRANK_MAX: usize = 1_000;

/// The Unix time in ms, as the host's clock says.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The timer device, made on first use: its root object, bound to the pet
/// name `timer` if that name is free. Idempotent.
pub fn install(kernel: &mut Kernel) -> Result<Kref, KernelError> {
    crate::install_named(kernel, NAME)
}

/// The timer device and its root, if it was installed.
fn find(t: &TablesRef<'_>) -> Result<Option<(EndpointId, Kref)>, StoreError> {
    crate::find_named(t, NAME)
}

/// A message to the timer (`result` its promise): answers `now`, arms
/// `after` and `at`.
pub(crate) fn deliver(
    t: &mut Tables<'_>,
    device: &EndpointId,
    result: &Kref,
    message: Message,
) -> Result<(), StoreError> {
    let args = vom::capdata::decode(&message.args).ok();
    let arg = |index: usize| match &args {
        Some(Value::Array(items)) => items.get(index).and_then(Value::as_u64),
        _ => None,
    };
    let now = now_ms();
    let due = match message.method.as_str() {
        "now" => return settle(t, result, now),
        "after" => arg(0).map(|ms| now.saturating_add(ms)),
        "at" => arg(0),
        other => {
            let reason = format!("the timer has no method {other:?} (now, after(ms), at(unixMs))");
            return t.reject_if_unresolved(Some(result), &reason);
        }
    };
    let Some(due) = due else {
        let reason = format!("{}: its argument is a time in ms", message.method);
        return t.reject_if_unresolved(Some(result), &reason);
    };
    arm(t, device, result, due)
}

fn settle(t: &mut Tables<'_>, kpid: &Kref, fired_ms: u64) -> Result<(), StoreError> {
    let data = vom::capdata::encode(&Value::from(fired_ms));
    t.resolve(kpid, false, &data)
}

/// Keeps `kpid`, to fire at `due_ms`.
fn arm(
    t: &mut Tables<'_>,
    device: &EndpointId,
    kpid: &Kref,
    due_ms: u64,
) -> Result<(), StoreError> {
    let pending = keys::record(device, "timers");
    if t.count(&pending)? >= TIMERS_MAX {
        let reason = format!("{TIMERS_MAX} timers are pending already (timers_max)");
        return t.reject_if_unresolved(Some(kpid), &reason);
    }
    let seq = t.next_id(&keys::record(device, "nextTimer"))?;
    t.set(&keys::timer(device, due_ms, seq), kpid)?;
    t.add_to_count(&pending, 1)?;
    t.set_promise_decider(kpid, Some(device.as_str()))?;
    t.incref(kpid)
}

/// When the next timer is due, if one is pending.
pub fn next_due_ms(kernel: &Kernel) -> Result<Option<u64>, KernelError> {
    let t = kernel.tables_ref();
    let Some((device, _)) = find(&t)? else {
        return Ok(None);
    };
    let prefix = keys::timers_prefix(&device);
    Ok(t.first_with_prefix(&prefix)?
        .map(|(key, _)| due_of(&prefix, &key)))
}

/// The due time in a timer's key, `d<N>.t.<due>.<seq>`.
fn due_of(prefix: &str, key: &str) -> u64 {
    key[prefix.len()..]
        .split('.')
        .next()
        .and_then(|due| due.parse().ok())
        .unwrap_or_else(|| panic!("kernel invariant: {key} is d<N>.t.<due>.<seq>"))
}

/// Fires every timer due by `now_ms`, in due order, a crank per
/// [`TIMERS_FIRED_PER_CRANK_MAX`]; commits; returns how many fired. The
/// settlements' notifies are queued: the caller runs the cranks.
pub fn fire_due(kernel: &mut Kernel, now_ms: u64) -> Result<usize, KernelError> {
    // Most turns nothing is due: they read one key and write nothing.
    if next_due_ms(kernel)?.is_none_or(|due| due > now_ms) {
        return Ok(0);
    }
    let Some((device, _)) = find(&kernel.tables_ref())? else {
        return Ok(0);
    };
    let mut fired = 0;
    loop {
        let batch = kernel.in_crank(|k| fire_batch(&mut k.tables(), &device, now_ms))?;
        fired += batch;
        if batch < TIMERS_FIRED_PER_CRANK_MAX {
            break;
        }
    }
    kernel.commit()?;
    Ok(fired)
}

fn fire_batch(t: &mut Tables<'_>, device: &EndpointId, now_ms: u64) -> Result<usize, StoreError> {
    let prefix = keys::timers_prefix(device);
    let mut fired = 0;
    while fired < TIMERS_FIRED_PER_CRANK_MAX {
        let Some((key, kpid)) = t.first_with_prefix(&prefix)? else {
            break;
        };
        if due_of(&prefix, &key) > now_ms {
            break;
        }
        let kpid =
            Kref::parse(&kpid).unwrap_or_else(|| panic!("kernel invariant: {key} holds a promise"));
        t.delete(&key)?;
        t.add_to_count(&keys::record(device, "timers"), -1)?;
        if t.promise_state(&kpid)? == Some(kernel::PromiseState::Unresolved) {
            settle(t, &kpid, now_ms)?;
        }
        t.decref(&kpid)?;
        fired += 1;
    }
    Ok(fired)
}

/// The timer's records: its state, and as many pending timers as it counts.
pub(crate) fn check(t: &TablesRef<'_>, device: &EndpointId) -> Result<Vec<String>, StoreError> {
    let mut problems = Vec::new();
    if t.get(&keys::record(device, "state"))?.as_deref() != Some("running") {
        problems.push(format!("{device} (the timer) is not running"));
    }
    let pending = t.scan_prefix(&keys::timers_prefix(device))?.len() as u64;
    let counted = t.count(&keys::record(device, "timers"))?;
    if pending != counted {
        problems.push(format!(
            "{device} counts {counted} pending timers but holds {pending}"
        ));
    }
    Ok(problems)
}
