//! UCAN 1.0 with the real `vat` binary: one home delegates to another,
//! which invokes; `vat ucan verify` judges the invocation against its
//! proofs and names what is wrong when it is refused.

use std::path::PathBuf;

use base64::Engine;
use vat_tests::VatHome;

/// Writes what `home` prints for `args` to `file` in `home`'s folder.
fn token(home: &VatHome, file: &str, args: &[&str]) -> PathBuf {
    let path = home.path().join(file);
    std::fs::write(&path, home.ok(args)).unwrap();
    path
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_delegated_invocation_verifies_and_each_breach_is_named() {
    let (alice, bob) = (VatHome::new(), VatHome::new());
    let (alice_did, bob_did) = (alice.ok(&["key"]), bob.ok(&["key"]));
    let policy = r#"[["<", ".size", 10], ["like", ".to", "*@example.com"]]"#;
    let grant = token(
        &alice,
        "grant.ucan",
        &[
            "ucan", "delegate", &bob_did, "--cmd", "/msg", "--policy", policy,
        ],
    );
    let described = alice.ok(&["ucan", "verify", path(&grant)]);
    assert!(
        described.ends_with(&format!(
            "{alice_did} lets {bob_did} use /msg on {alice_did}, no expiry"
        )),
        "{described}"
    );
    let invoke = |file: &str, cmd: &str, args: &str| {
        let proof = path(&grant).to_owned();
        token(
            &bob,
            file,
            &[
                "ucan",
                "invoke",
                cmd,
                "--subject",
                &alice_did,
                "--args",
                args,
                "--proof",
                &proof,
            ],
        )
    };
    let good = invoke(
        "good.ucan",
        "/msg/send",
        r#"{"size": 3, "to": "carol@example.com"}"#,
    );
    let verified = alice.ok(&["ucan", "verify", path(&good), "--proof", path(&grant)]);
    assert!(verified.starts_with("invocation bafyrei"), "{verified}");
    assert!(
        verified.ends_with(&format!(
            "{bob_did} may run /msg/send on {alice_did} (a chain of 1)"
        )),
        "{verified}"
    );
    let refused = |invocation: &PathBuf, proofs: &[&PathBuf]| {
        let mut args = vec!["ucan", "verify", path(invocation)];
        for proof in proofs {
            args.extend(["--proof", path(proof)]);
        }
        alice.fails(&args)
    };
    assert!(refused(&good, &[]).starts_with("error: UnavailableProof"));
    let big = invoke(
        "big.ucan",
        "/msg/send",
        r#"{"size": 30, "to": "carol@example.com"}"#,
    );
    assert!(refused(&big, &[&grant]).starts_with("error: MatchError"));
    let wider = invoke(
        "wider.ucan",
        "/msgs",
        r#"{"size": 3, "to": "carol@example.com"}"#,
    );
    assert!(refused(&wider, &[&grant]).starts_with("error: InvalidCommand"));
    // Bob's own key names no authority over Alice without her proof.
    let bare = token(
        &bob,
        "bare.ucan",
        &["ucan", "invoke", "/msg/send", "--subject", &alice_did],
    );
    assert!(refused(&bare, &[]).starts_with("error: InvalidClaim"));
    // A flipped signature byte in the delegation, kept as raw DAG-CBOR.
    let text = std::fs::read_to_string(&grant).unwrap();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    raw[10] ^= 1;
    let forged = alice.path().join("forged.ucan");
    std::fs::write(&forged, raw).unwrap();
    assert!(
        alice
            .fails(&["ucan", "verify", path(&forged)])
            .starts_with("error: InvalidSignature")
    );
}

#[test]
fn bad_input_to_vat_ucan_is_one_line_and_no_token() {
    let home = VatHome::new();
    let did = home.ok(&["key"]);
    for (args, says) in [
        (
            vec!["ucan", "delegate", "did:key:nope"],
            "the audience is not a did:key",
        ),
        (
            vec!["ucan", "delegate", &did, "--cmd", "msg"],
            "does not start with /",
        ),
        (
            vec![
                "ucan",
                "delegate",
                &did,
                "--policy",
                r#"[["==", "size", 1]]"#,
            ],
            "malformed selector",
        ),
        (
            vec!["ucan", "delegate", &did, "--policy", "[nope"],
            "--policy is not DAG-JSON",
        ),
        (
            vec!["ucan", "invoke", "/x", "--args", "[1]"],
            "--args must be a DAG-JSON map",
        ),
    ] {
        let err = home.fails(&args);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
