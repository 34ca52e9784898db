//! JSON CapTP: Node peers on @endo/captp 4.5.1 (`tests/node`) talk to a
//! kernel as Cap'n Proto peers do: bootstrap, restore a sturdy ref, call,
//! are called back, pipeline, pass promises, drop what they let go of,
//! disconnect; and the kernel is left consistent, holding nothing for them.

use vat_tests::VatHome;

/// Each line a Node peer printed: `{"step": ..., "value": ...}`, by step.
fn steps(output: &std::process::Output) -> std::collections::HashMap<String, serde_json::Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Node peer failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let json: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            (
                json["step"].as_str().unwrap().to_owned(),
                json["value"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_node_peer_on_endo_captp_calls_is_called_back_pipelines_and_lets_go() {
    let home = VatHome::new();
    home.spawn("waiter", "waiter");
    let _daemon = home.start_listening("127.0.0.1:0");
    let uri = home.ok(&["share", "waiter"]);
    let output = vat_tests::node_script("peer.mjs", &[&uri])
        .output()
        .expect("run node");
    let steps = steps(&output);
    assert_eq!(
        steps["echo"],
        serde_json::json!({"n": "10", "list": [true, null, -1.5], "text": "hi"}),
        "data (a bigint, a list, a string) went there and back"
    );
    assert_eq!(
        steps["callback"], "hi from node",
        "the vat called the peer's Far object"
    );
    assert_eq!(steps["pipelined"], "thing");
    assert_eq!(steps["promise"], "resolved later");
    assert_eq!(steps["thing"], "thing");
    assert!(
        steps["dropped"].as_u64().unwrap() >= 1,
        "nothing was dropped"
    );
    let failure = steps["failure"].as_str().unwrap();
    assert!(failure.contains("no method \"noSuchMethod\""), "{failure}");
    assert_eq!(steps["disconnected"], true);
    // The peer is gone and holds nothing; the tables are consistent.
    vat_tests::wait_until("the Node peer was not released", 20, || {
        let peers = home.ok(&["peers"]);
        peers.contains("endo client disconnected") && peers.ends_with("references 0")
    });
    home.check();
    // And the kernel serves on: the vat answers the CLI.
    assert_eq!(home.ok(&["send", "waiter", "echo", "5"]), "5");
}

#[test]
fn a_node_peer_that_sends_garbage_is_told_and_others_go_on() {
    use std::io::{Read, Write};
    let home = VatHome::new();
    home.spawn("waiter", "waiter");
    let _daemon = home.start_listening("127.0.0.1:0");
    let uri = home.ok(&["share", "waiter"]);
    let address = uri
        .rsplit_once('/')
        .unwrap()
        .0
        .rsplit_once('@')
        .unwrap()
        .1
        .to_owned();
    for garbage in [
        &b"11:not json!!!,"[..],
        b"38:{\"type\":\"CTP_CALL\",\"questionID\":\"q-1\"},",
        b"999999999:",
        b"5:hello;",
    ] {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        stream.write_all(garbage).unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.contains("CTP_DISCONNECT"),
            "{garbage:?} got {reply:?}"
        );
    }
    let output = vat_tests::node_script("peer.mjs", &[&uri])
        .output()
        .unwrap();
    assert_eq!(steps(&output)["callback"], "hi from node");
    home.check();
}
