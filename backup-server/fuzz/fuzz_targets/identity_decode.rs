//! Parsing an export description never panics, and whatever it accepts renders back to
//! the same text (one encoding per identity, so a restore's pin compares exactly).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_backup::ExportIdentity;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(identity) = ExportIdentity::parse(&text) {
        assert_eq!(identity.render(), text);
        assert!(identity.pinned_name().ends_with(&format!("@{}", identity.version)));
    }
});
