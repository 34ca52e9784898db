//! The CapTP engine in process, at its middle boundary: frames in from a
//! peer, frames out after the commit, and the kernel's `check()` after
//! every step. A pingpong vat (whose `ping(x)` answers `x`, references
//! too) stands behind a sturdy ref; the peer is a client connection.
//!
//! Needs the guests built (`scripts/build-guests`), as `scripts/test` does.

#[path = "../../kernel/benches/common/mod.rs"]
mod common;

use std::collections::HashMap;

use captp::wire::{
    self, Body, Call, CallContent, CapDescriptor, Embargo, Limits, Message as Wire, ResultContent,
    Return, ReturnKind, ReturnOutcome, Target,
};
use captp_engine::Peers;
use kernel::{CommitPolicy, Kernel, VatOptions, WorkerKind};
use proptest::prelude::*;
use swingstore::{Durability, SwingStore};
use vom::{CapData, Value};

/// A kernel with a pingpong vat behind a sturdy ref, and one client peer.
struct Harness {
    kernel: Kernel,
    peer: kernel::EndpointId,
    swiss: String,
    /// What each of the peer's questions expects back.
    asked: HashMap<u32, ReturnKind>,
    limits: Limits,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_peer(|kernel| kernel.add_peer("client", false).unwrap())
    }

    /// A harness whose peer is another kernel's session: what it is sent
    /// is kept until it acknowledges it.
    fn session() -> Harness {
        Harness::with_peer(|kernel| kernel.session_peer("did:key:zHarness", None).unwrap())
    }

    fn with_peer(add_peer: impl FnOnce(&mut Kernel) -> kernel::EndpointId) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        let mut kernel = Kernel::new(store, CommitPolicy::EVERY_CRANK).unwrap();
        captp_engine::attach(&mut kernel);
        let options = VatOptions {
            worker: WorkerKind::Thread,
            ..VatOptions::default()
        };
        let root = kernel
            .spawn_vat("pong", &common::guest_wasm("pingpong"), options)
            .unwrap();
        let swiss = kernel.share(&root).unwrap();
        let peer = add_peer(&mut kernel);
        kernel.commit().unwrap();
        Harness {
            kernel,
            peer,
            swiss,
            asked: HashMap::new(),
            limits: Limits::default(),
            _dir: dir,
        }
    }

    /// Sends one frame as the peer, runs the kernel until it is idle, and
    /// returns what the peer is sent (decoded), after checking the tables.
    fn send(&mut self, message: &Wire) -> Vec<Wire> {
        self.note_question(message);
        let frame = wire::encode(message);
        let peer = self.peer.clone();
        let decoded = wire::decode(&frame, &self.limits, &|q| self.kernel.return_kind(&peer, q));
        self.kernel.receive_message(&peer, decoded).unwrap();
        while self.kernel.step().unwrap() {}
        self.kernel.commit().unwrap();
        self.assert_consistent(message);
        let out: Vec<Wire> = self
            .kernel
            .take_outbound()
            .into_iter()
            .map(|(to, frame)| {
                assert_eq!(to, self.peer, "frames go to the peer that is connected");
                let asked = &self.asked;
                wire::decode(&frame, &self.limits, &|q| asked.get(&q).copied())
                    .unwrap_or_else(|e| panic!("the engine sent a frame it cannot decode: {e}"))
            })
            .collect();
        out
    }

    fn note_question(&mut self, message: &Wire) {
        let (question, kind) = match message {
            Wire::Bootstrap { question } => (*question, ReturnKind::Bootstrap),
            Wire::Call(Call {
                question, content, ..
            }) => match content {
                CallContent::Restore { .. } => (*question, ReturnKind::Restore),
                _ => (*question, ReturnKind::Exo),
            },
            _ => return,
        };
        self.asked.insert(question, kind);
    }

    fn assert_consistent(&mut self, after: &Wire) {
        let (problems, _) = self.kernel.check().unwrap();
        assert!(problems.is_empty(), "after {after:?}: {problems:#?}");
    }

    fn connected(&self) -> bool {
        self.kernel
            .peers()
            .unwrap()
            .iter()
            .any(|p| p.id == self.peer && !p.gone)
    }
}

fn restore(question: u32, bootstrap: u32, swiss: &str) -> Wire {
    Wire::Call(Call {
        question,
        target: Target::Answer {
            question: bootstrap,
            transform: vec![],
        },
        content: CallContent::Restore {
            swiss: swiss.to_owned(),
        },
        caps: vec![],
    })
}

/// `Exo.call(method, args)` on `target`; each reference in `args` is
/// the next of `caps`.
fn exo_call(
    question: u32,
    target: Target,
    method: &str,
    args: &Value,
    caps: Vec<CapDescriptor>,
) -> Wire {
    let data = vom::capdata::encode(args);
    Wire::Call(Call {
        question,
        target,
        content: CallContent::Exo {
            method: method.to_owned(),
            args: Body {
                body: data.body,
                caps: (0..data.slots.len() as u32).collect(),
            },
        },
        caps,
    })
}

fn on_answer(question: u32, field: u16) -> Target {
    Target::Answer {
        question,
        transform: vec![field],
    }
}

/// The result of an `Exo.call` return, with its slots named by the
/// descriptors the engine sent.
fn exo_result(message: &Wire) -> (Value, Vec<CapDescriptor>) {
    let Wire::Return(Return {
        outcome:
            ReturnOutcome::Results {
                content: ResultContent::Exo { result, .. },
                caps,
            },
        ..
    }) = message
    else {
        panic!("expected an Exo.call result, got {message:?}")
    };
    let slots = result.caps.iter().map(|i| format!("slot{i}")).collect();
    let data = CapData {
        body: result.body.clone(),
        slots,
    };
    (vom::capdata::decode(&data).unwrap(), caps.clone())
}

/// Bootstrap, restore, and the restored object's export id.
fn restored(harness: &mut Harness) -> u32 {
    let out = harness.send(&Wire::Bootstrap { question: 0 });
    assert!(matches!(&out[..], [Wire::Return(_)]), "{out:?}");
    let swiss = harness.swiss.clone();
    let out = harness.send(&restore(1, 0, &swiss));
    let [
        Wire::Return(Return {
            outcome: ReturnOutcome::Results { caps, .. },
            ..
        }),
    ] = &out[..]
    else {
        panic!("restore answers with the object: {out:?}")
    };
    let [CapDescriptor::SenderHosted(id)] = caps[..] else {
        panic!("the object is our export: {caps:?}")
    };
    id
}

#[test]
fn a_call_on_a_restored_object_is_answered_and_the_tables_stay_consistent() {
    let mut harness = Harness::new();
    let pong = restored(&mut harness);
    let out = harness.send(&exo_call(
        2,
        Target::Imported(pong),
        "ping",
        &Value::Array(vec![Value::from(7u64)]),
        vec![],
    ));
    let [answer] = &out[..] else {
        panic!("one answer: {out:?}")
    };
    assert_eq!(exo_result(answer).0, Value::from(7u64));
    harness.send(&Wire::Finish {
        question: 2,
        release_result_caps: false,
    });
}

fn ping(harness: &mut Harness, question: u32, pong: u32) {
    let out = harness.send(&exo_call(
        question,
        Target::Imported(pong),
        "ping",
        &Value::Array(vec![Value::from(u64::from(question))]),
        vec![],
    ));
    assert_eq!(out.len(), 1, "one answer: {out:?}");
}

#[test]
fn acknowledged_session_frames_are_forgotten_and_the_rest_kept_for_resending() {
    let mut harness = Harness::session();
    let pong = restored(&mut harness);
    for question in 2..6 {
        ping(&mut harness, question, pong);
    }
    let peer = harness.peer.clone();
    // The bootstrap's and the restore's returns, and four answers.
    let kept = harness.kernel.session_frames_from(&peer, 0).unwrap();
    assert_eq!(kept.len(), 6);

    harness.kernel.session_acknowledged(&peer, 4).unwrap();
    harness.kernel.commit().unwrap();
    let left = harness.kernel.session_frames_from(&peer, 0).unwrap();
    assert_eq!(
        left,
        kept[4..],
        "the two not acknowledged are kept, in order"
    );
    // Acknowledging again what was acknowledged changes nothing.
    harness.kernel.session_acknowledged(&peer, 3).unwrap();
    assert_eq!(harness.kernel.session_frames_from(&peer, 0).unwrap(), left);

    // A count past what was sent forgets what there is, and later frames
    // are kept as before.
    harness
        .kernel
        .session_acknowledged(&peer, u64::MAX)
        .unwrap();
    harness.kernel.commit().unwrap();
    assert!(
        harness
            .kernel
            .session_frames_from(&peer, 0)
            .unwrap()
            .is_empty()
    );
    ping(&mut harness, 6, pong);
    assert_eq!(
        harness.kernel.session_frames_from(&peer, 6).unwrap().len(),
        1
    );
    harness.assert_consistent(&Wire::Bootstrap { question: 0 });
}

#[test]
fn check_counts_what_a_peers_answers_hold_and_reports_a_peer_out_of_place() {
    let mut harness = Harness::new();
    restored(&mut harness);
    let peer = harness.peer.clone();
    let problems_after = |harness: &mut Harness, key: String, value: Option<&str>| {
        harness
            .kernel
            .in_crank(|k| match value {
                Some(value) => k.tables().set(&key, value),
                None => k.tables().delete(&key),
            })
            .unwrap();
        harness.kernel.check().unwrap().0
    };
    // The answer to the restore holds the object: without the record, the
    // object's count has a reference nothing explains.
    let problems = problems_after(&mut harness, format!("{peer}.a.1"), None);
    assert!(
        problems.iter().any(|p| p.contains("places refer to it")),
        "a missing answer leaves a count unexplained: {problems:#?}"
    );
    let problems = problems_after(&mut harness, format!("{peer}.state"), Some("confused"));
    assert!(
        problems.contains(&format!("{peer} has state Some(\"confused\")")),
        "{problems:#?}"
    );
}

#[test]
fn a_reference_sent_in_comes_back_as_the_peers_own() {
    let mut harness = Harness::new();
    let pong = restored(&mut harness);
    let arg = Value::Array(vec![Value::Remotable(vom::capdata::Ref::new("slot0"))]);
    let out = harness.send(&exo_call(
        2,
        Target::Imported(pong),
        "ping",
        &arg,
        vec![CapDescriptor::SenderHosted(40)],
    ));
    let [answer] = &out[..] else {
        panic!("one answer: {out:?}")
    };
    let (_, caps) = exo_result(answer);
    assert!(
        caps.iter().all(|c| *c == CapDescriptor::ReceiverHosted(40)),
        "our own export comes back as ours: {caps:?}"
    );
}

/// Question `question`: `pong.ping(pong)`, whose answer is pong itself.
fn ping_itself(harness: &mut Harness, question: u32, pong: u32) {
    let arg = Value::Array(vec![Value::Remotable(vom::capdata::Ref::new("slot0"))]);
    harness.send(&exo_call(
        question,
        Target::Imported(pong),
        "ping",
        &arg,
        vec![CapDescriptor::ReceiverHosted(pong)],
    ));
}

/// The return for `question` among the frames `out`.
fn answer_to(out: &[Wire], question: u32) -> &Wire {
    out.iter()
        .find(|m| matches!(m, Wire::Return(Return { answer, .. }) if *answer == question))
        .unwrap_or_else(|| panic!("question {question} is answered: {out:?}"))
}

#[test]
fn a_call_pipelined_on_an_answer_reaches_the_object_it_resolves_to() {
    let mut harness = Harness::new();
    let pong = restored(&mut harness);
    // ping(pong) answers pong itself; a ping on that answer's `object`
    // field goes to pong before the peer has seen the first answer.
    ping_itself(&mut harness, 2, pong);
    let out = harness.send(&exo_call(
        3,
        on_answer(2, 1),
        "ping",
        &Value::Array(vec![Value::from(9u64)]),
        vec![],
    ));
    assert_eq!(exo_result(answer_to(&out, 3)).0, Value::from(9u64));
}

#[test]
fn an_answer_passed_as_an_argument_arrives_as_the_object_it_resolved_to() {
    let mut harness = Harness::new();
    let pong = restored(&mut harness);
    ping_itself(&mut harness, 2, pong);
    let arg = Value::Array(vec![Value::Remotable(vom::capdata::Ref::new("slot0"))]);
    // As a C++ client passes `makePurse(...).object`: the answer's object
    // field as an argument. By delivery it has resolved to pong, and the
    // vat is handed pong (which ping sends back), not a promise.
    let out = harness.send(&exo_call(
        3,
        Target::Imported(pong),
        "ping",
        &arg,
        vec![CapDescriptor::ReceiverAnswer {
            question: 2,
            transform: vec![1],
        }],
    ));
    let (value, caps) = exo_result(answer_to(&out, 3));
    assert!(matches!(value, Value::Remotable(_)), "{value:?}");
    // Pong is our export: it goes back as ours (the result and its
    // `object` field), not as a promise.
    assert!(
        !caps.is_empty() && caps.iter().all(|c| *c == CapDescriptor::SenderHosted(pong)),
        "{caps:?}"
    );
}

#[test]
fn a_protocol_error_aborts_the_peer_and_releases_what_it_held() {
    let mut harness = Harness::new();
    let pong = restored(&mut harness);
    harness.send(&exo_call(
        2,
        Target::Imported(pong),
        "ping",
        &Value::Array(vec![]),
        vec![],
    ));
    let out = harness.send(&Wire::Release { id: 999, count: 1 });
    assert!(matches!(&out[..], [Wire::Abort { .. }]), "{out:?}");
    assert!(!harness.connected());
    // Its tables are released a slice per crank: consistent all along.
    while harness.kernel.step().unwrap() {
        harness.assert_consistent(&Wire::Release { id: 999, count: 1 });
    }
}

/// A frame a peer might send: well-formed, aimed at ids near those in use.
fn any_frame() -> impl Strategy<Value = Wire> {
    let id = 0u32..6;
    let target = prop_oneof![
        id.clone().prop_map(Target::Imported),
        (id.clone(), prop::collection::vec(0u16..3, 0..2)).prop_map(|(question, transform)| {
            Target::Answer {
                question,
                transform,
            }
        }),
    ];
    let cap = prop_oneof![
        id.clone().prop_map(CapDescriptor::SenderHosted),
        id.clone().prop_map(CapDescriptor::SenderPromise),
        id.clone().prop_map(CapDescriptor::ReceiverHosted),
        (id.clone(), Just(vec![1u16])).prop_map(|(question, transform)| {
            CapDescriptor::ReceiverAnswer {
                question,
                transform,
            }
        }),
    ];
    prop_oneof![
        id.clone().prop_map(|question| Wire::Bootstrap { question }),
        (id.clone(), id.clone(), any::<bool>()).prop_map(|(question, bootstrap, right)| {
            restore(question, bootstrap, if right { "SWISS" } else { "guess" })
        }),
        (
            id.clone(),
            target.clone(),
            prop::collection::vec(cap.clone(), 0..3)
        )
            .prop_map(|(question, target, caps)| {
                let slots = (0..caps.len())
                    .map(|i| Value::Remotable(vom::capdata::Ref::new(format!("slot{i}"))))
                    .collect();
                exo_call(question, target, "ping", &Value::Array(slots), caps)
            }),
        (id.clone(), any::<bool>()).prop_map(|(question, release_result_caps)| Wire::Finish {
            question,
            release_result_caps
        }),
        (id.clone(), 1u32..3).prop_map(|(id, count)| Wire::Release { id, count }),
        (id.clone(), prop::option::of(cap)).prop_map(|(promise, cap)| Wire::Resolve {
            promise,
            resolution: cap.ok_or_else(|| "broken".to_owned()),
        }),
        (target, id).prop_map(|(target, id)| Wire::Disembargo {
            target,
            context: Embargo::SenderLoopback(id),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever a peer sends, in whatever order, every crank leaves the
    /// kernel's tables consistent (`Harness::send` checks after each frame),
    /// and every frame the engine sends back decodes.
    #[test]
    fn any_frame_sequence_leaves_the_tables_consistent(frames in prop::collection::vec(any_frame(), 1..12)) {
        let mut harness = Harness::new();
        restored(&mut harness);
        let swiss = harness.swiss.clone();
        for frame in frames {
            let frame = match frame {
                Wire::Call(Call { question, target, content: CallContent::Restore { swiss: s }, caps }) => {
                    let swiss = if s == "SWISS" { swiss.clone() } else { s };
                    Wire::Call(Call { question, target, content: CallContent::Restore { swiss }, caps })
                }
                other => other,
            };
            harness.send(&frame);
        }
    }
}
