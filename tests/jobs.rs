//! IPVM jobs end to end: the example jobs give the right outputs and a
//! second run is all memo hits; each validation error from a real malformed
//! job file; maxGas runs onError; SIGKILL mid-job and a rerun completes with
//! no task run twice and no receipt duplicated.

use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};
use vat_tests::{VatHome, kill_hard, wait_until};

struct Jobs {
    home: VatHome,
    tasks: String,
}

impl Jobs {
    /// A home with the tasks module stored as a bundle.
    fn new() -> Jobs {
        let home = VatHome::new();
        let tasks = vat_tests::guest("tasks");
        let cid = home.ok(&["bundle", "add", tasks.to_str().unwrap()]);
        assert!(cid.starts_with("bafkrei"), "{cid}");
        Jobs { home, tasks: cid }
    }

    /// Writes `job` (with TASKS_CID replaced) to a file in the home, signed
    /// unless `sign` is false.
    fn write(&self, name: &str, job: &Json, sign: bool) -> PathBuf {
        let path = self.home.path().join(name);
        let mut text = job.to_string().replace("TASKS_CID", &self.tasks);
        if !sign {
            // Unsigned, but from a well-formed requestor: this home.
            let did = self.home.ok(&["key"]);
            text = text.replace("\"requestor\":\"\"", &format!("\"requestor\":\"{did}\""));
        }
        std::fs::write(&path, text).unwrap();
        if sign {
            let signed = self.home.ok(&["job", "sign", path.to_str().unwrap()]);
            assert!(signed.starts_with("signed job bafyrei"), "{signed}");
        }
        path
    }

    /// An example job from `examples/jobs`.
    fn example(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(
            vat_tests::repo_root().join(format!("examples/jobs/{name}.json")),
        )
        .unwrap();
        self.write(
            &format!("{name}.json"),
            &serde_json::from_str(&text).unwrap(),
            true,
        )
    }

    /// Runs a job: (job id, outputs, progress lines).
    fn run(&self, path: &Path) -> (String, Json, Vec<String>) {
        let (ok, id, outputs, stderr) = self.run_job(path);
        assert!(ok, "job run failed: {outputs}{stderr}");
        let progress = stderr.lines().map(|l| l.trim().to_owned()).collect();
        (id, outputs, progress)
    }

    /// Runs a job that must fail after running: (job id, outputs, the error line).
    fn run_failing(&self, path: &Path) -> (String, Json, String) {
        let (ok, id, outputs, stderr) = self.run_job(path);
        assert!(!ok, "the job run succeeded");
        (id, outputs, stderr.lines().last().unwrap().to_owned())
    }

    /// `vat job run`: (whether it succeeded, the job id, its outputs, stderr).
    fn run_job(&self, path: &Path) -> (bool, String, Json, String) {
        let out = self.home.run(&["job", "run", path.to_str().unwrap()]);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        let mut lines = stdout.lines();
        let id = lines
            .next()
            .and_then(|l| l.strip_prefix("job "))
            .unwrap_or_else(|| panic!("no job id: {stdout}{stderr}"));
        let outputs = serde_json::from_str(
            lines
                .next()
                .unwrap_or_else(|| panic!("no outputs: {stdout}{stderr}")),
        )
        .unwrap();
        (out.status.success(), id.to_owned(), outputs, stderr)
    }

    /// A seed example from `examples/jobs`, with the seeds' module CIDs
    /// replaced by the tasks module's and nothing else changed.
    fn seed_example(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(
            vat_tests::repo_root().join(format!("examples/jobs/{name}.json")),
        )
        .unwrap();
        let text = SEED_MODULE_CIDS
            .iter()
            .fold(text, |text, cid| text.replace(cid, "TASKS_CID"));
        self.write(
            &format!("{name}.json"),
            &serde_json::from_str(&text).unwrap(),
            true,
        )
    }

    fn fails(&self, path: &Path) -> String {
        self.home.fails(&["job", "run", path.to_str().unwrap()])
    }

    fn receipts(&self, id: &str) -> Vec<Json> {
        self.home
            .ok(&["job", "receipts", id])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn stored_receipts(&self) -> usize {
        self.home
            .dump()
            .iter()
            .filter(|(k, _)| k.starts_with("ipvm.receipt."))
            .count()
    }
}

fn wasm(func: &str, input: Json) -> Json {
    json!({"type": "ipvm/wasm", "with": "TASKS_CID", "func": func, "input": input, "maxGas": 50_000})
}

/// The module CIDs seed 001's examples name.
const SEED_MODULE_CIDS: [&str; 2] = [
    "bafkreie53mk3duiynh5pzmhuzadaif6hpizod5wr6dt34canmxo7j7jfcu",
    "bafkreiegbnixdoqsohfz5oninnhpcpwsf7rg6ewnx2lvhp7p5axejrph64",
];

#[test]
fn the_seeds_jobs_run_as_written_with_only_the_cids_substituted() {
    let jobs = Jobs::new();
    // Named inputs, the label as the function, a `from` followed by name.
    let (_, outputs, progress) = jobs.run(&jobs.seed_example("seed-pipelining"));
    assert_eq!(
        outputs,
        json!({"fullName": {"ok": "Boris Mann"}, "count": {"ok": 10}})
    );
    let order: Vec<&String> = progress.iter().filter(|l| l.ends_with("started")).collect();
    assert_eq!(order, ["fullName: started", "count: started"]);
    // `on: {error, success}` and a maxGas of 4600 gas.
    let (id, outputs, _) = jobs.run(&jobs.seed_example("seed-wasm"));
    assert_eq!(outputs, json!({"fullName": {"ok": "Boris Mann"}}));
    let fuel = jobs.receipts(&id)[0]["receipt"]["fuel"].as_u64().unwrap();
    assert!(fuel > 0 && fuel <= 4_600_000, "{fuel}");
    // A cycle written with named inputs is found and named.
    let cycle = jobs.write(
        "cycle.json",
        &job(json!({
            "a": {"type": "wasm/1.0", "with": "TASKS_CID", "input": [{"x": {"from": "b"}}]},
            "b": {"type": "ipvm/wasm/1.0", "with": "TASKS_CID", "input": [{"y": {"from": "a", "out": 0}}]},
        })),
        true,
    );
    assert_eq!(
        jobs.fails(&cycle),
        "error: the job has a cycle: a -> b -> a"
    );
    // on.success runs after a success, on.error after a failure only.
    let handlers = jobs.write(
        "handlers.json",
        &job(json!({
            "fine": {"type": "wasm/1.0", "with": "TASKS_CID", "func": "count", "input": [{"t": "abc"}],
                     "on": {"success": ["cheer"], "error": ["mourn"]}},
            "cheer": wasm("count", json!(["yay"])),
            "mourn": wasm("count", json!(["oh"])),
        })),
        true,
    );
    let (_, outputs, _) = jobs.run(&handlers);
    assert_eq!(
        outputs,
        json!({"fine": {"ok": 3}, "cheer": {"ok": 3}, "mourn": {"skipped": true}})
    );
}

fn job(run: Json) -> Json {
    json!({"type": "ipvm/job", "version": "0.1.0", "requestor": "", "nonce": "n1", "run": run})
}

#[test]
fn the_example_jobs_give_their_outputs_and_a_second_run_is_all_memo_hits() {
    let jobs = Jobs::new();
    let pipeline = jobs.example("pipeline");
    let (id, outputs, progress) = jobs.run(&pipeline);
    assert_eq!(
        outputs,
        json!({"name": {"ok": "Ada Lovelace"}, "length": {"ok": 12}})
    );
    assert!(
        progress.contains(&"name: started".to_owned()),
        "{progress:?}"
    );
    let receipts = jobs.receipts(&id);
    assert_eq!(receipts.len(), 2);
    for receipt in &receipts {
        let receipt = &receipt["receipt"];
        assert!(receipt["fuel"].as_u64().unwrap() > 0, "{receipt}");
        assert!(receipt["ran"].as_str().unwrap().starts_with("bafyrei"));
        assert!(receipt["sig"].as_str().unwrap().starts_with('z'));
    }

    let wordcount = jobs.example("wordcount");
    let (_, outputs, _) = jobs.run(&wordcount);
    assert_eq!(
        outputs["map2"]["ok"],
        json!({"barks": 1, "dog": 1, "fox": 1, "runs": 1, "the": 2})
    );
    assert_eq!(outputs["reduce"]["ok"]["the"], 5);
    assert_eq!(outputs["reduce"]["ok"]["fox"], 3);
    assert_eq!(outputs["reduce"]["ok"]["dog"], 3);
    let stored = jobs.stored_receipts();

    // Signed again (a new nonce, so a new job), every task's receipt exists.
    let again = jobs.example("wordcount");
    let (_, outputs_again, progress) = jobs.run(&again);
    assert_eq!(outputs_again, outputs);
    assert_eq!(progress.len(), 4, "{progress:?}");
    assert!(
        progress
            .iter()
            .all(|l| l.ends_with("(receipt found: not run again)")),
        "{progress:?}"
    );
    assert_eq!(
        jobs.stored_receipts(),
        stored,
        "memo hits write no receipts"
    );
    let status = jobs.home.ok(&["job", "status", &id]);
    assert!(status.contains("length: ok bafyrei"), "{status}");
    jobs.home.check();
}

#[test]
fn each_malformed_job_is_refused_with_what_is_wrong_and_runs_nothing() {
    let jobs = Jobs::new();
    let before = jobs.home.dump();
    let cases: Vec<(&str, Json, bool, &str)> = vec![
        (
            "unknown-label.json",
            job(json!({"a": wasm("count", json!([{"from": "nope"}]))})),
            true,
            "error: task \"a\" names unknown label \"nope\"",
        ),
        (
            "unknown-cid.json",
            job(
                json!({"a": {"type": "ipvm/wasm", "with": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "func": "count", "input": ["x"]}}),
            ),
            true,
            "error: task \"a\" names unknown CID bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        ),
        (
            "cycle.json",
            job(json!({
                "a": wasm("count", json!([{"from": "b"}])),
                "b": wasm("count", json!([{"from": "a"}])),
            })),
            true,
            "error: the job has a cycle: a -> b -> a",
        ),
        (
            "malformed-task.json",
            job(json!({"a": {"type": "ipvm/teleport", "with": "TASKS_CID"}})),
            true,
            "error: malformed task \"a\": unknown task type \"ipvm/teleport\" (ipvm/wasm, ipvm/wasm/1.0, wasm/1.0 or ipvm/effect)",
        ),
        (
            "mixed-inputs.json",
            job(json!({"a": wasm("fullName", json!([{"first": "Ada"}, "Lovelace"]))})),
            true,
            "error: malformed task \"a\": inputs are all named ({name: value}) or all positional",
        ),
        (
            "named-twice.json",
            job(json!({"a": wasm("fullName", json!([{"first": "Ada"}, {"first": "Bea"}]))})),
            true,
            "error: malformed task \"a\": input \"first\" is named twice",
        ),
        (
            "bad-on.json",
            job(
                json!({"a": {"type": "wasm/1.0", "with": "TASKS_CID", "func": "count", "input": ["x"], "on": {"error": "b"}}}),
            ),
            true,
            "error: malformed task \"a\": on.error must be a list of labels",
        ),
        (
            "unsigned.json",
            job(json!({"a": wasm("count", json!(["x"]))})),
            false,
            "error: the job is not signed (sign it with `vat job sign`)",
        ),
        (
            "ungranted.json",
            job(
                json!({"a": {"type": "ipvm/effect", "with": "treasury", "do": "withdraw", "input": [5]}}),
            ),
            true,
            "error: task \"a\": effect on \"treasury\", which the requestor was not granted",
        ),
    ];
    for (name, job, sign, expected) in cases {
        let path = jobs.write(name, &job, sign);
        assert_eq!(jobs.fails(&path), expected, "{name}");
    }
    // A job changed after it was signed.
    let path = jobs.write(
        "tampered.json",
        &job(json!({"a": wasm("count", json!(["x"]))})),
        true,
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"x\"", "\"y\"");
    std::fs::write(&path, text).unwrap();
    let err = jobs.fails(&path);
    assert!(
        err.starts_with("error: bad signature: it does not verify against did:key:z"),
        "{err}"
    );
    // A job signed by someone else's key: valid, but not authorized here.
    let other = VatHome::new();
    let foreign = jobs.write(
        "foreign.json",
        &job(json!({"a": wasm("count", json!(["x"]))})),
        false,
    );
    other.ok(&["job", "sign", foreign.to_str().unwrap()]);
    let err = jobs.fails(&foreign);
    assert!(err.contains("may not run jobs here"), "{err}");
    // Nothing ran: the store only gained what signing and validation never write.
    let after = jobs.home.dump();
    assert_eq!(after, before, "refused jobs change nothing");
}

#[test]
fn a_task_out_of_gas_fails_and_runs_its_on_error_and_always_tasks() {
    let jobs = Jobs::new();
    let path = jobs.write(
        "gas.json",
        &job(json!({
            "heavy": {"type": "ipvm/wasm", "with": "TASKS_CID", "func": "spin", "input": [100_000_000],
                      "maxGas": 1_000, "onError": ["cleanup"], "always": ["report"]},
            "cleanup": wasm("fullName", json!(["out of", "gas"])),
            "report": wasm("count", json!(["done"])),
            "after": wasm("count", json!([{"from": "heavy"}])),
            "fine": {"type": "ipvm/wasm", "with": "TASKS_CID", "func": "spin", "input": [10],
                     "onError": ["never"]},
            "never": wasm("count", json!(["x"])),
        })),
        true,
    );
    let (id, outputs, error) = jobs.run_failing(&path);
    // `after` failed (its input did) and names no handler: the job fails.
    assert_eq!(
        error,
        "error: task after failed with no onError or always handler"
    );
    let heavy = outputs["heavy"]["error"].as_str().unwrap();
    assert!(heavy.contains("fuel_per_delivery (1000000)"), "{heavy}");
    assert_eq!(outputs["cleanup"], json!({"ok": "out of gas"}));
    assert_eq!(outputs["report"], json!({"ok": 4}));
    assert_eq!(
        outputs["after"],
        json!({"error": "input from task heavy failed"})
    );
    assert_eq!(outputs["fine"], json!({"ok": 10}));
    assert_eq!(outputs["never"], json!({"skipped": true}));
    let receipts = jobs.receipts(&id);
    let heavy = receipts.iter().find(|r| r["task"] == "heavy").unwrap();
    assert_eq!(heavy["receipt"]["fuel"], 1_000_000);
    jobs.home.check();
}

#[test]
fn an_effect_task_sends_to_a_capability_the_owner_holds() {
    let jobs = Jobs::new();
    jobs.home.spawn("counter", "counter");
    let path = jobs.write(
        "effect.json",
        &job(json!({
            "bump": {"type": "ipvm/effect", "with": "counter", "do": "increment", "input": []},
            "size": wasm("count", json!([{"from": "name"}])),
            "name": wasm("fullName", json!(["count", {"from": "bump"}])),
        })),
        true,
    );
    let (_, outputs, error) = jobs.run_failing(&path);
    assert_eq!(outputs["bump"], json!({"ok": 1}));
    // fullName takes strings: a number input fails the task, and its
    // dependent; neither names a handler, so the job fails.
    assert_eq!(
        error,
        "error: task name, size failed with no onError or always handler"
    );
    assert!(
        outputs["name"]["error"]
            .as_str()
            .unwrap()
            .contains("must be a string")
    );
    assert_eq!(jobs.home.ok(&["send", "counter", "get"]), "1");
}

#[test]
fn a_job_killed_midway_completes_on_rerun_without_running_a_task_twice() {
    let jobs = Jobs::new();
    let spin = |n: u64| json!({"type": "ipvm/wasm", "with": "TASKS_CID", "func": "spin", "input": [n], "maxGas": 10_000_000u64});
    let path = jobs.write(
        "long.json",
        &job(json!({
            "t1": spin(300_000_000),
            // Each its own gas, so each is a distinct instruction (no memo hits).
            "t2": {"type": "ipvm/wasm", "with": "TASKS_CID", "func": "spin", "input": [{"from": "t1"}], "maxGas": 10_000_001u64},
            "t3": {"type": "ipvm/wasm", "with": "TASKS_CID", "func": "spin", "input": [{"from": "t2"}], "maxGas": 10_000_002u64},
            "t4": {"type": "ipvm/wasm", "with": "TASKS_CID", "func": "spin", "input": [{"from": "t3"}], "maxGas": 10_000_003u64},
        })),
        true,
    );
    let mut child = jobs
        .home
        .command(&["job", "run", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the kernel once the first task has its receipt.
    let store = jobs.home.path().join("store.sqlite");
    wait_until("the first task did not finish", 60, || {
        let conn = rusqlite::Connection::open_with_flags(
            &store,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        );
        conn.ok()
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM kv WHERE key LIKE 'job.%.t.%' AND value LIKE 'ok %'",
                    [],
                    |row| row.get::<_, i64>(0),
                )
                .ok()
            })
            .is_some_and(|n| n >= 1)
    });
    kill_hard(child.id());
    child.wait().unwrap();
    let done_before: Vec<String> = jobs
        .home
        .dump()
        .into_iter()
        .filter(|(k, v)| k.starts_with("job.") && k.contains(".t.") && v.starts_with("ok "))
        .map(|(k, _)| k.rsplit('.').next().unwrap().to_owned())
        .collect();
    assert!(
        !done_before.is_empty() && done_before.len() < 4,
        "{done_before:?}"
    );

    let (id, outputs, progress) = jobs.run(&path);
    for label in ["t1", "t2", "t3", "t4"] {
        assert_eq!(outputs[label], json!({"ok": 300_000_000}), "{label}");
    }
    for label in &done_before {
        assert!(
            !progress.contains(&format!("{label}: started")),
            "{label} finished before the kill and ran again: {progress:?}"
        );
    }
    assert_eq!(jobs.receipts(&id).len(), 4);
    assert_eq!(jobs.stored_receipts(), 4, "no receipt duplicated");
    assert_eq!(jobs.home.integrity(), "ok");
    jobs.home.check();
}

/// A UCAN delegation from `from` (written to a file in `to`'s home).
fn delegation(from: &VatHome, to: &VatHome, file: &str, args: &[&str]) -> PathBuf {
    let to_did = to.ok(&["key"]);
    let mut all = vec!["ucan", "delegate", to_did.as_str()];
    all.extend(args);
    let path = to.path().join(file);
    std::fs::write(&path, from.ok(&all)).unwrap();
    path
}

/// Signs the job at `path` as `requestor`, with `proof` as its delegation.
fn sign_as(requestor: &VatHome, path: &Path, proof: Option<&Path>) {
    let mut args = vec!["job", "sign", path.to_str().unwrap()];
    if let Some(proof) = proof {
        args.extend(["--proof", proof.to_str().unwrap()]);
    }
    requestor.ok(&args);
}

/// An effect on the owner's counter, by `other`: not covered by
/// `/ipvm/run` (`pure_only`), and within `/ipvm/effect/counter`
/// (`get_only`) only as far as its policy allows.
fn effects_go_only_as_far_as_the_grant(
    jobs: &Jobs,
    other: &VatHome,
    pure_only: &Path,
    get_only: &Path,
) {
    let sign_as_other = |path: &Path, proof: &Path| sign_as(other, path, Some(proof));
    let effect =
        |method: &str| json!({"e": {"type": "ipvm/effect", "with": "counter", "do": method}});
    let bump = jobs.write("bump.json", &job(effect("increment")), false);
    sign_as_other(&bump, pure_only);
    assert!(jobs.fails(&bump).contains("InvalidCommand"));
    sign_as_other(&bump, get_only);
    assert!(jobs.fails(&bump).contains("MatchError"));
    let read = jobs.write("read.json", &job(effect("get")), false);
    sign_as_other(&read, get_only);
    let (_, outputs, _) = jobs.run(&read);
    assert_eq!(outputs, json!({"e": {"ok": 0}}));
    let missing = jobs.write(
        "missing.json",
        &job(json!({"e": {"type": "ipvm/effect", "with": "nothing", "do": "get"}})),
        false,
    );
    sign_as_other(&missing, get_only);
    assert_eq!(
        jobs.fails(&missing),
        "error: task \"e\": effect on \"nothing\", which the requestor was not granted"
    );
}

#[test]
fn another_requestor_runs_jobs_only_as_far_as_the_owner_delegated() {
    let jobs = Jobs::new();
    jobs.home.spawn("counter", "counter");
    let other = VatHome::new();
    let pure_only = delegation(&jobs.home, &other, "pure.ucan", &["--cmd", "/ipvm/run"]);
    let later = delegation(
        &jobs.home,
        &other,
        "later.ucan",
        &["--not-before-in-s", "3600"],
    );
    let get_only = delegation(
        &jobs.home,
        &other,
        "get.ucan",
        &[
            "--cmd",
            "/ipvm/effect/counter",
            "--policy",
            r#"[["==", ".do", "get"]]"#,
        ],
    );
    let pure = jobs.write(
        "pure.json",
        &job(json!({"a": wasm("count", json!(["four"]))})),
        false,
    );
    let sign_as_other = |path: &Path, proof: Option<&Path>| sign_as(&other, path, proof);
    sign_as_other(&pure, None);
    let err = jobs.fails(&pure);
    assert!(
        err.contains("may not run jobs here: task \"a\": InvalidClaim"),
        "{err}"
    );
    sign_as_other(&pure, Some(&later));
    assert!(jobs.fails(&pure).contains("TooEarly"));
    sign_as_other(&pure, Some(&get_only));
    assert!(jobs.fails(&pure).contains("InvalidCommand"));
    sign_as_other(&pure, Some(&pure_only));
    let (_, outputs, _) = jobs.run(&pure);
    assert_eq!(outputs, json!({"a": {"ok": 4}}));

    effects_go_only_as_far_as_the_grant(&jobs, &other, &pure_only, &get_only);
    assert_eq!(jobs.home.ok(&["send", "counter", "get"]), "0");
}

/// Under the daemon, an effect task on a capability of another kernel (a
/// pet name `vat enliven` bound) goes out over CapTP, and the job waits
/// for the peer's answer.
#[test]
fn an_effect_task_on_another_kernels_capability_waits_for_its_answer() {
    let jobs = Jobs::new();
    let far = VatHome::new();
    far.spawn("counter", "counter");
    let _far_daemon = far.start_listening("127.0.0.1:0");
    let uri = far.ok(&["share", "counter"]);
    let _daemon = jobs.home.start_daemon();
    jobs.home.ok(&["enliven", &uri, "--as", "far-counter"]);
    let path = jobs.write(
        "far.json",
        &job(json!({
            "bump": {"type": "ipvm/effect", "with": "far-counter", "do": "increment", "input": []},
            "again": {"type": "ipvm/effect", "with": "far-counter", "do": "increment", "input": [],
                      "on": {"success": ["read"]}},
            "read": {"type": "ipvm/effect", "with": "far-counter", "do": "get", "input": []},
        })),
        true,
    );
    let (_, outputs, _) = jobs.run(&path);
    assert_eq!(
        outputs["bump"]["ok"].as_u64().unwrap() + outputs["again"]["ok"].as_u64().unwrap(),
        3
    );
    assert_eq!(outputs["read"], json!({"ok": 2}));
    assert_eq!(far.ok(&["send", "counter", "get"]), "2");
}
