//! CapTP latency and pipelined throughput on loopback, beside capnp-rpc's
//! own Rust client and server on the same schema (`exo.capnp`), in one run.
//!
//! - capnp-rpc: an `Exo` server that answers each call at once, and a
//!   client on its own thread: sequential calls (round-trip latency), then
//!   bursts of calls all in flight (pipelined throughput).
//! - kernel to kernel: two kernels (homes in a temporary folder, thread
//!   workers), each a `Node` on its own thread, with an authenticated
//!   session. Vat `ping` on kernel B sends `ping` to vat `pong` on kernel A:
//!   `run(n)` awaits each reply before the next (latency), `burst(n)` sends
//!   all n at once (throughput). Every frame is applied in a crank and
//!   committed (fsync) before what it caused leaves: the figures include
//!   durable commits on both sides.
//!
//! Run: `scripts/build-guests && cargo bench -p captp-engine --bench captp`
//! (`CAPTP_CALLS=2000 CAPTP_BURST=500` to change the run lengths;
//! `CAPTP_BURSTS=10` measures throughput over ten bursts, not one).

#[path = "../../kernel/benches/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use captp::exo_capnp::exo;
use captp_engine::Peers;
use captp_engine::node::{Identity, NetLimits, Node};
use futures::AsyncReadExt;
use kernel::{CommitPolicy, Kernel, Kref, PromiseState, VatOptions, WorkerKind};
use swingstore::{Durability, SwingStore};

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Echo;

impl exo::Server for Echo {
    async fn call(
        self: std::rc::Rc<Self>,
        params: exo::CallParams,
        mut results: exo::CallResults,
    ) -> Result<(), capnp::Error> {
        let body = params.get()?.get_args()?.get_body()?.to_string()?;
        results.get().init_result().set_body(body);
        Ok(())
    }
}

fn rpc_network(
    stream: tokio::net::TcpStream,
    side: rpc_twoparty_capnp::Side,
) -> twoparty::VatNetwork<
    futures::io::BufReader<
        futures::io::ReadHalf<tokio_util::compat::Compat<tokio::net::TcpStream>>,
    >,
> {
    stream.set_nodelay(true).unwrap();
    let (reader, writer) = tokio_util::compat::TokioAsyncReadCompatExt::compat(stream).split();
    twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        side,
        Default::default(),
    )
}

/// A single-threaded runtime for capnp-rpc (its objects are not `Send`).
fn local_runtime() -> (tokio::runtime::Runtime, tokio::task::LocalSet) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (runtime, tokio::task::LocalSet::new())
}

/// capnp-rpc Rust to Rust: (µs per sequential call, pipelined calls/s).
fn capnp_rpc(calls: u64, burst: u64) -> (f64, f64) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let (runtime, local) = local_runtime();
        local.block_on(&runtime, async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let network = rpc_network(stream, rpc_twoparty_capnp::Side::Server);
            let echo: exo::Client = capnp_rpc::new_client(Echo);
            let _ = RpcSystem::new(Box::new(network), Some(echo.client)).await;
        });
    });
    let (runtime, local) = local_runtime();
    local.block_on(&runtime, async move {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let network = rpc_network(stream, rpc_twoparty_capnp::Side::Client);
        let mut system = RpcSystem::new(Box::new(network), None);
        let echo: exo::Client = system.bootstrap(rpc_twoparty_capnp::Side::Server);
        tokio::task::spawn_local(system);
        let request = |i: u64| {
            let mut request = echo.call_request();
            let mut params = request.get();
            params.set_method("ping");
            params.init_args().set_body(format!("#[{i}]"));
            request.send().promise
        };
        request(0).await.unwrap();
        let started = Instant::now();
        for i in 0..calls {
            request(i).await.unwrap();
        }
        let latency = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
        let started = Instant::now();
        let pending: Vec<_> = (0..burst).map(request).collect();
        for reply in pending {
            reply.await.unwrap();
        }
        let rate = burst as f64 / started.elapsed().as_secs_f64();
        (latency, rate)
    })
}

/// A kernel with a pingpong vat, as a node on its own thread until `stop`.
fn kernel_node(dir: &std::path::Path, name: &str) -> (String, Node<()>, Kref) {
    let store = SwingStore::open(&dir.join(format!("{name}.sqlite")), Durability::Full).unwrap();
    let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
    kernel.set_supervisor_program(common::supervisor());
    let options = VatOptions {
        worker: WorkerKind::Thread,
        ..VatOptions::default()
    };
    let root = kernel
        .spawn_vat(name, &common::guest_wasm("pingpong"), options)
        .unwrap();
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let did = did_key::did_of(&key);
    let identity = Identity {
        did: did.clone(),
        sign: Box::new(move |message| ed25519_dalek::Signer::sign(&key, message).to_bytes()),
    };
    let node = Node::new(
        kernel,
        identity,
        captp::Limits::default(),
        NetLimits::default(),
    )
    .unwrap();
    (did, node, root)
}

/// What the kernel-to-kernel run measured.
struct KernelRun {
    latency_us: f64,
    calls_per_s: f64,
    /// Commits on the calling kernel per sequential round trip.
    commits_b_per_call: f64,
    /// Commits on the answering kernel over the whole run, per call.
    commits_a_per_call: f64,
    /// The answering kernel's store writes, and rows and statements its
    /// commits sent SQLite, per call over the whole run.
    writes_a_per_call: f64,
    rows_a_per_call: f64,
    statements_a_per_call: f64,
}

/// Kernel A, answering, on a thread of its own (a kernel is not Send): it
/// says where it is and what it shares (its did, address and the pong
/// vat's swiss number), then serves until `stop`, and returns what its
/// store did.
fn serve_pong(
    dir: &std::path::Path,
    stop: Arc<AtomicBool>,
) -> (
    String,
    captp::sturdy::Address,
    String,
    std::thread::JoinHandle<swingstore::StoreStats>,
) {
    let (ready, announced) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    let serving = std::thread::spawn(move || {
        let (did_a, mut node_a, pong) = kernel_node(&dir, "pong");
        let address = node_a
            .listen(&captp::sturdy::Address::Tcp("127.0.0.1:0".into()))
            .unwrap();
        let swiss = node_a.kernel().share(&pong).unwrap();
        node_a.flush().unwrap();
        ready.send((did_a, address, swiss)).unwrap();
        while !stop.load(Ordering::Relaxed) {
            node_a.turn(Duration::from_millis(20)).unwrap();
        }
        node_a.kernel().store().stats()
    });
    let (did_a, address, swiss) = announced.recv().unwrap();
    (did_a, address, swiss, serving)
}

/// Kernel to kernel: latency, throughput, and the commits they took.
fn kernel_to_kernel(calls: u64, burst: u64) -> KernelRun {
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (did_a, address, swiss, serving) = serve_pong(dir.path(), stop.clone());
    let (_did_b, mut node_b, ping) = kernel_node(dir.path(), "ping");
    let peer = node_b.session(&did_a, &address).unwrap();
    let run = |node: &mut Node<()>, kp: Kref| -> PromiseState {
        loop {
            node.turn(Duration::from_millis(1)).unwrap();
            match node.kernel().promise_state(&kp).unwrap() {
                Some(PromiseState::Unresolved) => continue,
                Some(settled) => return settled,
                None => panic!("{kp} vanished"),
            }
        }
    };
    let kp = node_b.kernel().enliven(&peer, &swiss).unwrap();
    let PromiseState::Fulfilled(data) = run(&mut node_b, kp) else {
        panic!("enliven failed")
    };
    let remote = vom::capdata::decode(&data).unwrap();
    let remote = Kref::parse(&remote.as_ref().expect("a reference").slot).expect("a kref");
    node_b.kernel().bind_pet_name("pong", &remote).unwrap();
    let call = |node: &mut Node<()>, method: &str, count: u64| -> f64 {
        let args = vom::capdata::encode(&vom::Value::Array(vec![
            vom::Value::from(count),
            vom::Value::Remotable(vom::Ref::new(remote.as_str())),
        ]));
        let started = Instant::now();
        let kp = node.kernel().queue_message(&ping, method, args).unwrap();
        let settled = run(node, kp.clone());
        node.kernel().release(&kp).unwrap();
        assert!(matches!(settled, PromiseState::Fulfilled(_)), "{settled:?}");
        started.elapsed().as_secs_f64()
    };
    call(&mut node_b, "runHeap", 10);
    let commits_before = node_b.kernel().store().stats().commits;
    let latency = call(&mut node_b, "runHeap", calls) * 1e6 / calls as f64;
    let commits_b = node_b.kernel().store().stats().commits - commits_before;
    let bursts = env_count("CAPTP_BURSTS", 1);
    let mut seconds = 0.0;
    for _ in 0..bursts {
        seconds += call(&mut node_b, "burst", burst);
    }
    let rate = (burst * bursts) as f64 / seconds;
    stop.store(true, Ordering::Relaxed);
    let stats_a = serving.join().unwrap();
    let calls_a = (10 + calls + burst * bursts) as f64;
    KernelRun {
        latency_us: latency,
        calls_per_s: rate,
        commits_b_per_call: commits_b as f64 / calls as f64,
        commits_a_per_call: stats_a.commits as f64 / calls_a,
        rows_a_per_call: stats_a.rows_committed as f64 / calls_a,
        statements_a_per_call: stats_a.statements as f64 / calls_a,
        writes_a_per_call: stats_a.writes as f64 / calls_a,
    }
}

/// The time one small durable commit takes here (one key, fsynced, on a
/// plain SQLite connection with synchronous=FULL, so that the floor does not
/// move with swingstore's implementation): a round trip between kernels
/// needs at least two, one on each side.
fn commit_us(commits: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    swingstore::raw_commit_us(dir.path(), commits).unwrap()
}

fn main() {
    // Under `cargo test` (no `--bench`), a short smoke run of the same code.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let calls = env_count("CAPTP_CALLS", if measuring { 1000 } else { 50 });
    let burst = env_count("CAPTP_BURST", if measuring { 500 } else { 20 });
    println!(
        "captp bench: {calls} sequential calls, bursts of {burst} pipelined calls, loopback TCP"
    );
    let (rpc_latency, rpc_rate) = capnp_rpc(calls, burst);
    println!(
        "capnp-rpc Rust<->Rust:  {rpc_latency:8.1} us/call sequential, {rpc_rate:9.0} calls/s pipelined"
    );
    // The disk's commit time drifts: the floor is measured on both sides
    // of the kernels' run, and the two averaged.
    let commit_before = commit_us(calls.min(500));
    let run = kernel_to_kernel(calls, burst);
    let commit = (commit_before + commit_us(calls.min(500))) / 2.0;
    let (kernel_latency, kernel_rate) = (run.latency_us, run.calls_per_s);
    println!(
        "kernel<->kernel:        {kernel_latency:8.1} us/call sequential, {kernel_rate:9.0} calls/s pipelined (durable commits on both sides)"
    );
    println!(
        "commits: calling kernel {:.2} per sequential call; answering kernel {:.2} per call over the run",
        run.commits_b_per_call, run.commits_a_per_call
    );
    println!(
        "answering kernel's store per call: {:.1} writes, {:.2} rows committed ({:.2} statements)",
        run.writes_a_per_call, run.rows_a_per_call, run.statements_a_per_call
    );
    println!(
        "ratio: latency {:.2}x capnp-rpc (target <= 1.5x), throughput {:.2}x",
        kernel_latency / rpc_latency,
        kernel_rate / rpc_rate
    );
    println!(
        "floor: one raw durable commit {commit:.1} us (before and after the kernels' run); two per round trip = {:.1} us ({:.2}x capnp-rpc)",
        2.0 * commit,
        2.0 * commit / rpc_latency
    );
    println!(
        "kernel<->kernel round trip: {:.2}x the two-commit floor (target <= 1.3x); pipelined {kernel_rate:.0} calls/s (target >= 25000)",
        kernel_latency / (2.0 * commit)
    );
}
