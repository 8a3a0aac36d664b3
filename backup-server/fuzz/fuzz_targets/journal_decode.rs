//! Journal segments: decoding a header or a record, and scanning a segment's records,
//! never panics on any bytes; an accepted record encodes back to the same bytes, and a
//! scan only ever returns consecutive records that lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_backup::journal::format::{Record, SegmentHeader, SEGMENT_HEADER_BYTES};
use rehydrate_backup::journal::scan::{scan, Tail};

fuzz_target!(|data: &[u8]| {
    let _ = SegmentHeader::decode(data);
    if let Ok((record, n)) = Record::decode(data, u64::MAX) {
        let mut again = Vec::new();
        record.encode_into(&mut again);
        assert_eq!(&again[..], &data[..n], "an accepted record re-encodes differently");
    }
    let body = data.get(SEGMENT_HEADER_BYTES..).unwrap_or(&[]);
    let start = SEGMENT_HEADER_BYTES as u64;
    for last in [true, false] {
        let s = scan(body, start, 1, 1 << 40, last);
        assert!(s.end >= start && s.end <= start + body.len() as u64);
        for (i, e) in s.entries.iter().enumerate() {
            assert_eq!(e.seq, 1 + i as u64);
            assert!(e.payload_at <= s.end);
        }
        match s.tail {
            Tail::Clean => assert_eq!(s.end, start + body.len() as u64),
            Tail::Torn { at } => assert!(last && at == s.end),
            Tail::Damaged { at, .. } => assert_eq!(at, s.end),
        }
    }
});
