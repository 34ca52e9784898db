//! A kernel on the network: the crank loop on the caller's thread, CapTP
//! connections (TCP or Unix sockets) on a tokio runtime beside it.
//!
//! Everything that changes the kernel happens on the loop's thread, in
//! cranks: a frame from a peer is a crank; frames to peers are written only
//! after the commit that made them (output gating). Connection tasks only
//! move bytes: each reads frames (refusing oversized ones from their
//! header) and hands them to the loop, and writes what the loop gives it.
//!
//! Two kinds of peer:
//! - **clients** (any Cap'n Proto peer: pycapnp, capnp-rpc): level 1, one
//!   connection; when it ends, everything the peer held is released.
//! - **kernels**: a durable session. A connection starts with a handshake
//!   in questions numbered from [`EPHEMERAL_QUESTION_BASE`] (`Bootstrap`,
//!   then `Gate.hello` and `Gate.prove`: each side signs the other's nonce
//!   with its did:key and says how many session frames it has applied).
//!   Each side then resends what the other has not applied, from the frames
//!   it keeps in its store. Session frames are counted in the crank that
//!   applies them, so each is applied exactly once; `Gate.ack` lets the
//!   sender forget what was applied. The dialling side redials after any
//!   disconnection or restart.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use captp::sturdy::Address;
use captp::wire::{
    self, Call, CallContent, CapDescriptor, Limits, Message as Wire, ResultContent, Return,
    ReturnKind, ReturnOutcome, Target,
};
use tokio::sync::OwnedSemaphorePermit;

use kernel::{EndpointId, Kernel, KernelError};

use crate::net::{BoxedRead, BoxedWrite, Pipe, ReaderEvent, Ticket};
pub use crate::net::{NetLimitError, NetLimits};
use crate::{PeerLink, Peers};

/// Cranks one turn of the loop runs before it looks at the network again.
pub const CRANKS_PER_TURN_MAX: usize = 1_000;
/// Questions numbered from here are the connection's own (handshake and
/// acknowledgements), outside any session's numbering.
pub const EPHEMERAL_QUESTION_BASE: u32 = 0x8000_0000;
/// How often the loop looks for connections past their deadlines.
const SWEEP_INTERVAL_MS: u64 = 200;
/// How often it looks for sessions away too long and ended peers to purge.
const PEER_SWEEP_INTERVAL_MS: u64 = 1_000;
/// A session acknowledges what it applied once this many frames wait
/// (`ack_frames_min`)...
pub const ACK_FRAMES_MIN: u64 = 64;
/// ...or once the oldest has waited this long (`ack_interval_ms`). Acks
/// cost the sender a crank; few of them keep them off the critical path.
pub const ACK_INTERVAL_MS: u64 = 100;

const HELLO_CONTEXT: &[u8] = b"captp-hello";
const PROVE_CONTEXT: &[u8] = b"captp-prove";

/// Errors of the network side.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("cannot start the network runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach {0}: {1}")]
    Dial(String, String),
}

/// Signs with the kernel's key (ed25519).
pub type Signer = Box<dyn Fn(&[u8]) -> [u8; 64] + Send>;

/// Who this kernel is on the network: its did:key and a signer with its key.
pub struct Identity {
    pub did: String,
    pub sign: Signer,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("did", &self.did).finish()
    }
}

enum Event<A> {
    /// A connection a listener accepted (holding its place), or one made
    /// elsewhere (the HTTP face's WebSockets, which bound their own).
    Accepted(BoxedRead, BoxedWrite, Option<OwnedSemaphorePermit>),
    Dialed(EndpointId, BoxedRead, BoxedWrite),
    DialFailed(EndpointId, String),
    /// What connection `number`'s reader read.
    Read(u64, ReaderEvent),
    App(A),
}

/// A connection we dialled, in its handshake with the kernel `did`
/// (session `peer`); `proved` is the received count we told it, once we did.
struct Dialing {
    peer: EndpointId,
    did: String,
    nonce: [u8; 32],
    proved: Option<u64>,
}

impl Dialing {
    fn into_link(self) -> Link {
        Link::Dialing {
            peer: self.peer,
            did: self.did,
            nonce: self.nonce,
            proved: self.proved,
        }
    }
}

/// Where a connection is in its life.
enum Link {
    /// Accepted, nothing read yet: the first frame says who it is.
    Fresh,
    /// A client peer (level 1).
    Client(EndpointId),
    /// A kernel is introducing itself to us.
    Answering {
        nonce: [u8; 32],
        did: Option<String>,
    },
    /// We are introducing ourselves to the kernel `did` (session `peer`);
    /// `proved` is the received count we told it, once we did.
    Dialing {
        peer: EndpointId,
        did: String,
        nonce: [u8; 32],
        proved: Option<u64>,
    },
    /// An authenticated session with a kernel. The first `skip` frames it
    /// resends were applied meanwhile from the connection this one replaced.
    Session(EndpointId, u64),
}

struct Connection {
    link: Link,
    pipe: Pipe,
    /// Whether we dialled it (we keep it alive, and redial).
    dialled: bool,
    /// Whether it speaks JSON CapTP (@endo/captp) rather than Cap'n Proto.
    json: bool,
    next_question: u32,
    /// The received count we last acknowledged to the peer, and when.
    acknowledged: u64,
    acknowledged_at: Instant,
    /// When it was opened, when we last heard from it, and when we last
    /// said something on a quiet session to keep it alive.
    opened_at: Instant,
    heard_at: Instant,
    pinged_at: Instant,
    /// Frames taken in while the run queue was full: their reader stays
    /// held back until it drains ([`NetLimits::run_queue_intake_max`]).
    held: Vec<Ticket>,
}

impl Connection {
    /// Queues one of the connection's own small messages (handshake,
    /// acknowledgements). Past `outgoing_bytes_max` it is not queued; the
    /// next flush's frames find the peer not reading and cut it off.
    fn send(&self, message: &Wire) {
        let _ = self.push(vec![wire::encode(message)]);
    }

    fn push(&self, frames: Vec<Vec<u8>>) -> bool {
        self.pipe.push(frames)
    }

    /// A question number of the connection's own (acknowledgements).
    fn next_ephemeral_question(&mut self) -> u32 {
        let question = self.next_question;
        self.next_question = self
            .next_question
            .wrapping_add(1)
            .max(EPHEMERAL_QUESTION_BASE + 3);
        question
    }

    fn peer(&self) -> Option<&str> {
        match &self.link {
            Link::Client(peer) | Link::Session(peer, _) | Link::Dialing { peer, .. } => Some(peer),
            _ => None,
        }
    }
}

/// A kernel with its connections. `A` is what the application feeds the
/// loop besides the network (the daemon: CLI requests).
pub struct Node<A: Send + 'static> {
    kernel: Kernel,
    identity: Identity,
    runtime: tokio::runtime::Runtime,
    events: mpsc::Receiver<Event<A>>,
    sender: mpsc::Sender<Event<A>>,
    limits: Limits,
    net: NetLimits,
    connections: HashMap<u64, Connection>,
    /// Live connections by peer (clients and established sessions).
    by_peer: HashMap<EndpointId, u64>,
    next_connection: u64,
    /// Sessions to dial, and when; and those being dialled now.
    redial_at: HashMap<EndpointId, (Instant, Duration)>,
    dialing: HashSet<EndpointId>,
    swept_at: Instant,
    peers_swept_at: Instant,
    /// Whether the last wait for an event was within `spin_us`.
    last_wait_short: bool,
}

impl<A: Send + 'static> std::fmt::Debug for Node<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("did", &self.identity.did)
            .field("connections", &self.connections.len())
            .finish()
    }
}

/// A handle for feeding application events into the loop from other threads.
#[derive(Debug)]
pub struct NodeSender<A>(mpsc::Sender<Event<A>>);

impl<A> Clone for NodeSender<A> {
    fn clone(&self) -> Self {
        NodeSender(self.0.clone())
    }
}

impl<A> NodeSender<A> {
    /// False once the loop is gone.
    pub fn send(&self, event: A) -> bool {
        self.0.send(Event::App(event)).is_ok()
    }

    /// Hands the loop a connection made elsewhere, as if a listener had
    /// accepted it: the HTTP face's WebSockets, bridged to a byte stream
    /// of netstrings. False once the loop is gone.
    pub fn accept(
        &self,
        read: impl tokio::io::AsyncRead + Send + Unpin + 'static,
        write: impl tokio::io::AsyncWrite + Send + Unpin + 'static,
    ) -> bool {
        let event = Event::Accepted(Box::new(read), BoxedWrite::stream(write), None);
        self.0.send(event).is_ok()
    }
}

fn nonce() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // Without randomness a handshake cannot be fresh: better to stop.
    getrandom::fill(&mut bytes).expect("kernel invariant: the OS provides randomness");
    bytes
}

fn signed(context: &[u8], nonce: &[u8], did: &str) -> Vec<u8> {
    [context, nonce, did.as_bytes()].concat()
}

/// Why a kernel's introduction was refused.
#[derive(Debug, thiserror::Error)]
enum AuthError {
    #[error("expected kernel {expected}, found {found}")]
    WrongKernel { expected: String, found: String },
    #[error(transparent)]
    Signature(#[from] did_key::DidKeyError),
}

fn verify(did: &str, message: &[u8], signature: &[u8]) -> Result<(), AuthError> {
    Ok(did_key::DidKey::parse(did).and_then(|key| key.verify(message, signature))?)
}

/// Why dialling a kernel failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("no answer in {0} ms (connect_timeout_ms)")]
    Timeout(u64),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Whether a decoded frame belongs to the connection (handshake,
/// acknowledgements) rather than to the session it carries.
fn is_ephemeral(decoded: &Result<Wire, wire::WireError>) -> bool {
    match decoded {
        Ok(Wire::Call(Call { question: q, .. }))
        | Ok(Wire::Return(Return { answer: q, .. }))
        | Ok(Wire::Finish { question: q, .. }) => *q >= EPHEMERAL_QUESTION_BASE,
        _ => false,
    }
}

fn gate_call(question: u32, content: CallContent) -> Wire {
    Wire::Call(Call {
        question,
        target: Target::Imported(0),
        content,
        caps: vec![],
    })
}

fn gate_return(answer: u32, content: ResultContent, caps: Vec<CapDescriptor>) -> Wire {
    Wire::Return(Return {
        answer,
        release_param_caps: false,
        no_finish_needed: true,
        outcome: ReturnOutcome::Results { content, caps },
    })
}

async fn dial(address: Address, timeout_ms: u64) -> Result<(BoxedRead, BoxedWrite), DialError> {
    let timeout = Duration::from_millis(timeout_ms);
    let late = |_| DialError::Timeout(timeout_ms);
    match address {
        Address::Tcp(hostport) => {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&hostport))
                .await
                .map_err(late)??;
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            Ok((Box::new(read), BoxedWrite::socket(write)))
        }
        Address::Unix(path) => {
            let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(&path))
                .await
                .map_err(late)??;
            let (read, write) = stream.into_split();
            Ok((Box::new(read), BoxedWrite::socket(write)))
        }
    }
}

impl<A: Send + 'static> Node<A> {
    pub fn new(
        mut kernel: Kernel,
        identity: Identity,
        limits: Limits,
        net: NetLimits,
    ) -> Result<Node<A>, NodeError> {
        crate::attach(&mut kernel);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(NodeError::Runtime)?;
        let (sender, events) = mpsc::channel();
        let mut node = Node {
            kernel,
            identity,
            runtime,
            events,
            sender,
            limits,
            net,
            connections: HashMap::new(),
            by_peer: HashMap::new(),
            next_connection: 1,
            redial_at: HashMap::new(),
            dialing: HashSet::new(),
            swept_at: Instant::now(),
            peers_swept_at: Instant::now(),
            last_wait_short: true,
        };
        // Sessions this kernel dials resume now (after a restart too).
        for (peer, _, _) in node.kernel.sessions_to_dial()? {
            node.redial_at
                .insert(peer, (Instant::now(), Duration::from_millis(100)));
        }
        Ok(node)
    }

    pub fn kernel(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    pub fn sender(&self) -> NodeSender<A> {
        NodeSender(self.sender.clone())
    }

    /// Accepts CapTP connections on `address`, at most
    /// [`NetLimits::connections_max`] at once. Returns the address as bound
    /// (a TCP port of 0 becomes the real one).
    pub fn listen(&mut self, address: &Address) -> Result<Address, NodeError> {
        let sender = self.sender.clone();
        let deliver = move |read: BoxedRead, write: BoxedWrite, permit| {
            sender
                .send(Event::Accepted(read, write, Some(permit)))
                .is_ok()
        };
        let connections_max = self.net.connections_max;
        match address {
            Address::Tcp(hostport) => {
                let listener = self
                    .runtime
                    .block_on(tokio::net::TcpListener::bind(hostport))
                    .map_err(|e| NodeError::Listen(hostport.clone(), e))?;
                let bound = listener
                    .local_addr()
                    .map_err(|e| NodeError::Listen(hostport.clone(), e))?;
                self.runtime.spawn(crate::net::accept_loop(
                    listener,
                    |l| Box::pin(async move { l.accept().await.map(|(stream, _)| stream) }),
                    connections_max,
                    move |stream, permit| {
                        let _ = stream.set_nodelay(true);
                        let (read, write) = stream.into_split();
                        deliver(Box::new(read), BoxedWrite::socket(write), permit)
                    },
                ));
                Ok(Address::Tcp(bound.to_string()))
            }
            Address::Unix(path) => {
                let _ = std::fs::remove_file(path);
                let listener = {
                    let _guard = self.runtime.enter();
                    tokio::net::UnixListener::bind(path)
                        .map_err(|e| NodeError::Listen(path.display().to_string(), e))?
                };
                self.runtime.spawn(crate::net::accept_loop(
                    listener,
                    |l| Box::pin(async move { l.accept().await.map(|(stream, _)| stream) }),
                    connections_max,
                    move |stream, permit| {
                        let (read, write) = stream.into_split();
                        deliver(Box::new(read), BoxedWrite::socket(write), permit)
                    },
                ));
                Ok(address.clone())
            }
        }
    }

    /// The session with the kernel `did` at `address`, dialled if it is
    /// not up. Frames for it wait in the store until it is.
    pub fn session(&mut self, did: &str, address: &Address) -> Result<EndpointId, NodeError> {
        let peer = self.kernel.session_peer(did, Some(&address.to_string()))?;
        if !self.by_peer.contains_key(&peer) && !self.dialing.contains(&peer) {
            self.kernel.set_peer_link(&peer, PeerLink::Connecting);
            self.redial_at
                .insert(peer.clone(), (Instant::now(), Duration::from_millis(100)));
        }
        Ok(peer)
    }

    /// Dials the @endo/captp peer at `address` (JSON CapTP in netstrings)
    /// as a client of ours: a peer of its connection, gone with it. Waits
    /// up to `connect_timeout_ms` for the connection.
    pub fn connect_json(&mut self, address: &Address) -> Result<EndpointId, NodeError> {
        let timeout_ms = self.net.connect_timeout_ms;
        let stream = self
            .runtime
            .block_on(dial(address.clone(), timeout_ms))
            .map_err(|e| NodeError::Dial(address.to_string(), e.to_string()))?;
        let peer = self
            .kernel
            .add_peer(&format!("endo peer {address}"), true)?;
        self.kernel.speaks_json(&peer, 0)?;
        let number = self.attach(Link::Client(peer.clone()), stream, None);
        if let Some(connection) = self.connections.get_mut(&number) {
            connection.json = true;
            // Ours to keep: no idle timeout (@endo/captp has no keepalive).
            connection.dialled = true;
        }
        self.by_peer.insert(peer.clone(), number);
        Ok(peer)
    }

    /// The did:key and address of a session this kernel dials.
    fn dialled_session(&self, peer: &EndpointId) -> Result<Option<(String, String)>, NodeError> {
        Ok(self
            .kernel
            .sessions_to_dial()?
            .into_iter()
            .find(|(p, _, _)| p == peer)
            .map(|(_, did, address)| (did, address)))
    }

    fn start_dial(&mut self, peer: EndpointId) -> Result<(), NodeError> {
        let Some((_, address)) = self.dialled_session(&peer)? else {
            return Ok(());
        };
        let Ok(address) = Address::parse(&address) else {
            return Ok(());
        };
        self.dialing.insert(peer.clone());
        let sender = self.sender.clone();
        let timeout_ms = self.net.connect_timeout_ms;
        self.runtime.spawn(async move {
            let event = match dial(address, timeout_ms).await {
                Ok((read, write)) => Event::Dialed(peer, read, write),
                Err(reason) => Event::DialFailed(peer, reason.to_string()),
            };
            let _ = sender.send(event);
        });
        Ok(())
    }

    /// Dialling or the handshake failed: say why (`vat peers`), try later.
    fn dial_failed(&mut self, peer: &EndpointId, reason: &str) {
        self.dialing.remove(peer);
        self.kernel
            .set_peer_link(peer, PeerLink::NotConnected(reason.to_owned()));
        self.schedule_redial(peer);
    }

    /// Why the session with `peer` is not up, if it is not.
    pub fn session_error(&self, peer: &EndpointId) -> Option<String> {
        match self.kernel.peer_link(peer) {
            Some(link @ PeerLink::NotConnected(_)) => Some(link.to_string()),
            _ => None,
        }
    }

    fn schedule_redial(&mut self, peer: &EndpointId) {
        let backoff = self
            .redial_at
            .get(peer)
            .map_or(Duration::from_millis(100), |(_, b)| *b);
        let next = (backoff * 2).min(Duration::from_millis(self.net.redial_max_ms));
        self.redial_at
            .insert(peer.clone(), (Instant::now() + backoff, next));
    }

    fn attach(
        &mut self,
        link: Link,
        stream: (BoxedRead, BoxedWrite),
        permit: Option<OwnedSemaphorePermit>,
    ) -> u64 {
        let number = self.next_connection;
        self.next_connection += 1;
        let sender = self.sender.clone();
        let report = move |event| sender.send(Event::Read(number, event)).is_ok();
        let pipe = crate::net::start(&self.runtime, stream, self.limits, self.net, report, permit);
        let now = Instant::now();
        let dialled = matches!(link, Link::Dialing { .. });
        self.connections.insert(
            number,
            Connection {
                link,
                pipe,
                dialled,
                json: false,
                next_question: EPHEMERAL_QUESTION_BASE + 3,
                acknowledged: 0,
                acknowledged_at: now,
                opened_at: now,
                heard_at: now,
                pinged_at: now,
                held: Vec::new(),
            },
        );
        number
    }

    fn close(&mut self, number: u64) {
        if let Some(connection) = self.connections.remove(&number) {
            connection.pipe.close();
            if let Some(peer) = connection.peer()
                && self.by_peer.get(peer) == Some(&number)
            {
                self.by_peer.remove(peer);
            }
        }
    }

    /// Sends `Abort` on a connection (whatever its queue holds: it is the
    /// last word) and closes it.
    fn refuse(&mut self, number: u64, reason: &str) {
        if let Some(connection) = self.connections.get(&number) {
            let abort = Wire::Abort {
                reason: reason.to_owned(),
            };
            let frame = match connection.json {
                true => captp::json::encode(&abort, 0).expect("an Abort has a JSON message"),
                false => wire::encode(&abort),
            };
            connection.pipe.push_past_limit(vec![frame]);
        }
        self.close(number);
    }

    /// One turn: takes what arrived (waiting up to `wait` if there is
    /// nothing to do), runs cranks, commits, and sends what they made.
    /// Returns the application events that arrived.
    pub fn turn(&mut self, wait: Duration) -> Result<Vec<A>, NodeError> {
        self.dial_due()?;
        let mut app = Vec::new();
        let mut next = self.events.try_recv().ok();
        if next.is_none() && !self.kernel.has_work()? {
            next = self.wait_for_event(wait);
        }
        let started = Instant::now();
        let mut busy = false;
        // Handled frames' tickets are let go together after the flush: a
        // reader waiting for room is woken once a turn, not once a frame
        // (each wake is a syscall to its runtime's thread).
        let mut spent = Vec::new();
        while let Some(event) = next {
            busy = true;
            match event {
                Event::App(a) => app.push(a),
                Event::Accepted(read, write, permit) => {
                    self.attach(Link::Fresh, (read, write), permit);
                }
                Event::Dialed(peer, read, write) => self.dialed(peer, read, write)?,
                Event::DialFailed(peer, reason) => self.dial_failed(&peer, &reason),
                Event::Read(number, ReaderEvent::Frame(frame, ticket)) => {
                    self.frame(number, &frame)?;
                    spent.extend(self.take_in(number, ticket)?);
                }
                Event::Read(number, ReaderEvent::SpeaksJson) => {
                    if let Some(connection) = self.connections.get_mut(&number) {
                        connection.json = true;
                    }
                }
                Event::Read(number, ReaderEvent::Closed { reason, malformed }) => {
                    self.closed(number, &reason, malformed)?
                }
            }
            // Keep cranking even under a flood of frames.
            if started.elapsed() > Duration::from_millis(20) {
                break;
            }
            next = self.events.try_recv().ok();
        }
        let mut cranks = 0;
        while cranks < CRANKS_PER_TURN_MAX && self.kernel.step()? {
            cranks += 1;
        }
        if busy || cranks > 0 {
            self.flush()?;
        }
        drop(spent);
        self.acknowledge()?;
        self.sweep_when_due()?;
        Ok(app)
    }

    /// The next event within `wait`. While recent waits were short (a
    /// session's frames coming and going), it first polls for up to
    /// `spin_us` (`vat_supervisor::spin_us`, `VAT_SPIN_US`), giving the
    /// core away between polls: a thread asleep on the channel costs a
    /// wakeup (tens of microseconds on a virtual machine's idle core) per
    /// frame.
    fn wait_for_event(&mut self, wait: Duration) -> Option<Event<A>> {
        let started = Instant::now();
        let spin = Duration::from_micros(vat_supervisor::spin_us()).min(wait);
        if self.last_wait_short && !spin.is_zero() {
            while started.elapsed() < spin {
                if let Ok(event) = self.events.try_recv() {
                    return Some(event);
                }
                std::thread::yield_now();
            }
        }
        let event = self
            .events
            .recv_timeout(wait.saturating_sub(started.elapsed()))
            .ok();
        self.last_wait_short = started.elapsed() < spin || spin.is_zero();
        event
    }

    /// Dials the sessions whose redial time has come.
    fn dial_due(&mut self) -> Result<(), NodeError> {
        let now = Instant::now();
        let due: Vec<EndpointId> = self
            .redial_at
            .iter()
            .filter(|(peer, (at, _))| {
                *at <= now && !self.dialing.contains(*peer) && !self.by_peer.contains_key(*peer)
            })
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in due {
            self.start_dial(peer)?;
        }
        Ok(())
    }

    /// Now and then: connections past their deadlines, readers held back,
    /// sessions away too long, ended peers to purge.
    fn sweep_when_due(&mut self) -> Result<(), NodeError> {
        if self.swept_at.elapsed() >= Duration::from_millis(SWEEP_INTERVAL_MS) {
            self.swept_at = Instant::now();
            self.release_intake()?;
            self.sweep()?;
        }
        if self.peers_swept_at.elapsed() >= Duration::from_millis(PEER_SWEEP_INTERVAL_MS) {
            self.peers_swept_at = Instant::now();
            let by_peer = &self.by_peer;
            let ended = self
                .kernel
                .expire_peers(&self.net, &|peer| by_peer.contains_key(peer))?;
            for peer in ended {
                self.forgotten(&peer);
            }
        }
        Ok(())
    }

    /// Ends the peer `peer` by hand (`vat peers forget`): a connected one
    /// is sent `Abort`; a session's kept frames are deleted and it is not
    /// dialled again; what it held is released.
    pub fn forget_peer(&mut self, peer: &EndpointId) -> Result<(), NodeError> {
        let reason = "forgotten (vat peers forget)";
        if let Some(&number) = self.by_peer.get(peer) {
            self.refuse(number, reason);
        }
        self.kernel
            .remove_peer(peer, &format!("peer {peer} disconnected: {reason}"))?;
        self.forgotten(peer);
        Ok(())
    }

    /// `peer` is ended: nothing dials it or carries it any more.
    fn forgotten(&mut self, peer: &EndpointId) {
        self.redial_at.remove(peer);
        self.dialing.remove(peer);
        let carrying: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, connection)| connection.peer() == Some(peer.as_str()))
            .map(|(number, _)| *number)
            .collect();
        for number in carrying {
            self.close(number);
        }
    }

    /// A frame of connection `number` was handled: while the run queue is
    /// over [`NetLimits::run_queue_intake_max`], its ticket is kept, so
    /// that its reader, once it holds too many, reads no more. Otherwise
    /// the ticket is handed back, for the caller to let go.
    fn take_in(&mut self, number: u64, ticket: Ticket) -> Result<Option<Ticket>, NodeError> {
        if self.kernel.run_queue_length()? < self.net.run_queue_intake_max {
            return Ok(Some(ticket));
        }
        if let Some(connection) = self.connections.get_mut(&number) {
            connection.held.push(ticket);
        }
        Ok(None)
    }

    /// Lets held-back readers read again once the run queue has room.
    fn release_intake(&mut self) -> Result<(), NodeError> {
        if self.kernel.run_queue_length()? < self.net.run_queue_intake_max {
            for connection in self.connections.values_mut() {
                connection.held.clear();
            }
        }
        Ok(())
    }

    /// Connections past a deadline: a handshake not done in
    /// `handshake_timeout_ms`, a client silent for `idle_timeout_ms`, a
    /// session silent for `keepalive_timeout_ms` (taken for dead; the
    /// dialler redials). Quiet sessions we dialled are pinged.
    fn sweep(&mut self) -> Result<(), NodeError> {
        let net = self.net;
        let mut late = Vec::new();
        for (number, connection) in &mut self.connections {
            let silent_ms = connection.heard_at.elapsed().as_millis() as u64;
            let reason = match &connection.link {
                Link::Fresh | Link::Answering { .. } | Link::Dialing { .. }
                    if connection.opened_at.elapsed().as_millis() as u64
                        > net.handshake_timeout_ms =>
                {
                    format!(
                        "no handshake in {} ms (handshake_timeout_ms)",
                        net.handshake_timeout_ms
                    )
                }
                Link::Client(_) if !connection.dialled && silent_ms > net.idle_timeout_ms => {
                    format!("no frame in {} ms (idle_timeout_ms)", net.idle_timeout_ms)
                }
                Link::Session(..) if silent_ms > net.keepalive_timeout_ms => format!(
                    "nothing heard in {} ms (keepalive_timeout_ms)",
                    net.keepalive_timeout_ms
                ),
                Link::Session(..) => {
                    if connection.dialled
                        && silent_ms >= net.keepalive_interval_ms
                        && connection.pinged_at.elapsed().as_millis() as u64
                            >= net.keepalive_interval_ms
                    {
                        ping(connection);
                    }
                    continue;
                }
                _ => continue,
            };
            late.push((*number, reason));
        }
        for (number, reason) in late {
            self.cut_off(number, &reason)?;
        }
        Ok(())
    }

    /// Ends connection `number` for `reason`: a client is aborted (what it
    /// held is released); a session's connection is dropped, the session
    /// kept for the next one (the dialler redials at once).
    fn cut_off(&mut self, number: u64, reason: &str) -> Result<(), NodeError> {
        let Some(connection) = self.connections.get(&number) else {
            return Ok(());
        };
        match &connection.link {
            Link::Client(peer) => {
                let peer = peer.clone();
                self.kernel
                    .remove_peer(&peer, &format!("peer {peer} disconnected: {reason}"))?;
                self.refuse(number, reason);
            }
            Link::Session(peer, _) | Link::Dialing { peer, .. } => {
                let peer = peer.clone();
                let dialled = connection.dialled;
                self.session_connection_lost(&peer, number, reason)?;
                self.close(number);
                if dialled {
                    self.redial_at
                        .insert(peer, (Instant::now(), Duration::from_millis(100)));
                }
            }
            Link::Fresh | Link::Answering { .. } => self.refuse(number, reason),
        }
        Ok(())
    }

    /// Connection `number` of `peer`'s session is gone (not yet closed):
    /// if it was the one carrying the session, `vat peers` says why, and
    /// the session was last seen now.
    fn session_connection_lost(
        &mut self,
        peer: &EndpointId,
        number: u64,
        reason: &str,
    ) -> Result<(), NodeError> {
        self.dialing.remove(peer);
        if self.by_peer.get(peer) == Some(&number) {
            self.kernel
                .set_peer_link(peer, PeerLink::NotConnected(reason.to_owned()));
            self.kernel.session_seen(peer)?;
        }
        Ok(())
    }

    fn dialed(
        &mut self,
        peer: EndpointId,
        read: BoxedRead,
        write: BoxedWrite,
    ) -> Result<(), NodeError> {
        // `peer` stays in `dialing` until the handshake ends either way, so
        // a session never has two dialled connections at once.
        let Some((did, _)) = self.dialled_session(&peer)? else {
            return Ok(());
        };
        let nonce = nonce();
        let number = self.attach(
            Link::Dialing {
                peer: peer.clone(),
                did,
                nonce,
                proved: None,
            },
            (read, write),
            None,
        );
        let connection = &self.connections[&number];
        connection.send(&Wire::Bootstrap {
            question: EPHEMERAL_QUESTION_BASE,
        });
        connection.send(&Wire::Call(Call {
            question: EPHEMERAL_QUESTION_BASE + 1,
            target: Target::Answer {
                question: EPHEMERAL_QUESTION_BASE,
                transform: vec![],
            },
            content: CallContent::Hello {
                did: self.identity.did.clone(),
                nonce: nonce.to_vec(),
            },
            caps: vec![],
        }));
        Ok(())
    }

    fn closed(&mut self, number: u64, reason: &str, malformed: bool) -> Result<(), NodeError> {
        let Some(connection) = self.connections.get(&number) else {
            return Ok(());
        };
        match &connection.link {
            Link::Client(peer) => {
                let peer = peer.clone();
                self.kernel.abort_peer(&peer, reason)?;
                self.flush()?;
            }
            Link::Session(peer, _) | Link::Dialing { peer, .. } => {
                // The session outlives the connection; the dialler redials.
                let peer = peer.clone();
                self.session_connection_lost(&peer, number, reason)?;
                if self.dialled_session(&peer)?.is_some() {
                    self.schedule_redial(&peer);
                }
            }
            Link::Fresh | Link::Answering { .. } => {
                if malformed {
                    self.refuse(number, reason);
                    return Ok(());
                }
            }
        }
        self.close(number);
        Ok(())
    }

    fn send_to(&self, number: u64, message: &Wire) {
        if let Some(connection) = self.connections.get(&number) {
            connection.send(message);
        }
    }

    fn set_link(&mut self, number: u64, link: Link) {
        if let Some(connection) = self.connections.get_mut(&number) {
            connection.link = link;
        }
    }

    /// Hands a frame to the kernel as `peer`'s; a protocol error closes
    /// the connection once the `Abort` is out.
    fn hand_to_kernel(
        &mut self,
        number: u64,
        peer: &EndpointId,
        decoded: Result<Wire, wire::WireError>,
    ) -> Result<(), NodeError> {
        if self.kernel.receive_message(peer, decoded)?.is_some() {
            self.flush()?;
            self.close(number);
        }
        Ok(())
    }

    fn frame(&mut self, number: u64, frame: &[u8]) -> Result<(), NodeError> {
        let Some(connection) = self.connections.get_mut(&number) else {
            return Ok(());
        };
        connection.heard_at = Instant::now();
        if connection.json {
            return self.frame_json(number, frame);
        }
        // The link is taken out while the frame is handled, and put back.
        let link = std::mem::replace(&mut connection.link, Link::Fresh);
        let decoded = self.decode(&link, frame);
        match link {
            Link::Fresh => self.frame_fresh(number, decoded),
            Link::Client(peer) => {
                self.set_link(number, Link::Client(peer.clone()));
                self.hand_to_kernel(number, &peer, decoded)
            }
            Link::Answering { nonce, did } => self.frame_answering(number, nonce, did, decoded),
            Link::Dialing {
                peer,
                did,
                nonce,
                proved,
            } => {
                let dialing = Dialing {
                    peer,
                    did,
                    nonce,
                    proved,
                };
                self.frame_dialing(number, dialing, decoded)
            }
            Link::Session(peer, skip) => self.frame_session(number, peer, skip, decoded),
        }
    }

    /// A frame of a JSON CapTP connection: always a client (kernels speak
    /// Cap'n Proto); its first frame makes its peer, with its epoch.
    fn frame_json(&mut self, number: u64, frame: &[u8]) -> Result<(), NodeError> {
        let peer = match &self.connections[&number].link {
            Link::Client(peer) => Some(peer.clone()),
            _ => None,
        };
        let decoded = captp::json::decode(frame, &self.limits, &|q| match &peer {
            Some(peer) => self.kernel.return_kind(peer, q),
            None => None,
        });
        let peer = match peer {
            Some(peer) => peer,
            None => {
                let epoch = decoded.as_ref().map_or(0, |(_, epoch)| *epoch);
                let peer = self.kernel.add_peer("endo client", false)?;
                self.kernel.speaks_json(&peer, epoch)?;
                self.set_link(number, Link::Client(peer.clone()));
                self.by_peer.insert(peer.clone(), number);
                peer
            }
        };
        self.hand_to_kernel(number, &peer, decoded.map(|(message, _)| message))
    }

    /// Decodes a frame on `link`: what a return answers is known from the
    /// session's questions, or from the handshake's fixed numbering.
    fn decode(&self, link: &Link, frame: &[u8]) -> Result<Wire, wire::WireError> {
        match link {
            Link::Client(peer) | Link::Session(peer, _) => {
                wire::decode(frame, &self.limits, &|q| {
                    if q >= EPHEMERAL_QUESTION_BASE {
                        Some(ReturnKind::Empty)
                    } else {
                        self.kernel.return_kind(peer, q)
                    }
                })
            }
            _ => wire::decode(frame, &self.limits, &|q| {
                Some(match q.wrapping_sub(EPHEMERAL_QUESTION_BASE) {
                    0 => ReturnKind::Bootstrap,
                    1 => ReturnKind::Hello,
                    2 => ReturnKind::Prove,
                    _ => ReturnKind::Empty,
                })
            }),
        }
    }

    /// The first frame of an accepted connection: a kernel's handshake
    /// bootstrap, or a client's first message.
    fn frame_fresh(
        &mut self,
        number: u64,
        decoded: Result<Wire, wire::WireError>,
    ) -> Result<(), NodeError> {
        match decoded {
            Ok(Wire::Bootstrap { question }) if question >= EPHEMERAL_QUESTION_BASE => {
                let link = Link::Answering {
                    nonce: nonce(),
                    did: None,
                };
                self.set_link(number, link);
                let gate = vec![CapDescriptor::SenderHosted(0)];
                let answer = gate_return(question, ResultContent::Bootstrap(Some(0)), gate);
                self.send_to(number, &answer);
                Ok(())
            }
            decoded => {
                let peer = self.kernel.add_peer("client", false)?;
                self.set_link(number, Link::Client(peer.clone()));
                self.by_peer.insert(peer.clone(), number);
                self.hand_to_kernel(number, &peer, decoded)
            }
        }
    }

    /// A frame from a kernel introducing itself to us (hello, then prove).
    fn frame_answering(
        &mut self,
        number: u64,
        nonce: [u8; 32],
        did: Option<String>,
        decoded: Result<Wire, wire::WireError>,
    ) -> Result<(), NodeError> {
        match decoded {
            Ok(Wire::Call(Call {
                question,
                content:
                    CallContent::Hello {
                        did: theirs,
                        nonce: their_nonce,
                    },
                ..
            })) => self.answer_hello(number, nonce, question, theirs, &their_nonce),
            Ok(Wire::Call(Call {
                question,
                content:
                    CallContent::Prove {
                        signature,
                        received,
                    },
                ..
            })) => {
                let Some(theirs) = did else {
                    self.refuse(number, "prove before hello");
                    return Ok(());
                };
                let message = signed(PROVE_CONTEXT, nonce.as_slice(), &self.identity.did);
                if let Err(e) = verify(&theirs, &message, &signature) {
                    self.refuse(number, &format!("authentication failed: {e}"));
                    return Ok(());
                }
                let peer = self.kernel.session_peer(&theirs, None)?;
                self.establish(number, peer, received, Some(question), None)
            }
            Ok(Wire::Finish { .. } | Wire::Release { .. }) => {
                self.set_link(number, Link::Answering { nonce, did });
                Ok(())
            }
            Ok(other) => {
                let reason = format!("a kernel session starts with hello and prove, not {other:?}");
                self.refuse(number, &reason);
                Ok(())
            }
            Err(e) => {
                self.refuse(number, &format!("malformed frame: {e}"));
                Ok(())
            }
        }
    }

    /// A kernel's hello: we sign its nonce and send ours.
    fn answer_hello(
        &mut self,
        number: u64,
        nonce: [u8; 32],
        question: u32,
        theirs: String,
        their_nonce: &[u8],
    ) -> Result<(), NodeError> {
        if let Err(e) = did_key::DidKey::parse(&theirs) {
            self.refuse(number, &format!("hello: {e}"));
            return Ok(());
        }
        let signature = (self.identity.sign)(&signed(HELLO_CONTEXT, their_nonce, &theirs));
        let did = Some(theirs);
        self.set_link(number, Link::Answering { nonce, did });
        let content = ResultContent::Hello {
            did: self.identity.did.clone(),
            nonce: nonce.to_vec(),
            signature: signature.to_vec(),
        };
        self.send_to(number, &gate_return(question, content, vec![]));
        Ok(())
    }

    /// A frame on a connection we dialled, before its session is established.
    fn frame_dialing(
        &mut self,
        number: u64,
        dialing: Dialing,
        decoded: Result<Wire, wire::WireError>,
    ) -> Result<(), NodeError> {
        let Ok(message) = decoded else {
            self.refuse(number, "malformed frame in the handshake");
            self.dial_failed(&dialing.peer, "malformed frame in the handshake");
            return Ok(());
        };
        if let Wire::Abort { reason } = &message {
            self.close(number);
            self.dial_failed(&dialing.peer, &format!("it refused us: {reason}"));
            return Ok(());
        }
        // Anything but the hello and prove answers (the bootstrap's answer,
        // a stray release) leaves the handshake where it is.
        let (answer, outcome) = match message {
            Wire::Return(Return {
                answer, outcome, ..
            }) if answer != EPHEMERAL_QUESTION_BASE => (answer, outcome),
            _ => {
                self.set_link(number, dialing.into_link());
                return Ok(());
            }
        };
        match (answer.wrapping_sub(EPHEMERAL_QUESTION_BASE), outcome) {
            (
                1,
                ReturnOutcome::Results {
                    content:
                        ResultContent::Hello {
                            did: theirs,
                            nonce: their_nonce,
                            signature,
                        },
                    ..
                },
            ) => self.hello_answered(number, dialing, &theirs, &their_nonce, &signature),
            (
                2,
                ReturnOutcome::Results {
                    content: ResultContent::Prove { received },
                    ..
                },
            ) if dialing.proved.is_some() => {
                self.establish(number, dialing.peer, received, None, dialing.proved)
            }
            (_, outcome) => {
                let reason = format!("the handshake failed: {outcome:?}");
                self.refuse(number, &reason);
                self.dial_failed(&dialing.peer, &reason);
                Ok(())
            }
        }
    }

    /// The kernel we dialled answered our hello: we check its signature of
    /// our nonce, and prove ourselves with our signature of its nonce.
    fn hello_answered(
        &mut self,
        number: u64,
        mut dialing: Dialing,
        theirs: &str,
        their_nonce: &[u8],
        signature: &[u8],
    ) -> Result<(), NodeError> {
        let expected = signed(HELLO_CONTEXT, dialing.nonce.as_slice(), &self.identity.did);
        let checked = if theirs != dialing.did {
            Err(AuthError::WrongKernel {
                expected: dialing.did.clone(),
                found: theirs.to_owned(),
            })
        } else {
            verify(theirs, &expected, signature)
        };
        if let Err(e) = checked {
            let reason = format!("authentication failed: {e}");
            self.refuse(number, &reason);
            self.dial_failed(&dialing.peer, &reason);
            return Ok(());
        }
        let proof = (self.identity.sign)(&signed(PROVE_CONTEXT, their_nonce, theirs));
        self.flush()?;
        let received = self.kernel.session_received(&dialing.peer)?;
        dialing.proved = Some(received);
        self.set_link(number, dialing.into_link());
        let prove = Wire::Call(Call {
            question: EPHEMERAL_QUESTION_BASE + 2,
            target: Target::Answer {
                question: EPHEMERAL_QUESTION_BASE,
                transform: vec![],
            },
            content: CallContent::Prove {
                signature: proof.to_vec(),
                received,
            },
            caps: vec![],
        });
        self.send_to(number, &prove);
        Ok(())
    }

    /// A frame of an established session.
    fn frame_session(
        &mut self,
        number: u64,
        peer: EndpointId,
        skip: u64,
        decoded: Result<Wire, wire::WireError>,
    ) -> Result<(), NodeError> {
        if self.by_peer.get(&peer) != Some(&number) {
            // A newer connection carries this session now.
            self.close(number);
            return Ok(());
        }
        if skip > 0 && !is_ephemeral(&decoded) {
            // Resent, but applied already from the replaced connection.
            self.set_link(number, Link::Session(peer, skip - 1));
            return Ok(());
        }
        self.set_link(number, Link::Session(peer.clone(), 0));
        match decoded {
            Ok(Wire::Call(Call {
                question,
                content: CallContent::Ack { received },
                ..
            })) if question >= EPHEMERAL_QUESTION_BASE => {
                self.kernel.session_acknowledged(&peer, received)?;
                self.send_to(number, &gate_return(question, ResultContent::Empty, vec![]));
                Ok(())
            }
            Ok(Wire::Return(Return { answer: q, .. }) | Wire::Finish { question: q, .. })
                if q >= EPHEMERAL_QUESTION_BASE =>
            {
                Ok(())
            }
            decoded => self.hand_to_kernel(number, &peer, decoded),
        }
    }

    /// The handshake is done: the connection carries `peer`'s session. Each
    /// side resends what the other has not applied. `proved` is the count
    /// we told the peer (dialling side), if frames may have been applied
    /// since from an older connection.
    fn establish(
        &mut self,
        number: u64,
        peer: EndpointId,
        their_received: u64,
        answer: Option<u32>,
        proved: Option<u64>,
    ) -> Result<(), NodeError> {
        self.dialing.remove(&peer);
        // What is committed is what may be resent: commit first.
        self.flush()?;
        if let Some(old) = self.by_peer.get(&peer).copied()
            && old != number
        {
            self.close(old);
        }
        self.kernel.session_acknowledged(&peer, their_received)?;
        let frames = self.kernel.session_frames_from(&peer, their_received)?;
        let received = self.kernel.session_received(&peer)?;
        let Some(connection) = self.connections.get_mut(&number) else {
            return Ok(());
        };
        if let Some(answer) = answer {
            connection.send(&gate_return(
                answer,
                ResultContent::Prove { received },
                vec![],
            ));
        }
        connection.acknowledged = received;
        let skip = proved.map_or(0, |told| received.saturating_sub(told));
        connection.link = Link::Session(peer.clone(), skip);
        if !frames.is_empty() {
            connection.push(frames);
        }
        self.by_peer.insert(peer.clone(), number);
        self.redial_at.remove(&peer);
        self.kernel.set_peer_link(&peer, PeerLink::Connected);
        self.kernel.session_seen(&peer)?;
        Ok(())
    }

    /// Tells each session peer how many of its frames are applied (and
    /// committed), so it can forget them.
    fn acknowledge(&mut self) -> Result<(), NodeError> {
        // Only what is committed may be acknowledged: the peer forgets it.
        self.flush()?;
        for connection in self.connections.values_mut() {
            let Link::Session(peer, _) = &connection.link else {
                continue;
            };
            let received = self.kernel.session_received(peer)?;
            let waiting = received.saturating_sub(connection.acknowledged);
            let due = waiting >= ACK_FRAMES_MIN
                || (waiting > 0
                    && connection.acknowledged_at.elapsed()
                        >= Duration::from_millis(ACK_INTERVAL_MS));
            if due {
                connection.acknowledged = received;
                connection.acknowledged_at = Instant::now();
                connection.pinged_at = Instant::now();
                let question = connection.next_ephemeral_question();
                connection.send(&gate_call(question, CallContent::Ack { received }));
            }
        }
        Ok(())
    }

    /// Commits, then writes the committed frames to their connections.
    /// Frames for a session that is down stay in the store for its return.
    pub fn flush(&mut self) -> Result<(), NodeError> {
        self.kernel.commit()?;
        let mut batches: HashMap<EndpointId, Vec<Vec<u8>>> = HashMap::new();
        for (peer, frame) in self.kernel.take_outbound() {
            batches.entry(peer).or_default().push(frame);
        }
        let mut stalled = Vec::new();
        for (peer, frames) in batches {
            if let Some(number) = self.by_peer.get(peer.as_str())
                && let Some(connection) = self.connections.get(number)
                && !connection.push(frames)
            {
                stalled.push((*number, peer));
            }
        }
        for (number, _) in stalled {
            let reason = format!(
                "the peer does not read what it is sent (outgoing_bytes_max {})",
                self.net.outgoing_bytes_max
            );
            self.cut_off(number, &reason)?;
        }
        Ok(())
    }
}

/// Keeps a quiet session's connection alive: an acknowledgement of what
/// was acknowledged already, which the other side answers.
fn ping(connection: &mut Connection) {
    connection.pinged_at = Instant::now();
    let question = connection.next_ephemeral_question();
    let received = connection.acknowledged;
    connection.send(&gate_call(question, CallContent::Ack { received }));
}
