//! The envelope: `[signature, {"h": varsig header, TAG: payload}]` in
//! DAG-CBOR, its signature and its CID.

use std::collections::BTreeMap;

use ipld_core::cid::Cid;
use ipld_core::ipld::Ipld;
use multihash_codetable::{Code, MultihashDigest};

use crate::TOKEN_BYTES_MAX;

/// The one varsig header accepted and written: varsig v1, Ed25519,
/// SHA-512, payload in DAG-CBOR.
pub const VARSIG_ED25519_DAG_CBOR: [u8; 8] = [0x34, 0x01, 0xed, 0x01, 0xed, 0x01, 0x13, 0x71];

const DAG_CBOR: u64 = 0x71;

/// Whether a token delegates or invokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Delegation,
    Invocation,
}

impl Kind {
    /// The tag written: `-rc.1`, which every implementation reads.
    fn tag(self) -> &'static str {
        match self {
            Kind::Delegation => "ucan/dlg@1.0.0-rc.1",
            Kind::Invocation => "ucan/inv@1.0.0-rc.1",
        }
    }

    fn from_tag(tag: &str) -> Option<Kind> {
        match tag {
            "ucan/dlg@1.0.0-rc.1" | "ucan/dlg@1.0.0" => Some(Kind::Delegation),
            "ucan/inv@1.0.0-rc.1" | "ucan/inv@1.0.0" => Some(Kind::Invocation),
            _ => None,
        }
    }
}

/// What makes bytes no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token larger than token_bytes_max ({TOKEN_BYTES_MAX} bytes)")]
    TooLarge,
    #[error("not DAG-CBOR: {0}")]
    NotDagCbor(String),
    #[error("not a UCAN envelope: {0}")]
    NotEnvelope(&'static str),
    #[error("unknown payload tag {0:?} (ucan/dlg@1.0.0-rc.1 or ucan/inv@1.0.0-rc.1)")]
    UnknownTag(String),
    #[error("unsupported varsig header {0} (only Ed25519 over DAG-CBOR)")]
    UnsupportedVarsig(String),
}

/// A decoded token: its bytes, what it is, its signature and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    bytes: Vec<u8>,
    kind: Kind,
    signature: Vec<u8>,
    /// Where the signed part (the envelope's second element) starts.
    signed_from: usize,
    payload: BTreeMap<String, Ipld>,
}

impl Token {
    /// Decodes a token; its signature is checked by [`Token::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Token, TokenError> {
        if bytes.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::TooLarge);
        }
        let envelope: Ipld = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| TokenError::NotDagCbor(e.to_string()))?;
        let Ipld::List(mut parts) = envelope else {
            return Err(TokenError::NotEnvelope("it is not a list"));
        };
        let (Some(Ipld::Map(mut signed)), Some(Ipld::Bytes(signature)), None) =
            (parts.pop(), parts.pop(), parts.pop())
        else {
            return Err(TokenError::NotEnvelope("it is not [signature, payload]"));
        };
        match signed.remove("h") {
            Some(Ipld::Bytes(header)) if header == VARSIG_ED25519_DAG_CBOR => {}
            Some(Ipld::Bytes(header)) => return Err(TokenError::UnsupportedVarsig(hex(&header))),
            _ => return Err(TokenError::NotEnvelope("it has no varsig header h")),
        }
        let (tag, payload) = match (signed.pop_first(), signed.is_empty()) {
            (Some((tag, Ipld::Map(payload))), true) => (tag, payload),
            _ => return Err(TokenError::NotEnvelope("it has not one tagged payload map")),
        };
        let kind = Kind::from_tag(&tag).ok_or(TokenError::UnknownTag(tag))?;
        Ok(Token {
            signed_from: signed_part_start(bytes)?,
            bytes: bytes.to_vec(),
            kind,
            signature,
            payload,
        })
    }

    /// Signs `payload` as a token of `kind`, with `sign` (the issuer's
    /// Ed25519 signature over the bytes it is given).
    pub fn sign(
        kind: Kind,
        payload: BTreeMap<String, Ipld>,
        sign: &dyn Fn(&[u8]) -> [u8; 64],
    ) -> Token {
        let signed = Ipld::Map(BTreeMap::from([
            (
                "h".to_owned(),
                Ipld::Bytes(VARSIG_ED25519_DAG_CBOR.to_vec()),
            ),
            (kind.tag().to_owned(), Ipld::Map(payload)),
        ]));
        let signed_bytes = encode(&signed);
        let signature = sign(&signed_bytes).to_vec();
        let bytes = encode(&Ipld::List(vec![Ipld::Bytes(signature), signed]));
        Token::decode(&bytes).expect("ucan invariant: a token this crate signs decodes")
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn payload(&self) -> &BTreeMap<String, Ipld> {
        &self.payload
    }

    /// The token's id: the CID (dag-cbor, sha2-256) of its bytes.
    pub fn cid(&self) -> Cid {
        cid_of(&self.bytes)
    }

    /// Checks the signature by `issuer` over the envelope's signed part.
    pub fn verify(&self, issuer: &did_key::DidKey) -> Result<(), did_key::DidKeyError> {
        issuer.verify(&self.bytes[self.signed_from..], &self.signature)
    }
}

/// The CID (dag-cbor, sha2-256) of DAG-CBOR bytes.
pub fn cid_of(bytes: &[u8]) -> Cid {
    Cid::new_v1(DAG_CBOR, Code::Sha2_256.digest(bytes))
}

pub(crate) fn encode(value: &Ipld) -> Vec<u8> {
    serde_ipld_dagcbor::to_vec(value).expect("ucan invariant: IPLD values encode as DAG-CBOR")
}

/// Where the envelope's second element starts: after the list's header
/// and the signature's byte-string header and bytes. The signature covers
/// those bytes exactly as sent.
fn signed_part_start(bytes: &[u8]) -> Result<usize, TokenError> {
    let short = TokenError::NotEnvelope("it is cut short");
    if bytes.first() != Some(&0x82) {
        return Err(TokenError::NotEnvelope("it is not a list of two"));
    }
    let head = *bytes.get(1).ok_or(short.clone())?;
    let (length, header_bytes) = match head {
        0x40..=0x57 => (usize::from(head - 0x40), 1),
        0x58 => (usize::from(*bytes.get(2).ok_or(short.clone())?), 2),
        0x59 => {
            let pair = bytes.get(2..4).ok_or(short.clone())?;
            (usize::from(u16::from_be_bytes([pair[0], pair[1]])), 3)
        }
        _ => return Err(TokenError::NotEnvelope("its signature is not short bytes")),
    };
    let start = 1 + header_bytes + length;
    if start >= bytes.len() {
        return Err(short);
    }
    Ok(start)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signed_token_decodes_and_verifies_and_a_flipped_byte_does_not() {
        let payload = BTreeMap::from([("cmd".to_owned(), Ipld::String("/a".into()))]);
        let token = Token::sign(Kind::Delegation, payload.clone(), &|m| {
            key(1).sign(m).to_bytes()
        });
        let issuer = did_key::DidKey::parse(&did_key::did_of(&key(1))).unwrap();
        let again = Token::decode(token.bytes()).unwrap();
        assert_eq!(again.payload(), &payload);
        assert_eq!(again.kind(), Kind::Delegation);
        again.verify(&issuer).unwrap();
        let other = did_key::DidKey::parse(&did_key::did_of(&key(2))).unwrap();
        assert!(again.verify(&other).is_err());
        let mut flipped = token.bytes().to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        if let Ok(token) = Token::decode(&flipped) {
            assert!(token.verify(&issuer).is_err());
        }
    }

    #[test]
    fn bytes_that_are_no_envelope_are_refused_by_name() {
        assert!(matches!(
            Token::decode(b"\xff"),
            Err(TokenError::NotDagCbor(_))
        ));
        let list = encode(&Ipld::List(vec![Ipld::Integer(1)]));
        assert!(matches!(
            Token::decode(&list),
            Err(TokenError::NotEnvelope(_))
        ));
        let big = vec![0; TOKEN_BYTES_MAX + 1];
        assert_eq!(Token::decode(&big), Err(TokenError::TooLarge));
    }
}
