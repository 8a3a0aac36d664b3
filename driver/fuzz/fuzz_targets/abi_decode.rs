//! Fuzzes the driver/service ABI decoder with arbitrary bytes.
//!
//! The kernel decodes whatever a caller of the control device sends, so `decode_any`
//! must return an error, never panic or allocate without bound (DESIGN.md rule 7). On
//! success the message is encoded again and must give back exactly the input bytes:
//! decoding accepts only the canonical encoding (exact lengths, zero reserved fields,
//! known flags), so any difference is a decoder accepting something the encoder would
//! never write, or the two disagreeing on a layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_driver::abi::{
    Attach, Ioctl, Message, RecordBatchWriter, RestoreMode, MESSAGE_MAX_BYTES,
};

fuzz_target!(|data: &[u8]| {
    // Each control code's own decoder (the kind it carries) sees the bytes too.
    for ioctl in Ioctl::ALL {
        let _ = Message::decode_request(ioctl, data);
    }
    let Ok(message) = Message::decode_any(data) else {
        return;
    };
    let len = message.encoded_len();
    assert_eq!(
        len,
        data.len(),
        "encoded_len disagrees with the decoded length"
    );
    assert!(len <= MESSAGE_MAX_BYTES);
    let mut out = vec![0u8; len];
    let written = message.encode(&mut out).expect("a decoded message encodes");
    assert_eq!(written, len);
    assert_eq!(out.as_slice(), data, "re-encoding changed the bytes");
    let again = Message::decode_any(&out).expect("re-encoded bytes decode");
    assert_eq!(again, message);
    // An attach in either mode is compared with a volume restoring in each mode (ABI
    // version 2): a mismatch is a typed error.
    if let Message::Attach(attach) = message {
        for mode in [RestoreMode::InPlace, RestoreMode::Overlay] {
            let volume = Attach { mode, ..attach };
            assert_eq!(attach.check_matches(&volume).is_ok(), attach.mode == mode);
        }
    }
    // Write capture's batches: every record read back is valid and, pushed one by one
    // into a writer, rebuilds the very same batch.
    if let Message::RecordBatch(batch) = message {
        let mut rebuilt = vec![0u8; len];
        let mut w = RecordBatchWriter::new(&mut rebuilt).expect("room for the prefix");
        for record in batch.iter() {
            record.check().expect("a decoded record is valid");
            w.push(&record).expect("a decoded record fits its own batch");
        }
        let n = w.finish().expect("a rebuilt batch finishes");
        assert_eq!(&rebuilt[..n], data, "rebuilding the batch changed the bytes");
    }
    // One byte short of the output buffer is a typed error, never a panic.
    if let Some(short) = out.get_mut(..len - 1) {
        assert!(message.encode(short).is_err());
    }
});
