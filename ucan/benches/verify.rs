//! UCAN validation: invocations with a chain of three delegations, each
//! with a policy, validated end to end (decode, four Ed25519 signatures,
//! times, principals, commands, policies), beside the rate of bare Ed25519
//! verifications on this machine (the floor: four per validation).
//!
//! Run: `cargo bench -p ucan --bench verify` (`ROUNDS=20000` to change the
//! count). Under `cargo test` it does a small run.

use std::collections::BTreeMap;
use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey};
use ucan::{Cid, Command, Delegation, Invocation, Ipld, Kind, Policy, Token, validate};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn did(key: &SigningKey) -> did_key::DidKey {
    did_key::DidKey::parse(&did_key::did_of(key)).unwrap()
}

fn s(text: &str) -> Ipld {
    Ipld::String(text.into())
}

/// `from` lets `to` send mail as the subject, within `pol`.
fn delegation(from: &SigningKey, to: &SigningKey, subject: &SigningKey, pol: Ipld) -> Token {
    let delegation = Delegation {
        iss: did(from),
        aud: did(to),
        sub: Some(did(subject)),
        cmd: Command::parse("/msg/send").unwrap(),
        pol: Policy::parse(&pol).unwrap(),
        nonce: vec![from.to_bytes()[0]; 12],
        nbf_s: None,
        exp_s: None,
    };
    Token::sign(Kind::Delegation, delegation.to_payload(), &|m| {
        from.sign(m).to_bytes()
    })
}

/// An invocation by Carol with its chain owner → Alice → Bob → Carol
/// (policies on the first two), and the store of its proofs.
fn chain_of_three() -> (Token, BTreeMap<Cid, Vec<u8>>) {
    let (owner, alice, bob, carol) = (key(1), key(2), key(3), key(4));
    let to_example = Ipld::List(vec![Ipld::List(vec![
        s("any"),
        s(".to"),
        Ipld::List(vec![s("like"), s("."), s("*@example.com")]),
    ])]);
    let small = Ipld::List(vec![Ipld::List(vec![
        s("<"),
        s(".size"),
        Ipld::Integer(1024),
    ])]);
    let chain = [
        delegation(&owner, &alice, &owner, to_example),
        delegation(&alice, &bob, &owner, small),
        delegation(&bob, &carol, &owner, Ipld::List(vec![])),
    ];
    let proofs = chain
        .iter()
        .map(|t| (t.cid(), t.bytes().to_vec()))
        .collect();
    let invocation = Invocation {
        iss: did(&carol),
        sub: did(&owner),
        aud: None,
        cmd: Command::parse("/msg/send").unwrap(),
        args: BTreeMap::from([
            (
                "to".to_owned(),
                Ipld::List(vec![s("carol@example.com"), s("dan@example.com")]),
            ),
            ("size".to_owned(), Ipld::Integer(300)),
        ]),
        prf: chain.iter().map(Token::cid).collect(),
        nonce: vec![9; 12],
        exp_s: None,
        iat_s: None,
        cause: None,
    };
    let token = Token::sign(Kind::Invocation, invocation.to_payload(), &|m| {
        carol.sign(m).to_bytes()
    });
    (token, proofs)
}

/// Bare `verify_strict` calls per second, on this machine.
fn signatures_per_s(count: u32) -> f64 {
    let signer = key(4);
    let message = [7u8; 200];
    let signature = signer.sign(&message);
    let verifying = signer.verifying_key();
    let start = Instant::now();
    for _ in 0..count {
        verifying.verify_strict(&message, &signature).unwrap();
    }
    f64::from(count) / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let rounds: u32 = if measuring {
        std::env::var("ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000)
    } else {
        100
    };
    let (token, proofs) = chain_of_three();
    let find = |cid: &Cid| proofs.get(cid).cloned();
    let start = Instant::now();
    for _ in 0..rounds {
        validate(token.bytes(), &find, 1_800_000_000).expect("the chain is valid");
    }
    let validations_per_s = f64::from(rounds) / start.elapsed().as_secs_f64();
    let signatures_per_s = signatures_per_s(rounds * 4);

    println!(
        "UCAN invocation with a chain of 3 delegations (policies on 2), {rounds} validations:"
    );
    println!(
        "{:<48} {:>12.0} /s",
        "validations (decode, 4 signatures, chain, policies)", validations_per_s
    );
    println!(
        "{:<48} {:>12.0} /s",
        "bare Ed25519 verify_strict (the floor: 4 each)", signatures_per_s
    );
    println!(
        "validation costs {:.2}x its four signature checks",
        signatures_per_s / 4.0 / validations_per_s
    );
}
