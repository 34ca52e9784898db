//! The shared world (`examples/world`), played as its players play it:
//! each player a WebSocket to the daemon's HTTP face, on @endo/captp
//! (`tests/node/world.mjs`). Players build, program verbs and use each
//! other's; hostile verbs fail alone; a SIGKILLed kernel comes back with
//! the world as it was; a player walks to a room on another kernel and back.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vat_tests::{Daemon, VatHome};

/// How long a test waits for one answer or one line heard.
const WAIT: Duration = Duration::from_secs(30);

/// Players driven through `world.mjs`: requests in, events out.
struct Players {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<Value>,
    heard: HashMap<String, Vec<String>>,
    answers: HashMap<u64, Result<String, String>>,
    next_id: u64,
}

impl Players {
    fn new(ws: &str, swiss: &str) -> Players {
        let mut child =
            vat_tests::node_script("--experimental-websocket", &["world.mjs", ws, swiss])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("run node");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (sender, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                if sender.send(event).is_err() {
                    return;
                }
            }
        });
        Players {
            child,
            stdin,
            events,
            heard: HashMap::new(),
            answers: HashMap::new(),
            next_id: 0,
        }
    }

    fn request(&mut self, request: Value) {
        writeln!(self.stdin, "{request}").expect("write to world.mjs");
    }

    /// Takes one event; false once `deadline` passed.
    fn take(&mut self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("world.mjs ended"),
        }
    }

    /// Files an event; returns it if it is neither heard nor an answer.
    fn file(&mut self, event: Value) -> Option<Value> {
        let player = event["player"].as_str().unwrap_or_default().to_owned();
        let text = event["text"].as_str().unwrap_or_default().to_owned();
        match (event["op"].as_str(), event["id"].as_u64()) {
            (Some("heard"), _) => self.heard.entry(player).or_default().push(text),
            (Some("reply"), Some(id)) => drop(self.answers.insert(id, Ok(text))),
            (Some("error"), Some(id)) => drop(self.answers.insert(id, Err(text))),
            _ => return Some(event),
        }
        None
    }

    fn login(&mut self, player: &str, secret: &str) -> Result<(), String> {
        self.request(json!({"op": "login", "player": player, "secret": secret}));
        let deadline = Instant::now() + WAIT;
        while let Some(event) = self.take(deadline) {
            if let Some(event) = self.file(event) {
                assert_eq!(event["player"], player, "{event}");
                return match event["op"].as_str() {
                    Some("login") => Ok(()),
                    _ => Err(event["text"].as_str().unwrap_or_default().to_owned()),
                };
            }
        }
        panic!("{player} got no answer to login");
    }

    /// One command line; its answer, or the error it failed with.
    fn command(&mut self, player: &str, line: &str) -> Result<String, String> {
        self.next_id += 1;
        let id = self.next_id;
        self.request(json!({"op": "command", "player": player, "line": line, "id": id}));
        let deadline = Instant::now() + WAIT;
        while !self.answers.contains_key(&id) {
            let event = self
                .take(deadline)
                .unwrap_or_else(|| panic!("{player} got no answer to {line:?}"));
            self.file(event);
        }
        self.answers.remove(&id).expect("answered")
    }

    /// A command that must succeed; its answer.
    fn does(&mut self, player: &str, line: &str) -> String {
        self.command(player, line)
            .unwrap_or_else(|e| panic!("{player}: {line:?} failed: {e}"))
    }

    /// `@verb TARGET` then `@program TARGET CODE`, both to succeed.
    fn programs(&mut self, player: &str, target: &str, code: &str) {
        self.does(player, &format!("@verb {target}"));
        self.does(player, &format!("@program {target} {code}"));
    }

    /// Waits until `player` heard a line containing `needle`; that line.
    fn hears(&mut self, player: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let heard = self
                .heard
                .get(player)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(line) = heard.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let heard = heard.to_vec();
            let Some(event) = self.take(deadline) else {
                panic!("{player} never heard {needle:?}; heard {heard:?}");
            };
            self.file(event);
        }
    }
}

impl Drop for Players {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kernel running the world, with its HTTP face: the daemon, the
/// face's WebSocket URL and the lobby's swiss number.
fn world_kernel(home: &VatHome) -> (Daemon, String, String) {
    home.spawn("world", "world");
    let (daemon, _, host) = home.start_with_face();
    home.ok(&["send", "world", "lobby", "--as", "lobby"]);
    let uri = home.ok(&["share", "lobby"]);
    let swiss = uri.rsplit('/').next().expect("a swiss number").to_owned();
    (daemon, format!("ws://{host}/captp"), swiss)
}

fn restart(home: &VatHome, daemon: Daemon) -> (Daemon, String) {
    vat_tests::kill_hard(daemon.pid());
    drop(daemon);
    let (daemon, _, host) = home.start_with_face();
    (daemon, format!("ws://{host}/captp"))
}

#[test]
fn players_build_program_and_use_verbs_and_the_world_outlives_a_killed_kernel() {
    let home = VatHome::new();
    let (daemon, ws, swiss) = world_kernel(&home);
    let mut players = log_in_everyone(&ws, &swiss);
    assert!(players.does("bob", "look").contains("The Lobby"));
    alice_builds_a_fountain_with_a_verb(&mut players);
    // Bob may not change what is Alice's.
    for name in ["bob", "carol"] {
        players.does(name, "go north");
    }
    let refused = players
        .command("bob", "@describe fountain as mine")
        .unwrap_err();
    assert!(refused.contains("not yours to change"), "{refused}");
    others_use_her_verb(&mut players);
    hostile_verbs_fail_alone(&mut players);
    // The kernel is killed; everyone reconnects to the world as it was.
    drop(players);
    let (_daemon, ws) = restart(&home, daemon);
    let mut players = log_in_everyone(&ws, &swiss);
    the_world_is_as_it_was(&mut players);
    home.check();
}

/// Alice, Bob and Carol, each on a WebSocket of their own.
fn log_in_everyone(ws: &str, swiss: &str) -> Players {
    let mut players = Players::new(ws, swiss);
    for name in ["alice", "bob", "carol"] {
        players.login(name, &format!("{name}-secret")).unwrap();
    }
    players
}

/// Alice digs a garden north of the lobby, and leaves a fountain there
/// with a verb on it.
fn alice_builds_a_fountain_with_a_verb(players: &mut Players) {
    let dug = players.does("alice", "@dig north|south The Garden");
    assert!(dug.contains("You dig north to The Garden"), "{dug}");
    players.does("alice", "@create fountain");
    players.does(
        "alice",
        "@describe fountain as A stone fountain, murmuring.",
    );
    players.does("alice", "@property fountain.wishes 0");
    let program = "let n = this.get(\"wishes\") + 1; this.set(\"wishes\", n); \
                   room.tell(player.name + \" makes a wish.\"); \
                   \"You make wish number \" + n + \".\"";
    players.programs("alice", "fountain:wish", program);
    players.does("alice", "north");
    players.does("alice", "drop fountain");
}

/// Bob and Carol use Alice's verb; everyone in the room hears of it.
fn others_use_her_verb(players: &mut Players) {
    // The others use her verb, and everyone in the room hears of it.
    assert_eq!(
        players.does("bob", "wish fountain"),
        "You make wish number 1."
    );
    players.hears("alice", "bob makes a wish.");
    players.hears("carol", "bob makes a wish.");
    assert_eq!(
        players.does("carol", "wish fountain"),
        "You make wish number 2."
    );
    players.does("carol", "say hello, garden");
    players.hears("alice", "carol says, \"hello, garden\"");
    players.hears("bob", "carol says, \"hello, garden\"");
}

/// After the restart: secrets still checked, and everything in place.
fn the_world_is_as_it_was(players: &mut Players) {
    let wrong = players
        .login("mallory", "x")
        .and(players.login("alice", "guess"));
    assert!(wrong.unwrap_err().contains("wrong secret"));
    let look = players.does("bob", "look");
    assert!(
        look.contains("The Garden") && look.contains("fountain"),
        "{look}"
    );
    assert!(look.contains("alice") && look.contains("carol"), "{look}");
    assert_eq!(
        players.does("bob", "wish fountain"),
        "You make wish number 4."
    );
    assert!(
        players
            .does("carol", "look fountain")
            .contains("A stone fountain")
    );
    players.does("alice", "south");
    players.hears("bob", "alice goes south.");
}

/// An endless loop, a memory bomb and a runaway recursion: each fails its
/// command with the limit named, and changes nothing; the world goes on.
fn hostile_verbs_fail_alone(players: &mut Players) {
    players.does("bob", "@create trap");
    players.programs("bob", "trap:spin", "this.set(\"spun\", true); loop { }");
    players.programs("bob", "trap:grow", "let s = \"xx\"; loop { s += s; }");
    let dive = "fn down(n) { down(n + 1) } fn verb(player, room, args, argstr) { down(0) }";
    players.programs("bob", "trap:dive", dive);
    let cases = [
        ("spin trap", "verb_operations_max"),
        ("grow trap", "verb_string_bytes_max"),
        ("dive trap", "verb_call_levels_max"),
    ];
    for (line, limit) in cases {
        let failed = players.command("bob", line).unwrap_err();
        assert!(failed.contains(limit), "{line}: {failed}");
    }
    let examined = players.does("bob", "@examine trap");
    assert!(
        !examined.contains("spun"),
        "a failed verb changed nothing: {examined}"
    );
    assert_eq!(
        players.does("carol", "wish fountain"),
        "You make wish number 3."
    );
}

/// Two players in headless Chromium on the face's `/world` page
/// (`tests/node/world-browser.mjs`): one says, the other sees it, as text;
/// the kernel is SIGKILLed and comes back on the same port, one page
/// reconnects by itself and the other is reloaded, and they hear each
/// other again.
#[test]
fn two_browsers_in_one_room_hear_each_other_across_a_kernel_restart() {
    let home = VatHome::new();
    home.spawn("world", "world");
    let http = format!("127.0.0.1:{}", vat_tests::free_port());
    let (daemon, _, _) = home.start_with_face_at(&http);
    home.ok(&["send", "world", "lobby", "--as", "lobby"]);
    let url = home.ok(&["share", "lobby", "--web"]);
    assert!(url.starts_with(&format!("http://{http}/world#")), "{url}");
    let shots = vat_tests::artifacts_dir();
    let mut browser = vat_tests::node_script("world-browser.mjs", &[&url, shots.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut stdin = browser.stdin.take().expect("piped");
    let mut stages = std::io::BufReader::new(browser.stdout.take().expect("piped")).lines();
    let mut stage = |name: &str| -> Value {
        let line = stages.next().and_then(Result::ok).unwrap_or_default();
        let stage: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        assert_eq!(stage["stage"], name, "the browser script stopped: {line}");
        stage
    };
    let heard = stage("heard");
    assert_eq!(heard["heard"], r#"ann says, "hello <b>ben</b>""#);
    assert_eq!(heard["markup"], 0, "what a player says is shown as text");
    vat_tests::kill_hard(daemon.pid());
    drop(daemon);
    let _daemon = home.start_with_face_at(&http);
    writeln!(stdin, "restarted").expect("write to the browser script");
    let again = stage("reconnected");
    assert_eq!(again["heard"], r#"ben says, "still here""#);
    assert_eq!(again["status"], "connected as ann");
    drop(stdin);
    let output = browser.wait_with_output().expect("the browser script ends");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    home.check();
}

/// Makes an exit `exit` from `from`'s lobby to `to`'s lobby, through a
/// portal `to` shares as a sturdy ref and `from` enlivens.
fn join_lobbies(from: &VatHome, to: &VatHome, exit: &str) {
    to.ok(&["send", "world", "portal", "#4", "--as", "portal"]);
    let uri = to.ok(&["share", "portal"]);
    let far = format!("{exit}-portal");
    from.ok(&["enliven", &uri, "--as", &far]);
    let linked = from.ok(&["send", "world", "link", "#4", exit, &far]);
    assert!(linked.contains("another world"), "{linked}");
}

/// Ann, of the world on kernel A, walks east to the lobby of the world on
/// kernel B, talks with Bea there, and walks back west.
#[test]
fn a_player_walks_to_a_room_on_another_kernel_and_back() {
    let (home_a, home_b) = (VatHome::new(), VatHome::new());
    let (_a, ws_a, swiss_a) = world_kernel(&home_a);
    let (_b, ws_b, swiss_b) = world_kernel(&home_b);
    join_lobbies(&home_a, &home_b, "east");
    join_lobbies(&home_b, &home_a, "west");
    let (mut here, mut there) = (Players::new(&ws_a, &swiss_a), Players::new(&ws_b, &swiss_b));
    here.login("ann", "ann-secret").unwrap();
    there.login("bea", "bea-secret").unwrap();
    home_b.ok(&["send", "world", "makeWizard", "bea"]);
    there.does("bea", "@describe here as The far shore of the sea.");
    let arrived = here.does("ann", "east");
    assert!(
        arrived.contains("You go east.")
            && arrived.contains("The far shore")
            && arrived.contains("bea"),
        "{arrived}"
    );
    there.hears("bea", "ann arrives from afar.");
    here.does("ann", "say hello, far world");
    there.hears("bea", r#"ann says, "hello, far world""#);
    there.does("bea", "say welcome, ann");
    here.hears("ann", r#"bea says, "welcome, ann""#);
    assert!(there.does("bea", "look").contains("ann"));
    // Back west: ann is at home again, and gone from the far shore.
    assert_eq!(here.does("ann", "west"), "You go west.");
    there.hears("bea", "ann goes west.");
    here.hears("ann", "A bare hall where every journey starts.");
    assert!(!there.does("bea", "look").contains("ann"));
    let home = here.does("ann", "look");
    assert!(
        home.contains("The Lobby") && !home.contains("far shore"),
        "{home}"
    );
    there.does("bea", "say ann is gone");
    here.does("ann", "say back home");
    assert!(!here.heard["ann"].iter().any(|l| l.contains("ann is gone")));
    home_a.check();
    home_b.check();
}
