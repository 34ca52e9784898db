//! `vat`: run a durable object-capability kernel from the command line.
//!
//! Every invocation opens the home's store, does its work, commits and exits,
//! so state carries over between invocations. A home is used by one process at
//! a time; others wait for it (up to `--lock-wait-ms`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kernel::display::{parse_arg, to_display};
use kernel::{
    CommitPolicy, Home, InitOutcome, Kernel, LOCK_WAIT_MS_DEFAULT, PromiseState, VatOptions,
    WorkerKind,
};
use vom::Value;

#[derive(Parser, Debug)]
#[command(
    name = "vat",
    version,
    about = "A durable object-capability vat kernel"
)]
struct Cli {
    /// The home folder: store and kernel key.
    #[arg(long, global = true, env = "VAT_HOME", default_value = ".vat")]
    home: PathBuf,

    /// How long to wait for another `vat` process using the same home.
    #[arg(long, global = true, default_value_t = LOCK_WAIT_MS_DEFAULT)]
    lock_wait_ms: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Worker {
    Process,
    Thread,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the home: an empty store and a new ed25519 kernel key.
    Init,
    /// Start a vat from a Wasm module and bind NAME to its root object.
    Spawn {
        /// The vat's name, also bound as a pet name for its root object.
        name: String,
        /// The vat's Wasm module (built against the vom guest SDK).
        module: PathBuf,
        /// Where the guest runs: its own `vat-supervisor` process, or in this process.
        #[arg(long, value_enum, default_value_t = Worker::Process)]
        worker: Worker,
        /// Fuel one delivery may burn (fuel_per_delivery).
        #[arg(long, default_value_t = VatOptions::default().fuel_per_delivery)]
        fuel: u64,
        /// Wall-clock time one delivery may take, in ms (deadline_ms).
        #[arg(long, default_value_t = VatOptions::default().deadline_ms)]
        deadline_ms: u64,
        /// The most linear memory the guest may have (memory_bytes_max).
        #[arg(long, default_value_t = VatOptions::default().memory_bytes_max)]
        memory_bytes: usize,
        /// The largest message, result or syscall payload (message_bytes_max).
        #[arg(long, default_value_t = VatOptions::default().message_bytes_max)]
        message_bytes: usize,
        /// The most syscalls one delivery may make (syscalls_per_delivery_max).
        #[arg(long, default_value_t = VatOptions::default().syscalls_per_delivery_max)]
        syscalls_max: u32,
    },
    /// Send METHOD(ARGS) to TARGET, run the kernel until the result settles, print it.
    ///
    /// Each ARG is a pet name or kref (a reference), else JSON, else a string.
    /// JSON may use {"$ref": NAME}, {"$bigint": "12"}, {"$undefined": true}.
    /// A rejected result prints the error and exits 1.
    #[command(allow_negative_numbers = true)]
    Send {
        /// A pet name or a kref (ko12, kp40).
        target: String,
        /// The method to call.
        method: String,
        /// The arguments: pet names or krefs, JSON, or strings.
        args: Vec<String>,
        /// Bind the returned reference to this pet name.
        #[arg(long = "as", value_name = "NAME")]
        bind_as: Option<String>,
    },
    /// List vats, pet names, and their krefs.
    List,
    /// Print the kernel's identity (did:key).
    Key,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn open(cli: &Cli) -> Result<(Home, Kernel)> {
    let home = Home::open(&cli.home, cli.lock_wait_ms)?;
    let kernel = home.kernel(CommitPolicy::GROUPED)?;
    Ok((home, kernel))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Init => {
            match Home::init(&cli.home)? {
                InitOutcome::Created { did } => {
                    println!("created vat home {}", cli.home.display());
                    println!("kernel key {did}");
                }
                InitOutcome::AlreadyExists { did } => {
                    println!(
                        "vat home {} already exists; nothing changed",
                        cli.home.display()
                    );
                    println!("kernel key {did}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Key => {
            let home = Home::open(&cli.home, cli.lock_wait_ms)?;
            println!("{}", home.did());
            Ok(ExitCode::SUCCESS)
        }
        Command::Spawn {
            name,
            module,
            worker,
            fuel,
            deadline_ms,
            memory_bytes,
            message_bytes,
            syscalls_max,
        } => {
            let (_home, mut kernel) = open(&cli)?;
            let wasm = std::fs::read(module)
                .with_context(|| format!("cannot read {}", module.display()))?;
            let options = VatOptions {
                worker: match worker {
                    Worker::Process => WorkerKind::Process,
                    Worker::Thread => WorkerKind::Thread,
                },
                fuel_per_delivery: *fuel,
                deadline_ms: *deadline_ms,
                memory_bytes_max: *memory_bytes,
                message_bytes_max: *message_bytes,
                syscalls_per_delivery_max: *syscalls_max,
            };
            let root = kernel
                .spawn_vat(name, &wasm, options)
                .with_context(|| format!("cannot spawn {} from {}", name, module.display()))?;
            println!("{root}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            target,
            method,
            args,
            bind_as,
        } => send(&cli, target, method, args, bind_as.as_deref()),
        Command::List => {
            let (_home, kernel) = open(&cli)?;
            let vats = kernel.vats()?;
            if vats.is_empty() {
                println!("no vats (spawn one with `vat spawn NAME MODULE.wasm`)");
            }
            for vat in vats {
                let reason = vat.reason.map(|r| format!(" ({r})")).unwrap_or_default();
                let worker = match vat.worker {
                    WorkerKind::Process => "process",
                    WorkerKind::Thread => "thread",
                };
                println!(
                    "{} {} root {} {}{} worker {} bundle {}",
                    vat.id, vat.name, vat.root, vat.state, reason, worker, vat.bundle
                );
            }
            let names = kernel.pet_names()?;
            if !names.is_empty() {
                println!("pet names:");
                for (name, kref) in names {
                    println!("  {name} -> {kref}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn send(
    cli: &Cli,
    target: &str,
    method: &str,
    args: &[String],
    bind_as: Option<&str>,
) -> Result<ExitCode> {
    let (_home, mut kernel) = open(cli)?;
    if let Some(name) = bind_as {
        kernel::check_name(name)?;
        if let Some(kref) = kernel.pet_name(name)? {
            bail!("pet name {name:?} is already bound (to {kref})");
        }
    }
    let target = kernel.resolve_reference(target)?;
    let resolve = |text: &str| kernel.resolve_reference(text).ok();
    let values = args
        .iter()
        .map(|arg| parse_arg(arg, &resolve).map_err(|e| anyhow::anyhow!("argument {arg:?}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let args = vom::capdata::encode(&Value::Array(values));
    let kpid = kernel.queue_message(&target, method, args)?;
    let settled = kernel.run_until_settled(&kpid)?;
    let names: std::collections::HashMap<String, String> = kernel
        .pet_names()?
        .into_iter()
        .map(|(name, kref)| (kref, name))
        .collect();
    let name_of = |kref: &str| names.get(kref).cloned().unwrap_or_else(|| kref.to_owned());
    match settled {
        PromiseState::Fulfilled(data) => {
            let value = vom::capdata::decode(&data).context("result")?;
            if let Some(name) = bind_as {
                let Some(reference) = value.as_ref() else {
                    bail!("the result is not a reference, so --as {name} cannot bind it");
                };
                kernel.bind_pet_name(name, &reference.slot)?;
                kernel.commit()?;
            }
            let shown = to_display(&value, &|kref| {
                if bind_as.is_some() && value.as_ref().is_some_and(|r| r.slot == kref) {
                    bind_as.unwrap_or_default().to_owned()
                } else {
                    name_of(kref)
                }
            });
            println!("{shown}");
            Ok(ExitCode::SUCCESS)
        }
        PromiseState::Rejected(data) => {
            let reason = match vom::capdata::decode(&data) {
                Ok(Value::Error(e)) => e.to_string(),
                Ok(other) => to_display(&other, &name_of).to_string(),
                Err(e) => e.to_string(),
            };
            eprintln!("error: {}", one_line(&reason));
            Ok(ExitCode::FAILURE)
        }
        PromiseState::Unresolved => unreachable!("run_until_settled returns settled promises"),
    }
}
