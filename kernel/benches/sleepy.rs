//! Sleepy vats at scale. Prints, from one run:
//! - hosting: spawn rate and store bytes per idle counter vat, for VATS
//!   vats (100,000 by default) on one store;
//! - kernel start with them all (what `vat start` does before it serves:
//!   open, schema check, wake the unclean vats): it must not grow with VATS;
//! - Zipf-distributed traffic (s = 1) with 50 resident: cranks/s, hit rate,
//!   evictions/s, and the step time of a hit beside a wake (dequeue to
//!   delivery, module in memory);
//! - process workers: wakes on a spare process (module in the process's
//!   memory) beside wakes that start a process loading the module from
//!   disk, and a wake that needs the module compiled; resident memory per
//!   awake process worker and of the kernel with 50 awake.
//!
//! Run: `scripts/build-guests && cargo build --release -p vat-supervisor &&
//! cargo bench -p kernel --bench sleepy` (`VATS=10000 MESSAGES=20000` to
//! change the sizes).

mod common;

use std::path::Path;
use std::time::Instant;

use kernel::{CommitPolicy, Kernel, Kref, PromiseState, VatOptions, VatQuery, WorkerKind};
use swingstore::{Durability, SwingStore};
use vom::Value;

const RESIDENT: usize = 50;

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open(path: &Path, durability: Durability) -> Kernel {
    let store = SwingStore::open(&path.join("store.sqlite"), durability).unwrap();
    let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
    kernel.set_module_cache(path.join("modules"));
    kernel.set_supervisor_program(common::supervisor());
    kernel
}

fn options(worker: WorkerKind) -> VatOptions {
    VatOptions {
        worker,
        ..VatOptions::default()
    }
}

/// Sends `increment()` to `target` and runs until it settles.
fn increment(kernel: &mut Kernel, target: &Kref) {
    let kpid = kernel
        .queue_message(
            target,
            "increment",
            vom::capdata::encode(&Value::Array(vec![])),
        )
        .unwrap();
    let settled = kernel.run_until_settled(&kpid).unwrap();
    assert!(matches!(settled, PromiseState::Fulfilled(_)), "{settled:?}");
    kernel.release(&kpid).unwrap();
}

/// Vat numbers drawn from a Zipf distribution (s = 1) over `1..=n`.
struct Zipf {
    cumulative: Vec<f64>,
    state: u64,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                total += 1.0 / k as f64;
                total
            })
            .collect();
        Zipf {
            cumulative,
            state: 0x2545_f491_4f6c_dd1d,
        }
    }

    fn next(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let total = *self.cumulative.last().unwrap();
        let x = (self.state >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.cumulative.partition_point(|c| *c < x) + 1
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn file_bytes(path: &Path) -> u64 {
    ["store.sqlite", "store.sqlite-wal"]
        .iter()
        .map(|f| std::fs::metadata(path.join(f)).map_or(0, |m| m.len()))
        .sum()
}

/// Spawns `vats` counter vats (thread workers); returns their roots.
fn host(dir: &Path, vats: usize) -> Vec<Kref> {
    let wasm = common::guest_wasm("counter");
    let mut kernel = open(dir, Durability::Normal);
    kernel.set_vats_resident_max(RESIDENT).unwrap();
    kernel
        .spawn_vat("probe", &wasm, options(WorkerKind::Thread))
        .unwrap();
    let before = file_bytes(dir);
    let started = Instant::now();
    let roots: Vec<Kref> = (1..=vats)
        .map(|n| {
            let root = kernel
                .spawn_vat(&format!("c-{n}"), &wasm, options(WorkerKind::Thread))
                .unwrap();
            if n % 10_000 == 0 {
                eprintln!("  spawned {n} of {vats}");
            }
            root
        })
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    kernel.commit().unwrap();
    drop(kernel);
    // The WAL folded in, so the file says what the vats take.
    let store = SwingStore::open(&dir.join("store.sqlite"), Durability::Full).unwrap();
    drop(store);
    let per_vat = file_bytes(dir).saturating_sub(before) as f64 / vats as f64;
    println!(
        "hosting: {vats} counter vats spawned in {seconds:.1} s ({:.0} vats/s); store {per_vat:.0} bytes per idle vat (target <= 4096)",
        vats as f64 / seconds
    );
    roots
}

fn kernel_start(dir: &Path, vats: usize) {
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let mut kernel = open(dir, Durability::Full);
            kernel.start_workers().unwrap();
            let seconds = started.elapsed().as_secs_f64();
            assert_eq!(kernel.resident().0, 0, "clean vats sleep through a start");
            seconds
        })
        .collect();
    println!(
        "kernel start with {vats} vats: p50 {:.1} ms (target <= 100 ms; open, schema check, wake unclean vats)",
        percentile(&mut samples, 0.5) * 1e3
    );
}

fn zipf_traffic(dir: &Path, roots: &[Kref], messages: usize) {
    let mut kernel = open(dir, Durability::Full);
    kernel.set_vats_resident_max(RESIDENT).unwrap();
    let mut zipf = Zipf::new(roots.len());
    let (mut hits, mut wakes) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for _ in 0..messages {
        let before = kernel.residency_counts().wakes;
        let step = Instant::now();
        increment(&mut kernel, &roots[zipf.next() - 1]);
        let seconds = step.elapsed().as_secs_f64();
        if kernel.residency_counts().wakes > before {
            wakes.push(seconds);
        } else {
            hits.push(seconds);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let counts = kernel.residency_counts();
    let hit_rate = hits.len() as f64 / messages as f64;
    println!(
        "zipf traffic, {} vats, {RESIDENT} resident, thread workers: {:.0} messages/s, hit rate {:.1}%, {:.0} evictions/s",
        roots.len(),
        messages as f64 / elapsed,
        hit_rate * 100.0,
        counts.evictions as f64 / elapsed
    );
    if !hits.is_empty() && !wakes.is_empty() {
        println!(
            "  message to an awake vat: p50 {:.0} us, p99 {:.0} us; to a sleeping vat (wake, module in memory): p50 {:.0} us, p99 {:.0} us (target <= 2 ms, <= 5 ms)",
            percentile(&mut hits, 0.5) * 1e6,
            percentile(&mut hits, 0.99) * 1e6,
            percentile(&mut wakes, 0.5) * 1e6,
            percentile(&mut wakes, 0.99) * 1e6,
        );
    }
    let kernel_kib = rss_kib(std::process::id());
    println!(
        "  kernel resident memory with {} vats awake in its threads: {:.1} MiB (target <= 1 GiB)",
        kernel.resident().0,
        kernel_kib as f64 / 1024.0
    );
}

/// Process workers: wakes on spare processes, from disk, and compiling.
fn process_wakes(dir: &Path, messages: usize, measuring: bool) {
    let wasm = common::guest_wasm("counter");
    let vats = if measuring { 500 } else { 60 };
    let mut kernel = open(dir, Durability::Full);
    kernel.set_vats_resident_max(RESIDENT).unwrap();
    let roots: Vec<Kref> = (1..=vats)
        .map(|n| {
            kernel
                .spawn_vat(&format!("p-{n}"), &wasm, options(WorkerKind::Process))
                .unwrap()
        })
        .collect();
    let mut zipf = Zipf::new(vats);
    let mut wakes = Vec::new();
    let started = Instant::now();
    for _ in 0..messages.min(5000) {
        let before = kernel.residency_counts();
        let step = Instant::now();
        increment(&mut kernel, &roots[zipf.next() - 1]);
        let after = kernel.residency_counts();
        if after.processes_reused > before.processes_reused {
            wakes.push(step.elapsed().as_secs_f64());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let awake = kernel.vats_page(&VatQuery {
        resident_only: true,
        limit: usize::MAX,
        ..VatQuery::default()
    });
    let pids: Vec<u32> = awake.unwrap().iter().filter_map(|v| v.worker_pid).collect();
    let worker_kib: u64 = pids.iter().map(|pid| rss_kib(*pid)).sum();
    if wakes.is_empty() {
        wakes.push(f64::NAN);
    }
    println!(
        "process workers, {vats} vats, {RESIDENT} resident, zipf: {:.0} messages/s; wake on a spare process (module in its memory): p50 {:.2} ms, p99 {:.2} ms over {} wakes",
        messages.min(5000) as f64 / elapsed,
        percentile(&mut wakes, 0.5) * 1e3,
        percentile(&mut wakes, 0.99) * 1e3,
        wakes.len()
    );
    println!(
        "  resident memory: {:.1} MiB per awake process worker ({} awake), kernel {:.1} MiB",
        worker_kib as f64 / 1024.0 / pids.len().max(1) as f64,
        pids.len(),
        rss_kib(std::process::id()) as f64 / 1024.0
    );
    drop(kernel);
    cold_wakes(dir, &roots, measuring);
}

/// A wake with no spare process: loading the module from disk, then
/// compiling it (no module cache).
fn cold_wakes(dir: &Path, roots: &[Kref], measuring: bool) {
    let mut from_disk = Vec::new();
    let (disk_samples, compile_samples) = if measuring { (20, 5) } else { (2, 0) };
    for root in roots.iter().take(disk_samples) {
        let mut kernel = open(dir, Durability::Full);
        let step = Instant::now();
        increment(&mut kernel, root);
        from_disk.push(step.elapsed().as_secs_f64());
    }
    let mut compiling = Vec::new();
    for root in roots.iter().skip(disk_samples).take(compile_samples) {
        let store = SwingStore::open(&dir.join("store.sqlite"), Durability::Full).unwrap();
        let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
        kernel.set_supervisor_program(common::supervisor());
        let step = Instant::now();
        increment(&mut kernel, root);
        compiling.push(step.elapsed().as_secs_f64());
    }
    if compiling.is_empty() {
        return;
    }
    println!(
        "  wake starting a process that loads the module from disk: p50 {:.1} ms, p99 {:.1} ms; needing compilation: p50 {:.0} ms",
        percentile(&mut from_disk, 0.5) * 1e3,
        percentile(&mut from_disk, 0.99) * 1e3,
        percentile(&mut compiling, 0.5) * 1e3,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`. Under `cargo test` it is absent: then
    // a small run checks that the benchmark still works.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let (vats, messages) = if measuring {
        (
            env_count("VATS", 100_000) as usize,
            env_count("MESSAGES", 20_000) as usize,
        )
    } else {
        (200, 300)
    };
    let dir = tempfile::tempdir().unwrap();
    let roots = host(dir.path(), vats);
    kernel_start(dir.path(), vats);
    zipf_traffic(dir.path(), &roots, messages);
    let processes = tempfile::tempdir().unwrap();
    process_wakes(processes.path(), messages, measuring);
}
