//! Any bytes a peer sends: the frame decoder returns a message or an error,
//! never panics, and what it accepts encodes and decodes again.

#![no_main]

use captp::wire::{Limits, Message, ReturnKind, decode, encode};
use libfuzzer_sys::fuzz_target;

fn kinds(question: u32) -> Option<ReturnKind> {
    // Every kind of question a kernel asks, and questions it never asked.
    Some(match question % 7 {
        0 => ReturnKind::Exo,
        1 => ReturnKind::Bootstrap,
        2 => ReturnKind::Restore,
        3 => ReturnKind::Hello,
        4 => ReturnKind::Prove,
        5 => ReturnKind::Empty,
        _ => return None,
    })
}

fuzz_target!(|frame: &[u8]| {
    let limits = Limits::default();
    if let Ok(message) = decode(frame, &limits, &kinds) {
        let again = encode(&message);
        if !matches!(message, Message::Unsupported { .. }) {
            decode(&again, &limits, &kinds).expect("what decodes, encodes and decodes again");
        }
    }
});
