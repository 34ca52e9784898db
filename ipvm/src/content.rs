//! Content addressing and signatures: the canonical DAG-CBOR encoding of a
//! JSON value, its CID, and the ed25519 signatures (by `did:key`) over it
//! that jobs, receipts and delegations carry.

use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};
use serde_json::Value as Json;

const DAG_CBOR: u64 = 0x71;

/// The canonical DAG-CBOR encoding of a JSON value (map keys sorted as DAG-CBOR sorts them).
pub fn dag_cbor(value: &Json) -> Vec<u8> {
    serde_ipld_dagcbor::to_vec(value).expect("kernel invariant: JSON encodes as DAG-CBOR")
}

/// The CIDv1 (dag-cbor, sha2-256) of a JSON value's canonical encoding.
pub fn value_cid(value: &Json) -> String {
    Cid::new_v1(DAG_CBOR, Code::Sha2_256.digest(&dag_cbor(value))).to_string()
}

/// The bytes a requestor signs: the job without its signature.
pub fn signing_bytes(job: &Json) -> Vec<u8> {
    let mut unsigned = job.clone();
    if let Some(map) = unsigned.as_object_mut() {
        map.remove("signature");
    }
    dag_cbor(&unsigned)
}

pub use did_key::encode_signature;

/// Checks `signature` (multibase base58btc) by `did` over `message`.
pub fn verify(did: &str, message: &[u8], signature: &str) -> Result<(), did_key::DidKeyError> {
    did_key::DidKey::parse(did).and_then(|key| key.verify_multibase(message, signature))
}
