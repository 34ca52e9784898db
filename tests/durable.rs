//! Durable exos end to end: objects that outlive every process with no
//! replay, guards, collections, garbage collection, upgrade, and a mint that
//! conserves its supply however often the kernel is killed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use vat_tests::{VatHome, kill_hard};

/// The vatstore keys of vat `v1` under `prefix` (such as `vom.vs.o+d10/`).
fn vatstore_keys(home: &VatHome, prefix: &str) -> Vec<String> {
    let full = format!("v1.vs.{prefix}");
    home.dump()
        .into_iter()
        .filter(|(k, _)| k.starts_with(&full))
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn a_hundred_thousand_durable_objects_survive_sigkill_of_the_kernel() {
    let home = VatHome::new();
    let daemon = home.start_daemon();
    home.spawn("things", "things");
    for batch in 1..=10 {
        let count = home.ok(&["send", "things", "make", "10000"]);
        assert_eq!(count, (batch * 10_000).to_string());
    }
    home.ok(&["send", "things", "thing", "5", "--as", "five"]);
    assert_eq!(home.ok(&["send", "five", "relabel", "renamed"]), "\"t5\"");
    // The kernel dies without warning: whatever it acknowledged is on disk.
    kill_hard(daemon.pid());
    drop(daemon);

    // A new kernel (this `vat` process) finds every object with its state.
    assert_eq!(home.ok(&["send", "things", "count"]), "100000");
    assert_eq!(
        home.ok(&["send", "five", "describe"]),
        "\"thing 5: renamed\""
    );
    for id in ["0", "31337", "99999"] {
        let name = format!("thing{id}");
        home.ok(&["send", "things", "thing", id, "--as", &name]);
        assert_eq!(
            home.ok(&["send", &name, "describe"]),
            format!("\"thing {id}: t{id}\"")
        );
    }
    assert_eq!(home.integrity(), "ok");
    home.check();
}

/// A mint operation run as its own `vat` process, killed after `kill_after`
/// unless it finished first. `None` when it was killed.
fn run_or_kill(
    home: &VatHome,
    args: &[&str],
    kill_after: Duration,
) -> Option<Result<String, String>> {
    let mut child = home
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vat");
    let started = Instant::now();
    while started.elapsed() < kill_after {
        if child.try_wait().expect("poll vat").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if child.try_wait().expect("poll vat").is_none() {
        kill_hard(child.id());
        child.wait().expect("reap vat");
        return None;
    }
    let out = child.wait_with_output().expect("vat output");
    let stdout = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    Some(if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    })
}

fn audit(home: &VatHome) -> serde_json::Value {
    serde_json::from_str(&home.ok(&["send", "mint", "audit"])).expect("audit is JSON")
}

/// Kills the kernel (the `vat` process) at random points of a long run of
/// withdrawals and deposits. Each deposit is retried until it has a definite
/// answer; a payment can be deposited once only, so a retry of a deposit that
/// did land is refused. In the end: supply conserved, no deposit lost or
/// applied twice, the store intact.
#[test]
fn the_mint_conserves_supply_however_often_the_kernel_is_killed() {
    let home = VatHome::new();
    home.spawn("mint", "mint");
    home.ok(&["send", "mint", "makePurse", "alice", "--as", "alice"]);
    home.ok(&["send", "mint", "makePurse", "bob", "--as", "bob"]);
    // A long run for a report: MINT_KILL_ROUNDS=1000 (the suite runs 40).
    let rounds: u32 = std::env::var("MINT_KILL_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(40);
    // Enough for every withdrawal (at most 5 each).
    let supply = (u64::from(rounds) * 5).max(1000);
    assert_eq!(
        home.ok(&["send", "mint", "mintInto", "alice", &supply.to_string()]),
        supply.to_string()
    );

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut random = seed;
    let mut next = move |below: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % below
    };
    let (mut deposited, mut kills) = (0u64, 0u32);
    for i in 0..rounds {
        let payment = format!("p{i}");
        let amount = (1 + next(5)).to_string();
        let delay = Duration::from_millis(next(60));
        match run_or_kill(
            &home,
            &["send", "alice", "withdraw", &amount, "--as", &payment],
            delay,
        ) {
            None => kills += 1,
            Some(outcome) => assert_eq!(outcome, Ok(format!("{{\"$ref\":\"{payment}\"}}"))),
        }
        let bound = home
            .ok(&["list"])
            .lines()
            .any(|line| line.trim_start().starts_with(&format!("{payment} -> ")));
        if !bound {
            // Killed before the name was bound: the payment, if made, is
            // still counted by the audit, but nobody can deposit it.
            continue;
        }
        loop {
            let delay = Duration::from_millis(next(60));
            match run_or_kill(&home, &["send", "bob", "deposit", &payment], delay) {
                None => kills += 1,
                Some(Ok(_)) => {
                    deposited += amount.parse::<u64>().unwrap();
                    break;
                }
                Some(Err(e)) if e == "error: payment already used" => {
                    // An attempt that was killed had landed: it counts once.
                    deposited += amount.parse::<u64>().unwrap();
                    break;
                }
                Some(Err(e)) => panic!("deposit of {payment} failed: {e}"),
            }
        }
    }
    eprintln!("{rounds} rounds, {kills} kills, {deposited} deposited");
    assert!(
        kills > 0,
        "the run must actually kill the kernel (seed {seed})"
    );
    let audit = audit(&home);
    assert_eq!(audit["supply"], supply, "{audit}");
    let in_purses = audit["inPurses"].as_u64().unwrap();
    let in_payments = audit["inPayments"].as_u64().unwrap();
    assert_eq!(in_purses + in_payments, supply, "{audit}");
    let bob: u64 = home.ok(&["send", "bob", "getBalance"]).parse().unwrap();
    let alice: u64 = home.ok(&["send", "alice", "getBalance"]).parse().unwrap();
    assert_eq!(
        bob, deposited,
        "every acknowledged deposit landed exactly once (seed {seed})"
    );
    assert_eq!(alice + bob, in_purses);
    assert_eq!(home.integrity(), "ok");
    home.check();
}

/// Calls that break a method's guard are refused before the method runs: the
/// store is byte-identical afterwards.
#[test]
fn calls_that_violate_a_guard_are_rejected_and_change_nothing() {
    let home = VatHome::new();
    home.spawn("mint", "mint");
    home.ok(&["send", "mint", "makePurse", "alice", "--as", "alice"]);
    home.ok(&["send", "mint", "mintInto", "alice", "50"]);
    home.ok(&["send", "alice", "getDepositFacet", "--as", "inbox"]);
    let cases: [(&[&str], &str); 7] = [
        (
            &["send", "alice", "withdraw", "ten"],
            r#"error: TypeError: Purse.purse.withdraw: argument 0 must be a natural number (u64: 0 to 18446744073709551615, a bigint beyond 2^53 - 1), got "ten""#,
        ),
        (
            &["send", "alice", "withdraw"],
            "error: TypeError: Purse.purse.withdraw: expected 1 argument(s), got 0",
        ),
        (
            &["send", "alice", "withdraw", "5", "6"],
            "error: TypeError: Purse.purse.withdraw: expected 1 argument(s), got 2",
        ),
        (
            &["send", "alice", "withdraw", "-5"],
            "error: TypeError: Purse.purse.withdraw: argument 0 must be a natural number (u64: 0 to 18446744073709551615, a bigint beyond 2^53 - 1), got -5",
        ),
        (
            // A purse is not a payment: the guard checks the kind.
            &["send", "alice", "deposit", "alice"],
            "error: TypeError: Purse.purse.deposit: argument 0 must be a durable object of the expected kind from this vat, got a remotable",
        ),
        (
            // The deposit facet can receive, not take or look.
            &["send", "inbox", "withdraw", "5"],
            r#"error: TypeError: Purse.depositFacet has no method "withdraw" (it has: receive)"#,
        ),
        (
            &["send", "mint", "printMoney", "5"],
            r#"error: TypeError: Mint has no method "printMoney" (it has: makePurse, mintInto, audit, purseNames)"#,
        ),
    ];
    for (args, expected) in cases {
        let before = home.dump();
        assert_eq!(home.fails(args), expected, "{args:?}");
        let after = home.dump();
        // The kernel counts the vat's workers and promises; the vat itself is untouched.
        let vat_state = |dump: &[(String, String)]| -> Vec<(String, String)> {
            dump.iter()
                .filter(|(k, _)| k.starts_with("v1.vs."))
                .cloned()
                .collect()
        };
        assert_eq!(
            vat_state(&after),
            vat_state(&before),
            "{args:?} changed the vat"
        );
    }
    assert_eq!(home.ok(&["send", "alice", "getBalance"]), "50");
    home.check();
}

#[test]
fn upgrade_keeps_the_count_and_a_version_that_forgets_a_kind_is_refused() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    for _ in 0..3 {
        home.ok(&["send", "counter", "increment"]);
    }
    // Version 1 has no `add`.
    assert!(
        home.fails(&["send", "counter", "add", "10"])
            .contains("no method \"add\"")
    );
    let v2 = vat_tests::guest("counter_v2");
    let upgraded = home.ok(&["upgrade", "counter", v2.to_str().unwrap()]);
    assert!(
        upgraded.starts_with("upgraded counter to bundle bafkrei"),
        "{upgraded}"
    );
    assert_eq!(home.ok(&["send", "counter", "add", "10"]), "13");
    assert_eq!(home.ok(&["send", "counter", "increment"]), "14");

    // Pingpong defines no durable kinds: as a new version of counter, it
    // would orphan the count. The upgrade is refused and nothing changes.
    let before = home.dump();
    let pingpong = vat_tests::guest("pingpong");
    let err = home.fails(&["upgrade", "counter", pingpong.to_str().unwrap()]);
    assert_eq!(
        err,
        "error: upgrade of \"counter\" failed, the old version keeps running: vat exited with failure: this version does not define the durable kind(s) Counter that an earlier version made"
    );
    assert_eq!(home.dump(), before, "a failed upgrade changes nothing");
    assert_eq!(home.ok(&["send", "counter", "add", "1"]), "15");
    let listing = home.ok(&["list"]);
    assert!(listing.contains("v1 counter root ko1 running"), "{listing}");
    assert!(
        home.fails(&["upgrade", "nobody", v2.to_str().unwrap()])
            .contains("no vat named \"nobody\"")
    );
    home.check();
}

#[test]
fn unreachable_durable_objects_are_deleted_and_reachable_ones_kept() {
    let home = VatHome::new();
    home.spawn("things", "things");
    home.ok(&["send", "things", "make", "100"]);
    home.ok(&["send", "things", "tag", "7", "lucky"]);
    home.ok(&["send", "things", "tag", "70", "kept"]);
    // Thing 60 goes out to the CLI: exported, it must stay whatever the map says.
    home.ok(&["send", "things", "thing", "60", "--as", "sixty"]);
    assert_eq!(home.ok(&["send", "things", "loose", "25"]), "25");
    let things = "vom.vs.o+d10/";
    assert_eq!(vatstore_keys(&home, things).len(), 125);

    assert_eq!(home.ok(&["send", "things", "forget", "0", "61"]), "61");
    // Until bringOutYourDead, nothing is deleted.
    assert_eq!(vatstore_keys(&home, things).len(), 125);
    home.ok(&["collect", "things"]);
    // 60 dropped, 25 loose deleted; thing 60 stays (exported) with 39 kept in the map.
    assert_eq!(vatstore_keys(&home, things).len(), 40);
    assert_eq!(home.ok(&["send", "sixty", "describe"]), "\"thing 60: t60\"");
    assert_eq!(home.ok(&["send", "things", "count"]), "39");
    // The weak map forgot thing 7 with it, and kept thing 70's note.
    assert_eq!(home.ok(&["send", "things", "note", "70"]), "\"kept\"");
    assert_eq!(vatstore_keys(&home, "vom.ow.").len(), 1);
    assert_eq!(home.ok(&["send", "things", "count"]), "39");
    home.check();
}

#[test]
fn collections_keep_integer_keys_in_numeric_order() {
    let home = VatHome::new();
    home.spawn("things", "things");
    home.ok(&["send", "things", "make", "120"]);
    home.ok(&["send", "things", "forget", "10", "95"]);
    // Byte order of decimal strings would put 100 before 9.
    assert_eq!(
        home.ok(&["send", "things", "ids", "7", "102"]),
        "[7,8,9,95,96,97,98,99,100,101]"
    );
    assert_eq!(home.ok(&["send", "things", "ids", "50", "60"]), "[]");
    assert_eq!(home.ok(&["send", "things", "count"]), "35");
    // Backwards too, in the same numeric order, and first and last.
    assert_eq!(
        home.ok(&["send", "things", "lastIds", "4"]),
        "[119,118,117,116]"
    );
    home.ok(&["send", "things", "forget", "96", "121"]);
    assert_eq!(home.ok(&["send", "things", "lastIds", "3"]), "[95,9,8]");
    assert_eq!(home.ok(&["send", "things", "firstAndLast"]), "[0,95]");
}

#[test]
fn a_collection_refuses_a_key_it_holds_wherever_the_key_sorts() {
    let home = VatHome::new();
    home.spawn("things", "things");
    home.ok(&["send", "things", "make", "3"]);
    // Past every key so far (known absent without a read), then below it.
    assert_eq!(home.ok(&["send", "things", "add", "10"]), "4");
    assert_eq!(home.ok(&["send", "things", "add", "5"]), "5");
    for id in ["1", "5", "10"] {
        let refused = home.fails(&["send", "things", "add", id]);
        assert!(refused.contains("already registered"), "{id}: {refused}");
    }
    // A key deleted (the greatest) may be used again; the map says so.
    assert_eq!(home.ok(&["send", "things", "forget", "10", "11"]), "1");
    assert_eq!(home.ok(&["send", "things", "add", "10"]), "5");
    assert_eq!(
        home.ok(&["send", "things", "ids", "0", "100"]),
        "[0,1,2,5,10]"
    );
    // Each command is a kernel of its own, from what the last committed.
    assert!(
        home.fails(&["send", "things", "add", "10"])
            .contains("already registered")
    );
    assert_eq!(home.ok(&["send", "things", "add", "11"]), "6");

    // A map made before its greatest key was kept has it found once.
    let conn = rusqlite::Connection::open(home.path().join("store.sqlite")).unwrap();
    let records: Vec<(String, String)> = conn
        .prepare("SELECT key, value FROM kv WHERE key LIKE 'v1.vs.vom.vs.%' AND value LIKE '%\"last\":%'")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(records.len(), 3, "the baggage and the registry's two maps");
    for (key, value) in records {
        // `last` is the record's final field.
        let from = value.find(",\"last\":").unwrap();
        let to = value.rfind('}').unwrap();
        let older = format!("{}{}", &value[..from], &value[to..]);
        conn.execute("UPDATE kv SET value = ?1 WHERE key = ?2", [&older, &key])
            .unwrap();
    }
    drop(conn);
    assert!(
        home.fails(&["send", "things", "add", "11"])
            .contains("already registered")
    );
    assert_eq!(home.ok(&["send", "things", "add", "12"]), "7");
    assert_eq!(
        home.ok(&["send", "things", "ids", "9", "100"]),
        "[10,11,12]"
    );
    home.check();
}

/// Promises the vat's heap decided die with it on upgrade: they are rejected
/// as `vatRestarted` ("upgraded"), and whoever awaits them hears so. Heap
/// objects are gone too.
#[test]
fn an_upgrade_rejects_the_promises_the_vat_decided() {
    let home = VatHome::new();
    let _daemon = home.start_daemon();
    home.spawn("a", "holder");
    home.spawn("d", "holder");
    home.ok(&["send", "a", "ask", "d", "p"]);
    home.ok(&["send", "a", "take", "d", "x", "x"]);
    assert_eq!(home.ok(&["send", "a", "call", "x", "describe"]), "\"x\"");
    let holder = vat_tests::guest("holder");
    home.ok(&["upgrade", "d", holder.to_str().unwrap()]);
    let err = home.fails(&["send", "a", "await", "p"]);
    assert!(
        err.starts_with("error: vatRestarted: vat v2 upgraded: the promises its incarnation 1"),
        "{err}"
    );
    let err = home.fails(&["send", "a", "call", "x", "describe"]);
    assert!(
        err.contains("is gone"),
        "a heap object does not survive: {err}"
    );
    home.check();
}

/// An upgrade whose state type cannot read the stored state is refused
/// before anything changes, naming the kind and the field: a new field
/// without a default, a renamed field, a changed type, a downgrade. A new
/// field with a default is accepted, and the data is intact.
#[test]
fn an_upgrade_that_cannot_read_the_stored_state_is_refused_naming_the_field() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    for _ in 0..3 {
        home.ok(&["send", "counter", "increment"]);
    }
    let refused = |guest: &str, why: &str| {
        let before = home.dump();
        let module = vat_tests::guest(guest);
        let err = home.fails(&["upgrade", "counter", module.to_str().unwrap()]);
        assert!(
            err.starts_with("error: upgrade of \"counter\" failed, the old version keeps running: vat exited with failure: this version cannot read the stored state of kind Counter: "),
            "{guest}: {err}"
        );
        assert!(err.contains(why), "{guest}: {err}");
        assert_eq!(
            home.dump(),
            before,
            "{guest}: a refused upgrade changes nothing"
        );
    };
    refused(
        "counter_missing_default",
        "new field `label` has no default (add #[serde(default)])",
    );
    refused(
        "counter_renamed",
        "field `count` is gone (removed, renamed, or an older version)",
    );
    refused("counter_renamed", "new field `total` has no default");
    refused(
        "counter_retyped",
        "field `count` changed type from u64 to String",
    );
    // The old version ran on through all of that.
    assert_eq!(home.ok(&["send", "counter", "increment"]), "4");
    // A new field with a default reads the stored state: accepted, data intact.
    let with_default = vat_tests::guest("counter_with_default");
    home.ok(&["upgrade", "counter", with_default.to_str().unwrap()]);
    assert_eq!(
        home.ok(&["send", "counter", "get"]),
        r#"{"count":4,"label":""}"#
    );
    // Back to the version without the field: its data would be dropped.
    refused("counter", "field `label` is gone");
    // An upgrade that changes no state type passes without a look at the objects.
    home.ok(&["upgrade", "counter", with_default.to_str().unwrap()]);
    assert_eq!(
        home.ok(&["send", "counter", "get"]),
        r#"{"count":4,"label":""}"#
    );
    home.check();
}

/// A kind reshaped with a migration (`vom::define_migrating`): the upgrade
/// is accepted at once, each object migrates the first time it is used and
/// is written back in the new schema epoch, and its data is intact.
#[test]
fn a_migration_reshapes_each_object_lazily_and_keeps_its_data() {
    let home = VatHome::new();
    home.spawn("counter", "counter");
    for _ in 0..3 {
        home.ok(&["send", "counter", "increment"]);
    }
    let record = || {
        home.dump()
            .into_iter()
            .find(|(k, _)| k.starts_with("v1.vs.vom.vs.o+d10/"))
            .map(|(_, v)| v)
            .expect("the counter's record")
    };
    let flags = |record: String| record.split('|').nth(1).unwrap().to_owned();
    let migrated = vat_tests::guest("counter_migrated");
    home.ok(&["upgrade", "counter", migrated.to_str().unwrap()]);
    // Nothing was rewritten by the upgrade itself.
    assert!(!flags(record()).contains('s'), "{}", record());
    assert_eq!(
        home.ok(&["send", "counter", "get"]),
        r#"{"label":"migrated","total":3}"#
    );
    assert!(flags(record()).contains("s1"), "{}", record());
    assert!(
        record().ends_with(r#"{"total":3,"label":"migrated"}"#),
        "{}",
        record()
    );
    // Later starts read it as it is now (the migration is not run again).
    assert_eq!(
        home.ok(&["send", "counter", "get"]),
        r#"{"label":"migrated","total":3}"#
    );
    // Back to a version that reads `count`: refused, nothing changes.
    let before = home.dump();
    let with_default = vat_tests::guest("counter_with_default");
    let err = home.fails(&["upgrade", "counter", with_default.to_str().unwrap()]);
    assert!(err.contains("field `total` is gone"), "{err}");
    assert_eq!(home.dump(), before);
    home.check();
}
