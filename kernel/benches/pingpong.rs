//! Crank-rate benchmark: pingpong between two vats in one process, awaiting
//! in the heap (`runHeap`; `benches/inflight.rs` sets the durable flow `run`
//! beside it). Each ping is counted in the answering vat's vatstore.
//!
//! Prints, from one run on one machine:
//! - the raw rate of small SQLite commits (one key written, then COMMIT, on
//!   a plain SQLite connection with synchronous=FULL): the physical limit of
//!   committing every crank with an fsync of its own;
//! - mode (a): cranks/s with every crank committed on its own;
//! - mode (b): cranks/s with each crank atomic in swingstore's crank buffer and commits grouped
//!   (CommitPolicy::GROUPED), results released only after their commit.
//!
//! Run: `scripts/build-guests && cargo build --release -p vat-supervisor && cargo bench -p kernel --bench pingpong`
//! (`PINGS_A=2000 PINGS_B=50000` to change the run lengths; `WORKERS=thread`
//! leaves out the process workers' run; `COMMIT_INTERVAL_MS` changes mode
//! (b)'s time bound, as `scripts/crank-instructions` does: under valgrind,
//! 50 ms pass in a few dozen cranks).

mod common;

use std::time::Instant;

use kernel::{CommitPolicy, Kernel, PromiseState, VatOptions, WorkerKind};
use swingstore::{Durability, StoreStats, SwingStore};
use vom::{Ref, Value};

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn raw_commits_per_second(commits: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    1e6 / swingstore::raw_commit_us(dir.path(), commits).unwrap()
}

/// What one run measured.
struct Run {
    cranks: u64,
    seconds: f64,
    /// What the store did during the run.
    store: StoreStats,
}

impl Run {
    fn rate(&self) -> f64 {
        self.cranks as f64 / self.seconds
    }

    /// The store's work per crank, e.g. `29.0 reads (3.5 from SQLite), 22.0 writes, 6.5 rows committed`.
    fn per_crank(&self) -> String {
        let per = |n: u64| n as f64 / self.cranks as f64;
        format!(
            "{:.1} reads ({:.2} from SQLite), {:.1} writes, {:.2} rows committed ({:.2} statements), {:.3} commits, {:.3} fsyncs per crank",
            per(self.store.reads),
            per(self.store.sqlite_reads),
            per(self.store.writes),
            per(self.store.rows_committed),
            per(self.store.statements),
            per(self.store.commits),
            per(self.store.syncs)
        )
    }
}

fn stats_since(before: StoreStats, after: StoreStats) -> StoreStats {
    StoreStats {
        reads: after.reads - before.reads,
        sqlite_reads: after.sqlite_reads - before.sqlite_reads,
        writes: after.writes - before.writes,
        commits: after.commits - before.commits,
        rows_committed: after.rows_committed - before.rows_committed,
        statements: after.statements - before.statements,
        syncs: after.syncs - before.syncs,
    }
}

/// Runs `pings` round trips.
fn pingpong(policy: CommitPolicy, worker: WorkerKind, pings: u64, wasm: &[u8]) -> Run {
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
    let store_before = kernel.store().stats();
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
    Run {
        cranks: kernel.cranks_total() - cranks_before,
        seconds,
        store: stats_since(store_before, kernel.store().stats()),
    }
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
    let grouped = CommitPolicy {
        commit_interval_ms: env_count(
            "COMMIT_INTERVAL_MS",
            CommitPolicy::GROUPED.commit_interval_ms,
        ),
        ..CommitPolicy::GROUPED
    };
    let raw = raw_commits_per_second(count("RAW_COMMITS", 2000));
    let a = pingpong(
        CommitPolicy::EVERY_CRANK,
        WorkerKind::Thread,
        count("PINGS_A", 1000),
        &wasm,
    );
    let b = pingpong(grouped, WorkerKind::Thread, count("PINGS_B", 20000), &wasm);
    // `WORKERS=thread` leaves the process run out (to profile one kind).
    let process_too = std::env::var("WORKERS").map_or(true, |kinds| kinds != "thread");
    let p =
        process_too.then(|| pingpong(grouped, WorkerKind::Process, count("PINGS_B", 20000), &wasm));
    if !measuring {
        println!("smoke run ok: pingpong settled in both commit modes and both worker kinds");
        return;
    }
    println!("raw small SQLite commits (synchronous=FULL, WAL): {raw:.0}/s");
    println!(
        "mode (a) every crank committed, thread workers: {} cranks in {:.3} s = {:.0} cranks/s ({:.0}% of raw commits); {}",
        a.cranks,
        a.seconds,
        a.rate(),
        100.0 * a.rate() / raw,
        a.per_crank()
    );
    let group = format!(
        "<= {} cranks or {} ms",
        grouped.cranks_per_commit_max, grouped.commit_interval_ms
    );
    for (kind, run) in [("thread", Some(&b)), ("process", p.as_ref())] {
        let Some(run) = run else { continue };
        println!(
            "mode (b) grouped commits ({group}), {kind} workers: {} cranks in {:.3} s = {:.0} cranks/s; {}",
            run.cranks,
            run.seconds,
            run.rate(),
            run.per_crank()
        );
    }
}
