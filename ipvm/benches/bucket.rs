//! The bucket VM: a CAR of N UCAN invocations (each proved by one
//! delegation from the kernel's owner) added and enqueued, every
//! invocation validated, delivered to a counter vat and receipted (a
//! signed receipt committed for each); then the same CAR enqueued again,
//! all memo hits (each invocation found by its receipt, none run). The
//! counter runs in a thread worker.
//!
//! Run: `scripts/build-guests && cargo bench -p ipvm --bench bucket`
//! (`INVOCATIONS=10000` is the default). Under `cargo test` it does a
//! small run.

#[path = "../../kernel/benches/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey};
use ipvm::Bucket;
use kernel::{CommitPolicy, Kernel, VatOptions, WorkerKind};
use swingstore::{Durability, SwingStore};
use ucan::{Cid, Command, Delegation, Invocation, Kind, Policy, Token};

fn did(key: &SigningKey) -> did_key::DidKey {
    did_key::DidKey::parse(&did_key::did_of(key)).unwrap()
}

/// A CAR of `count` invocations of `/counter/increment` by `invoker`,
/// each with `grant` as its proof (stored once).
fn program(owner: &SigningKey, invoker: &SigningKey, count: usize) -> Vec<u8> {
    let grant = Delegation {
        iss: did(owner),
        aud: did(invoker),
        sub: Some(did(owner)),
        cmd: Command::parse("/counter").unwrap(),
        pol: Policy::empty(),
        nonce: vec![1; 12],
        nbf_s: None,
        exp_s: None,
    };
    let grant = Token::sign(Kind::Delegation, grant.to_payload(), &|m| {
        owner.sign(m).to_bytes()
    });
    let mut blocks = vec![(grant.cid(), grant.bytes().to_vec())];
    let mut roots = Vec::new();
    for i in 0..count {
        let invocation = Invocation {
            iss: did(invoker),
            sub: did(owner),
            aud: None,
            cmd: Command::parse("/counter/increment").unwrap(),
            args: BTreeMap::new(),
            prf: vec![grant.cid()],
            nonce: (i as u64).to_be_bytes().to_vec(),
            exp_s: None,
            iat_s: None,
            cause: None,
        };
        let token = Token::sign(Kind::Invocation, invocation.to_payload(), &|m| {
            invoker.sign(m).to_bytes()
        });
        roots.push(token.cid());
        blocks.push((token.cid(), token.bytes().to_vec()));
    }
    ipvm::write_car(roots, &blocks)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let count = if measuring {
        std::env::var("INVOCATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    } else {
        20
    };
    let dir = tempfile::tempdir().unwrap();
    let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Full).unwrap();
    let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).unwrap();
    // Spawning names the vat's root after the vat.
    kernel
        .spawn_vat(
            "counter",
            &common::guest_wasm("counter"),
            VatOptions {
                worker: WorkerKind::Thread,
                ..VatOptions::default()
            },
        )
        .unwrap();
    kernel.commit().unwrap();
    let (owner, invoker) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let car = program(&owner, &invoker, count);
    let owner_did = did_key::did_of(&owner);
    let sign = |m: &[u8]| owner.sign(m).to_bytes();
    let mut bucket = Bucket::new(&mut kernel, &owner_did, &sign).unwrap();

    let started = Instant::now();
    let (cid, _): (Cid, _) = bucket.add_car(&car).unwrap();
    let added_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let first = bucket.enqueue(&cid, &owner_did).unwrap();
    let run_s = started.elapsed().as_secs_f64();
    assert_eq!((first.ok, first.failed), (count, 0), "{first:?}");
    let started = Instant::now();
    let again = bucket.enqueue(&cid, &owner_did).unwrap();
    let memo_s = started.elapsed().as_secs_f64();
    assert_eq!(again.memo_hits, count);

    let per_s = |seconds: f64| count as f64 / seconds;
    println!(
        "bucket VM, a CAR of {count} invocations ({} KiB), each proved by one delegation:",
        car.len() / 1024
    );
    println!(
        "{:<58} {:>10.0} blocks/s",
        "vat car add (hash-checked, stored, committed)",
        per_s(added_s)
    );
    println!(
        "{:<58} {:>10.0} invocations/s",
        "enqueue: validated, delivered, receipt signed + committed",
        per_s(run_s)
    );
    println!(
        "{:<58} {:>10.0} invocations/s",
        "enqueue again: memo hits (found by receipt, none run)",
        per_s(memo_s)
    );
}
