//! Time to spawn a vat, cold (the module is compiled) and cached (the
//! compiled artifact is loaded from the module cache), for thread and
//! process workers. Each spawn is a fresh kernel over a fresh store, as a
//! new `vat` process would be; only the module cache is shared.
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
    if !measuring {
        println!("smoke run ok: spawned cold and cached, thread and process");
    }
}
