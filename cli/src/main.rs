//! `vat`: run a durable object-capability kernel from the command line.
//!
//! Commands run in one of two places, with the same code and output:
//! - in this process, against the home's store: it opens the store, does its
//!   work, commits and exits, so state carries over between invocations (a
//!   home is used by one process at a time; others wait `--lock-wait-ms`);
//! - in the home's daemon (`vat start`), when one is running: the request is
//!   sent over `HOME/vat.sock` and the daemon's long-lived kernel runs it,
//!   with its vats' workers kept alive between commands.

mod args;
mod client;
mod commands;
mod daemon;
mod display;
mod face;
mod home;
mod request;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;
use kernel::CommitPolicy;

use crate::args::{Cli, Invocation};
use crate::home::{Home, InitOutcome};
use crate::request::{Outcome, Request};

/// A kernel allocates and frees many small strings a crank (keys, values,
/// references). glibc's allocator took a fifth of a pingpong crank's
/// instructions; with mimalloc a crank takes 13% fewer in all
/// (`scripts/crank-instructions`). `vat-supervisor` and the benches use it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The daemon's socket, inside the home.
const SOCKET_FILE: &str = "vat.sock";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = dispatch(cli).unwrap_or_else(|e| Outcome::error(&format!("{e:#}")));
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    if outcome.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn dispatch(cli: Cli) -> Result<Outcome> {
    let socket = cli.home.join(SOCKET_FILE);
    let request = match cli.command.into_invocation()? {
        Invocation::Init => return init(&cli.home),
        Invocation::Start {
            listen,
            vats_resident_max,
            net,
            http,
        } => {
            let serving = daemon::Serving {
                lock_wait_ms: cli.lock_wait_ms,
                listen: listen.as_deref(),
                vats_resident_max,
                net,
                http: http.as_deref(),
            };
            return daemon::serve(&cli.home, &socket, &serving);
        }
        Invocation::Run(request) => request,
    };
    if let Some(stream) = client::connect(&socket) {
        return client::request(stream, &request);
    }
    if request == Request::Stop {
        bail!("no daemon is running for home {}", cli.home.display());
    }
    let home = Home::open(&cli.home, cli.lock_wait_ms)?;
    let mut kernel = home.kernel(CommitPolicy::GROUPED)?;
    let outcome = commands::execute(&home, &mut kernel, &request);
    if let Request::Rm { .. } = request
        && !outcome.failed
    {
        // No daemon runs the deletion between other work: do it now.
        kernel.finish_cleanup()?;
    }
    Ok(outcome)
}

fn init(path: &Path) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    match Home::init(path)? {
        InitOutcome::Created { did } => {
            outcome.line(format!("created vat home {}", path.display()));
            outcome.line(format!("kernel key {did}"));
        }
        InitOutcome::AlreadyExists { did } => {
            outcome.line(format!(
                "vat home {} already exists; nothing changed",
                path.display()
            ));
            outcome.line(format!("kernel key {did}"));
        }
    }
    Ok(outcome)
}
