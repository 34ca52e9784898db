//! Every key of the CapTP engine's tables, built in one place (the layout
//! is the table at the top of `lib.rs`). A peer's keys sit under its
//! endpoint id (`r<N>`); ids are strings, kernel ids and numbers
//! ([`KeyPart`]).

use kernel::{EndpointId, Kref};

/// The next peer id.
pub(crate) const NEXT_PEER: &str = "kernel.nextPeer";
/// Where the daemon accepts CapTP connections.
pub(crate) const LISTEN: &str = "kernel.listen";

/// What a key is built of. Keys are built without `format!`: the
/// formatting machinery cost more than the rest of building a key, and
/// a CapTP call builds dozens.
pub(crate) trait KeyPart {
    fn push_to(&self, key: &mut String);
}

impl KeyPart for str {
    fn push_to(&self, key: &mut String) {
        key.push_str(self);
    }
}

impl KeyPart for String {
    fn push_to(&self, key: &mut String) {
        key.push_str(self);
    }
}

impl KeyPart for EndpointId {
    fn push_to(&self, key: &mut String) {
        key.push_str(self.as_ref());
    }
}

impl KeyPart for Kref {
    fn push_to(&self, key: &mut String) {
        key.push_str(self.as_ref());
    }
}

impl KeyPart for u32 {
    fn push_to(&self, key: &mut String) {
        key.push_str(itoa::Buffer::new().format(*self));
    }
}

impl KeyPart for u64 {
    fn push_to(&self, key: &mut String) {
        key.push_str(itoa::Buffer::new().format(*self));
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    fn push_to(&self, key: &mut String) {
        (**self).push_to(key);
    }
}

/// A sequence number, zero-padded to 20 digits (all a `u64` can have),
/// so that keys sort in its order.
struct Padded(u64);

impl KeyPart for Padded {
    fn push_to(&self, key: &mut String) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(self.0);
        key.extend(std::iter::repeat_n('0', 20 - digits.len()));
        key.push_str(digits);
    }
}

type Id<'a> = &'a (dyn KeyPart + 'a);

/// Room for most keys: a peer id, a field and a 20-digit number.
const KEY_BYTES: usize = 40;

/// `parts` joined, in one allocation of `capacity` (at least; numbers may grow it).
fn join(parts: &[Id<'_>], capacity: usize) -> String {
    let mut key = String::with_capacity(capacity);
    for part in parts {
        part.push_to(&mut key);
    }
    key
}

fn field(peer: Id<'_>, name: &str) -> String {
    join(&[peer, &".", &name], KEY_BYTES)
}

/// A field of the peer's record: `name`, `state`, `reason`, `direction`,
/// `address`, `did`, `lastSeen` (a session's, unix seconds), and the counters (`answers`, `imports`, `sent`,
/// `received`, `nextQuestion`, `nextExport`).
pub(crate) fn record(peer: Id<'_>, name: &str) -> String {
    field(peer, name)
}

/// Our question `question`, and the question whose result `kp` is.
pub(crate) fn question(peer: Id<'_>, question: Id<'_>) -> String {
    join(&[peer, &".q.", question], KEY_BYTES)
}

pub(crate) fn question_of(peer: Id<'_>, kp: Id<'_>) -> String {
    join(&[peer, &".qk.", kp], KEY_BYTES)
}

/// The peer's question `question`, and the answer `kp` settles.
pub(crate) fn answer(peer: Id<'_>, question: Id<'_>) -> String {
    join(&[peer, &".a.", question], KEY_BYTES)
}

pub(crate) fn answer_of(peer: Id<'_>, kp: Id<'_>) -> String {
    join(&[peer, &".ak.", kp], KEY_BYTES)
}

/// How many times we sent export `id`, and the peer sent us its export `id`.
pub(crate) fn export_count(peer: Id<'_>, id: Id<'_>) -> String {
    join(&[peer, &".ec.", id], KEY_BYTES)
}

pub(crate) fn import_count(peer: Id<'_>, id: Id<'_>) -> String {
    join(&[peer, &".ic.", id], KEY_BYTES)
}

/// A session frame sent and not yet acknowledged, by number.
pub(crate) fn frame_out(peer: Id<'_>, seq: u64) -> String {
    join(&[peer, &".out.", &Padded(seq)], KEY_BYTES)
}

/// A JSON peer's answers in the order they returned (see `endo.rs`).
pub(crate) fn returned(peer: Id<'_>, seq: u64) -> String {
    join(&[peer, &".ra.", &Padded(seq)], KEY_BYTES)
}

/// Where a kind of the peer's entries start (`q.`, `a.`, `out.`, `c.` ...).
pub(crate) fn prefix(peer: Id<'_>, kind: &str) -> String {
    join(&[peer, &".", &kind], KEY_BYTES)
}

/// The session peer of the kernel `did`.
pub(crate) fn peer_of_did(did: Id<'_>) -> String {
    join(&[&"peer.did.", did], KEY_BYTES)
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
    join(&[&PEERS_OPEN, peer], KEY_BYTES)
}

pub(crate) fn peer_ended(peer: Id<'_>) -> String {
    join(&[&PEERS_ENDED, peer], KEY_BYTES)
}

/// Where every key of a peer's own starts (`r<N>.`).
pub(crate) fn peer_all(peer: Id<'_>) -> String {
    join(&[peer, &"."], KEY_BYTES)
}

/// The kref a sturdy ref's swiss number restores.
pub(crate) fn sturdy(swiss: Id<'_>) -> String {
    join(&[&"sturdy.", swiss], KEY_BYTES)
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
