//! Index decoding never panics, and whatever it accepts encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_backup::Index;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = Index::decode(data) {
        assert_eq!(index.encode().ok().as_deref(), Some(data));
    }
});
