//! Chains this crate signs itself, for what the vectors do not cover:
//! command attenuation by whole segments, a policy on the arguments,
//! proofs that do not hash to their link, and `authorize` for a request
//! that comes in another envelope.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use ucan::{
    Cid, Command, Delegation, Invocation, Ipld, Kind, Policy, Request, Token, authorize, validate,
};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn did(key: &SigningKey) -> did_key::DidKey {
    did_key::DidKey::parse(&did_key::did_of(key)).unwrap()
}

fn delegate(
    from: &SigningKey,
    to: &SigningKey,
    subject: &SigningKey,
    cmd: &str,
    pol: Ipld,
) -> Token {
    let delegation = Delegation {
        iss: did(from),
        aud: did(to),
        sub: Some(did(subject)),
        cmd: Command::parse(cmd).unwrap(),
        pol: Policy::parse(&pol).unwrap(),
        nonce: vec![1, 2, 3],
        nbf_s: None,
        exp_s: Some(2_000),
    };
    Token::sign(Kind::Delegation, delegation.to_payload(), &|m| {
        from.sign(m).to_bytes()
    })
}

fn invoke(by: &SigningKey, subject: &SigningKey, cmd: &str, args: Ipld, prf: &[&Token]) -> Token {
    let Ipld::Map(args) = args else {
        panic!("args are a map")
    };
    let invocation = Invocation {
        iss: did(by),
        sub: did(subject),
        aud: None,
        cmd: Command::parse(cmd).unwrap(),
        args,
        prf: prf.iter().map(|t| t.cid()).collect(),
        nonce: vec![4, 5, 6],
        exp_s: None,
        iat_s: None,
        cause: None,
    };
    Token::sign(Kind::Invocation, invocation.to_payload(), &|m| {
        by.sign(m).to_bytes()
    })
}

fn store(tokens: &[&Token]) -> BTreeMap<Cid, Vec<u8>> {
    tokens
        .iter()
        .map(|t| (t.cid(), t.bytes().to_vec()))
        .collect()
}

fn small(limit: i128) -> Ipld {
    let s = |t: &str| Ipld::String(t.into());
    Ipld::List(vec![Ipld::List(vec![
        s("<="),
        s(".size"),
        Ipld::Integer(limit),
    ])])
}

fn args(size: i128) -> Ipld {
    Ipld::Map(BTreeMap::from([("size".to_owned(), Ipld::Integer(size))]))
}

#[test]
fn commands_narrow_by_whole_segments_along_the_chain() {
    let (owner, alice, bob) = (key(1), key(2), key(3));
    let root = delegate(&owner, &alice, &owner, "/crypto", Ipld::List(vec![]));
    let next = delegate(&alice, &bob, &owner, "/crypto/sign", Ipld::List(vec![]));
    let proofs = store(&[&root, &next]);
    let find = |cid: &Cid| proofs.get(cid).cloned();
    let ok = invoke(&bob, &owner, "/crypto/sign/fast", args(1), &[&root, &next]);
    validate(ok.bytes(), &find, 1_000).unwrap();
    let wider = invoke(&bob, &owner, "/crypto/verify", args(1), &[&root, &next]);
    assert_eq!(
        validate(wider.bytes(), &find, 1_000).unwrap_err().name(),
        "InvalidCommand"
    );
    let lookalike = invoke(&bob, &owner, "/cryptocurrency", args(1), &[&root, &next]);
    assert_eq!(
        validate(lookalike.bytes(), &find, 1_000)
            .unwrap_err()
            .name(),
        "InvalidCommand"
    );
    // Past the root's expiry, nothing it proves goes through.
    assert_eq!(
        validate(ok.bytes(), &find, 2_001).unwrap_err().name(),
        "Expired"
    );
}

#[test]
fn every_policy_on_the_chain_holds_on_the_arguments() {
    let (owner, alice) = (key(1), key(2));
    let root = delegate(&owner, &alice, &owner, "/store", small(100));
    let proofs = store(&[&root]);
    let find = |cid: &Cid| proofs.get(cid).cloned();
    validate(
        invoke(&alice, &owner, "/store/put", args(100), &[&root]).bytes(),
        &find,
        0,
    )
    .unwrap();
    let big = invoke(&alice, &owner, "/store/put", args(101), &[&root]);
    assert_eq!(
        validate(big.bytes(), &find, 0).unwrap_err().name(),
        "MatchError"
    );
}

#[test]
fn a_proof_that_does_not_hash_to_its_link_is_unavailable() {
    let (owner, alice) = (key(1), key(2));
    let root = delegate(&owner, &alice, &owner, "/", Ipld::List(vec![]));
    let other = delegate(&owner, &alice, &owner, "/other", Ipld::List(vec![]));
    let invocation = invoke(&alice, &owner, "/x", args(1), &[&root]);
    // The store answers the link with another token's bytes.
    let wrong = |_: &Cid| Some(other.bytes().to_vec());
    assert_eq!(
        validate(invocation.bytes(), &wrong, 0).unwrap_err().name(),
        "UnavailableProof"
    );
}

#[test]
fn authorize_judges_a_request_against_delegations() {
    let (owner, alice, mallory) = (key(1), key(2), key(9));
    let root = delegate(&owner, &alice, &owner, "/ipvm/run", small(10));
    let request = |who: &SigningKey, cmd: &str, size: i128| {
        let (invoker, subject, cmd, args) = (
            did(who),
            did(&owner),
            Command::parse(cmd).unwrap(),
            args(size),
        );
        let request = Request {
            invoker: &invoker,
            subject: &subject,
            cmd: &cmd,
            args: &args,
        };
        authorize(&request, &[root.bytes()], 0)
            .map(|_| ())
            .map_err(|e| e.name())
    };
    assert_eq!(request(&alice, "/ipvm/run", 3), Ok(()));
    assert_eq!(
        request(&alice, "/ipvm/effect/counter", 3),
        Err("InvalidCommand")
    );
    assert_eq!(request(&alice, "/ipvm/run", 11), Err("MatchError"));
    assert_eq!(request(&mallory, "/ipvm/run", 3), Err("InvalidAudience"));
    let mut forged = root.bytes().to_vec();
    forged[5] ^= 1;
    let (invoker, subject, cmd, args) = (
        did(&alice),
        did(&owner),
        Command::parse("/ipvm/run").unwrap(),
        args(1),
    );
    let request = Request {
        invoker: &invoker,
        subject: &subject,
        cmd: &cmd,
        args: &args,
    };
    assert_eq!(
        authorize(&request, &[&forged], 0).unwrap_err().name(),
        "InvalidSignature"
    );
}
