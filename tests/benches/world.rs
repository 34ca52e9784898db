//! The shared world (`examples/world`) under a crowd: PLAYERS players over
//! the HTTP face's WebSocket (each its own @endo/captp session), all in the
//! lobby. ROUNDS `say`s, each timed from sending it until every other player
//! has heard it (p50 and p99), then every player runs `look` five times at
//! once (commands per second).
//!
//! Run: `scripts/build-guests && cargo build --release -p vat-cli -p
//! vat-supervisor && cargo bench -p vat-tests --bench world` (`PLAYERS=100
//! ROUNDS=50` are the defaults). Under `cargo test` it does a small run.

use vat_tests::VatHome;

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let (players, rounds) = if measuring {
        (env_count("PLAYERS", 100), env_count("ROUNDS", 50))
    } else {
        (5, 5)
    };
    let home = VatHome::new();
    home.spawn("world", "world");
    let (_daemon, _, host) = home.start_with_face();
    home.ok(&["send", "world", "lobby", "--as", "lobby"]);
    let uri = home.ok(&["share", "lobby"]);
    let swiss = uri.rsplit('/').next().expect("a swiss number");
    let ws = format!("ws://{host}/captp");
    let (players, rounds) = (players.to_string(), rounds.to_string());
    let args = [&ws, swiss, "bench", &players, &rounds];
    let out = vat_tests::node_script("--experimental-websocket", &["world.mjs"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "world bench client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let figure = |key: &str| json[key].as_f64().unwrap();
    println!("{players} players in one room, {rounds} says:");
    println!(
        "say, sent to heard by all: p50 {:.1} ms, p99 {:.1} ms",
        figure("say_p50_ms"),
        figure("say_p99_ms")
    );
    println!(
        "commands (`look` from every player at once): {:.0} commands/s",
        figure("commands_per_s")
    );
}
