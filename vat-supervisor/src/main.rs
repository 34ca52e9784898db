//! `vat-supervisor`: hosts one vat in its own process. The kernel starts it
//! with pipes on stdin and stdout and speaks `schema/worker.capnp` over them;
//! it is not meant to be run by hand.

use std::process::ExitCode;

/// The allocator the `vat` binary runs with: a worker's syscalls allocate
/// and free many small strings.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The only argument is `--vat ID`, a label that shows in `ps`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(args.is_empty() || (args.len() == 2 && args[0] == "--vat")) {
        eprintln!(
            "usage: vat-supervisor [--vat ID] (the kernel starts it and speaks to it over stdin/stdout)"
        );
        return ExitCode::from(2);
    }
    match vat_supervisor::serve(std::io::stdin().lock(), std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(fault) => {
            eprintln!("vat-supervisor: {fault}");
            ExitCode::FAILURE
        }
    }
}
