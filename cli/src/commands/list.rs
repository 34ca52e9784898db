//! What the kernel holds: `vat list` and `vat check`.

use anyhow::Result;
use kernel::{Kernel, VatInfo, VatState, WorkerKind};

use crate::request::Outcome;

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

pub fn list(kernel: &mut Kernel, out: &mut Outcome) -> Result<()> {
    let vats = kernel.vats()?;
    if vats.is_empty() {
        out.line("no vats (spawn one with `vat spawn NAME MODULE.wasm`)");
    }
    for vat in vats {
        out.line(vat_line(vat));
    }
    let names = kernel.pet_names()?;
    if !names.is_empty() {
        out.line("pet names:");
        for (name, kref) in names {
            out.line(format!("  {name} -> {kref}"));
        }
    }
    Ok(())
}

fn vat_line(vat: VatInfo) -> String {
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
    format!(
        "{} {} root {root} {}{}{} worker {} bundle {}",
        vat.id, vat.name, vat.state, reason, kept, worker, vat.bundle
    )
}
