//! The CapTP membrane's wires: Cap'n Proto RPC level 1, and @endo/captp's JSON.
//!
//! - [`wire`]: the level-1 messages as plain values ([`Message`]), decoded
//!   from and encoded to frames with capnp-rpc's wire types, under named
//!   [`Limits`]. Payloads are the structs of `schema/exo.capnp`.
//! - [`transport`]: reading and writing frames on tokio streams (TCP, Unix
//!   sockets), refusing oversized frames before reading them.
//! - [`json`]: @endo/captp 4.x's JSON messages as the same [`Message`]s,
//!   with [`legacy`] (`@qclass`) capdata bodies.
//! - [`sturdy`]: sturdy ref URIs.
//!
//! The engine that keeps the tables (questions, answers, imports, exports)
//! is the kernel's (`kernel::membrane`), because they live in its store
//! and change inside its cranks; this crate never touches storage.

#[allow(clippy::all, clippy::pedantic, clippy::unimplemented, missing_debug_implementations, unused)]
#[rustfmt::skip]
pub mod exo_capnp;
pub mod json;
pub mod legacy;
pub mod sturdy;
pub mod transport;
pub mod wire;

pub use wire::{
    Body, Call, CallContent, CapDescriptor, Embargo, Limits, Message, ResultContent, Return,
    ReturnKind, ReturnOutcome, Target, WireError,
};
