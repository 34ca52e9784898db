//! The commands, one file per concern, each a function of a kernel and a
//! request's fields that writes what it prints to an [`Outcome`]. The same
//! code runs in the CLI's process and in the daemon.

mod admin;
mod inspect;
mod jobs;
mod list;
pub(crate) mod network;
mod send;
mod spawn;
mod ucan;

use anyhow::{Result, bail};
use kernel::Kernel;

use crate::home::Home;
use crate::request::{Outcome, Request};

pub use jobs::run as run_job;
pub use network::enliven_target;
pub use send::{finish_send, start_send};

/// Runs one request against a kernel and commits; errors become the
/// outcome's one line. Nothing is reported before it is durable.
pub fn execute(home: &Home, kernel: &mut Kernel, request: &Request) -> Outcome {
    let mut outcome = Outcome::default();
    let ran = run(home, kernel, request, &mut outcome).and_then(|()| Ok(kernel.commit()?));
    // What the vats logged goes to their log files, whatever became of the
    // request (a failed delivery's lines are the ones most wanted).
    if let Err(e) = home.append_logs(kernel) {
        return Outcome::error(&format!("writing the vats' logs: {e:#}"));
    }
    match ran {
        Ok(()) => outcome,
        Err(e) => Outcome::error(&format!("{e:#}")),
    }
}

fn run(home: &Home, kernel: &mut Kernel, request: &Request, out: &mut Outcome) -> Result<()> {
    match request {
        Request::Key => out.line(home.did()),
        Request::Check => list::check(kernel, out)?,
        Request::List(query) => list::list(kernel, query, out)?,
        Request::Sleep { name } => list::sleep(kernel, name, out)?,
        Request::Log { name, lines } => {
            let vat = kernel.vat_id(name)?;
            for line in home.log_tail(&vat, *lines)? {
                out.line(line);
            }
        }
        Request::Spawn {
            name,
            module,
            options,
        } => spawn::spawn(kernel, name, module, options, out)?,
        Request::Upgrade { name, module } => spawn::upgrade(kernel, name, module, out)?,
        Request::Send(send) => send::send(kernel, send, out)?,
        Request::Name { kref, name } => admin::name(kernel, kref, name, out)?,
        Request::Unname { name } => admin::unname(kernel, name, out)?,
        Request::Forget { kref } => admin::forget(kernel, kref.as_deref(), out)?,
        Request::Resume { name } => admin::resume(kernel, name, out)?,
        Request::Terminate { name } => admin::terminate(kernel, name, out)?,
        Request::Rm { name } => admin::rm(kernel, name, out)?,
        Request::Collect { name } => admin::collect(kernel, name, out)?,
        Request::AddBundle { file } => spawn::add_bundle(kernel, file, out)?,
        Request::AddValue { json } => jobs::add_value(kernel, json, out)?,
        Request::SignJob { file, proofs } => jobs::sign(home, file, proofs, out)?,
        Request::UcanDelegate(delegation) => ucan::delegate(home, delegation, out)?,
        Request::UcanInvoke(invocation) => ucan::invoke(home, invocation, out)?,
        Request::UcanVerify {
            token,
            proofs,
            at_s,
        } => ucan::verify(token, proofs, *at_s, out)?,
        Request::UcanReceipts { out: file } => ucan::receipts(home, kernel, file, out)?,
        Request::AddCar { file } => ucan::add_car(home, kernel, file, out)?,
        Request::EnqueueCar { cid } => ucan::enqueue(home, kernel, cid, out)?,
        Request::HttpRoute { prefix, url } => {
            devices::http::route(kernel, prefix, url)?;
            out.line(format!("{prefix} -> {url}"));
        }
        Request::HttpRoutes => {
            for (prefix, url) in devices::http::routes(kernel)? {
                out.line(format!("{prefix} -> {url}"));
            }
        }
        Request::RunJob { file } => jobs::run(home, kernel, file, out)?,
        Request::JobStatus { id } => jobs::status(kernel, id, out)?,
        Request::JobReceipts { id } => jobs::receipts(kernel, id, out)?,
        Request::Share { target, web } => network::share(home, kernel, target, *web, out)?,
        Request::Peers => network::peers(kernel, out)?,
        Request::Inspect => inspect::inspect(kernel, out)?,
        Request::ForgetPeer { peer } => network::forget(kernel, peer, out)?,
        Request::Unshare { sturdy } => network::unshare(home, kernel, sturdy, out)?,
        Request::Enliven { .. } => {
            bail!("enliven needs the daemon, which keeps the connection: run `vat start` first")
        }
        Request::Stop => bail!("stop is for the daemon, which is not running"),
    }
    Ok(())
}
