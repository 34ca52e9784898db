//! The client side of the daemon's socket: a command sent to the daemon,
//! and what to say when the daemon dies before it answers.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::request::{Outcome, Request};

/// A connection to the home's daemon, if one answers.
pub fn connect(socket: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket).ok()
}

/// Sends one request to the daemon and returns what it says.
pub fn request(mut stream: UnixStream, request: &Request) -> Result<Outcome> {
    let mut line = serde_json::to_string(request).context("request")?;
    line.push('\n');
    stream.write_all(line.as_bytes()).context("daemon socket")?;
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    if read.is_err() || reply.is_empty() {
        // The daemon went away with the request in hand: it may have been
        // carried out (and committed) or not.
        bail!("{}", daemon_gone(request));
    }
    serde_json::from_str(&reply).context("the daemon's reply")
}

/// What a client can say of a request whose daemon died before it answered.
fn daemon_gone(request: &Request) -> &'static str {
    if request.may_change_state() {
        "the daemon stopped before it answered: the request may or may not have been applied (check with `vat list`, or retry a send with --idempotency-key)"
    } else {
        "the daemon stopped before it answered; nothing was changed"
    }
}
