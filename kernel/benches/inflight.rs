//! Work in flight that outlives the heap, in one process with thread
//! workers and grouped commits. Prints, from one run:
//! - a durable watcher's cost per settlement beside a heap await's (the
//!   same sends, the same answers);
//! - a durable flow's cost per await (pingpong `run`) beside the heap
//!   loop's (`runHeap`);
//! - a vat's restart to its first delivery with 10,000 pending watchers
//!   beside one with none (it should not grow with them).
//!
//! Run: `scripts/build-guests && cargo bench -p kernel --bench inflight`
//! (`SETTLEMENTS=20000 PINGS=20000 PENDING=10000` to change the sizes).

mod common;

use std::path::Path;
use std::time::Instant;

use kernel::{CommitPolicy, Kernel, Kref, PromiseState, VatOptions, WorkerKind};
use swingstore::{Durability, SwingStore};
use vom::{Ref, Value};

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open(path: &Path) -> Kernel {
    let store = SwingStore::open(&path.join("store.sqlite"), Durability::Full).unwrap();
    let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
    kernel.set_module_cache(path.join("modules"));
    kernel
}

fn thread() -> VatOptions {
    VatOptions {
        worker: WorkerKind::Thread,
        ..VatOptions::default()
    }
}

/// Sends `method(args)` to `target`, runs until it settles, returns the seconds taken.
fn timed(kernel: &mut Kernel, target: &Kref, method: &str, args: Vec<Value>) -> f64 {
    let started = Instant::now();
    let kpid = kernel
        .queue_message(target, method, vom::capdata::encode(&Value::Array(args)))
        .unwrap();
    let settled = kernel.run_until_settled(&kpid).unwrap();
    assert!(
        matches!(settled, PromiseState::Fulfilled(_)),
        "{method}: {settled:?}"
    );
    kernel.release(&kpid).unwrap();
    started.elapsed().as_secs_f64()
}

/// Runs until nothing is left to do; returns the seconds taken.
fn drain(kernel: &mut Kernel) -> f64 {
    let started = Instant::now();
    while kernel.step().unwrap() {}
    kernel.commit().unwrap();
    started.elapsed().as_secs_f64()
}

/// Sends per delivery, under `syscalls_per_delivery_max` (a watch costs
/// a few syscalls).
const BATCH: u64 = 1_000;

/// `method(to, n)` in deliveries of at most [`BATCH`]; returns the seconds taken.
fn batched(kernel: &mut Kernel, a: &Kref, method: &str, to: &Kref, n: u64) -> f64 {
    let mut seconds = 0.0;
    let mut left = n;
    while left > 0 {
        let now = left.min(BATCH);
        seconds += timed(kernel, a, method, vec![reference(to), Value::from(now)]);
        left -= now;
    }
    seconds
}

fn reference(kref: &Kref) -> Value {
    Value::Remotable(Ref::new(kref.to_string()))
}

/// (µs per heap await, µs per watched settlement) over `n` answers each.
fn watchers(n: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut kernel = open(dir.path());
    let wasm = common::guest_wasm("waiter");
    let a = kernel.spawn_vat("a", &wasm, thread()).unwrap();
    let b = kernel.spawn_vat("b", &wasm, thread()).unwrap();
    timed(
        &mut kernel,
        &a,
        "awaitMany",
        vec![reference(&b), Value::from(10u64)],
    );
    let heap = batched(&mut kernel, &a, "awaitMany", &b, n);
    let watch = batched(&mut kernel, &a, "watchMany", &b, n) + drain(&mut kernel);
    (heap * 1e6 / n as f64, watch * 1e6 / n as f64)
}

/// (µs per heap await, µs per flow await) over `pings` pings each.
fn flows(pings: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut kernel = open(dir.path());
    let wasm = common::guest_wasm("pingpong");
    let a = kernel.spawn_vat("a", &wasm, thread()).unwrap();
    let b = kernel.spawn_vat("b", &wasm, thread()).unwrap();
    let args = |n: u64| vec![Value::from(n), reference(&b)];
    timed(&mut kernel, &a, "runHeap", args(10));
    let heap = timed(&mut kernel, &a, "runHeap", args(pings));
    let flow = timed(&mut kernel, &a, "run", args(pings));
    (heap * 1e6 / pings as f64, flow * 1e6 / pings as f64)
}

/// Milliseconds from opening the kernel again to vat `a`'s first answer,
/// with `pending` watchers waiting in `a`.
fn restart_ms(pending: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut kernel = open(dir.path());
        let wasm = common::guest_wasm("waiter");
        let a = kernel.spawn_vat("a", &wasm, thread()).unwrap();
        let c = kernel.spawn_vat("c", &wasm, thread()).unwrap();
        batched(&mut kernel, &a, "watchPending", &c, pending);
        drain(&mut kernel);
    }
    let started = Instant::now();
    let mut kernel = open(dir.path());
    let a = kernel.pet_name("a").unwrap().unwrap();
    timed(&mut kernel, &a, "tallied", vec![]);
    started.elapsed().as_secs_f64() * 1e3
}

fn main() {
    // Under `cargo test` (no `--bench`), a tiny run checks the bench works.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let count = |name: &str, default: u64| {
        if measuring {
            env_count(name, default)
        } else {
            5
        }
    };
    let (heap_await, watched) = watchers(count("SETTLEMENTS", 20_000));
    let (heap_ping, flow_ping) = flows(count("PINGS", 20_000));
    let pending = count("PENDING", 10_000);
    let (restart_none, restart_pending) = (restart_ms(0), restart_ms(pending));
    if !measuring {
        println!("smoke run ok: watchers, flows and restarts ran");
        return;
    }
    println!(
        "settlement: heap await {heap_await:.1} µs, durable watcher {watched:.1} µs ({:.2}x)",
        watched / heap_await
    );
    println!(
        "pingpong await: heap (runHeap) {heap_ping:.1} µs, durable flow (run) {flow_ping:.1} µs ({:.2}x)",
        flow_ping / heap_ping
    );
    println!(
        "restart to first delivery: {restart_none:.1} ms with no pending watchers, {restart_pending:.1} ms with {pending}"
    );
}
