//! Modules: spawning a vat from one, upgrading a vat to another, storing one.

use std::path::Path;

use anyhow::{Context, Result};
use kernel::{Kernel, VatOptions, WorkerKind};

use crate::request::{Outcome, SpawnOptions};

fn read_module(module: &Path) -> Result<Vec<u8>> {
    std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))
}

fn spawn_options(options: &SpawnOptions) -> VatOptions {
    VatOptions {
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
    }
}

pub fn spawn(
    kernel: &mut Kernel,
    name: &str,
    module: &Path,
    spawn: &SpawnOptions,
    out: &mut Outcome,
) -> Result<()> {
    let wasm = read_module(module)?;
    let options = spawn_options(spawn);
    let Some(count) = spawn.count else {
        let root = kernel
            .spawn_vat(name, &wasm, options)
            .with_context(|| format!("cannot spawn {} from {}", name, module.display()))?;
        out.line(root);
        return Ok(());
    };
    // Every name is checked before the first vat is made, so a taken one
    // stops the command with nothing made.
    let names: Vec<String> = (1..=count).map(|n| format!("{name}-{n}")).collect();
    for vat in &names {
        kernel::check_name(vat)?;
        if kernel.vat_id(vat).is_ok() || kernel.pet_name(vat)?.is_some() {
            anyhow::bail!(
                "cannot spawn {count} vats {name}-1 to {name}-{count}: {vat} is taken; nothing was spawned"
            );
        }
    }
    let mut first_and_last = (None, None);
    for (made, vat) in names.iter().enumerate() {
        let root = kernel.spawn_vat(vat, &wasm, options).with_context(|| {
            format!(
                "cannot spawn {vat} from {} ({made} of {count} were spawned and are kept)",
                module.display()
            )
        })?;
        first_and_last.0.get_or_insert(root.clone());
        first_and_last.1 = Some(root);
    }
    let (first, last) = first_and_last;
    out.line(format!(
        "spawned {count} vats {name}-1 to {name}-{count} (roots {} to {})",
        first.expect("count is at least 1"),
        last.expect("count is at least 1")
    ));
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
