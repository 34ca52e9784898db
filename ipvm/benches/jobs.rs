//! IPVM job figures: trivial-task throughput with a durable, signed receipt
//! committed per task; memo-hit latency (the same tasks again, in a new job,
//! found by their receipts); and a CPU-bound fan-out of independent tasks.
//!
//! Run: `scripts/build-guests && cargo bench -p ipvm --bench jobs`

#[path = "../../kernel/benches/common/mod.rs"]
mod common;

use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey};
use ipvm::{Jobs, TaskOutcome};
use kernel::{CommitPolicy, Kernel};
use serde_json::{Value as Json, json};
use swingstore::{Durability, SwingStore};

struct Bench {
    kernel: Kernel,
    key: SigningKey,
    did: String,
    tasks: String,
    /// How many pure tasks run at once.
    threads: usize,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Full).unwrap();
        let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
        kernel.set_module_cache(dir.path().join("modules"));
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        let key = SigningKey::from_bytes(&seed);
        let did = did_key::did_of(&key);
        let tasks = kernel.add_bundle(&common::guest_wasm("tasks")).unwrap();
        Bench {
            kernel,
            key,
            did,
            tasks,
            threads: ipvm::PURE_TASKS_PARALLEL_MAX,
            _dir: dir,
        }
    }

    fn job(&mut self, nonce: &str, run: Json) -> ipvm::Job {
        let mut job = json!({"type": "ipvm/job", "version": "0.1.0", "requestor": self.did, "nonce": nonce, "run": run});
        let signature = self.key.sign(&ipvm::signing_bytes(&job)).to_bytes();
        job["signature"] = ipvm::encode_signature(&signature).into();
        Jobs::new(&mut self.kernel)
            .validate(job, &self.did)
            .unwrap()
    }

    /// Runs a job; returns its wall time in seconds.
    fn run(&mut self, job: &ipvm::Job) -> f64 {
        let key = self.key.clone();
        let started = Instant::now();
        let outcomes = Jobs::new(&mut self.kernel)
            .with_pure_task_threads(self.threads)
            .run(
                job,
                &self.did.clone(),
                &|m| key.sign(m).to_bytes(),
                &mut |_| {},
            )
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert!(
            outcomes.values().all(|o| matches!(o, TaskOutcome::Ok(_))),
            "{outcomes:?}"
        );
        seconds
    }

    fn trivial(&self, count: usize) -> Json {
        (0..count)
            .map(|i| {
                (
                    format!("t{i}"),
                    json!({"type": "ipvm/wasm", "with": self.tasks, "func": "count", "input": [format!("input {i}")], "maxGas": 10_000}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let count = if measuring { ipvm::JOB_TASKS_MAX } else { 20 };
    let mut bench = Bench::new();
    // Warm up: the task-runner vat exists and its module is compiled.
    let trivial = bench.trivial(1);
    let warm = bench.job("warm", trivial);
    bench.run(&warm);

    let trivial = bench.trivial(count);
    let job = bench.job("first", trivial.clone());
    let seconds = bench.run(&job);
    let memo = bench.job("second", trivial);
    let memo_seconds = bench.run(&memo);

    let fan = 8;
    let tasks = bench.tasks.clone();
    let spin = |i: usize| json!({"type": "ipvm/wasm", "with": tasks, "func": "spin", "input": [50_000_000 + i], "maxGas": 10_000_000u64});
    let fan_run: Json = (0..fan)
        .map(|i| (format!("s{i}"), spin(i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    // The same fan-out on one thread, then on two (new jobs, so no memo hits).
    bench.threads = 1;
    let fan_job = bench.job("fan-1", fan_run.clone());
    let one_seconds = bench.run(&fan_job);
    let fan_run_2: Json = (0..fan)
        .map(|i| (format!("s{i}"), spin(fan + i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    bench.threads = 2;
    let fan_job = bench.job("fan-2", fan_run_2);
    let two_seconds = bench.run(&fan_job);
    if measuring {
        println!(
            "trivial tasks, a signed receipt committed per task: {count} in {seconds:.2} s = {:.0} tasks/s",
            count as f64 / seconds
        );
        println!(
            "memo hits (same tasks, new job): {count} in {memo_seconds:.3} s = {:.0} us per task",
            memo_seconds * 1e6 / count as f64
        );
        println!(
            "CPU-bound fan-out, {fan} independent spin tasks: 1 thread {one_seconds:.2} s, 2 threads {two_seconds:.2} s = {:.2}x",
            one_seconds / two_seconds
        );
    } else {
        println!("smoke run ok: {count} trivial tasks, memo hits, a fan-out of {fan}");
    }
}
