//! The engine's part of `vat check`: what its records hold (for the
//! kernel's recount of references) and whether its peers' records are
//! consistent. It reads and writes nothing else.

use kernel::{EndpointId, TablesRef};
use swingstore::StoreError;

use crate::{Answer, Question, keys};

/// The krefs a peer's record `field` (the key after `r<N>.`) holds: a
/// question its result promise; an answer, until returned, the promise it
/// waits for or the object it restored. A record that does not parse holds
/// nothing, and the recount then reports the counts it leaves unexplained.
pub(crate) fn references_in_record(field: &str, value: &str) -> Vec<String> {
    let kref = match field.split_once('.') {
        Some(("q", _)) => serde_json::from_str::<Question>(value)
            .ok()
            .and_then(|q| q.result),
        Some(("a", _)) => serde_json::from_str::<Answer>(value)
            .ok()
            .and_then(|a| a.kref),
        _ => None,
    };
    kref.into_iter().map(String::from).collect()
}

/// Every discrepancy in the peers' records: each peer is below the peer
/// counter, and is running or terminated with a reason.
pub(crate) fn check_records(t: &TablesRef<'_>) -> Result<Vec<String>, StoreError> {
    let mut problems = Vec::new();
    let next = t.count(keys::NEXT_PEER)?;
    for (key, _) in t.scan_prefix("r")? {
        let Some(id) = key.strip_suffix(".name").and_then(EndpointId::parse) else {
            continue;
        };
        if id.number() >= next.max(1) {
            problems.push(format!("{id} exists but kernel.nextPeer is {next}"));
        }
        let state = t.get(&keys::record(&id, "state"))?;
        let reason = t.get(&keys::record(&id, "reason"))?;
        match (state.as_deref(), reason) {
            (Some("running"), _) | (Some("terminated"), Some(_)) => {}
            (other, _) => problems.push(format!("{id} has state {other:?}")),
        }
    }
    Ok(problems)
}
