//! The daemon's socket protocol: a client writes one [`Request`] as a line of
//! JSON on `HOME/vat.sock`; the daemon answers with one [`Outcome`] line.
//!
//! The protocol is its own type, not the command line's: a flag renamed in
//! `args.rs` does not change what a daemon of the same build reads, and
//! paths arrive absolute (the daemon runs elsewhere in the file system).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The largest request the daemon reads (`request_bytes_max`).
pub const REQUEST_BYTES_MAX: u64 = 1 << 20;

/// One command for a kernel, as the CLI or the daemon runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Spawn {
        name: String,
        module: PathBuf,
        options: SpawnOptions,
    },
    Send(SendArgs),
    Upgrade {
        name: String,
        module: PathBuf,
    },
    Name {
        kref: String,
        name: String,
    },
    Unname {
        name: String,
    },
    Forget {
        kref: Option<String>,
    },
    Resume {
        name: String,
    },
    Terminate {
        name: String,
    },
    Rm {
        name: String,
    },
    Collect {
        name: String,
    },
    AddBundle {
        file: PathBuf,
    },
    AddValue {
        json: String,
    },
    SignJob {
        file: PathBuf,
        proofs: Vec<PathBuf>,
    },
    UcanDelegate(UcanDelegation),
    UcanInvoke(UcanInvocation),
    UcanVerify {
        token: PathBuf,
        proofs: Vec<PathBuf>,
        at_s: Option<u64>,
    },
    UcanReceipts {
        out: PathBuf,
    },
    AddCar {
        file: PathBuf,
    },
    EnqueueCar {
        cid: String,
    },
    HttpRoute {
        prefix: String,
        url: String,
    },
    HttpRoutes,
    RunJob {
        file: PathBuf,
    },
    JobStatus {
        id: String,
    },
    JobReceipts {
        id: String,
    },
    List(ListArgs),
    Sleep {
        name: String,
    },
    Log {
        name: String,
        lines: usize,
    },
    Key,
    Check,
    Share {
        target: String,
        /// The web client's URL rather than the sturdy ref.
        #[serde(default)]
        web: bool,
    },
    Enliven {
        uri: String,
        bind_as: String,
    },
    Peers,
    Inspect,
    ForgetPeer {
        peer: String,
    },
    Unshare {
        sturdy: String,
    },
    Stop,
}

/// How a vat is spawned: its worker and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnOptions {
    /// In this process (a thread) rather than a `vat-supervisor` process.
    pub thread: bool,
    pub fuel: u64,
    pub deadline_ms: u64,
    pub memory_bytes: usize,
    pub message_bytes: usize,
    pub syscalls_max: u32,
    pub pipelining: bool,
    pub faults_in_a_row_max: u32,
    /// Spawn this many vats, `NAME-1` to `NAME-N`.
    #[serde(default)]
    pub count: Option<u32>,
}

/// A vat state, as `vat list --state` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StateArg {
    Running,
    Suspended,
    Terminated,
    Removed,
}

impl StateArg {
    pub fn into_state(self) -> kernel::VatState {
        match self {
            StateArg::Running => kernel::VatState::Running,
            StateArg::Suspended => kernel::VatState::Suspended,
            StateArg::Terminated => kernel::VatState::Terminated,
            StateArg::Removed => kernel::VatState::Removed,
        }
    }
}

/// A `vat list`: which vats, a page of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListArgs {
    pub resident: bool,
    pub state: Option<StateArg>,
    pub prefix: String,
    pub after: Option<String>,
    pub limit: usize,
}

/// A `vat send`.
/// Whose authority a delegation passes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UcanSubject {
    /// This home's kernel.
    Home,
    /// Another subject's, re-delegated.
    Did(String),
    /// Any subject's (a powerline).
    Any,
}

/// `vat ucan delegate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UcanDelegation {
    pub to: String,
    pub cmd: String,
    pub subject: UcanSubject,
    /// DAG-JSON.
    pub policy: String,
    pub expires_in_s: Option<u64>,
    pub not_before_in_s: Option<u64>,
}

/// `vat ucan invoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UcanInvocation {
    pub cmd: String,
    /// DAG-JSON.
    pub args: String,
    pub subject: Option<String>,
    pub proofs: Vec<PathBuf>,
    pub expires_in_s: Option<u64>,
    /// Where to write a CAR of it and its proofs, instead of printing it.
    pub car: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendArgs {
    pub target: String,
    pub method: String,
    pub args: Vec<String>,
    pub bind_as: Option<String>,
    pub idempotency_key: Option<String>,
}

impl Request {
    /// Whether the request may change the kernel's state (so that a client
    /// whose daemon died before answering cannot say it did not).
    pub fn may_change_state(&self) -> bool {
        !matches!(
            self,
            Request::List(_)
                | Request::Key
                | Request::Check
                | Request::Peers
                | Request::Inspect
                | Request::Stop
                | Request::JobStatus { .. }
                | Request::JobReceipts { .. }
                | Request::UcanDelegate(_)
                | Request::UcanInvoke(_)
                | Request::UcanVerify { .. }
                | Request::UcanReceipts { .. }
                | Request::HttpRoutes
        )
    }
}

/// What a command prints and how it exits, wherever it ran.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub failed: bool,
}

impl Outcome {
    /// Adds a line to what the command prints.
    pub fn line(&mut self, text: impl std::fmt::Display) {
        self.stdout.push_str(&format!("{text}\n"));
    }

    /// A failed command: one line on stderr, exit status 1.
    pub fn error(text: &str) -> Outcome {
        Outcome {
            stdout: String::new(),
            stderr: format!("error: {}\n", one_line(text)),
            failed: true,
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_its_line_of_json() {
        let request = Request::Send(SendArgs {
            target: "counter".into(),
            method: "incr".into(),
            args: vec!["-1".into(), "{\"$bigint\": \"9\"}".into()],
            bind_as: Some("n".into()),
            idempotency_key: None,
        });
        let line = serde_json::to_string(&request).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
    }

    #[test]
    fn errors_are_one_line() {
        let outcome = Outcome::error("first\n  second");
        assert_eq!(outcome.stderr, "error: first second\n");
        assert!(outcome.failed);
    }
}
