//! CapTP: kernels and other Cap'n Proto peers over real sockets.
//!
//! - a pycapnp client and a capnp-rpc client each bootstrap a kernel,
//!   restore sturdy refs, call, pipeline, and pass a callback the kernel
//!   calls back;
//! - the chat example across three kernels;
//! - a hostile peer's frames end its connection with `Abort` and leave the
//!   kernel as it was.

use std::process::Command;

use vat_tests::{VatHome, python, repo_root};

fn schema_dir() -> String {
    repo_root().join("captp/schema").display().to_string()
}

/// Runs the pycapnp client on one scenario; returns its JSON lines.
fn pycapnp(uri: &str, scenario: &str) -> Vec<serde_json::Value> {
    let out = Command::new(python())
        .arg(repo_root().join("tests/py/client.py"))
        .args([&schema_dir(), uri, scenario])
        .output()
        .expect("run the pycapnp client");
    assert!(
        out.status.success(),
        "pycapnp client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect()
}

#[test]
fn a_pycapnp_client_calls_pipelines_and_is_called_back() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    home.spawn("mint", "mint");
    home.spawn("room", "chat");
    let _daemon = home.start_listening("127.0.0.1:0");
    let counter = home.ok(&["share", "counter"]);
    assert!(counter.starts_with("captp://did:key:z6Mk"), "{counter}");

    let steps = pycapnp(&counter, "counter");
    assert_eq!(steps[0]["results"], serde_json::json!(["#1", "#2"]));
    let error = steps[1]["error"].as_str().unwrap();
    assert!(
        error.contains(r#"Counter has no method \"noSuchMethod\""#)
            || error.contains("Counter has no method"),
        "{error}"
    );
    // A guessed swiss number restores nothing.
    let guess = steps[2]["error"].as_str().unwrap();
    assert!(guess.contains("no object for that sturdy ref"), "{guess}");
    // The calls reached the vat: the count is the kernel's, committed.
    assert_eq!(home.ok(&["send", "counter", "get"]), "2");

    let steps = pycapnp(&home.ok(&["share", "mint"]), "mint");
    assert_eq!(steps[0]["result"], "#0");
    assert_eq!(home.ok(&["send", "mint", "purseNames"]), r#"["py"]"#);

    let steps = pycapnp(&home.ok(&["share", "room"]), "callback");
    assert_eq!(steps[0]["posted"], "#1");
    assert_eq!(
        steps[0]["calls"],
        serde_json::json!([["tell", "#[1,\"py2: hello from python\"]"]])
    );
    assert_eq!(
        home.ok(&["send", "room", "history"]),
        r#"["py2: hello from python"]"#
    );
    // Each client's connection is gone, and with it what it held.
    vat_tests::wait_until("the peers were not released", 20, || {
        home.ok(&["peers"])
            .lines()
            .all(|line| line.contains("disconnected"))
    });
    home.check();
}
