//! Crank-rate benchmark: pingpong between two vats in one process, awaiting
//! in the heap (`runHeap`; `benches/inflight.rs` sets the durable flow `run`
//! beside it). Each ping is counted in the answering vat's vatstore.
//!
//! Prints, from one run on one machine:
//! - the raw rate of small SQLite commits (one key written, then COMMIT),
//!   the physical limit of committing every crank;
//! - mode (a): cranks/s with every crank committed on its own;
//! - mode (b): cranks/s with each crank atomic in swingstore's crank buffer and commits grouped
//!   (CommitPolicy::GROUPED), results released only after their commit.
//!
//! Run: `scripts/build-guests && cargo build --release -p vat-supervisor && cargo bench -p kernel --bench pingpong`
//! (`PINGS_A=2000 PINGS_B=50000` to change the run lengths; `WORKERS=thread`
//! leaves out the process workers' run).

mod common;

use std::time::Instant;

use kernel::{CommitPolicy, Kernel, PromiseState, VatOptions, WorkerKind};
use swingstore::{Durability, SwingStore};
use vom::{Ref, Value};

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn raw_commits_per_second(commits: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SwingStore::open(&dir.path().join("raw.sqlite"), Durability::Full).unwrap();
    let started = Instant::now();
    for i in 0..commits {
        store.set("bench.key", &i.to_string()).unwrap();
        store.commit().unwrap();
    }
    commits as f64 / started.elapsed().as_secs_f64()
}

/// Runs `pings` round trips and returns (cranks, seconds).
fn pingpong(policy: CommitPolicy, worker: WorkerKind, pings: u64, wasm: &[u8]) -> (u64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Full).unwrap();
    let mut kernel = Kernel::new(store, policy).unwrap();
    kernel.set_supervisor_program(common::supervisor());
    kernel.set_module_cache(dir.path().join("modules"));
    let options = VatOptions {
        worker,
        ..VatOptions::default()
    };
    let a = kernel.spawn_vat("a", wasm, options).unwrap();
    let b = kernel.spawn_vat("b", wasm, options).unwrap();
    // Warm up: both workers started, caches filled.
    let warm = kernel
        .queue_message(
            &a,
            "runHeap",
            vom::capdata::encode(&Value::Array(vec![
                Value::from(10u64),
                Value::Remotable(Ref::new(b.clone())),
            ])),
        )
        .unwrap();
    kernel.run_until_settled(&warm).unwrap();
    kernel.release(&warm).unwrap();
    let args = vom::capdata::encode(&Value::Array(vec![
        Value::from(pings),
        Value::Remotable(Ref::new(b)),
    ]));
    let cranks_before = kernel.cranks_total();
    let started = Instant::now();
    let kpid = kernel.queue_message(&a, "runHeap", args).unwrap();
    let settled = kernel.run_until_settled(&kpid).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    match settled {
        PromiseState::Fulfilled(data) => {
            assert_eq!(
                vom::capdata::decode(&data).unwrap().as_u64(),
                Some(pings),
                "pingpong result"
            );
        }
        other => panic!("pingpong did not fulfill: {other:?}"),
    }
    (kernel.cranks_total() - cranks_before, seconds)
}

fn main() {
    // `cargo bench` passes `--bench`. Under `cargo test` it is absent: then a
    // tiny run checks that the benchmark still works, and prints no figures.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let count = |name: &str, default: u64| {
        if measuring {
            env_count(name, default)
        } else {
            5
        }
    };
    let wasm = common::guest_wasm("pingpong");
    if !measuring {
        println!(
            "smoke run of the pingpong bench; `cargo bench -p kernel --bench pingpong` measures"
        );
    }
    let raw = raw_commits_per_second(count("RAW_COMMITS", 2000));
    let (cranks_a, seconds_a) = pingpong(
        CommitPolicy::EVERY_CRANK,
        WorkerKind::Thread,
        count("PINGS_A", 1000),
        &wasm,
    );
    let (cranks_b, seconds_b) = pingpong(
        CommitPolicy::GROUPED,
        WorkerKind::Thread,
        count("PINGS_B", 20000),
        &wasm,
    );
    // `WORKERS=thread` leaves the process run out (to profile one kind).
    let process_too = std::env::var("WORKERS").map_or(true, |kinds| kinds != "thread");
    let (cranks_p, seconds_p) = if process_too {
        pingpong(
            CommitPolicy::GROUPED,
            WorkerKind::Process,
            count("PINGS_B", 20000),
            &wasm,
        )
    } else {
        (0, f64::NAN)
    };
    if !measuring {
        println!("smoke run ok: pingpong settled in both commit modes and both worker kinds");
        return;
    }
    println!("raw small SQLite commits (synchronous=FULL, WAL): {raw:.0}/s");
    let rate_a = cranks_a as f64 / seconds_a;
    println!(
        "mode (a) every crank committed, thread workers: {cranks_a} cranks in {seconds_a:.3} s = {rate_a:.0} cranks/s ({:.0}% of raw commits)",
        100.0 * rate_a / raw
    );
    let policy = CommitPolicy::GROUPED;
    let group = format!(
        "<= {} cranks or {} ms",
        policy.cranks_per_commit_max, policy.commit_interval_ms
    );
    let rate_b = cranks_b as f64 / seconds_b;
    println!(
        "mode (b) grouped commits ({group}), thread workers: {cranks_b} cranks in {seconds_b:.3} s = {rate_b:.0} cranks/s"
    );
    let rate_p = cranks_p as f64 / seconds_p;
    println!(
        "mode (b) grouped commits ({group}), process workers: {cranks_p} cranks in {seconds_p:.3} s = {rate_p:.0} cranks/s"
    );
}
