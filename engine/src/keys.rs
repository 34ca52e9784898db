//! Every key of the CapTP engine's tables, built in one place (the layout
//! is the table at the top of `lib.rs`). A peer's keys sit under its
//! endpoint id (`r<N>`); ids are anything that displays.

use std::fmt::Display;

/// The next peer id.
pub(crate) const NEXT_PEER: &str = "kernel.nextPeer";
/// Where the daemon accepts CapTP connections.
pub(crate) const LISTEN: &str = "kernel.listen";

type Id<'a> = &'a (dyn Display + 'a);

fn field(peer: Id<'_>, name: &str) -> String {
    format!("{peer}.{name}")
}

/// A field of the peer's record: `name`, `state`, `reason`, `direction`,
/// `address`, `did`, `lastSeen` (a session's, unix seconds), and the counters (`answers`, `imports`, `sent`,
/// `received`, `nextQuestion`, `nextExport`).
pub(crate) fn record(peer: Id<'_>, name: &str) -> String {
    field(peer, name)
}

/// Our question `question`, and the question whose result `kp` is.
pub(crate) fn question(peer: Id<'_>, question: Id<'_>) -> String {
    format!("{peer}.q.{question}")
}

pub(crate) fn question_of(peer: Id<'_>, kp: Id<'_>) -> String {
    format!("{peer}.qk.{kp}")
}

/// The peer's question `question`, and the answer `kp` settles.
pub(crate) fn answer(peer: Id<'_>, question: Id<'_>) -> String {
    format!("{peer}.a.{question}")
}

pub(crate) fn answer_of(peer: Id<'_>, kp: Id<'_>) -> String {
    format!("{peer}.ak.{kp}")
}

/// How many times we sent export `id`, and the peer sent us its export `id`.
pub(crate) fn export_count(peer: Id<'_>, id: Id<'_>) -> String {
    format!("{peer}.ec.{id}")
}

pub(crate) fn import_count(peer: Id<'_>, id: Id<'_>) -> String {
    format!("{peer}.ic.{id}")
}

/// A session frame sent and not yet acknowledged, by number.
pub(crate) fn frame_out(peer: Id<'_>, seq: u64) -> String {
    format!("{peer}.out.{seq:020}")
}

/// A JSON peer's answers in the order they returned (see `endo.rs`).
pub(crate) fn returned(peer: Id<'_>, seq: u64) -> String {
    format!("{peer}.ra.{seq:020}")
}

/// Where a kind of the peer's entries start (`q.`, `a.`, `out.`, `c.` ...).
pub(crate) fn prefix(peer: Id<'_>, kind: &str) -> String {
    format!("{peer}.{kind}")
}

/// The session peer of the kernel `did`.
pub(crate) fn peer_of_did(did: Id<'_>) -> String {
    format!("peer.did.{did}")
}

/// Peers whose connection (or session) is live: `peer.open.<rN>`.
pub(crate) const PEERS_OPEN: &str = "peer.open.";
/// Ended peers `vat peers` still shows, with when they ended (unix
/// seconds): `peer.ended.<rN>`. Purged after a while, and all their keys.
pub(crate) const PEERS_ENDED: &str = "peer.ended.";
/// Present once the two lists above cover every peer (stores made before
/// them are indexed once, at start).
pub(crate) const PEERS_INDEXED: &str = "peer.indexed";

pub(crate) fn peer_open(peer: Id<'_>) -> String {
    format!("{PEERS_OPEN}{peer}")
}

pub(crate) fn peer_ended(peer: Id<'_>) -> String {
    format!("{PEERS_ENDED}{peer}")
}

/// Where every key of a peer's own starts (`r<N>.`).
pub(crate) fn peer_all(peer: Id<'_>) -> String {
    format!("{peer}.")
}

/// The kref a sturdy ref's swiss number restores.
pub(crate) fn sturdy(swiss: Id<'_>) -> String {
    format!("sturdy.{swiss}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_layout() {
        let peer = "r2".to_owned();
        assert_eq!(question(&peer, &7u32), "r2.q.7");
        assert_eq!(answer_of(&"r2", &"kp4"), "r2.ak.kp4");
        assert_eq!(frame_out(&peer, 3), "r2.out.00000000000000000003");
        assert_eq!(record(&peer, "state"), "r2.state");
    }
}
