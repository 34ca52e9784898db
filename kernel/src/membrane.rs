//! The CapTP membrane: a remote peer (`r<N>`) sits beside the vats. Its
//! tables are kernel tables in swingstore, changed inside cranks like a
//! vat's c-list, so a peer's references are counted like a vat's and
//! nothing it is sent leaves before the crank's commit.
//!
//! | key | value |
//! |---|---|
//! | `kernel.nextPeer` | next peer id |
//! | `r<N>.name`, `.state`, `.reason`, `.direction`, `.address` | the peer's record (`inbound`: it dialled us; `outbound`: we dialled it) |
//! | `r<N>.c.<kref>` / `r<N>.c.<ref>` | its c-list: `o+I`/`p+I` are the peer's exports to us (import id I), `o-E`/`p-E` ours to it (export id E) |
//! | `r<N>.ec.<E>` | how many times we sent export E (what the peer's `Release`s count down) |
//! | `r<N>.ic.<I>` | how many times the peer sent us its export I (what our `Release` says) |
//! | `r<N>.q.<Q>` | our question Q: JSON [`Question`] (its result promise holds a reference) |
//! | `r<N>.qk.<kp>` | the question whose result `kp` is |
//! | `r<N>.a.<A>` | the peer's question A: JSON [`Answer`] |
//! | `r<N>.ak.<kp>` | the answer `kp` settles |
//! | `r<N>.nextQuestion`, `.nextExport`, `.answers`, `.imports` | counters (answers open, imports held: each bounded) |
//! | `r<N>.did`, `peer.did.<did>` | a kernel peer (durable session) and its did:key |
//! | `r<N>.sent`, `.received`, `.out.<seq>` | session frames sent and applied; those sent but not yet acknowledged (hex) |
//! | `sturdy.<swiss>` | the kref a sturdy ref restores (a reference, like a pet name) |
//!
//! On the wire every object is an `Exo` (`captp/schema/exo.capnp`); export 0
//! is the `Gate`, the bootstrap object, which reaches nothing but what a
//! sturdy ref's swiss number names.

use captp::wire::{
    self, Body, Call, CallContent, CapDescriptor, Embargo, Message as Wire, ResultContent, Return,
    ReturnKind, ReturnOutcome, Target,
};
use serde::{Deserialize, Serialize};
use swingstore::StoreError;
use vom::{CapData, Value};

use crate::kernel::{Kernel, KernelError, error_capdata};
use crate::state::{KernelState, Message, PromiseState, RunQueueItem};

/// The export id of a kernel's `Gate` (its bootstrap object).
const GATE_EXPORT_ID: u32 = 0;
/// Questions a peer may have outstanding with us at once
/// (`answers_per_peer_max`): past it, calls are answered with an exception.
pub const ANSWERS_PER_PEER_MAX: u64 = 4096;
/// Distinct references a peer may hold from us or give us
/// (`references_per_peer_max`): past it, the connection is aborted.
pub const REFERENCES_PER_PEER_MAX: u64 = 1 << 16;
/// The pointer field of `Exo.call`'s results that holds the result when it
/// is a reference: the one field a call can be pipelined on.
const OBJECT_FIELD: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum QuestionKind {
    Exo,
    Bootstrap,
    Restore,
}

/// A question we asked the peer.
#[derive(Debug, Serialize, Deserialize)]
struct Question {
    kind: QuestionKind,
    /// The kernel promise the answer settles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    /// Exports sent in the call's parameters (released if the peer's
    /// `Return` says `releaseParamCaps`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exports: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum AnswerKind {
    Exo,
    Gate,
    Restored,
}

/// A question the peer asked us.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    kind: AnswerKind,
    /// The result promise (`exo`), or the restored object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kref: Option<String>,
    /// Why it failed, if it was answered with an exception: calls
    /// pipelined on it fail the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    broken: Option<String>,
    /// The peer sent `Finish` before we returned: the entry goes with the `Return`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    finished: bool,
}

impl Answer {
    fn new(kind: AnswerKind, kref: Option<String>) -> Answer {
        Answer {
            kind,
            kref,
            broken: None,
            finished: false,
        }
    }
}

/// How a session's connection is doing, as the network side last said
/// (memory only: it is about this process's connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerLink {
    Connecting,
    Connected,
    /// Down, and why.
    NotConnected(String),
}

impl std::fmt::Display for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerLink::Connecting => f.write_str("connecting"),
            PeerLink::Connected => f.write_str("connected"),
            PeerLink::NotConnected(why) => write!(f, "not connected: {why}"),
        }
    }
}

/// A peer as `vat peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: String,
    pub name: String,
    /// How it is, as `vat peers` shows it.
    pub state: String,
    /// Its connection is gone for good (a client peer, or a session ended).
    pub gone: bool,
    pub direction: String,
    pub references: usize,
}

/// What a peer did wrong: the connection is aborted with this reason.
#[derive(Debug)]
pub(crate) struct ProtocolError(pub(crate) String);

impl From<StoreError> for MembraneError {
    fn from(e: StoreError) -> Self {
        MembraneError::Kernel(e.into())
    }
}

impl From<KernelError> for MembraneError {
    fn from(e: KernelError) -> Self {
        MembraneError::Kernel(e)
    }
}

pub(crate) enum MembraneError {
    Protocol(ProtocolError),
    Kernel(KernelError),
}

fn protocol<T>(text: impl Into<String>) -> Result<T, MembraneError> {
    Err(MembraneError::Protocol(ProtocolError(text.into())))
}

type Result<T, E = MembraneError> = std::result::Result<T, E>;

/// `VAT_CAPTP_TRACE=1`: every frame in and out, decoded, on stderr (read once).
fn tracing_frames() -> bool {
    static TRACING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACING.get_or_init(|| std::env::var_os("VAT_CAPTP_TRACE").is_some())
}

pub(crate) fn is_peer(id: &str) -> bool {
    id.starts_with('r')
}

/// The import or export id in a peer c-list ref (`o+3` -> 3).
fn ref_id(text: &str) -> u32 {
    text[2..].parse().unwrap_or_else(|_| {
        panic!("kernel invariant: peer c-list refs are <o|p><+|-><id> ({text})")
    })
}

fn add_counter(state: &mut KernelState, key: &str, delta: i64) -> Result<u64, StoreError> {
    let now = state.count(key)? as i64 + delta;
    assert!(now >= 0, "kernel invariant: {key} never goes negative");
    if now == 0 {
        state.delete(key)?;
    } else {
        state.set(key, &now.to_string())?;
    }
    Ok(now as u64)
}

/// Capdata for a single reference to `kref`.
fn reference_capdata(kref: &str) -> CapData {
    let r = vom::capdata::Ref::new(kref);
    if kref.starts_with("kp") {
        vom::capdata::encode(&Value::Promise(r))
    } else {
        vom::capdata::encode(&Value::Remotable(r))
    }
}

impl Kernel {
    // ---- the peer's lifecycle (each a crank of its own) ----

    /// Records a new connection's peer and returns its id.
    pub fn add_peer(&mut self, name: &str, outbound: bool) -> Result<String, KernelError> {
        self.in_crank(|k| {
            let id = format!("r{}", k.state.next_id("kernel.nextPeer")?);
            k.state.set(&format!("{id}.name"), name)?;
            k.state.set(&format!("{id}.state"), "running")?;
            let direction = if outbound { "outbound" } else { "inbound" };
            k.state.set(&format!("{id}.direction"), direction)?;
            Ok(id)
        })
    }

    /// The connection to `peer` is gone: its questions fail, what it held
    /// is released (a slice per crank, like a terminated vat's), and
    /// messages to its objects are rejected with `reason`.
    pub fn remove_peer(&mut self, peer: &str, reason: &str) -> Result<(), KernelError> {
        if self.state.get(&format!("{peer}.state"))?.as_deref() != Some("running") {
            return Ok(());
        }
        Ok(self.in_crank(|k| k.terminate_peer(peer, reason))?)
    }

    /// Like [`Kernel::remove_peer`], telling the peer why with `Abort`.
    pub fn abort_peer(&mut self, peer: &str, reason: &str) -> Result<(), KernelError> {
        if self.state.get(&format!("{peer}.state"))?.as_deref() != Some("running") {
            return Ok(());
        }
        let why = format!("peer {peer} disconnected: {reason}");
        Ok(self.in_crank(|k| k.abort_in_crank(peer, reason, &why))?)
    }

    /// Tells the peer why it is cut off (`Abort`) and terminates it.
    fn abort_in_crank(&mut self, peer: &str, reason: &str, why: &str) -> Result<(), StoreError> {
        self.emit(
            peer,
            &Wire::Abort {
                reason: reason.to_owned(),
            },
        );
        self.terminate_peer(peer, why)
    }

    fn terminate_peer(&mut self, peer: &str, reason: &str) -> Result<(), StoreError> {
        self.state.set(&format!("{peer}.state"), "terminated")?;
        if let Some(did) = self.state.get(&format!("{peer}.did"))? {
            self.state.delete(&format!("peer.did.{did}"))?;
            self.state.sessions.remove(peer);
            for (key, _) in self.state.scan_prefix(&format!("{peer}.out."))? {
                self.state.delete(&key)?;
            }
        }
        self.state.set(&format!("{peer}.reason"), reason)?;
        let prefix = format!("{peer}.q.");
        for (key, _) in self.state.scan_prefix(&prefix)? {
            let question = key[prefix.len()..]
                .parse()
                .unwrap_or_else(|_| panic!("kernel invariant: {key} names a question number"));
            self.fail_question(peer, question, reason)?;
        }
        for (key, text) in self.state.scan_prefix(&format!("{peer}.a."))? {
            self.state.delete(&key)?;
            let answer: Answer = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("kernel invariant: {key} is an answer: {e}"));
            if let Some(kref) = answer.kref {
                self.state.decref(&kref)?;
            }
        }
        for prefix in ["ak.", "ec.", "ic."] {
            for (key, _) in self.state.scan_prefix(&format!("{peer}.{prefix}"))? {
                self.state.delete(&key)?;
            }
        }
        self.state.delete(&format!("{peer}.answers"))?;
        self.state.delete(&format!("{peer}.imports"))?;
        // Promises it decided (imports of its promises) are rejected too.
        for (key, _) in self.state.scan_prefix(&format!("{peer}.c.kp"))? {
            let kpid = &key[format!("{peer}.c.").len()..];
            if self.state.promise_decider(kpid)?.as_deref() == Some(peer) {
                self.reject_if_unresolved(Some(kpid), reason)?;
            }
        }
        self.state.cleanup_maybe = true;
        self.state.set(&format!("cleanup.{peer}"), "")
    }

    /// Forgets every client peer a previous run of this kernel was
    /// connected to (their connections died with it); kernel peers' sessions
    /// outlive connections and restarts.
    pub fn remove_stale_peers(&mut self) -> Result<(), KernelError> {
        for peer in self.peer_ids()? {
            if self.state.get(&format!("{peer}.state"))?.as_deref() == Some("running") {
                let peer = peer.as_str();
                if self.state.get(&format!("{peer}.did"))?.is_some() {
                    self.state.sessions.insert(peer.to_owned());
                    continue;
                }
                self.remove_peer(
                    peer,
                    &format!("peer {peer} disconnected: the kernel restarted"),
                )?;
            }
        }
        Ok(())
    }

    /// Every peer id ever allocated (`r1` up to `kernel.nextPeer`).
    fn peer_ids(&self) -> Result<Vec<String>, StoreError> {
        let next = self.state.count("kernel.nextPeer")?.max(1);
        Ok((1..next).map(|n| format!("r{n}")).collect())
    }

    /// The peers this kernel knows, connected or not.
    pub fn peers(&self) -> Result<Vec<PeerInfo>, KernelError> {
        let mut peers = Vec::new();
        for id in self.peer_ids()? {
            let id = id.as_str();
            let Some(name) = self.state.get(&format!("{id}.name"))? else {
                continue;
            };
            let get = |field: &str| -> Result<String, KernelError> {
                Ok(self
                    .state
                    .get(&format!("{id}.{field}"))?
                    .unwrap_or_default())
            };
            let mut state = get("state")?;
            let gone = state == "terminated";
            if gone {
                state = format!("disconnected ({})", get("reason")?);
            } else if self.state.sessions.contains(id) {
                let unacknowledged = self.state.scan_prefix(&format!("{id}.out."))?.len();
                let link = match self.peer_link(id) {
                    Some(link) => link.to_string(),
                    None => "not connected".to_owned(),
                };
                state = format!("session, {link} ({unacknowledged} frames unacknowledged)");
            }
            let references = self.state.scan_prefix(&format!("{id}.c.k"))?.len();
            peers.push(PeerInfo {
                id: id.to_owned(),
                name,
                state,
                gone,
                direction: get("direction")?,
                references,
            });
        }
        Ok(peers)
    }

    // ---- sessions between kernels ----

    /// The session with the kernel `did`, made if there is none; `address`
    /// is where to dial it (none: it dials us).
    pub fn session_peer(
        &mut self,
        did: &str,
        address: Option<&str>,
    ) -> Result<String, KernelError> {
        if let Some(peer) = self.state.get(&format!("peer.did.{did}"))?
            && self.state.get(&format!("{peer}.state"))?.as_deref() == Some("running")
        {
            // One side dials: a session the other kernel dials stays so,
            // even once we hold a sturdy ref to it too.
            let inbound =
                self.state.get(&format!("{peer}.direction"))?.as_deref() == Some("inbound");
            if let Some(address) = address
                && !inbound
            {
                self.in_crank(|k| k.state.set(&format!("{peer}.address"), address))?;
            }
            return Ok(peer);
        }
        let peer = self.add_peer(did, address.is_some())?;
        self.in_crank(|k| {
            k.state.set(&format!("{peer}.did"), did)?;
            k.state.set(&format!("peer.did.{did}"), &peer)?;
            match address {
                Some(address) => k.state.set(&format!("{peer}.address"), address),
                None => Ok(()),
            }
        })?;
        self.state.sessions.insert(peer.clone());
        Ok(peer)
    }

    /// Kernel sessions this kernel dials: (peer, did, address).
    pub fn sessions_to_dial(&self) -> Result<Vec<(String, String, String)>, KernelError> {
        let mut out = Vec::new();
        for peer in &self.state.sessions {
            if let (Some(did), Some(address)) = (
                self.state.get(&format!("{peer}.did"))?,
                self.state.get(&format!("{peer}.address"))?,
            ) {
                out.push((peer.clone(), did, address));
            }
        }
        Ok(out)
    }

    /// Records how `peer`'s connection is doing (shown by `vat peers`).
    pub fn set_peer_link(&mut self, peer: &str, link: PeerLink) {
        self.peer_links.insert(peer.to_owned(), link);
    }

    pub fn peer_link(&self, peer: &str) -> Option<&PeerLink> {
        self.peer_links.get(peer)
    }

    /// Whether `peer` is a kernel with a durable session.
    pub fn is_session(&self, peer: &str) -> bool {
        self.state.sessions.contains(peer)
    }

    /// How many session frames from `peer` this kernel has applied.
    pub fn session_received(&self, peer: &str) -> Result<u64, KernelError> {
        Ok(self.state.count(&format!("{peer}.received"))?)
    }

    /// The session frames to `peer` numbered `from` on, as committed.
    pub fn session_frames_from(&self, peer: &str, from: u64) -> Result<Vec<Vec<u8>>, KernelError> {
        let start = format!("{peer}.out.{from:020}");
        let prefix = format!("{peer}.out.");
        let mut frames = Vec::new();
        for (key, text) in self.state.scan_prefix(&prefix)? {
            if key < start {
                continue;
            }
            frames.push(
                hex::decode(&text)
                    .unwrap_or_else(|e| panic!("kernel invariant: {key} holds a hex frame: {e}")),
            );
        }
        Ok(frames)
    }

    /// `peer` has applied our first `received` session frames: forget them.
    pub fn session_acknowledged(&mut self, peer: &str, received: u64) -> Result<(), KernelError> {
        let end = format!("{peer}.out.{received:020}");
        let keys: Vec<String> = self
            .state
            .scan_prefix(&format!("{peer}.out."))?
            .into_iter()
            .map(|(key, _)| key)
            .take_while(|key| *key < end)
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        self.in_crank(|k| keys.iter().try_for_each(|key| k.state.delete(key)))?;
        Ok(())
    }

    // ---- sturdy refs ----

    /// Where the daemon accepts CapTP connections (`None`: it does not).
    pub fn set_listen_address(&mut self, address: Option<&str>) -> Result<(), KernelError> {
        Ok(self.in_crank(|k| match address {
            Some(address) => k.state.set("kernel.listen", address),
            None => k.state.delete("kernel.listen"),
        })?)
    }

    pub fn listen_address(&self) -> Result<Option<String>, KernelError> {
        Ok(self.state.get("kernel.listen")?)
    }

    /// Makes a sturdy ref's swiss number for `kref`: whoever holds it can
    /// restore the object through the gate. The object stays alive for it.
    pub fn share(&mut self, kref: &str) -> Result<String, KernelError> {
        if !kref.starts_with("ko") || !self.state.kref_exists(kref)? {
            return Err(KernelError::UnknownTarget(kref.to_owned()));
        }
        let mut bytes = [0u8; 20];
        getrandom::fill(&mut bytes).map_err(|e| KernelError::Randomness(e.to_string()))?;
        let swiss = bs58::encode(bytes).into_string();
        self.in_crank(|k| {
            k.state.set(&format!("sturdy.{swiss}"), kref)?;
            k.state.incref(kref)
        })?;
        Ok(swiss)
    }

    /// Asks `peer` (a connection we dialled) for the object behind `swiss`.
    /// Returns a promise for it, pinned until [`Kernel::release`].
    pub fn enliven(&mut self, peer: &str, swiss: &str) -> Result<String, KernelError> {
        self.in_crank(|k| k.enliven_in_crank(peer, swiss))
    }

    fn enliven_in_crank(&mut self, peer: &str, swiss: &str) -> Result<String, KernelError> {
        let bootstrap = self.next_question(peer)?;
        self.put_question(
            peer,
            bootstrap,
            &Question {
                kind: QuestionKind::Bootstrap,
                result: None,
                exports: vec![],
            },
        )?;
        self.emit(
            peer,
            &Wire::Bootstrap {
                question: bootstrap,
            },
        );
        let kp = self.state.allocate_promise(Some(peer))?;
        self.state.pin(&kp)?;
        let restore = self.next_question(peer)?;
        self.put_question(
            peer,
            restore,
            &Question {
                kind: QuestionKind::Restore,
                result: Some(kp.clone()),
                exports: vec![],
            },
        )?;
        self.emit(
            peer,
            &Wire::Call(Call {
                question: restore,
                target: Target::Answer {
                    question: bootstrap,
                    transform: vec![],
                },
                content: CallContent::Restore {
                    swiss: swiss.to_owned(),
                },
                caps: vec![],
            }),
        );
        Ok(kp)
    }

    // ---- frames in ----

    /// What our question `question` to `peer` expects back (for decoding).
    pub fn return_kind(&self, peer: &str, question: u32) -> Option<ReturnKind> {
        let text = self.state.get(&format!("{peer}.q.{question}")).ok()??;
        let question: Question = serde_json::from_str(&text).ok()?;
        Some(match question.kind {
            QuestionKind::Exo => ReturnKind::Exo,
            QuestionKind::Bootstrap => ReturnKind::Bootstrap,
            QuestionKind::Restore => ReturnKind::Restore,
        })
    }

    /// Handles one decoded frame from `peer` in a crank of its own. A frame
    /// that breaks the protocol changes nothing: the peer is sent `Abort`
    /// and disconnected, and the reason is returned. A session
    /// frame (between kernels) is counted in the same crank as its effects,
    /// so a frame is applied exactly once however often it is resent.
    pub fn receive_message(
        &mut self,
        peer: &str,
        decoded: Result<Wire, wire::WireError>,
    ) -> Result<Option<String>, KernelError> {
        if self.state.get(&format!("{peer}.state"))?.as_deref() != Some("running") {
            return Ok(Some(format!("peer {peer} is disconnected")));
        }
        if tracing_frames() {
            eprintln!("{peer} <- {decoded:?}");
        }
        self.state.store.begin_crank()?;
        let handled = self.receive_in_crank(peer, decoded);
        match handled {
            Ok(()) => {
                self.end_crank_or_abort()?;
                Ok(None)
            }
            Err(MembraneError::Kernel(e)) => {
                self.state.abort_crank()?;
                Err(e)
            }
            Err(MembraneError::Protocol(ProtocolError(reason))) => {
                self.state.abort_crank()?;
                let why = format!("peer {peer} aborted: {reason}");
                self.in_crank(|k| k.abort_in_crank(peer, &reason, &why))?;
                Ok(Some(reason))
            }
        }
    }

    /// Counts a session frame and applies it, in the current crank.
    fn receive_in_crank(
        &mut self,
        peer: &str,
        decoded: Result<Wire, wire::WireError>,
    ) -> Result<()> {
        if self.state.sessions.contains(peer) {
            add_counter(&mut self.state, &format!("{peer}.received"), 1)?;
        }
        match decoded {
            Ok(message) => self.handle_message(peer, message),
            Err(e) => protocol(e.to_string()),
        }
    }

    fn handle_message(&mut self, peer: &str, message: Wire) -> Result<()> {
        match message {
            Wire::Bootstrap { question } => {
                self.open_answer(peer, question, &Answer::new(AnswerKind::Gate, None))?;
                self.emit(
                    peer,
                    &return_results(
                        question,
                        ResultContent::Bootstrap(Some(0)),
                        vec![CapDescriptor::SenderHosted(GATE_EXPORT_ID)],
                    ),
                );
                Ok(())
            }
            Wire::Call(call) => self.handle_call(peer, call),
            Wire::Return(ret) => self.handle_return(peer, ret),
            Wire::Finish { question, .. } => {
                let key = format!("{peer}.a.{question}");
                if self.state.get(&key)?.is_none() {
                    return protocol(format!("finish for unknown question {question}"));
                }
                let mut answer = self.answer(peer, question)?;
                let returned = match &answer.kref {
                    Some(kp) if answer.kind == AnswerKind::Exo => {
                        self.state.get(&format!("{peer}.ak.{kp}"))?.is_none()
                    }
                    _ => true,
                };
                if returned {
                    self.close_answer(peer, question)?;
                } else {
                    answer.finished = true;
                    let text = serde_json::to_string(&answer).expect("answers serialize");
                    self.state.set(&key, &text)?;
                }
                Ok(())
            }
            Wire::Resolve {
                promise,
                resolution,
            } => {
                let vref = format!("p+{promise}");
                let Some(kp) = self.state.clist_kref(peer, &vref)? else {
                    return protocol(format!("resolve for unknown promise {promise}"));
                };
                let (rejected, data) = match resolution {
                    Ok(cap) => {
                        let kref = self.import_descriptor(peer, &cap)?;
                        (false, reference_capdata(&kref))
                    }
                    Err(reason) => (true, error_capdata(&reason)),
                };
                if self.state.promise_state(&kp)? == Some(PromiseState::Unresolved) {
                    crate::kernel::settle_promise(&mut self.state, &kp, rejected, &data)?;
                }
                // The promise import is done with: release it.
                add_counter(&mut self.state, &format!("{peer}.imports"), -1)?;
                let count = self.state.count(&format!("{peer}.ic.{promise}"))?;
                self.state.delete(&format!("{peer}.ic.{promise}"))?;
                self.state.clist_remove(peer, &kp)?;
                self.emit(
                    peer,
                    &Wire::Release {
                        id: promise,
                        count: count.max(1) as u32,
                    },
                );
                Ok(())
            }
            Wire::Release { id, count } => {
                if id == GATE_EXPORT_ID {
                    return Ok(());
                }
                let key = format!("{peer}.ec.{id}");
                let held = self.state.count(&key)?;
                if held == 0 {
                    return protocol(format!("release of unknown export {id}"));
                }
                if u64::from(count) > held {
                    return protocol(format!(
                        "release of export {id} {count} times, more than it was sent ({held})"
                    ));
                }
                if add_counter(&mut self.state, &key, -i64::from(count))? == 0 {
                    self.forget_export(peer, id)?;
                }
                Ok(())
            }
            Wire::Disembargo { target, context } => {
                let Embargo::SenderLoopback(id) = context else {
                    return protocol("receiverLoopback disembargo for an embargo we never asked");
                };
                // The target is a promise we resolved to one of the peer's
                // own objects: reflect the disembargo back to it, after
                // everything we sent it so far (frames leave in order).
                let kref = self.target_kref(peer, &target)?;
                let resolved = match self.state.promise_state(&kref)? {
                    Some(PromiseState::Fulfilled(data)) => data.slots.first().cloned(),
                    _ => None,
                };
                let back = match resolved {
                    Some(ko) => self.state.clist_vref(peer, &ko)?,
                    None => None,
                };
                match back {
                    Some(vref) if vref.starts_with("o+") => {
                        // Messages for that promise may still wait in the
                        // run queue, to be forwarded to the peer: the
                        // reflection goes after them.
                        self.state.push_run_queue(&RunQueueItem::Loopback {
                            peer: peer.to_owned(),
                            export: ref_id(&vref),
                            embargo: id,
                        })?;
                        Ok(())
                    }
                    _ => protocol("disembargo target did not resolve to the sender's object"),
                }
            }
            Wire::Abort { reason } => protocol(format!("the peer aborted: {reason}")),
            Wire::Unimplemented { call_question } => {
                if let Some(question) = call_question {
                    self.fail_question(peer, question, "the peer does not implement this call")?;
                }
                Ok(())
            }
            Wire::Unsupported { what, frame } => {
                self.emit(peer, &Wire::Unsupported { what, frame });
                Ok(())
            }
        }
    }

    fn handle_call(&mut self, peer: &str, call: Call) -> Result<()> {
        let Call {
            question,
            target,
            content,
            caps,
        } = call;
        if self.state.get(&format!("{peer}.a.{question}"))?.is_some() {
            return protocol(format!("question {question} is already in use"));
        }
        if self.state.count(&format!("{peer}.answers"))? >= ANSWERS_PER_PEER_MAX {
            // Refused without keeping anything: no answer entry (nothing to
            // finish), and its capabilities are not taken (released).
            let reason = format!(
                "too many questions in flight (answers_per_peer_max {ANSWERS_PER_PEER_MAX})"
            );
            self.emit(
                peer,
                &Wire::Return(Return {
                    answer: question,
                    release_param_caps: true,
                    no_finish_needed: true,
                    outcome: ReturnOutcome::Exception(reason),
                }),
            );
            return Ok(());
        }
        // Every capability in the table is a reference the peer gave us,
        // used or not: import them all.
        let mut krefs = Vec::with_capacity(caps.len());
        for cap in &caps {
            krefs.push(self.import_descriptor(peer, cap)?);
        }
        let answer_exception = |kernel: &mut Kernel, reason: String| -> Result<()> {
            kernel.open_answer(
                peer,
                question,
                &Answer {
                    kind: AnswerKind::Exo,
                    kref: None,
                    broken: Some(reason.clone()),
                    finished: false,
                },
            )?;
            kernel.emit(peer, &return_exception(question, &reason));
            Ok(())
        };
        let on_gate = match &target {
            Target::Imported(id) => *id == GATE_EXPORT_ID,
            Target::Answer {
                question: q,
                transform,
            } => {
                let answer = self.answer(peer, *q)?;
                answer.kind == AnswerKind::Gate && transform.is_empty()
            }
        };
        if on_gate {
            return match content {
                CallContent::Restore { swiss } => {
                    match self.state.get(&format!("sturdy.{swiss}"))? {
                        Some(kref) if self.state.kref_exists(&kref)? => {
                            self.open_answer(
                                peer,
                                question,
                                &Answer::new(AnswerKind::Restored, Some(kref.clone())),
                            )?;
                            let descriptor = self.export_kref(peer, &kref)?;
                            self.emit(
                                peer,
                                &return_results(
                                    question,
                                    ResultContent::Restored(Some(0)),
                                    vec![descriptor],
                                ),
                            );
                            Ok(())
                        }
                        // Guessing gets nothing, and says nothing about why.
                        _ => answer_exception(self, "no object for that sturdy ref".into()),
                    }
                }
                _ => answer_exception(
                    self,
                    "the gate only restores sturdy refs (Gate.restore)".into(),
                ),
            };
        }
        if let Target::Answer { question: q, .. } = &target
            && let Some(reason) = self.answer(peer, *q)?.broken
        {
            return answer_exception(self, reason);
        }
        let target_kref = self.target_kref(peer, &target)?;
        let CallContent::Exo { method, args } = content else {
            return answer_exception(
                self,
                "unimplemented: objects here are Exo (exo.capnp)".into(),
            );
        };
        let mut slots = Vec::with_capacity(args.caps.len());
        for index in &args.caps {
            slots.push(krefs[*index as usize].clone());
        }
        let args = CapData {
            body: args.body,
            slots,
        };
        if let Err(e) = vom::capdata::decode(&args) {
            return answer_exception(self, format!("malformed capdata in the arguments: {e}"));
        }
        let kp = self.state.allocate_promise(None)?;
        self.open_answer(
            peer,
            question,
            &Answer::new(AnswerKind::Exo, Some(kp.clone())),
        )?;
        self.state
            .set(&format!("{peer}.ak.{kp}"), &question.to_string())?;
        self.state.add_subscriber(&kp, peer)?;
        self.state.push_run_queue(&RunQueueItem::Send {
            target: target_kref,
            message: Message {
                method,
                args,
                result: Some(kp),
            },
        })?;
        Ok(())
    }

    fn handle_return(&mut self, peer: &str, ret: Return) -> Result<()> {
        let key = format!("{peer}.q.{}", ret.answer);
        let Some(text) = self.state.get(&key)? else {
            return protocol(format!("return for unknown question {}", ret.answer));
        };
        let question: Question = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kernel invariant: {key} is a question: {e}"));
        self.state.delete(&key)?;
        if ret.release_param_caps {
            for id in &question.exports {
                if add_counter(&mut self.state, &format!("{peer}.ec.{id}"), -1)? == 0 {
                    self.forget_export(peer, *id)?;
                }
            }
        }
        let settlement: (bool, CapData) = match ret.outcome {
            ReturnOutcome::Results { content, caps } => {
                let mut krefs = Vec::with_capacity(caps.len());
                for cap in &caps {
                    krefs.push(self.import_descriptor(peer, cap)?);
                }
                match content {
                    ResultContent::Exo { result, .. } => {
                        let data = CapData {
                            body: result.body,
                            slots: result
                                .caps
                                .iter()
                                .map(|i| krefs[*i as usize].clone())
                                .collect(),
                        };
                        match vom::capdata::decode(&data) {
                            Ok(_) => (false, data),
                            Err(e) => (
                                true,
                                error_capdata(&format!("malformed capdata in the result: {e}")),
                            ),
                        }
                    }
                    ResultContent::Restored(Some(i)) => {
                        (false, reference_capdata(&krefs[i as usize]))
                    }
                    ResultContent::Bootstrap(_) => {
                        // We bootstrap only to restore; the gate itself is not kept.
                        (false, vom::capdata::encode(&Value::Undefined))
                    }
                    _ => (true, error_capdata("the peer returned no object")),
                }
            }
            ReturnOutcome::Exception(reason) => (true, error_capdata(&reason)),
            ReturnOutcome::Canceled => (true, error_capdata("the call was canceled")),
        };
        if !ret.no_finish_needed {
            self.emit(
                peer,
                &Wire::Finish {
                    question: ret.answer,
                    release_result_caps: false,
                },
            );
        }
        if let Some(kp) = question.result {
            self.state.delete(&format!("{peer}.qk.{kp}"))?;
            if self.state.promise_state(&kp)? == Some(PromiseState::Unresolved) {
                let (rejected, data) = settlement;
                crate::kernel::settle_promise(&mut self.state, &kp, rejected, &data)?;
            }
            self.state.decref(&kp)?;
        }
        Ok(())
    }

    /// Our question fails: its result promise is rejected with `reason`.
    fn fail_question(&mut self, peer: &str, question: u32, reason: &str) -> Result<(), StoreError> {
        let key = format!("{peer}.q.{question}");
        let Some(text) = self.state.get(&key)? else {
            return Ok(());
        };
        self.state.delete(&key)?;
        let question: Question = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kernel invariant: {key} is a question: {e}"));
        if let Some(kp) = question.result {
            self.state.delete(&format!("{peer}.qk.{kp}"))?;
            self.reject_if_unresolved(Some(&kp), reason)?;
            self.state.decref(&kp)?;
        }
        Ok(())
    }

    // ---- tables ----

    fn next_question(&mut self, peer: &str) -> Result<u32, StoreError> {
        let id = self.state.next_id(&format!("{peer}.nextQuestion"))?;
        Ok(u32::try_from(id).expect("kernel invariant: fewer than 2^32 questions per peer"))
    }

    fn put_question(&mut self, peer: &str, id: u32, question: &Question) -> Result<(), StoreError> {
        if let Some(kp) = &question.result {
            self.state.incref(kp)?;
            self.state
                .set(&format!("{peer}.qk.{kp}"), &id.to_string())?;
        }
        let text = serde_json::to_string(question).expect("questions serialize");
        self.state.set(&format!("{peer}.q.{id}"), &text)
    }

    fn answer(&self, peer: &str, question: u32) -> Result<Answer> {
        let key = format!("{peer}.a.{question}");
        match self.state.get(&key)? {
            Some(text) => Ok(serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("kernel invariant: {key} is an answer: {e}"))),
            None => protocol(format!("no question {question} to pipeline on")),
        }
    }

    fn answer_entry(&self, peer: &str, question: u32) -> Result<Answer, ()> {
        match self.state.get(&format!("{peer}.a.{question}")) {
            Ok(Some(text)) => serde_json::from_str(&text).map_err(|_| ()),
            _ => Err(()),
        }
    }

    /// Records the peer's question; the answer holds a reference to what
    /// it names until the peer's `Finish`.
    fn open_answer(&mut self, peer: &str, question: u32, answer: &Answer) -> Result<()> {
        let key = format!("{peer}.a.{question}");
        if self.state.get(&key)?.is_some() {
            return protocol(format!("question {question} is already in use"));
        }
        if let Some(kref) = &answer.kref {
            self.state.incref(kref)?;
        }
        add_counter(&mut self.state, &format!("{peer}.answers"), 1)?;
        let text = serde_json::to_string(answer).expect("answers serialize");
        Ok(self.state.set(&key, &text)?)
    }

    fn close_answer(&mut self, peer: &str, question: u32) -> Result<(), StoreError> {
        let key = format!("{peer}.a.{question}");
        if let Some(text) = self.state.get(&key)? {
            let answer: Answer = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("kernel invariant: {key} is an answer: {e}"));
            if let Some(kref) = answer.kref {
                self.state.decref(&kref)?;
            }
        }
        self.state.delete(&key)?;
        add_counter(&mut self.state, &format!("{peer}.answers"), -1)?;
        Ok(())
    }

    /// The kref a peer's message target names.
    fn target_kref(&mut self, peer: &str, target: &Target) -> Result<String> {
        match target {
            Target::Imported(id) => {
                for vref in [format!("o-{id}"), format!("p-{id}")] {
                    if let Some(kref) = self.state.clist_kref(peer, &vref)? {
                        return Ok(kref);
                    }
                }
                protocol(format!("no export {id} (never exported, or released)"))
            }
            Target::Answer {
                question,
                transform,
            } => {
                let answer = self.answer(peer, *question)?;
                match (answer.kind, transform.as_slice(), answer.kref) {
                    (AnswerKind::Exo, [OBJECT_FIELD], Some(kp)) => Ok(kp),
                    (AnswerKind::Restored, [0], Some(kref)) => Ok(kref),
                    (kind, transform, _) => protocol(format!(
                        "cannot pipeline on field path {transform:?} of a {kind:?} answer \
                         (Exo.call results: only `object`, field {OBJECT_FIELD})"
                    )),
                }
            }
        }
    }

    /// The kref for a capability the peer sent us, importing it if new.
    fn import_descriptor(&mut self, peer: &str, cap: &CapDescriptor) -> Result<String> {
        match cap {
            CapDescriptor::SenderHosted(id) | CapDescriptor::SenderPromise(id) => {
                let promise = matches!(cap, CapDescriptor::SenderPromise(_));
                let vref = format!("{}+{id}", if promise { 'p' } else { 'o' });
                let kref = match self.state.clist_kref(peer, &vref)? {
                    Some(kref) => kref,
                    None => {
                        let imports = format!("{peer}.imports");
                        if add_counter(&mut self.state, &imports, 1)? > REFERENCES_PER_PEER_MAX {
                            return protocol(format!(
                                "too many references (references_per_peer_max {REFERENCES_PER_PEER_MAX})"
                            ));
                        }
                        let kref = if promise {
                            self.state.allocate_promise(Some(peer))?
                        } else {
                            self.state.allocate_object(peer)?
                        };
                        self.state.clist_add(peer, &kref, &vref)?;
                        // If nothing takes it in this crank (a capability the
                        // body never names), the crank's end drops it again.
                        if !promise {
                            self.state.maybe_unreachable.insert(kref.clone());
                        }
                        kref
                    }
                };
                add_counter(&mut self.state, &format!("{peer}.ic.{id}"), 1)?;
                Ok(kref)
            }
            CapDescriptor::ReceiverHosted(id) => self.target_kref(peer, &Target::Imported(*id)),
            CapDescriptor::ReceiverAnswer {
                question,
                transform,
            } => self.target_kref(
                peer,
                &Target::Answer {
                    question: *question,
                    transform: transform.clone(),
                },
            ),
            CapDescriptor::None => protocol("a null capability where a reference was expected"),
        }
    }

    /// How the peer is to name `kref`, exporting it if it is new to the peer.
    fn export_kref(&mut self, peer: &str, kref: &str) -> Result<CapDescriptor, StoreError> {
        // A promise already fulfilled with a reference goes as that reference.
        let mut kref = kref.to_owned();
        for _ in 0..crate::kernel::FORWARDING_DEPTH_MAX {
            if !kref.starts_with("kp") {
                break;
            }
            match self.state.promise_state(&kref)? {
                Some(PromiseState::Fulfilled(data)) => match vom::capdata::decode(&data) {
                    Ok(Value::Remotable(r)) | Ok(Value::Promise(r)) => kref = r.slot,
                    _ => break,
                },
                _ => break,
            }
        }
        if let Some(text) = self.state.get(&format!("{peer}.qk.{kref}"))? {
            let question = text
                .parse()
                .expect("kernel invariant: question ids are numbers");
            return Ok(CapDescriptor::ReceiverAnswer {
                question,
                transform: vec![OBJECT_FIELD],
            });
        }
        if let Some(vref) = self.state.clist_vref(peer, &kref)? {
            let id = ref_id(&vref);
            if vref.starts_with("o+") || vref.starts_with("p+") {
                return Ok(CapDescriptor::ReceiverHosted(id));
            }
            add_counter(&mut self.state, &format!("{peer}.ec.{id}"), 1)?;
            // Given again, it is reachable again.
            self.state.clist_set_reachable(peer, &kref, true)?;
            return Ok(if vref.starts_with('p') {
                CapDescriptor::SenderPromise(id)
            } else {
                CapDescriptor::SenderHosted(id)
            });
        }
        let id = self.state.next_id(&format!("{peer}.nextExport"))?;
        let id = u32::try_from(id).expect("kernel invariant: fewer than 2^32 exports per peer");
        let promise = kref.starts_with("kp");
        let vref = format!("{}-{id}", if promise { 'p' } else { 'o' });
        self.state.clist_add(peer, &kref, &vref)?;
        add_counter(&mut self.state, &format!("{peer}.ec.{id}"), 1)?;
        if promise {
            match self.state.promise_state(&kref)? {
                Some(PromiseState::Unresolved) => self.state.add_subscriber(&kref, peer)?,
                _ => self.state.push_run_queue(&RunQueueItem::Notify {
                    vat: peer.to_owned(),
                    promise: kref.clone(),
                })?,
            }
            return Ok(CapDescriptor::SenderPromise(id));
        }
        Ok(CapDescriptor::SenderHosted(id))
    }

    /// The peer released every reference to export `id`.
    fn forget_export(&mut self, peer: &str, id: u32) -> Result<(), StoreError> {
        for vref in [format!("o-{id}"), format!("p-{id}")] {
            if let Some(kref) = self.state.clist_kref(peer, &vref)? {
                self.state.clist_remove(peer, &kref)?;
            }
        }
        Ok(())
    }

    fn capdata_to_peer(
        &mut self,
        peer: &str,
        data: &CapData,
    ) -> Result<(Body, Vec<CapDescriptor>), StoreError> {
        let mut caps = Vec::with_capacity(data.slots.len());
        for kref in &data.slots {
            caps.push(self.export_kref(peer, kref)?);
        }
        Ok((
            Body {
                body: data.body.clone(),
                caps: (0..caps.len() as u32).collect(),
            },
            caps,
        ))
    }

    // ---- frames out (inside cranks) ----

    /// Queues a frame to `peer`; it leaves after the crank commits.
    fn emit(&mut self, peer: &str, message: &Wire) {
        if tracing_frames() {
            eprintln!("{peer} -> {message:?}");
        }
        self.state
            .outbox_crank
            .push((peer.to_owned(), wire::encode(message)));
    }

    /// A message for one of the peer's objects (or a promise it decides).
    pub(crate) fn deliver_to_peer(
        &mut self,
        peer: &str,
        target: &str,
        message: Message,
    ) -> Result<(), StoreError> {
        let wire_target = if let Some(text) = self.state.get(&format!("{peer}.qk.{target}"))? {
            Target::Answer {
                question: text
                    .parse()
                    .expect("kernel invariant: question ids are numbers"),
                transform: vec![OBJECT_FIELD],
            }
        } else {
            match self.state.clist_vref(peer, target)? {
                Some(vref) if vref.contains('+') => Target::Imported(ref_id(&vref)),
                _ => {
                    let reason = format!("{target} is no longer reachable on peer {peer}");
                    return self.reject_if_unresolved(message.result.as_deref(), &reason);
                }
            }
        };
        let (args, caps) = self.capdata_to_peer(peer, &message.args)?;
        let exports = caps
            .iter()
            .filter_map(|c| match c {
                CapDescriptor::SenderHosted(id) | CapDescriptor::SenderPromise(id) => Some(*id),
                _ => None,
            })
            .collect();
        let question = self.next_question(peer)?;
        if let Some(kp) = &message.result {
            self.state.set_promise_decider(kp, Some(peer))?;
        }
        self.put_question(
            peer,
            question,
            &Question {
                kind: QuestionKind::Exo,
                result: message.result.clone(),
                exports,
            },
        )?;
        self.emit(
            peer,
            &Wire::Call(Call {
                question,
                target: wire_target,
                content: CallContent::Exo {
                    method: message.method,
                    args,
                },
                caps,
            }),
        );
        Ok(())
    }

    /// `kp`, which the peer asked about or we exported to it, settled.
    pub(crate) fn notify_peer(&mut self, peer: &str, kp: &str) -> Result<(), StoreError> {
        if self.state.get(&format!("{peer}.state"))?.as_deref() != Some("running") {
            return Ok(());
        }
        let (rejected, data) = match self.state.promise_state(kp)? {
            Some(PromiseState::Fulfilled(data)) => (false, data),
            Some(PromiseState::Rejected(data)) => (true, data),
            other => panic!("kernel invariant: notify for settled promises only ({kp}: {other:?})"),
        };
        let reason = || match vom::capdata::decode(&data) {
            Ok(Value::Error(e)) => e.to_string(),
            Ok(other) => format!("rejected: {other:?}"),
            Err(e) => e.to_string(),
        };
        if let Some(text) = self.state.get(&format!("{peer}.ak.{kp}"))? {
            let answer: u32 = text
                .parse()
                .expect("kernel invariant: answer ids are numbers");
            self.state.delete(&format!("{peer}.ak.{kp}"))?;
            let message = if rejected {
                return_exception(answer, &reason())
            } else {
                let (result, mut caps) = self.capdata_to_peer(peer, &data)?;
                // A single reference is also `object`, for pipelining; the
                // cap table then lists it twice, and the peer counts both.
                let object = match vom::capdata::decode(&data) {
                    Ok(Value::Remotable(_) | Value::Promise(_)) if caps.len() == 1 => {
                        let again = match &caps[0] {
                            CapDescriptor::SenderHosted(id) | CapDescriptor::SenderPromise(id) => {
                                add_counter(&mut self.state, &format!("{peer}.ec.{id}"), 1)?;
                                caps[0].clone()
                            }
                            other => other.clone(),
                        };
                        caps.push(again);
                        Some(1)
                    }
                    _ => None,
                };
                return_results(answer, ResultContent::Exo { result, object }, caps)
            };
            self.emit(peer, &message);
            // The answer's entry (and its reference) stays until the peer's
            // `Finish`: it may still pipeline on it.
            if let Ok(entry) = self.answer_entry(peer, answer)
                && entry.finished
            {
                self.close_answer(peer, answer)?;
            }
        }
        if let Some(vref) = self.state.clist_vref(peer, kp)?
            && let Some(id) = vref.strip_prefix("p-")
        {
            let id: u32 = id
                .parse()
                .expect("kernel invariant: export ids are numbers");
            let resolution = if rejected {
                Err(reason())
            } else {
                match vom::capdata::decode(&data) {
                    Ok(Value::Remotable(r) | Value::Promise(r)) => {
                        Ok(self.export_kref(peer, &r.slot)?)
                    }
                    _ => Err("the promise settled to data, not a capability".to_owned()),
                }
            };
            self.emit(
                peer,
                &Wire::Resolve {
                    promise: id,
                    resolution,
                },
            );
        }
        Ok(())
    }

    /// Sends a queued disembargo reflection (see [`RunQueueItem::Loopback`]).
    pub(crate) fn reflect_disembargo(&mut self, peer: &str, export: u32, embargo: u32) {
        self.emit(
            peer,
            &Wire::Disembargo {
                target: Target::Imported(export),
                context: Embargo::ReceiverLoopback(embargo),
            },
        );
    }

    /// The kernel dropped its last reference to one of the peer's objects.
    pub(crate) fn release_to_peer(&mut self, peer: &str, ko: &str) -> Result<(), StoreError> {
        let Some(vref) = self.state.clist_vref(peer, ko)? else {
            return Ok(());
        };
        let id = ref_id(&vref);
        let key = format!("{peer}.ic.{id}");
        let count = self.state.count(&key)?;
        self.state.delete(&key)?;
        // The peer may reuse the id once released: forget the mapping now.
        add_counter(&mut self.state, &format!("{peer}.imports"), -1)?;
        self.state.delete(&format!("{peer}.c.{ko}"))?;
        self.state.delete(&format!("{peer}.c.{vref}"))?;
        if self.state.get(&format!("{peer}.state"))?.as_deref() == Some("running") && count > 0 {
            self.emit(
                peer,
                &Wire::Release {
                    id,
                    count: u32::try_from(count).unwrap_or(u32::MAX),
                },
            );
        }
        Ok(())
    }

    /// The frames committed so far, per peer in order, and forgets them.
    pub fn take_outbound(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.outbound_ready)
    }
}

fn return_results(answer: u32, content: ResultContent, caps: Vec<CapDescriptor>) -> Wire {
    Wire::Return(Return {
        answer,
        release_param_caps: false,
        no_finish_needed: false,
        outcome: ReturnOutcome::Results { content, caps },
    })
}

fn return_exception(answer: u32, reason: &str) -> Wire {
    Wire::Return(Return {
        answer,
        release_param_caps: false,
        no_finish_needed: false,
        outcome: ReturnOutcome::Exception(reason.to_owned()),
    })
}
