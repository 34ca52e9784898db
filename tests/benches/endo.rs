//! JSON CapTP from Node: an @endo/captp 4.5.1 client's sequential round
//! trip and pipelined throughput against the kernel (a `waiter` vat's
//! `echo`), over TCP and over the HTTP face's WebSocket, beside the same
//! client against an @endo/captp server in Node (Node to Node, the anchor),
//! all in one run on this machine.
//!
//! Run: `scripts/build-guests && cargo build --release -p vat-cli -p
//! vat-supervisor && cargo bench -p vat-tests --bench endo` (`ROUNDS=2000
//! BURST=2000` to change the sizes). Under `cargo test` it does a small run.

use vat_tests::VatHome;

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One client run: (round trip µs, pipelined calls/s).
fn client(args: &[&str], rounds: u64, burst: u64) -> (f64, f64) {
    let (rounds, burst) = (rounds.to_string(), burst.to_string());
    let mut all = vec!["--experimental-websocket", "bench.mjs", "client"];
    all.extend(args);
    all.extend([rounds.as_str(), burst.as_str()]);
    let out = vat_tests::node_script(all[0], &all[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "bench client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        json["roundTripUs"].as_f64().unwrap(),
        json["pipelinedPerS"].as_f64().unwrap(),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let (rounds, burst) = if measuring {
        (env_count("ROUNDS", 2000), env_count("BURST", 2000))
    } else {
        (20, 20)
    };
    let home = VatHome::new();
    home.spawn("waiter", "waiter");
    let (_daemon, _, host) = home.start_with_face();
    let uri = home.ok(&["share", "waiter"]);
    let ws = format!("ws://{host}/captp");
    // The Node to Node anchor: an @endo/captp server in a child process.
    let (mut server, port) = vat_tests::node_echo_server();
    let anchor_uri = format!("captp://did:key:none@127.0.0.1:{port}/any");

    let tcp = client(&[&uri], rounds, burst);
    let websocket = client(&[&uri, &ws], rounds, burst);
    let anchor = client(&[&anchor_uri], rounds, burst);
    let _ = server.kill();
    let _ = server.wait();
    println!("@endo/captp client, {rounds} sequential calls and a burst of {burst}:");
    println!("{:<44} {:>14} {:>18}", "", "round trip", "pipelined");
    for (name, (rtt, rate)) in [
        ("kernel, JSON CapTP over TCP", tcp),
        ("kernel, JSON CapTP over WebSocket", websocket),
        ("Node @endo/captp server over TCP (anchor)", anchor),
    ] {
        println!("{name:<44} {rtt:>11.0} µs {rate:>12.0} calls/s");
    }
    println!(
        "kernel over TCP: round trip {:.1}x the anchor's, pipelined {:.2}x",
        tcp.0 / anchor.0,
        tcp.1 / anchor.1
    );
}
