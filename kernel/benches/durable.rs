//! The virtual object manager's figures:
//! - durable object creation rate, in one crank (`make(n)` on the `things`
//!   test guest: each object made and kept in a durable map), and the commit;
//! - restart-to-first-delivery with 1k, 100k and 1M durable objects: a new
//!   kernel over the same store, a new worker, `startVat`, then the first
//!   message to one object (found through the registry) and its reply;
//! - bytes on disk per small durable object;
//! - the time to upgrade a vat holding 1k and 100k objects, with no kind
//!   changed and with one kind reshaped by a migration (`things_migrated`),
//!   and the first delivery to a migrated object after it.
//!
//! Run: `scripts/build-guests && cargo build --release -p vat-supervisor && cargo bench -p kernel --bench durable`
//! (`DURABLE_BENCH_MAX=100000` to stop below a million).

mod common;

use std::path::Path;
use std::time::Instant;

use kernel::{CommitPolicy, Kernel, Kref, PromiseState, VatOptions, WorkerKind};
use swingstore::{Durability, SwingStore};
use vom::{CapData, Value};

/// Limits roomy enough for batches of 50,000 objects in one crank.
fn roomy(worker: WorkerKind) -> VatOptions {
    VatOptions {
        worker,
        fuel_per_delivery: 20_000_000_000,
        deadline_ms: 60_000,
        syscalls_per_delivery_max: 10_000_000,
        ..VatOptions::default()
    }
}

fn args(values: Vec<Value>) -> CapData {
    vom::capdata::encode(&Value::Array(values))
}

struct Bench {
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Bench {
    fn kernel(&self) -> Kernel {
        open_kernel(self.dir.path(), self.cache.path())
    }
}

fn open_kernel(dir: &Path, cache: &Path) -> Kernel {
    {
        let store = SwingStore::open(&dir.join("store.sqlite"), Durability::Full).unwrap();
        // Commits only when asked, so a crank's time and its commit's are measured apart.
        let policy = CommitPolicy {
            cranks_per_commit_max: u32::MAX,
            commit_interval_ms: u64::MAX,
        };
        let mut kernel = Kernel::new(store, policy).unwrap();
        kernel.set_module_cache(cache.to_owned());
        kernel.set_supervisor_program(common::profile_dir().join("vat-supervisor"));
        kernel
    }
}

impl Bench {
    /// The store file and its write-ahead log, in bytes.
    fn store_bytes(&self) -> (u64, u64) {
        let size =
            |name: &str| std::fs::metadata(self.dir.path().join(name)).map_or(0, |m| m.len());
        (size("store.sqlite"), size("store.sqlite-wal"))
    }
}

fn call(kernel: &mut Kernel, target: &Kref, method: &str, values: Vec<Value>) -> CapData {
    let kpid = kernel.queue_message(target, method, args(values)).unwrap();
    let settled = kernel.run_until_settled(&kpid).unwrap();
    kernel.release(&kpid).unwrap();
    match settled {
        PromiseState::Fulfilled(data) => data,
        other => panic!("{method} failed: {other:?}"),
    }
}

/// Objects per second made in `rounds` cranks of `batch` each, on a fresh
/// store: (in the crank, with its commit).
fn creation_rates(wasm: &[u8], options: VatOptions, batch: u64, rounds: u32) -> Vec<(f64, f64)> {
    let bench = Bench {
        dir: tempfile::tempdir().unwrap(),
        cache: tempfile::tempdir().unwrap(),
    };
    let mut kernel = bench.kernel();
    let root = kernel.spawn_vat("things", wasm, options).unwrap();
    (0..rounds)
        .map(|_| make(&mut kernel, &root, batch))
        .collect()
}

/// Makes `count` things in one crank: (objects/s in the crank, with the commit).
fn make(kernel: &mut Kernel, root: &Kref, count: u64) -> (f64, f64) {
    let started = Instant::now();
    let kpid = kernel
        .queue_message(root, "make", args(vec![Value::from(count)]))
        .unwrap();
    // Pending GC actions (from a restart's own messages) go first.
    while kernel.promise_state(&kpid).unwrap() == Some(PromiseState::Unresolved) {
        assert!(kernel.step().unwrap(), "the make crank runs");
    }
    let crank_s = started.elapsed().as_secs_f64();
    kernel.commit().unwrap();
    let total_s = started.elapsed().as_secs_f64();
    assert!(matches!(
        kernel.promise_state(&kpid).unwrap(),
        Some(PromiseState::Fulfilled(_))
    ));
    kernel.release(&kpid).unwrap();
    (count as f64 / crank_s, count as f64 / total_s)
}

fn report_rates(worker: &str, batch: u64, mut rates: Vec<(f64, f64)>) {
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (crank, total) = rates[rates.len() / 2];
    let best = rates.iter().map(|r| r.0).fold(0.0, f64::max);
    println!(
        "creation, {batch} objects per crank, {worker} worker: {crank:.0} objects/s in the crank (best {best:.0}), {total:.0} objects/s with the commit (median of {} batches)",
        rates.len()
    );
}

/// The restart half, in a process of its own: opens the kernel, starts its
/// workers, and sends the first message to object `id`. Prints the times.
fn restart(dir: &Path) {
    let var = |name: &str| std::env::var(name).unwrap();
    let cache = var("DURABLE_BENCH_CACHE");
    let root = Kref::parse(&var("DURABLE_BENCH_ROOT")).expect("a kref");
    let id: u64 = var("DURABLE_BENCH_ID").parse().unwrap();
    let started = Instant::now();
    let mut kernel = open_kernel(dir, Path::new(&cache));
    kernel.start_workers().unwrap();
    let started_ms = started.elapsed().as_secs_f64() * 1000.0;
    let thing = call(&mut kernel, &root, "thing", vec![Value::from(id)]);
    let described = call(
        &mut kernel,
        &Kref::parse(&thing.slots[0]).unwrap(),
        "describe",
        vec![],
    );
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(
        vom::capdata::decode(&described).unwrap(),
        Value::string(format!("thing {id}: t{id}"))
    );
    println!("{started_ms:.1} {first_ms:.1}");
}

/// On a fresh store with `count` things: the ms to upgrade with no kind
/// changed, to upgrade with `Thing` migrated, and of the first delivery to
/// a thing after that (which migrates it).
fn upgrade_times(count: u64) -> (f64, f64, f64) {
    let bench = Bench {
        dir: tempfile::tempdir().unwrap(),
        cache: tempfile::tempdir().unwrap(),
    };
    let mut kernel = bench.kernel();
    let options = roomy(WorkerKind::Thread);
    let (plain, migrated) = (
        common::guest_wasm("things"),
        common::guest_wasm("things_migrated"),
    );
    let root = kernel.spawn_vat("things", &plain, options).unwrap();
    let mut made = 0;
    while made < count {
        let batch = 50_000.min(count - made);
        make(&mut kernel, &root, batch);
        made += batch;
    }
    kernel.commit().unwrap();
    let timed = |kernel: &mut Kernel, wasm: &[u8]| {
        let started = Instant::now();
        kernel.upgrade_vat("things", wasm).unwrap();
        started.elapsed().as_secs_f64() * 1000.0
    };
    // Compiled once first, so that compiling is not what is measured.
    kernel.upgrade_vat("things", &plain).unwrap();
    let unchanged_ms = timed(&mut kernel, &plain);
    // Another vat of the migrated module compiles it (and starts on a store of its own).
    kernel.spawn_vat("warm", &migrated, options).unwrap();
    let migrated_ms = timed(&mut kernel, &migrated);
    let started = Instant::now();
    let id = count - 1;
    let thing = call(&mut kernel, &root, "thing", vec![Value::from(id)]);
    let described = call(
        &mut kernel,
        &Kref::parse(&thing.slots[0]).unwrap(),
        "describe",
        vec![],
    );
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(
        vom::capdata::decode(&described).unwrap(),
        Value::string(format!("thing {id}: t{id} (migrated)"))
    );
    (unchanged_ms, migrated_ms, first_ms)
}

fn main() {
    if let Some(dir) = std::env::var_os("DURABLE_BENCH_RESTART") {
        return restart(Path::new(&dir));
    }
    if std::env::var_os("DURABLE_BENCH_THREAD_ONLY").is_some() {
        // For profiling the creation path alone.
        let options = roomy(WorkerKind::Thread);
        let rates = creation_rates(&common::guest_wasm("things"), options, 50_000, 10);
        return report_rates("thread", 50_000, rates);
    }
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let max: u64 = std::env::var("DURABLE_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 1_000_000 } else { 2_000 });
    let batch: u64 = if measuring { 50_000 } else { 1_000 };
    let wasm = common::guest_wasm("things");
    let options = roomy(WorkerKind::Process);
    let bench = Bench {
        dir: tempfile::tempdir().unwrap(),
        cache: tempfile::tempdir().unwrap(),
    };
    let mut kernel = bench.kernel();
    let root = kernel.spawn_vat("things", &wasm, options).unwrap();
    drop(kernel);
    let (empty_bytes, _) = bench.store_bytes();
    let mut kernel = bench.kernel();
    let mut made = 0u64;
    let mut rates = Vec::new();
    for checkpoint in [1_000u64, 100_000, 1_000_000] {
        if checkpoint > max {
            break;
        }
        while made < checkpoint {
            let count = batch.min(checkpoint - made);
            let rate = make(&mut kernel, &root, count);
            made += count;
            if count == batch {
                rates.push(rate);
            }
        }
        // Closing the store checkpoints its log into the file.
        drop(kernel);
        let (file_bytes, log_bytes) = bench.store_bytes();
        assert_eq!(log_bytes, 0, "closing the store empties its log");
        let bytes = file_bytes - empty_bytes;

        // Restart: a new process, a new kernel over the same store, a new worker.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("DURABLE_BENCH_RESTART", bench.dir.path())
            .env("DURABLE_BENCH_CACHE", bench.cache.path())
            .env("DURABLE_BENCH_ROOT", root.as_str())
            .env("DURABLE_BENCH_ID", (made - 1).to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (started_ms, first_ms) = text.trim().split_once(' ').unwrap();
        let (started_ms, first_ms): (f64, f64) =
            (started_ms.parse().unwrap(), first_ms.parse().unwrap());
        kernel = bench.kernel();
        if measuring {
            println!(
                "{made} durable objects: restart to first delivery {first_ms:.1} ms (kernel and worker up in {started_ms:.1} ms); {:.0} bytes on disk per object",
                bytes as f64 / made as f64
            );
        }
    }
    if measuring && !rates.is_empty() {
        report_rates("process", batch, rates);
        let thread = creation_rates(
            &wasm,
            VatOptions {
                worker: WorkerKind::Thread,
                ..options
            },
            batch,
            5,
        );
        report_rates("thread", batch, thread);
    }
    let upgrade_counts: &[u64] = if measuring { &[1_000, 100_000] } else { &[200] };
    for &count in upgrade_counts {
        let (unchanged_ms, migrated_ms, first_ms) = upgrade_times(count);
        if measuring {
            println!(
                "upgrade with {count} objects, thread worker: {unchanged_ms:.1} ms with no kind changed, {migrated_ms:.1} ms with one kind migrated (lazily), then {first_ms:.1} ms for the first delivery to a migrated object"
            );
        }
    }
    if !measuring {
        println!(
            "smoke run ok: made {made} durable objects, restarted, delivered; upgraded with a migration"
        );
    }
}
