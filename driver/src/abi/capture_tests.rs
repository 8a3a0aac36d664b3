//! Tests of the write-capture messages: one per rejection, round trips, hostile bytes.

use super::tests::{check_hostile, encode, framed, put_u32, put_u64, round_trip};
use super::*;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

fn write(seq: u64, offset: u64, payload: &[u8]) -> CaptureRecord<'_> {
    CaptureRecord {
        seq,
        kind: RecordKind::Write,
        flags: RecordFlags::empty(),
        offset,
        len: payload.len() as u64,
        time_unix_ns: 1_700_000_000_000_000_000 + seq,
        payload,
    }
}

fn bare(seq: u64, kind: RecordKind) -> CaptureRecord<'static> {
    CaptureRecord {
        seq,
        kind,
        flags: RecordFlags::empty(),
        offset: 0,
        len: 0,
        time_unix_ns: seq,
        payload: &[],
    }
}

fn batch_of(records: &[CaptureRecord<'_>]) -> Vec<u8> {
    super::capture::batch_of(records).unwrap()
}

#[test]
fn a_batch_round_trips_every_kind() {
    let data = vec![0xA5u8; 4096];
    let zero = CaptureRecord {
        kind: RecordKind::Zero,
        offset: 1 << 20,
        len: 1 << 30,
        ..bare(2, RecordKind::Zero)
    };
    let mark = CaptureRecord {
        payload: b"pre-upgrade",
        ..bare(4, RecordKind::Mark)
    };
    let resync = CaptureRecord {
        flags: RecordFlags::RESYNC,
        ..write(7, 512, &data[..512])
    };
    let records = [
        write(1, 4096, &data),
        zero,
        bare(3, RecordKind::Flush),
        mark,
        bare(5, RecordKind::GapBegin),
        bare(6, RecordKind::GapEnd),
        resync,
    ];
    let bytes = batch_of(&records);
    let batch = RecordBatch::decode(&bytes).unwrap();
    assert_eq!(batch.len(), records.len());
    assert!(batch.iter().eq(records.iter().copied()));
    assert_eq!(
        batch.iter().nth(3).unwrap().label().unwrap().as_str(),
        "pre-upgrade"
    );
    assert_eq!(encode(&Message::RecordBatch(batch)), bytes);
    assert_eq!(bytes.len() % 8, 0);
}

#[test]
fn records_must_follow_each_other_by_one() {
    let mut out = vec![0u8; 4096];
    let mut w = RecordBatchWriter::new(&mut out).unwrap();
    w.push(&bare(5, RecordKind::Flush)).unwrap();
    assert_eq!(
        w.push(&bare(7, RecordKind::Flush)),
        Err(AbiError::RecordOrder {
            previous: 5,
            seq: 7
        })
    );
    // The same gap in bytes is refused by the decoder.
    let mut bytes = batch_of(&[bare(5, RecordKind::Flush), bare(6, RecordKind::Flush)]);
    put_u64(
        &mut bytes,
        RECORD_BATCH_PREFIX_BYTES + RECORD_HEADER_BYTES,
        9,
    );
    assert_eq!(
        RecordBatch::decode(&bytes),
        Err(AbiError::RecordOrder {
            previous: 5,
            seq: 9
        })
    );
}

#[test]
fn record_fields_must_fit_their_kind() {
    let data = [1u8; 512];
    let bad = [
        (bare(0, RecordKind::Flush), "seq"),
        (
            CaptureRecord {
                offset: 512,
                ..bare(1, RecordKind::Flush)
            },
            "offset",
        ),
        (
            CaptureRecord {
                payload: &data,
                ..bare(1, RecordKind::GapEnd)
            },
            "payload_len",
        ),
        (
            CaptureRecord {
                len: 1024,
                ..write(1, 0, &data)
            },
            "payload_len",
        ),
        (
            CaptureRecord {
                flags: RecordFlags::RESYNC,
                ..bare(1, RecordKind::Flush)
            },
            "flags",
        ),
    ];
    for (record, field) in bad {
        assert_eq!(
            record.check(),
            Err(AbiError::RecordField {
                seq: record.seq,
                field
            }),
            "{record:?}"
        );
    }
    assert!(matches!(
        write(1, 100, &data).check(),
        Err(AbiError::Range(_))
    ));
    let big = vec![0u8; RECORD_PAYLOAD_MAX_BYTES + 512];
    assert_eq!(
        write(1, 0, &big).check(),
        Err(AbiError::RecordField {
            seq: 1,
            field: "len"
        })
    );
}

#[test]
fn unknown_record_kinds_and_flags_and_dirty_padding_are_refused() {
    let data = [3u8; 512];
    let good = batch_of(&[write(1, 0, &data)]);
    let kind_at = RECORD_BATCH_PREFIX_BYTES + 32;
    let mut bytes = good.clone();
    bytes[kind_at] = 9;
    assert_eq!(
        RecordBatch::decode(&bytes),
        Err(AbiError::UnknownRecordKind(9))
    );
    let mut bytes = good.clone();
    bytes[kind_at + 2] = 0x80;
    assert!(matches!(
        RecordBatch::decode(&bytes),
        Err(AbiError::UnknownFlags { .. })
    ));
    // A mark's label of 3 bytes is padded with 5 zero bytes.
    let mark = CaptureRecord {
        payload: b"abc",
        ..bare(1, RecordKind::Mark)
    };
    let mut bytes = batch_of(&[mark]);
    let pad = RECORD_BATCH_PREFIX_BYTES + RECORD_HEADER_BYTES + 3;
    bytes[pad + 1] = 1;
    assert_eq!(
        RecordBatch::decode(&bytes),
        Err(AbiError::Reserved {
            offset: pad + 1,
            value: 1
        })
    );
}

#[test]
fn batch_counts_and_lengths_must_match_the_bytes() {
    let data = [3u8; 512];
    let good = batch_of(&[write(1, 0, &data), bare(2, RecordKind::Flush)]);
    let mut more = good.clone();
    put_u32(&mut more, 8, 3);
    assert!(matches!(
        RecordBatch::decode(&more),
        Err(AbiError::Short { .. })
    ));
    let mut fewer = good.clone();
    put_u32(&mut fewer, 8, 1);
    assert!(matches!(
        RecordBatch::decode(&fewer),
        Err(AbiError::Length { .. })
    ));
    let mut huge = good.clone();
    put_u32(&mut huge, 8, RECORD_BATCH_MAX as u32 + 1);
    assert!(matches!(
        RecordBatch::decode(&huge),
        Err(AbiError::CountTooLarge { .. })
    ));
    // A payload length beyond any record is refused before it is used.
    let mut long = good;
    put_u32(&mut long, RECORD_BATCH_PREFIX_BYTES + 36, u32::MAX);
    assert!(RecordBatch::decode(&long).is_err());
    assert!(matches!(
        RecordBatch::decode(&framed(MessageKind::RecordBatch as u16, &[0; 4])),
        Err(AbiError::Length { .. })
    ));
    // Longer than a batch may be, though within the largest message.
    let over = framed(
        MessageKind::RecordBatch as u16,
        &vec![0; RECORD_BATCH_MAX_BYTES],
    );
    assert!(matches!(
        RecordBatch::decode(&over),
        Err(AbiError::TooLong { .. })
    ));
}

#[test]
fn a_writer_refuses_what_does_not_fit_and_leaves_the_batch_valid() {
    let data = vec![7u8; RECORD_PAYLOAD_MAX_BYTES];
    let mut out = vec![0u8; RECORD_BATCH_MAX_BYTES];
    let mut w = RecordBatchWriter::new(&mut out).unwrap();
    let mut seq = 1;
    while w.fits(&write(seq, 0, &data)) {
        w.push(&write(seq, 0, &data)).unwrap();
        seq += 1;
    }
    assert_eq!(w.count(), 4, "four 1 MiB writes fill a batch");
    assert!(matches!(
        w.push(&write(seq, 0, &data)),
        Err(AbiError::BufferTooSmall { .. })
    ));
    w.push(&bare(seq, RecordKind::Flush)).unwrap();
    let len = w.finish().unwrap();
    assert!(len <= RECORD_BATCH_MAX_BYTES);
    assert_eq!(RecordBatch::decode(&out[..len]).unwrap().len(), 5);
    let mut tiny = [0u8; 8];
    assert!(RecordBatchWriter::new(&mut tiny).is_err());
}

#[test]
fn labels_are_checked() {
    for good in [
        "a",
        "pre-upgrade",
        "v1.2_3",
        &"x".repeat(MARK_LABEL_MAX_BYTES),
    ] {
        assert_eq!(Label::new(good).unwrap().as_str(), good);
    }
    for bad in ["", ".hidden", "a b", "a/b", "é", "a@b", &"x".repeat(65)] {
        assert!(
            matches!(Label::new(bad), Err(AbiError::BadLabel { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn marks_and_acks_round_trip_and_refuse_bad_bytes() {
    let mark = Mark {
        label: Label::new("before-upgrade").unwrap(),
    };
    let bytes = encode(&Message::Mark(mark));
    assert_eq!(bytes.len(), MARK_BYTES);
    assert_eq!(Mark::decode(&bytes), Ok(mark));
    for len in [0u32, 65, u32::MAX] {
        let mut b = bytes.clone();
        put_u32(&mut b, 8, len);
        assert!(
            matches!(Mark::decode(&b), Err(AbiError::BadLabel { .. })),
            "{len}"
        );
    }
    let mut b = bytes.clone();
    b[16 + 20] = b'x';
    assert_eq!(
        Mark::decode(&b),
        Err(AbiError::Reserved {
            offset: 36,
            value: u32::from(b'x')
        })
    );
    let mut b = bytes;
    b[16] = b'.';
    assert!(Mark::decode(&b).is_err());

    let ack = RecordAck { durable_seq: 42 };
    let bytes = encode(&Message::RecordAck(ack));
    assert_eq!(RecordAck::decode(&bytes), Ok(ack));
    assert!(matches!(
        RecordAck::decode(&framed(MessageKind::RecordAck as u16, &[0; 16])),
        Err(AbiError::Length { .. })
    ));
}

fn any_record(seq: u64) -> impl Strategy<Value = (u64, u8, u64, u64, u64, Vec<u8>)> {
    (
        Just(seq),
        1u8..=6,
        0u64..1 << 30,
        1u64..64,
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..3000),
    )
}

proptest! {
    #[test]
    fn batches_round_trip(
        first in 1u64..1 << 40,
        picks in proptest::collection::vec(any_record(0), 0..12),
    ) {
        // Shape each random pick into a valid record of its kind.
        let labels: Vec<Vec<u8>> = picks.iter().map(|p| {
            let n = (p.5.len() % MARK_LABEL_MAX_BYTES) + 1;
            (0..n).map(|i| b'a' + (p.5.get(i).copied().unwrap_or(0) % 26)).collect()
        }).collect();
        let records: Vec<CaptureRecord<'_>> = picks.iter().zip(&labels).enumerate().map(|(i, (p, label))| {
            let kind = RecordKind::from_u16(u16::from(p.1)).unwrap();
            let seq = first + i as u64;
            let sectors = (p.5.len() / 512).max(1);
            match kind {
                RecordKind::Write => CaptureRecord {
                    offset: p.2 * 512,
                    len: (sectors * 512) as u64,
                    payload: if p.5.len() >= 512 { &p.5[..sectors * 512] } else { &[] },
                    flags: if p.4 % 2 == 0 { RecordFlags::RESYNC } else { RecordFlags::empty() },
                    time_unix_ns: p.4,
                    ..bare(seq, kind)
                },
                RecordKind::Zero => CaptureRecord {
                    offset: p.2 * 512,
                    len: p.3 * 512,
                    time_unix_ns: p.4,
                    ..bare(seq, kind)
                },
                RecordKind::Mark => CaptureRecord { payload: label, ..bare(seq, kind) },
                _ => bare(seq, kind),
            }
        }).filter(|r| r.check().is_ok()).collect();
        // Filtering may leave holes in the sequence: renumber.
        let records: Vec<CaptureRecord<'_>> = records.into_iter().enumerate()
            .map(|(i, r)| CaptureRecord { seq: first + i as u64, ..r }).collect();
        let bytes = batch_of(&records);
        let decoded = RecordBatch::decode(&bytes).unwrap();
        prop_assert!(decoded.iter().eq(records.iter().copied()));
        round_trip(Message::RecordBatch(decoded))?;
    }

    #[test]
    fn mutated_batches_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let data = [9u8; 1024];
        let mark = CaptureRecord { payload: b"m1", ..bare(3, RecordKind::Mark) };
        let mut bytes = batch_of(&[write(1, 0, &data), bare(2, RecordKind::Flush), mark]);
        for (at, xor) in flips {
            let i = at % bytes.len();
            bytes[i] ^= xor;
        }
        check_hostile(&bytes)?;
    }

    #[test]
    fn framed_capture_garbage_never_panics(kind in 9u16..12, body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_hostile(&framed(kind, &body))?;
    }
}
