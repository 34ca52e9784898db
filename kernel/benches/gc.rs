//! Garbage collection under churn: vat `a` (thread worker) asks vat `e` for
//! a new object, receives it and drops it, over and over. Each cycle is a
//! send, a notify, and (with GC on) a drop and a retire delivered to `e`.
//! Prints the store's key count and size and the process's resident memory
//! as the cycles go by (they should level off), and the crank rate with GC
//! on and with GC actions deferred (left queued).
//!
//! Run: `scripts/build-guests && cargo bench -p kernel --bench gc`
//! (`GC_BENCH_CYCLES=1000000` for a million cycles; the default is 200,000).

mod common;

use std::time::Instant;

use kernel::{CommitPolicy, Kernel, Kref, PromiseState, VatOptions, WorkerKind};
use swingstore::{Durability, SwingStore};
use vom::{Ref, Value};

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

struct Run {
    kernel: Kernel,
    a: Kref,
    e: Kref,
    dir: tempfile::TempDir,
}

impl Run {
    fn new(wasm: &[u8], deferred: bool) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Full).unwrap();
        let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
        kernel.set_gc_deferred(deferred);
        let options = VatOptions {
            worker: WorkerKind::Thread,
            ..VatOptions::default()
        };
        let e = kernel.spawn_vat("e", wasm, options).unwrap();
        let a = kernel.spawn_vat("a", wasm, options).unwrap();
        Run { kernel, a, e, dir }
    }

    /// Runs `cycles` churn cycles; returns (seconds, cranks).
    fn churn(&mut self, cycles: u64) -> (f64, u64) {
        let args = vom::capdata::encode(&Value::Array(vec![
            Value::Remotable(Ref::new(self.e.as_str())),
            Value::from(cycles),
        ]));
        let cranks = self.kernel.cranks_total();
        let started = Instant::now();
        let kpid = self.kernel.queue_message(&self.a, "churn", args).unwrap();
        let settled = self.kernel.run_until_settled(&kpid).unwrap();
        while self.kernel.step().unwrap() {}
        self.kernel.commit().unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert!(matches!(settled, PromiseState::Fulfilled(_)), "{settled:?}");
        self.kernel.release(&kpid).unwrap();
        (seconds, self.kernel.cranks_total() - cranks)
    }

    fn store(&self) -> (usize, u64) {
        let (problems, keys) = self.kernel.check().unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        // The store file only: the log (WAL) is reused in place up to
        // SQLite's checkpoint size, so its length says nothing of growth.
        let bytes = std::fs::metadata(self.dir.path().join("store.sqlite")).map_or(0, |m| m.len());
        (keys, bytes)
    }
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let cycles: u64 = std::env::var("GC_BENCH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 200_000 } else { 200 });
    let wasm = common::guest_wasm("holder");
    let checkpoints = 10;
    let per = cycles / checkpoints;

    let mut on = Run::new(&wasm, false);
    let (mut seconds, mut cranks) = (0.0, 0);
    for checkpoint in 1..=checkpoints {
        let (s, c) = on.churn(per);
        seconds += s;
        cranks += c;
        let (keys, bytes) = on.store();
        if measuring {
            println!(
                "GC on: {:>8} cycles: {keys} keys, {:.2} MiB store file, {:.1} MiB resident",
                checkpoint * per,
                bytes as f64 / (1 << 20) as f64,
                resident_kib() as f64 / 1024.0
            );
        }
    }
    let rate_on = cranks as f64 / seconds;
    let cycles_on = (per * checkpoints) as f64 / seconds;
    let (keys_on, _) = on.store();
    drop(on);

    // Deferred, garbage piles up (six keys a cycle): a shorter run shows the rate.
    let deferred_cycles = cycles.min(200_000);
    let mut deferred = Run::new(&wasm, true);
    let (seconds, cranks) = deferred.churn(deferred_cycles);
    let rate_deferred = cranks as f64 / seconds;
    let cycles_deferred = deferred_cycles as f64 / seconds;
    let (keys_deferred, _) = deferred.store();
    if measuring {
        println!(
            "GC on: {rate_on:.0} cranks/s, {cycles_on:.0} cycles/s; GC deferred ({deferred_cycles} cycles): {rate_deferred:.0} cranks/s, {cycles_deferred:.0} cycles/s, and the store grew to {keys_deferred} keys (vs {keys_on})"
        );
    } else {
        assert!(keys_deferred > keys_on, "deferred GC leaves garbage behind");
        println!("smoke run ok: {cycles} churn cycles with GC on and deferred");
    }
}
