//! Unit tests of each capture rule.

use super::*;
use crate::abi::{RecordBatch, RECORD_BATCH_MAX_BYTES};
use std::vec;
use std::vec::Vec;

const MIB: u64 = 1 << 20;

fn geometry() -> Geometry {
    Geometry::new(16 * MIB, 4096).unwrap()
}

fn capture(mode: CaptureMode, buffer_max_bytes: u64) -> Capture {
    let config = CaptureConfig {
        buffer_max_bytes,
        ..CaptureConfig::new(mode, 1)
    };
    Capture::new(geometry(), config).unwrap()
}

fn go(c: &mut Capture, offset: u64, len: u64) -> WriteTicket {
    match c.begin_write(offset, len, false).unwrap() {
        Admit::Go(t) => t,
        Admit::Wait => panic!("write at {offset} held"),
    }
}

/// (seq, kind, offset, len) of every record the capture hands out now.
fn drain(c: &mut Capture) -> Vec<(u64, RecordKind, u64, u64)> {
    let mut out = vec![0u8; RECORD_BATCH_MAX_BYTES];
    let mut seen = Vec::new();
    while let Some(len) = c.next_batch(&mut out).unwrap() {
        let batch = RecordBatch::decode(&out[..len]).unwrap();
        seen.extend(batch.iter().map(|r| (r.seq, r.kind, r.offset, r.len)));
    }
    seen
}

#[test]
fn writes_are_numbered_in_completion_order() {
    let mut c = capture(CaptureMode::Async, 4 * MIB);
    let first = go(&mut c, 0, 4096);
    let second = go(&mut c, 8192, 4096);
    let data = [7u8; 4096];
    assert_eq!(
        c.write_completed(second, WriteData::Bytes(&data), true, 10),
        Ok(WriteDone::Now)
    );
    c.write_completed(first, WriteData::Bytes(&data), true, 11)
        .unwrap();
    let records = drain(&mut c);
    assert_eq!(
        records,
        vec![
            (1, RecordKind::Write, 8192, 4096),
            (2, RecordKind::Write, 0, 4096)
        ]
    );
}

#[test]
fn a_point_is_made_only_when_its_flush_completes() {
    let mut c = capture(CaptureMode::Async, 4 * MIB);
    let w = go(&mut c, 0, 4096);
    let f = c.begin_flush(5);
    assert!(!c.has_unsent(), "nothing before the write completes");
    c.write_completed(w, WriteData::Bytes(&[1; 4096]), true, 6)
        .unwrap();
    // A write that completes while the flush is in flight is in its point.
    let p = c.flush_completed(f, true, None, 7).unwrap().unwrap();
    assert_eq!((p.seq, p.time_unix_ns, p.label), (2, 7, None));
    assert_eq!(c.last_point(), Some(p));
    // A failed flush makes none.
    let w = go(&mut c, 0, 4096);
    c.write_completed(w, WriteData::Bytes(&[2; 4096]), true, 8)
        .unwrap();
    let f = c.begin_flush(9);
    assert_eq!(c.flush_completed(f, false, None, 10), Ok(None));
    // A flush with nothing written since the last point returns that point.
    let f = c.begin_flush(11);
    let again = c.flush_completed(f, true, None, 12).unwrap().unwrap();
    assert_eq!(again.seq, 4);
    let f = c.begin_flush(13);
    assert_eq!(c.flush_completed(f, true, None, 14).unwrap(), Some(again));
    assert_eq!(
        drain(&mut c).iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![
            RecordKind::Write,
            RecordKind::Flush,
            RecordKind::Write,
            RecordKind::Flush
        ]
    );
    assert!(matches!(
        c.flush_completed(f, true, None, 15),
        Err(CaptureError::UnknownTicket(_))
    ));
}

#[test]
fn marks_are_points_with_labels() {
    let mut c = capture(CaptureMode::Sync, 4 * MIB);
    let f = c.begin_flush(1);
    let label = Label::new("pre-upgrade").unwrap();
    let p = c.flush_completed(f, true, Some(label), 2).unwrap().unwrap();
    assert_eq!(p.label, Some(label));
    let mut out = vec![0u8; RECORD_BATCH_MAX_BYTES];
    let len = c.next_batch(&mut out).unwrap().unwrap();
    let batch = RecordBatch::decode(&out[..len]).unwrap();
    let r = batch.iter().next().unwrap();
    assert_eq!(r.kind, RecordKind::Mark);
    assert_eq!(r.label(), Some(label));
}

#[test]
fn sync_mode_holds_writes_until_their_records_fit_and_answers_when_durable() {
    let mut c = capture(CaptureMode::Sync, BUFFER_MIN_BYTES);
    // The first write takes the buffer (a write larger than the free space is admitted
    // into an empty buffer), the second waits.
    let a = go(&mut c, 0, 8192);
    assert_eq!(c.begin_write(16384, 4096, false), Ok(Admit::Wait));
    let done = c
        .write_completed(a, WriteData::Bytes(&[3; 8192]), true, 1)
        .unwrap();
    assert_eq!(done, WriteDone::WhenDurable(1));
    assert_eq!(c.begin_write(16384, 4096, false), Ok(Admit::Wait));
    assert_eq!(drain(&mut c).len(), 1);
    c.ack(1).unwrap();
    assert_eq!(c.durable_seq(), 1);
    assert!(matches!(
        c.begin_write(16384, 4096, false),
        Ok(Admit::Go(_))
    ));
    assert!(c.counters().writes_waited >= 2);
}

#[test]
fn async_mode_opens_a_gap_offers_no_point_inside_and_closes_it_by_reading_back() {
    let mut c = capture(CaptureMode::Async, BUFFER_MIN_BYTES);
    let a = go(&mut c, 0, 4096);
    c.write_completed(a, WriteData::Bytes(&[1; 4096]), true, 1)
        .unwrap();
    // No room for the second: a gap, the region dirty, the write answered at once.
    let b = go(&mut c, 40960, 8192);
    assert_eq!(
        c.write_completed(b, WriteData::Bytes(&[2; 8192]), true, 2),
        Ok(WriteDone::Now)
    );
    assert!(c.in_gap());
    assert_eq!(c.dirty_regions(), 2);
    let f = c.begin_flush(3);
    assert_eq!(c.flush_completed(f, true, None, 4), Ok(None));
    let f = c.begin_flush(5);
    assert_eq!(
        c.flush_completed(f, true, Some(Label::new("x").unwrap()), 6),
        Err(CaptureError::MarkInGap)
    );
    // No room to read back until the service takes and acknowledges what is held.
    assert_eq!(c.next_resync(7), None);
    let taken = drain(&mut c);
    c.ack(taken.last().unwrap().0).unwrap();
    let r = c.next_resync(8).unwrap();
    assert_eq!((r.offset, r.len), (40960, 8192));
    // A write over a range being read back waits for it.
    assert_eq!(c.begin_write(40960, 512, false), Ok(Admit::Wait));
    c.resync_done(r.ticket, Some(&[2; 8192]), 9).unwrap();
    assert!(!c.in_gap());
    let taken = drain(&mut c);
    assert_eq!(
        taken,
        vec![
            (3, RecordKind::Write, 40960, 8192),
            (4, RecordKind::GapEnd, 0, 0)
        ]
    );
    c.ack(4).unwrap();
    let f = c.begin_flush(10);
    let p = c.flush_completed(f, true, None, 11).unwrap().unwrap();
    assert_eq!(p.seq, 5, "write, gap begin, read-back, gap end, flush");
    assert_eq!(c.counters().gaps, 1);
    assert_eq!(c.counters().points_skipped, 1);
}

#[test]
fn a_failed_read_back_keeps_its_regions_dirty() {
    let mut c = capture(CaptureMode::Async, 4 * MIB);
    c.mark_dirty(0, 4096, 1).unwrap();
    let r = c.next_resync(2).unwrap();
    c.resync_done(r.ticket, None, 3).unwrap();
    assert!(c.in_gap());
    assert_eq!(c.dirty_regions(), 1);
    let r = c.next_resync(4).unwrap();
    assert_eq!(
        c.resync_done(r.ticket, Some(&[0; 10]), 5),
        Err(CaptureError::DataLength {
            len: 4096,
            data_len: 10
        })
    );
    let r = c.next_resync(6).unwrap();
    c.resync_done(r.ticket, Some(&[0; 4096]), 7).unwrap();
    assert!(!c.in_gap());
}

#[test]
fn a_failed_write_is_read_back_rather_than_trusted() {
    let mut c = capture(CaptureMode::Sync, 4 * MIB);
    let a = go(&mut c, 4096, 4096);
    assert_eq!(
        c.write_completed(a, WriteData::Bytes(&[1; 4096]), false, 1),
        Ok(WriteDone::Now)
    );
    assert!(c.in_gap());
    assert_eq!(c.dirty_regions(), 1);
}

#[test]
fn wrong_data_is_refused_and_the_range_read_back() {
    let mut c = capture(CaptureMode::Async, 4 * MIB);
    let a = go(&mut c, 0, 4096);
    assert_eq!(
        c.write_completed(a, WriteData::Bytes(&[1; 512]), true, 1),
        Err(CaptureError::DataLength {
            len: 4096,
            data_len: 512
        })
    );
    assert!(c.in_gap());
    let z = match c.begin_write(0, 4096, true).unwrap() {
        Admit::Go(t) => t,
        Admit::Wait => panic!(),
    };
    assert!(c
        .write_completed(z, WriteData::Bytes(&[0; 4096]), true, 2)
        .is_err());
}

#[test]
fn long_writes_become_records_of_at_most_one_mib() {
    let mut c = capture(CaptureMode::Sync, 8 * MIB);
    let t = go(&mut c, 0, 3 * MIB + 4096);
    let data = vec![9u8; (3 * MIB + 4096) as usize];
    assert_eq!(
        c.write_completed(t, WriteData::Bytes(&data), true, 1),
        Ok(WriteDone::WhenDurable(4))
    );
    let lens: Vec<u64> = drain(&mut c).iter().map(|r| r.3).collect();
    assert_eq!(lens, vec![MIB, MIB, MIB, 4096]);
    let z = match c.begin_write(0, 8 * MIB, true).unwrap() {
        Admit::Go(t) => t,
        Admit::Wait => panic!(),
    };
    c.write_completed(z, WriteData::Zeroes, true, 2).unwrap();
    assert_eq!(drain(&mut c), vec![(5, RecordKind::Zero, 0, 8 * MIB)]);
}

#[test]
fn acknowledgements_are_checked_and_a_restarted_service_gets_records_again() {
    let mut c = capture(CaptureMode::Async, 4 * MIB);
    for i in 0..3 {
        let t = go(&mut c, i * 4096, 4096);
        c.write_completed(t, WriteData::Bytes(&[1; 4096]), true, i)
            .unwrap();
    }
    assert_eq!(
        c.ack(1),
        Err(CaptureError::AckBeyondSent { ack: 1, sent: 0 })
    );
    assert_eq!(drain(&mut c).len(), 3);
    c.ack(1).unwrap();
    assert_eq!(
        c.ack(0),
        Err(CaptureError::AckBehind { ack: 0, durable: 1 })
    );
    // The service restarts with a journal ending at 2 (its ack of 2 was lost).
    c.rewind(2).unwrap();
    assert_eq!(c.durable_seq(), 2);
    assert_eq!(
        drain(&mut c).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![3]
    );
    c.rewind(2).unwrap();
    assert_eq!(drain(&mut c).len(), 1, "sent again after a rewind");
    assert!(c.rewind(9).is_err());
    assert!(c.rewind(1).is_err());
}

#[test]
fn bad_configurations_and_ranges_are_refused() {
    let small = CaptureConfig {
        buffer_max_bytes: 100,
        ..CaptureConfig::new(CaptureMode::Sync, 1)
    };
    assert!(matches!(
        Capture::new(geometry(), small),
        Err(CaptureError::BufferTooSmall { .. })
    ));
    assert_eq!(
        Capture::new(geometry(), CaptureConfig::new(CaptureMode::Sync, 0)).err(),
        Some(CaptureError::FirstSeq)
    );
    let mut c = capture(CaptureMode::Async, 4 * MIB);
    assert!(c.begin_write(100, 512, false).is_err());
    assert!(c.begin_write(16 * MIB, 512, false).is_err());
    assert!(c.mark_dirty(0, 0, 1).is_err());
}

#[test]
fn too_many_writes_in_flight_wait() {
    let config = CaptureConfig {
        writes_in_flight_max: 2,
        ..CaptureConfig::new(CaptureMode::Async, 1)
    };
    let mut c = Capture::new(geometry(), config).unwrap();
    go(&mut c, 0, 512);
    go(&mut c, 512, 512);
    assert_eq!(c.begin_write(1024, 512, false), Ok(Admit::Wait));
}
