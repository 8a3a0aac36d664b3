//! The replication wire decoder never panics on any bytes, however they are cut, and
//! every message it accepts encodes back to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_backup::replicate::frame::FrameDecoder;
use rehydrate_backup::replicate::message::Message;

fuzz_target!(|data: &[u8]| {
    // The first byte says where to cut the stream in two pushes.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let at = (cut as usize).min(stream.len());
    let mut decoder = FrameDecoder::new();
    decoder.push(&stream[..at]);
    let mut frames = Vec::new();
    loop {
        match decoder.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) if at < stream.len() => {
                decoder.push(&stream[at..]);
                if let Ok(Some(f)) = decoder.next_frame() {
                    frames.push(f);
                }
                while let Ok(Some(f)) = decoder.next_frame() {
                    frames.push(f);
                }
                break;
            }
            _ => break,
        }
    }
    for f in frames {
        let payload = f.payload.clone();
        if let Ok(m) = Message::decode(f.kind, f.payload) {
            let bytes = m.to_frame_bytes();
            assert_eq!(bytes[4], f.kind);
            assert_eq!(&bytes[5..], &payload[..]);
        }
    }
});
