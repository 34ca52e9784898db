//! Hostile networks: what a peer's connection may cost the daemon is
//! bounded, and no peer can make it stop serving others.
//!
//! Each attack is scripted against a real daemon on loopback and ends
//! with: the daemon still accepts connections and serves calls, `vat
//! check` clean, and (where the attack could leave anything) the store's
//! key count back to its baseline once the attacker is gone. The last test
//! cuts the link between two kernels in network namespaces it makes itself.

use std::io::Write;
use std::time::{Duration, Instant};

use captp::sturdy::SturdyRef;
use vat_tests::{Daemon, RawPeer, VatHome};

/// A home with `vat` spawned from `guest`, served by a daemon listening on
/// loopback with `limits` (`--net-limit NAME=VALUE` each); its sturdy ref.
fn serve(home: &VatHome, vat: &str, guest: &str, limits: &[&str]) -> (Daemon, SturdyRef) {
    home.spawn(vat, guest);
    let daemon = start(home, limits);
    let sturdy = SturdyRef::parse(&home.ok(&["share", vat])).unwrap();
    (daemon, sturdy)
}

fn start(home: &VatHome, limits: &[&str]) -> Daemon {
    let mut args = vec!["start", "--listen", "127.0.0.1:0"];
    for limit in limits {
        args.extend(["--net-limit", limit]);
    }
    home.start_daemon_with(&args)
}

/// A peer that restored `sturdy` and called `method` on it once, answered.
fn a_client_that_calls(sturdy: &SturdyRef, method: &str) -> (RawPeer, u32) {
    let mut peer = RawPeer::connect(&sturdy.address.to_string());
    let id = peer.restore(&sturdy.swiss);
    peer.call(2, captp::Target::Imported(id), method);
    let ret = peer.answer(2);
    assert!(
        matches!(ret.outcome, captp::ReturnOutcome::Results { .. }),
        "{ret:?}"
    );
    (peer, id)
}

/// The keys of the store that peers make: their records (`r<N>.`) and the
/// engine's lists of them (`peer.`), but for the mark that the lists exist.
fn peer_keys(home: &VatHome) -> Vec<String> {
    home.dump()
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| {
            let record = key
                .strip_prefix('r')
                .and_then(|rest| rest.split_once('.'))
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            record || (key.starts_with("peer.") && key != "peer.indexed")
        })
        .collect()
}

/// Reads a connection until the daemon ends it; returns the `Abort`
/// reason it gave, if it gave one.
fn abort_reason(mut peer: RawPeer) -> Option<String> {
    loop {
        match peer.receive() {
            Some(captp::Message::Abort { reason }) => return Some(reason),
            Some(_) => continue,
            None => return None,
        }
    }
}

#[test]
fn silent_and_half_sent_connections_are_cut_off_and_the_listener_serves_on() {
    let home = VatHome::new();
    let limits = [
        "handshake_timeout_ms=1500",
        "frame_read_timeout_ms=700",
        "connections_max=40",
    ];
    let (_daemon, sturdy) = serve(&home, "counter", "counter", &limits);
    let baseline = home.dump();
    let address = sturdy.address.to_string();
    // A frame's first half: its segment table and a few words of ten.
    let mut half = vec![0u8, 0, 0, 0, 10, 0, 0, 0];
    half.extend_from_slice(&[0u8; 24]);
    let started = Instant::now();
    // Sixty at once, twenty more than the listener holds: those wait in
    // its backlog until places free up, then meet their own deadlines.
    let silent: Vec<RawPeer> = (0..30).map(|_| RawPeer::connect(&address)).collect();
    let slow: Vec<RawPeer> = (0..30)
        .map(|_| {
            let mut peer = RawPeer::connect(&address);
            peer.send_bytes(&half);
            peer
        })
        .collect();
    for peer in silent {
        let reason = abort_reason(peer).expect("a silent connection is told why it ends");
        assert!(reason.contains("handshake_timeout_ms"), "{reason}");
    }
    for peer in slow {
        let reason = abort_reason(peer).expect("a half-sent frame is told why it ends");
        assert!(
            reason.contains("frame_read_timeout_ms") || reason.contains("handshake_timeout_ms"),
            "{reason}"
        );
    }
    eprintln!(
        "60 stalling connections (40 at once) all cut off in {} ms",
        started.elapsed().as_millis()
    );
    // Nothing of the attackers is left; the listener serves on.
    assert_eq!(
        home.dump(),
        baseline,
        "stalled connections changed the store"
    );
    let (client, _) = a_client_that_calls(&sturdy, "increment");
    drop(client);
    vat_tests::wait_until("the client's record was not released", 20, || {
        home.ok(&["peers"])
            .lines()
            .all(|l| !l.contains(" running "))
    });
    assert_eq!(home.ok(&["send", "counter", "get"]), "1");
    home.check();
}

#[test]
fn clients_that_come_and_go_leave_a_bounded_list_that_expires() {
    let home = VatHome::new();
    let (daemon, sturdy) = serve(&home, "counter", "counter", &["ended_peers_max=5"]);
    assert_eq!(peer_keys(&home), Vec::<String>::new());
    for _ in 0..60 {
        let (peer, _) = a_client_that_calls(&sturdy, "increment");
        drop(peer);
    }
    let ended = |home: &VatHome| {
        home.ok(&["peers"])
            .lines()
            .filter(|l| l.contains("disconnected"))
            .count()
    };
    vat_tests::wait_until("more than ended_peers_max ended peers are kept", 30, || {
        ended(&home) == 5 && !home.ok(&["peers"]).contains(" running ")
    });
    let kept = peer_keys(&home);
    let peers: std::collections::HashSet<&str> = kept
        .iter()
        .filter_map(|key| key.split('.').next())
        .filter(|p| *p != "peer")
        .collect();
    assert_eq!(peers.len(), 5, "60 clients came and went and left {kept:?}");
    assert_eq!(home.ok(&["send", "counter", "get"]), "60");
    drop(daemon);

    // With a short ended_peers_kept_s, nothing of them is left at all.
    let _daemon = start(&home, &["ended_peers_kept_s=1"]);
    vat_tests::wait_until("ended peers outlived ended_peers_kept_s", 30, || {
        peer_keys(&home).is_empty()
    });
    assert_eq!(home.ok(&["peers"]), "no peers");
    home.check();
}

/// An `echo` call whose argument is a string of `bytes` letters.
fn echo_call(question: u32, target: u32, bytes: usize) -> captp::Message {
    captp::Message::Call(captp::Call {
        question,
        target: captp::Target::Imported(target),
        content: captp::CallContent::Exo {
            method: "echo".into(),
            args: captp::Body {
                body: format!("#[\"{}\"]", "a".repeat(bytes)),
                caps: vec![],
            },
        },
        caps: vec![],
    })
}

#[test]
fn a_peer_that_does_not_read_is_aborted_before_outgoing_bytes_max() {
    let home = VatHome::new();
    let limits = ["outgoing_bytes_max=1048576"];
    let (daemon, sturdy) = serve(&home, "waiter", "waiter", &limits);
    let mut peer = RawPeer::connect(&sturdy.address.to_string());
    let id = peer.restore(&sturdy.swiss);
    let before = vat_tests::resident_bytes(daemon.pid());
    // 200 answers of 100 KB, 20 MB in all, to a peer that reads none.
    for question in 2..202 {
        peer.send(&echo_call(question, id, 100_000));
    }
    vat_tests::wait_until("the peer that does not read was not cut off", 120, || {
        home.ok(&["peers"]).contains("outgoing_bytes_max")
    });
    let grown = vat_tests::resident_bytes(daemon.pid()).saturating_sub(before);
    // Now it reads: what was written before the cut, then the Abort.
    let mut answers = 0;
    let reason = loop {
        match peer.receive() {
            Some(captp::Message::Return(_)) => answers += 1,
            Some(captp::Message::Abort { reason }) => break reason,
            Some(_) => {}
            None => panic!("the connection ended without an Abort after {answers} answers"),
        }
    };
    eprintln!("cut off after {answers} of 200 answers; the daemon grew by {grown} bytes");
    assert!(reason.contains("outgoing_bytes_max"), "{reason}");
    assert!(
        answers < 200,
        "every answer was written: nothing was cut off"
    );
    assert!(grown < 96 << 20, "the daemon grew by {grown} bytes");
    // Others are served; the store is sound.
    let (other, _) = a_client_that_calls(&sturdy, "pending");
    drop(other);
    home.check();
}

/// A `provide` whose recipient is a list of `pointers` pointers to one
/// blob of `blob_words` words (each pointer's offset aims at the same
/// place): small on the wire, many times larger copied pointer by pointer.
fn provide_sharing_one_blob(pointers: u64, blob_words: u64) -> Vec<u8> {
    let struct_pointer = |data: u64, ptrs: u64| (data << 32) | (ptrs << 48);
    let list_pointer =
        |offset: u64, size: u64, count: u64| 1 | (offset << 2) | (size << 32) | (count << 35);
    let mut words = vec![
        struct_pointer(1, 1),
        10, // Message.provide
        struct_pointer(1, 2),
        4, // questionId
        0, // target: null
        list_pointer(0, 6, pointers),
    ];
    let blob_at = 6 + pointers;
    for i in 0..pointers {
        words.push(list_pointer(blob_at - (6 + i + 1), 2, blob_words * 8));
    }
    words.extend(std::iter::repeat_n(
        0x4141_4141_4141_4141,
        blob_words as usize,
    ));
    let mut frame = 0u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&(words.len() as u32).to_le_bytes());
    for word in words {
        frame.extend_from_slice(&word.to_le_bytes());
    }
    frame
}

#[test]
fn an_echoed_message_is_no_larger_than_the_frame_it_echoes() {
    let home = VatHome::new();
    let (_daemon, sturdy) = serve(&home, "counter", "counter", &[]);
    let mut peer = RawPeer::connect(&sturdy.address.to_string());
    let id = peer.restore(&sturdy.swiss);
    // 500 KB frames whose 130 pointers share one blob: copied naively,
    // each would come back as 65 MB.
    let frame = provide_sharing_one_blob(130, 62_000);
    let mut echoed = 0;
    for _ in 0..20 {
        peer.send_bytes(&frame);
        let Some(captp::Message::Unimplemented { .. }) = peer.receive() else {
            panic!("a level-3 message is answered unimplemented");
        };
        echoed += 1;
    }
    assert_eq!(echoed, 20);
    // What came back: no more than what went, and the connection serves on.
    peer.call(5, captp::Target::Imported(id), "increment");
    let reply = peer.answer(5);
    assert!(
        matches!(reply.outcome, captp::ReturnOutcome::Results { .. }),
        "{reply:?}"
    );
    let read = peer.bytes_read;
    assert!(
        read <= 20 * (frame.len() as u64 + 64) + 4096,
        "20 frames of {} bytes came back as {read} bytes",
        frame.len()
    );
    home.check();
}

#[test]
fn a_flood_of_large_calls_waits_in_the_socket_not_in_memory_or_the_store() {
    let home = VatHome::new();
    let limits = ["run_queue_intake_max=4", "frames_in_flight_max=4"];
    let (daemon, sturdy) = serve(&home, "counter", "counter", &limits);
    let mut peer = RawPeer::connect(&sturdy.address.to_string());
    let id = peer.restore(&sturdy.swiss);
    let before = vat_tests::resident_bytes(daemon.pid());
    // 150 calls of 900 KB each, written as fast as the socket takes them.
    let frames: Vec<Vec<u8>> = (0..150)
        .map(|q| captp::wire::encode(&echo_call(q + 2, id, 900_000)))
        .collect();
    let mut stream = peer.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for frame in frames {
            stream.write_all(&frame).unwrap();
        }
    });
    let mut queued_max = 0;
    let mut grown_max = 0;
    while !writer.is_finished() {
        let queued = home
            .dump()
            .iter()
            .filter(|(key, _)| {
                key.starts_with("runQueue.") && !key.ends_with("head") && !key.ends_with("tail")
            })
            .count();
        queued_max = queued_max.max(queued);
        grown_max = grown_max.max(vat_tests::resident_bytes(daemon.pid()).saturating_sub(before));
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().unwrap();
    eprintln!(
        "150 calls of 900 KB: run queue at most {queued_max}, the daemon grew by at most {grown_max} bytes"
    );
    assert!(queued_max <= 16, "the run queue held {queued_max} items");
    assert!(grown_max < 96 << 20, "the daemon grew by {grown_max} bytes");
    // Every call is answered in the end (an error: increment takes no
    // argument this large... or any), and the counter serves on.
    let mut answers = 0;
    while answers < 150 {
        if let Some(captp::Message::Return(_)) = peer.receive() {
            answers += 1;
        }
    }
    drop(peer);
    let (other, _) = a_client_that_calls(&sturdy, "get");
    drop(other);
    home.check();
}

#[test]
fn sessions_away_too_long_end_and_peers_and_sturdy_refs_can_be_ended_by_hand() {
    let room = VatHome::new();
    room.spawn("carol", "chat");
    let (_room_daemon, sturdy) = serve(&room, "room", "chat", &["session_away_max_s=2"]);
    let alice = VatHome::new();
    alice.spawn("user", "chat");
    let alice_daemon = alice.start_daemon();
    let uri = sturdy.to_string();
    alice.ok(&["enliven", &uri, "--as", "room"]);
    alice.ok(&["send", "user", "enter", "room", "\"Alice\""]);
    room.ok(&["send", "carol", "enter", "room", "\"Carol\""]);
    // Alice's kernel goes away for good; Carol's post waits for it.
    drop(alice_daemon);
    room.ok(&["send", "carol", "say", "\"anyone there?\""]);
    vat_tests::wait_until(
        "a session away past session_away_max_s was kept",
        30,
        || room.ok(&["peers"]).contains("session_away_max_s"),
    );
    let kept_frames = room
        .dump()
        .into_iter()
        .filter(|(key, _)| key.contains(".out."))
        .count();
    assert_eq!(kept_frames, 0, "an ended session's frames are deleted");
    room.check();

    // A connected client, forgotten by hand, is told so.
    let (client, _) = a_client_that_calls(&sturdy, "history");
    let peers = room.ok(&["peers"]);
    let line = peers
        .lines()
        .find(|l| l.contains(" running "))
        .expect(&peers);
    let id = line.split_whitespace().next().unwrap();
    assert_eq!(room.ok(&["peers", "forget", id]), format!("forgot {id}"));
    let reason = abort_reason(client).expect("a forgotten peer is told");
    assert!(reason.contains("forgotten"), "{reason}");
    assert!(
        room.fails(&["peers", "forget", id])
            .contains("ended already")
    );
    assert!(
        room.fails(&["peers", "forget", "v1"])
            .contains("no peer id")
    );

    // An unshared sturdy ref restores nothing.
    assert!(room.ok(&["unshare", &uri]).starts_with("unshared"));
    let mut stranger = RawPeer::connect(&sturdy.address.to_string());
    assert!(stranger.try_restore(&sturdy.swiss).is_err());
    assert!(room.fails(&["unshare", &uri]).contains("no sturdy ref"));
    room.check();
}

/// Two network namespaces joined by a veth pair (`a` at 10.77.0.1, `b` at
/// 10.77.0.2), made with `ip` and removed when dropped.
struct Link {
    a: String,
    b: String,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {} (this test makes network namespaces: it runs as root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    fn new() -> Link {
        let id = std::process::id();
        let link = Link {
            a: format!("vata{id}"),
            b: format!("vatb{id}"),
        };
        let (dev_a, dev_b) = (format!("va{id}"), format!("vb{id}"));
        ip(&["netns", "add", &link.a]);
        ip(&["netns", "add", &link.b]);
        ip(&[
            "link", "add", &dev_a, "type", "veth", "peer", "name", &dev_b,
        ]);
        for (ns, dev, address) in [
            (&link.a, &dev_a, "10.77.0.1/24"),
            (&link.b, &dev_b, "10.77.0.2/24"),
        ] {
            ip(&["link", "set", dev, "netns", ns]);
            ip(&["-n", ns, "addr", "add", address, "dev", dev]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        link
    }

    /// Sets both ends of the link up or down.
    fn set(&self, up: bool) {
        let id = std::process::id();
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.a, "link", "set", &format!("va{id}"), state]);
        ip(&["-n", &self.b, "link", "set", &format!("vb{id}"), state]);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// How long the link between the two kernels is cut.
const CUT_S: u64 = 15;

#[test]
fn a_cut_link_between_kernels_delivers_each_message_once_soon_after_it_heals() {
    let link = Link::new();
    let room = VatHome::new();
    room.spawn("room", "chat");
    room.spawn("carol", "chat");
    let _room_daemon = room.start_daemon_in(&link.a, &["start", "--listen", "10.77.0.1:7000"]);
    let alice = VatHome::new();
    alice.spawn("user", "chat");
    let _alice_daemon = alice.start_daemon_in(&link.b, &["start"]);
    let uri = room.ok(&["share", "room"]);
    alice.ok(&["enliven", &uri, "--as", "room"]);
    alice.ok(&["send", "user", "enter", "room", "\"Alice\""]);
    room.ok(&["send", "carol", "enter", "room", "\"Carol\""]);
    room.ok(&["send", "carol", "say", "\"before the cut\""]);
    let inbox = |n: usize| {
        let mut lines = Vec::new();
        vat_tests::wait_until("posts did not reach Alice", 60, || {
            lines =
                serde_json::from_str::<Vec<String>>(&alice.ok(&["send", "user", "inbox"])).unwrap();
            lines.len() >= n
        });
        lines
    };
    inbox(1);

    // Both ends go down; Carol posts ten times while they are.
    link.set(false);
    let cut = Instant::now();
    for i in 1..=10 {
        room.ok(&["send", "carol", "say", &format!("\"during the cut {i}\"")]);
        std::thread::sleep(Duration::from_millis(CUT_S * 1000 / 20));
    }
    std::thread::sleep(Duration::from_secs(CUT_S).saturating_sub(cut.elapsed()));
    link.set(true);
    let healed = Instant::now();
    let lines = inbox(11);
    eprintln!(
        "link cut for {} s: every post was with Alice {} ms after it healed",
        cut.elapsed().as_secs() - healed.elapsed().as_secs(),
        healed.elapsed().as_millis()
    );
    let mut expected = vec!["Carol: before the cut".to_owned()];
    expected.extend((1..=10).map(|i| format!("Carol: during the cut {i}")));
    assert_eq!(lines, expected);
    assert_eq!(
        alice.ok(&["send", "user", "told"]),
        "11",
        "a post was delivered twice"
    );
    assert!(
        alice.ok(&["peers"]).contains("connected"),
        "{}",
        alice.ok(&["peers"])
    );
    room.check();
    alice.check();
}
