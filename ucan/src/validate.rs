//! Judging an invocation against its proofs.

use did_key::DidKey;
use ipld_core::cid::Cid;
use ipld_core::ipld::Ipld;

use crate::CHAIN_LENGTH_MAX;
use crate::command::Command;
use crate::envelope::{Token, cid_of};
use crate::payload::{Delegation, Invocation};

/// Why an invocation is refused. [`ValidationError::name`] is the name the
/// UCAN test vectors give each case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: String },
    #[error("proof {0} is not available")]
    UnavailableProof(Cid),
    #[error("more than chain_length_max ({CHAIN_LENGTH_MAX}) proofs")]
    ChainTooLong,
    #[error("the signature of {0} does not verify")]
    InvalidSignature(String),
    #[error("{0} has expired")]
    Expired(String),
    #[error("{0} is not valid yet")]
    TooEarly(String),
    #[error("{0}")]
    InvalidAudience(String),
    #[error("{0}")]
    InvalidSubject(String),
    #[error("{0}")]
    InvalidClaim(String),
    #[error("proof {index} grants {granted}, which does not cover {wanted}")]
    InvalidCommand {
        index: usize,
        granted: String,
        wanted: String,
    },
    #[error("the arguments do not satisfy the policy of proof {0}")]
    MatchError(usize),
}

impl ValidationError {
    /// The error's name as the UCAN test vectors write it.
    pub fn name(&self) -> &'static str {
        match self {
            ValidationError::Malformed { .. } => "MalformedToken",
            ValidationError::UnavailableProof(_) => "UnavailableProof",
            ValidationError::ChainTooLong => "ChainTooLong",
            ValidationError::InvalidSignature(_) => "InvalidSignature",
            ValidationError::Expired(_) => "Expired",
            ValidationError::TooEarly(_) => "TooEarly",
            ValidationError::InvalidAudience(_) => "InvalidAudience",
            ValidationError::InvalidSubject(_) => "InvalidSubject",
            ValidationError::InvalidClaim(_) => "InvalidClaim",
            ValidationError::InvalidCommand { .. } => "InvalidCommand",
            ValidationError::MatchError(_) => "MatchError",
        }
    }
}

/// An invocation found valid, with its id and its proofs (root first).
#[derive(Debug, Clone)]
pub struct Validated {
    pub cid: Cid,
    pub invocation: Invocation,
    pub proofs: Vec<Delegation>,
}

fn malformed(what: impl Into<String>, reason: impl ToString) -> ValidationError {
    ValidationError::Malformed {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Validates the invocation `token` at `now_s` (seconds since the Unix
/// epoch), finding its proofs with `proof` (the bytes stored under a CID;
/// they must hash to it).
pub fn validate(
    token: &[u8],
    proof: &dyn Fn(&Cid) -> Option<Vec<u8>>,
    now_s: u64,
) -> Result<Validated, ValidationError> {
    let token = Token::decode(token).map_err(|e| malformed("the invocation", e))?;
    let invocation = Invocation::from_token(&token).map_err(|e| malformed("the invocation", e))?;
    if invocation.prf.len() > CHAIN_LENGTH_MAX {
        return Err(ValidationError::ChainTooLong);
    }
    let proofs = resolve(&invocation.prf, proof)?;
    token
        .verify(&invocation.iss)
        .map_err(|_| ValidationError::InvalidSignature("the invocation".into()))?;
    if invocation.exp_s.is_some_and(|exp| now_s > exp) {
        return Err(ValidationError::Expired("the invocation".into()));
    }
    let request = Request {
        invoker: &invocation.iss,
        subject: &invocation.sub,
        cmd: &invocation.cmd,
        args: &Ipld::Map(invocation.args.clone()),
    };
    let proofs = authorize_decoded(&request, proofs, now_s)?;
    Ok(Validated {
        cid: token.cid(),
        invocation,
        proofs,
    })
}

/// What is asked for: `invoker` would run `cmd` on `subject` with `args`.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub invoker: &'a DidKey,
    pub subject: &'a DidKey,
    pub cmd: &'a Command,
    pub args: &'a Ipld,
}

/// Whether the delegations `proofs` (tokens, root first) let the request
/// through at `now_s`: what [`validate`] checks of an invocation's proofs,
/// for a request that comes in another envelope (an IPVM job's tasks).
pub fn authorize(
    request: &Request,
    proofs: &[&[u8]],
    now_s: u64,
) -> Result<Vec<Delegation>, ValidationError> {
    if proofs.len() > CHAIN_LENGTH_MAX {
        return Err(ValidationError::ChainTooLong);
    }
    let decoded = proofs
        .iter()
        .enumerate()
        .map(|(index, bytes)| decode_proof(index, bytes))
        .collect::<Result<_, _>>()?;
    authorize_decoded(request, decoded, now_s)
}

fn authorize_decoded(
    request: &Request,
    proofs: Vec<(Token, Delegation)>,
    now_s: u64,
) -> Result<Vec<Delegation>, ValidationError> {
    check_signatures(&proofs)?;
    let proofs: Vec<Delegation> = proofs.into_iter().map(|(_, d)| d).collect();
    check_times(&proofs, now_s)?;
    check_chain(request, &proofs)?;
    check_authority(request, &proofs)?;
    Ok(proofs)
}

fn decode_proof(index: usize, bytes: &[u8]) -> Result<(Token, Delegation), ValidationError> {
    let what = || format!("proof {index}");
    let token = Token::decode(bytes).map_err(|e| malformed(what(), e))?;
    let delegation = Delegation::from_token(&token).map_err(|e| malformed(what(), e))?;
    Ok((token, delegation))
}

fn resolve(
    links: &[Cid],
    proof: &dyn Fn(&Cid) -> Option<Vec<u8>>,
) -> Result<Vec<(Token, Delegation)>, ValidationError> {
    links
        .iter()
        .enumerate()
        .map(|(index, cid)| {
            let bytes = proof(cid)
                .filter(|bytes| cid_of(bytes) == *cid)
                .ok_or(ValidationError::UnavailableProof(*cid))?;
            decode_proof(index, &bytes)
        })
        .collect()
}

fn check_signatures(proofs: &[(Token, Delegation)]) -> Result<(), ValidationError> {
    for (index, (token, delegation)) in proofs.iter().enumerate() {
        token
            .verify(&delegation.iss)
            .map_err(|_| ValidationError::InvalidSignature(format!("proof {index}")))?;
    }
    Ok(())
}

fn check_times(proofs: &[Delegation], now_s: u64) -> Result<(), ValidationError> {
    for (index, proof) in proofs.iter().enumerate() {
        if proof.exp_s.is_some_and(|exp| now_s > exp) {
            return Err(ValidationError::Expired(format!("proof {index}")));
        }
        if proof.nbf_s.is_some_and(|nbf| now_s < nbf) {
            return Err(ValidationError::TooEarly(format!("proof {index}")));
        }
    }
    Ok(())
}

/// The chain runs from the subject to the invoker: the root is issued by
/// its subject, each proof's audience issues the next, the last names the
/// invoker, and every proof is about the invocation's subject (or any).
fn check_chain(request: &Request, proofs: &[Delegation]) -> Result<(), ValidationError> {
    let Some(root) = proofs.first() else {
        if request.invoker != request.subject {
            return Err(ValidationError::InvalidClaim(format!(
                "{} acts on {} with no proof",
                request.invoker, request.subject
            )));
        }
        return Ok(());
    };
    match &root.sub {
        None => {
            return Err(ValidationError::InvalidClaim(
                "the root proof has a null subject".into(),
            ));
        }
        Some(sub) if *sub != root.iss => {
            return Err(ValidationError::InvalidClaim(format!(
                "the root proof is issued by {}, not its subject {sub}",
                root.iss
            )));
        }
        Some(_) => {}
    }
    for (index, pair) in proofs.windows(2).enumerate() {
        if pair[0].aud != pair[1].iss {
            return Err(ValidationError::InvalidAudience(format!(
                "proof {index} is to {}, but proof {} is issued by {}",
                pair[0].aud,
                index + 1,
                pair[1].iss
            )));
        }
    }
    let last = proofs
        .last()
        .expect("ucan invariant: a chain with a root has a last proof");
    if last.aud != *request.invoker {
        return Err(ValidationError::InvalidAudience(format!(
            "the last proof is to {}, not the invoker {}",
            last.aud, request.invoker
        )));
    }
    for (index, proof) in proofs.iter().enumerate() {
        if proof.sub.as_ref().is_some_and(|sub| sub != request.subject) {
            return Err(ValidationError::InvalidSubject(format!(
                "proof {index} is about another subject than {}",
                request.subject
            )));
        }
    }
    Ok(())
}

/// Every proof's command covers the invocation's, and its policy holds
/// on the invocation's arguments.
fn check_authority(request: &Request, proofs: &[Delegation]) -> Result<(), ValidationError> {
    for (index, proof) in proofs.iter().enumerate() {
        if !proof.cmd.covers(request.cmd) {
            return Err(ValidationError::InvalidCommand {
                index,
                granted: proof.cmd.to_string(),
                wanted: request.cmd.to_string(),
            });
        }
        if !proof.pol.matches(request.args) {
            return Err(ValidationError::MatchError(index));
        }
    }
    Ok(())
}
