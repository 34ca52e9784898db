//! Modules: spawning a vat from one, upgrading a vat to another, storing one.

use std::path::Path;

use anyhow::{Context, Result};
use kernel::{Kernel, VatOptions, WorkerKind};

use crate::request::{Outcome, SpawnOptions};

fn read_module(module: &Path) -> Result<Vec<u8>> {
    std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))
}

pub fn spawn(
    kernel: &mut Kernel,
    name: &str,
    module: &Path,
    options: &SpawnOptions,
    out: &mut Outcome,
) -> Result<()> {
    let wasm = read_module(module)?;
    let options = VatOptions {
        worker: if options.thread {
            WorkerKind::Thread
        } else {
            WorkerKind::Process
        },
        fuel_per_delivery: options.fuel,
        deadline_ms: options.deadline_ms,
        memory_bytes_max: options.memory_bytes,
        message_bytes_max: options.message_bytes,
        syscalls_per_delivery_max: options.syscalls_max,
        pipelining: options.pipelining,
        faults_in_a_row_max: options.faults_in_a_row_max,
    };
    let root = kernel
        .spawn_vat(name, &wasm, options)
        .with_context(|| format!("cannot spawn {} from {}", name, module.display()))?;
    out.line(root);
    Ok(())
}

pub fn upgrade(kernel: &mut Kernel, name: &str, module: &Path, out: &mut Outcome) -> Result<()> {
    let wasm = read_module(module)?;
    let cid = kernel.upgrade_vat(name, &wasm)?;
    out.line(format!("upgraded {name} to bundle {cid}"));
    Ok(())
}

pub fn add_bundle(kernel: &mut Kernel, file: &Path, out: &mut Outcome) -> Result<()> {
    let wasm = read_module(file)?;
    out.line(kernel.add_bundle(&wasm)?);
    Ok(())
}
