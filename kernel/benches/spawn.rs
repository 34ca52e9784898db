//! Time to spawn a vat, cold (the module is compiled) and cached (the
//! compiled artifact is loaded from the module cache), for thread and
//! process workers. Each spawn is a fresh kernel over a fresh store, as a
//! new `vat` process would be; only the module cache is shared. For process
//! workers, also a cached spawn into a running kernel that keeps a warm
//! spare process, as the daemon does (`Kernel::set_warm_spares`).
//!
//! Run: `scripts/build-guests && cargo build --release -p vat-supervisor && cargo bench -p kernel --bench spawn`

mod common;

use std::path::Path;
use std::time::Instant;

use kernel::{CommitPolicy, Kernel, VatOptions, WorkerKind};
use swingstore::{Durability, SwingStore};

/// Milliseconds to spawn `counter` into a fresh kernel whose module cache is `cache`.
fn spawn_ms(worker: WorkerKind, cache: &Path, wasm: &[u8]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Full).unwrap();
    let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
    kernel.set_module_cache(cache.to_owned());
    kernel.set_supervisor_program(common::profile_dir().join("vat-supervisor"));
    let options = VatOptions {
        worker,
        ..VatOptions::default()
    };
    let started = Instant::now();
    kernel.spawn_vat("counter", wasm, options).unwrap();
    started.elapsed().as_secs_f64() * 1000.0
}

/// Milliseconds to spawn a second `counter` into a kernel that keeps a warm
/// spare process, once the spare its first spawn started is up (a daemon
/// idles between requests).
fn spawn_warm_ms(cache: &Path, wasm: &[u8]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Full).unwrap();
    let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
    kernel.set_module_cache(cache.to_owned());
    kernel.set_supervisor_program(common::profile_dir().join("vat-supervisor"));
    kernel.set_warm_spares(1);
    let options = VatOptions {
        worker: WorkerKind::Process,
        ..VatOptions::default()
    };
    kernel.spawn_vat("first", wasm, options).unwrap();
    kernel.top_up_spares();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let started = Instant::now();
    kernel.spawn_vat("counter", wasm, options).unwrap();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    // As the daemon does once it has answered.
    kernel.top_up_spares();
    assert_eq!(
        kernel.resident(),
        (2, 1),
        "two vats awake, the spare replaced"
    );
    ms
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let rounds = if measuring { 15 } else { 1 };
    let wasm = common::guest_wasm("counter");
    for worker in [WorkerKind::Thread, WorkerKind::Process] {
        let cold = median(
            (0..rounds)
                .map(|_| spawn_ms(worker, tempfile::tempdir().unwrap().path(), &wasm))
                .collect(),
        );
        let cache = tempfile::tempdir().unwrap();
        spawn_ms(worker, cache.path(), &wasm);
        let cached = median(
            (0..rounds)
                .map(|_| spawn_ms(worker, cache.path(), &wasm))
                .collect(),
        );
        if measuring {
            println!(
                "spawn counter ({} bytes), {worker:?} worker: cold {cold:.1} ms, cached {cached:.1} ms (median of {rounds})",
                wasm.len()
            );
        }
    }
    let cache = tempfile::tempdir().unwrap();
    spawn_ms(WorkerKind::Process, cache.path(), &wasm);
    let warm = median(
        (0..rounds)
            .map(|_| spawn_warm_ms(cache.path(), &wasm))
            .collect(),
    );
    if measuring {
        println!(
            "spawn counter, Process worker, cached, in a running kernel with a warm spare process: {warm:.1} ms (median of {rounds})"
        );
    } else {
        println!("smoke run ok: spawned cold and cached, thread and process, and on a warm spare");
    }
}
