//! The UCAN working group's test vectors (`tests/vectors/`, copied
//! unchanged from `../shared/fixtures/ucan/`; see its README): every valid
//! invocation is accepted, every invalid one refused with the error the
//! vector names, every delegation decodes to its stated payload and CID,
//! and every policy case judges its arguments as the vector says.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use serde_json::Value as Json;
use ucan::{Cid, Delegation, Ipld, Policy, Token, validate};

fn vectors(name: &str) -> Json {
    // Where `cargo test` says this crate is when it runs the test (a build
    // folder shared between checkouts may hold a binary compiled in
    // another), else where it was compiled.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let path = crate_dir.join("tests/vectors").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// DAG-JSON bytes: `{"/": {"bytes": BASE64}}`.
fn bytes(value: &Json) -> Vec<u8> {
    let text = value["/"]["bytes"]
        .as_str()
        .expect("a DAG-JSON byte string");
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .unwrap()
}

fn ipld(value: &Json) -> Ipld {
    serde_json::from_value(value.clone()).unwrap()
}

/// Validates one invocation case with its proofs at its time.
fn judge(case: &Json) -> Result<ucan::Validated, ucan::ValidationError> {
    let proofs: BTreeMap<Cid, Vec<u8>> = case["proofs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|proof| {
            let bytes = bytes(proof);
            (Token::decode(&bytes).unwrap().cid(), bytes)
        })
        .collect();
    let time = case["time"].as_u64().unwrap();
    validate(
        &bytes(&case["invocation"]),
        &|cid| proofs.get(cid).cloned(),
        time,
    )
}

fn invocation_vectors(file: &str) {
    let vectors = vectors(file);
    let valid = vectors["valid"].as_array().unwrap();
    let invalid = vectors["invalid"].as_array().unwrap();
    assert!(!valid.is_empty() && !invalid.is_empty());
    for case in valid {
        if let Err(e) = judge(case) {
            panic!(
                "{file}: valid case {:?} refused: {e} ({})",
                case["name"],
                e.name()
            );
        }
    }
    for case in invalid {
        let wanted = case["error"]["name"].as_str().unwrap();
        match judge(case) {
            Ok(_) => panic!("{file}: invalid case {:?} accepted", case["name"]),
            Err(e) => assert_eq!(e.name(), wanted, "{file}: case {:?}: {e}", case["name"]),
        }
    }
}

#[test]
fn invocations_rc1_are_judged_as_the_vectors_say() {
    invocation_vectors("invocation-1.0.0-rc.1.json");
}

#[test]
fn invocations_1_0_0_are_judged_as_the_vectors_say() {
    invocation_vectors("invocation-1.0.0.json");
}

fn delegation_vectors(file: &str) {
    let vectors = vectors(file);
    for case in vectors["valid"].as_array().unwrap() {
        let token_bytes = base64::engine::general_purpose::STANDARD
            .decode(case["token"].as_str().unwrap())
            .unwrap();
        let token = Token::decode(&token_bytes).unwrap();
        assert_eq!(
            token.cid().to_string(),
            case["cid"].as_str().unwrap(),
            "{file}"
        );
        let delegation = Delegation::from_token(&token).unwrap();
        token.verify(&delegation.iss).unwrap();
        let payload = &case["envelope"]["payload"];
        assert_eq!(delegation.iss.to_string(), payload["iss"].as_str().unwrap());
        assert_eq!(delegation.aud.to_string(), payload["aud"].as_str().unwrap());
        assert_eq!(delegation.cmd.as_str(), payload["cmd"].as_str().unwrap());
        assert_eq!(delegation.exp_s, payload["exp"].as_u64());
        // Written again, the payload signs to a token of the same shape.
        assert_eq!(&delegation.to_payload(), token.payload(), "{file}");
    }
}

#[test]
fn delegations_decode_to_their_payload_and_cid() {
    delegation_vectors("delegation-1.0.0-rc.1.json");
    delegation_vectors("delegation-1.0.0.json");
}

#[test]
fn policies_judge_arguments_as_the_vectors_say() {
    let vectors = vectors("policy.json");
    for (set, expected) in [("valid", true), ("invalid", false)] {
        for case in vectors[set].as_array().unwrap() {
            let args = ipld(&case["args"]);
            for policy in case["policies"].as_array().unwrap() {
                let parsed =
                    Policy::parse(&ipld(policy)).unwrap_or_else(|e| panic!("{policy}: {e}"));
                assert_eq!(
                    parsed.matches(&args),
                    expected,
                    "{set} policy {policy} on {}",
                    case["args"]
                );
            }
        }
    }
}
