//! The vat kernel: krefs, c-lists, object and promise tables, the run queue
//! and the crank loop, all kept in swingstore.
//!
//! The API boundary is [`Kernel`] (spawn vats, queue messages, run cranks),
//! the store's schema mark ([`mark_schema`], [`schema_of`]), and the
//! [`Namespace`]s of records that crates beside the kernel (IPVM jobs) keep
//! in its store.

mod check;
mod idempotency;
mod kernel;
mod membrane;
pub mod node;
mod records;
mod shown;
mod state;

/// The CapTP wire (re-exported: the daemon and tests speak it).
pub use captp;
pub use idempotency::{IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_KEYS_MAX, Queued};
pub use kernel::{
    CommitPolicy, Kernel, KernelError, VatInfo, VatOptions, WorkerKind, check_name, is_kref,
};
pub use membrane::{ANSWERS_PER_PEER_MAX, PeerInfo, PeerLink, REFERENCES_PER_PEER_MAX};
pub use records::Namespace;
pub use shown::SHOWN_REFS_MAX;
pub use state::{PromiseState, STORE_SCHEMA_VERSION, Schema, VatState, mark_schema, schema_of};
