//! `vat start`: a long-lived kernel for a home, serving the other commands
//! over its socket, with one worker process per running vat.

use vat_tests::{VatHome, workers_of};

/// Each running vat's worker process, by `vat list`, is one of the daemon's
/// children; besides them the daemon keeps one spare process started ahead
/// of need (`ps` labels a process with the vat it was started for, or
/// `spare`: a spare taken by a vat keeps its label).
fn expect_workers(home: &VatHome, daemon_pid: u32, awake: usize) {
    let listing = home.ok(&["list"]);
    assert!(
        listing.contains(&format!("{awake} vat(s) awake, 1 spare worker process(es)")),
        "{listing}"
    );
    let workers = workers_of(daemon_pid);
    assert_eq!(workers.len(), awake + 1, "{workers:?}");
    let hosting = listing
        .lines()
        .filter(|line| line.contains("(pid "))
        .count();
    assert_eq!(hosting, awake, "{listing}");
    for line in listing.lines().filter(|line| line.contains("(pid ")) {
        let pid: u32 = line
            .split("(pid ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.parse().ok())
            .expect("a pid");
        assert!(
            workers.iter().any(|(p, _)| *p == pid),
            "{line}: {workers:?}"
        );
    }
}

#[test]
fn the_daemon_keeps_one_worker_process_per_running_vat() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    let daemon = home.start_daemon();
    // A vat whose heap held nothing beyond its store sleeps through a
    // restart: the daemon starts no worker for it until it is used.
    assert!(home.ok(&["list"]).contains("v1 counter root ko1 running"));
    assert!(workers_of(daemon.pid()).is_empty());
    assert_eq!(home.ok(&["send", "counter", "get"]), "0");
    expect_workers(&home, daemon.pid(), 1);
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    expect_workers(&home, daemon.pid(), 3);
    let before = workers_of(daemon.pid());
    // Commands run in the daemon's kernel, with the same output as without it.
    assert_eq!(home.ok(&["send", "counter", "increment"]), "1");
    assert_eq!(home.ok(&["send", "a", "run", "200", "b"]), "200");
    assert_eq!(
        home.fails(&["send", "counter", "frob"]),
        r#"error: TypeError: Counter has no method "frob" (it has: increment, get)"#
    );
    assert!(home.ok(&["init"]).contains("already exists"));
    // The same workers served all of it.
    assert_eq!(workers_of(daemon.pid()), before);
    home.check();
}

#[test]
fn stop_ends_the_daemon_and_its_workers_and_state_carries_on() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    let mut daemon = home.start_daemon();
    let pid = daemon.pid();
    assert_eq!(home.ok(&["send", "counter", "increment"]), "1");
    assert!(home.ok(&["stop"]).contains("stopped"));
    assert!(daemon.child.wait().unwrap().success());
    assert!(workers_of(pid).is_empty());
    assert!(!home.path().join("vat.sock").exists());
    // Without a daemon, commands run on the store directly.
    assert_eq!(home.ok(&["send", "counter", "increment"]), "2");
    let err = home.fails(&["stop"]);
    assert!(err.contains("no daemon is running"), "{err}");
}

#[test]
fn a_killed_daemon_loses_nothing_committed() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    let mut daemon = home.start_daemon();
    for expected in ["1", "2", "3"] {
        assert_eq!(home.ok(&["send", "counter", "increment"]), expected);
    }
    let pid = daemon.pid();
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    // Its workers notice their kernel is gone and exit.
    vat_tests::wait_until("workers outlived their daemon", 30, || {
        workers_of(pid).is_empty()
    });
    // The stale socket is ignored; a new daemon takes over the same state.
    assert_eq!(home.ok(&["send", "counter", "get"]), "3");
    let _daemon = home.start_daemon();
    assert_eq!(home.ok(&["send", "counter", "increment"]), "4");
    assert_eq!(home.integrity(), "ok");
    home.check();
}

#[test]
fn a_client_that_connects_and_says_nothing_holds_up_no_one() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    let _daemon = home.start_daemon();
    let _silent = std::os::unix::net::UnixStream::connect(home.path().join("vat.sock")).unwrap();
    assert_eq!(home.ok(&["send", "counter", "increment"]), "1");
    assert_eq!(home.ok(&["send", "counter", "get"]), "1");
}

/// A long run under an idempotency key, awaiting in the heap only (a run as
/// a flow outlives the daemon: see `inflight.rs`).
const LONG_RUN: [&str; 7] = [
    "send",
    "a",
    "runHeap",
    "100000",
    "b",
    "--idempotency-key",
    "long-run",
];

/// A daemon killed while it holds a request: the client says so in one
/// line, and that the request may or may not have been applied; a retry
/// under the same idempotency key, served without the daemon, is applied
/// at most once more than nothing: exactly once in all.
#[test]
fn a_daemon_killed_mid_request_is_reported_and_a_keyed_retry_applies_once() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    home.spawn("counter", "counter");
    let daemon = home.start_daemon();
    let child = home
        .command(&LONG_RUN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    vat_tests::wait_until("the run did not start", 60, || {
        home.get("runQueue.head")
            .is_some_and(|head| head.parse::<u64>().unwrap() > 100)
    });
    vat_tests::kill_hard(daemon.pid());
    // Reaped, so that its socket no longer accepts: the next commands run
    // without it.
    drop(daemon);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "the daemon stopped before it answered: the request may or may not have been applied"
        ),
        "{err}"
    );
    // Without the daemon, a keyed increment and its retry count once.
    let args = ["send", "counter", "increment", "--idempotency-key", "k1"];
    assert_eq!(home.ok(&args), "1");
    assert_eq!(home.ok(&args), "1");
    // The interrupted run was kept under its key: the retry finds it (its
    // awaits died with the daemon's worker, so it says so) and sends nothing new.
    let retry = home.run(&LONG_RUN);
    let said = String::from_utf8(retry.stderr).unwrap();
    assert!(said.contains("vat v1 restarted"), "{said}");
    assert_eq!(home.ok(&["send", "counter", "get"]), "1");
    home.check();
}
