//! A kernel on the network: the crank loop on the caller's thread, CapTP
//! connections (TCP or Unix sockets) on a tokio runtime beside it.
//!
//! Everything that changes the kernel happens on the loop's thread, in
//! cranks: a frame from a peer is a crank; frames to peers are written only
//! after the commit that made them (output gating). Connection tasks only
//! move bytes: each reads frames (refusing oversized ones from their
//! header) and hands them to the loop, and writes what the loop gives it.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use captp::sturdy::Address;
use captp::transport::{TransportError, read_frame, write_frames};
use captp::wire::Limits;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc as tmpsc;

use crate::{Kernel, KernelError};

/// How long dialling a peer may take (`connect_timeout_ms`).
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Cranks one turn of the loop runs before it looks at the network again.
pub const CRANKS_PER_TURN_MAX: usize = 1_000;

type BoxedRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxedWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// Errors of the network side.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("cannot start the network runtime: {0}")]
    Runtime(std::io::Error),
}

enum Event<A> {
    Accepted(BoxedRead, BoxedWrite, String),
    Frame(u64, Vec<u8>),
    /// A connection ended (or broke the framing): its peer is removed.
    Closed(u64, String),
    App(A),
}

enum Outgoing {
    Frames(Vec<Vec<u8>>),
    Close,
}

struct Connection {
    peer: String,
    writer: tmpsc::UnboundedSender<Outgoing>,
}

/// A kernel with its connections. `A` is what the application feeds the
/// loop besides the network (the daemon: CLI requests).
pub struct Node<A: Send + 'static> {
    kernel: Kernel,
    runtime: tokio::runtime::Runtime,
    events: mpsc::Receiver<Event<A>>,
    sender: mpsc::Sender<Event<A>>,
    limits: Limits,
    /// Live connections by connection number.
    connections: HashMap<u64, Connection>,
    /// Connection numbers by peer id.
    by_peer: HashMap<String, u64>,
    next_connection: u64,
}

impl<A: Send + 'static> std::fmt::Debug for Node<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
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
}

impl<A: Send + 'static> Node<A> {
    pub fn new(kernel: Kernel, limits: Limits) -> Result<Node<A>, NodeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(NodeError::Runtime)?;
        let (sender, events) = mpsc::channel();
        Ok(Node {
            kernel,
            runtime,
            events,
            sender,
            limits,
            connections: HashMap::new(),
            by_peer: HashMap::new(),
            next_connection: 1,
        })
    }

    pub fn kernel(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    pub fn into_kernel(self) -> Kernel {
        self.kernel
    }

    pub fn sender(&self) -> NodeSender<A> {
        NodeSender(self.sender.clone())
    }

    /// Accepts CapTP connections on `address`; each is a new peer. Returns
    /// the address as bound (a TCP port of 0 becomes the real one).
    pub fn listen(&mut self, address: &Address) -> Result<Address, NodeError> {
        let sender = self.sender.clone();
        match address {
            Address::Tcp(hostport) => {
                let listener = self
                    .runtime
                    .block_on(tokio::net::TcpListener::bind(hostport))
                    .map_err(|e| NodeError::Listen(hostport.clone(), e))?;
                let bound = listener
                    .local_addr()
                    .map_err(|e| NodeError::Listen(hostport.clone(), e))?;
                self.runtime.spawn(async move {
                    while let Ok((stream, from)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        let (read, write) = stream.into_split();
                        let event =
                            Event::Accepted(Box::new(read), Box::new(write), from.to_string());
                        if sender.send(event).is_err() {
                            break;
                        }
                    }
                });
                Ok(Address::Tcp(bound.to_string()))
            }
            Address::Unix(path) => {
                let _ = std::fs::remove_file(path);
                let listener = {
                    let _guard = self.runtime.enter();
                    tokio::net::UnixListener::bind(path)
                        .map_err(|e| NodeError::Listen(path.display().to_string(), e))?
                };
                self.runtime.spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let (read, write) = stream.into_split();
                        let event = Event::Accepted(Box::new(read), Box::new(write), "unix".into());
                        if sender.send(event).is_err() {
                            break;
                        }
                    }
                });
                Ok(address.clone())
            }
        }
    }

    /// The peer connected at `address` that we dialled, dialling it if
    /// there is none yet.
    pub fn connect(&mut self, address: &Address) -> Result<String, NodeError> {
        let text = address.to_string();
        for (peer, connection) in &self.by_peer {
            if self
                .kernel
                .state
                .get(&format!("{peer}.address"))
                .map_err(KernelError::from)?
                .as_deref()
                == Some(&text)
                && self.connections.contains_key(connection)
            {
                return Ok(peer.clone());
            }
        }
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let (read, write): (BoxedRead, BoxedWrite) = match address {
            Address::Tcp(hostport) => {
                let stream = self
                    .runtime
                    .block_on(async {
                        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(hostport))
                            .await
                    })
                    .map_err(|_| {
                        NodeError::Connect(
                            text.clone(),
                            format!("no answer in {CONNECT_TIMEOUT_MS} ms (connect_timeout_ms)"),
                        )
                    })?
                    .map_err(|e| NodeError::Connect(text.clone(), e.to_string()))?;
                let _ = stream.set_nodelay(true);
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
            Address::Unix(path) => {
                let stream = self
                    .runtime
                    .block_on(async {
                        tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path)).await
                    })
                    .map_err(|_| {
                        NodeError::Connect(
                            text.clone(),
                            format!("no answer in {CONNECT_TIMEOUT_MS} ms (connect_timeout_ms)"),
                        )
                    })?
                    .map_err(|e| NodeError::Connect(text.clone(), e.to_string()))?;
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
        };
        let peer = self.kernel.add_peer(&text, true)?;
        self.kernel.set_peer_address(&peer, &text)?;
        self.kernel.commit()?;
        self.attach(peer.clone(), read, write);
        Ok(peer)
    }

    fn attach(&mut self, peer: String, read: BoxedRead, write: BoxedWrite) {
        let number = self.next_connection;
        self.next_connection += 1;
        let (writer, mut outgoing) = tmpsc::unbounded_channel::<Outgoing>();
        let sender = self.sender.clone();
        let limits = self.limits;
        self.runtime.spawn(async move {
            let mut read = read;
            loop {
                match read_frame(&mut read, &limits).await {
                    Ok(Some(frame)) => {
                        if sender.send(Event::Frame(number, frame)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = sender.send(Event::Closed(
                            number,
                            "the peer closed the connection".into(),
                        ));
                        return;
                    }
                    Err(e) => {
                        let reason = match e {
                            TransportError::Wire(e) => format!("malformed frame: {e}"),
                            other => other.to_string(),
                        };
                        let _ = sender.send(Event::Closed(number, reason));
                        return;
                    }
                }
            }
        });
        self.runtime.spawn(async move {
            let mut write = write;
            while let Some(next) = outgoing.recv().await {
                match next {
                    Outgoing::Frames(frames) => {
                        if write_frames(&mut write, &frames).await.is_err() {
                            return;
                        }
                    }
                    Outgoing::Close => {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
                        return;
                    }
                }
            }
        });
        self.by_peer.insert(peer.clone(), number);
        self.connections.insert(number, Connection { peer, writer });
    }

    fn close(&mut self, number: u64) {
        if let Some(connection) = self.connections.remove(&number) {
            let _ = connection.writer.send(Outgoing::Close);
            self.by_peer.remove(&connection.peer);
        }
    }

    /// One turn: takes what arrived (waiting up to `wait` if there is
    /// nothing to do), runs cranks, commits, and sends what they made.
    /// Returns the application events that arrived.
    pub fn turn(&mut self, wait: Duration) -> Result<Vec<A>, NodeError> {
        let mut app = Vec::new();
        let mut busy = false;
        let first = match self.events.try_recv() {
            Ok(event) => Some(event),
            Err(_) => None,
        };
        let mut next = first;
        if next.is_none() && !self.kernel.has_work()? {
            next = self.events.recv_timeout(wait).ok();
        }
        let started = Instant::now();
        while let Some(event) = next {
            busy = true;
            match event {
                Event::App(a) => app.push(a),
                Event::Accepted(read, write, from) => {
                    let peer = self.kernel.add_peer(&from, false)?;
                    self.attach(peer, read, write);
                }
                Event::Frame(number, frame) => {
                    if let Some(peer) = self.connections.get(&number).map(|c| c.peer.clone())
                        && let Some(_reason) =
                            self.kernel.receive_frame(&peer, &frame, &self.limits)?
                    {
                        // The abort goes out with this turn's frames; then the connection closes.
                        self.flush()?;
                        self.close(number);
                    }
                }
                Event::Closed(number, reason) => {
                    if let Some(peer) = self.connections.get(&number).map(|c| c.peer.clone()) {
                        self.kernel.abort_peer(&peer, &reason)?;
                        self.flush()?;
                        self.close(number);
                    }
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
        Ok(app)
    }

    /// Commits, then writes the committed frames to their connections.
    pub fn flush(&mut self) -> Result<(), NodeError> {
        self.kernel.commit()?;
        let mut batches: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for (peer, frame) in self.kernel.take_outbound() {
            batches.entry(peer).or_default().push(frame);
        }
        for (peer, frames) in batches {
            if let Some(number) = self.by_peer.get(&peer)
                && let Some(connection) = self.connections.get(number)
            {
                let _ = connection.writer.send(Outgoing::Frames(frames));
            }
        }
        Ok(())
    }
}
