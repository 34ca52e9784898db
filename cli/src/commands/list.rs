//! What the kernel holds: `vat list` and `vat check`.

use anyhow::Result;
use kernel::{Kernel, VatInfo, VatQuery, VatState, WorkerKind};

use crate::request::{ListArgs, Outcome};

pub fn check(kernel: &mut Kernel, out: &mut Outcome) -> Result<()> {
    let (problems, keys) = kernel.check()?;
    if problems.is_empty() {
        out.line(format!("ok: {keys} keys consistent"));
        return Ok(());
    }
    for problem in &problems {
        out.line(problem);
    }
    out.stderr = format!("error: {} discrepancies in {keys} keys\n", problems.len());
    out.failed = true;
    Ok(())
}

pub fn list(kernel: &mut Kernel, args: &ListArgs, out: &mut Outcome) -> Result<()> {
    let query = VatQuery {
        name_prefix: args.prefix.clone(),
        state: args.state.map(|state| state.into_state()),
        resident_only: args.resident,
        after: args.after.clone(),
        limit: args.limit,
    };
    let vats = kernel.vats_page(&query)?;
    let filtered = query
        != VatQuery {
            limit: args.limit,
            ..VatQuery::default()
        };
    if vats.is_empty() && !filtered {
        out.line("no vats (spawn one with `vat spawn NAME MODULE.wasm`)");
    }
    let (awake, spare) = kernel.resident();
    let full = vats.len() == args.limit;
    let last = vats.last().map(|vat| vat.name.clone());
    let now_s = now_s();
    for vat in vats {
        out.line(vat_line(vat, now_s));
    }
    if let (true, Some(last)) = (full, last) {
        out.line(format!("… more after {last}: `vat list --after {last}`"));
    }
    if awake > 0 || spare > 0 {
        out.line(format!(
            "{awake} vat(s) awake, {spare} spare worker process(es)"
        ));
    }
    let names = kernel.pet_names()?;
    if !names.is_empty() {
        out.line("pet names:");
        let shown = names.len().min(args.limit);
        for (name, kref) in names.iter().take(shown) {
            out.line(format!("  {name} -> {kref}"));
        }
        if names.len() > shown {
            out.line(format!("  … and {} more", names.len() - shown));
        }
    }
    Ok(())
}

pub fn sleep(kernel: &mut Kernel, name: &str, out: &mut Outcome) -> Result<()> {
    if kernel.sleep_vat(name)? {
        out.line(format!("{name} is asleep: its next message wakes it"));
    } else {
        out.line(format!("{name} was asleep already"));
    }
    Ok(())
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn vat_line(vat: VatInfo, now_s: u64) -> String {
    let reason = vat.reason.map(|r| format!(" ({r})")).unwrap_or_default();
    let kept = match vat.kept {
        Some((entries, bytes)) if vat.state != VatState::Removed => {
            format!(" keeps {entries} vatstore entries ({bytes} bytes)")
        }
        _ => String::new(),
    };
    let worker = match (vat.worker, vat.worker_pid) {
        (WorkerKind::Process, Some(pid)) => format!("process (pid {pid})"),
        (WorkerKind::Process, None) => "process".to_owned(),
        (WorkerKind::Thread, _) => "thread".to_owned(),
    };
    // A removed vat whose pet name was rebound has no root left to show.
    let root = vat.root.as_deref().unwrap_or("-");
    let awake = match (vat.state, vat.resident, vat.heap_holds) {
        (VatState::Running, true, Some(holds)) => format!(", awake: it holds {holds}"),
        (VatState::Running, false, Some(holds)) => format!(", asleep: it holds {holds}"),
        (VatState::Running, true, None) => ", awake".to_owned(),
        (VatState::Running, false, None) => ", asleep".to_owned(),
        _ => String::new(),
    };
    let active = match vat.active_s {
        Some(at) => format!(", active {} ago", ago(now_s.saturating_sub(at))),
        None => String::new(),
    };
    format!(
        "{} {} root {root} {}{}{} worker {} bundle {}{awake}{active}",
        vat.id, vat.name, vat.state, reason, kept, worker, vat.bundle
    )
}

/// A duration in words, to the unit that matters (activity is written a
/// minute apart, so seconds say little beyond it).
fn ago(seconds: u64) -> String {
    match seconds {
        0..60 => "under a minute".to_owned(),
        60..3600 => format!("{} min", seconds / 60),
        3600..86400 => format!("{} h", seconds / 3600),
        _ => format!("{} days", seconds / 86400),
    }
}
