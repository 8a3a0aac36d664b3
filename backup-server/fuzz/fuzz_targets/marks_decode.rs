//! Decoding a backup's pending hashes or a gc's condemned list never panics, and
//! whatever it accepts encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_backup::marks::{decode, encode, CONDEMNED_MAGIC, PENDING_MAGIC};

fuzz_target!(|data: &[u8]| {
    for magic in [PENDING_MAGIC, CONDEMNED_MAGIC] {
        if let Ok(hashes) = decode(magic, data) {
            assert_eq!(encode(magic, &hashes), data);
        }
    }
});
