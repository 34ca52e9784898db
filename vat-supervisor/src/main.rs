//! `vat-supervisor`: hosts one vat in its own process. The kernel starts it
//! with pipes on stdin and stdout and speaks `schema/worker.capnp` over them;
//! it is not meant to be run by hand.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        eprintln!(
            "vat-supervisor takes no arguments: the kernel starts it and speaks to it over stdin/stdout"
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
