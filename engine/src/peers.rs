//! The peer operations on a kernel: connections' peers, kernel sessions,
//! sturdy refs, and frames in. Each change is a crank of its own.

use std::collections::HashMap;

use captp::wire::{self, Message as Wire, ReturnKind};
use kernel::{EndpointId, EndpointKind, Kernel, KernelError, Kref, TablesRef};
use swingstore::StoreError;

use crate::keys;
use crate::{
    MembraneError, PeerInfo, PeerLink, ProtocolError, Question, QuestionKind, tracing_frames,
};

/// How each session's connection is doing, as the network side last said
/// (memory only: it is about this process's connections).
#[derive(Debug, Default)]
struct PeerLinks(HashMap<EndpointId, PeerLink>);

/// Every peer with a record: those live and those ended but still shown
/// (before the lists were kept, every id up to `kernel.nextPeer`).
fn peer_ids(t: &TablesRef<'_>) -> Result<Vec<EndpointId>, StoreError> {
    if t.get(keys::PEERS_INDEXED)?.is_none() {
        return every_peer_id(t);
    }
    let mut ids = Vec::new();
    for prefix in [keys::PEERS_OPEN, keys::PEERS_ENDED] {
        for (key, _) in t.scan_prefix(prefix)? {
            let id = EndpointId::parse(&key[prefix.len()..])
                .unwrap_or_else(|| panic!("engine invariant: {key} names a peer"));
            ids.push(id);
        }
    }
    ids.sort_by_key(EndpointId::number);
    Ok(ids)
}

/// Every peer id ever allocated (`r1` up to `kernel.nextPeer`).
fn every_peer_id(t: &TablesRef<'_>) -> Result<Vec<EndpointId>, StoreError> {
    let next = t.count(keys::NEXT_PEER)?.max(1);
    Ok((1..next)
        .map(|n| EndpointId::new(EndpointKind::Peer, n))
        .collect())
}

/// Ended peers purged in one sweep at most (each a crank).
const PURGES_PER_SWEEP_MAX: usize = 64;

/// The CapTP engine's operations on a kernel (its peers are endpoints).
pub trait Peers {
    /// Records a new connection's peer and returns its id.
    fn add_peer(&mut self, name: &str, outbound: bool) -> Result<EndpointId, KernelError>;

    /// `peer` speaks JSON CapTP (@endo/captp), tagging messages with `epoch`.
    fn speaks_json(&mut self, peer: &EndpointId, epoch: u64) -> Result<(), KernelError>;

    /// The connection to `peer` is gone: its questions fail, what it held
    /// is released (a slice per crank, like a terminated vat's), and
    /// messages to its objects are rejected with `reason`.
    fn remove_peer(&mut self, peer: &EndpointId, reason: &str) -> Result<(), KernelError>;

    /// Like [`Kernel::remove_peer`], telling the peer why with `Abort`.
    fn abort_peer(&mut self, peer: &EndpointId, reason: &str) -> Result<(), KernelError>;

    /// Forgets every client peer a previous run of this kernel was
    /// connected to (their connections died with it); kernel peers' sessions
    /// outlive connections and restarts.
    fn remove_stale_peers(&mut self) -> Result<(), KernelError>;

    /// The peers this kernel knows, connected or not.
    fn peers(&self) -> Result<Vec<PeerInfo>, KernelError>;

    /// The session with the kernel `did`, made if there is none; `address`
    /// is where to dial it (none: it dials us).
    fn session_peer(&mut self, did: &str, address: Option<&str>)
    -> Result<EndpointId, KernelError>;

    /// Kernel sessions this kernel dials: (peer, did, address).
    fn sessions_to_dial(&self) -> Result<Vec<(EndpointId, String, String)>, KernelError>;

    /// Records how `peer`'s connection is doing (shown by `vat peers`).
    fn set_peer_link(&mut self, peer: &EndpointId, link: PeerLink);

    fn peer_link(&self, peer: &EndpointId) -> Option<&PeerLink>;

    /// Whether `peer` is a kernel with a durable session.
    fn is_session(&self, peer: &EndpointId) -> Result<bool, KernelError>;

    /// How many session frames from `peer` this kernel has applied.
    fn session_received(&self, peer: &EndpointId) -> Result<u64, KernelError>;

    /// The session frames to `peer` numbered `from` on, as committed.
    fn session_frames_from(
        &self,
        peer: &EndpointId,
        from: u64,
    ) -> Result<Vec<Vec<u8>>, KernelError>;

    /// `peer` has applied our first `received` session frames: forget them.
    fn session_acknowledged(&mut self, peer: &EndpointId, received: u64)
    -> Result<(), KernelError>;

    /// Where the daemon accepts CapTP connections (`None`: it does not).
    fn set_listen_address(&mut self, address: Option<&str>) -> Result<(), KernelError>;

    fn listen_address(&self) -> Result<Option<String>, KernelError>;

    /// Makes a sturdy ref's swiss number for `kref`: whoever holds it can
    /// restore the object through the gate. The object stays alive for it.
    fn share(&mut self, kref: &Kref) -> Result<String, KernelError>;

    /// Asks `peer` (a connection we dialled) for the object behind `swiss`.
    /// Returns a promise for it, pinned until [`Kernel::release`].
    fn enliven(&mut self, peer: &EndpointId, swiss: &str) -> Result<Kref, KernelError>;

    /// Forgets a sturdy ref: its swiss number restores nothing from now
    /// on, and the object is no longer kept alive for it. False if there
    /// was no such sturdy ref.
    fn unshare(&mut self, swiss: &str) -> Result<bool, KernelError>;

    /// Records that the kernel session `peer` is connected or was just now.
    fn session_seen(&mut self, peer: &EndpointId) -> Result<(), KernelError>;

    /// Ends kernel sessions away longer than `session_away_max_s` (not
    /// `connected`), and purges ended peers past `ended_peers_kept_s` or
    /// beyond the `ended_peers_max` most recent. Returns the sessions ended.
    fn expire_peers(
        &mut self,
        limits: &crate::node::NetLimits,
        connected: &dyn Fn(&EndpointId) -> bool,
    ) -> Result<Vec<EndpointId>, KernelError>;

    /// What our question `question` to `peer` expects back (for decoding).
    fn return_kind(&self, peer: &EndpointId, question: u32) -> Option<ReturnKind>;

    /// Handles one decoded frame from `peer` in a crank of its own. A frame
    /// that breaks the protocol changes nothing: the peer is sent `Abort`
    /// and disconnected, and the reason is returned. A session
    /// frame (between kernels) is counted in the same crank as its effects,
    /// so a frame is applied exactly once however often it is resent.
    fn receive_message(
        &mut self,
        peer: &EndpointId,
        decoded: Result<Wire, wire::WireError>,
    ) -> Result<Option<String>, KernelError>;
}

impl Peers for Kernel {
    fn add_peer(&mut self, name: &str, outbound: bool) -> Result<EndpointId, KernelError> {
        self.in_crank(|k| {
            let id = EndpointId::new(EndpointKind::Peer, k.tables().next_id(keys::NEXT_PEER)?);
            k.tables().set(&keys::record(&id, "name"), name)?;
            k.tables().set(&keys::record(&id, "state"), "running")?;
            let direction = if outbound { "outbound" } else { "inbound" };
            k.tables().set(&keys::record(&id, "direction"), direction)?;
            k.tables().set(&keys::peer_open(&id), "")?;
            if k.tables_ref().get(keys::PEERS_INDEXED)?.is_none() {
                k.tables().set(keys::PEERS_INDEXED, "1")?;
            }
            Ok(id)
        })
    }

    fn speaks_json(&mut self, peer: &EndpointId, epoch: u64) -> Result<(), KernelError> {
        Ok(self.in_crank(|k| crate::endo::set_json(&mut k.tables(), peer, epoch))?)
    }

    fn remove_peer(&mut self, peer: &EndpointId, reason: &str) -> Result<(), KernelError> {
        if !crate::is_running(&self.tables_ref(), peer)? {
            return Ok(());
        }
        Ok(self.in_crank(|k| crate::terminate_peer(&mut k.tables(), peer, reason))?)
    }

    fn abort_peer(&mut self, peer: &EndpointId, reason: &str) -> Result<(), KernelError> {
        if !crate::is_running(&self.tables_ref(), peer)? {
            return Ok(());
        }
        let why = format!("peer {peer} disconnected: {reason}");
        Ok(self.in_crank(|k| crate::abort_in_crank(&mut k.tables(), peer, reason, &why))?)
    }

    fn remove_stale_peers(&mut self) -> Result<(), KernelError> {
        index_peers(self)?;
        for peer in peer_ids(&self.tables_ref())? {
            if crate::is_running(&self.tables_ref(), &peer)? {
                if self
                    .tables_ref()
                    .get(&keys::record(&peer, "did"))?
                    .is_some()
                {
                    continue;
                }
                self.remove_peer(
                    &peer,
                    &format!("peer {peer} disconnected: the kernel restarted"),
                )?;
            }
        }
        Ok(())
    }

    fn peers(&self) -> Result<Vec<PeerInfo>, KernelError> {
        let mut peers = Vec::new();
        for id in &peer_ids(&self.tables_ref())? {
            let Some(name) = self.tables_ref().get(&keys::record(&id, "name"))? else {
                continue;
            };
            let get = |field: &str| -> Result<String, KernelError> {
                Ok(self
                    .tables_ref()
                    .get(&keys::record(&id, field))?
                    .unwrap_or_default())
            };
            let mut state = get("state")?;
            let gone = state == "terminated";
            if gone {
                state = format!("disconnected ({})", get("reason")?);
            } else if crate::is_session(&self.tables_ref(), id)? {
                let unacknowledged = self
                    .tables_ref()
                    .scan_prefix(&keys::prefix(&id, "out."))?
                    .len();
                let link = match self.peer_link(id) {
                    Some(link) => link.to_string(),
                    None => "not connected".to_owned(),
                };
                state = format!("session, {link} ({unacknowledged} frames unacknowledged)");
            }
            let references = self
                .tables_ref()
                .scan_prefix(&keys::prefix(&id, "c.k"))?
                .len();
            peers.push(PeerInfo {
                id: id.clone(),
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

    fn session_peer(
        &mut self,
        did: &str,
        address: Option<&str>,
    ) -> Result<EndpointId, KernelError> {
        // The record is one the engine wrote: a peer id.
        let known = self.tables_ref().get(&keys::peer_of_did(&did))?;
        if let Some(peer) = known.as_deref().and_then(EndpointId::parse)
            && crate::is_running(&self.tables_ref(), &peer)?
        {
            // One side dials: a session the other kernel dials stays so,
            // even once we hold a sturdy ref to it too.
            let inbound = self
                .tables_ref()
                .get(&keys::record(&peer, "direction"))?
                .as_deref()
                == Some("inbound");
            if let Some(address) = address
                && !inbound
            {
                self.in_crank(|k| k.tables().set(&keys::record(&peer, "address"), address))?;
            }
            return Ok(peer);
        }
        let peer = self.add_peer(did, address.is_some())?;
        self.in_crank(|k| {
            k.tables().set(&keys::record(&peer, "did"), did)?;
            k.tables().set(&keys::peer_of_did(&did), &peer)?;
            match address {
                Some(address) => k.tables().set(&keys::record(&peer, "address"), address),
                None => Ok(()),
            }
        })?;
        Ok(peer)
    }

    fn sessions_to_dial(&self) -> Result<Vec<(EndpointId, String, String)>, KernelError> {
        let mut out = Vec::new();
        for (peer, did, address) in sessions(&self.tables_ref())? {
            if let Some(address) = address {
                out.push((peer, did, address));
            }
        }
        Ok(out)
    }

    fn set_peer_link(&mut self, peer: &EndpointId, link: PeerLink) {
        self.engine_memory_mut::<PeerLinks>()
            .0
            .insert(peer.to_owned(), link);
    }

    fn peer_link(&self, peer: &EndpointId) -> Option<&PeerLink> {
        self.engine_memory::<PeerLinks>()?.0.get(peer)
    }

    fn is_session(&self, peer: &EndpointId) -> Result<bool, KernelError> {
        Ok(crate::is_session(&self.tables_ref(), peer)?)
    }

    fn session_received(&self, peer: &EndpointId) -> Result<u64, KernelError> {
        Ok(self.tables_ref().count(&keys::record(&peer, "received"))?)
    }

    fn session_frames_from(
        &self,
        peer: &EndpointId,
        from: u64,
    ) -> Result<Vec<Vec<u8>>, KernelError> {
        let start = keys::frame_out(&peer, from);
        let prefix = keys::prefix(&peer, "out.");
        let mut frames = Vec::new();
        for (key, text) in self.tables_ref().scan_prefix(&prefix)? {
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

    fn session_acknowledged(
        &mut self,
        peer: &EndpointId,
        received: u64,
    ) -> Result<(), KernelError> {
        // Kept frames are numbered without gaps from the oldest to `sent`,
        // so only the oldest is looked up; a scan of them all, per
        // acknowledgement, grew with the frames in flight. A count past
        // what was sent (a confused or hostile peer) deletes no more than all.
        let prefix = keys::prefix(&peer, "out.");
        let Some((oldest, _)) = self.tables_ref().first_with_prefix(&prefix)? else {
            return Ok(());
        };
        let oldest: u64 = oldest[prefix.len()..]
            .parse()
            .unwrap_or_else(|_| panic!("kernel invariant: {oldest} names a frame number"));
        let sent = self.tables_ref().count(&keys::record(&peer, "sent"))?;
        let through = received.min(sent);
        if oldest >= through {
            return Ok(());
        }
        self.in_crank(|k| {
            (oldest..through).try_for_each(|seq| k.tables().delete(&keys::frame_out(&peer, seq)))
        })?;
        Ok(())
    }

    // ---- sturdy refs ----

    fn set_listen_address(&mut self, address: Option<&str>) -> Result<(), KernelError> {
        Ok(self.in_crank(|k| match address {
            Some(address) => k.tables().set(keys::LISTEN, address),
            None => k.tables().delete(keys::LISTEN),
        })?)
    }

    fn listen_address(&self) -> Result<Option<String>, KernelError> {
        Ok(self.tables_ref().get(keys::LISTEN)?)
    }

    fn share(&mut self, kref: &Kref) -> Result<String, KernelError> {
        if kref.is_promise() || !self.tables_ref().kref_exists(kref)? {
            return Err(KernelError::UnknownTarget(kref.to_string()));
        }
        let mut bytes = [0u8; 20];
        getrandom::fill(&mut bytes).map_err(|e| KernelError::Randomness(e.to_string()))?;
        let swiss = bs58::encode(bytes).into_string();
        self.in_crank(|k| {
            k.tables().set(&keys::sturdy(&swiss), kref)?;
            k.tables().incref(kref)
        })?;
        Ok(swiss)
    }

    fn enliven(&mut self, peer: &EndpointId, swiss: &str) -> Result<Kref, KernelError> {
        let kp = self.in_crank(|k| crate::enliven_in_crank(&mut k.tables(), peer, swiss))?;
        Ok(Kref::parse(&kp).expect("kernel invariant: promises are krefs"))
    }

    fn unshare(&mut self, swiss: &str) -> Result<bool, KernelError> {
        let key = keys::sturdy(&swiss);
        let Some(kref) = self.tables_ref().get(&key)? else {
            return Ok(false);
        };
        self.in_crank(|k| {
            k.tables().delete(&key)?;
            k.tables().decref(&kref)
        })?;
        Ok(true)
    }

    fn session_seen(&mut self, peer: &EndpointId) -> Result<(), KernelError> {
        let now = crate::unix_now_s().to_string();
        Ok(self.in_crank(|k| k.tables().set(&keys::record(&peer, "lastSeen"), &now))?)
    }

    fn expire_peers(
        &mut self,
        limits: &crate::node::NetLimits,
        connected: &dyn Fn(&EndpointId) -> bool,
    ) -> Result<Vec<EndpointId>, KernelError> {
        let now = crate::unix_now_s();
        let mut ended = Vec::new();
        for (peer, _, _) in sessions(&self.tables_ref())? {
            if connected(&peer) {
                continue;
            }
            let seen = self.tables_ref().get(&keys::record(&peer, "lastSeen"))?;
            let Some(seen) = seen.and_then(|text| text.parse::<u64>().ok()) else {
                // Sessions from before lastSeen was kept count from now.
                self.session_seen(&peer)?;
                continue;
            };
            if now.saturating_sub(seen) > limits.session_away_max_s {
                let reason = format!(
                    "away longer than {} s (session_away_max_s)",
                    limits.session_away_max_s
                );
                self.remove_peer(&peer, &reason)?;
                ended.push(peer);
            }
        }
        purge_ended_peers(self, now, limits)?;
        Ok(ended)
    }

    fn return_kind(&self, peer: &EndpointId, question: u32) -> Option<ReturnKind> {
        let text = self
            .tables_ref()
            .get(&keys::question(&peer, &question))
            .ok()??;
        let question: Question = serde_json::from_str(&text).ok()?;
        Some(match question.kind {
            QuestionKind::Exo => ReturnKind::Exo,
            QuestionKind::Bootstrap => ReturnKind::Bootstrap,
            QuestionKind::Restore => ReturnKind::Restore,
        })
    }

    fn receive_message(
        &mut self,
        peer: &EndpointId,
        decoded: Result<Wire, wire::WireError>,
    ) -> Result<Option<String>, KernelError> {
        if !crate::is_running(&self.tables_ref(), peer)? {
            return Ok(Some(format!("peer {peer} is disconnected")));
        }
        if tracing_frames() {
            eprintln!("{peer} <- {decoded:?}");
        }
        let handled = self.in_crank(|k| crate::receive_in_crank(&mut k.tables(), peer, decoded));
        match handled {
            Ok(()) => Ok(None),
            Err(MembraneError::Kernel(e)) => Err(e),
            Err(MembraneError::Protocol(ProtocolError(reason))) => {
                let why = format!("peer {peer} aborted: {reason}");
                self.in_crank(|k| crate::abort_in_crank(&mut k.tables(), peer, &reason, &why))?;
                Ok(Some(reason))
            }
        }
    }
}

/// The running kernel sessions: (peer, did, where we dial it, if we do).
fn sessions(t: &TablesRef<'_>) -> Result<Vec<(EndpointId, String, Option<String>)>, StoreError> {
    let mut out = Vec::new();
    for (key, id) in t.scan_prefix("peer.did.")? {
        let peer = EndpointId::parse(&id)
            .unwrap_or_else(|| panic!("engine invariant: {key} names a peer, not {id:?}"));
        if !crate::is_running(t, &peer)? {
            continue;
        }
        let did = key["peer.did.".len()..].to_owned();
        let address = t.get(&keys::record(&peer, "address"))?;
        out.push((peer, did, address));
    }
    out.sort_by_key(|(peer, _, _)| peer.number());
    Ok(out)
}

/// Builds the lists of live and ended peers for a store made before them
/// (a store that never had a peer gets its mark with its first peer).
fn index_peers(kernel: &mut Kernel) -> Result<(), KernelError> {
    let t = kernel.tables_ref();
    if t.get(keys::PEERS_INDEXED)?.is_some() || t.count(keys::NEXT_PEER)? == 0 {
        return Ok(());
    }
    let now = crate::unix_now_s().to_string();
    kernel.in_crank(|k| {
        for peer in every_peer_id(&k.tables_ref())? {
            match k
                .tables_ref()
                .get(&keys::record(&peer, "state"))?
                .as_deref()
            {
                Some("running") => k.tables().set(&keys::peer_open(&peer), "")?,
                Some(_) => k.tables().set(&keys::peer_ended(&peer), &now)?,
                None => {}
            }
        }
        k.tables().set(keys::PEERS_INDEXED, "1")
    })?;
    Ok(())
}

/// Deletes every key of ended peers past `ended_peers_kept_s`, and of the
/// oldest beyond `ended_peers_max`, once what they held is released.
fn purge_ended_peers(
    kernel: &mut Kernel,
    now: u64,
    limits: &crate::node::NetLimits,
) -> Result<(), KernelError> {
    let mut ended: Vec<(u64, EndpointId)> = Vec::new();
    for (key, at) in kernel.tables_ref().scan_prefix(keys::PEERS_ENDED)? {
        let peer = EndpointId::parse(&key[keys::PEERS_ENDED.len()..])
            .unwrap_or_else(|| panic!("engine invariant: {key} names a peer"));
        ended.push((at.parse().unwrap_or(0), peer));
    }
    ended.sort_by_key(|(at, peer)| (*at, peer.number()));
    let excess = ended.len().saturating_sub(limits.ended_peers_max);
    let due = ended
        .iter()
        .enumerate()
        .filter(|(i, (at, _))| *i < excess || now.saturating_sub(*at) > limits.ended_peers_kept_s)
        .map(|(_, (_, peer))| peer);
    for peer in due.take(PURGES_PER_SWEEP_MAX) {
        let clist = keys::prefix(&peer, "c.");
        if kernel.tables_ref().cleanup_pending(peer)?
            || kernel.tables_ref().first_with_prefix(&clist)?.is_some()
        {
            continue;
        }
        kernel.in_crank(|k| {
            for (key, _) in k.tables_ref().scan_prefix(&keys::peer_all(&peer))? {
                k.tables().delete(&key)?;
            }
            k.tables().delete(&keys::peer_ended(&peer))
        })?;
    }
    Ok(())
}
