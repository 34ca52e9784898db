//! `vat inspect`: what the kernel holds, as one JSON document (for the
//! HTTP face's inspector page, and for scripts).

use anyhow::Result;
use captp_engine::Peers;
use kernel::{Kernel, VatQuery, WorkerKind};
use serde_json::json;

use crate::request::Outcome;

/// How many vats, pet names and peers the document lists at most.
pub const INSPECT_ITEMS_MAX: usize = 1000;

pub fn inspect(kernel: &mut Kernel, out: &mut Outcome) -> Result<()> {
    let query = VatQuery {
        limit: INSPECT_ITEMS_MAX,
        ..VatQuery::default()
    };
    let vats: Vec<_> = kernel
        .vats_page(&query)?
        .into_iter()
        .map(|vat| {
            let worker = match vat.worker {
                WorkerKind::Process => "process",
                WorkerKind::Thread => "thread",
            };
            json!({
                "id": vat.id.to_string(),
                "name": vat.name,
                "state": vat.state.to_string(),
                "reason": vat.reason,
                "worker": worker,
                "pid": vat.worker_pid,
                "awake": vat.resident,
                "bundle": vat.bundle,
                "root": vat.root.map(|r| r.to_string()),
            })
        })
        .collect();
    let names: Vec<_> = kernel
        .pet_names()?
        .into_iter()
        .take(INSPECT_ITEMS_MAX)
        .map(|(name, kref)| json!({"name": name, "kref": kref.to_string()}))
        .collect();
    let peers: Vec<_> = kernel
        .peers()?
        .into_iter()
        .take(INSPECT_ITEMS_MAX)
        .map(|peer| {
            json!({
                "id": peer.id.to_string(),
                "name": peer.name,
                "direction": peer.direction,
                "state": peer.state,
                "references": peer.references,
            })
        })
        .collect();
    let document = json!({
        "vats": vats,
        "names": names,
        "peers": peers,
        "runQueue": kernel.run_queue_length()?,
    });
    out.line(document);
    Ok(())
}
