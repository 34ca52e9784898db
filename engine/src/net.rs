//! What one connection may cost, and the tasks that move its bytes.
//!
//! Every bound on a peer's connection is a field of [`NetLimits`], named
//! as the daemon's flags and errors name it. The tasks here only move
//! bytes: the reader hands frames to the crank loop and stops reading
//! while too many of them wait there (read backpressure); the writer
//! writes what the loop gives it, and gives up on a peer that does not
//! read. Listeners hold at most `connections_max` connections.
//!
//! The loop writes a socket's frames itself when the writer has nothing
//! queued and the socket takes them at once (it is non-blocking): a frame
//! then leaves without waking the writer task. What the socket does not
//! take goes to the writer, and everything after it too, in order.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use captp::transport::{TransportError, read_frame_within, read_netstring_within, write_frames};
use captp::wire::Limits;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc as tmpsc, watch};

pub(crate) type BoxedRead = Box<dyn AsyncRead + Unpin + Send>;

/// A connection's write half: the stream its writer task writes, and, when
/// it is a socket (TCP, Unix), a duplicate of the socket's descriptor, so
/// that the crank loop can write to it directly.
pub(crate) struct BoxedWrite {
    stream: Box<dyn AsyncWrite + Unpin + Send>,
    socket: Option<OwnedFd>,
}

impl BoxedWrite {
    /// The write half of a socket (`S`: a tokio TCP or Unix stream).
    pub(crate) fn socket<S: AsFd>(
        stream: impl AsyncWrite + AsRef<S> + Unpin + Send + 'static,
    ) -> Self {
        // Without a duplicate (no descriptors left), the writer writes all.
        let socket = stream.as_ref().as_fd().try_clone_to_owned().ok();
        BoxedWrite {
            stream: Box::new(stream),
            socket,
        }
    }

    /// Any other stream (a WebSocket bridged to bytes): the writer writes all.
    pub(crate) fn stream(stream: impl AsyncWrite + Unpin + Send + 'static) -> Self {
        BoxedWrite {
            stream: Box::new(stream),
            socket: None,
        }
    }
}

/// The bounds on what a peer's connection may cost the daemon. Each has a
/// name (the field's), a default, and an error or a `vat peers` reason
/// that names it when it is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLimits {
    /// Connections one listener holds at once (`connections_max`); more
    /// wait in the listener's backlog until one ends.
    pub connections_max: usize,
    /// Frames read from one connection that the crank loop has not taken in
    /// yet (`frames_in_flight_max`): the reader stops reading meanwhile.
    pub frames_in_flight_max: usize,
    /// Bytes of such frames (`bytes_in_flight_max`; at least a frame).
    pub bytes_in_flight_max: usize,
    /// While the run queue holds this many items, frames read from peers
    /// stay in flight (`run_queue_intake_max`): a flood waits in the
    /// peers' sockets, not in the store.
    pub run_queue_intake_max: u64,
    /// How long a connection may take to say who it is: a client's first
    /// frame, a kernel's whole handshake (`handshake_timeout_ms`).
    pub handshake_timeout_ms: u64,
    /// How long a client's connection may go without a frame (`idle_timeout_ms`).
    pub idle_timeout_ms: u64,
    /// How long the rest of a frame may take once it started (`frame_read_timeout_ms`).
    pub frame_read_timeout_ms: u64,
    /// Bytes waiting to be written to one connection (`outgoing_bytes_max`):
    /// a peer that does not read is cut off, with `Abort`, before more wait.
    pub outgoing_bytes_max: usize,
    /// How long a write may make no progress before the connection is
    /// dropped (`write_timeout_ms`).
    pub write_timeout_ms: u64,
    /// How often the dialling side of a quiet session says something
    /// (`keepalive_interval_ms`)...
    pub keepalive_interval_ms: u64,
    /// ...and how long either side waits, hearing nothing, before it takes
    /// the connection for dead (`keepalive_timeout_ms`); the dialler redials.
    pub keepalive_timeout_ms: u64,
    /// How long dialling a kernel may take (`connect_timeout_ms`).
    pub connect_timeout_ms: u64,
    /// The longest wait between dials of a kernel that stays away (`redial_max_ms`).
    pub redial_max_ms: u64,
    /// A kernel session whose peer stays away this long is ended: its kept
    /// frames deleted, what it held released (`session_away_max_s`).
    pub session_away_max_s: u64,
    /// Ended peers that `vat peers` still shows (`ended_peers_max`)...
    pub ended_peers_max: usize,
    /// ...for at most this long (`ended_peers_kept_s`); then nothing of
    /// them is left in the store.
    pub ended_peers_kept_s: u64,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            connections_max: 256,
            frames_in_flight_max: 64,
            bytes_in_flight_max: 2 << 20,
            run_queue_intake_max: 10_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 30 * 60 * 1000,
            frame_read_timeout_ms: 30_000,
            outgoing_bytes_max: 64 << 20,
            write_timeout_ms: 30_000,
            keepalive_interval_ms: 1_000,
            keepalive_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            redial_max_ms: 1_000,
            session_away_max_s: 7 * 24 * 3600,
            ended_peers_max: 100,
            ended_peers_kept_s: 3600,
        }
    }
}

/// A `NAME=VALUE` that names no limit, or a value that is no count.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetLimitError {
    #[error("no network limit is called {0:?} (known: {known})", known = NetLimits::NAMES.join(", "))]
    Unknown(String),
    #[error("{name}={value}: expected a whole number above 0")]
    BadValue { name: String, value: String },
    #[error("expected NAME=VALUE, such as idle_timeout_ms=60000, not {0:?}")]
    Syntax(String),
}

impl NetLimits {
    /// Every limit's name, as `vat start --net-limit NAME=VALUE` takes it.
    pub const NAMES: [&'static str; 16] = [
        "connections_max",
        "frames_in_flight_max",
        "bytes_in_flight_max",
        "run_queue_intake_max",
        "handshake_timeout_ms",
        "idle_timeout_ms",
        "frame_read_timeout_ms",
        "outgoing_bytes_max",
        "write_timeout_ms",
        "keepalive_interval_ms",
        "keepalive_timeout_ms",
        "connect_timeout_ms",
        "redial_max_ms",
        "session_away_max_s",
        "ended_peers_max",
        "ended_peers_kept_s",
    ];

    /// Sets one limit from `NAME=VALUE`.
    pub fn set(&mut self, assignment: &str) -> Result<(), NetLimitError> {
        let Some((name, value)) = assignment.split_once('=') else {
            return Err(NetLimitError::Syntax(assignment.to_owned()));
        };
        let bad = || NetLimitError::BadValue {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        let number: u64 = value.trim().parse().map_err(|_| bad())?;
        if number == 0 {
            return Err(bad());
        }
        let size = usize::try_from(number).map_err(|_| bad())?;
        match name.trim() {
            "connections_max" => self.connections_max = size,
            "frames_in_flight_max" => self.frames_in_flight_max = size,
            "bytes_in_flight_max" => self.bytes_in_flight_max = size,
            "run_queue_intake_max" => self.run_queue_intake_max = number,
            "handshake_timeout_ms" => self.handshake_timeout_ms = number,
            "idle_timeout_ms" => self.idle_timeout_ms = number,
            "frame_read_timeout_ms" => self.frame_read_timeout_ms = number,
            "outgoing_bytes_max" => self.outgoing_bytes_max = size,
            "write_timeout_ms" => self.write_timeout_ms = number,
            "keepalive_interval_ms" => self.keepalive_interval_ms = number,
            "keepalive_timeout_ms" => self.keepalive_timeout_ms = number,
            "connect_timeout_ms" => self.connect_timeout_ms = number,
            "redial_max_ms" => self.redial_max_ms = number,
            "session_away_max_s" => self.session_away_max_s = number,
            "ended_peers_max" => self.ended_peers_max = size,
            "ended_peers_kept_s" => self.ended_peers_kept_s = number,
            other => return Err(NetLimitError::Unknown(other.to_owned())),
        }
        Ok(())
    }
}

/// A frame the reader handed to the loop, holding its place in the
/// connection's in-flight bounds until the loop drops it.
#[derive(Debug)]
pub(crate) struct Ticket {
    _frame: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// What one connection's reader reports to the crank loop.
pub(crate) enum ReaderEvent {
    /// The peer speaks JSON CapTP (its first byte was a netstring's
    /// digit): its frames are the JSON texts of netstrings. Said once,
    /// before its first frame.
    SpeaksJson,
    Frame(Vec<u8>, Ticket),
    /// The connection ended; `malformed` when its peer sent a frame that is
    /// not one (or half of one): it is told why with `Abort`.
    Closed {
        reason: String,
        malformed: bool,
    },
}

/// Frames the loop writes to a connection.
pub(crate) enum Outgoing {
    Frames(Vec<Vec<u8>>),
    Close,
}

/// The loop's side of a connection's two tasks. Dropping it ends both:
/// the writer once it has written what it was given (within
/// `write_timeout_ms`), the reader at once.
#[derive(Debug)]
pub(crate) struct Pipe {
    writer: tmpsc::UnboundedSender<Outgoing>,
    /// Bytes handed to the writer and not yet written.
    queued: Arc<AtomicUsize>,
    /// The socket, for the loop's own writes while the writer is idle.
    socket: Option<OwnedFd>,
    /// Bytes the loop wrote itself (for tests of who wrote what).
    #[cfg(test)]
    direct_bytes: std::cell::Cell<usize>,
    outgoing_bytes_max: usize,
    _stop: watch::Sender<()>,
}

impl Pipe {
    /// Queues frames for the writer, each unless it would put more than
    /// `outgoing_bytes_max` bytes in its queue (a frame always goes to an
    /// empty queue): then it and those after it are not queued, and the
    /// answer is false (the peer is not reading what it is sent).
    pub(crate) fn push(&self, frames: Vec<Vec<u8>>) -> bool {
        let mut queued = self.queued.load(Ordering::Relaxed);
        let mut fits = 0;
        for frame in &frames {
            if queued > 0 && queued + frame.len() > self.outgoing_bytes_max {
                break;
            }
            queued += frame.len();
            fits += 1;
        }
        let all = fits == frames.len();
        let mut frames: Vec<Vec<u8>> = frames.into_iter().take(fits).collect();
        // Nothing queued: the writer is idle, and only this loop gives it work.
        if let Some(socket) = &self.socket
            && self.queued.load(Ordering::Acquire) == 0
        {
            #[cfg(test)]
            let before: usize = frames.iter().map(Vec::len).sum();
            frames = write_now(socket, frames);
            #[cfg(test)]
            self.direct_bytes
                .set(self.direct_bytes.get() + before - frames.iter().map(Vec::len).sum::<usize>());
        }
        if !frames.is_empty() {
            self.push_past_limit(frames);
        }
        all
    }

    /// Queues frames whatever the queue holds: the last word (`Abort`).
    pub(crate) fn push_past_limit(&self, frames: Vec<Vec<u8>>) {
        let bytes: usize = frames.iter().map(Vec::len).sum();
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        let _ = self.writer.send(Outgoing::Frames(frames));
    }

    pub(crate) fn close(&self) {
        let _ = self.writer.send(Outgoing::Close);
    }
}

/// Writes `frames` to `socket` without blocking, and returns what it did
/// not take: the rest of the frame it stopped in, then the frames after it.
/// An error leaves the rest to the writer, which meets it too and ends.
fn write_now(socket: &OwnedFd, frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    // Frames are self-delimiting, so a crank's frames leave in one send:
    // on loopback each send also runs the receiving side's TCP stack and
    // wakes its reader, tens of microseconds a time.
    let frames = match frames.len() {
        0 | 1 => frames,
        _ => vec![frames.concat()],
    };
    let mut frames = frames.into_iter();
    while let Some(frame) = frames.next() {
        let mut written = 0;
        while written < frame.len() {
            let rest = &frame[written..];
            // SAFETY: `rest` is valid for `rest.len()` bytes, and the
            // descriptor is open (owned here). MSG_NOSIGNAL: a peer gone
            // is an error returned, not a SIGPIPE.
            let sent = unsafe {
                libc::send(
                    socket.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if sent > 0 {
                written += sent as usize;
                continue;
            }
            if sent < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
                continue;
            }
            let mut left = vec![frame[written..].to_vec()];
            left.extend(frames);
            return left;
        }
    }
    Vec::new()
}

/// Starts a connection's reader and writer on `runtime`; `report` takes
/// what the reader reads. `permit` is the listener's place for it, if a
/// listener accepted it: it is given back when the reader ends.
pub(crate) fn start(
    runtime: &tokio::runtime::Runtime,
    (read, write): (BoxedRead, BoxedWrite),
    limits: Limits,
    net: NetLimits,
    report: impl Fn(ReaderEvent) -> bool + Send + 'static,
    permit: Option<OwnedSemaphorePermit>,
) -> Pipe {
    let (writer, outgoing) = tmpsc::unbounded_channel::<Outgoing>();
    let queued = Arc::new(AtomicUsize::new(0));
    let BoxedWrite {
        stream: write,
        socket,
    } = write;
    let (stop, stopped) = watch::channel(());
    let reader = read_frames(read, limits, net, report, stopped);
    runtime.spawn(async move {
        reader.await;
        drop(permit);
    });
    runtime.spawn(write_frames_out(write, outgoing, queued.clone(), net));
    Pipe {
        writer,
        queued,
        socket,
        #[cfg(test)]
        direct_bytes: Default::default(),
        outgoing_bytes_max: net.outgoing_bytes_max,
        _stop: stop,
    }
}

/// Reads frames into `report` until the connection ends or the loop drops
/// its [`Pipe`]: then says why, and whether its peer sent a malformed frame.
async fn read_frames(
    read: BoxedRead,
    limits: Limits,
    net: NetLimits,
    report: impl Fn(ReaderEvent) -> bool,
    mut stopped: watch::Receiver<()>,
) {
    let mut read = BufReader::new(read);
    let json = tokio::select! {
        _ = stopped.changed() => return drain(read, net.write_timeout_ms).await,
        first = read.fill_buf() => matches!(first, Ok([b'0'..=b'9', ..])),
    };
    if json && !report(ReaderEvent::SpeaksJson) {
        return;
    }
    let frames = Arc::new(Semaphore::new(net.frames_in_flight_max.max(1)));
    let bytes_max = net.bytes_in_flight_max.max(limits.frame_bytes_max);
    let bytes = Arc::new(Semaphore::new(bytes_max));
    let rest_ms = Some(net.frame_read_timeout_ms);
    let outcome = loop {
        let reading = async {
            if json {
                read_netstring_within(&mut read, &limits, rest_ms).await
            } else {
                read_frame_within(&mut read, &limits, rest_ms).await
            }
        };
        let next = tokio::select! {
            _ = stopped.changed() => return drain(read, net.write_timeout_ms).await,
            next = reading => next,
        };
        let frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => break ("the peer closed the connection".to_owned(), false),
            Err(TransportError::Wire(e)) => break (format!("malformed frame: {e}"), true),
            // Said with `Abort`, like a malformed frame: the peer is there.
            Err(e @ TransportError::SlowFrame(_)) => break (e.to_string(), true),
            Err(other) => break (other.to_string(), false),
        };
        // Waits (reading nothing more) while the loop holds too much of ours.
        let size = u32::try_from(frame.len().min(bytes_max)).unwrap_or(u32::MAX);
        let ticket = tokio::select! {
            _ = stopped.changed() => return drain(read, net.write_timeout_ms).await,
            ticket = take_ticket(&frames, &bytes, size) => ticket,
        };
        if !report(ReaderEvent::Frame(frame, ticket)) {
            return;
        }
    };
    let (reason, malformed) = outcome;
    report(ReaderEvent::Closed { reason, malformed });
}

/// Reads and drops what the peer still sends, until it closes or
/// `patience_ms` pass, so that the connection the loop ended closes
/// cleanly: a socket closed with bytes unread is reset, and a reset throws
/// away what the peer had not read yet, the last words (`Abort`) among them.
async fn drain(mut read: impl AsyncRead + Unpin, patience_ms: u64) {
    let mut scratch = vec![0u8; 16 << 10];
    let draining = async {
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut read, &mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(patience_ms), draining).await;
}

async fn take_ticket(frames: &Arc<Semaphore>, bytes: &Arc<Semaphore>, size: u32) -> Ticket {
    let frame = frames.clone().acquire_owned().await;
    let bytes = bytes.clone().acquire_many_owned(size).await;
    match (frame, bytes) {
        (Ok(frame), Ok(bytes)) => Ticket {
            _frame: frame,
            _bytes: bytes,
        },
        _ => panic!("engine invariant: a reader's semaphores are never closed"),
    }
}

/// Writes what the loop queues, until it says close or drops its end. A
/// write that makes no progress for `write_timeout_ms` ends the connection.
async fn write_frames_out(
    mut write: Box<dyn AsyncWrite + Unpin + Send>,
    mut outgoing: tmpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
    net: NetLimits,
) {
    let patience = Duration::from_millis(net.write_timeout_ms);
    while let Some(Outgoing::Frames(frames)) = outgoing.recv().await {
        match tokio::time::timeout(patience, write_frames(&mut write, &frames)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let bytes = frames.iter().map(Vec::len).sum();
        // Release: the loop writes itself only after this, seeing zero.
        queued.fetch_sub(bytes, Ordering::Release);
    }
    let _ = tokio::time::timeout(patience, tokio::io::AsyncWriteExt::shutdown(&mut write)).await;
}

/// `accept_retry_ms`: how long a listener waits after a failed accept
/// (such as running out of file descriptors) before it tries again.
const ACCEPT_RETRY_MS: u64 = 100;

/// Accepts connections until `deliver` says the loop is gone, holding at
/// most `connections_max` at once: past that, the next accept waits for a
/// connection to end (newcomers wait in the backlog). A failed accept (too
/// many open files, a connection reset before it was accepted) is said on
/// stderr, and the listener waits a little and goes on.
pub(crate) async fn accept_loop<L, S>(
    listener: L,
    accept: for<'a> fn(&'a L) -> Accepting<'a, S>,
    connections_max: usize,
    deliver: impl Fn(S, OwnedSemaphorePermit) -> bool,
) {
    let places = Arc::new(Semaphore::new(connections_max.max(1)));
    loop {
        let Ok(permit) = places.clone().acquire_owned().await else {
            return;
        };
        match accept(&listener).await {
            Ok(stream) => {
                if !deliver(stream, permit) {
                    return;
                }
            }
            Err(e) => {
                eprintln!("accept failed ({e}); listening on in {ACCEPT_RETRY_MS} ms");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
        }
    }
}

/// A listener's next connection, accepted.
pub(crate) type Accepting<'a, S> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<S>> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A frame whose bytes say which frame it is and where in it they are.
    fn frame(number: u32, len: usize) -> Vec<u8> {
        (0..len).map(|i| (number as usize * 7 + i) as u8).collect()
    }

    /// Frames pushed while the writer is idle go out directly, those that
    /// do not fit the socket go to the writer, and the peer reads every
    /// byte in push order either way.
    #[test]
    fn frames_leave_in_order_whoever_writes_them() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let stream = runtime
            .block_on(tokio::net::TcpStream::connect(address))
            .unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let (read, write) = stream.into_split();
        let net = NetLimits {
            outgoing_bytes_max: usize::MAX,
            ..NetLimits::default()
        };
        let pipe = start(
            &runtime,
            (Box::new(read), BoxedWrite::socket(write)),
            Limits::default(),
            net,
            |_| true,
            None,
        );
        assert!(pipe.socket.is_some(), "a TCP stream is written directly");
        // Small frames first (the socket takes them at once), then more
        // than its buffers hold while the peer reads nothing, then small
        // ones again (behind what the writer still has).
        let mut expected = Vec::new();
        let mut number = 0;
        let mut push = |count: usize, len: usize| {
            let frames: Vec<Vec<u8>> = (0..count)
                .map(|_| {
                    number += 1;
                    frame(number, len)
                })
                .collect();
            frames.iter().for_each(|f| expected.extend_from_slice(f));
            assert!(pipe.push(frames));
        };
        push(3, 100);
        assert_eq!(pipe.direct_bytes.get(), 300, "an idle writer is not woken");
        push(40, 1 << 20);
        // The peer reads nothing yet: the socket took what its buffers
        // hold, and the writer has the rest.
        let direct = pipe.direct_bytes.get();
        assert!(direct > 300 && direct < 300 + (40 << 20), "{direct}");
        assert!(pipe.queued.load(Ordering::Acquire) > 0);
        push(5, 100);
        assert_eq!(
            pipe.direct_bytes.get(),
            direct,
            "nothing overtakes the writer"
        );
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).unwrap();
        assert!(got == expected, "the peer read the frames out of order");
    }

    #[test]
    fn every_named_limit_can_be_set_and_bad_ones_are_refused() {
        for name in NetLimits::NAMES {
            let mut limits = NetLimits::default();
            limits.set(&format!("{name}=7")).unwrap();
            assert_ne!(limits, NetLimits::default(), "{name} set nothing");
        }
        let mut limits = NetLimits::default();
        assert!(matches!(
            limits.set("idle_timeout=5"),
            Err(NetLimitError::Unknown(_))
        ));
        for bad in [
            "idle_timeout_ms=0",
            "idle_timeout_ms=-1",
            "idle_timeout_ms=x",
        ] {
            assert!(
                matches!(limits.set(bad), Err(NetLimitError::BadValue { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            limits.set("idle_timeout_ms"),
            Err(NetLimitError::Syntax(_))
        ));
        assert_eq!(
            limits,
            NetLimits::default(),
            "a refused setting changes nothing"
        );
    }
}
