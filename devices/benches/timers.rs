//! Timer lateness: how long after its due time a timer fires when the
//! kernel is turned as the daemon turns it (fire what is due, wait until
//! the next due time, fire again), in one process with a thread worker.
//! Prints p50, p99 and the maximum over `TIMERS` timers (default 200)
//! spread over about a second.
//!
//! Run: `scripts/build-guests && cargo bench -p devices --bench timers`.

#[path = "../../kernel/benches/common/mod.rs"]
mod common;

use std::time::Duration;

use kernel::{CommitPolicy, Kernel, VatOptions, WorkerKind};
use swingstore::{Durability, SwingStore};
use vom::{Ref, Value};

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let timers: u64 = if measuring {
        std::env::var("TIMERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    } else {
        5
    };
    let dir = tempfile::tempdir().unwrap();
    let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Full).unwrap();
    let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
    devices::attach(&mut kernel);
    let timer = devices::timer::install(&mut kernel).unwrap();
    let options = VatOptions {
        worker: WorkerKind::Thread,
        ..VatOptions::default()
    };
    let a = kernel
        .spawn_vat("a", &common::guest_wasm("waiter"), options)
        .unwrap();
    for i in 0..timers {
        let args = Value::Array(vec![
            Value::Remotable(Ref::new(timer.to_string())),
            Value::string("after"),
            Value::Array(vec![Value::from(100 + i * 1000 / timers)]),
        ]);
        let kpid = kernel
            .queue_message(&a, "ask", vom::capdata::encode(&args))
            .unwrap();
        kernel.run_until_settled(&kpid).unwrap();
        kernel.release(&kpid).unwrap();
    }
    while kernel.step().unwrap() {}
    kernel.commit().unwrap();
    let mut late_ms = Vec::new();
    while let Some(due) = devices::timer::next_due_ms(&kernel).unwrap() {
        let now = devices::timer::now_ms();
        if due > now {
            std::thread::sleep(Duration::from_millis(due - now));
        }
        // Fire the timers due at `due` (as the daemon would have by now),
        // and count how late that is for each.
        let fired_at = devices::timer::now_ms();
        let fired = devices::timer::fire_due(&mut kernel, due).unwrap();
        while kernel.step().unwrap() {}
        kernel.commit().unwrap();
        late_ms.extend(std::iter::repeat_n(fired_at.saturating_sub(due), fired));
    }
    assert_eq!(late_ms.len() as u64, timers, "every timer fired once");
    if !measuring {
        println!("smoke run ok: {timers} timers fired once each");
        return;
    }
    late_ms.sort_unstable();
    let at = |q: f64| late_ms[((late_ms.len() - 1) as f64 * q) as usize];
    println!(
        "timer lateness over {timers} timers: p50 {} ms, p99 {} ms, max {} ms",
        at(0.5),
        at(0.99),
        late_ms.last().unwrap()
    );
}
