//! The filter's callbacks against a recording framework. The simulator runs the filter
//! inside a whole simulated stack; these tests pin down each callback's contract.

extern crate std;

use alloc::sync::Arc;
use std::vec;
use std::vec::Vec;

use super::fake_fw::{Did, Fw};
use super::*;
use crate::abi::{Control, ControlCommand, Hydrate, Ioctl, MissingBatch};
use crate::geometry::Geometry;
use crate::meta::testing::CrashStore;
use crate::meta::{Identity, Metadata};

const R: u64 = 4096;

fn identity(regions: u64) -> Attach {
    Attach {
        volume_size_bytes: regions * R,
        region_size_bytes: R as u32,
        backup_identity: [3; 32],
        mode: crate::abi::RestoreMode::InPlace,
    }
}

fn filter(regions: u64) -> (Filter<Fw>, Fw, CrashStore) {
    filter_with(regions, FilterConfig::default())
}

fn filter_with(regions: u64, config: FilterConfig) -> (Filter<Fw>, Fw, CrashStore) {
    let geometry = Geometry::new(regions * R, 4096).unwrap();
    let mut store = CrashStore::new(Metadata::store_pages(&geometry));
    let meta_identity = Identity {
        volume_size_bytes: regions * R,
        region_size_bytes: 4096,
        backup_id: [3; 32],
    };
    let meta = Metadata::create(&mut store, &meta_identity).unwrap();
    let map = Arc::new(RegionMap::new(geometry).unwrap());
    (
        Filter::new(map, meta, identity(regions), config),
        Fw::default(),
        store,
    )
}

fn control(
    f: &mut Filter<Fw>,
    fw: &mut Fw,
    r: u32,
    ioctl: Ioctl,
    input: Vec<u8>,
    output_len: usize,
) {
    fw.params.insert(
        r,
        RequestParameters::DeviceControl {
            ioctl: ioctl.code(),
            input_len: input.len(),
            output_len,
        },
    );
    fw.input.insert(r, input);
    fw.output.insert(r, vec![0; output_len]);
    f.on_control(fw, r);
}

fn attach_and_start(f: &mut Filter<Fw>, fw: &mut Fw, regions: u64) {
    let a = identity(regions);
    let mut buf = vec![0; a.encoded_len()];
    a.encode(&mut buf).unwrap();
    control(f, fw, 900, Ioctl::Attach, buf, 0);
    let c = Control {
        command: ControlCommand::Start,
    };
    let mut buf = vec![0; c.encoded_len()];
    c.encode(&mut buf).unwrap();
    control(f, fw, 901, Ioctl::Control, buf, 0);
}

fn read(f: &mut Filter<Fw>, fw: &mut Fw, r: u32, offset: u64, len: u64) {
    fw.params.insert(r, RequestParameters::Read { offset, len });
    f.on_io(fw, r);
}

#[test]
fn a_held_read_reaches_the_service_through_a_parked_request_and_is_served_after_hydrate() {
    let (mut f, mut fw, _store) = filter(16);
    attach_and_start(&mut f, &mut fw, 16);
    control(
        &mut f,
        &mut fw,
        1,
        Ioctl::GetMissing,
        vec![],
        Ioctl::GetMissing.output_max_bytes(),
    );
    assert!(fw.did.contains(&Did::Parked(1)));
    read(&mut f, &mut fw, 10, 3 * R, 512);
    // The parked request came back with the wanted range.
    let (len, out) = fw
        .did
        .iter()
        .find_map(|d| match d {
            Did::Completed(1, Status::SUCCESS, n) => Some(*n),
            _ => None,
        })
        .map(|n| (n, fw.output[&1].clone()))
        .expect("GET_MISSING completed");
    let batch = MissingBatch::decode(&out[..len]).unwrap();
    let ranges: Vec<_> = batch.iter().map(|r| (r.offset, r.len)).collect();
    assert_eq!(ranges, vec![(3 * R, R)]);
    // The service answers with data; the filter writes it from the request's payload.
    let payload = vec![0xAB; R as usize];
    let h = Hydrate::data(3 * R, &payload);
    let mut buf = vec![0; h.encoded_len()];
    h.encode(&mut buf).unwrap();
    fw.did.clear();
    control(&mut f, &mut fw, 2, Ioctl::Hydrate, buf, 0);
    let lower = match fw.did.as_slice() {
        [Did::WroteLower(
            lower,
            offset,
            len,
            WriteSource::Payload {
                request: 2,
                payload_offset: 0,
            },
        )] => {
            assert_eq!((*offset, *len), (3 * R, R));
            *lower
        }
        other => panic!("{other:?}"),
    };
    fw.did.clear();
    f.on_lower_complete(&mut fw, lower, Status::SUCCESS);
    // The hydrate request completes and the read goes down.
    assert!(fw.did.contains(&Did::Completed(2, Status::SUCCESS, 0)));
    assert!(fw.did.iter().any(|d| matches!(d, Did::Lower(10, _))));
}

#[test]
fn a_mismatched_attach_is_refused() {
    let (mut f, mut fw, _store) = filter(16);
    let mut a = identity(16);
    a.backup_identity = [9; 32];
    let mut buf = vec![0; a.encoded_len()];
    a.encode(&mut buf).unwrap();
    control(&mut f, &mut fw, 1, Ioctl::Attach, buf, 0);
    assert!(matches!(fw.did[0], Did::Completed(1, s, 0) if s.is_error()));
    assert_eq!(f.counters().bad_service_requests, 1);
    // A detached filter does not take the service's pended requests.
    control(&mut f, &mut fw, 2, Ioctl::GetMissing, vec![], 8192);
    assert_eq!(fw.did[1], Did::Completed(2, Status::DEVICE_NOT_READY, 0));
}

#[test]
fn garbage_service_buffers_get_a_status_and_change_nothing() {
    let (mut f, mut fw, _store) = filter(16);
    attach_and_start(&mut f, &mut fw, 16);
    fw.did.clear();
    for (r, ioctl) in [
        (1, Ioctl::Hydrate),
        (2, Ioctl::FetchFailed),
        (3, Ioctl::QueryBitmap),
        (4, Ioctl::Control),
    ] {
        control(&mut f, &mut fw, r, ioctl, vec![0xFF; 40], 64);
    }
    assert_eq!(fw.did.len(), 4);
    assert!(fw
        .did
        .iter()
        .all(|d| matches!(d, Did::Completed(_, s, 0) if s.is_error())));
    assert_eq!(f.engine().map().restored_count(), 0);
}

/// Attaches the service and restores both regions of a two-region volume with a zero
/// hydrate (request `hydrate`): written, flushed, committed; the filter is then a
/// pass-through.
fn restore_both_regions(f: &mut Filter<Fw>, fw: &mut Fw, store: &mut CrashStore, hydrate: u32) {
    attach_and_start(f, fw, 2);
    let h = Hydrate::zero(0, 2 * R);
    let mut buf = vec![0; h.encoded_len()];
    h.encode(&mut buf).unwrap();
    control(f, fw, hydrate, Ioctl::Hydrate, buf, 0);
    let write = fw.did.iter().find_map(|d| match d {
        Did::WroteLower(l, 0, len, WriteSource::Zeros) if *len == 2 * R => Some(*l),
        _ => None,
    });
    f.on_lower_complete(fw, write.unwrap(), Status::SUCCESS);
    let flush = fw.did.iter().find_map(|d| match d {
        Did::FlushedLower(l) => Some(*l),
        _ => None,
    });
    f.on_lower_complete(fw, flush.unwrap(), Status::SUCCESS);
    assert!(fw.did.contains(&Did::Commit(1)));
    assert!(!f.is_passthrough());
    f.on_commit_work(fw, 1, store);
    assert!(f.is_passthrough());
}

#[test]
fn once_everything_is_durable_requests_go_down_untouched() {
    let (mut f, mut fw, mut store) = filter(2);
    restore_both_regions(&mut f, &mut fw, &mut store, 1);
    fw.did.clear();
    read(&mut f, &mut fw, 7, 0, 512);
    assert_eq!(fw.did, vec![Did::Forgot(7)]);
    assert_eq!(f.status_counters().state, DriverState::AllRestored);
}

#[test]
fn a_single_range_trim_goes_through_the_engine_and_a_multi_range_one_is_dropped() {
    let (mut f, mut fw, _store) = filter(16);
    let dsm = |ranges: &[(u64, u64)]| {
        let mut b = Vec::new();
        for v in [28u32, 1, 0, 0, 0, 32, (ranges.len() * 16) as u32, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for (o, l) in ranges {
            b.extend_from_slice(&o.to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
        }
        b
    };
    for (r, ranges) in [(1u32, vec![(R, 2 * R)]), (2, vec![(0, R), (4 * R, R)])] {
        let input = dsm(&ranges);
        fw.params.insert(
            r,
            RequestParameters::DeviceControl {
                ioctl: IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES,
                input_len: input.len(),
                output_len: 0,
            },
        );
        fw.input.insert(r, input);
        f.on_io(&mut fw, r);
    }
    let lower = fw.did.iter().find_map(|d| match d {
        Did::Lower(1, l) => Some(*l),
        _ => None,
    });
    assert!(fw.did.contains(&Did::Completed(2, Status::SUCCESS, 0)));
    f.on_lower_complete(&mut fw, lower.unwrap(), Status::SUCCESS);
    assert!(f.engine().map().is_range_restored(1..3));
    assert_eq!(f.counters().trims_dropped, 1);
}

#[test]
fn wanted_ranges_past_the_queue_bound_are_merged_not_lost() {
    let regions = 256;
    let config = FilterConfig {
        missing_queue_max: 16,
        ..FilterConfig::default()
    };
    let (mut f, mut fw, _store) = filter_with(regions, config);
    attach_and_start(&mut f, &mut fw, regions);
    // Reads of every other region: one wanted range each, more than the queue holds.
    let reads = 100u64;
    for i in 0..reads {
        read(&mut f, &mut fw, 100 + i as u32, 2 * i * R, 512);
    }
    assert_eq!(f.engine().held_count() as u64, reads);
    // The queue never holds more than its bound, yet every held read's region is asked
    // for (some inside a widened range).
    let mut asked = std::collections::BTreeSet::new();
    for r in 0..1000u32 {
        if asked.len() as u64 == reads {
            break;
        }
        let id = 10_000 + r;
        control(
            &mut f,
            &mut fw,
            id,
            Ioctl::GetMissing,
            vec![],
            Ioctl::GetMissing.output_max_bytes(),
        );
        let Some(n) = fw.did.iter().find_map(|d| match d {
            Did::Completed(i, Status::SUCCESS, n) if *i == id => Some(*n),
            _ => None,
        }) else {
            break;
        };
        let out = fw.output[&id].clone();
        for range in MissingBatch::decode(&out[..n]).unwrap().iter() {
            for region in range.offset / R..(range.offset + range.len) / R {
                if region % 2 == 0 {
                    asked.insert(region);
                }
            }
        }
    }
    assert_eq!(
        asked.len() as u64,
        reads,
        "every held read's region was asked for"
    );
}

fn dsm_request(f: &mut Filter<Fw>, fw: &mut Fw, r: u32, action: u32, ranges: &[(u64, u64)]) {
    let mut b = Vec::new();
    for v in [28u32, action, 0, 0, 0, 32, (ranges.len() * 16) as u32, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for (o, l) in ranges {
        b.extend_from_slice(&o.to_le_bytes());
        b.extend_from_slice(&l.to_le_bytes());
    }
    fw.params.insert(
        r,
        RequestParameters::DeviceControl {
            ioctl: IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES,
            input_len: b.len(),
            output_len: 0,
        },
    );
    fw.input.insert(r, b);
    f.on_io(fw, r);
}

/// Issue 10, item 11: an offloaded data transfer (here `DeviceDsmAction_OffloadRead`)
/// would read the empty disk below a missing region; it fails until the pass-through.
#[test]
fn item11_offload_actions_fail_not_supported_until_the_pass_through() {
    const OFFLOAD_READ: u32 = 3;
    let (mut f, mut fw, mut store) = filter(2);
    dsm_request(&mut f, &mut fw, 1, OFFLOAD_READ, &[(0, R)]);
    assert_eq!(fw.did, vec![Did::Completed(1, Status::NOT_SUPPORTED, 0)]);
    // Restore everything; then the same request goes down untouched.
    restore_both_regions(&mut f, &mut fw, &mut store, 2);
    fw.did.clear();
    dsm_request(&mut f, &mut fw, 3, OFFLOAD_READ, &[(0, R)]);
    assert_eq!(fw.did, vec![Did::Forgot(3)]);
}

/// Issue 10, item 12: a held request is cancelable; cancelling it completes it once,
/// with `CANCELLED`, and forgets the regions asked only for it.
#[test]
fn item12_a_held_request_is_cancelable_and_a_cancel_completes_it_once() {
    let (mut f, mut fw, _store) = filter(16);
    attach_and_start(&mut f, &mut fw, 16);
    read(&mut f, &mut fw, 10, 3 * R, 512);
    assert!(fw.did.contains(&Did::Marked(10)));
    assert_eq!(f.engine().requested_runs().count(), 1);
    fw.did.clear();
    // The I/O manager cancels it: the cancel routine is taken, the callback runs.
    fw.cancelled.insert(10);
    f.on_cancel(&mut fw, 10);
    assert_eq!(fw.did, vec![Did::Completed(10, Status::CANCELLED, 0)]);
    assert_eq!(f.engine().held_count(), 0);
    assert_eq!(
        f.engine().requested_runs().count(),
        0,
        "nobody waits for it"
    );
}

/// Issue 10, item 12: cancellation that wins the race against the filter's own
/// completion (unmarking fails) leaves completing to the cancel callback.
#[test]
fn item12_a_cancel_racing_the_forward_is_completed_by_the_callback_only() {
    let (mut f, mut fw, _store) = filter(16);
    attach_and_start(&mut f, &mut fw, 16);
    read(&mut f, &mut fw, 10, 3 * R, 512);
    // Cancelled, but the callback has not run yet when the data arrives.
    fw.cancelled.insert(10);
    let h = Hydrate::zero(3 * R, R);
    let mut buf = vec![0; h.encoded_len()];
    h.encode(&mut buf).unwrap();
    control(&mut f, &mut fw, 2, Ioctl::Hydrate, buf, 0);
    let write = fw.did.iter().find_map(|d| match d {
        Did::WroteLower(l, ..) => Some(*l),
        _ => None,
    });
    fw.did.clear();
    f.on_lower_complete(&mut fw, write.unwrap(), Status::SUCCESS);
    // Not sent down and not completed: unmarking lost the race.
    assert!(!fw
        .did
        .iter()
        .any(|d| matches!(d, Did::Lower(10, _) | Did::Completed(10, ..))));
    f.on_cancel(&mut fw, 10);
    let completions: Vec<_> = fw
        .did
        .iter()
        .filter(|d| matches!(d, Did::Completed(10, ..)))
        .collect();
    assert_eq!(completions, vec![&Did::Completed(10, Status::CANCELLED, 0)]);
}

/// A request cancelled before the filter could mark it is completed by the filter.
#[test]
fn item12_a_request_cancelled_before_it_is_marked_completes_cancelled() {
    let (mut f, mut fw, _store) = filter(16);
    fw.cancelled.insert(10);
    read(&mut f, &mut fw, 10, 3 * R, 512);
    assert!(fw.did.contains(&Did::Completed(10, Status::CANCELLED, 0)));
    assert_eq!(f.engine().held_count(), 0);
}

/// A filter whose held requests time out after a microsecond.
fn short_hold() -> FilterConfig {
    FilterConfig {
        engine: crate::engine::EngineConfig {
            hold_deadline_ns: 1_000,
            ..crate::engine::EngineConfig::default()
        },
        ..FilterConfig::default()
    }
}

/// Issue 10, item 12: completing a held request without unmarking it first (the mutant)
/// is what KMDF's verifier refuses; the recording framework refuses it too.
#[test]
#[should_panic(expected = "completed while still marked cancelable")]
fn item12_completing_a_cancelable_request_is_refused() {
    crate::mutants::set(Some(crate::mutants::Mutant::CompleteWhileCancelable));
    let (mut f, mut fw, _store) = filter_with(16, short_hold());
    read(&mut f, &mut fw, 10, 3 * R, 512);
    assert!(fw.did.contains(&Did::Marked(10)));
    // The hold deadline passes: the engine fails the request.
    fw.now_ns = 10_000;
    f.on_timer(&mut fw);
    fw.now_ns = 20_000;
    f.on_timer(&mut fw);
}

/// Without the mutant the same timeout unmarks the request before completing it.
#[test]
fn item12_a_timed_out_held_request_is_unmarked_then_completed() {
    let (mut f, mut fw, _store) = filter_with(16, short_hold());
    read(&mut f, &mut fw, 10, 3 * R, 512);
    fw.now_ns = 10_000;
    f.on_timer(&mut fw);
    fw.now_ns = 20_000;
    f.on_timer(&mut fw);
    let at = |d: &Did| fw.did.iter().position(|x| x == d);
    let unmarked = at(&Did::Unmarked(10)).expect("unmarked");
    let completed = at(&Did::Completed(10, Status::IO_TIMEOUT, 0)).expect("completed");
    assert!(unmarked < completed);
}

fn protected(
    mode: crate::capture::CaptureMode,
    buffer_max_bytes: u64,
) -> (Filter<Fw>, Fw, CrashStore) {
    use crate::capture::{Capture, CaptureConfig, BUFFER_MIN_BYTES};
    let (mut f, mut fw, mut store) = filter(2);
    restore_both_regions(&mut f, &mut fw, &mut store, 1);
    let geometry = Geometry::new(2 * R, 4096).unwrap();
    let config = CaptureConfig {
        buffer_max_bytes: buffer_max_bytes.max(BUFFER_MIN_BYTES),
        ..CaptureConfig::new(mode, 1)
    };
    f.enable_capture(CaptureTap::new(Capture::new(geometry, config).unwrap()));
    fw.did.clear();
    (f, fw, store)
}

fn write(f: &mut Filter<Fw>, fw: &mut Fw, r: u32, offset: u64, fill: u8) {
    fw.params.insert(
        r,
        RequestParameters::Write {
            offset,
            len: R,
            fua: false,
        },
    );
    fw.input.insert(r, vec![fill; R as usize]);
    f.on_io(fw, r);
}

fn sent(fw: &Fw, r: u32) -> Option<LowerId> {
    fw.did.iter().find_map(|d| match d {
        Did::Lower(x, l) if *x == r => Some(*l),
        _ => None,
    })
}

fn records(f: &mut Filter<Fw>) -> Vec<(u64, crate::abi::RecordKind, Vec<u8>)> {
    let mut buf = vec![0u8; crate::abi::RECORD_BATCH_MAX_BYTES];
    let tap = f.capture_mut().unwrap();
    let len = tap.next_batch(&mut buf).unwrap().unwrap();
    crate::abi::RecordBatch::decode(&buf[..len])
        .unwrap()
        .iter()
        .map(|r| (r.seq, r.kind, r.payload.to_vec()))
        .collect()
}

#[test]
fn a_protected_sync_write_is_numbered_at_completion_and_answered_once_durable() {
    use crate::abi::RecordKind;
    let (mut f, mut fw, _store) = protected(crate::capture::CaptureMode::Sync, 1 << 20);
    // Even on a restored volume, a protected one's requests go through the engine.
    read(&mut f, &mut fw, 20, 0, 512);
    assert!(sent(&fw, 20).is_some() && !fw.did.contains(&Did::Forgot(20)));
    write(&mut f, &mut fw, 10, 0, 0xAB);
    write(&mut f, &mut fw, 11, R, 0xCD);
    let (a, b) = (sent(&fw, 10).unwrap(), sent(&fw, 11).unwrap());
    // Completion order, not dispatch order, numbers them.
    f.on_lower_complete(&mut fw, b, Status::SUCCESS);
    f.on_lower_complete(&mut fw, a, Status::SUCCESS);
    let answered = |fw: &Fw, r: u32| {
        fw.did
            .contains(&Did::Completed(r, Status::SUCCESS, R as usize))
    };
    assert!(!answered(&fw, 10) && !answered(&fw, 11), "{:?}", fw.did);
    assert!(
        fw.did.contains(&Did::Marked(10)),
        "a parked answer is cancelable"
    );
    let got = records(&mut f);
    assert_eq!(got[0], (1, RecordKind::Write, vec![0xCD; R as usize]));
    assert_eq!(got[1], (2, RecordKind::Write, vec![0xAB; R as usize]));
    f.capture_ack(&mut fw, 1).unwrap();
    assert!(answered(&fw, 11) && !answered(&fw, 10));
    f.capture_ack(&mut fw, 2).unwrap();
    assert!(answered(&fw, 10));
    // A flush closes the epoch: a point at its completion holding both writes.
    fw.params.insert(12, RequestParameters::Flush);
    f.on_io(&mut fw, 12);
    let l = sent(&fw, 12).unwrap();
    f.on_lower_complete(&mut fw, l, Status::SUCCESS);
    let point = f.capture_mut().unwrap().take_offered().unwrap();
    assert_eq!(point.seq, 3);
    assert_eq!(records(&mut f)[0].1, RecordKind::Flush);
}

#[test]
fn a_write_without_room_is_held_with_what_follows_it_and_sent_after_the_ack() {
    let (mut f, mut fw, _store) = protected(crate::capture::CaptureMode::Sync, 0);
    write(&mut f, &mut fw, 10, 0, 1);
    let l = sent(&fw, 10).unwrap();
    f.on_lower_complete(&mut fw, l, Status::SUCCESS);
    // The buffer (8 KiB, half of it kept for points) has no room for a second write.
    write(&mut f, &mut fw, 11, R, 2);
    read(&mut f, &mut fw, 12, R, 512);
    assert_eq!((sent(&fw, 11), sent(&fw, 12)), (None, None));
    assert!(fw.did.contains(&Did::Marked(11)) && fw.did.contains(&Did::Marked(12)));
    assert_eq!(f.capture().unwrap().held_count(), 2);
    records(&mut f);
    f.capture_ack(&mut fw, 1).unwrap();
    assert!(
        sent(&fw, 11).is_some() && sent(&fw, 12).is_none(),
        "{:?}",
        fw.did
    );
    // The read waits for the held write's completion, then goes.
    let l = sent(&fw, 11).unwrap();
    f.on_lower_complete(&mut fw, l, Status::SUCCESS);
    assert!(sent(&fw, 12).is_some());
}
