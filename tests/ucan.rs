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

/// Alice lets Bob use `/msg` within a policy on `size` and `to`.
struct MailGrant {
    alice: VatHome,
    bob: VatHome,
    alice_did: String,
    bob_did: String,
    grant: PathBuf,
}

impl MailGrant {
    fn new() -> MailGrant {
        let (alice, bob) = (VatHome::new(), VatHome::new());
        let (alice_did, bob_did) = (alice.ok(&["key"]), bob.ok(&["key"]));
        let policy = r#"[["<", ".size", 10], ["like", ".to", "*@example.com"]]"#;
        let delegate = [
            "ucan", "delegate", &bob_did, "--cmd", "/msg", "--policy", policy,
        ];
        let grant = token(&alice, "grant.ucan", &delegate);
        MailGrant {
            alice,
            bob,
            alice_did,
            bob_did,
            grant,
        }
    }

    /// Bob's invocation of `cmd` with `args` and the grant, in `file`.
    fn invoke(&self, file: &str, cmd: &str, args: &str) -> PathBuf {
        let (subject, proof) = (self.alice_did.as_str(), path(&self.grant));
        let invoke = [
            "ucan",
            "invoke",
            cmd,
            "--subject",
            subject,
            "--args",
            args,
            "--proof",
            proof,
        ];
        token(&self.bob, file, &invoke)
    }

    /// What `vat ucan verify` says of a refused invocation with `proofs`.
    fn refused(&self, invocation: &std::path::Path, proofs: &[&PathBuf]) -> String {
        let mut args = vec!["ucan", "verify", path(invocation)];
        for proof in proofs {
            args.extend(["--proof", path(proof)]);
        }
        self.alice.fails(&args)
    }
}

#[test]
fn a_delegated_invocation_verifies() {
    let mail = MailGrant::new();
    let (alice_did, bob_did) = (&mail.alice_did, &mail.bob_did);
    let described = mail.alice.ok(&["ucan", "verify", path(&mail.grant)]);
    assert!(
        described.ends_with(&format!(
            "{alice_did} lets {bob_did} use /msg on {alice_did}, no expiry"
        )),
        "{described}"
    );
    let good = mail.invoke(
        "good.ucan",
        "/msg/send",
        r#"{"size": 3, "to": "carol@example.com"}"#,
    );
    let verified = mail
        .alice
        .ok(&["ucan", "verify", path(&good), "--proof", path(&mail.grant)]);
    assert!(verified.starts_with("invocation bafyrei"), "{verified}");
    assert!(
        verified.ends_with(&format!(
            "{bob_did} may run /msg/send on {alice_did} (a chain of 1)"
        )),
        "{verified}"
    );
}

#[test]
fn each_breach_of_a_delegation_is_named() {
    let mail = MailGrant::new();
    let grant = &mail.grant;
    let good = mail.invoke(
        "good.ucan",
        "/msg/send",
        r#"{"size": 3, "to": "carol@example.com"}"#,
    );
    assert!(
        mail.refused(&good, &[])
            .starts_with("error: UnavailableProof")
    );
    let big = mail.invoke(
        "big.ucan",
        "/msg/send",
        r#"{"size": 30, "to": "carol@example.com"}"#,
    );
    assert!(
        mail.refused(&big, &[grant])
            .starts_with("error: MatchError")
    );
    let wider = mail.invoke(
        "wider.ucan",
        "/msgs",
        r#"{"size": 3, "to": "carol@example.com"}"#,
    );
    assert!(
        mail.refused(&wider, &[grant])
            .starts_with("error: InvalidCommand")
    );
    // Bob's own key names no authority over Alice without her proof.
    let bare = token(
        &mail.bob,
        "bare.ucan",
        &["ucan", "invoke", "/msg/send", "--subject", &mail.alice_did],
    );
    assert!(mail.refused(&bare, &[]).starts_with("error: InvalidClaim"));
    // A flipped signature byte in the delegation, kept as raw DAG-CBOR.
    let text = std::fs::read_to_string(grant).unwrap();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    raw[10] ^= 1;
    let forged = mail.alice.path().join("forged.ucan");
    std::fs::write(&forged, raw).unwrap();
    assert!(
        mail.alice
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

/// The receipts CAR of `home`, read back: each receipt verified as the
/// kernel's, as (the invocation it is about, its `out`).
fn receipts(home: &VatHome) -> Vec<(ucan::Cid, ucan::Ipld)> {
    let file = home.path().join("receipts.car");
    home.ok(&["ucan", "receipts", "--out", path(&file)]);
    let car = ipvm::read_car(&std::fs::read(&file).unwrap()).unwrap();
    let kernel = did_key::DidKey::parse(&home.ok(&["key"])).unwrap();
    car.roots
        .iter()
        .map(|root| {
            let (_, bytes) = car.blocks.iter().find(|(cid, _)| cid == root).unwrap();
            let token = ucan::Token::decode(bytes).unwrap();
            token.verify(&kernel).unwrap();
            let receipt = ucan::Invocation::from_token(&token).unwrap();
            assert_eq!(receipt.cmd.as_str(), "/ucan/assert/receipt");
            let ucan::Ipld::Link(ran) = receipt.args["ran"] else {
                panic!("ran is a link")
            };
            (ran, receipt.args["out"].clone())
        })
        .collect()
}

/// An owner kernel with a counter, and Bob, whom the owner let use
/// `/counter`: Bob writes invocations as CARs.
struct CounterGrant {
    owner: VatHome,
    bob: VatHome,
    owner_did: String,
    grant: PathBuf,
}

impl CounterGrant {
    fn new() -> CounterGrant {
        let (owner, bob) = (VatHome::new(), VatHome::new());
        owner.spawn("counter", "counter");
        let (owner_did, bob_did) = (owner.ok(&["key"]), bob.ok(&["key"]));
        let grant = token(
            &owner,
            "grant.ucan",
            &["ucan", "delegate", &bob_did, "--cmd", "/counter"],
        );
        CounterGrant {
            owner,
            bob,
            owner_did,
            grant,
        }
    }

    /// Bob's invocation of `cmd`, with the grant, as the CAR `file`.
    fn invoke(&self, cmd: &str, file: &str) -> PathBuf {
        let car = self.bob.path().join(file);
        let (owner, grant) = (self.owner_did.as_str(), path(&self.grant));
        self.bob.ok(&[
            "ucan",
            "invoke",
            cmd,
            "--subject",
            owner,
            "--proof",
            grant,
            "--car",
            path(&car),
        ]);
        car
    }
}

#[test]
fn a_car_of_invocations_runs_as_messages_once_each_with_signed_receipts() {
    let setup = CounterGrant::new();
    let owner = &setup.owner;
    let invoke = |cmd: &str, car: &str| setup.invoke(cmd, car);
    let bump = invoke("/counter/increment", "bump.car");
    let cid = owner.ok(&["car", "add", path(&bump)]);
    assert!(cid.starts_with("bag"), "a CID of codec car: {cid}");
    assert_eq!(
        owner.ok(&["car", "enqueue", &cid]),
        "1 ok, 0 failed, 0 had run before (receipts: vat ucan receipts --out FILE.car)"
    );
    assert_eq!(owner.ok(&["send", "counter", "get"]), "1");
    // Enqueued again, the invocation has its receipt and does not run.
    assert!(
        owner
            .ok(&["car", "enqueue", &cid])
            .starts_with("0 ok, 0 failed, 1 had run before")
    );
    assert_eq!(owner.ok(&["send", "counter", "get"]), "1");
    // A command the grant does not cover is receipted as refused.
    let reach = invoke("/treasury/withdraw", "reach.car");
    let reach_cid = owner.ok(&["car", "add", path(&reach)]);
    assert!(
        owner
            .ok(&["car", "enqueue", &reach_cid])
            .starts_with("0 ok, 1 failed")
    );
    let receipts = receipts(owner);
    assert_eq!(receipts.len(), 2);
    let outs: Vec<String> = receipts.iter().map(|(_, out)| format!("{out:?}")).collect();
    assert!(outs.iter().any(|o| o == "{\"ok\": 1}"), "{outs:?}");
    assert!(
        outs.iter().any(|o| o.contains("InvalidCommand")),
        "{outs:?}"
    );
    owner.check();
}

#[test]
fn a_car_with_a_block_that_does_not_hash_to_its_cid_stores_nothing() {
    let (owner, bob) = (VatHome::new(), VatHome::new());
    let owner_did = owner.ok(&["key"]);
    let car = bob.path().join("one.car");
    bob.ok(&[
        "ucan",
        "invoke",
        "/x/y",
        "--subject",
        &owner_did,
        "--car",
        path(&car),
    ]);
    let mut bytes = std::fs::read(&car).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&car, bytes).unwrap();
    let before = owner.dump();
    let err = owner.fails(&["car", "add", path(&car)]);
    assert!(err.contains("does not hash to its CID"), "{err}");
    assert_eq!(owner.dump(), before);
    let unknown = "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua";
    assert!(owner.fails(&["car", "enqueue", unknown]).contains("no CAR"));
}

/// The one JSON value an outside reader prints, which must succeed.
fn json_of(mut command: std::process::Command) -> serde_json::Value {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What `node ucan.mjs chains DIR` wrote: (case, CAR, iso-ucan's verdict).
fn outside_chains(dir: &std::path::Path) -> Vec<(String, PathBuf, bool)> {
    let out = vat_tests::node_script("ucan.mjs", &["chains", path(dir)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ucan.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let case: serde_json::Value = serde_json::from_str(line).unwrap();
            let car = PathBuf::from(case["car"].as_str().unwrap());
            (
                case["name"].as_str().unwrap().to_owned(),
                car,
                case["iso"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// CARs iso-ucan writes, of valid chains and mutated ones (a flipped
/// signature byte, a wrong audience, an expired proof, a policy breach, a
/// command not granted): the kernel judges each as iso-ucan does.
#[test]
fn the_kernel_judges_chains_iso_ucan_writes_as_iso_ucan_does() {
    let home = VatHome::new();
    let dir = home.path().join("chains");
    std::fs::create_dir(&dir).unwrap();
    let cases = outside_chains(&dir);
    assert!(cases.len() >= 8, "{cases:?}");
    assert!(cases.iter().any(|(_, _, valid)| *valid) && cases.iter().any(|(_, _, valid)| !*valid));
    for (name, car, iso_accepts) in cases {
        let out = home.run(&["ucan", "verify", path(&car)]);
        let said = String::from_utf8_lossy(if out.status.success() {
            &out.stdout
        } else {
            &out.stderr
        })
        .into_owned();
        assert_eq!(
            out.status.success(),
            iso_accepts,
            "{name}: the kernel said {said}"
        );
    }
}

/// The receipts CAR the kernel writes is read by iso-ucan's tools (every
/// block re-hashed, every receipt's signature verified by the kernel's
/// DID) and by Python's libipld.
#[test]
fn outside_readers_read_the_receipts_car_and_verify_every_receipt() {
    let setup = CounterGrant::new();
    let (owner, owner_did) = (&setup.owner, setup.owner_did.as_str());
    let mut ran = Vec::new();
    for (i, cmd) in [
        "/counter/increment",
        "/counter/increment",
        "/counter/nothing",
    ]
    .iter()
    .enumerate()
    {
        let car = setup.invoke(cmd, &format!("{i}.car"));
        ran.push(ipvm::read_car(&std::fs::read(&car).unwrap()).unwrap().roots[0].to_string());
        let cid = owner.ok(&["car", "add", path(&car)]);
        owner.ok(&["car", "enqueue", &cid]);
    }
    let file = owner.path().join("receipts.car");
    owner.ok(&["ucan", "receipts", "--out", path(&file)]);
    let read = json_of(vat_tests::node_script(
        "ucan.mjs",
        &["receipts", path(&file), owner_did],
    ));
    assert_eq!(
        (read["roots"].as_u64(), read["verified"].as_u64()),
        (Some(3), Some(3)),
        "{read}"
    );
    let mut node_ran: Vec<String> = read["ran"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let (mut wanted, mut python_ran) = (ran, Vec::new());
    let mut python = std::process::Command::new(vat_tests::python());
    python
        .arg(vat_tests::repo_root().join("tests/py/car_read.py"))
        .arg(&file);
    let read = json_of(python);
    assert_eq!(read["rehashed"], read["blocks"], "{read}");
    for receipt in read["receipts"].as_array().unwrap() {
        python_ran.push(receipt["ran"].as_str().unwrap().to_owned());
    }
    for list in [&mut wanted, &mut node_ran, &mut python_ran] {
        list.sort();
    }
    assert_eq!(node_ran, wanted);
    assert_eq!(python_ran, wanted);
}
