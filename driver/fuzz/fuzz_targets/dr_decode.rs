//! Fuzzes the disaster-recovery stream decoder with arbitrary bytes.
//!
//! The first byte is the frame kind, the rest its payload: what a DR site or a primary
//! decodes from its peer. `Message::decode` must return an error, never panic or
//! allocate past its bound (DESIGN.md rule 7); a decoded message encodes back to exactly
//! the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_driver::dr::wire::{Message, PAYLOAD_MAX_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let Ok(message) = Message::decode(kind, payload) else {
        return;
    };
    assert_eq!(message.kind(), kind);
    let mut out = Vec::new();
    message.encode_payload(&mut out);
    assert!(out.len() <= PAYLOAD_MAX_BYTES);
    assert_eq!(out.as_slice(), payload, "re-encoding changed the bytes");
});
