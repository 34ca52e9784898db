//! A property test of the kernel's garbage collection: random sequences of
//! takes, gives, drops, promise queueing and settlement, traps (a rolled-back
//! message and a fresh worker), and vats terminated and removed
//! across three holder vats (and an exporter), with the kernel's invariants
//! (`vat check`: every count recounted from the store) after every step, and
//! everything the exporter made freed once the survivors let go.
//!
//! It drives the kernel library in-process with thread workers, for speed.

use kernel::{CommitPolicy, Kernel, Kref, PromiseState, VatOptions, WorkerKind};
use proptest::prelude::*;
use swingstore::{Durability, SwingStore};
use vom::{CapData, Ref, Value};

const VATS: [&str; 3] = ["a", "b", "c"];
const NAMES: [&str; 3] = ["n0", "n1", "n2"];
const PROMISES: [&str; 2] = ["p0", "p1"];

#[derive(Debug, Clone)]
enum Op {
    /// `vat` gets a new object from `e`, held as `name`.
    Take(usize, usize),
    /// `vat` gives what it holds as `name` to `to`, held there as `name`.
    Give(usize, usize, usize),
    Drop(usize, usize),
    /// `vat` asks `decider` for its promise `promise` and holds it.
    Ask(usize, usize, usize),
    /// `vat` sends `hold(name, held[name])` to its held promise.
    QueueOn(usize, usize, usize),
    /// `decider` fulfills `promise` with vat `to`'s root.
    Fire(usize, usize, usize),
    /// `decider` rejects `promise`.
    Fail(usize, usize),
    /// `vat` traps: the message is rolled back, its heap lost.
    Trap(usize),
    /// `vat` is terminated and removed (`vat terminate`, `vat rm`).
    Remove(usize),
    Collect,
}

fn op() -> impl Strategy<Value = Op> {
    let vat = 0..VATS.len();
    let name = 0..NAMES.len();
    let promise = 0..PROMISES.len();
    prop_oneof![
        4 => (vat.clone(), name.clone()).prop_map(|(v, n)| Op::Take(v, n)),
        4 => (vat.clone(), name.clone(), vat.clone()).prop_map(|(v, n, t)| Op::Give(v, n, t)),
        4 => (vat.clone(), name.clone()).prop_map(|(v, n)| Op::Drop(v, n)),
        2 => (vat.clone(), vat.clone(), promise.clone()).prop_map(|(v, d, p)| Op::Ask(v, d, p)),
        2 => (vat.clone(), promise.clone(), name.clone()).prop_map(|(v, p, n)| Op::QueueOn(v, p, n)),
        2 => (vat.clone(), promise.clone(), vat.clone()).prop_map(|(d, p, t)| Op::Fire(d, p, t)),
        1 => (vat.clone(), promise.clone()).prop_map(|(d, p)| Op::Fail(d, p)),
        1 => vat.clone().prop_map(Op::Trap),
        1 => vat.prop_map(Op::Remove),
        1 => Just(Op::Collect),
    ]
}

fn holder_wasm() -> Vec<u8> {
    std::fs::read(vat_tests::guest("holder")).expect("holder.wasm")
}

struct World {
    kernel: Kernel,
    roots: Vec<Kref>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(wasm: &[u8], cache: &std::path::Path) -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
        kernel.set_module_cache(cache.to_owned());
        // Traps never add up to a suspension here: every vat must take part
        // in the final letting go.
        let options = VatOptions {
            worker: WorkerKind::Thread,
            faults_in_a_row_max: u32::MAX,
            ..VatOptions::default()
        };
        let roots = ["e", "a", "b", "c"]
            .iter()
            .map(|name| kernel.spawn_vat(name, wasm, options).unwrap())
            .collect();
        World {
            kernel,
            roots,
            _dir: dir,
        }
    }

    fn root(&self, vat: usize) -> &Kref {
        &self.roots[vat + 1]
    }

    fn reference(&self, vat: usize) -> Value {
        Value::Remotable(Ref::new(self.root(vat).as_str()))
    }

    /// Sends `method(args)` to vat `vat`'s root and runs the kernel until it is idle.
    fn send_to(&mut self, vat: usize, method: &str, args: Vec<Value>) {
        let target = self.root(vat).clone();
        let args: CapData = vom::capdata::encode(&Value::Array(args));
        let kpid = self.kernel.queue_message(&target, method, args).unwrap();
        while self.kernel.step().unwrap() {}
        self.kernel.commit().unwrap();
        let _: Option<PromiseState> = self.kernel.promise_state(&kpid).unwrap();
        self.kernel.release(&kpid).unwrap();
        while self.kernel.step().unwrap() {}
        self.kernel.commit().unwrap();
    }

    fn apply(&mut self, op: &Op) {
        let s = |text: &str| Value::from(text);
        match *op {
            Op::Take(v, n) => {
                let e = self.roots[0].clone();
                let args = vec![Value::Remotable(Ref::new(e)), s("x"), s(NAMES[n])];
                self.send_to(v, "take", args);
            }
            Op::Give(v, n, to) => {
                let args = vec![s(NAMES[n]), self.reference(to), s(NAMES[n])];
                self.send_to(v, "give", args);
            }
            Op::Drop(v, n) => self.send_to(v, "drop", vec![s(NAMES[n])]),
            Op::Ask(v, d, p) => {
                let args = vec![self.reference(d), s(PROMISES[p])];
                self.send_to(v, "ask", args);
            }
            Op::QueueOn(v, p, n) => {
                let args = vec![s(PROMISES[p]), s("hold"), s(NAMES[n])];
                self.send_to(v, "queueOn", args);
            }
            Op::Fire(d, p, to) => {
                let args = vec![s(PROMISES[p]), self.reference(to)];
                self.send_to(d, "fire", args);
            }
            Op::Fail(d, p) => {
                let args = vec![s(PROMISES[p]), s("no")];
                self.send_to(d, "fail", args);
            }
            Op::Trap(v) => self.send_to(v, "trap", vec![]),
            Op::Remove(v) => {
                // Already removed: refused, and nothing changes.
                if self.kernel.terminate_vat_by_owner(VATS[v]).is_ok() {
                    self.kernel.remove_vat(VATS[v]).unwrap();
                    self.kernel.finish_cleanup().unwrap();
                }
            }
            Op::Collect => {
                self.kernel.collect_vat_garbage("e").unwrap();
            }
        }
    }

    fn assert_consistent(&self, after: &str) {
        let (problems, _) = self.kernel.check().unwrap();
        assert!(problems.is_empty(), "after {after}: {problems:#?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn gc_invariants_hold_after_every_step(ops in proptest::collection::vec(op(), 1..24)) {
        let wasm = holder_wasm();
        let cache = tempfile::tempdir().unwrap();
        let mut world = World::new(&wasm, cache.path());
        for (index, op) in ops.iter().enumerate() {
            world.apply(op);
            world.assert_consistent(&format!("step {index}: {op:?}"));
        }
        // Everyone lets go of everything: e's objects must all be freed.
        for vat in 0..VATS.len() {
            for name in NAMES.iter().chain(PROMISES.iter()) {
                world.send_to(vat, "drop", vec![Value::from(*name)]);
            }
        }
        // Messages still queued on never-settled promises keep what they carry;
        // settling every promise lets them go.
        for decider in 0..VATS.len() {
            for promise in PROMISES {
                world.send_to(decider, "fail", vec![Value::from(promise), Value::from("end")]);
            }
        }
        for vat in 0..VATS.len() {
            for name in NAMES {
                world.send_to(vat, "drop", vec![Value::from(name)]);
            }
        }
        world.kernel.collect_vat_garbage("e").unwrap();
        world.assert_consistent("the final collection");
        let (problems, _) = world.kernel.check().unwrap();
        prop_assert!(problems.is_empty());
        let exporter = world.kernel.vat_id("e").unwrap();
        let leftover: Vec<_> = world.kernel.objects_owned_by(&exporter).unwrap()
            .into_iter().filter(|ko| ko.as_str() != world.roots[0].as_str()).collect();
        prop_assert!(leftover.is_empty(), "e still exports {:?} after {:?}", leftover, ops);
    }
}
