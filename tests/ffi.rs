//! `system/invoke`, the FFI: commands routed to a foreign function over
//! HTTP (a server on loopback stands for it). A bucket-VM invocation, a
//! job's effect task and a plain `vat send` each reach it after their
//! crank commits, and its answer settles them (and becomes the receipt).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::mpsc;

use serde_json::{Value as Json, json};
use vat_tests::VatHome;

/// A foreign function on loopback: answers each POST with `status` and
/// `{"answer": <the request's args>}`, and passes on each request's body.
struct ForeignFunction {
    url: String,
    requests: mpsc::Receiver<Json>,
}

impl ForeignFunction {
    fn start(status: u16) -> ForeignFunction {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/fn", listener.local_addr().unwrap());
        let (sent, requests) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let body = read_request(&mut stream);
                let answer = json!({"answer": body["args"]}).to_string();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = stream.write_all(reply.as_bytes());
                if sent.send(body).is_err() {
                    return;
                }
            }
        });
        ForeignFunction { url, requests }
    }

    fn next(&self) -> Json {
        self.requests
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a request came")
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Json {
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn routed_commands_reach_the_foreign_function_after_their_crank_commits() {
    let ffi = ForeignFunction::start(200);
    let owner = VatHome::new();
    assert_eq!(
        owner.ok(&["http", "route", "/weather", &ffi.url]),
        format!("/weather -> {}", ffi.url)
    );
    assert_eq!(
        owner.ok(&["http", "routes"]),
        format!("/weather -> {}", ffi.url)
    );
    // A plain send to the device, from the command line.
    let said = owner.ok(&["send", "http", "/weather/today", r#"{"city": "Rome"}"#]);
    assert_eq!(
        ffi.next(),
        json!({"cmd": "/weather/today", "args": [{"city": "Rome"}]})
    );
    assert_eq!(said, r#"{"answer":[{"city":"Rome"}]}"#);
    let err = owner.fails(&["send", "http", "/nothing/here"]);
    assert!(
        err.contains("no HTTP route covers \"/nothing/here\""),
        "{err}"
    );

    bob_invokes_under_the_route(&ffi, &owner);
    owner.check();
}

/// A bucket-VM invocation under the route, by Bob: it reaches the foreign
/// function, and the receipt the owner's kernel signs is its answer.
fn bob_invokes_under_the_route(ffi: &ForeignFunction, owner: &VatHome) {
    let bob = VatHome::new();
    let (owner_did, bob_did) = (owner.ok(&["key"]), bob.ok(&["key"]));
    let grant = bob.path().join("grant.ucan");
    std::fs::write(
        &grant,
        owner.ok(&["ucan", "delegate", &bob_did, "--cmd", "/weather"]),
    )
    .unwrap();
    let car = bob.path().join("ask.car");
    bob.ok(&[
        "ucan",
        "invoke",
        "/weather/week",
        "--subject",
        &owner_did,
        "--args",
        r#"{"city": "Oslo"}"#,
        "--proof",
        path(&grant),
        "--car",
        path(&car),
    ]);
    let cid = owner.ok(&["car", "add", path(&car)]);
    assert!(
        owner
            .ok(&["car", "enqueue", &cid])
            .starts_with("1 ok, 0 failed")
    );
    assert_eq!(
        ffi.next(),
        json!({"cmd": "/weather/week", "args": [{"city": "Oslo"}]})
    );
    let receipts = owner.path().join("receipts.car");
    owner.ok(&["ucan", "receipts", "--out", path(&receipts)]);
    let read = ipvm::read_car(&std::fs::read(&receipts).unwrap()).unwrap();
    let token = ucan::Token::decode(
        &read
            .blocks
            .iter()
            .find(|(c, _)| *c == read.roots[0])
            .unwrap()
            .1,
    )
    .unwrap();
    let out = format!(
        "{:?}",
        ucan::Invocation::from_token(&token).unwrap().args["out"]
    );
    assert!(out.contains("Oslo"), "{out}");
}

#[test]
fn a_job_effect_task_on_the_device_and_a_failing_foreign_function() {
    let (ok, failing) = (ForeignFunction::start(200), ForeignFunction::start(500));
    let home = VatHome::new();
    home.ok(&["http", "route", "/geo", &ok.url]);
    home.ok(&["http", "route", "/broken", &failing.url]);
    let job = json!({"type": "ipvm/job", "version": "0.1.0", "requestor": "", "nonce": "n", "run": {
        "where": {"type": "ipvm/effect", "with": "http", "do": "/geo/locate", "input": [{"place": "Bergen"}]},
        "fail": {"type": "ipvm/effect", "with": "http", "do": "/broken/call", "input": [], "onError": ["note"]},
        "note": {"type": "ipvm/effect", "with": "http", "do": "/geo/note", "input": ["it failed"]},
    }});
    let file: PathBuf = home.path().join("job.json");
    std::fs::write(&file, job.to_string()).unwrap();
    home.ok(&["job", "sign", path(&file)]);
    let out = home.ok(&["job", "run", path(&file)]);
    let outputs: Json = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
    assert_eq!(
        outputs["where"],
        json!({"ok": {"answer": [{"place": "Bergen"}]}})
    );
    let fail = outputs["fail"]["error"].as_str().unwrap();
    assert!(fail.contains("HTTP 500"), "{fail}");
    assert_eq!(outputs["note"], json!({"ok": {"answer": ["it failed"]}}));
    assert_eq!(failing.next()["cmd"], "/broken/call");
    home.check();
}

#[test]
fn under_the_daemon_a_send_to_the_device_is_answered_on_its_turn() {
    let ffi = ForeignFunction::start(200);
    let home = VatHome::new();
    home.ok(&["http", "route", "/ask", &ffi.url]);
    let _daemon = home.start_daemon();
    assert_eq!(
        home.ok(&["send", "http", "/ask/now", "1"]),
        r#"{"answer":[1]}"#
    );
    assert_eq!(ffi.next()["cmd"], "/ask/now");
}
