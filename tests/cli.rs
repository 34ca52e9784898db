//! The `vat` CLI as a user drives it: real binary, real SQLite file, real Wasm guests.

use std::process::Stdio;

use vat_tests::VatHome;

#[test]
fn counter_counts_across_separate_processes() {
    let home = VatHome::new();
    assert_eq!(home.spawn("counter", "counter"), "ko1");
    for expected in ["1", "2", "3"] {
        assert_eq!(home.ok(&["send", "counter", "increment"]), expected);
    }
    assert_eq!(home.ok(&["send", "counter", "get"]), "3");
    // The count lives in the counter's durable record in its vatstore
    // (kind 10, instance 1: kept in baggage and exported), committed to the file.
    assert_eq!(
        home.get("v1.vs.vom.vs.o+d10/1").as_deref(),
        Some(r#"1|x1k1||{"count":3}"#)
    );
    home.check();
}

#[test]
fn a_damaged_module_cache_is_compiled_again_and_the_spawn_succeeds() {
    let home = VatHome::new();
    home.spawn("first", "counter");
    // The cache is the home's to rebuild: each compiled module in it is
    // cut short, as a crash while writing or a full disk would leave it.
    let damage = || {
        let modules = home.path().join("modules");
        let mut damaged = 0;
        for entry in std::fs::read_dir(&modules).expect("the module cache") {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            damaged += 1;
        }
        assert!(damaged > 0, "a spawn filled the module cache");
    };
    let counter = vat_tests::guest("counter");
    let counter = counter.to_str().unwrap();
    damage();
    assert_eq!(
        home.ok(&["spawn", "second", counter, "--worker", "thread"]),
        "ko2"
    );
    damage();
    assert_eq!(home.ok(&["spawn", "third", counter]), "ko3");
    for vat in ["first", "second", "third"] {
        assert_eq!(home.ok(&["send", vat, "increment"]), "1");
    }
    home.check();
}

#[test]
fn pingpong_sends_a_thousand_awaited_pings_to_another_vat() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    assert_eq!(home.ok(&["send", "a", "run", "1000", "b"]), "1000");
    // Nothing is left in flight once the result settled.
    assert_eq!(home.get("runQueue.head"), home.get("runQueue.tail"));
    home.check();
}

#[test]
fn references_are_passed_by_pet_name_and_kref() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    let b = home.spawn("b", "pingpong");
    assert_eq!(home.ok(&["send", "a", "run", "3", &b]), "3");
    assert_eq!(home.ok(&["send", "a", "run", "2", r#"{"$ref":"b"}"#]), "2");
    // Pingpong's ping returns its argument, so a reference comes back by name.
    assert_eq!(home.ok(&["send", "a", "ping", "b"]), r#"{"$ref":"b"}"#);
}

#[test]
fn a_returned_reference_can_be_bound_with_as() {
    let home = VatHome::new();
    home.spawn("f", "faulty");
    assert_eq!(
        home.ok(&["send", "f", "me", "--as", "self"]),
        r#"{"$ref":"self"}"#
    );
    home.ok(&["send", "self", "set", "k", "v"]);
    assert_eq!(home.ok(&["send", "f", "get", "k"]), r#""v""#);
    let listing = home.ok(&["list"]);
    assert!(listing.contains("self -> ko1"), "{listing}");
    // Binding data, or binding a taken name, is refused.
    let err = home.fails(&["send", "f", "get", "k", "--as", "data"]);
    assert!(err.contains("not a reference"), "{err}");
    let err = home.fails(&["send", "f", "me", "--as", "f"]);
    assert!(err.contains("already bound"), "{err}");
}

#[test]
fn init_again_says_so_and_changes_nothing() {
    let home = VatHome::new();
    let key = std::fs::read(home.path().join("kernel.key")).unwrap();
    home.spawn("counter", "counter");
    let before = home.dump();
    let out = home.ok(&["init"]);
    assert!(out.contains("already exists"), "{out}");
    assert_eq!(home.dump(), before);
    assert_eq!(std::fs::read(home.path().join("kernel.key")).unwrap(), key);
}

#[test]
fn list_shows_vats_pet_names_and_krefs() {
    let home = VatHome::new();
    assert!(home.ok(&["list"]).contains("no vats"));
    home.spawn("counter", "counter");
    home.spawn("a", "pingpong");
    let listing = home.ok(&["list"]);
    assert!(listing.contains("v1 counter root ko1 running"), "{listing}");
    assert!(listing.contains("v2 a root ko2 running"), "{listing}");
    assert!(listing.contains("counter -> ko1"), "{listing}");
}

/// Each bad input gets one line of error, a non-zero exit, and leaves the store as it was.
#[test]
fn bad_input_fails_cleanly_and_changes_nothing() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    home.ok(&["send", "counter", "increment"]);
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "this is not wasm").unwrap();
    // The smallest valid Wasm module: it has none of the vat ABI's exports.
    let no_abi = dir.path().join("empty.wasm");
    std::fs::write(&no_abi, b"\0asm\x01\0\0\0").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["spawn", "x", not_wasm.to_str().unwrap()],
            "not a Wasm module",
        ),
        (
            vec!["spawn", "x", no_abi.to_str().unwrap()],
            "lacks the vat ABI export",
        ),
        (vec!["spawn", "x", "/no/such/file.wasm"], "cannot read"),
        (vec!["spawn", "counter", no_abi.to_str().unwrap()], "taken"),
        (
            vec!["spawn", "ko9", not_wasm.to_str().unwrap()],
            "invalid name",
        ),
        (
            vec!["send", "nobody", "increment"],
            "unknown reference \"nobody\"",
        ),
        (
            vec!["send", "ko99", "increment"],
            "unknown reference \"ko99\"",
        ),
        (
            vec!["send", "counter", "increment", r#"{"$ref":"nobody"}"#],
            "unknown reference",
        ),
        (
            vec!["send", "counter", "increment", r#"{"$bogus":1}"#],
            "unknown special form",
        ),
        (
            vec!["send", "counter", "get", "--as", "9lives"],
            "invalid name",
        ),
    ];
    for (args, expected) in cases {
        let before = home.dump();
        let err = home.fails(&args);
        assert!(
            err.contains(expected),
            "vat {args:?}: {err:?} should mention {expected:?}"
        );
        assert_eq!(home.dump(), before, "vat {args:?} changed the store");
    }
}

/// A method the object lacks, or arguments it refuses, reject the result and
/// leave the object's state untouched.
#[test]
fn a_refused_message_rejects_and_leaves_the_vat_state_alone() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    home.ok(&["send", "counter", "increment"]);
    let err = home.fails(&["send", "counter", "frob"]);
    assert_eq!(
        err,
        r#"error: TypeError: Counter has no method "frob" (it has: increment, get)"#
    );
    let err = home.fails(&["send", "counter", "increment", "7"]);
    assert_eq!(
        err,
        "error: TypeError: Counter.increment: expected 0 argument(s), got 1"
    );
    assert_eq!(home.ok(&["send", "counter", "get"]), "1");
    assert_eq!(
        home.get("v1.vs.vom.vs.o+d10/1").as_deref(),
        Some(r#"1|x1k1||{"count":1}"#)
    );
}

#[test]
fn commands_need_a_home_and_do_not_create_one() {
    let home = VatHome::uninitialized();
    for args in [
        vec!["send", "counter", "get"],
        vec!["list"],
        vec!["spawn", "x", "y.wasm"],
    ] {
        let err = home.fails(&args);
        assert!(err.contains("no vat home at"), "{err}");
        assert!(err.contains("vat init"), "{err}");
    }
    assert!(!home.path().exists());
}

/// A guest that traps mid-crank: the crank's writes are gone, the caller's
/// result is rejected with the reason, and the vat runs on with its data.
#[test]
fn a_trapping_guest_fails_that_message_only_and_keeps_its_data() {
    let home = VatHome::new();
    home.spawn("f", "faulty");
    home.spawn("counter", "counter");
    home.ok(&["send", "f", "set", "before", "kept"]);
    let err = home.fails(&["send", "f", "write_then_trap", "during"]);
    assert!(
        err.starts_with(
            "error: f.write_then_trap failed in vat v1 and was rolled back: guest trapped"
        ),
        "{err}"
    );
    // The trapped crank's write never reached the store; earlier data is all there.
    assert_eq!(home.get("v1.vs.during"), None);
    assert_eq!(home.ok(&["send", "f", "get", "before"]), "\"kept\"");
    assert!(home.ok(&["list"]).contains("v1 f root ko1 running"));
    // Other vats are unaffected.
    assert_eq!(home.ok(&["send", "counter", "increment"]), "1");
    assert_eq!(home.integrity(), "ok");
    home.check();
}

/// An ordinary Rust panic (an index past the end of a list) fails its
/// message with the panic's message and location, with a thread worker and
/// a process worker alike, with and without the daemon; the vat's data is
/// untouched.
#[test]
fn a_panic_fails_its_message_with_the_panic_message_and_location() {
    for (worker, daemon) in [("process", false), ("thread", false), ("process", true)] {
        let home = VatHome::new();
        let _daemon = daemon.then(|| home.start_daemon());
        let module = vat_tests::guest("faulty");
        home.ok(&["spawn", "f", module.to_str().unwrap(), "--worker", worker]);
        home.ok(&["send", "f", "set", "before", "kept"]);
        assert_eq!(home.ok(&["send", "f", "item", "1"]), "20");
        let err = home.fails(&["send", "f", "item", "7"]);
        assert!(
            err.contains("f.item failed in vat v1 and was rolled back"),
            "{err}"
        );
        assert!(
            err.contains("panicked at tests/guests/faulty/src/lib.rs:"),
            "{err}"
        );
        assert!(
            err.contains("index out of bounds: the len is 3 but the index is 7"),
            "{err}"
        );
        // The panicking delivery's write is gone, the earlier ones are kept.
        assert_eq!(home.get("v1.vs.item.asked").as_deref(), Some("1"));
        assert_eq!(home.ok(&["send", "f", "get", "before"]), "\"kept\"");
        assert_eq!(home.ok(&["send", "f", "item", "2"]), "30");
        home.check();
    }
}

/// A vat whose deliveries fault `faults_in_a_row_max` times in a row is
/// suspended with all its data; messages to it say so and how to revive it;
/// `vat resume` and `vat upgrade` bring it back; `vat rm` deletes it.
#[test]
fn a_vat_that_keeps_faulting_is_suspended_then_revived_or_removed() {
    let home = VatHome::new();
    let module = vat_tests::guest("faulty");
    let module = module.to_str().unwrap();
    home.ok(&["spawn", "f", module, "--faults-in-a-row-max", "3"]);
    home.ok(&["send", "f", "set", "before", "kept"]);
    // A success between faults resets the count.
    home.fails(&["send", "f", "item", "9"]);
    home.fails(&["send", "f", "item", "9"]);
    home.ok(&["send", "f", "item", "0"]);
    home.fails(&["send", "f", "item", "9"]);
    home.fails(&["send", "f", "item", "9"]);
    assert!(home.ok(&["list"]).contains("v1 f root ko1 running"));
    let err = home.fails(&["send", "f", "item", "9"]);
    assert!(
        err.contains(
            "vat v1 (f) is suspended: 3 deliveries in a row faulted (faults_in_a_row_max 3)"
        ),
        "{err}"
    );
    let before = home.dump();
    let err = home.fails(&["send", "f", "get", "before"]);
    assert!(err.contains("is suspended"), "{err}");
    assert!(err.contains("`vat resume f` restarts it"), "{err}");
    assert!(
        err.contains("`vat upgrade f FIXED.wasm` revives it"),
        "{err}"
    );
    let listing = home.ok(&["list"]);
    assert!(listing.contains("v1 f root ko1 suspended ("), "{listing}");
    assert!(listing.contains(" keeps "), "{listing}");
    assert!(listing.contains(" vatstore entries ("), "{listing}");
    // Suspended, nothing of it changes; `vat rm` refuses nothing but a running vat.
    assert_eq!(
        home.dump()
            .into_iter()
            .filter(|(k, _)| k.starts_with("v1.vs."))
            .collect::<Vec<_>>(),
        before
            .into_iter()
            .filter(|(k, _)| k.starts_with("v1.vs."))
            .collect::<Vec<_>>()
    );
    home.check();
    home.ok(&["resume", "f"]);
    assert_eq!(home.ok(&["send", "f", "get", "before"]), "\"kept\"");
    // Suspended again, then revived by an upgrade (here to the same code).
    for _ in 0..3 {
        home.fails(&["send", "f", "item", "9"]);
    }
    home.ok(&["upgrade", "f", module]);
    assert_eq!(home.ok(&["send", "f", "get", "before"]), "\"kept\"");
    let err = home.fails(&["resume", "f"]);
    assert!(err.contains("is running, not suspended"), "{err}");
    let err = home.fails(&["rm", "f"]);
    assert!(err.contains("`vat terminate f` first"), "{err}");
    home.ok(&["terminate", "f"]);
    let err = home.fails(&["send", "f", "get", "before"]);
    assert!(err.contains("terminated by its owner"), "{err}");
    assert_eq!(home.get("v1.vs.before").as_deref(), Some("kept"));
    home.check();
    home.ok(&["rm", "f"]);
    assert!(home.dump().iter().all(|(k, _)| !k.starts_with("v1.vs.")));
    assert!(home.ok(&["list"]).contains("v1 f root ko1 removed ("));
    home.check();
}

/// Several `vat` processes on one home take turns; none is lost.
#[test]
fn concurrent_invocations_take_turns_on_one_home() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    let children: Vec<_> = (0..6)
        .map(|_| {
            home.command(&["send", "counter", "increment"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen: Vec<u64> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
    assert_eq!(home.ok(&["send", "counter", "get"]), "6");
    assert_eq!(home.integrity(), "ok");
    home.check();
}

#[test]
fn a_home_in_use_is_reported_after_the_wait() {
    let home = VatHome::new();
    // Hold the lock the way a running `vat` process does.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(home.path().join("lock"))
        .unwrap();
    lock.lock().unwrap();
    let err = home.fails(&["--lock-wait-ms", "100", "list"]);
    assert!(err.contains("is in use by another vat process"), "{err}");
}

#[test]
fn key_prints_the_kernels_did() {
    let home = VatHome::new();
    let did = home.ok(&["key"]);
    assert!(did.starts_with("did:key:z6Mk"), "{did}");
    assert_eq!(home.ok(&["key"]), did);
}

/// SIGKILL of a `vat` process mid-run loses at most its uncommitted cranks:
/// the store stays sound and the next invocation carries on.
#[test]
fn a_killed_vat_process_leaves_committed_state_intact() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    home.spawn("counter", "counter");
    home.ok(&["send", "counter", "increment"]);
    let mut child = home
        .command(&["send", "a", "runHeap", "100000000", "b"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some of the run's cranks are committed, then kill it mid-run.
    vat_tests::wait_until("no committed progress", 120, || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        home.get("runQueue.head")
            .is_some_and(|head| head.parse::<u64>().unwrap() > 200)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(home.integrity(), "ok");
    // Committed state is all there, and the kernel works on.
    assert_eq!(home.ok(&["send", "counter", "get"]), "1");
    assert_eq!(home.ok(&["send", "counter", "increment"]), "2");
    assert_eq!(home.ok(&["send", "a", "run", "5", "b"]), "5");
    home.check();
}

#[test]
fn a_missing_worker_binary_is_named_with_the_way_out() {
    let home = VatHome::new();
    let module = vat_tests::guest("counter");
    let before = home.dump();
    let out = home
        .command(&["spawn", "counter", module.to_str().unwrap()])
        .env("VAT_SUPERVISOR", "/nonexistent/vat-supervisor")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("/nonexistent/vat-supervisor not found"),
        "{err}"
    );
    assert!(err.contains("--worker thread"), "{err}");
    assert_eq!(home.dump(), before);
    // The in-process worker needs no binary.
    let out = home
        .command(&[
            "spawn",
            "counter",
            module.to_str().unwrap(),
            "--worker",
            "thread",
        ])
        .env("VAT_SUPERVISOR", "/nonexistent/vat-supervisor")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(home.ok(&["send", "counter", "increment"]), "1");
    assert!(home.ok(&["list"]).contains("worker thread"));
}

/// `vat check` finds what a damaged store gets wrong, one line per discrepancy.
#[test]
fn check_reports_each_discrepancy_in_a_damaged_store() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    assert_eq!(home.ok(&["send", "a", "run", "10", "b"]), "10");
    home.check();
    {
        let conn = rusqlite::Connection::open(home.path().join("store.sqlite")).unwrap();
        // One side of a c-list entry lost, and an object given to a vat that does not exist.
        conn.execute("DELETE FROM kv WHERE key = 'v1.c.o+0'", [])
            .unwrap();
        conn.execute("UPDATE kv SET value = 'v9' WHERE key = 'ko2.owner'", [])
            .unwrap();
        // A promise record that is not one.
        conn.execute(
            "INSERT INTO kv (key, value) VALUES ('kp1.promise', 'settled, probably')",
            [],
        )
        .unwrap();
    }
    let out = home.run(&["check"]);
    assert!(!out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(
        report.contains("c-list asymmetry in v1: ko1 -> o+0, but o+0 does not map back"),
        "{report}"
    );
    assert!(
        report.contains("ko2 is owned by v9, which does not exist"),
        "{report}"
    );
    assert!(
        report.contains("v2 exports ko2 as o+0 but does not own it"),
        "{report}"
    );
    assert!(
        report.contains(r#"kp1.promise is not a promise record: "settled, probably""#),
        "{report}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {} discrepancies in {} keys",
            report.lines().count(),
            home.dump().len()
        )
    );
}

/// Settled promises are freed: long runs leave the store the size short ones do.
#[test]
fn the_store_levels_off_however_long_the_run() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    assert_eq!(home.ok(&["send", "a", "run", "20", "b"]), "20");
    let after_short = home.dump().len();
    assert_eq!(home.ok(&["send", "a", "run", "500", "b"]), "500");
    assert_eq!(
        home.dump().len(),
        after_short,
        "the store grew with the run's length"
    );
    home.check();
}

/// Integers are exact through the CLI both ways: beyond ±(2^53 - 1) they
/// travel as bigints; an integer parameter takes a value only when it is
/// exact and in its type's range, never clamped or rounded.
#[test]
fn integers_are_exact_from_the_command_line_to_a_vat_and_back() {
    let home = VatHome::new();
    let v2 = vat_tests::guest("counter_v2");
    home.ok(&["spawn", "counter", v2.to_str().unwrap()]);
    // One more than 2^64 - 1: refused, naming the range; nothing changes.
    let err = home.fails(&["send", "counter", "add", "18446744073709551616"]);
    assert!(
        err.contains("argument 0 must be a natural number (u64: 0 to 18446744073709551615"),
        "{err}"
    );
    assert_eq!(home.ok(&["send", "counter", "get"]), "0");
    // 2^53 + 1 is read exactly, and the result beyond 2^53 - 1 is a bigint.
    assert_eq!(
        home.ok(&["send", "counter", "add", "9007199254740993"]),
        r#"{"$bigint":"9007199254740993"}"#
    );
    assert_eq!(
        home.ok(&[
            "send",
            "counter",
            "add",
            r#"{"$bigint":"18437736874454810622"}"#
        ]),
        r#"{"$bigint":"18446744073709551615"}"#
    );
    // A number that is not a safe integer may have been rounded: refused.
    let err = home.fails(&["send", "counter", "add", "1e300"]);
    assert!(err.contains("must be a natural number"), "{err}");
    let err = home.fails(&["send", "counter", "add", "1"]);
    assert!(err.contains("overflow"), "{err}");
    assert_eq!(
        home.ok(&["send", "counter", "get"]),
        r#"{"$bigint":"18446744073709551615"}"#
    );
}

/// Sends `increment` under `key`, SIGKILLing the client after `kill_after`
/// (perhaps before it committed, perhaps after), then retries under the
/// same key until it answers; returns the answer.
fn increment_once(home: &VatHome, key: &str, kill_after: std::time::Duration) -> String {
    let args = ["send", "counter", "increment", "--idempotency-key", key];
    let mut child = home
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(kill_after);
    vat_tests::kill_hard(child.id());
    let _ = child.wait();
    home.ok(&args)
}

/// `--idempotency-key`: whether the client dies before or after its commit,
/// the retry is applied once and gets the first try's result; a key used
/// again for another request is refused.
#[test]
fn an_idempotent_send_is_applied_once_however_often_it_is_retried() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    for round in 1..=12u64 {
        let kill_after = std::time::Duration::from_millis(round * 7 % 60);
        let key = format!("inc-{round}");
        assert_eq!(increment_once(&home, &key, kill_after), round.to_string());
        // A plain retry much later: the same answer, nothing applied.
        let args = ["send", "counter", "increment", "--idempotency-key", &key];
        assert_eq!(home.ok(&args), round.to_string());
    }
    assert_eq!(home.ok(&["send", "counter", "get"]), "12");
    let err = home.fails(&["send", "counter", "get", "--idempotency-key", "inc-3"]);
    assert!(
        err.contains(r#"idempotency key "inc-3" was used for a different request"#),
        "{err}"
    );
    let err = home.fails(&["send", "counter", "get", "--idempotency-key", "two words"]);
    assert!(err.contains("bad idempotency key"), "{err}");
    assert_eq!(home.ok(&["send", "counter", "get"]), "12");
    home.check();
}

/// The krefs a result shows, nested ones too, stay usable by the next
/// commands (the kernel holds them), however the vat collects; a pet name
/// keeps one for good, and `vat unname` lets it go.
#[test]
fn references_a_result_shows_stay_usable_by_the_next_commands() {
    let home = VatHome::new();
    home.spawn("e", "holder");
    let kref = |shown: &str| {
        let value: serde_json::Value = serde_json::from_str(shown).unwrap();
        value["$ref"].as_str().unwrap().to_owned()
    };
    // A durable object nothing but the result refers to.
    let token = kref(&home.ok(&["send", "e", "makeDurable", "t1"]));
    home.ok(&["collect", "e"]);
    assert_eq!(home.ok(&["send", &token, "describe"]), "\"t1\"");
    // Nested in a record and an array: each one usable.
    let nested = home.ok(&[
        "send",
        "e",
        "echo",
        &format!(r#"{{"list":[{{"$ref":"{token}"}}]}}"#),
    ]);
    assert_eq!(nested, format!(r#"{{"list":[{{"$ref":"{token}"}}]}}"#));
    home.ok(&["collect", "e"]);
    assert_eq!(home.ok(&["send", &token, "describe"]), "\"t1\"");
    // A pet name keeps it; unnaming it lets it go once nothing shows it.
    assert_eq!(
        home.ok(&["name", &token, "keep"]),
        format!("keep -> {token}")
    );
    assert_eq!(home.ok(&["send", "keep", "describe"]), "\"t1\"");
    let shown = home.ok(&["send", "keep", "describe"]);
    assert_eq!(shown, "\"t1\"");
    assert_eq!(
        home.ok(&["unname", "keep"]),
        format!("unbound keep (was {token})")
    );
    let err = home.fails(&["unname", "keep"]);
    assert!(err.contains(r#"no pet name "keep""#), "{err}");
    // Let go of, it goes with the vat's next collection.
    assert_eq!(home.ok(&["forget"]), "let go of 1 shown reference(s)");
    home.ok(&["collect", "e"]);
    let err = home.fails(&["send", &token, "describe"]);
    assert!(err.contains("unknown reference"), "{err}");
    home.check();
}

#[test]
fn vat_log_shows_what_a_vat_logged_even_from_a_failed_delivery() {
    let home = VatHome::new();
    home.spawn("w", "waiter");
    home.ok(&["send", "w", "say", "\"hello\""]);
    let failed = home.fails(&["send", "w", "sayAndFail", "\"bye\""]);
    assert!(failed.contains("failing on purpose"), "{failed}");
    let _daemon = home.start_daemon();
    home.ok(&["send", "w", "say", "\"from the daemon\""]);
    assert_eq!(
        home.ok(&["log", "w"]),
        "said: hello\nabout to fail: bye\nsaid: from the daemon"
    );
    assert_eq!(
        home.ok(&["log", "w", "--lines", "1"]),
        "said: from the daemon"
    );
    let unknown = home.fails(&["log", "nobody"]);
    assert!(unknown.contains("nobody"), "{unknown}");
}
