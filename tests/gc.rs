//! Kernel garbage collection end to end: objects passed between vats are
//! counted (reachable and recognizable) wherever references to them live, and
//! freed in their exporter when the last one goes. Promise chains and
//! messages queued on promises that settle either way. Each scenario ends
//! with `vat check` recounting everything from the store.
//!
//! The vats are `holder` guests run by a daemon, so what they hold on their
//! heaps lives across commands. `e` (v1) exports the objects in question.

use vat_tests::{Daemon, VatHome};

struct Scene {
    home: VatHome,
    _daemon: Daemon,
}

impl Scene {
    /// A daemon with holder vats `e` (v1), `a` (v2), `b` (v3), `c` (v4), `d` (v5).
    fn new() -> Scene {
        Scene::with_decider_flags(&[])
    }

    /// The same, with `d` spawned with `flags` (such as `--no-pipelining`).
    fn with_decider_flags(flags: &[&str]) -> Scene {
        let home = VatHome::new();
        let daemon = home.start_daemon();
        let module = vat_tests::guest("holder");
        for name in ["e", "a", "b", "c", "d"] {
            let mut args = vec!["spawn", name, module.to_str().unwrap()];
            if name == "d" {
                args.extend_from_slice(flags);
            }
            home.ok(&args);
        }
        Scene {
            home,
            _daemon: daemon,
        }
    }

    /// The promises with messages waiting on them (a record
    /// `kp<N>.promise` is `<state> <refs> <queued> <pinned> <decider>`).
    fn promise_queues(&self) -> Vec<String> {
        self.home
            .dump()
            .into_iter()
            .filter(|(k, v)| {
                k.starts_with("kp")
                    && k.ends_with(".promise")
                    && v.split(' ').nth(2).is_some_and(|queued| queued != "0")
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// Sends, then lets go of what the result showed (the CLI holds shown
    /// references for later commands), so that only the vats hold things.
    fn send(&self, args: &[&str]) -> String {
        let mut full = vec!["send"];
        full.extend_from_slice(args);
        let shown = self.home.ok(&full);
        self.home.ok(&["forget"]);
        shown
    }

    /// The objects `e` exports besides its root.
    fn exported_by_e(&self) -> Vec<String> {
        self.home
            .dump()
            .into_iter()
            .filter(|(k, v)| k.ends_with(".owner") && v == "v1" && k != "ko1.owner")
            .map(|(k, _)| k.trim_end_matches(".owner").to_owned())
            .collect()
    }

    /// The one object `e` exports besides its root.
    fn the_object(&self) -> String {
        let objects = self.exported_by_e();
        assert_eq!(objects.len(), 1, "e exports one object: {objects:?}");
        objects.into_iter().next().unwrap()
    }

    /// (reachable, recognizable) of `ko`.
    fn counts(&self, ko: &str) -> (u64, u64) {
        let text = self.home.get(&format!("{ko}.refs")).unwrap_or_default();
        let (r, c) = text.split_once(',').expect("ko.refs is r,c");
        (r.parse().unwrap(), c.parse().unwrap())
    }

    /// Runs pending GC actions (and e's bringOutYourDead), then expects
    /// nothing of `e`'s but its root to remain.
    fn expect_collected(&self) {
        self.home.ok(&["collect", "e"]);
        assert_eq!(self.exported_by_e(), Vec::<String>::new());
        let e_clist: Vec<String> = self
            .home
            .dump()
            .into_iter()
            .filter(|(k, _)| k.starts_with("v1.c.ko") && k != "v1.c.ko1")
            .map(|(k, _)| k)
            .collect();
        assert!(e_clist.is_empty(), "e's c-list forgot it: {e_clist:?}");
        self.home.check();
    }
}

#[test]
fn two_importers_drop_in_turn_then_the_exporter_frees_it() {
    let scene = Scene::new();
    scene.send(&["a", "take", "e", "x", "x"]);
    scene.send(&["a", "give", "x", "b", "x"]);
    assert_eq!(scene.send(&["b", "call", "x", "describe"]), "\"x\"");
    let x = scene.the_object();
    assert_eq!(scene.counts(&x), (2, 2));
    scene.home.check();

    assert_eq!(scene.send(&["a", "drop", "x"]), "true");
    assert_eq!(scene.counts(&x), (1, 1));
    scene.home.ok(&["collect", "e"]);
    assert_eq!(
        scene.exported_by_e(),
        std::slice::from_ref(&x),
        "b still holds it"
    );
    scene.home.check();

    scene.send(&["b", "drop", "x"]);
    scene.expect_collected();
}

#[test]
fn an_import_dropped_then_received_again_is_reachable_again() {
    let scene = Scene::new();
    scene.send(&["a", "take", "e", "x", "x"]);
    scene.send(&["a", "give", "x", "b", "x"]);
    scene.send(&["a", "drop", "x"]);
    let x = scene.the_object();
    assert_eq!(scene.counts(&x), (1, 1));
    // b hands it back: a imports it anew and can use it.
    scene.send(&["b", "give", "x", "a", "again"]);
    assert_eq!(scene.send(&["a", "call", "again", "describe"]), "\"x\"");
    assert_eq!(scene.counts(&x), (2, 2));
    scene.home.check();
    scene.send(&["a", "drop", "again"]);
    scene.send(&["b", "drop", "x"]);
    scene.expect_collected();
}

#[test]
fn a_reference_held_only_by_a_promise_queue_survives_until_delivered() {
    // d does not take pipelined messages: they wait in the kernel.
    let scene = Scene::with_decider_flags(&["--no-pipelining"]);
    scene.send(&["a", "take", "e", "x", "x"]);
    // a holds d's unresolved promise p and sends p.hold("x", X), which waits in p's queue.
    scene.send(&["a", "ask", "d", "p"]);
    scene.send(&["a", "queueOn", "p", "hold", "x"]);
    scene.send(&["a", "drop", "x"]);
    let x = scene.the_object();
    assert_eq!(
        scene.counts(&x),
        (1, 1),
        "only the queued message refers to it"
    );
    assert_eq!(scene.promise_queues().len(), 1);
    scene.home.ok(&["collect", "e"]);
    assert_eq!(scene.exported_by_e(), std::slice::from_ref(&x));
    scene.home.check();

    // p resolves to c: the queued message moves on, and c holds X.
    scene.send(&["d", "fire", "p", "c"]);
    assert_eq!(scene.send(&["c", "call", "x", "describe"]), "\"x\"");
    assert_eq!(scene.counts(&x), (1, 1));
    scene.home.check();
    scene.send(&["c", "drop", "x"]);
    scene.send(&["a", "drop", "p"]);
    scene.expect_collected();
}

#[test]
fn a_reference_held_only_by_resolution_data_survives_until_read() {
    let scene = Scene::new();
    scene.send(&["d", "take", "e", "x", "x"]);
    scene.send(&["a", "ask", "d", "q"]);
    // d fulfills q with X and forgets X: only q's settlement refers to it.
    scene.send(&["d", "fireHeld", "q", "x"]);
    let x = scene.the_object();
    assert_eq!(scene.counts(&x), (1, 1));
    scene.home.ok(&["collect", "e"]);
    assert_eq!(scene.exported_by_e(), std::slice::from_ref(&x));
    scene.home.check();

    // a reads q: now a holds X, and the settled promise is gone.
    scene.send(&["a", "await", "q"]);
    assert_eq!(scene.send(&["a", "call", "q", "describe"]), "\"x\"");
    assert_eq!(scene.counts(&x), (1, 1));
    scene.home.check();
    scene.send(&["a", "drop", "q"]);
    scene.expect_collected();
}

#[test]
fn a_removed_importer_lets_go_of_its_imports() {
    let scene = Scene::new();
    scene.send(&["a", "take", "e", "x", "x"]);
    scene.send(&["a", "holdDurably", "kept", "e"]);
    let x = scene.the_object();
    assert_eq!(scene.counts(&x), (1, 1));
    // A trap fails that one message; the vat and what it holds stay.
    let err = scene.home.fails(&["send", "a", "trap"]);
    assert!(
        err.contains("a.trap failed in vat v2 and was rolled back"),
        "{err}"
    );
    assert_eq!(scene.counts(&x), (1, 1));
    // Terminated, it still holds its imports (its data is kept)...
    scene.home.ok(&["terminate", "a"]);
    let err = scene.home.fails(&["send", "a", "describe"]);
    assert!(
        err.contains("vat v2 (a) was terminated by its owner"),
        "{err}"
    );
    assert_eq!(scene.counts(&x), (1, 1));
    scene.home.check();
    // ...until `vat rm` deletes its c-list (a slice at a time), and with it the reference.
    scene.home.ok(&["rm", "a"]);
    scene.expect_collected();
    assert!(
        scene.home.dump().iter().all(|(k, _)| !k.starts_with("v2.")
            || k.starts_with("v2.name")
            || k.starts_with("v2.state")
            || k.starts_with("v2.reason")
            || k.starts_with("v2.bundle")
            || k.starts_with("v2.options")
            || k.starts_with("v2.incarnation")
            || k.starts_with("v2.active")
            || k.starts_with("v2.next")),
        "a removed vat keeps only its record"
    );
    assert!(scene.home.ok(&["list"]).contains("v2 a root ko2 removed ("));
    let err = scene.home.fails(&["resume", "a"]);
    assert!(err.contains("was removed"), "{err}");
}

#[test]
fn an_object_whose_exporter_was_terminated_goes_when_its_importers_let_go() {
    let scene = Scene::new();
    scene.send(&["a", "take", "e", "x", "x"]);
    let x = scene.the_object();
    scene.home.ok(&["terminate", "e"]);
    let err = scene.home.fails(&["send", "a", "call", "x", "describe"]);
    assert!(
        err.contains("vat v1 (e) was terminated by its owner"),
        "{err}"
    );
    assert_eq!(scene.counts(&x), (1, 1));
    scene.send(&["a", "drop", "x"]);
    assert_eq!(
        scene.home.get(&format!("{x}.owner")),
        None,
        "deleted at once"
    );
    scene.home.check();
}

#[test]
fn a_promise_chain_through_several_vats_settles_with_the_last_answer() {
    let scene = Scene::new();
    let hops = r#"[{"$ref":"b"},{"$ref":"c"},{"$ref":"d"}]"#;
    assert_eq!(scene.send(&["a", "chain", hops, "42"]), "42");
    // A reference makes the same trip and arrives usable.
    scene.send(&["a", "take", "e", "x", "x"]);
    scene.send(&["a", "give", "x", "b", "x"]);
    let hops = r#"[{"$ref":"c"},{"$ref":"d"}]"#;
    assert_eq!(scene.send(&["a", "chain", hops, "e"]), r#"{"$ref":"e"}"#);
    scene.home.check();
    scene.send(&["a", "drop", "x"]);
    scene.send(&["b", "drop", "x"]);
    scene.expect_collected();
}

#[test]
fn messages_queued_on_a_promise_that_rejects_release_what_they_carry() {
    let scene = Scene::with_decider_flags(&["--no-pipelining"]);
    scene.send(&["a", "take", "e", "x", "x"]);
    scene.send(&["a", "ask", "d", "r"]);
    scene.send(&["a", "queueOn", "r", "hold", "x"]);
    scene.send(&["a", "queueOn", "r", "hold", "x"]);
    scene.send(&["a", "drop", "x"]);
    let x = scene.the_object();
    assert_eq!(scene.counts(&x), (2, 2), "two queued messages carry it");
    scene.send(&["d", "fail", "r", "no such luck"]);
    let err = scene.home.fails(&["send", "a", "await", "r"]);
    assert_eq!(err, "error: no such luck");
    scene.send(&["a", "drop", "r"]);
    scene.expect_collected();
}

#[test]
fn messages_to_a_promise_are_pipelined_to_its_decider_and_follow_its_resolution() {
    let scene = Scene::new();
    scene.send(&["a", "take", "e", "x", "x"]);
    scene.send(&["a", "ask", "d", "p"]);
    scene.send(&["a", "queueOn", "p", "hold", "x"]);
    scene.send(&["a", "drop", "x"]);
    let x = scene.the_object();
    // The message went to d, which decides p: no kernel queue, d holds X.
    assert_eq!(scene.promise_queues(), Vec::<String>::new());
    assert!(
        scene.home.get(&format!("v5.c.{x}")).is_some(),
        "d imported X with the pipelined message"
    );
    assert_eq!(scene.counts(&x), (1, 1));
    scene.home.check();
    // p resolves to c: d sends the message on, c gets X, d lets go of it.
    scene.send(&["d", "fire", "p", "c"]);
    assert_eq!(scene.send(&["c", "call", "x", "describe"]), "\"x\"");
    assert_eq!(scene.home.get(&format!("v5.c.{x}")), None);
    assert_eq!(scene.counts(&x), (1, 1));
    scene.home.check();
    scene.send(&["c", "drop", "x"]);
    scene.send(&["a", "drop", "p"]);
    scene.expect_collected();
}

#[test]
fn pipelined_sends_to_a_promise_that_later_rejects_are_rejected_too() {
    let scene = Scene::new();
    scene.send(&["a", "take", "e", "x", "x"]);
    scene.send(&["a", "ask", "d", "r"]);
    scene.send(&["a", "queueOn", "r", "hold", "x"]);
    scene.send(&["a", "drop", "x"]);
    scene.send(&["d", "fail", "r", "no such luck"]);
    assert_eq!(
        scene.home.fails(&["send", "a", "await", "r"]),
        "error: no such luck"
    );
    // The pipelined message was rejected with its target, and X let go.
    scene.send(&["a", "drop", "r"]);
    scene.expect_collected();
}

#[test]
fn promises_nobody_awaits_are_freed_once_settled() {
    let scene = Scene::new();
    scene.send(&["a", "take", "e", "x", "x"]);
    let promises = |scene: &Scene| {
        scene
            .home
            .dump()
            .iter()
            .filter(|(k, _)| k.starts_with("kp") && k.ends_with(".promise"))
            .count()
    };
    let before = promises(&scene);
    // Each give sends hold(..) and never awaits the answer.
    for round in 0..20 {
        scene.send(&["a", "give", "x", "b", &format!("x{round}")]);
    }
    // The last hold and its answer's notification may still be queued
    // (commands run the queue only until their own result settles).
    scene.send(&["c", "echo", "1"]);
    scene.send(&["c", "echo", "2"]);
    assert_eq!(
        promises(&scene),
        before,
        "fire-and-forget sends leave no promises"
    );
    scene.home.check();
}

#[test]
fn a_promise_passed_on_after_it_settled_arrives_settled() {
    let scene = Scene::new();
    scene.send(&["a", "ask", "d", "p"]);
    scene.send(&["d", "fire", "p", "c"]);
    // a's p settled (and the kernel forgot a's name for it); a passes it on.
    scene.send(&["a", "give", "p", "b", "q"]);
    assert_eq!(scene.send(&["b", "await", "q"]), r#"{"$ref":"c"}"#);
    assert_eq!(scene.send(&["a", "await", "p"]), r#"{"$ref":"c"}"#);
    scene.home.check();
}
