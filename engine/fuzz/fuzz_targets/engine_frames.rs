//! Any bytes a client peer sends, as a sequence of frames: the engine
//! applies each in a crank of its own or aborts the peer, never panics, and
//! the kernel's tables stay consistent (`check()` finds nothing) before and
//! after the peer is gone.

#![no_main]

use std::cell::RefCell;

use captp::wire::{self, Limits};
use captp_engine::Peers;
use kernel::{CommitPolicy, Kernel};
use libfuzzer_sys::fuzz_target;
use swingstore::{Durability, SwingStore};

/// Inputs one kernel serves before a fresh one (its store grows with peers).
const INPUTS_PER_KERNEL: u32 = 256;

struct Fixture {
    kernel: Kernel,
    inputs: u32,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal)
        .expect("a store");
    let mut kernel = Kernel::new(store, CommitPolicy::GROUPED).expect("a kernel");
    captp_engine::attach(&mut kernel);
    Fixture {
        kernel,
        inputs: 0,
        _dir: dir,
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// The input cut into frames by their segment tables (the rest, if any,
/// as one last frame).
fn frames<'a>(mut bytes: &'a [u8], limits: &Limits) -> Vec<&'a [u8]> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let length = match wire::frame_length(bytes, limits) {
            Ok(Some(length)) if length > 0 && length <= bytes.len() => length,
            _ => bytes.len(),
        };
        frames.push(&bytes[..length]);
        bytes = &bytes[length..];
    }
    frames
}

fn assert_consistent(kernel: &mut Kernel) {
    let (problems, _) = kernel.check().expect("check reads the store");
    assert!(problems.is_empty(), "{problems:#?}");
}

fuzz_target!(|input: &[u8]| {
    FIXTURE.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|f| f.inputs >= INPUTS_PER_KERNEL) {
            *cell = Some(fixture());
        }
        let fixture = cell.as_mut().expect("just made");
        fixture.inputs += 1;
        let kernel = &mut fixture.kernel;
        let limits = Limits::default();
        let peer = kernel.add_peer("fuzz", false).expect("a peer");
        for frame in frames(input, &limits) {
            let decoded = wire::decode(frame, &limits, &|q| kernel.return_kind(&peer, q));
            let aborted = kernel.receive_message(&peer, decoded).expect("store I/O");
            while kernel.step().expect("a crank") {}
            if aborted.is_some() {
                break;
            }
        }
        kernel.commit().expect("a commit");
        assert_consistent(kernel);
        kernel.remove_peer(&peer, "the fuzz input ended").expect("a removal");
        while kernel.step().expect("a crank") {}
        kernel.commit().expect("a commit");
        kernel.take_outbound();
        assert_consistent(kernel);
    });
});
