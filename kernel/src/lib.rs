//! The vat kernel: krefs, c-lists, object and promise tables, the run queue
//! and the crank loop, all kept in swingstore; plus the home folder the `vat`
//! CLI runs against.
//!
//! The API boundary is [`Kernel`] (spawn vats, queue messages, run cranks),
//! [`Home`] (open a locked home and its kernel), the display forms in
//! [`display`] that the CLI uses for values, and IPVM jobs ([`ipvm`]: the
//! job format and its validation; [`Kernel::run_job`] runs one).

mod check;
pub mod display;
mod home;
mod idempotency;
pub mod ipvm;
mod jobs;
mod kernel;
mod membrane;
pub mod node;
mod shown;
mod state;
pub mod ucan;

/// The CapTP wire (re-exported: the daemon and tests speak it).
pub use captp;
pub use home::{Home, HomeError, InitOutcome, LOCK_WAIT_MS_DEFAULT, did_key};
pub use idempotency::{IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_KEYS_MAX, Queued};
pub use jobs::{JobEvent, TaskOutcome};
pub use kernel::{
    CommitPolicy, Kernel, KernelError, VatInfo, VatOptions, WorkerKind, check_name, is_kref,
};
pub use membrane::{ANSWERS_PER_PEER_MAX, PeerInfo, PeerLink, REFERENCES_PER_PEER_MAX};
pub use shown::SHOWN_REFS_MAX;
pub use state::{PromiseState, VatState};
