//! UCAN 1.0: delegations and invocations as the spec writes them, and the
//! validation of an invocation against its chain of proofs.
//!
//! A token is the DAG-CBOR envelope `[signature, {"h": varsig header,
//! TAG: payload}]`, where TAG is `ucan/dlg@1.0.0-rc.1` (a delegation) or
//! `ucan/inv@1.0.0-rc.1` (an invocation); the `@1.0.0` tags are read too,
//! and `-rc.1` is written, which every implementation reads. The signature
//! is the issuer's Ed25519 signature over the DAG-CBOR of the second
//! element; the varsig header says so (`34 01 ed01 ed01 13 71`), and no
//! other header is accepted. A token's id is the CID (dag-cbor, sha2-256)
//! of its bytes.
//!
//! [`validate`] judges an invocation: every proof it links (`prf`, root
//! first) is found, every signature verifies, every token is inside its
//! time bounds, principals align (each proof's `aud` is the next one's
//! `iss`, the last one's the invoker), the root is issued by the subject,
//! every proof is about the invocation's subject (or about any, a
//! powerline), every proof's command covers the invocation's by whole path
//! segments, and the invocation's `args` satisfy every proof's policy.
//! Its errors carry the names the UCAN test vectors use
//! ([`ValidationError::name`]).
//!
//! The API boundary: [`Token`] (decode, sign, id), [`Delegation`] and
//! [`Invocation`] (the payloads), [`Command`], [`Policy`], [`validate`]
//! (an invocation) and [`authorize`] (a request in another envelope).

mod command;
mod envelope;
mod payload;
mod policy;
mod validate;

pub use command::{Command, CommandError};
pub use envelope::{Kind, Token, TokenError, VARSIG_ED25519_DAG_CBOR};
pub use ipld_core::cid::Cid;
pub use ipld_core::ipld::Ipld;
pub use payload::{Delegation, Invocation, PayloadError};
pub use policy::{Policy, PolicyError};
pub use validate::{Request, Validated, ValidationError, authorize, validate};

/// `token_bytes_max`: the largest token decoded.
pub const TOKEN_BYTES_MAX: usize = 64 * 1024;
/// `chain_length_max`: the most proofs one invocation may link.
pub const CHAIN_LENGTH_MAX: usize = 16;
