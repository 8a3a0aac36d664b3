//! Chunk decoding never panics and never returns data that does not match its name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_backup::chunk::{decode, ChunkHash};

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the expected length (up to 64 KiB); the rest is the object.
    let Some((len, stored)) = data.split_first_chunk::<2>() else { return };
    let expected_len = usize::from(u16::from_le_bytes(*len));
    let claimed = ChunkHash::of(stored.get(1..).unwrap_or_default());
    if let Ok(chunk) = decode(&claimed, stored, expected_len) {
        assert_eq!(chunk.len(), expected_len);
        assert_eq!(ChunkHash::of(&chunk), claimed);
    }
});
