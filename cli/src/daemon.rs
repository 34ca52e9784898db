//! `vat start`: the home's daemon. It keeps one kernel (and its vats'
//! workers) up, serves requests over `HOME/vat.sock`, and CapTP when it
//! listens, until `vat stop`.
//!
//! A send is answered when its result settles, without holding up other
//! requests: it waits as a [`Waiter`] while the node turns.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use captp_engine::Peers;
use captp_engine::node::{Identity, Node};
use kernel::{CommitPolicy, EndpointId, Kref, PromiseState};

use crate::commands::{enliven_target, execute, finish_send, run_job, start_send};
use crate::home::Home;
use crate::request::{Outcome, REQUEST_BYTES_MAX, Request};

/// How long the daemon waits for a result before answering the CLI that
/// it has none yet (`send_timeout_ms`); the message stays queued.
const SEND_TIMEOUT_MS: u64 = 60_000;
/// How long one turn waits for network or socket input, with and without
/// sends waiting on results.
const TURN_IDLE_MS: u64 = 200;
const TURN_WAITING_MS: u64 = 5;

/// Removes the socket when the daemon ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A request from the CLI socket, with the connection to answer on.
struct CliRequest {
    request: std::io::Result<Result<Request, serde_json::Error>>,
    stream: UnixStream,
}

/// A send (or enliven) the daemon answers once its result settles.
struct Waiter {
    kpid: Kref,
    /// For an enliven: the session it waits on (it fails fast if that
    /// cannot connect).
    session: Option<EndpointId>,
    bind_as: Option<String>,
    idempotency_key: Option<String>,
    stream: UnixStream,
    deadline: Instant,
}

/// A `vat job run` whose tasks wait on a peer's answers: run again each
/// turn (the job goes on from its stored state) until it finishes.
struct JobWaiter {
    file: PathBuf,
    stream: UnixStream,
    deadline: Instant,
}

/// `job_wait_ms`: how long a job whose tasks wait on peers is given.
pub const JOB_WAIT_MS: u64 = 60_000;

fn reply(mut stream: &UnixStream, outcome: &Outcome) {
    let mut reply = serde_json::to_string(outcome).expect("outcomes serialize");
    reply.push('\n');
    // A client that went away does not stop the daemon.
    let _ = stream.write_all(reply.as_bytes());
}

/// The daemon's state between turns.
struct Daemon {
    home: Home,
    node: Node<CliRequest>,
    waiters: Vec<Waiter>,
    jobs: Vec<JobWaiter>,
}

/// How `vat start` serves a home.
pub struct Serving<'a> {
    pub lock_wait_ms: u64,
    /// Where to accept CapTP connections too.
    pub listen: Option<&'a str>,
    pub vats_resident_max: usize,
    /// Bounds on peers' connections.
    pub net: captp_engine::node::NetLimits,
    /// Where to serve the HTTP face (the inspector, CapTP over WebSocket).
    pub http: Option<&'a str>,
}

/// Serves the home until `vat stop`.
pub fn serve(path: &Path, socket: &Path, serving: &Serving<'_>) -> Result<Outcome> {
    let listen = serving.listen;
    let home = Home::open(path, serving.lock_wait_ms)?;
    // Holding the home's lock, no other daemon can be alive: a socket left
    // here is stale (its daemon was killed).
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let _socket_file = SocketFile(socket.to_owned());
    let mut kernel = home.kernel(CommitPolicy::GROUPED)?;
    kernel.set_vats_resident_max(serving.vats_resident_max)?;
    // A daemon runs on: a spare process started ahead of need spares the
    // next spawn or wake its process start.
    kernel.set_warm_spares(1);
    // Only vats whose heaps held what their store did not are woken now (to
    // be told they restarted); the others wake when a message comes.
    kernel.start_workers()?;
    let identity = Identity {
        did: home.did(),
        sign: Box::new(home.signer()),
    };
    let node: Node<CliRequest> =
        Node::new(kernel, identity, captp::Limits::default(), serving.net)?;
    let mut daemon = Daemon {
        home,
        node,
        waiters: Vec::new(),
        jobs: Vec::new(),
    };
    let listening = daemon.listen(listen)?;
    // The face first, so that a request (`vat share --web`) finds it.
    let face = match serving.http {
        Some(address) => {
            let sender = daemon.node.sender();
            let accept: crate::face::Accept =
                Box::new(move |read, write| sender.accept(read, write));
            let places = serving.net.connections_max;
            let serving = crate::face::start(address, socket.to_owned(), accept, places)?;
            let url = serving.inspector_url();
            daemon.home.write_http_url(serving.address, &url)?;
            Some((url, SocketFile(daemon.home.path().join("http.url"))))
        }
        None => None,
    };
    read_requests(listener, &daemon.node);
    println!(
        "kernel {} serving {} on {}{}{}",
        daemon.home.did(),
        daemon.home.path().display(),
        socket.display(),
        listening
            .as_ref()
            .map(|a| format!(", CapTP on {a}"))
            .unwrap_or_default(),
        face.as_ref()
            .map(|(url, _)| format!(", inspector on {url} (CapTP over WebSocket at /captp)"))
            .unwrap_or_default()
    );
    std::io::stdout().flush().ok();
    daemon.run()?;
    Ok(Outcome::default())
}

/// Reads requests from the socket, each on a thread of its own (a client
/// that connects and says nothing holds up no one else), into the node.
fn read_requests(listener: UnixListener, node: &Node<CliRequest>) {
    let sender = node.sender();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let read = BufReader::new((&stream).take(REQUEST_BYTES_MAX)).read_line(&mut line);
                let request = read.map(|_| serde_json::from_str::<Request>(&line));
                sender.send(CliRequest { request, stream });
            });
        }
    });
}

impl Daemon {
    /// Listens for CapTP on `listen`, if given; records where.
    fn listen(&mut self, listen: Option<&str>) -> Result<Option<String>> {
        let listening = match listen {
            Some(text) => {
                let address = captp::sturdy::Address::parse(text)?;
                Some(self.node.listen(&address)?.to_string())
            }
            None => None,
        };
        self.node
            .kernel()
            .set_listen_address(listening.as_deref())?;
        self.node.kernel().commit()?;
        Ok(listening)
    }

    fn run(&mut self) -> Result<()> {
        loop {
            let wait_ms = if self.waiters.is_empty() && self.jobs.is_empty() {
                TURN_IDLE_MS
            } else {
                TURN_WAITING_MS
            };
            let wait_ms = self.turn_timers(wait_ms)?;
            for request in self.node.turn(Duration::from_millis(wait_ms))? {
                if self.handle(request)? == Served::Stop {
                    self.node.flush()?;
                    return Ok(());
                }
            }
            self.answer_waiters()?;
            self.answer_jobs()?;
            self.home.append_logs(self.node.kernel())?;
            // Everything asked is answered: a vat's start that took the
            // spare process is replaced now, outside anyone's wait.
            self.node.kernel().top_up_spares();
        }
    }

    /// Fires the timers that are due and sends the HTTP device's kept
    /// requests (committed; the daemon waits for their answers, up to
    /// `http_timeout_ms` each); returns how long the next turn may wait
    /// (`wait_ms`, or less when a timer falls due sooner).
    fn turn_timers(&mut self, wait_ms: u64) -> Result<u64> {
        let now = devices::timer::now_ms();
        let kernel = self.node.kernel();
        devices::timer::fire_due(kernel, now)?;
        devices::http::send_pending(kernel)?;
        Ok(match devices::timer::next_due_ms(kernel)? {
            Some(due) => wait_ms.min(due.saturating_sub(now)),
            None => wait_ms,
        })
    }

    /// Handles one request: answers it, or leaves it waiting.
    fn handle(&mut self, CliRequest { request, stream }: CliRequest) -> Result<Served> {
        let request = match request {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => {
                let message =
                    format!("malformed request (request_bytes_max {REQUEST_BYTES_MAX}): {e}");
                reply(&stream, &Outcome::error(&message));
                return Ok(Served::Going);
            }
            Err(e) => {
                let message = format!("reading the request: {e}");
                reply(&stream, &Outcome::error(&message));
                return Ok(Served::Going);
            }
        };
        let deadline = Instant::now() + Duration::from_millis(SEND_TIMEOUT_MS);
        match &request {
            Request::Stop => {
                let mut outcome = Outcome::default();
                outcome.line(format!(
                    "stopped the daemon for {}",
                    self.home.path().display()
                ));
                self.node.flush()?;
                reply(&stream, &outcome);
                return Ok(Served::Stop);
            }
            Request::Send(send) => match start_send(self.node.kernel(), send) {
                Ok(kpid) => self.waiters.push(Waiter {
                    kpid,
                    session: None,
                    bind_as: send.bind_as.clone(),
                    idempotency_key: send.idempotency_key.clone(),
                    stream,
                    deadline,
                }),
                Err(e) => reply(&stream, &Outcome::error(&format!("{e:#}"))),
            },
            Request::Enliven { uri, bind_as } => match self.enliven(uri, bind_as) {
                Ok((kpid, peer)) => self.waiters.push(Waiter {
                    kpid,
                    session: Some(peer),
                    bind_as: Some(bind_as.clone()),
                    idempotency_key: None,
                    stream,
                    deadline,
                }),
                Err(e) => reply(&stream, &Outcome::error(&format!("{e:#}"))),
            },
            Request::RunJob { file } => self.start_job(file, stream)?,
            Request::ForgetPeer { peer } => {
                let outcome = match self.forget(peer) {
                    Ok(outcome) => outcome,
                    Err(e) => Outcome::error(&format!("{e:#}")),
                };
                self.node.flush()?;
                reply(&stream, &outcome);
            }
            request => {
                let outcome = execute(&self.home, self.node.kernel(), request);
                self.node.flush()?;
                reply(&stream, &outcome);
            }
        }
        Ok(Served::Going)
    }

    fn start_job(&mut self, file: &Path, stream: UnixStream) -> Result<()> {
        let waiter = JobWaiter {
            file: file.to_owned(),
            stream,
            deadline: Instant::now() + Duration::from_millis(JOB_WAIT_MS),
        };
        if let Some(waiter) = self.try_job(waiter)? {
            self.jobs.push(waiter);
        }
        Ok(())
    }

    /// Runs a job (again): answers it when it finishes or fails, or hands
    /// it back while its tasks wait on a peer and its time lasts.
    fn try_job(&mut self, waiter: JobWaiter) -> Result<Option<JobWaiter>> {
        let mut out = Outcome::default();
        let ran = run_job(&self.home, self.node.kernel(), &waiter.file, &mut out);
        self.node.flush()?;
        let outcome = match ran {
            Ok(()) => out,
            Err(e) if waits_on_tasks(&e) && Instant::now() < waiter.deadline => {
                return Ok(Some(waiter));
            }
            Err(e) if waits_on_tasks(&e) => Outcome::error(&format!(
                "{e:#}: no answer within {JOB_WAIT_MS} ms (job_wait_ms); run the job again to go on"
            )),
            Err(e) => Outcome::error(&format!("{e:#}")),
        };
        reply(&waiter.stream, &outcome);
        Ok(None)
    }

    /// Runs again each job whose tasks waited on peers.
    fn answer_jobs(&mut self) -> Result<()> {
        for waiter in std::mem::take(&mut self.jobs) {
            if let Some(waiter) = self.try_job(waiter)? {
                self.jobs.push(waiter);
            }
        }
        Ok(())
    }

    /// Ends a peer and its connection (`vat peers forget`).
    fn forget(&mut self, peer: &str) -> Result<Outcome> {
        let peer = crate::commands::network::peer_id(self.node.kernel(), peer)?;
        self.node.forget_peer(&peer)?;
        let mut outcome = Outcome::default();
        outcome.line(format!("forgot {peer}"));
        Ok(outcome)
    }

    /// Dials the kernel a sturdy ref names (or reuses the connection) and
    /// asks it for the object; returns the promise for it and the peer.
    fn enliven(&mut self, uri: &str, bind_as: &str) -> Result<(Kref, EndpointId)> {
        if uri.starts_with(captp::sturdy::ENDO_SCHEME) {
            crate::commands::network::check_bind_name(self.node.kernel(), bind_as)?;
            let target = captp::sturdy::EndoRef::parse(uri)?;
            let peer = self.node.connect_json(&target.address)?;
            let kpid = self.node.kernel().enliven(&peer, &target.swiss)?;
            self.node.flush()?;
            return Ok((kpid, peer));
        }
        let sturdy = enliven_target(self.node.kernel(), &self.home.did(), uri, bind_as)?;
        let peer = self.node.session(&sturdy.did, &sturdy.address)?;
        let kpid = self.node.kernel().enliven(&peer, &sturdy.swiss)?;
        self.node.flush()?;
        Ok((kpid, peer))
    }

    /// Answers the waiters whose result settled, whose session cannot
    /// connect, or whose time ran out.
    fn answer_waiters(&mut self) -> Result<()> {
        let mut index = 0;
        while index < self.waiters.len() {
            let waiter = &self.waiters[index];
            let settled =
                self.node.kernel().promise_state(&waiter.kpid)? != Some(PromiseState::Unresolved);
            let unreachable = match &waiter.session {
                Some(peer) if !settled => self.node.session_error(peer),
                _ => None,
            };
            if !settled && Instant::now() < waiter.deadline && unreachable.is_none() {
                index += 1;
                continue;
            }
            let waiter = self.waiters.swap_remove(index);
            let outcome = self.outcome_of(&waiter, settled, unreachable)?;
            self.node.flush()?;
            reply(&waiter.stream, &outcome);
        }
        Ok(())
    }

    fn outcome_of(
        &mut self,
        waiter: &Waiter,
        settled: bool,
        unreachable: Option<String>,
    ) -> Result<Outcome> {
        let kernel = self.node.kernel();
        if settled {
            let mut out = Outcome::default();
            let keyed = waiter.idempotency_key.is_some();
            return Ok(
                match finish_send(
                    kernel,
                    &waiter.kpid,
                    waiter.bind_as.as_deref(),
                    keyed,
                    &mut out,
                ) {
                    Ok(()) => out,
                    Err(e) => Outcome::error(&format!("{e:#}")),
                },
            );
        }
        let retry = match &waiter.idempotency_key {
            Some(key) => format!("; retry with --idempotency-key {key} to wait again"),
            None => {
                kernel.release(&waiter.kpid)?;
                String::new()
            }
        };
        Ok(Outcome::error(&match unreachable {
            Some(why) => {
                format!("cannot reach that kernel ({why}); the session is kept and retried")
            }
            None => format!(
                "no answer within {SEND_TIMEOUT_MS} ms (send_timeout_ms); the message stays queued{retry}"
            ),
        }))
    }
}

/// Whether a job stopped because its tasks' messages have not settled yet.
fn waits_on_tasks(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<ipvm::RunError>(),
        Some(ipvm::RunError::Unsettled(_))
    )
}

/// Whether the daemon goes on after a request.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    Going,
    Stop,
}
