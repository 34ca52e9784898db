//! The vat host ABI, version 2: what a vat's Wasm module exports, what the
//! host lets it import, and the messages that cross between them.
//!
//! # Guest exports
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | `memory` | memory | the guest's linear memory |
//! | `vat_abi_version` | `() -> i32` | the version the guest speaks: [`ABI_VERSION`] (hosts still accept 1) |
//! | `vat_alloc` | `(len: i32) -> i32` | returns a buffer of `len` bytes the host may fill |
//! | `vat_deliver` | `(ptr: i32, len: i32) -> i32` | takes ownership of the buffer holding an encoded [`Delivery`]; returns 0 when the delivery was handled |
//!
//! # Host imports (module `"vat"`)
//!
//! Each syscall of the design has one import. Payloads are the matching
//! [`Syscall`] variant, encoded, passed as `(ptr, len)` in guest memory.
//! Vatstore keys and values are raw UTF-8, with nothing around them.
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
//!
//! # Encodings
//!
//! The version a module speaks decides how deliveries and syscall payloads
//! are encoded ([`Encoding`]); nothing else differs between versions.
//!
//! - **v2, binary**: [postcard](https://docs.rs/postcard): a variant is its
//!   index in the declaration order of [`Delivery`] or [`Syscall`] as a
//!   varint, then its fields in order; a string is a varint length and its
//!   UTF-8; a list is a varint count and its items; an `Option` is a 0 or 1
//!   byte, then the value. Variants and fields are never reordered: new ones
//!   go at the end, with a new ABI version. Capdata bodies stay smallcaps
//!   text inside.
//! - **v1, JSON**: the serde JSON of the same types, tagged by a `type`
//!   field (`{"type":"message","target":"o+0",...}`).

use serde::{Deserialize, Serialize};

use crate::capdata::CapData;

/// The ABI version this crate speaks. Bumped on any incompatible change.
#[cfg(not(feature = "abi-v1"))]
pub const ABI_VERSION: i32 = 2;
/// The ABI version this crate speaks (built with `abi-v1`, for testing hosts).
#[cfg(feature = "abi-v1")]
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
    /// Asks to be notified when `promise` settles. Not needed for a send's
    /// result: the kernel subscribes the sender to it (asking again is
    /// harmless).
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

/// How deliveries and syscall payloads are encoded: decided by the ABI
/// version a module speaks (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// ABI v1: tagged JSON.
    Json,
    /// ABI v2: postcard.
    Binary,
}

/// A delivery or syscall payload that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl Encoding {
    /// The encoding of ABI `version`, or `None` for a version no host speaks.
    pub fn of_version(version: i32) -> Option<Encoding> {
        match version {
            1 => Some(Encoding::Json),
            2 => Some(Encoding::Binary),
            _ => None,
        }
    }

    /// The encoding this crate's guests speak ([`ABI_VERSION`]).
    pub fn native() -> Encoding {
        Encoding::of_version(ABI_VERSION).expect("vom invariant: ABI_VERSION has an encoding")
    }

    pub fn encode_delivery(self, delivery: &Delivery) -> Vec<u8> {
        let bytes = match self {
            Encoding::Json => serde_json::to_vec(delivery).ok(),
            Encoding::Binary => binary::to_vec(&binary::DeliveryRef(delivery)),
        };
        bytes.expect("vom invariant: deliveries encode")
    }

    pub fn decode_delivery(self, bytes: &[u8]) -> Result<Delivery, DecodeError> {
        match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError(e.to_string())),
            Encoding::Binary => binary::decode_all::<binary::DeliveryOwned>(bytes).map(|d| d.0),
        }
    }

    pub fn encode_syscall(self, call: &Syscall) -> Vec<u8> {
        let bytes = match self {
            Encoding::Json => serde_json::to_vec(call).ok(),
            Encoding::Binary => binary::to_vec(&binary::SyscallRef(call)),
        };
        bytes.expect("vom invariant: syscalls encode")
    }

    pub fn decode_syscall(self, bytes: &[u8]) -> Result<Syscall, DecodeError> {
        match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError(e.to_string())),
            Encoding::Binary => binary::decode_all::<binary::SyscallOwned>(bytes).map(|c| c.0),
        }
    }
}

/// ABI v2's shapes of [`Delivery`] and [`Syscall`]: the same variants and
/// fields as the JSON ones, externally tagged and with nothing skipped, as a
/// format without field names needs.
mod binary {
    use serde::{Deserialize, Serialize};

    use super::{CapData, DecodeError, Delivery, Resolution, Syscall};

    /// What an encoding's buffer starts with: most deliveries and syscalls
    /// fit, so they are encoded without growing it (growing from empty
    /// reallocated it five times).
    const ENCODING_CAPACITY_START: usize = 256;

    /// Encodes `value` (`None`: serde refused it).
    pub(super) fn to_vec<T: Serialize>(value: &T) -> Option<Vec<u8>> {
        postcard::to_extend(value, Vec::with_capacity(ENCODING_CAPACITY_START)).ok()
    }

    /// Decodes one value that must fill `bytes` exactly.
    pub(super) fn decode_all<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
        let (value, rest) =
            postcard::take_from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError(format!("{} bytes after the end", rest.len())));
        }
        Ok(value)
    }

    #[derive(Serialize)]
    pub(super) struct DeliveryRef<'a>(#[serde(with = "DeliveryDef")] pub &'a Delivery);

    #[derive(Deserialize)]
    pub(super) struct DeliveryOwned(#[serde(with = "DeliveryDef")] pub Delivery);

    #[derive(Serialize)]
    pub(super) struct SyscallRef<'a>(#[serde(with = "SyscallDef")] pub &'a Syscall);

    #[derive(Deserialize)]
    pub(super) struct SyscallOwned(#[serde(with = "SyscallDef")] pub Syscall);

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Delivery")]
    enum DeliveryDef {
        StartVat {
            imports: Vec<String>,
        },
        Message {
            target: String,
            method: String,
            args: CapData,
            result: Option<String>,
        },
        Notify {
            resolutions: Vec<Resolution>,
        },
        BringOutYourDead,
        DropExports {
            vrefs: Vec<String>,
        },
        RetireExports {
            vrefs: Vec<String>,
        },
        RetireImports {
            vrefs: Vec<String>,
        },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Syscall")]
    enum SyscallDef {
        Send {
            target: String,
            method: String,
            args: CapData,
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
        KeepDecided {
            promises: Vec<String>,
        },
        Log {
            line: String,
        },
        Heap {
            holds: String,
        },
    }
}

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
    #[test]
    fn binary_deliveries_are_variant_index_then_fields() {
        let delivery = Delivery::Message {
            target: "o+0".into(),
            method: "ping".into(),
            args: CapData {
                body: "#[]".into(),
                slots: vec!["o-1".into()],
            },
            result: Some("p-1".into()),
        };
        let bytes = Encoding::Binary.encode_delivery(&delivery);
        let mut expected = vec![1, 3];
        expected.extend(b"o+0");
        expected.push(4);
        expected.extend(b"ping");
        expected.push(3);
        expected.extend(b"#[]");
        expected.extend([1, 3]);
        expected.extend(b"o-1");
        expected.extend([1, 3]);
        expected.extend(b"p-1");
        assert_eq!(bytes, expected);
        assert_eq!(Encoding::Binary.decode_delivery(&bytes).unwrap(), delivery);
        assert_eq!(
            Encoding::Binary.encode_delivery(&Delivery::BringOutYourDead),
            [3]
        );
    }

    #[test]
    fn binary_syscalls_round_trip_and_bad_bytes_are_refused() {
        let calls = [
            Syscall::Subscribe {
                promise: "p+5".into(),
            },
            Syscall::Resolve {
                resolutions: vec![Resolution {
                    promise: "p-1".into(),
                    rejected: true,
                    data: CapData {
                        body: "#\"no\"".into(),
                        slots: vec![],
                    },
                }],
            },
            Syscall::Heap {
                holds: String::new(),
            },
        ];
        for call in &calls {
            let bytes = Encoding::Binary.encode_syscall(call);
            assert_eq!(&Encoding::Binary.decode_syscall(&bytes).unwrap(), call);
            let json = Encoding::Json.encode_syscall(call);
            assert_eq!(&Encoding::Json.decode_syscall(&json).unwrap(), call);
        }
        assert_eq!(
            Encoding::Binary.encode_syscall(&calls[0]),
            [2, 3, b'p', b'+', b'5']
        );
        // Cut short, trailing bytes, an unknown variant: each refused.
        assert!(Encoding::Binary.decode_syscall(&[2, 3, b'p']).is_err());
        assert!(Encoding::Binary.decode_syscall(&[2, 1, b'p', 0]).is_err());
        assert!(Encoding::Binary.decode_syscall(&[99]).is_err());
        assert!(
            Encoding::Binary
                .decode_syscall(&[2, 2, 0xff, 0xfe])
                .is_err()
        );
    }

    #[test]
    fn versions_name_their_encodings() {
        assert_eq!(Encoding::of_version(1), Some(Encoding::Json));
        assert_eq!(Encoding::of_version(2), Some(Encoding::Binary));
        assert_eq!(Encoding::of_version(3), None);
        assert_eq!(Encoding::of_version(ABI_VERSION), Some(Encoding::native()));
    }
}
