//! Work in flight across restarts: durable watchers, durable promises, and
//! the kernel's rule that only promises a vat's heap decided are rejected
//! when it restarts (`vatRestarted`). Every `vat` command without a daemon is
//! a fresh kernel whose vats start again, so each step below is a restart.

use vat_tests::VatHome;

/// Two waiter vats, `a` and `b`.
fn waiters() -> VatHome {
    let home = VatHome::new();
    home.spawn("a", "waiter");
    home.spawn("b", "waiter");
    home
}

fn answers(home: &VatHome) -> String {
    home.ok(&["send", "a", "answers"])
}

/// A task awaiting sends to the vat's own object wakes when they are
/// answered, though the kernel tells a promise's decider nothing.
#[test]
fn a_vat_awaits_the_answers_of_messages_to_its_own_objects() {
    let home = waiters();
    assert_eq!(home.ok(&["send", "a", "awaitMany", "a", "3"]), "3");
    home.check();
}

#[test]
fn a_watcher_gets_an_answer_that_comes_after_restarts() {
    let home = waiters();
    assert_eq!(
        home.ok(&["send", "a", "ask", "b", "later", "[]"]),
        r#"{"$undefined":true}"#
    );
    // b answered a with a durable promise and keeps its resolver; a's
    // watcher waits. Neither restart (each command's) rejects anything.
    assert_eq!(home.ok(&["send", "b", "pending"]), "1");
    assert_eq!(answers(&home), "[]");
    assert_eq!(home.ok(&["send", "b", "release", "42"]), "1");
    assert_eq!(answers(&home), r#"["later: fulfilled 42"]"#);
    // The watcher ran once: releasing again settles nothing more.
    assert_eq!(home.ok(&["send", "b", "release", "43"]), "0");
    assert_eq!(answers(&home), r#"["later: fulfilled 42"]"#);
    home.check();
}

#[test]
fn a_watcher_survives_the_daemon_killed_between_the_send_and_the_answer() {
    let home = waiters();
    let daemon = home.start_daemon();
    home.ok(&["send", "a", "ask", "b", "later", "[]"]);
    assert_eq!(home.ok(&["send", "b", "pending"]), "1");
    vat_tests::kill_hard(daemon.pid());
    drop(daemon);
    let _daemon = home.start_daemon();
    assert_eq!(home.ok(&["send", "b", "release", "7"]), "1");
    assert_eq!(answers(&home), r#"["later: fulfilled 7"]"#);
    home.check();
}

#[test]
fn an_upgraded_vat_keeps_its_watchers_and_its_resolvers() {
    let home = waiters();
    home.ok(&["send", "a", "ask", "b", "later", "[]"]);
    let wasm = vat_tests::guest("waiter");
    let wasm = wasm.to_str().unwrap();
    home.ok(&["upgrade", "a", wasm]);
    home.ok(&["upgrade", "b", wasm]);
    assert_eq!(home.ok(&["send", "b", "release", "5"]), "1");
    assert_eq!(answers(&home), r#"["later: fulfilled 5"]"#);
    home.check();
}

#[test]
fn a_message_pipelined_on_a_durable_promise_waits_out_restarts_and_reaches_what_it_became() {
    let home = waiters();
    home.ok(&["send", "b", "object", "--as", "thing"]);
    home.ok(&["send", "a", "askThen", "b", "later", "label"]);
    assert_eq!(home.ok(&["send", "b", "pending"]), "1");
    // b restarted (each command): the message waits in the kernel, not in b's heap.
    assert_eq!(answers(&home), "[]");
    assert_eq!(home.ok(&["send", "b", "release", "thing"]), "1");
    // The message goes on to thing, then its answer to a's watcher: each
    // command runs what was queued before it.
    let said = (0..4).map(|_| answers(&home)).find(|said| said != "[]");
    assert_eq!(said.as_deref(), Some(r#"["label: fulfilled \"thing\""]"#));
    home.check();
}

#[test]
fn a_vats_own_heap_promise_rejected_by_its_restart_reaches_its_own_watcher() {
    let home = waiters();
    // a asks itself: the answer is a's own heap promise, watched by a.
    home.ok(&["send", "a", "ask", "a", "heapLater", "[]"]);
    assert_eq!(home.ok(&["send", "b", "pending"]), "0");
    let said = (0..4).map(|_| answers(&home)).find(|said| said != "[]");
    let said = said.unwrap_or_default();
    assert!(
        said.contains("heapLater: rejected vatRestarted: vat v1 restarted"),
        "{said}"
    );
    home.check();
}

#[test]
fn a_resolver_passed_to_another_vat_settles_the_promise_after_restarts() {
    let home = waiters();
    // a's durable promise, its resolver wrapped in a durable object that b keeps.
    home.ok(&["send", "a", "makeSettler", "--as", "settler"]);
    home.ok(&["send", "b", "keep", "settler"]);
    assert_eq!(answers(&home), "[]");
    home.ok(&["send", "b", "settleKept", "7"]);
    let said = (0..4).map(|_| answers(&home)).find(|said| said != "[]");
    assert_eq!(said.as_deref(), Some(r#"["settler: fulfilled 7"]"#));
    // Once only: the resolver is used up.
    home.ok(&["send", "b", "settleKept", "8"]);
    assert_eq!(answers(&home), r#"["settler: fulfilled 7"]"#);
    home.check();
}

#[test]
fn a_promise_only_the_heap_knew_is_rejected_as_vat_restarted_and_watchers_hear_it() {
    let home = waiters();
    home.ok(&["send", "a", "ask", "b", "heapLater", "[]"]);
    // This command delivers heapLater to b (a waits in b's heap) ...
    assert_eq!(home.ok(&["send", "b", "pending"]), "0");
    // ... and b's next start, this one's, rejects what its old heap decided.
    assert_eq!(home.ok(&["send", "b", "pending"]), "0");
    let said = answers(&home);
    assert!(
        said.contains(
            "heapLater: rejected vatRestarted: vat v2 restarted: the promises its incarnation"
        ),
        "{said}"
    );
    home.check();
}

/// The time a watcher line says a timer fired at (`after: fulfilled 1764...`).
fn fired_at(line: &str) -> u64 {
    line.rsplit(' ')
        .next()
        .and_then(|n| n.trim_end_matches(['"', ']']).parse().ok())
        .unwrap_or_else(|| panic!("a fired timer's line: {line}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_timer_due_while_the_kernel_was_down_fires_once_when_it_starts() {
    let home = waiters();
    let daemon = home.start_daemon();
    let asked_at = now_ms();
    // `timer` names the timer device, made on first use.
    home.ok(&["send", "a", "ask", "timer", "after", "[1000]"]);
    vat_tests::kill_hard(daemon.pid());
    drop(daemon);
    std::thread::sleep(std::time::Duration::from_millis(2000));
    // This command's kernel fires what fell due while none ran.
    let said = answers(&home);
    let lines: Vec<&str> = said.split("\",\"").collect();
    assert_eq!(lines.len(), 1, "{said}");
    assert!(said.contains("after: fulfilled"), "{said}");
    assert!(fired_at(&said) >= asked_at + 1000, "{said}");
    assert_eq!(answers(&home), said, "it fired once");
    home.check();
}

#[test]
fn the_daemon_fires_a_timer_at_its_time_and_answers_now() {
    let home = waiters();
    let _daemon = home.start_daemon();
    let asked_at = now_ms();
    home.ok(&["send", "a", "ask", "timer", "now", "[]"]);
    home.ok(&["send", "a", "ask", "timer", "after", "[300]"]);
    vat_tests::wait_until("the timer did not fire", 20, || {
        answers(&home).contains("after: fulfilled")
    });
    let said = answers(&home);
    assert!(said.starts_with(r#"["now: fulfilled "#), "{said}");
    let after = said.split("\",\"").nth(1).unwrap();
    assert!(fired_at(after) >= asked_at + 300, "{said}");
    // A bad argument is the caller's error, not the device's.
    home.ok(&["send", "a", "ask", "timer", "after", r#"["soon"]"#]);
    vat_tests::wait_until("the bad timer was not refused", 20, || {
        answers(&home).contains("after: rejected")
    });
    home.check();
}

/// `vat send --idempotency-key run-k a run 3000 b`.
const KEYED_RUN: [&str; 7] = [
    "send",
    "a",
    "run",
    "3000",
    "b",
    "--idempotency-key",
    "run-k",
];

#[test]
fn a_flow_outlives_a_daemon_killed_again_and_again_and_its_keyed_retry_waits_for_it() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    let pings =
        |home: &VatHome| -> u64 { home.get("v2.vs.pings").map_or(0, |n| n.parse().unwrap()) };
    let mut daemon = home.start_daemon();
    let quiet = |home: &VatHome| {
        home.command(&KEYED_RUN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut client = quiet(&home);
    for kill in 1..=3u64 {
        let seen = pings(&home);
        vat_tests::wait_until("the run made no progress", 120, || {
            pings(&home) > seen + 200
        });
        vat_tests::kill_hard(daemon.pid());
        let _ = client.wait();
        drop(daemon);
        daemon = home.start_daemon();
        // The retry finds the run under its key and waits for it.
        client = quiet(&home);
        assert!(kill <= 3);
    }
    let _ = client.wait();
    let out = home.ok(&KEYED_RUN);
    assert_eq!(out, "3000");
    drop(daemon);
    assert_eq!(home.ok(&["send", "b", "pings"]), "3000");
    home.check();
}
