//! Delegation: the small subset of UCAN 1.0 a job needs, on ed25519 and
//! DAG-CBOR. (The `ucan` crate follows an older spec and no longer builds.)
//!
//! A delegation is `{payload: {iss, aud, sub, cmd, exp, nonce}, sig}`: `iss`
//! lets `aud` invoke commands under `cmd` on `sub` (the kernel owner's
//! did:key) until `exp` (seconds since the Unix epoch, or null for never),
//! and `sig` is `iss`'s ed25519 signature (multibase base58btc) over the
//! payload's canonical DAG-CBOR. Commands are paths: `/` covers all,
//! `/ipvm` every job, `/ipvm/run` pure tasks, `/ipvm/effect/<pet name>` an
//! effect on that capability. A chain (a job's `prf` list) starts at the
//! owner and ends at the job's requestor, each link's `aud` the next `iss`,
//! each narrowing (never widening) what it passes on.

use serde_json::{Value as Json, json};

use crate::content::{dag_cbor, encode_signature, verify};

/// The longest delegation chain accepted.
pub const CHAIN_LENGTH_MAX: usize = 8;

/// Whether command `granted` covers command `wanted` (segment-wise prefix).
pub fn covers(granted: &str, wanted: &str) -> bool {
    let granted = granted.trim_end_matches('/');
    granted.is_empty() || wanted == granted || wanted.starts_with(&format!("{granted}/"))
}

/// Makes a delegation from `issuer` (who signs with `sign`) to `audience`.
pub fn delegate(
    issuer: &str,
    audience: &str,
    subject: &str,
    command: &str,
    expires_s: Option<u64>,
    nonce: &str,
    sign: &dyn Fn(&[u8]) -> [u8; 64],
) -> Json {
    let payload = json!({
        "iss": issuer, "aud": audience, "sub": subject, "cmd": command,
        "exp": expires_s, "nonce": nonce,
    });
    let signature = sign(&dag_cbor(&payload));
    json!({"payload": payload, "sig": encode_signature(&signature)})
}

/// Why a delegation chain grants nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    #[error("no delegation from the owner")]
    Empty,
    #[error("a delegation chain longer than CHAIN_LENGTH_MAX ({CHAIN_LENGTH_MAX})")]
    TooLong,
    #[error("delegation {index} has no {field}")]
    Missing { index: usize, field: &'static str },
    #[error("delegation {index} is issued by {issuer}, not {expected}")]
    WrongIssuer {
        index: usize,
        issuer: String,
        expected: String,
    },
    #[error("delegation {index} is about {subject}, not this kernel")]
    WrongSubject { index: usize, subject: String },
    #[error("delegation {index} is not signed")]
    Unsigned { index: usize },
    #[error("delegation {index}: bad signature: {reason}")]
    BadSignature {
        index: usize,
        reason: did_key::DidKeyError,
    },
    #[error("delegation {index}: exp is not a time")]
    BadExpiry { index: usize },
    #[error("delegation {index} expired")]
    Expired { index: usize },
    #[error("delegation {index} widens {granted:?} to {wanted:?}")]
    Widens {
        index: usize,
        granted: String,
        wanted: String,
    },
    #[error("the chain ends at {end}, not the requestor")]
    NotTheRequestor { end: String },
}

/// The commands a chain grants `requestor` on `owner`'s kernel at time
/// `now_s`: each link checked (signature, continuity, subject, expiry,
/// narrowing). Returns the narrowest command, which covers all it grants.
pub fn granted_command(
    chain: &[Json],
    owner: &str,
    requestor: &str,
    now_s: u64,
) -> Result<String, DelegationError> {
    if chain.is_empty() {
        return Err(DelegationError::Empty);
    }
    if chain.len() > CHAIN_LENGTH_MAX {
        return Err(DelegationError::TooLong);
    }
    let mut expected_issuer = owner.to_owned();
    let mut command = "/".to_owned();
    for (index, link) in chain.iter().enumerate() {
        let (audience, cmd) = check_link(index, link, &expected_issuer, owner, now_s)?;
        if !covers(&command, &cmd) {
            return Err(DelegationError::Widens {
                index,
                granted: command,
                wanted: cmd,
            });
        }
        command = cmd;
        expected_issuer = audience;
    }
    if expected_issuer != requestor {
        return Err(DelegationError::NotTheRequestor {
            end: expected_issuer,
        });
    }
    Ok(command)
}

/// Checks delegation `index` of a chain: issued by `issuer`, about the
/// kernel `owner`, signed, unexpired. Returns its audience and command.
fn check_link(
    index: usize,
    link: &Json,
    issuer: &str,
    owner: &str,
    now_s: u64,
) -> Result<(String, String), DelegationError> {
    let missing = |field| DelegationError::Missing { index, field };
    let payload = link.get("payload").ok_or_else(|| missing("payload"))?;
    let field = |name: &'static str| {
        payload
            .get(name)
            .and_then(Json::as_str)
            .ok_or_else(|| missing(name))
    };
    let (iss, audience, subject, cmd) =
        (field("iss")?, field("aud")?, field("sub")?, field("cmd")?);
    if iss != issuer {
        return Err(DelegationError::WrongIssuer {
            index,
            issuer: iss.to_owned(),
            expected: issuer.to_owned(),
        });
    }
    if subject != owner {
        return Err(DelegationError::WrongSubject {
            index,
            subject: subject.to_owned(),
        });
    }
    let signature = link
        .get("sig")
        .and_then(Json::as_str)
        .ok_or(DelegationError::Unsigned { index })?;
    verify(iss, &dag_cbor(payload), signature)
        .map_err(|reason| DelegationError::BadSignature { index, reason })?;
    match payload.get("exp") {
        None | Some(Json::Null) => {}
        Some(exp) => {
            let exp = exp.as_u64().ok_or(DelegationError::BadExpiry { index })?;
            if exp <= now_s {
                return Err(DelegationError::Expired { index });
            }
        }
    }
    Ok((audience.to_owned(), cmd.to_owned()))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use did_key::did_of as did_key;

    fn key(seed: u8) -> (SigningKey, String) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let did = did_key(&key);
        (key, did)
    }

    #[test]
    fn commands_cover_their_sub_commands_only() {
        assert!(covers("/", "/ipvm/run"));
        assert!(covers("/ipvm", "/ipvm/effect/counter"));
        assert!(covers("/ipvm/run", "/ipvm/run"));
        assert!(!covers("/ipvm/run", "/ipvm/effect/counter"));
        assert!(!covers("/ipvm/eff", "/ipvm/effect/x"));
    }

    #[test]
    fn a_chain_from_the_owner_to_the_requestor_grants_its_narrowest_command() {
        let (owner_key, owner) = key(1);
        let (alice_key, alice) = key(2);
        let (_, bob) = key(3);
        let first = delegate(&owner, &alice, &owner, "/ipvm", None, "n1", &|m| {
            owner_key.sign(m).to_bytes()
        });
        let second = delegate(&alice, &bob, &owner, "/ipvm/run", Some(2000), "n2", &|m| {
            alice_key.sign(m).to_bytes()
        });
        let chain = [first.clone(), second.clone()];
        assert_eq!(
            granted_command(&chain, &owner, &bob, 1000).unwrap(),
            "/ipvm/run"
        );
        assert!(
            granted_command(&chain, &owner, &bob, 3000)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        assert!(granted_command(std::slice::from_ref(&second), &owner, &bob, 1000).is_err());
        assert!(
            granted_command(std::slice::from_ref(&first), &owner, &bob, 1000)
                .unwrap_err()
                .to_string()
                .contains("not the requestor")
        );
        let wider = delegate(&alice, &bob, &owner, "/", None, "n3", &|m| {
            alice_key.sign(m).to_bytes()
        });
        assert!(
            granted_command(&[first.clone(), wider], &owner, &bob, 1000)
                .unwrap_err()
                .to_string()
                .contains("widens")
        );
        let mut forged = second;
        forged["payload"]["cmd"] = "/ipvm".into();
        assert!(
            granted_command(&[first, forged], &owner, &bob, 1000)
                .unwrap_err()
                .to_string()
                .contains("bad signature")
        );
    }
}
