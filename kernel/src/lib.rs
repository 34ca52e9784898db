//! The vat kernel: krefs, c-lists, object and promise tables, the run queue
//! and the crank loop, all kept in swingstore.
//!
//! The API boundary is [`Kernel`] (spawn vats, queue messages, run cranks),
//! the store's schema mark ([`mark_schema`], [`schema_of`]), and the
//! [`Namespace`]s of records that crates beside the kernel (IPVM jobs) keep
//! in its store.

mod check;
mod endpoint;
mod fresh;
mod idempotency;
mod ids;
mod kernel;
mod keys;
mod promise;
mod records;
mod resident;
mod run_queue;
mod shown;
mod state;

pub use endpoint::{Endpoint, Tables, TablesRef};
pub use idempotency::{IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_KEYS_MAX, Queued};
pub use ids::{EndpointId, EndpointKind, Kref, is_kref};
pub use kernel::{
    CommitPolicy, FORWARDING_DEPTH_MAX, Kernel, KernelError, VatInfo, VatOptions, VatQuery,
    WorkerKind, check_name,
};
pub use records::Namespace;
pub use resident::{
    ACTIVITY_GRANULARITY_S, ResidencyCounts, SPARE_WORKERS_MAX, VATS_RESIDENT_MAX_DEFAULT,
};
pub use shown::SHOWN_REFS_MAX;
pub use state::{
    LOG_LINES_PENDING_MAX, Message, PromiseState, STORE_SCHEMA_VERSION, Schema, VatState,
    error_capdata, mark_schema, schema_of,
};
