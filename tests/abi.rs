//! Modules built for vat ABI v1 (JSON deliveries and syscalls) run beside
//! those built for v2 (binary): in both worker kinds, talking to each other,
//! keeping their durable state across a restart of the kernel.

use vat_tests::{VatHome, guest};

fn spawn_with(home: &VatHome, name: &str, guest_name: &str, worker: &str) {
    let module = guest(guest_name);
    home.ok(&[
        "spawn",
        name,
        module.to_str().expect("utf-8 path"),
        "--worker",
        worker,
    ]);
}

#[test]
fn v1_and_v2_vats_ping_each_other_in_both_worker_kinds() {
    for worker in ["process", "thread"] {
        let home = VatHome::new();
        spawn_with(&home, "old", "pingpong_abi1", worker);
        spawn_with(&home, "new", "pingpong", worker);
        // Each run is sends, results and notifies in both directions, and a
        // durable flow's journal in the vatstore of the vat that runs it.
        assert_eq!(
            home.ok(&["send", "old", "run", "50", "new"]),
            "50",
            "{worker}"
        );
        assert_eq!(
            home.ok(&["send", "new", "run", "30", "old"]),
            "30",
            "{worker}"
        );
        assert_eq!(home.ok(&["send", "old", "pings"]), "30", "{worker}");
        assert_eq!(home.ok(&["send", "new", "pings"]), "50", "{worker}");
        home.check();
    }
}

#[test]
fn a_v1_vat_keeps_its_durable_objects_and_exports_across_restarts() {
    let home = VatHome::new();
    let daemon = home.start_daemon();
    home.spawn("things", "things_abi1");
    assert_eq!(home.ok(&["send", "things", "make", "100"]), "100");
    home.ok(&["send", "things", "thing", "7", "--as", "seven"]);
    assert_eq!(home.ok(&["send", "seven", "relabel", "renamed"]), "\"t7\"");
    drop(daemon);
    // No daemon now: this `vat` process's kernel starts the vat afresh.
    assert_eq!(home.ok(&["send", "things", "count"]), "100");
    assert_eq!(
        home.ok(&["send", "seven", "describe"]),
        "\"thing 7: renamed\""
    );
    home.check();
}
