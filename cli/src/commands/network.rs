//! CapTP from the command line: sturdy refs to share, peers to list, and
//! the checks before the daemon dials a sturdy ref.

use anyhow::{Result, bail};
use captp::sturdy::{Address, SturdyRef};
use captp_engine::Peers;
use kernel::Kernel;

use crate::home::Home;
use crate::request::Outcome;

/// How many disconnected peers `vat peers` lists (the most recent).
const PEERS_GONE_SHOWN: usize = 10;

pub fn share(
    home: &Home,
    kernel: &mut Kernel,
    target: &str,
    web: bool,
    out: &mut Outcome,
) -> Result<()> {
    let kref = kernel.resolve_reference(target)?;
    if web {
        let Some(face) = home.face_address() else {
            bail!("the daemon serves no HTTP face: start it with `vat start --http`");
        };
        let swiss = kernel.share(&kref)?;
        out.line(crate::face::world_url(face, &swiss.to_string()));
        return Ok(());
    }
    let Some(address) = kernel.listen_address()? else {
        bail!("the daemon is not listening for CapTP: start it with `vat start --listen ADDR`");
    };
    let swiss = kernel.share(&kref)?;
    let address = Address::parse(&address)?;
    out.line(SturdyRef {
        did: home.did(),
        address,
        swiss,
    });
    Ok(())
}

pub fn peers(kernel: &mut Kernel, out: &mut Outcome) -> Result<()> {
    let peers = kernel.peers()?;
    if peers.is_empty() {
        out.line("no peers");
    }
    // Clients that came and went are many and alike: the last few are
    // shown, the rest counted.
    let gone: Vec<_> = peers.iter().filter(|p| p.gone).collect();
    let hidden = gone.len().saturating_sub(PEERS_GONE_SHOWN);
    let hide: std::collections::HashSet<&str> =
        gone.iter().take(hidden).map(|p| p.id.as_str()).collect();
    for peer in peers.iter().filter(|p| !hide.contains(p.id.as_str())) {
        out.line(format!(
            "{} {} {} {} references {}",
            peer.id, peer.direction, peer.name, peer.state, peer.references
        ));
    }
    if hidden > 0 {
        out.line(format!("(and {hidden} more disconnected peers)"));
    }
    Ok(())
}

/// A peer id as `vat peers` lists it, of a peer this kernel knows.
pub fn peer_id(kernel: &Kernel, text: &str) -> Result<kernel::EndpointId> {
    let id = kernel::EndpointId::parse(text)
        .filter(|id| id.kind() == kernel::EndpointKind::Peer)
        .ok_or_else(|| {
            anyhow::anyhow!("{text:?} is no peer id (r<N>, as `vat peers` lists them)")
        })?;
    let known = kernel.peers()?.into_iter().find(|p| p.id == id);
    match known {
        None => bail!("no peer {id}"),
        Some(peer) if peer.gone => bail!("peer {id} has ended already"),
        Some(_) => Ok(id),
    }
}

/// Ends a peer with no daemon running (so with no connection to close).
pub fn forget(kernel: &mut Kernel, peer: &str, out: &mut Outcome) -> Result<()> {
    let peer = peer_id(kernel, peer)?;
    let reason = format!("peer {peer} disconnected: forgotten (vat peers forget)");
    kernel.remove_peer(&peer, &reason)?;
    out.line(format!("forgot {peer}"));
    Ok(())
}

/// Forgets a sturdy ref of this kernel, given whole or as its swiss number.
pub fn unshare(home: &Home, kernel: &mut Kernel, text: &str, out: &mut Outcome) -> Result<()> {
    let swiss = if text.contains("://") {
        let sturdy = SturdyRef::parse(text)?;
        if sturdy.did != home.did() {
            bail!(
                "that sturdy ref names another kernel ({}): only it can forget it",
                sturdy.did
            );
        }
        sturdy.swiss
    } else {
        text.to_owned()
    };
    if !kernel.unshare(&swiss)? {
        bail!("no sturdy ref {swiss} (never shared, or unshared already)");
    }
    out.line(format!("unshared {swiss}: it restores nothing from now on"));
    Ok(())
}

/// A pet name an enliven may bind: well formed and free.
pub fn check_bind_name(kernel: &Kernel, bind_as: &str) -> Result<()> {
    kernel::check_name(bind_as)?;
    if let Some(kref) = kernel.pet_name(bind_as)? {
        bail!("pet name {bind_as:?} is already bound (to {kref})");
    }
    Ok(())
}

/// Checks an enliven before it dials: the name is free, and the sturdy ref
/// names another kernel. Returns the parsed sturdy ref.
pub fn enliven_target(
    kernel: &Kernel,
    home_did: &str,
    uri: &str,
    bind_as: &str,
) -> Result<SturdyRef> {
    check_bind_name(kernel, bind_as)?;
    let sturdy = SturdyRef::parse(uri)?;
    if sturdy.did == home_did {
        bail!("that sturdy ref names an object of this kernel: use it directly");
    }
    Ok(sturdy)
}
