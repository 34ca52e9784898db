//! The vat host ABI, version 1: what a vat's Wasm module exports, what the
//! host lets it import, and the JSON messages that cross between them.
//!
//! # Guest exports
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | `memory` | memory | the guest's linear memory |
//! | `vat_abi_version` | `() -> i32` | must return [`ABI_VERSION`] |
//! | `vat_alloc` | `(len: i32) -> i32` | returns a buffer of `len` bytes the host may fill |
//! | `vat_deliver` | `(ptr: i32, len: i32) -> i32` | takes ownership of the buffer holding a JSON [`Delivery`]; returns 0 when the delivery was handled |
//!
//! # Host imports (module `"vat"`)
//!
//! Each syscall of the design has one import. Payloads are JSON of the
//! matching [`Syscall`] variant, passed as `(ptr, len)` in guest memory.
//! Vatstore keys and values are raw UTF-8, with no JSON around them.
//!
//! | import | signature | syscall |
//! |---|---|---|
//! | `send` | `(ptr, len)` | [`Syscall::Send`] |
//! | `resolve` | `(ptr, len)` | [`Syscall::Resolve`] |
//! | `subscribe` | `(ptr, len)` | [`Syscall::Subscribe`] |
//! | `vatstore_get` | `(key_ptr, key_len) -> i32` | value length, or -1 when absent; read it with `read_result` |
//! | `vatstore_set` | `(key_ptr, key_len, value_ptr, value_len)` | |
//! | `vatstore_delete` | `(key_ptr, key_len)` | |
//! | `vatstore_get_next_key` | `(key_ptr, key_len) -> i32` | next key's length, or -1 at the end; read it with `read_result` |
//! | `vatstore_get_prev_key` | `(key_ptr, key_len) -> i32` | the previous key's length, or -1 at the start; read it with `read_result` |
//! | `drop_imports` / `retire_imports` / `retire_exports` | `(ptr, len)` | [`Syscall::DropImports`] etc. |
//! | `exit` | `(ptr, len)` | [`Syscall::Exit`] |
//! | `keep_decided` | `(ptr, len)` | [`Syscall::KeepDecided`] |
//! | `log` | `(ptr, len)` | [`Syscall::Log`] |
//! | `heap` | `(ptr, len)` | [`Syscall::Heap`] |
//! | `read_result` | `(ptr)` | copies the last syscall's result bytes to `ptr` |
//!
//! A syscall the host refuses (a vref not in the vat's c-list, a payload that
//! does not parse, a limit exceeded) traps the guest: the crank is rolled back
//! and the vat is terminated with the reason.

use serde::{Deserialize, Serialize};

use crate::capdata::CapData;

/// The ABI version this crate speaks. Bumped on any incompatible change.
pub const ABI_VERSION: i32 = 1;

/// The module name the guest imports syscalls from.
pub const IMPORT_MODULE: &str = "vat";

/// A promise's settlement, as delivered in `notify` and sent in `resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub promise: String,
    pub rejected: bool,
    pub data: CapData,
}

/// What the kernel delivers to a vat: one per crank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Delivery {
    /// Sent each time a worker starts the vat: the guest builds its root
    /// object (`o+0`). `imports` are the imports the kernel holds for the vat
    /// as reachable: a restarted vat drops those its durable state does not
    /// refer to, since whatever held them on its heap is gone.
    StartVat {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        imports: Vec<String>,
    },
    /// A message to one of the vat's objects (or promises it decides).
    Message {
        target: String,
        method: String,
        args: CapData,
        /// The promise the vat must settle with the method's outcome.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
    },
    /// Promises the vat subscribed to have settled.
    Notify { resolutions: Vec<Resolution> },
    /// The vat should delete the durable objects nothing refers to any more.
    BringOutYourDead,
    /// Nothing outside the vat can reach these exports any more (others may
    /// still recognize them).
    DropExports { vrefs: Vec<String> },
    /// Nothing outside the vat can recognize these exports: forget them.
    RetireExports { vrefs: Vec<String> },
    /// These imports' exporter retired them: they will never be seen again.
    RetireImports { vrefs: Vec<String> },
}

impl Delivery {
    /// `startVat` for a vat that holds no imports (a new one).
    pub fn start_vat() -> Delivery {
        Delivery::StartVat {
            imports: Vec::new(),
        }
    }
}

/// What a vat asks of the kernel during a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Syscall {
    Send {
        target: String,
        method: String,
        args: CapData,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
    },
    Resolve {
        resolutions: Vec<Resolution>,
    },
    Subscribe {
        promise: String,
    },
    VatstoreGet {
        key: String,
    },
    VatstoreSet {
        key: String,
        value: String,
    },
    VatstoreDelete {
        key: String,
    },
    VatstoreGetNextKey {
        key: String,
    },
    /// The largest key strictly before `key` (for reverse iteration).
    VatstoreGetPrevKey {
        key: String,
    },
    DropImports {
        vrefs: Vec<String>,
    },
    RetireImports {
        vrefs: Vec<String>,
    },
    RetireExports {
        vrefs: Vec<String>,
    },
    Exit {
        failure: bool,
        info: CapData,
    },
    /// The vat keeps these promises it decides in durable state (a
    /// durable resolver, a result it forwards to one): a restart or an
    /// upgrade of the vat does not reject them, as it rejects the promises
    /// only its heap knew.
    KeepDecided {
        promises: Vec<String>,
    },
    /// A line for the vat's log (`vat log NAME`). Kept even when the
    /// delivery that wrote it fails: it is for the vat's author.
    Log {
        line: String,
    },
    /// What the vat's heap holds that its vatstore does not (methods
    /// awaiting in memory, heap objects exported, imports only the heap
    /// refers to), in words; empty when nothing. Sent at the end of a
    /// delivery when it changed since the last report, and after each
    /// `startVat`. Only a vat whose last report is empty may be put to
    /// sleep (its worker stopped, nothing written); one that never reports
    /// stays awake.
    Heap {
        holds: String,
    },
}

/// `log_line_bytes_max`: the longest log line kept (longer ones are cut).
pub const LOG_LINE_BYTES_MAX: usize = 4096;

/// Cuts `line` to at most [`LOG_LINE_BYTES_MAX`] bytes, at a character
/// boundary: what the guest sends and what the host keeps.
pub fn cut_log_line(line: &mut String) {
    if line.len() > LOG_LINE_BYTES_MAX {
        let mut end = LOG_LINE_BYTES_MAX;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
}

/// What a syscall returns to the guest: data for reads, nothing otherwise.
pub type SyscallResult = Option<String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_tagged_json() {
        let delivery = Delivery::Message {
            target: "o+0".into(),
            method: "increment".into(),
            args: CapData {
                body: "#[]".into(),
                slots: vec![],
            },
            result: Some("p-1".into()),
        };
        let json = serde_json::to_string(&delivery).unwrap();
        assert_eq!(
            json,
            r##"{"type":"message","target":"o+0","method":"increment","args":{"body":"#[]","slots":[]},"result":"p-1"}"##
        );
        assert_eq!(serde_json::from_str::<Delivery>(&json).unwrap(), delivery);
        assert_eq!(
            serde_json::to_string(&Delivery::start_vat()).unwrap(),
            r#"{"type":"startVat"}"#
        );
    }
}
