//! Sleepy vats: a daemon keeps at most `--vats-resident-max` vats awake
//! (a worker each), puts the least recently used to sleep when a message
//! wakes another, and loses nothing when it is killed. Only vats whose heap
//! holds nothing beyond their store sleep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vat_tests::{VatHome, guest, workers_of};

const VATS: usize = 2000;
const MESSAGES: usize = 3000;
const RESIDENT_MAX: usize = 8;
const CLIENTS: usize = 16;

/// Which vat each message goes to: a fixed pseudo-random order (xorshift),
/// so a failure can be replayed.
fn plan() -> Vec<usize> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..MESSAGES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % VATS as u64) as usize + 1
        })
        .collect()
}

/// What the clients have had acknowledged, by message number.
struct Run {
    plan: Vec<usize>,
    next: AtomicUsize,
    acknowledged: Mutex<Vec<bool>>,
}

/// Sends the plan's messages from several clients at once (each keyed, so
/// a retry after a kill is applied once), until all are sent or `stop_at`
/// are acknowledged, or the daemon goes away.
fn send_increments(home: &VatHome, run: &Run, stop_at: usize) {
    std::thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                loop {
                    let done = run
                        .acknowledged
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|a| **a)
                        .count();
                    if done >= stop_at {
                        return;
                    }
                    let n = run.next.fetch_add(1, Ordering::SeqCst);
                    if n >= run.plan.len() {
                        return;
                    }
                    let target = format!("c-{}", run.plan[n]);
                    let key = format!("m{n}");
                    match home.send_to_daemon(&target, "increment", Some(&key)) {
                        Some(Ok(_)) => run.acknowledged.lock().unwrap()[n] = true,
                        Some(Err(e)) => panic!("increment {n} of {target} failed: {e}"),
                        None => return,
                    }
                }
            });
        }
    });
}

/// Counts the daemon's worker processes every 20 ms while `running`; the most seen.
fn watch_workers(pid: u32, running: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut most = 0;
        while running.load(Ordering::SeqCst) {
            most = most.max(workers_of(pid).len());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        most
    })
}

/// Every vat's count is the number of increments the plan sent it.
fn expect_counts(home: &VatHome, plan: &[usize]) {
    let mut expected: HashMap<usize, u64> = HashMap::new();
    for vat in plan {
        *expected.entry(*vat).or_default() += 1;
    }
    for vat in 1..=VATS {
        let count = home
            .send_to_daemon(&format!("c-{vat}"), "get", None)
            .expect("the daemon answers")
            .expect("get succeeds");
        let want = expected.get(&vat).copied().unwrap_or(0);
        assert_eq!(count, want.to_string(), "c-{vat}");
    }
}

#[test]
fn two_thousand_vats_on_eight_workers_count_exactly_through_a_kill() {
    let home = VatHome::new();
    let module = guest("counter");
    let spawned = home.ok(&[
        "spawn",
        "c",
        module.to_str().unwrap(),
        "--count",
        &VATS.to_string(),
    ]);
    assert_eq!(
        spawned,
        format!("spawned {VATS} vats c-1 to c-{VATS} (roots ko1 to ko{VATS})")
    );
    let max = RESIDENT_MAX.to_string();
    let start = ["start", "--vats-resident-max", max.as_str()];
    let run = Run {
        plan: plan(),
        next: AtomicUsize::new(0),
        acknowledged: Mutex::new(vec![false; MESSAGES]),
    };
    let mut most_workers = 0;
    // First daemon: killed with SIGKILL a third of the way through.
    {
        let mut daemon = home.start_daemon_with(&start);
        let running = Arc::new(AtomicBool::new(true));
        let watcher = watch_workers(daemon.pid(), running.clone());
        send_increments(&home, &run, MESSAGES / 3);
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        running.store(false, Ordering::SeqCst);
        most_workers = most_workers.max(watcher.join().unwrap());
    }
    // Second daemon: every message not acknowledged is sent (again, with
    // its key), then the rest.
    let daemon = home.start_daemon_with(&start);
    let running = Arc::new(AtomicBool::new(true));
    let watcher = watch_workers(daemon.pid(), running.clone());
    run.next.store(0, Ordering::SeqCst);
    let unacknowledged: Vec<usize> = {
        let acknowledged = run.acknowledged.lock().unwrap();
        (0..MESSAGES).filter(|n| !acknowledged[*n]).collect()
    };
    for n in unacknowledged {
        let target = format!("c-{}", run.plan[n]);
        let key = format!("m{n}");
        let outcome = home.send_to_daemon(&target, "increment", Some(&key));
        assert!(matches!(outcome, Some(Ok(_))), "{target}: {outcome:?}");
    }
    expect_counts(&home, &run.plan);
    running.store(false, Ordering::SeqCst);
    most_workers = most_workers.max(watcher.join().unwrap());
    assert!(
        most_workers <= RESIDENT_MAX,
        "{most_workers} worker processes at once, with --vats-resident-max {RESIDENT_MAX}"
    );
    let resident = home.ok(&["list", "--resident"]);
    let awake = resident.lines().filter(|l| l.contains(", awake")).count();
    assert!(awake <= RESIDENT_MAX, "{resident}");
    home.check();
}

/// Waiter vats `a` and `b` under a daemon that keeps one vat awake.
fn one_resident() -> (VatHome, vat_tests::Daemon) {
    let home = VatHome::new();
    home.spawn("a", "waiter");
    home.spawn("b", "waiter");
    let daemon = home.start_daemon_with(&["start", "--vats-resident-max", "1"]);
    (home, daemon)
}

#[test]
fn a_vat_awaiting_in_memory_stays_awake_until_the_answer_comes() {
    let (home, _daemon) = one_resident();
    // `a` awaits, on its heap, a promise `b` keeps durably.
    let waiting = home
        .command(&["send", "a", "awaitAnswer", "b", "later"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    vat_tests::wait_until("b never got the request", 30, || {
        home.ok(&["send", "b", "pending"]) == "1"
    });
    let listing = home.ok(&["list", "--resident"]);
    assert!(
        listing.contains("v1 a root ko1 running")
            && listing.contains("awake: it holds 1 method(s) awaiting in memory"),
        "{listing}"
    );
    let err = home.fails(&["sleep", "a"]);
    assert!(
        err.contains("vat \"a\" cannot sleep: its heap holds what its store does not (1 method(s) awaiting in memory"),
        "{err}"
    );
    // b slept (it holds nothing in memory) and wakes to settle; then a's
    // await ends, and a may sleep.
    assert_eq!(home.ok(&["send", "b", "release", "\"done\""]), "1");
    let output = waiting.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), "\"done\"");
    let slept = home.ok(&["sleep", "a"]);
    assert!(
        slept.starts_with("a is asleep") || slept.contains("asleep already"),
        "{slept}"
    );
    let listing = home.ok(&["list", "--resident"]);
    assert!(!listing.contains(" a root "), "{listing}");
    home.check();
}

#[test]
fn a_vat_asleep_through_a_restart_answers_its_first_message_after_it() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    let daemon = home.start_daemon();
    assert_eq!(home.ok(&["send", "counter", "increment"]), "1");
    assert_eq!(
        home.ok(&["sleep", "counter"]),
        "counter is asleep: its next message wakes it"
    );
    // Its process stays, idle, for the next vat that wakes, beside the
    // spare the daemon started ahead of need when counter woke.
    let listing = home.ok(&["list"]);
    assert!(listing.contains(", asleep, active "), "{listing}");
    assert!(
        listing.contains("0 vat(s) awake, 2 spare worker process(es)"),
        "{listing}"
    );
    assert_eq!(workers_of(daemon.pid()).len(), 2);
    assert!(home.ok(&["stop"]).contains("stopped"));
    drop(daemon);
    let daemon = home.start_daemon();
    assert!(
        workers_of(daemon.pid()).is_empty(),
        "no vat was woken at start"
    );
    assert_eq!(home.ok(&["send", "counter", "increment"]), "2");
    // Its worker, and a spare started ahead of the next vat to wake.
    assert_eq!(workers_of(daemon.pid()).len(), 2);
    let listing = home.ok(&["list"]);
    assert!(
        listing.contains("1 vat(s) awake, 1 spare worker process(es)"),
        "{listing}"
    );
    home.check();
}

#[test]
fn vat_list_pages_and_filters_by_name_state_and_residency() {
    let home = VatHome::new();
    let module = guest("counter");
    home.ok(&[
        "spawn",
        "u",
        module.to_str().unwrap(),
        "--count",
        "12",
        "--worker",
        "thread",
    ]);
    home.ok(&["terminate", "u-3"]);
    let names = |listing: &str| -> Vec<String> {
        listing
            .lines()
            .filter(|l| l.starts_with('v'))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
            .collect()
    };
    let first = home.ok(&["list", "--prefix", "u-1", "--limit", "2"]);
    assert_eq!(names(&first), ["u-1", "u-10"]);
    assert!(
        first.contains("more after u-10: `vat list --after u-10`"),
        "{first}"
    );
    let next = home.ok(&["list", "--prefix", "u-1", "--after", "u-10"]);
    assert_eq!(names(&next), ["u-11", "u-12"]);
    let terminated = home.ok(&["list", "--state", "terminated"]);
    assert_eq!(names(&terminated), ["u-3"]);
    // Each command is a fresh kernel: nothing is awake between them.
    assert!(names(&home.ok(&["list", "--resident"])).is_empty());
    let err = home.fails(&["spawn", "u", module.to_str().unwrap(), "--count", "2"]);
    assert!(err.contains("u-1 is taken; nothing was spawned"), "{err}");
    let err = home.fails(&["sleep", "u-3"]);
    assert!(err.contains("is not running"), "{err}");
}
