//! What the engine does differently for @endo/captp peers (JSON CapTP):
//! which codec a peer speaks, and answers without `Finish`.
//!
//! @endo/captp never says it is done with an answer (it has no `Finish`;
//! it drops a question's slot only when it garbage-collects the promise,
//! if it collects at all). So answers it was sent are queued in the order
//! they returned (`r<N>.ra.<seq>`), and once it holds
//! `answers_per_peer_max`, the oldest returned ones are closed to make
//! room: a peer pipelining on an answer that old meets "no question".

use kernel::{Tables, TablesRef};
use swingstore::StoreError;

use crate::keys;

/// How a peer's messages are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    CapnProto,
    /// @endo/captp JSON, every message tagged with the peer's epoch.
    Json {
        epoch: u64,
    },
}

/// The codec `peer` speaks (`r<N>.codec`; absent: Cap'n Proto).
pub(crate) fn codec(t: &TablesRef<'_>, peer: &str) -> Result<Codec, StoreError> {
    Ok(match t.get(&keys::record(&peer, "codec"))?.as_deref() {
        Some(epoch) if epoch.starts_with("json") => Codec::Json {
            epoch: epoch
                .strip_prefix("json ")
                .and_then(|e| e.parse().ok())
                .unwrap_or(0),
        },
        _ => Codec::CapnProto,
    })
}

/// Records that `peer` speaks JSON CapTP with `epoch`.
pub(crate) fn set_json(t: &mut Tables<'_>, peer: &str, epoch: u64) -> Result<(), StoreError> {
    t.set(&keys::record(&peer, "codec"), &format!("json {epoch}"))
}

/// Our answer to the JSON peer's question `question` was sent (the caller
/// knows the peer speaks JSON).
pub(crate) fn note_returned(
    t: &mut Tables<'_>,
    peer: &str,
    question: u32,
) -> Result<(), StoreError> {
    let seq = t.next_id(&keys::record(&peer, "returnedNext"))?;
    t.set(&keys::returned(&peer, seq), &question.to_string())
}

/// Closes the oldest returned answers of a JSON peer until it holds fewer
/// than `answers_max`. False if none could be closed (Cap'n Proto peers
/// finish their own).
pub(crate) fn evict_returned(
    t: &mut Tables<'_>,
    peer: &str,
    answers_max: u64,
) -> Result<bool, StoreError> {
    if codec(&t.read(), peer)? == Codec::CapnProto {
        return Ok(false);
    }
    let prefix = keys::prefix(&peer, "ra.");
    while t.count(&keys::record(&peer, "answers"))? >= answers_max {
        let Some((key, question)) = t.read().first_with_prefix(&prefix)? else {
            return Ok(false);
        };
        t.delete(&key)?;
        let question: u32 = question
            .parse()
            .unwrap_or_else(|_| panic!("engine invariant: {key} holds a question number"));
        if t.get(&keys::answer(&peer, &question))?.is_some() {
            crate::close_answer(t, peer, question)?;
        }
    }
    Ok(true)
}
