//! Unit tests of the two DR cores: one rule each, driven by hand.

use alloc::vec;
use alloc::vec::Vec;

use super::bits::Bits;
use super::primary::{HotExtents, Primary, PrimaryAction, PrimaryConfig, Written};
use super::secondary::{Secondary, SecondaryAction, SecondaryConfig, WriteTicket};
use super::wire::{Item, ItemBody, Message};
use super::{Binding, DrError};
use crate::geometry::Geometry;

fn geometry() -> Geometry {
    Geometry::new(8 * 4096, 4096).unwrap()
}

fn binding() -> Binding {
    Binding {
        primary_id: [1; 16],
        volume_id: [2; 16],
        volume_size_bytes: 8 * 4096,
        region_size_bytes: 4096,
    }
}

fn actions(p: &mut Primary) -> Vec<PrimaryAction> {
    core::iter::from_fn(|| p.poll_action()).collect()
}

fn sends(p: &mut Primary) -> Vec<ItemBody> {
    core::iter::from_fn(|| p.poll_send().unwrap())
        .map(|m| match m {
            Message::Item(i) => i.body,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_region_is_marked_before_its_read_and_later_writes_are_streamed() {
    let mut p = Primary::new(PrimaryConfig::new(geometry()), Bits::new(8));
    p.start_session(1);
    // A write to region 0 before the sync reaches it stays local...
    let early = p.begin_write(0, 512).unwrap();
    let a = actions(&mut p);
    assert!(a.contains(&PrimaryAction::DispatchWrite(early)), "{a:?}");
    // ...and the sync marked region 0 sent but its read waits for that write.
    assert!(p.sent().get(0));
    assert!(!a
        .iter()
        .any(|x| matches!(x, PrimaryAction::ReadRegion { region: 0, .. })));
    // A write admitted now is streamed at completion, after the region's data.
    let late = p.begin_write(512, 512).unwrap();
    p.write_completed(early, Written::Bytes(&[1; 512]), true);
    let a = actions(&mut p);
    let read0 = a
        .iter()
        .find_map(|x| match x {
            PrimaryAction::ReadRegion {
                ticket, region: 0, ..
            } => Some(*ticket),
            _ => None,
        })
        .expect("region 0 read once the early write completed");
    assert!(
        !a.contains(&PrimaryAction::DispatchWrite(late)),
        "the late write waits for the read"
    );
    p.region_read(read0, Some(&[1; 4096]));
    assert!(actions(&mut p).contains(&PrimaryAction::DispatchWrite(late)));
    p.write_completed(late, Written::Bytes(&[2; 512]), true);
    let items = sends(&mut p);
    let data_at = items
        .iter()
        .position(|b| matches!(b, ItemBody::RegionData { region: 0, .. }))
        .unwrap();
    let write_at = items
        .iter()
        .position(|b| matches!(b, ItemBody::Write { offset: 512, .. }))
        .unwrap();
    assert!(data_at < write_at, "{items:?}");
    assert!(!items
        .iter()
        .any(|b| matches!(b, ItemBody::Write { offset: 0, .. })));
    assert_eq!(p.counters().writes_local, 1);
    assert_eq!(p.counters().writes_streamed, 1);
}

#[test]
fn a_read_for_sending_behind_a_failed_write_is_dropped_and_the_region_is_read_again() {
    let mut p = Primary::new(PrimaryConfig::new(geometry()), Bits::new(8));
    p.start_session(1);
    // The sync marks region 0 and reads it behind a write already dispatched there.
    let w = p.begin_write(0, 512).unwrap();
    assert!(actions(&mut p).contains(&PrimaryAction::DispatchWrite(w)));
    assert!(p.sent().get(0));
    // The write fails: what region 0 holds is unknown, so it leaves S under the read.
    p.write_completed(w, Written::Bytes(&[1; 512]), false);
    assert!(!p.sent().get(0));
    let region0_reads = |a: &[PrimaryAction]| -> Vec<_> {
        a.iter()
            .filter_map(|x| match x {
                PrimaryAction::ReadRegion {
                    ticket, region: 0, ..
                } => Some(*ticket),
                _ => None,
            })
            .collect()
    };
    let first = region0_reads(&actions(&mut p));
    let [spoiled] = first[..] else {
        panic!("the waiting read starts: {first:?}")
    };
    p.region_read(spoiled, Some(&[1; 4096]));
    // Its bytes are not streamed; the sync marks the region again and reads it anew.
    let again = region0_reads(&actions(&mut p));
    let [fresh] = again[..] else {
        panic!("region 0 is read again: {again:?}")
    };
    assert!(p.sent().get(0));
    p.region_read(fresh, Some(&[2; 4096]));
    let items = sends(&mut p);
    let data: Vec<&ItemBody> = items
        .iter()
        .filter(|b| matches!(b, ItemBody::RegionData { region: 0, .. }))
        .collect();
    assert!(
        matches!(data[..], [ItemBody::RegionData { data, .. }] if data[0] == 2),
        "only the read after the failure is streamed: {items:?}"
    );
    let invalidate = items
        .iter()
        .position(|b| matches!(b, ItemBody::Invalidate { first: 0, .. }))
        .expect("the DR is told region 0 is not to be trusted");
    let sent = items
        .iter()
        .position(|b| matches!(b, ItemBody::RegionData { region: 0, .. }))
        .unwrap();
    assert!(invalidate < sent, "{items:?}");
}

#[test]
fn a_write_to_a_durably_sent_region_waits_for_the_commit_that_clears_it() {
    let mut p = Primary::new(PrimaryConfig::new(geometry()), Bits::full(8));
    let w = p.begin_write(4096, 512).unwrap();
    let a = actions(&mut p);
    let [PrimaryAction::Commit(t)] = a[..] else {
        panic!("{a:?}")
    };
    assert!(!p.commit_map(t).get(1) && p.commit_map(t).get(0));
    p.commit_done(t, true);
    assert!(!p.committed().get(1));
    assert_eq!(actions(&mut p), vec![PrimaryAction::DispatchWrite(w)]);
}

/// Runs a session until every region was read, sent and acknowledged durable.
fn sync_all(p: &mut Primary) {
    loop {
        let reads: Vec<_> = actions(p)
            .into_iter()
            .filter_map(|a| match a {
                PrimaryAction::ReadRegion { ticket, .. } => Some(ticket),
                _ => None,
            })
            .collect();
        if reads.is_empty() {
            break;
        }
        for t in reads {
            p.region_read(t, Some(&[7; 4096]));
        }
    }
    let n = sends(p).len() as u64;
    p.received(Message::Ack { durable_seq: n }).unwrap();
}

fn commit(p: &mut Primary) -> Option<super::primary::CommitTicket> {
    actions(p).into_iter().find_map(|a| match a {
        PrimaryAction::Commit(t) => Some(t),
        _ => None,
    })
}

#[test]
fn the_acknowledgement_that_ends_the_sync_is_committed_without_waiting_for_the_timer() {
    let mut p = Primary::new(PrimaryConfig::new(geometry()), Bits::new(8));
    p.start_session(1);
    sync_all(&mut p);
    let t = commit(&mut p).expect("a commit right after the last acknowledgement");
    assert!(p.commit_map(t).is_full() && p.commit_needs_data_flush(t));
    p.commit_done(t, true);
    assert!(p.is_synced());
}

#[test]
fn a_write_clears_the_marks_of_its_whole_extent_and_later_writes_there_do_not_wait() {
    let mut p = Primary::new(PrimaryConfig::new(geometry()), Bits::full(8));
    p.set_hot_extents(HotExtents::new(geometry(), 4 * 4096, 8, 2));
    let w = p.begin_write(4096, 512).unwrap();
    let t = commit(&mut p).expect("the write waits for a commit");
    let map = p.commit_map(t);
    assert!((0..4).all(|r| !map.get(r)) && (4..8).all(|r| map.get(r)));
    p.commit_done(t, true);
    assert_eq!(actions(&mut p), vec![PrimaryAction::DispatchWrite(w)]);
    p.write_completed(w, Written::Bytes(&[1; 512]), true);
    // Another region of the same extent: no mark to clear, no wait.
    let w2 = p.begin_write(3 * 4096, 512).unwrap();
    assert_eq!(actions(&mut p), vec![PrimaryAction::DispatchWrite(w2)]);
    p.write_completed(w2, Written::Bytes(&[2; 512]), true);
    // The other extent's marks still stand: a write there waits.
    let w3 = p.begin_write(5 * 4096, 512).unwrap();
    assert!(commit(&mut p).is_some());
    assert!(p.write_offset(w3).is_some());
    assert_eq!(p.counters().writes_held_for_commit, 2);
}

#[test]
fn a_hot_extent_gets_no_durable_marks_until_it_cooled() {
    let mut p = Primary::new(PrimaryConfig::new(geometry()), Bits::new(8));
    p.set_hot_extents(HotExtents::new(geometry(), 4 * 4096, 8, 2));
    let w = p.begin_write(0, 512).unwrap();
    assert_eq!(actions(&mut p), vec![PrimaryAction::DispatchWrite(w)]);
    p.write_completed(w, Written::Bytes(&[1; 512]), true);
    p.start_session(1);
    sync_all(&mut p);
    // Everything is acknowledged, but extent 0 was written one tick ago: only extent 1
    // is marked.
    let t = commit(&mut p).expect("a commit after the last acknowledgement");
    assert!((0..4).all(|r| !p.commit_map(t).get(r)) && (4..8).all(|r| p.commit_map(t).get(r)));
    p.commit_done(t, true);
    assert!(p.is_hot(0) && !p.is_synced());
    p.request_commit();
    assert!(p.is_hot(0), "one tick unwritten is not enough");
    let _ = commit(&mut p).map(|t| p.commit_done(t, true));
    p.request_commit();
    assert!(!p.is_hot(0));
    let t = commit(&mut p).expect("the cooled extent is marked");
    p.commit_done(t, true);
    assert!(p.is_synced());
}

#[test]
fn a_new_session_invalidates_what_is_not_durably_sent() {
    let mut committed = Bits::new(8);
    committed.set_range(0..3);
    committed.set(5);
    let mut p = Primary::new(PrimaryConfig::new(geometry()), committed);
    p.start_session(7);
    let items = sends(&mut p);
    assert_eq!(
        items[..3],
        [
            ItemBody::Invalidate { first: 3, count: 2 },
            ItemBody::Invalidate { first: 6, count: 2 },
            ItemBody::Ready
        ]
    );
}

#[test]
fn acknowledgements_past_the_stream_are_refused() {
    let mut p = Primary::new(PrimaryConfig::new(geometry()), Bits::full(8));
    p.start_session(1);
    let _ = sends(&mut p);
    assert!(matches!(
        p.received(Message::Ack { durable_seq: 9 }),
        Err(DrError::BadAck { .. })
    ));
    assert_eq!(
        p.received(Message::Fetch { region: 8 }),
        Err(DrError::BadRegion(8))
    );
}

fn dr() -> Secondary {
    Secondary::new(SecondaryConfig::new(geometry()), None, Bits::new(8), 0)
}

/// A DR site bound to [`binding`] that comes back with `present` at `generation`.
fn bound_dr(present: Bits, generation: u64) -> Secondary {
    Secondary::new(
        SecondaryConfig::new(geometry()),
        Some(binding()),
        present,
        generation,
    )
}

/// [`bound_dr`] with session 1 attached and its Ready item received.
fn ready_dr(present: Bits, generation: u64) -> Secondary {
    let mut s = bound_dr(present, generation);
    s.attach(1, binding()).unwrap();
    s.received(item(1, ItemBody::Ready)).unwrap();
    s
}

fn item(seq: u64, body: ItemBody) -> Message {
    Message::Item(Item { seq, body })
}

/// The next action, which must be a local write: its ticket and offset.
fn next_local_write(s: &mut Secondary) -> (WriteTicket, u64) {
    match s.poll_action() {
        Some(SecondaryAction::WriteLocal { ticket, offset, .. }) => (ticket, offset),
        other => panic!("not a local write: {other:?}"),
    }
}

#[test]
fn the_dr_refuses_another_primary_or_volume_or_size() {
    let mut s = dr();
    s.attach(1, binding()).unwrap();
    s.detach();
    let other = Binding {
        primary_id: [9; 16],
        ..binding()
    };
    assert_eq!(s.attach(2, other), Err(DrError::WrongPrimary));
    let other = Binding {
        volume_id: [9; 16],
        ..binding()
    };
    assert_eq!(s.attach(2, other), Err(DrError::WrongVolume));
    let other = Binding {
        volume_size_bytes: 4096,
        ..binding()
    };
    assert_eq!(s.attach(2, other), Err(DrError::GeometryMismatch));
}

#[test]
fn the_dr_refuses_a_gap_in_the_stream_and_bad_items() {
    let mut s = dr();
    s.attach(1, binding()).unwrap();
    assert_eq!(
        s.received(item(2, ItemBody::Flush)),
        Err(DrError::OutOfOrder {
            expected: 1,
            got: 2
        })
    );
    let short = ItemBody::RegionData {
        region: 0,
        data: vec![0; 512],
    };
    assert_eq!(s.received(item(1, short)), Err(DrError::BadItem { seq: 1 }));
    let past = ItemBody::Invalidate { first: 7, count: 2 };
    assert_eq!(s.received(item(1, past)), Err(DrError::BadItem { seq: 1 }));
    assert_eq!(
        s.received(Message::Ack { durable_seq: 1 }),
        Err(DrError::UnexpectedMessage)
    );
    assert_eq!(s.write(0, 512), Err(DrError::ReadOnly));
}

#[test]
fn a_read_waits_for_ready_then_fetches_and_is_served_after_the_data_lands() {
    let mut committed = Bits::new(8);
    committed.set(0);
    let mut s = bound_dr(committed, 3);
    // Region 0 is held from before a crash: not served until the primary spoke.
    let r = s.read(0, 8192).unwrap();
    assert_eq!(s.poll_action(), None);
    s.attach(1, binding()).unwrap();
    s.received(item(1, ItemBody::Invalidate { first: 1, count: 7 }))
        .unwrap();
    s.received(item(2, ItemBody::Ready)).unwrap();
    assert_eq!(s.poll_action(), None);
    assert!(s.is_trusted());
    // Asked when the session began and again after the invalidation dropped it: only
    // the region the read misses.
    let asked: Vec<Message> = core::iter::from_fn(|| s.poll_send()).collect();
    assert!(!asked.is_empty(), "{asked:?}");
    assert!(
        asked.iter().all(|m| *m == Message::Fetch { region: 1 }),
        "{asked:?}"
    );
    assert_eq!(s.poll_send(), None);
    let data = ItemBody::RegionData {
        region: 1,
        data: vec![5; 4096],
    };
    s.received(item(3, data)).unwrap();
    let (ticket, offset) = next_local_write(&mut s);
    assert_eq!(offset, 4096);
    s.local_write_done(ticket, true).unwrap();
    assert_eq!(
        s.poll_action(),
        Some(SecondaryAction::ReadLocal {
            ticket: r,
            offset: 0,
            len: 8192
        })
    );
    s.read_done(r);
    s.tick();
    let Some(SecondaryAction::Commit(c)) = s.poll_action() else {
        panic!()
    };
    assert_eq!(
        s.commit_state(c).generation,
        3,
        "region 1 was never held: nothing dropped"
    );
    s.commit_done(c, true);
    assert_eq!(s.poll_send(), Some(Message::Ack { durable_seq: 3 }));
}

#[test]
fn a_read_of_one_missing_region_is_answered_from_its_data_unless_a_later_item_holds_its_bytes() {
    let mut s = ready_dr(Bits::new(8), 0);
    assert_eq!(s.poll_action(), None);
    assert!(s.is_trusted());

    // Region 1 alone: answered from the region's data as its write starts, before it.
    let r = s.read(4096 + 512, 1024).unwrap();
    assert_eq!(s.poll_send(), Some(Message::Fetch { region: 1 }));
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    s.received(item(
        2,
        ItemBody::RegionData {
            region: 1,
            data: data.clone(),
        },
    ))
    .unwrap();
    assert_eq!(
        s.poll_action(),
        Some(SecondaryAction::ReadServed {
            ticket: r,
            data: data[512..1536].to_vec()
        })
    );
    let (ticket, offset) = next_local_write(&mut s);
    assert_eq!(offset, 4096);
    assert_eq!(s.poll_action(), None);
    s.local_write_done(ticket, true).unwrap();
    assert_eq!(s.counters().reads, 1);
    assert!(s.present().get(1));

    // Region 2 with a replicated write to the read's bytes already held behind its
    // data: the read is placed after both, read from the volume.
    let r = s.read(2 * 4096, 512).unwrap();
    assert_eq!(s.poll_send(), Some(Message::Fetch { region: 2 }));
    s.received(item(
        3,
        ItemBody::RegionData {
            region: 2,
            data: vec![7; 4096],
        },
    ))
    .unwrap();
    s.received(item(
        4,
        ItemBody::Write {
            offset: 2 * 4096,
            data: vec![9; 512],
        },
    ))
    .unwrap();
    let (region_write, offset) = next_local_write(&mut s);
    assert_eq!(offset, 8192);
    assert_eq!(
        s.poll_action(),
        None,
        "the write waits for the region's data"
    );
    s.local_write_done(region_write, true).unwrap();
    let (write, offset) = next_local_write(&mut s);
    assert_eq!(offset, 8192);
    s.local_write_done(write, true).unwrap();
    assert_eq!(
        s.poll_action(),
        Some(SecondaryAction::ReadLocal {
            ticket: r,
            offset: 8192,
            len: 512
        })
    );
    s.read_done(r);
}

#[test]
fn a_flush_is_committed_once_the_items_before_it_are_applied_not_at_the_next_tick() {
    let mut s = ready_dr(Bits::new(8), 0);
    assert_eq!(s.poll_action(), None);
    // Two regions whose local writes are still in flight when the flush arrives.
    for (seq, region) in [(2, 0), (3, 1)] {
        let data = vec![region as u8 + 1; 4096];
        s.received(item(seq, ItemBody::RegionData { region, data }))
            .unwrap();
    }
    s.received(item(4, ItemBody::Flush)).unwrap();
    let (first, _) = next_local_write(&mut s);
    let (second, _) = next_local_write(&mut s);
    // Nothing to commit yet: a commit now would cover neither region.
    assert_eq!(s.poll_action(), None);
    s.local_write_done(second, true).unwrap();
    assert_eq!(s.poll_action(), None);
    // The last write before the flush lands: the commit starts without a tick, and it
    // covers everything through the flush.
    s.local_write_done(first, true).unwrap();
    let Some(SecondaryAction::Commit(c)) = s.poll_action() else {
        panic!("the flush asked for no commit")
    };
    assert!(s.commit_state(c).present.get(0) && s.commit_state(c).present.get(1));
    s.commit_done(c, true);
    assert_eq!(s.poll_send(), Some(Message::Ack { durable_seq: 4 }));
}

#[test]
fn dropping_regions_bumps_the_generation() {
    let mut s = bound_dr(Bits::full(8), 4);
    s.attach(1, binding()).unwrap();
    s.received(item(1, ItemBody::Invalidate { first: 2, count: 1 }))
        .unwrap();
    s.received(item(2, ItemBody::Ready)).unwrap();
    s.received(item(3, ItemBody::Flush)).unwrap();
    let Some(SecondaryAction::Commit(c)) = s.poll_action() else {
        panic!()
    };
    assert_eq!(s.commit_state(c).generation, 5);
    assert!(!s.commit_state(c).present.get(2));
}

#[test]
fn promotion_is_refused_while_regions_are_missing_unless_forced() {
    let mut s = dr();
    assert_eq!(s.promote(false), Err(DrError::Incomplete { missing: 8 }));
    assert_eq!(s.promote(true), Ok(8));
    assert_eq!(s.attach(1, binding()), Err(DrError::Promoted));
}

#[test]
fn a_failed_replicated_write_drops_every_region_it_touched() {
    let mut s = ready_dr(Bits::full(8), 1);
    // Three sectors across the border of regions 2 and 3.
    let write = ItemBody::Write {
        offset: 3 * 4096 - 512,
        data: vec![7; 1536],
    };
    s.received(item(2, write)).unwrap();
    let (ticket, _) = next_local_write(&mut s);
    assert_eq!(
        s.local_write_done(ticket, false),
        Err(DrError::LocalWriteFailed {
            offset: 3 * 4096 - 512
        })
    );
    // Either region may hold any mix of old and new sectors now.
    assert!(!s.present().get(2) && !s.present().get(3));
    assert!(s.present().get(1) && s.present().get(4));
}
