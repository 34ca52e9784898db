//! Fuel-metering overhead on a CPU-bound guest: the same module, run on an
//! engine configured as the vat host's (NaN canonicalization, no relaxed
//! SIMD, epoch interruption) with and without fuel metering.
//!
//! Run: `cargo bench -p vat-supervisor --bench fuel`

use std::time::Instant;

use wasmtime::{Config, Engine, Instance, Module, Store};

/// A CPU-bound loop: an LCG and a running sum, `n` iterations, with a memory
/// touch each round so the loop is not all registers.
const CPU_BOUND: &str = r#"
    (module
      (memory 1)
      (func (export "work") (param $n i32) (result i32)
        (local $x i32) (local $sum i32)
        (local.set $x (i32.const 12345))
        (block $done
          (loop $again
            (br_if $done (i32.eqz (local.get $n)))
            (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1103515245)) (i32.const 12345)))
            (i32.store (i32.and (local.get $x) (i32.const 4092)) (local.get $x))
            (local.set $sum (i32.add (local.get $sum) (i32.load (i32.and (local.get $sum) (i32.const 4092)))))
            (local.set $n (i32.sub (local.get $n) (i32.const 1)))
            (br $again)))
        (local.get $sum)))
"#;

fn run(fuel: bool, iterations: i32) -> (f64, i32) {
    let mut config = Config::new();
    config
        .consume_fuel(fuel)
        .epoch_interruption(true)
        .cranelift_nan_canonicalization(true)
        .wasm_relaxed_simd(false);
    let engine = Engine::new(&config).unwrap();
    let module = Module::new(&engine, CPU_BOUND).unwrap();
    let mut store = Store::new(&engine, ());
    if fuel {
        store.set_fuel(u64::MAX).unwrap();
    }
    store.set_epoch_deadline(u64::MAX);
    let instance = Instance::new(&mut store, &module, &[]).unwrap();
    let work = instance
        .get_typed_func::<i32, i32>(&mut store, "work")
        .unwrap();
    work.call(&mut store, 1000).unwrap();
    let fuel_before = store.get_fuel().unwrap_or(0);
    let started = Instant::now();
    let sum = work.call(&mut store, iterations).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    if fuel {
        let used = fuel_before - store.get_fuel().unwrap();
        assert!(
            used >= iterations as u64,
            "metering is on: {used} fuel for {iterations} iterations"
        );
    }
    (seconds, sum)
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let (iterations, rounds) = if measuring {
        (100_000_000, 7)
    } else {
        (1000, 1)
    };
    // Interleaved rounds, best of each: the machine's noise only ever adds time.
    let (mut metered, mut free) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let (seconds, sum_metered) = run(true, iterations);
        metered = metered.min(seconds);
        let (seconds, sum_free) = run(false, iterations);
        free = free.min(seconds);
        assert_eq!(sum_metered, sum_free, "metering must not change results");
    }
    if measuring {
        println!(
            "CPU-bound guest, {iterations} iterations, best of {rounds}: unmetered {free:.3} s, fuel-metered {metered:.3} s: overhead {:.1}%",
            100.0 * (metered / free - 1.0)
        );
    } else {
        println!("smoke run ok: metered and unmetered runs agree");
    }
}
