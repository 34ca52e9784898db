//! Hostile guests: each gets its documented one-line error, the vats beside
//! it keep working, and the store stays sound. A guest that breaks a limit
//! or traps has that message rolled back and keeps running; one that breaks
//! the ABI (a forged reference, a malformed syscall) is terminated, its data
//! kept. Workers are processes (the default) unless a case says otherwise.

use std::path::PathBuf;
use std::process::Stdio;

use vat_tests::VatHome;

/// A guest with the vat ABI whose `vat_deliver` runs `body` on messages
/// (not on `startVat`, so it spawns fine). Byte 9 of a delivery's JSON is
/// `m` for `{"type":"message"...` and `s` for `{"type":"startVat"}`.
fn guest(imports: &str, body: &str, extra: &str) -> String {
    format!(
        r#"(module
            {imports}
            (memory (export "memory") 1)
            (func (export "vat_abi_version") (result i32) i32.const 1)
            (func (export "vat_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "vat_deliver") (param $p i32) (param $l i32) (result i32)
              (if (i32.eq (i32.load8_u offset=9 (local.get $p)) (i32.const 0x6d))
                (then {body}))
              i32.const 0)
            {extra})"#
    )
}

/// A guest that makes one syscall, `import`, with `payload` as its argument.
fn syscall_guest(import: &str, payload: &str) -> String {
    let escaped = payload.replace('\\', "\\\\").replace('"', "\\\"");
    guest(
        &format!(r#"(import "vat" "{import}" (func $call (param i32 i32)))"#),
        &format!(
            "(call $call (i32.const 2048) (i32.const {}))",
            payload.len()
        ),
        &format!(r#"(data (i32.const 2048) "{escaped}")"#),
    )
}

struct Scene {
    home: VatHome,
    dir: tempfile::TempDir,
}

impl Scene {
    /// A home with a counter vat that must keep working whatever happens beside it.
    fn new() -> Scene {
        let home = VatHome::new();
        home.spawn("counter", "counter");
        home.ok(&["send", "counter", "increment"]);
        Scene {
            home,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn module(&self, name: &str, wat_text: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, wat::parse_str(wat_text).unwrap()).unwrap();
        path
    }

    /// Spawns `wat_text` as vat `name` with `flags`, sends it `poke`, and
    /// returns the one-line error that send must end with.
    fn poke(&self, name: &str, wat_text: &str, flags: &[&str]) -> String {
        let module = self.module(name, wat_text);
        let mut args = vec!["spawn", name, module.to_str().unwrap()];
        args.extend_from_slice(flags);
        self.home.ok(&args);
        self.home.fails(&["send", name, "poke"])
    }

    /// The bystander still answers, and the store is sound.
    fn assert_contained_bystander(&self) {
        let count: u64 = self.home.ok(&["send", "counter", "get"]).parse().unwrap();
        assert_eq!(
            self.home.ok(&["send", "counter", "increment"]),
            (count + 1).to_string()
        );
        assert_eq!(self.home.integrity(), "ok");
        self.home.check();
    }

    /// The bystander still answers, the hostile vat is in `state` (with the
    /// reason `expected` when terminated), and the store is sound.
    fn assert_contained(&self, name: &str, state: Fate, expected: &str) {
        self.assert_contained_bystander();
        let listing = self.home.ok(&["list"]);
        let line = listing
            .lines()
            .find(|l| l.contains(&format!(" {name} root ")))
            .unwrap();
        match state {
            Fate::RolledBack => assert!(line.contains(" running "), "{line}"),
            Fate::Terminated => assert!(
                line.contains(" terminated (") && line.contains(expected),
                "{line}"
            ),
        }
        assert_eq!(self.home.integrity(), "ok");
        self.home.check();
    }
}

/// What a hostile delivery costs its vat.
#[derive(Clone, Copy)]
enum Fate {
    /// The message fails, rolled back; the vat runs on.
    RolledBack,
    /// An ABI violation: the vat is terminated, its data kept.
    Terminated,
}

fn case(name: &str, wat_text: &str, flags: &[&str], expected: &str, fate: Fate) {
    let scene = Scene::new();
    let err = scene.poke(name, wat_text, flags);
    assert!(
        err.contains(expected),
        "{name}: {err:?} should contain {expected:?}"
    );
    if let Fate::RolledBack = fate {
        assert!(
            err.contains(&format!("{name}.poke failed in vat v2 and was rolled back")),
            "{err}"
        );
    }
    scene.assert_contained(name, fate, expected);
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    case(
        "spin",
        &guest("", "(loop $l (br $l))", ""),
        &["--fuel", "20000000"],
        "fuel_per_delivery (20000000)",
        Fate::RolledBack,
    );
}

#[test]
fn an_infinite_loop_with_endless_fuel_meets_the_deadline() {
    let flags = ["--fuel", "18000000000000000000", "--deadline-ms", "300"];
    case(
        "spin",
        &guest("", "(loop $l (br $l))", ""),
        &flags,
        "deadline_ms (300 ms)",
        Fate::RolledBack,
    );
}

#[test]
fn an_infinite_loop_in_a_thread_worker_is_stopped_too() {
    let flags = ["--worker", "thread", "--fuel", "20000000"];
    case(
        "spin",
        &guest("", "(loop $l (br $l))", ""),
        &flags,
        "fuel_per_delivery (20000000)",
        Fate::RolledBack,
    );
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let bomb = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))";
    case(
        "bomb",
        &guest("", bomb, ""),
        &["--memory-bytes", "16777216"],
        "memory_bytes_max (16777216 bytes)",
        Fate::RolledBack,
    );
}

#[test]
fn unbounded_recursion_traps() {
    let recurse = "(func $down (call $down))";
    case(
        "deep",
        &guest("", "(call $down)", recurse),
        &[],
        "call stack exhausted",
        Fate::RolledBack,
    );
}

#[test]
fn a_forged_reference_terminates_the_vat() {
    let forged =
        r##"{"type":"send","target":"o-99","method":"steal","args":{"body":"#[]","slots":[]}}"##;
    case(
        "forger",
        &syscall_guest("send", forged),
        &[],
        "vref o-99 is not in the c-list of v2",
        Fate::Terminated,
    );
}

#[test]
fn a_forged_reference_in_arguments_terminates_the_vat() {
    let forged = r##"{"type":"send","target":"o+0","method":"m","args":{"body":"#[\"$0\"]","slots":["o-7"]}}"##;
    case(
        "forger",
        &syscall_guest("send", forged),
        &[],
        "vref o-7 is not in the c-list of v2",
        Fate::Terminated,
    );
}

#[test]
fn a_malformed_syscall_payload_terminates_the_vat() {
    case(
        "garbler",
        &syscall_guest("send", "{not json"),
        &[],
        "malformed send payload",
        Fate::Terminated,
    );
}

#[test]
fn resolving_a_promise_it_does_not_decide_terminates_the_vat() {
    let stolen = r##"{"type":"resolve","resolutions":[{"promise":"p-5","rejected":false,"data":{"body":"#1","slots":[]}}]}"##;
    case(
        "usurper",
        &syscall_guest("resolve", stolen),
        &[],
        "not in the c-list of v2",
        Fate::Terminated,
    );
}

#[test]
fn an_oversized_result_is_refused() {
    let huge = format!(
        r##"{{"type":"resolve","resolutions":[{{"promise":"p-1","rejected":false,"data":{{"body":"#\"{}\"","slots":[]}}}}]}}"##,
        "x".repeat(5000)
    );
    case(
        "bloat",
        &syscall_guest("resolve", &huge),
        &["--message-bytes", "4096"],
        "exceeds message_bytes_max (4096)",
        Fate::RolledBack,
    );
}

#[test]
fn too_many_syscalls_fail_the_delivery() {
    let chatter = guest(
        r#"(import "vat" "vatstore_get" (func $get (param i32 i32) (result i32)))"#,
        "(loop $l (drop (call $get (i32.const 0) (i32.const 1))) (br $l))",
        "",
    );
    case(
        "chatty",
        &chatter,
        &["--syscalls-max", "1000"],
        "syscalls_per_delivery_max (1000)",
        Fate::RolledBack,
    );
}

#[test]
fn a_module_importing_what_the_abi_does_not_offer_is_refused_at_spawn() {
    let scene = Scene::new();
    let wasi = guest(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        "",
        "",
    );
    let module = scene.module("wasi", &wasi);
    let before = scene.home.dump();
    let err = scene
        .home
        .fails(&["spawn", "wasi", module.to_str().unwrap()]);
    assert!(
        err.contains("imports `wasi_snapshot_preview1.fd_write`, which the vat ABI does not offer"),
        "{err}"
    );
    assert_eq!(scene.home.dump(), before);
    assert_eq!(scene.home.ok(&["send", "counter", "get"]), "1");
}

/// The process ids of the `vat-supervisor` workers hosting `vat` for the
/// `vat` process `parent` (tests run in parallel, each with its own vats).
fn worker_pids(parent: u32, vat: &str) -> Vec<u32> {
    vat_tests::workers_of(parent)
        .into_iter()
        .filter(|(_, hosted)| hosted == vat)
        .map(|(pid, _)| pid)
        .collect()
}

/// Runs `vat send a run N b` and SIGKILLs the worker of `victim` once the run
/// has committed progress; returns the send's output.
fn kill_worker_mid_run(home: &VatHome, victim: &str, run: &str) -> std::process::Output {
    let child = home
        .command(&["send", "a", run, "3000", "b"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    vat_tests::wait_until("no progress to interrupt", 120, || {
        let progressed = home
            .get("runQueue.head")
            .is_some_and(|h| h.parse::<u64>().unwrap() > 300);
        let pids = worker_pids(child.id(), victim);
        if progressed && !pids.is_empty() {
            pids.into_iter().for_each(vat_tests::kill_hard);
            return true;
        }
        false
    });
    child.wait_with_output().unwrap()
}

#[test]
fn a_killed_worker_is_restarted_and_the_delivery_retried() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    // b's restarted worker carries on, and counts each ping once.
    let out = kill_worker_mid_run(&home, "v2", "runHeap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "3000");
    assert!(home.ok(&["list"]).contains("v2 b root ko2 running"));
    assert_eq!(home.ok(&["send", "b", "pings"]), "3000");
    home.check();
}

#[test]
fn a_flow_whose_worker_is_killed_carries_on_from_its_journal() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    // a's run is a flow: its restarted worker resumes it, and sends no
    // ping twice.
    let out = kill_worker_mid_run(&home, "v1", "run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "3000");
    assert_eq!(home.ok(&["send", "b", "pings"]), "3000");
    home.check();
}

#[test]
fn a_killed_worker_loses_what_its_vat_awaited_in_memory() {
    let home = VatHome::new();
    home.spawn("a", "pingpong");
    home.spawn("b", "pingpong");
    // a's runHeap awaits in its heap: when a's worker dies the run is
    // lost, and the caller hears so instead of waiting forever.
    let out = kill_worker_mid_run(&home, "v1", "runHeap");
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    // The error is named so that a caller can recognise it and retry.
    assert!(
        err.contains("vatRestarted: vat v1 restarted: the promises its incarnation ")
            && err.ends_with(" decided were awaiting in memory and are lost\n"),
        "{err}"
    );
    // Both vats work on.
    assert_eq!(home.ok(&["send", "a", "run", "3", "b"]), "3");
    assert_eq!(home.integrity(), "ok");
    home.check();
}

#[test]
fn a_worker_that_dies_twice_on_one_delivery_fails_that_message() {
    let scene = Scene::new();
    let spinner = scene.module("spin", &guest("", "(loop $l (br $l))", ""));
    let flags = ["--fuel", "18000000000000000000", "--deadline-ms", "60000"];
    let mut args = vec!["spawn", "spin", spinner.to_str().unwrap()];
    args.extend_from_slice(&flags);
    scene.home.ok(&args);
    let child = scene
        .home
        .command(&["send", "spin", "poke"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the worker mid-delivery, then kill the one that retries the delivery.
    let mut killed = Vec::new();
    vat_tests::wait_until("workers to kill did not appear", 60, || {
        for pid in worker_pids(child.id(), "v2") {
            if !killed.contains(&pid) {
                vat_tests::kill_hard(pid);
                killed.push(pid);
            }
        }
        killed.len() >= 2
    });
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("spin.poke failed in vat v2 and was rolled back: worker process died"),
        "{err}"
    );
    scene.assert_contained("spin", Fate::RolledBack, "worker process died");
}

/// A guest whose `bringOutYourDead` traps: the collection is retried once in
/// a fresh worker, then the vat is suspended (its data kept), and saying so
/// is the collection's answer.
#[test]
fn a_collection_that_faults_twice_suspends_the_vat() {
    let scene = Scene::new();
    // Byte 9 of `{"type":"bringOutYourDead"}` is `b`.
    let wat = r#"(module
        (memory (export "memory") 1)
        (func (export "vat_abi_version") (result i32) i32.const 1)
        (func (export "vat_alloc") (param i32) (result i32) i32.const 1024)
        (func (export "vat_deliver") (param $p i32) (param $l i32) (result i32)
          (if (i32.eq (i32.load8_u offset=9 (local.get $p)) (i32.const 0x62))
            (then unreachable))
          i32.const 0))"#;
    let module = scene.module("sweeper", wat);
    scene
        .home
        .ok(&["spawn", "sweeper", module.to_str().unwrap()]);
    let err = scene.home.fails(&["collect", "sweeper"]);
    assert!(
        err.contains("vat v2 (sweeper) is suspended: a GC delivery faulted twice"),
        "{err}"
    );
    let listing = scene.home.ok(&["list"]);
    assert!(
        listing.contains(" sweeper root ko2 suspended ("),
        "{listing}"
    );
    let err = scene.home.fails(&["send", "sweeper", "poke"]);
    assert!(err.contains("`vat resume sweeper` restarts it"), "{err}");
    scene.assert_contained_bystander();
}
