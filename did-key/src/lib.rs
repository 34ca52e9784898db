//! ed25519 `did:key` identifiers, in one place: the kernel's identity (its
//! home's key), the CapTP handshake, and IPVM job and UCAN signatures all
//! name keys this way.
//!
//! A `did:key` is `did:key:z` followed by base58btc of the multicodec
//! ed25519-pub prefix (`0xed 0x01`) and the 32-byte public key. Signatures
//! are checked with [`VerifyingKey::verify_strict`] everywhere, so a
//! signature that verifies here verifies the same way in every part of the
//! system (no malleable or small-order forms).
//!
//! The API boundary: [`DidKey`] (parse once, display, verify), [`did_of`]
//! for a signing key, and the multibase signature text form.

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

/// The multicodec prefix of an ed25519 public key.
const ED25519_PUB: [u8; 2] = [0xed, 0x01];
/// How a did:key starts (the `z` is base58btc's multibase prefix).
const DID_KEY_PREFIX: &str = "did:key:z";

/// What is wrong with a did:key or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DidKeyError {
    #[error("{0:?} is not an ed25519 did:key")]
    NotDidKey(String),
    #[error("{did:?}: {reason}")]
    BadKey { did: String, reason: String },
    #[error("a signature is multibase base58btc (z...) of 64 bytes")]
    MalformedSignature,
    #[error("it does not verify against {0}")]
    DoesNotVerify(String),
}

/// An ed25519 public key named as a `did:key`, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DidKey {
    key: VerifyingKey,
}

impl DidKey {
    /// Parses `did:key:z...` naming an ed25519 public key.
    pub fn parse(did: &str) -> Result<DidKey, DidKeyError> {
        let encoded = did
            .strip_prefix(DID_KEY_PREFIX)
            .ok_or_else(|| DidKeyError::NotDidKey(did.to_owned()))?;
        let bad = |reason: String| DidKeyError::BadKey {
            did: did.to_owned(),
            reason,
        };
        let bytes = bs58::decode(encoded)
            .into_vec()
            .map_err(|e| bad(e.to_string()))?;
        let key = bytes
            .strip_prefix(&ED25519_PUB)
            .ok_or_else(|| DidKeyError::NotDidKey(did.to_owned()))?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| bad("the key has the wrong length".to_owned()))?;
        let key = VerifyingKey::from_bytes(&key).map_err(|e| bad(e.to_string()))?;
        Ok(DidKey { key })
    }

    /// The public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Checks a raw 64-byte `signature` by this key over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), DidKeyError> {
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| DidKeyError::MalformedSignature)?;
        self.key
            .verify_strict(message, &Signature::from_bytes(&signature))
            .map_err(|_| DidKeyError::DoesNotVerify(self.to_string()))
    }

    /// Checks a multibase base58btc `signature` (`z...`) over `message`.
    pub fn verify_multibase(&self, message: &[u8], signature: &str) -> Result<(), DidKeyError> {
        self.verify(message, &decode_signature(signature)?)
    }
}

impl std::fmt::Display for DidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut bytes = ED25519_PUB.to_vec();
        bytes.extend_from_slice(self.key.as_bytes());
        write!(f, "{DID_KEY_PREFIX}{}", bs58::encode(bytes).into_string())
    }
}

/// The `did:key` of a signing key's public half.
pub fn did_of(key: &SigningKey) -> String {
    DidKey {
        key: key.verifying_key(),
    }
    .to_string()
}

/// Encodes a signature as multibase base58btc (`z...`).
pub fn encode_signature(signature: &[u8; 64]) -> String {
    format!("z{}", bs58::encode(signature).into_string())
}

/// Decodes a multibase base58btc signature (`z...`).
pub fn decode_signature(text: &str) -> Result<Vec<u8>, DidKeyError> {
    let encoded = text
        .strip_prefix('z')
        .ok_or(DidKeyError::MalformedSignature)?;
    bs58::decode(encoded)
        .into_vec()
        .map_err(|_| DidKeyError::MalformedSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_did_parses_back_to_its_key_and_verifies_its_signatures() {
        let signing = key(7);
        let did = did_of(&signing);
        assert!(did.starts_with("did:key:z6Mk"), "{did}");
        let parsed = DidKey::parse(&did).unwrap();
        assert_eq!(parsed.to_string(), did);
        let signature = signing.sign(b"hello").to_bytes();
        parsed.verify(b"hello", &signature).unwrap();
        parsed
            .verify_multibase(b"hello", &encode_signature(&signature))
            .unwrap();
    }

    #[test]
    fn another_message_or_key_does_not_verify() {
        let signing = key(7);
        let signature = signing.sign(b"hello").to_bytes();
        let other = DidKey::parse(&did_of(&key(8))).unwrap();
        assert!(matches!(
            other.verify(b"hello", &signature),
            Err(DidKeyError::DoesNotVerify(_))
        ));
        let own = DidKey::parse(&did_of(&signing)).unwrap();
        assert!(own.verify(b"hellp", &signature).is_err());
        assert_eq!(
            own.verify(b"hello", &signature[..63]),
            Err(DidKeyError::MalformedSignature)
        );
    }

    #[test]
    fn malformed_dids_say_what_is_wrong() {
        assert!(matches!(
            DidKey::parse("did:web:example.com"),
            Err(DidKeyError::NotDidKey(_))
        ));
        assert!(matches!(
            DidKey::parse("did:key:z0OIl"),
            Err(DidKeyError::BadKey { .. })
        ));
        // A secp256k1 did:key (multicodec 0xe7) is not ed25519.
        let mut secp = vec![0xe7, 0x01];
        secp.extend_from_slice(&[2; 33]);
        let did = format!("did:key:z{}", bs58::encode(secp).into_string());
        assert!(matches!(
            DidKey::parse(&did),
            Err(DidKeyError::NotDidKey(_))
        ));
    }
}
