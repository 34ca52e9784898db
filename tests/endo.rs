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
    let address = captp::sturdy::SturdyRef::parse(&uri)
        .unwrap()
        .address
        .to_string();
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

/// `METHOD path` over HTTP/1.1 to the face at `url`; the status and body.
fn http(url: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_same_node_peer_works_over_a_websocket_to_the_http_face() {
    let home = VatHome::new();
    home.spawn("waiter", "waiter");
    let (_daemon, _, host) = home.start_with_face();
    let uri = home.ok(&["share", "waiter"]);
    let output = vat_tests::node_script(
        "--experimental-websocket",
        &["peer.mjs", &uri, &format!("ws://{host}/captp")],
    )
    .output()
    .expect("run node");
    let steps = steps(&output);
    assert_eq!(steps["callback"], "hi from node");
    assert_eq!(steps["pipelined"], "thing");
    assert_eq!(steps["promise"], "resolved later");
    assert!(steps["dropped"].as_u64().unwrap() >= 1);
    assert_eq!(steps["disconnected"], true);
    vat_tests::wait_until("the WebSocket peer was not released", 20, || {
        let peers = home.ok(&["peers"]);
        peers.contains("endo client disconnected") && peers.ends_with("references 0")
    });
    home.check();
}

#[test]
fn the_http_face_shows_nothing_without_its_token() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    let (_daemon, url, _) = home.start_with_face();
    let token = url.rsplit_once("token=").unwrap().1.to_owned();
    let send = r#"{"target":"counter","method":"increment","args":[]}"#;
    for path in ["/", "/?token=wrong", "/live", "/?token="] {
        let (status, body) = http(&url, "GET", path, "");
        assert_eq!(status, 401, "GET {path}: {body}");
        assert!(body.contains("token"), "{body}");
    }
    let (status, _) = http(&url, "POST", "/send?token=wrong", send);
    assert_eq!(status, 401);
    assert_eq!(
        home.ok(&["send", "counter", "get"]),
        "0",
        "a refused send changed nothing"
    );
    let (status, page) = http(&url, "GET", &format!("/?token={token}"), "");
    assert_eq!(status, 200);
    assert!(page.contains("vat inspector"));
    let (status, answer) = http(&url, "POST", &format!("/send?token={token}"), send);
    assert_eq!(status, 200);
    assert_eq!(answer, r#"{"ok":true,"output":"1"}"#);
    let bad = r#"{"target":"nobody","method":"increment","args":[]}"#;
    let (_, answer) = http(&url, "POST", &format!("/send?token={token}"), bad);
    assert!(
        answer.contains(r#""ok":false"#) && answer.contains("nobody"),
        "{answer}"
    );
}

#[test]
fn the_inspector_in_a_browser_lists_vats_and_sends_through_its_form() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    home.spawn("waiter", "waiter");
    let (_daemon, url, _) = home.start_with_face();
    let screenshot = vat_tests::artifacts_dir().join("inspector.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = vat_tests::node_script("inspector.mjs", &[&url, screenshot.to_str().unwrap()])
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "the browser script failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["vats"], serde_json::json!(["counter", "waiter"]));
    assert_eq!(
        seen["result"], "1",
        "the form's send came back with the new count"
    );
    assert_eq!(
        home.ok(&["send", "counter", "get"]),
        "1",
        "the form's send was committed"
    );
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
}

#[test]
fn vat_enliven_reaches_an_object_of_a_listening_endo_peer() {
    let (mut server, port) = vat_tests::node_echo_server();
    let home = VatHome::new();
    let _daemon = home.start_daemon();
    let uri = format!("captp+json://127.0.0.1:{port}/anything");
    assert_eq!(
        home.ok(&["enliven", &uri, "--as", "echo"]),
        r#"{"$ref":"echo"}"#
    );
    assert_eq!(home.ok(&["send", "echo", "echo", "5"]), "5");
    assert_eq!(
        home.ok(&["send", "echo", "echo", r#"{"a": [1, "two"]}"#]),
        r#"{"a":[1,"two"]}"#
    );
    let peers = home.ok(&["peers"]);
    assert!(peers.contains("outbound endo peer 127.0.0.1:"), "{peers}");
    assert!(
        home.fails(&["enliven", &uri, "--as", "echo"])
            .contains("already bound")
    );
    // The peer goes away: its objects are unreachable, said in one line.
    let _ = server.kill();
    let _ = server.wait();
    vat_tests::wait_until("the Endo peer's end was not noticed", 20, || {
        home.ok(&["peers"]).contains("disconnected")
    });
    let err = home.fails(&["send", "echo", "echo", "6"]);
    assert!(
        err.contains("disconnected") || err.contains("unreachable"),
        "{err}"
    );
    home.check();
}
