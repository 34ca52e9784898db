//! Crank hygiene under a failing store: every read the kernel makes during
//! a scenario (sends, a promise chain across vats, a trap, collection,
//! spawn, upgrade, suspension, termination, removal) is made to fail in
//! turn. Each failure must come back as an error, leave no crank open (the
//! next crank would panic), and leave tables that `vat check` finds
//! consistent; the kernel then carries on with the same store.
//!
//! It drives the kernel library in-process with thread workers, for speed.

use kernel::{CommitPolicy, Kernel, KernelError, Kref, PromiseState, VatOptions, WorkerKind};
use swingstore::{Durability, SwingStore};
use vom::{CapData, Ref, Value};

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(vat_tests::guest(name)).unwrap_or_else(|e| panic!("{name}.wasm: {e}"))
}

fn options() -> VatOptions {
    VatOptions {
        worker: WorkerKind::Thread,
        faults_in_a_row_max: 2,
        ..VatOptions::default()
    }
}

fn args(values: Vec<Value>) -> CapData {
    vom::capdata::encode(&Value::Array(values))
}

/// Sends `method(values)` to `target` and runs the kernel until it settles.
fn send(
    kernel: &mut Kernel,
    target: &Kref,
    method: &str,
    values: Vec<Value>,
) -> Result<PromiseState, KernelError> {
    let kpid = kernel.queue_message(target, method, args(values))?;
    let settled = kernel.run_until_settled(&kpid)?;
    kernel.release(&kpid)?;
    kernel.commit()?;
    Ok(settled)
}

/// Everything the scenario touches, made once.
struct Scene {
    kernel: Kernel,
    counter: Kref,
    a: Kref,
    b: Kref,
    faulty: Vec<u8>,
    round: u32,
    _dir: tempfile::TempDir,
}

impl Scene {
    fn new(cache: &std::path::Path) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
        kernel.set_module_cache(cache.to_owned());
        let counter = kernel
            .spawn_vat("counter", &wasm("counter"), options())
            .unwrap();
        let pingpong = wasm("pingpong");
        let a = kernel.spawn_vat("a", &pingpong, options()).unwrap();
        let b = kernel.spawn_vat("b", &pingpong, options()).unwrap();
        Scene {
            kernel,
            counter,
            a,
            b,
            faulty: wasm("faulty"),
            round: 0,
            _dir: dir,
        }
    }

    /// One pass over the kernel's paths; any step may fail.
    fn scenario(&mut self) -> Result<(), KernelError> {
        self.round += 1;
        let k = &mut self.kernel;
        send(k, &self.counter, "increment", vec![])?;
        let b = Value::Remotable(Ref::new(self.b.clone()));
        send(k, &self.a, "run", vec![Value::from(3u64), b])?;
        k.collect_vat_garbage("counter")?;
        let name = format!("f{}", self.round);
        let f = k.spawn_vat(&name, &self.faulty, options())?;
        send(k, &f, "set", vec![Value::from("k"), Value::from("v")])?;
        // Two faults in a row suspend it; an upgrade revives it.
        send(k, &f, "item", vec![Value::from(9u64)])?;
        send(k, &f, "item", vec![Value::from(9u64)])?;
        k.upgrade_vat(&name, &self.faulty)?;
        k.terminate_vat_by_owner(&name)?;
        k.remove_vat(&name)?;
        k.finish_cleanup()
    }
}

#[test]
fn every_failed_read_leaves_no_crank_open_and_the_tables_consistent() {
    let cache = tempfile::tempdir().unwrap();
    let mut scene = Scene::new(cache.path());
    let mut failures = 0;
    let mut reads = 0;
    loop {
        scene.kernel.store().fail_reads_after(Some(reads));
        let outcome = scene.scenario();
        scene.kernel.store().fail_reads_after(None);
        let (problems, _) = scene.kernel.check().unwrap();
        assert!(
            problems.is_empty(),
            "after a failure at read {reads}: {problems:#?}"
        );
        // The kernel goes on: a crank left open would panic here.
        let count = send(&mut scene.kernel, &scene.counter, "get", vec![]).unwrap();
        assert!(matches!(count, PromiseState::Fulfilled(_)), "{count:?}");
        match outcome {
            Err(KernelError::Store(swingstore::StoreError::Injected)) => failures += 1,
            Err(other) => panic!("a failure at read {reads} came back as {other}"),
            // The scenario no longer reaches its nth read: every point was tried.
            Ok(()) => break,
        }
        // Every one of the first reads; then ever more sparsely.
        reads += 1 + reads / 64;
    }
    assert!(failures > 100, "only {failures} reads were made to fail");
}
