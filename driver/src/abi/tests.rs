//! Tests of the whole ABI: one per rejection, round trips, and hostile bytes.

use super::*;
use crate::FailReason;
use proptest::prelude::*;
use std::format;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

pub(super) fn encode(message: &Message<'_>) -> Vec<u8> {
    let mut out = vec![0u8; message.encoded_len()];
    let written = message.encode(&mut out).expect("valid message encodes");
    assert_eq!(written, out.len());
    out
}

fn attach() -> Attach {
    Attach {
        volume_size_bytes: 1 << 30,
        region_size_bytes: 4096,
        backup_identity: [7; 32],
        mode: RestoreMode::InPlace,
    }
}

fn control() -> Vec<u8> {
    encode(&Message::Control(Control {
        command: ControlCommand::Start,
    }))
}

pub(super) fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub(super) fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// A header claiming `kind` and the buffer's own length, followed by `body`.
pub(super) fn framed(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
    bytes.extend_from_slice(&ABI_VERSION.to_le_bytes());
    bytes.extend_from_slice(&kind.to_le_bytes());
    bytes.extend_from_slice(&((HEADER_BYTES + body.len()) as u32).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

fn range(offset: u64, len: u64, flags: MissingFlags) -> MissingRange {
    MissingRange { offset, len, flags }
}

// ---- the header ----

#[test]
fn short_buffers_are_refused() {
    for len in 0..HEADER_BYTES {
        assert_eq!(
            Message::decode_any(&control()[..len]),
            Err(AbiError::Short {
                needed: HEADER_BYTES,
                got: len
            })
        );
    }
}

#[test]
fn oversized_buffers_are_refused_before_reading() {
    let bytes = vec![0u8; MESSAGE_MAX_BYTES + 1];
    assert_eq!(
        Message::decode_any(&bytes),
        Err(AbiError::TooLong {
            got: MESSAGE_MAX_BYTES + 1,
            max: MESSAGE_MAX_BYTES
        })
    );
}

#[test]
fn unknown_versions_are_refused() {
    // 1: before the status counters carried a refusal.
    for version in [0u16, 1, 3, u16::MAX] {
        let mut bytes = control();
        bytes[0..2].copy_from_slice(&version.to_le_bytes());
        assert_eq!(
            Message::decode_any(&bytes),
            Err(AbiError::Version {
                got: version,
                expected: ABI_VERSION
            })
        );
    }
}

#[test]
fn version_one_peers_are_refused_as_outdated() {
    // Version 1 had no mode, no map selector and no cutover: a driver and a service
    // of different releases stop at the first message, saying what to do.
    let mut bytes = control();
    bytes[0..2].copy_from_slice(&1u16.to_le_bytes());
    let refused = Message::decode_any(&bytes);
    assert_eq!(
        refused,
        Err(AbiError::Outdated {
            got: 1,
            expected: 2
        })
    );
    let text = refused.unwrap_err().to_string();
    assert!(text.contains("update the driver and the service"), "{text}");
    assert_eq!(refused.unwrap_err().status(), Status::INVALID_PARAMETER);
}

#[test]
fn unknown_kinds_are_refused() {
    // 12 is the first kind no message has.
    for kind in [0u16, 12, 0x100, u16::MAX] {
        let bytes = framed(kind, &[0; 8]);
        assert_eq!(
            Message::decode_any(&bytes),
            Err(AbiError::UnknownKind(kind))
        );
    }
}

#[test]
fn a_known_kind_other_than_the_expected_one_is_refused() {
    assert_eq!(
        Attach::decode(&control()),
        Err(AbiError::WrongKind {
            expected: MessageKind::Attach,
            got: MessageKind::Control
        })
    );
    assert!(matches!(
        Hydrate::decode(&control()),
        Err(AbiError::WrongKind { .. })
    ));
}

#[test]
fn requests_must_carry_the_kind_their_ioctl_names() {
    let bytes = control();
    assert_eq!(
        Message::decode_request(Ioctl::Control, &bytes),
        Ok(Some(Message::Control(Control {
            command: ControlCommand::Start
        })))
    );
    assert_eq!(
        Message::decode_request(Ioctl::Hydrate, &bytes),
        Err(AbiError::WrongKind {
            expected: MessageKind::Hydrate,
            got: MessageKind::Control
        })
    );
    // Codes without input ignore whatever buffer came with them.
    assert_eq!(
        Message::decode_request(Ioctl::GetStatus, &[1, 2, 3]),
        Ok(None)
    );
    for ioctl in Ioctl::ALL {
        if let Some(kind) = ioctl.input_kind() {
            assert!(kind.max_bytes() <= MESSAGE_MAX_BYTES);
        }
    }
}

#[test]
fn total_length_must_be_the_buffer_length() {
    let mut longer = control();
    longer.extend_from_slice(&[0; 8]);
    assert_eq!(
        Message::decode_any(&longer),
        Err(AbiError::TotalLength {
            header: CONTROL_BYTES as u32,
            buffer: CONTROL_BYTES + 8
        })
    );
    let shorter = &control()[..CONTROL_BYTES - 1];
    assert_eq!(
        Message::decode_any(shorter),
        Err(AbiError::TotalLength {
            header: CONTROL_BYTES as u32,
            buffer: CONTROL_BYTES - 1
        })
    );
}

#[test]
fn fixed_size_messages_of_another_size_are_refused() {
    // Header and length agree, but a control message is 16 bytes, not 24 or 8.
    for body in [&[1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], &[]] {
        let bytes = framed(MessageKind::Control as u16, body);
        assert_eq!(
            Message::decode_any(&bytes),
            Err(AbiError::Length {
                kind: MessageKind::Control,
                expected: CONTROL_BYTES,
                got: bytes.len()
            })
        );
    }
}

#[test]
fn reserved_fields_must_be_zero() {
    let mut bytes = control();
    put_u32(&mut bytes, 12, 1);
    assert_eq!(
        Message::decode_any(&bytes),
        Err(AbiError::Reserved {
            offset: 12,
            value: 1
        })
    );
    let mut bytes = encode(&Message::StatusCounters(counters()));
    put_u32(&mut bytes, 12, 0);
    assert_eq!(
        StatusCounters::decode(&bytes),
        Err(AbiError::UnknownMode(0))
    );
}

#[test]
fn unknown_modes_and_maps_are_refused() {
    for mode in [0u32, 3, u32::MAX] {
        let mut bytes = encode(&Message::Attach(attach()));
        put_u32(&mut bytes, 20, mode);
        assert_eq!(Attach::decode(&bytes), Err(AbiError::UnknownMode(mode)));
    }
    for map in [0u32, 3, u32::MAX] {
        let mut bytes = encode(&Message::BitmapQuery(BitmapQuery {
            first_word: 0,
            word_count: 1,
            map: MapSelector::Overlay,
        }));
        put_u32(&mut bytes, 20, map);
        assert_eq!(BitmapQuery::decode(&bytes), Err(AbiError::UnknownMap(map)));
        let mut bytes = encode(&Message::BitmapPage(
            BitmapPage::of_map(MapSelector::Overlay, 0, 64, 1, &[1]).unwrap(),
        ));
        put_u32(&mut bytes, 20, map);
        assert_eq!(BitmapPage::decode(&bytes), Err(AbiError::UnknownMap(map)));
    }
}

#[test]
fn pages_say_which_map_they_are_of() {
    let page = BitmapPage::of_map(MapSelector::Overlay, 0, 64, 2, &[0b11]).unwrap();
    let decoded_bytes = encode(&Message::BitmapPage(page));
    let decoded = BitmapPage::decode(&decoded_bytes).unwrap();
    assert_eq!(decoded.map, MapSelector::Overlay);
    assert_eq!(decoded.is_restored(1), Some(true));
    assert_ne!(
        decoded,
        BitmapPage::new(0, 64, 2, &[0b11]).unwrap(),
        "another map"
    );
    assert_eq!(
        BitmapPage::new(0, 64, 2, &[0b11]).unwrap().map,
        MapSelector::Restored
    );
}

// ---- attach ----

#[test]
fn attach_sizes_no_volume_can_have_are_refused() {
    let mut bytes = encode(&Message::Attach(attach()));
    put_u32(&mut bytes, 16, 3000);
    assert_eq!(
        Attach::decode(&bytes),
        Err(AbiError::Geometry(crate::GeometryError::RegionSize(3000)))
    );
    let mut bytes = encode(&Message::Attach(attach()));
    put_u64(&mut bytes, 8, 1000);
    assert_eq!(
        Attach::decode(&bytes),
        Err(AbiError::Geometry(crate::GeometryError::VolumeSize(1000)))
    );
    let bad = Attach {
        region_size_bytes: 0,
        ..attach()
    };
    assert!(matches!(
        bad.encode(&mut [0; ATTACH_BYTES]),
        Err(AbiError::Geometry(_))
    ));
}

#[test]
fn attach_mismatches_are_named() {
    let volume = attach();
    assert_eq!(volume.check_matches(&volume), Ok(()));
    let other_size = Attach {
        volume_size_bytes: 1 << 29,
        ..volume
    };
    assert_eq!(
        other_size.check_matches(&volume),
        Err(AbiError::VolumeSizeMismatch {
            attached: 1 << 29,
            volume: 1 << 30
        })
    );
    let other_region = Attach {
        region_size_bytes: 65536,
        ..volume
    };
    assert_eq!(
        other_region.check_matches(&volume),
        Err(AbiError::RegionSizeMismatch {
            attached: 65536,
            volume: 4096
        })
    );
    let other_backup = Attach {
        backup_identity: [8; 32],
        ..volume
    };
    assert_eq!(
        other_backup.check_matches(&volume),
        Err(AbiError::BackupIdentityMismatch)
    );
    assert_eq!(
        AbiError::BackupIdentityMismatch.status(),
        Status::DEVICE_NOT_READY
    );
    let overlay = Attach {
        mode: RestoreMode::Overlay,
        ..volume
    };
    let refused = overlay.check_matches(&volume);
    assert_eq!(
        refused,
        Err(AbiError::ModeMismatch {
            attached: RestoreMode::Overlay,
            volume: RestoreMode::InPlace
        })
    );
    assert_eq!(refused.unwrap_err().status(), Status::DEVICE_NOT_READY);
}

// ---- fetch failed, status, control ----

#[test]
fn unknown_fail_reasons_are_refused() {
    let good = FetchFailed {
        offset: 4096,
        len: 4096,
        reason: FailReason::Corrupt,
    };
    for reason in [0u32, 6, u32::MAX] {
        let mut bytes = encode(&Message::FetchFailed(good));
        put_u32(&mut bytes, 24, reason);
        assert_eq!(
            FetchFailed::decode(&bytes),
            Err(AbiError::UnknownReason(reason))
        );
    }
}

#[test]
fn misaligned_empty_and_wrapping_ranges_are_refused() {
    let cases = [
        (
            100,
            512,
            RangeError::Misaligned {
                offset: 100,
                len: 512,
            },
        ),
        (
            512,
            100,
            RangeError::Misaligned {
                offset: 512,
                len: 100,
            },
        ),
        (512, 0, RangeError::Empty(512)),
        (
            u64::MAX - 511,
            1024,
            RangeError::Overflow {
                offset: u64::MAX - 511,
                len: 1024,
            },
        ),
    ];
    for (offset, len, error) in cases {
        let mut bytes = encode(&Message::FetchFailed(FetchFailed {
            offset: 0,
            len: 512,
            reason: FailReason::Other,
        }));
        put_u64(&mut bytes, 8, offset);
        put_u64(&mut bytes, 16, len);
        assert_eq!(FetchFailed::decode(&bytes), Err(AbiError::Range(error)));
        // The encoder refuses the same message.
        let message = FetchFailed {
            offset,
            len,
            reason: FailReason::Other,
        };
        assert_eq!(
            message.encode(&mut [0; FETCH_FAILED_BYTES]),
            Err(AbiError::Range(error))
        );
        assert_eq!(
            Hydrate::zero(offset, len).encode(&mut [0; 64]),
            Err(AbiError::Range(error))
        );
    }
}

fn counters() -> StatusCounters {
    StatusCounters {
        state: DriverState::Running,
        regions_total: 100,
        regions_restored: 40,
        held_requests: 3,
        misses: 9,
        bytes_hydrated: 40 * 4096,
        hydrate_dropped_stale: 1,
        fetch_failures: 0,
        requests_failed: 0,
        refusal: None,
        mode: RestoreMode::Overlay,
        overlay_regions: 12,
    }
}

#[test]
fn unknown_driver_states_are_refused() {
    for state in [0u32, 8, u32::MAX] {
        let mut bytes = encode(&Message::StatusCounters(counters()));
        put_u32(&mut bytes, 8, state);
        assert_eq!(
            StatusCounters::decode(&bytes),
            Err(AbiError::UnknownState(state))
        );
    }
}

#[test]
fn a_refusal_crosses_only_with_the_detached_state_and_unknown_ones_are_refused() {
    for refusal in Refusal::ALL {
        let refused = StatusCounters {
            state: DriverState::Detached,
            refusal: Some(refusal),
            ..counters()
        };
        let bytes = encode(&Message::StatusCounters(refused));
        assert_eq!(StatusCounters::decode(&bytes), Ok(refused));
        for state in [DriverState::Running, DriverState::AllRestored] {
            let wrong = StatusCounters { state, ..refused };
            assert_eq!(
                wrong.encode(&mut [0; STATUS_COUNTERS_BYTES]),
                Err(AbiError::RefusedNotDetached { state })
            );
            let mut bytes = bytes.clone();
            put_u32(&mut bytes, 8, state as u32);
            assert_eq!(
                StatusCounters::decode(&bytes),
                Err(AbiError::RefusedNotDetached { state })
            );
        }
    }
    for code in [Refusal::ALL.len() as u32 + 1, u32::MAX] {
        let mut bytes = encode(&Message::StatusCounters(StatusCounters {
            state: DriverState::Detached,
            ..counters()
        }));
        put_u32(&mut bytes, 12, code);
        assert_eq!(
            StatusCounters::decode(&bytes),
            Err(AbiError::UnknownRefusal(code))
        );
    }
}

#[test]
fn more_restored_regions_than_regions_is_refused() {
    let mut bytes = encode(&Message::StatusCounters(counters()));
    put_u64(&mut bytes, 24, 101);
    assert_eq!(
        StatusCounters::decode(&bytes),
        Err(AbiError::RestoredCount {
            restored: 101,
            total: 100
        })
    );
}

#[test]
fn unknown_control_commands_are_refused() {
    for command in [0u32, 7, u32::MAX] {
        let mut bytes = control();
        put_u32(&mut bytes, 8, command);
        assert_eq!(
            Control::decode(&bytes),
            Err(AbiError::UnknownCommand(command))
        );
    }
}

// ---- missing batch ----

fn batch_bytes(ranges: &[MissingRange]) -> Vec<u8> {
    encode(&Message::MissingBatch(MissingBatch::new(ranges).unwrap()))
}

#[test]
fn batch_counts_above_the_maximum_are_refused() {
    let too_many = vec![range(0, 512, MissingFlags::BACKGROUND); MISSING_BATCH_MAX + 1];
    assert_eq!(
        MissingBatch::new(&too_many),
        Err(AbiError::CountTooLarge {
            kind: MessageKind::MissingBatch,
            count: MISSING_BATCH_MAX as u64 + 1,
            max: MISSING_BATCH_MAX as u64
        })
    );
    let mut bytes = batch_bytes(&[]);
    put_u32(&mut bytes, 8, u32::MAX);
    assert!(matches!(
        MissingBatch::decode(&bytes),
        Err(AbiError::CountTooLarge {
            count: 0xFFFF_FFFF,
            ..
        })
    ));
}

#[test]
fn batch_count_must_match_the_bytes() {
    let ranges = [range(0, 4096, MissingFlags::ON_DEMAND); 3];
    let mut bytes = batch_bytes(&ranges);
    put_u32(&mut bytes, 8, 2);
    assert_eq!(
        MissingBatch::decode(&bytes),
        Err(AbiError::Length {
            kind: MessageKind::MissingBatch,
            expected: MISSING_BATCH_PREFIX_BYTES + 2 * MISSING_RANGE_BYTES,
            got: bytes.len()
        })
    );
    // A batch too short for its own count field.
    let bytes = framed(MessageKind::MissingBatch as u16, &[0; 4]);
    assert_eq!(
        MissingBatch::decode(&bytes),
        Err(AbiError::Length {
            kind: MessageKind::MissingBatch,
            expected: MISSING_BATCH_PREFIX_BYTES,
            got: 12
        })
    );
}

#[test]
fn undefined_missing_flags_are_refused() {
    let mut bytes = batch_bytes(&[range(0, 4096, MissingFlags::ON_DEMAND)]);
    put_u32(&mut bytes, 16 + 16, 0x9);
    assert_eq!(
        MissingBatch::decode(&bytes),
        Err(AbiError::UnknownFlags {
            kind: MessageKind::MissingBatch,
            bits: 0x9,
            unknown: 0x8
        })
    );
}

#[test]
fn every_batch_entry_is_checked() {
    let ranges = [
        range(0, 4096, MissingFlags::ON_DEMAND),
        range(8192, 4096, MissingFlags::BACKGROUND),
    ];
    let mut bytes = batch_bytes(&ranges);
    put_u64(&mut bytes, 16 + 24 + 8, 4095);
    assert_eq!(
        MissingBatch::decode(&bytes),
        Err(AbiError::Range(RangeError::Misaligned {
            offset: 8192,
            len: 4095
        }))
    );
    let mut bytes = batch_bytes(&ranges);
    put_u32(&mut bytes, 16 + 24 + 20, 1);
    assert_eq!(
        MissingBatch::decode(&bytes),
        Err(AbiError::Reserved {
            offset: 16 + 24 + 20,
            value: 1
        }),
        "offsets are message offsets"
    );
    let bad = [range(0, 0, MissingFlags::ON_DEMAND)];
    assert_eq!(
        MissingBatch::new(&bad),
        Err(AbiError::Range(RangeError::Empty(0)))
    );
}

#[test]
fn a_full_batch_fits_the_advertised_buffer() {
    let ranges: Vec<MissingRange> = (0..MISSING_BATCH_MAX as u64)
        .map(|i| range(i * 8192, 4096, MissingFlags::WRITE_PARTIAL))
        .collect();
    let batch = MissingBatch::new(&ranges).unwrap();
    assert_eq!(batch.encoded_len(), MISSING_BATCH_MAX_BYTES);
    let mut out = vec![0u8; Ioctl::GetMissing.output_max_bytes()];
    let n = batch.encode(&mut out).unwrap();
    let decoded = MissingBatch::decode(&out[..n]).unwrap();
    assert_eq!(decoded, batch);
    assert_eq!(decoded.get(255), Some(ranges[255]));
    assert_eq!(decoded.get(256), None);
}

// ---- hydrate ----

#[test]
fn hydrates_longer_than_the_maximum_are_refused() {
    let len = u64::from(HYDRATE_MAX_BYTES) + 512;
    assert_eq!(
        Hydrate::zero(0, len).encode(&mut [0; 64]),
        Err(AbiError::HydrateTooLong {
            len,
            max: HYDRATE_MAX_BYTES
        })
    );
    let mut bytes = encode(&Message::Hydrate(Hydrate::zero(0, 512)));
    put_u64(&mut bytes, 16, len);
    assert!(matches!(
        Hydrate::decode(&bytes),
        Err(AbiError::HydrateTooLong { .. })
    ));
}

#[test]
fn payload_length_must_match_len_and_flags() {
    // ZERO with a payload.
    let mut bytes = encode(&Message::Hydrate(Hydrate::zero(0, 512)));
    put_u32(&mut bytes, 28, 512);
    assert_eq!(
        Hydrate::decode(&bytes),
        Err(AbiError::PayloadLength {
            len: 512,
            flags: 1,
            payload_len: 512
        })
    );
    // Data whose payload length is not the range length.
    let data = [0xAB; 1024];
    let mut bytes = encode(&Message::Hydrate(Hydrate::data(512, &data)));
    put_u32(&mut bytes, 28, 512);
    assert_eq!(
        Hydrate::decode(&bytes),
        Err(AbiError::PayloadLength {
            len: 1024,
            flags: 0,
            payload_len: 512
        })
    );
    // The encoder refuses a payload that disagrees with len.
    let wrong = Hydrate {
        len: 2048,
        ..Hydrate::data(0, &data)
    };
    assert!(matches!(
        wrong.encode(&mut [0; 4096]),
        Err(AbiError::PayloadLength { .. })
    ));
}

#[test]
fn hydrate_buffer_must_hold_exactly_the_payload() {
    let data = [0x5A; 512];
    let mut bytes = encode(&Message::Hydrate(Hydrate::data(0, &data)));
    bytes.truncate(bytes.len() - 8);
    let len = bytes.len() as u32;
    put_u32(&mut bytes, 4, len);
    assert_eq!(
        Hydrate::decode(&bytes),
        Err(AbiError::Length {
            kind: MessageKind::Hydrate,
            expected: HYDRATE_PREFIX_BYTES + 512,
            got: HYDRATE_PREFIX_BYTES + 504
        })
    );
    let bytes = framed(MessageKind::Hydrate as u16, &[0; 16]);
    assert!(matches!(
        Hydrate::decode(&bytes),
        Err(AbiError::Length {
            expected: HYDRATE_PREFIX_BYTES,
            ..
        })
    ));
}

#[test]
fn undefined_hydrate_flags_are_refused() {
    let mut bytes = encode(&Message::Hydrate(Hydrate::zero(0, 512)));
    put_u32(&mut bytes, 24, 0x3);
    assert_eq!(
        Hydrate::decode(&bytes),
        Err(AbiError::UnknownFlags {
            kind: MessageKind::Hydrate,
            bits: 3,
            unknown: 2
        })
    );
}

#[test]
fn a_full_8mib_hydrate_round_trips_without_copying_on_decode() {
    let data = vec![0xC3u8; HYDRATE_MAX_BYTES as usize];
    let hydrate = Hydrate::data(1 << 20, &data);
    let bytes = encode(&Message::Hydrate(hydrate));
    assert_eq!(bytes.len(), MESSAGE_MAX_BYTES);
    let decoded = Hydrate::decode(&bytes).unwrap();
    assert_eq!(decoded, hydrate);
    assert_eq!(
        decoded.payload.as_ptr(),
        bytes[HYDRATE_PREFIX_BYTES..].as_ptr(),
        "the payload borrows from the buffer"
    );
}

#[test]
fn a_prefix_then_the_payload_in_place_is_a_whole_hydrate() {
    let mut out = vec![0u8; HYDRATE_PREFIX_BYTES + 4096];
    let total = Hydrate::encode_prefix(8192, 4096, HydrateFlags::empty(), &mut out).unwrap();
    assert_eq!(total, out.len());
    out[HYDRATE_PREFIX_BYTES..].fill(0x11);
    let decoded = Hydrate::decode(&out).unwrap();
    assert_eq!((decoded.offset, decoded.len), (8192, 4096));
    assert!(decoded.payload.iter().all(|&b| b == 0x11));
    // The buffer must hold the payload too, not just the prefix.
    assert_eq!(
        Hydrate::encode_prefix(0, 4096, HydrateFlags::empty(), &mut [0; 64]),
        Err(AbiError::BufferTooSmall {
            needed: HYDRATE_PREFIX_BYTES + 4096,
            got: 64
        })
    );
    let n = Hydrate::encode_prefix(0, 4096, HydrateFlags::ZERO, &mut out).unwrap();
    assert_eq!(Hydrate::decode(&out[..n]).unwrap(), Hydrate::zero(0, 4096));
}

// ---- bitmap ----

#[test]
fn bitmap_counts_above_the_maximum_are_refused() {
    let query = BitmapQuery {
        first_word: 0,
        word_count: BITMAP_PAGE_WORDS_MAX + 1,
        map: MapSelector::Restored,
    };
    assert_eq!(
        query.encode(&mut [0; BITMAP_QUERY_BYTES]),
        Err(AbiError::CountTooLarge {
            kind: MessageKind::BitmapQuery,
            count: u64::from(BITMAP_PAGE_WORDS_MAX) + 1,
            max: u64::from(BITMAP_PAGE_WORDS_MAX)
        })
    );
    let mut bytes = encode(&Message::BitmapQuery(BitmapQuery {
        first_word: 0,
        word_count: 1,
        map: MapSelector::Restored,
    }));
    put_u32(&mut bytes, 16, u32::MAX);
    assert!(matches!(
        BitmapQuery::decode(&bytes),
        Err(AbiError::CountTooLarge { .. })
    ));
    let mut bytes = encode(&Message::BitmapPage(
        BitmapPage::new(0, 64, 0, &[0]).unwrap(),
    ));
    put_u32(&mut bytes, 16, BITMAP_PAGE_WORDS_MAX + 1);
    assert_eq!(
        BitmapPage::decode(&bytes),
        Err(AbiError::CountTooLarge {
            kind: MessageKind::BitmapPage,
            count: u64::from(BITMAP_PAGE_WORDS_MAX) + 1,
            max: u64::from(BITMAP_PAGE_WORDS_MAX)
        })
    );
}

#[test]
fn queries_past_the_largest_map_are_refused() {
    let mut bytes = encode(&Message::BitmapQuery(BitmapQuery {
        first_word: 0,
        word_count: 1,
        map: MapSelector::Restored,
    }));
    put_u64(&mut bytes, 8, u64::MAX);
    assert!(matches!(
        BitmapQuery::decode(&bytes),
        Err(AbiError::BitmapPastEnd {
            first_word: u64::MAX,
            ..
        })
    ));
}

#[test]
fn page_word_count_must_match_the_bytes() {
    let mut bytes = encode(&Message::BitmapPage(
        BitmapPage::new(0, 200, 3, &[0b111, 0, 0, 0]).unwrap(),
    ));
    put_u32(&mut bytes, 16, 3);
    assert_eq!(
        BitmapPage::decode(&bytes),
        Err(AbiError::Length {
            kind: MessageKind::BitmapPage,
            expected: BITMAP_PAGE_PREFIX_BYTES + 24,
            got: BITMAP_PAGE_PREFIX_BYTES + 32
        })
    );
}

#[test]
fn pages_past_the_map_or_with_tail_bits_are_refused() {
    // 130 regions = 3 words, the last holding 2 regions.
    assert_eq!(
        BitmapPage::new(2, 130, 0, &[0, 0]),
        Err(AbiError::BitmapPastEnd {
            first_word: 2,
            word_count: 2,
            word_total: 3,
            region_count: 130
        })
    );
    assert_eq!(
        BitmapPage::new(2, 130, 0, &[0b100]),
        Err(AbiError::BitmapTailBits {
            word: 2,
            bits: 0b100
        })
    );
    assert!(BitmapPage::new(2, 130, 2, &[0b11]).is_ok());
    assert!(
        BitmapPage::new(3, 130, 0, &[]).is_ok(),
        "an empty page at the end"
    );
    assert_eq!(
        BitmapPage::new(0, 130, 131, &[]),
        Err(AbiError::RestoredCount {
            restored: 131,
            total: 130
        })
    );
    assert!(matches!(
        BitmapPage::new(0, u64::MAX, 0, &[]),
        Err(AbiError::CountTooLarge {
            kind: MessageKind::BitmapPage,
            ..
        })
    ));
    // The decoder applies the same checks.
    let mut bytes = encode(&Message::BitmapPage(
        BitmapPage::new(2, 130, 2, &[0b11]).unwrap(),
    ));
    put_u64(&mut bytes, 40, 0b111);
    assert_eq!(
        BitmapPage::decode(&bytes),
        Err(AbiError::BitmapTailBits {
            word: 2,
            bits: 0b100
        })
    );
}

#[test]
fn page_bits_map_to_regions() {
    let page = BitmapPage::new(1, 130, 3, &[1 << 5 | 1, 0b10]).unwrap();
    let bytes = encode(&Message::BitmapPage(page));
    let page = BitmapPage::decode(&bytes).unwrap();
    assert_eq!(page.is_restored(64), Some(true));
    assert_eq!(page.is_restored(69), Some(true));
    assert_eq!(page.is_restored(65), Some(false));
    assert_eq!(page.is_restored(129), Some(true));
    assert_eq!(page.is_restored(128), Some(false));
    assert_eq!(page.is_restored(0), None, "before the page");
    assert_eq!(page.is_restored(130), None, "past the volume");
}

// ---- encoding ----

#[test]
fn small_output_buffers_get_a_typed_error_and_stay_untouched() {
    let messages = [
        Message::Attach(attach()),
        Message::Control(Control {
            command: ControlCommand::Detach,
        }),
        Message::StatusCounters(counters()),
        Message::Hydrate(Hydrate::zero(0, 512)),
    ];
    for message in messages {
        let needed = message.encoded_len();
        let mut out = vec![0xEEu8; needed - 1];
        assert_eq!(
            message.encode(&mut out),
            Err(AbiError::BufferTooSmall {
                needed,
                got: needed - 1
            })
        );
        assert!(out.iter().all(|&b| b == 0xEE));
        assert_eq!(
            AbiError::BufferTooSmall { needed, got: 0 }.status(),
            Status::BUFFER_TOO_SMALL
        );
    }
    // A larger buffer is fine; only the front is written.
    let mut out = vec![0xEEu8; 100];
    assert_eq!(Message::Attach(attach()).encode(&mut out), Ok(ATTACH_BYTES));
    assert!(out[ATTACH_BYTES..].iter().all(|&b| b == 0xEE));
}

#[test]
fn layouts_put_fields_where_the_comments_say() {
    let bytes = encode(&Message::Attach(Attach {
        mode: RestoreMode::Overlay,
        ..attach()
    }));
    assert_eq!(&bytes[0..8], &[2, 0, 1, 0, 56, 0, 0, 0]);
    assert_eq!(&bytes[8..16], &(1u64 << 30).to_le_bytes());
    assert_eq!(&bytes[16..20], &4096u32.to_le_bytes());
    assert_eq!(&bytes[20..24], &2u32.to_le_bytes());
    assert_eq!(&bytes[24..56], &[7; 32]);
    let bytes = encode(&Message::StatusCounters(counters()));
    assert_eq!(bytes.len(), 88);
    assert_eq!(&bytes[8..12], &3u32.to_le_bytes());
    assert_eq!(&bytes[12..16], &2u32.to_le_bytes());
    assert_eq!(&bytes[24..32], &40u64.to_le_bytes());
    let refused = StatusCounters {
        state: DriverState::Detached,
        refusal: Some(Refusal::PartitionOffset),
        ..counters()
    };
    let bytes = encode(&Message::StatusCounters(refused));
    assert_eq!(&bytes[8..16], &[1, 0, 0, 0, 7, 0, 0, 0]);
    assert_eq!(&bytes[56..64], &1u64.to_le_bytes());
    assert_eq!(&bytes[80..88], &12u64.to_le_bytes());
    let bytes = encode(&Message::BitmapQuery(BitmapQuery {
        first_word: 3,
        word_count: 2,
        map: MapSelector::Overlay,
    }));
    assert_eq!(&bytes[20..24], &2u32.to_le_bytes());
    let bytes = encode(&Message::Control(Control {
        command: ControlCommand::MergeOnline,
    }));
    assert_eq!(&bytes[8..12], &5u32.to_le_bytes());
}

#[test]
fn error_messages_name_the_numbers() {
    let text = AbiError::BufferTooSmall {
        needed: 80,
        got: 12,
    }
    .to_string();
    assert!(text.contains("80") && text.contains("12"), "{text}");
    let text = AbiError::Version {
        got: 7,
        expected: 1,
    }
    .to_string();
    assert!(text.contains('7') && text.contains('1'), "{text}");
    let text = AbiError::Range(RangeError::Misaligned {
        offset: 100,
        len: 512,
    })
    .to_string();
    assert!(text.contains("100") && text.contains("512"), "{text}");
    let text = format!(
        "{}",
        AbiError::UnknownFlags {
            kind: MessageKind::Hydrate,
            bits: 3,
            unknown: 2
        }
    );
    assert!(text.contains("0x3") && text.contains("0x2"), "{text}");
}

// ---- properties ----

fn any_range() -> impl Strategy<Value = MissingRange> {
    (0u64..1 << 40, 1u64..1 << 20, 0u32..8).prop_map(|(offset, len, flags)| MissingRange {
        offset: offset * 512,
        len: len * 512,
        flags: MissingFlags::from_bits_truncate(flags),
    })
}

fn any_reason() -> impl Strategy<Value = FailReason> {
    (1u32..=5).prop_map(|r| FailReason::from_u32(r).unwrap())
}

fn any_state() -> impl Strategy<Value = DriverState> {
    (1u32..=7).prop_map(|s| DriverState::from_u32(s).unwrap())
}

fn any_command() -> impl Strategy<Value = ControlCommand> {
    (1u32..=6).prop_map(|c| ControlCommand::from_u32(c).unwrap())
}

/// A valid page: (first_word, region_count, restored_count, words).
fn any_page() -> impl Strategy<Value = (u64, u64, u64, Vec<u64>)> {
    (1u64..=64 * 300)
        .prop_flat_map(|regions| {
            let words_total = regions.div_ceil(64);
            (Just(regions), 0..=words_total)
        })
        .prop_flat_map(|(regions, first)| {
            let room = (regions.div_ceil(64) - first).min(u64::from(BITMAP_PAGE_WORDS_MAX));
            (
                Just(regions),
                Just(first),
                0..=regions,
                proptest::collection::vec(any::<u64>(), 0..=room as usize),
            )
        })
        .prop_map(|(regions, first, restored, mut words)| {
            // Clear the bits past the last region if the page reaches it.
            let end = first + words.len() as u64;
            if end == regions.div_ceil(64) && regions % 64 != 0 {
                if let Some(last) = words.last_mut() {
                    *last &= (1u64 << (regions % 64)) - 1;
                }
            }
            (first, regions, restored, words)
        })
}

pub(super) fn round_trip(message: Message<'_>) -> Result<(), TestCaseError> {
    let bytes = encode(&message);
    prop_assert_eq!(bytes.len() % 8, 0, "every message is whole u64s");
    let decoded = Message::decode_any(&bytes);
    prop_assert_eq!(decoded, Ok(message));
    // Re-encoding the decoded form gives the same bytes: the encoding is canonical.
    prop_assert_eq!(encode(&decoded.unwrap()), bytes);
    Ok(())
}

proptest! {
    #[test]
    fn attach_round_trips(shift in 12u32..=20, sectors in 1u64..1 << 30, id in any::<[u8; 32]>(), overlay in any::<bool>()) {
        round_trip(Message::Attach(Attach {
            volume_size_bytes: sectors * 512,
            region_size_bytes: 1 << shift,
            backup_identity: id,
            mode: if overlay { RestoreMode::Overlay } else { RestoreMode::InPlace },
        }))?;
    }

    #[test]
    fn missing_batch_round_trips(ranges in proptest::collection::vec(any_range(), 0..=MISSING_BATCH_MAX)) {
        let batch = MissingBatch::new(&ranges).unwrap();
        let bytes = encode(&Message::MissingBatch(batch));
        let decoded = MissingBatch::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.len(), ranges.len());
        prop_assert!(decoded.iter().eq(ranges.iter().copied()));
        round_trip(Message::MissingBatch(batch))?;
    }

    #[test]
    fn hydrate_round_trips(
        offset in 0u64..1 << 40,
        sectors in 1u64..=16,
        zero in any::<bool>(),
        zero_sectors in 1u64..=u64::from(HYDRATE_MAX_BYTES) / 512,
        fill in any::<u8>(),
    ) {
        if zero {
            round_trip(Message::Hydrate(Hydrate::zero(offset * 512, zero_sectors * 512)))?;
        } else {
            let payload: Vec<u8> = (0..sectors * 512).map(|i| fill.wrapping_add(i as u8)).collect();
            round_trip(Message::Hydrate(Hydrate::data(offset * 512, &payload)))?;
        }
    }

    #[test]
    fn fetch_failed_round_trips(r in any_range(), reason in any_reason()) {
        round_trip(Message::FetchFailed(FetchFailed { offset: r.offset, len: r.len, reason }))?;
    }

    #[test]
    fn bitmap_query_round_trips(first_word in 0u64..1 << 25, word_count in 0u32..=BITMAP_PAGE_WORDS_MAX, map in 1u32..=2) {
        let map = MapSelector::from_u32(map).unwrap();
        round_trip(Message::BitmapQuery(BitmapQuery { first_word, word_count, map }))?;
    }

    #[test]
    fn bitmap_page_round_trips((first, regions, restored, words) in any_page(), overlay in any::<bool>()) {
        let map = if overlay { MapSelector::Overlay } else { MapSelector::Restored };
        let page = BitmapPage::of_map(map, first, regions, restored, &words).unwrap();
        for (i, &word) in words.iter().enumerate() {
            prop_assert_eq!(page.word(i), Some(word));
        }
        round_trip(Message::BitmapPage(page))?;
    }

    #[test]
    fn status_counters_round_trip(state in any_state(), c in any::<[u64; 9]>(), overlay in any::<bool>()) {
        let (total, restored) = if c[0] >= c[1] { (c[0], c[1]) } else { (c[1], c[0]) };
        round_trip(Message::StatusCounters(StatusCounters {
            state,
            regions_total: total,
            regions_restored: restored,
            held_requests: c[2],
            misses: c[3],
            bytes_hydrated: c[4],
            hydrate_dropped_stale: c[5],
            fetch_failures: c[6],
            requests_failed: c[7],
            refusal: None,
            mode: if overlay { RestoreMode::Overlay } else { RestoreMode::InPlace },
            overlay_regions: c[8],
        }))?;
    }

    #[test]
    fn control_round_trips(command in any_command()) {
        round_trip(Message::Control(Control { command }))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_hostile(&bytes)?;
    }

    #[test]
    fn framed_garbage_never_panics(kind in 0u16..10, body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_hostile(&framed(kind, &body))?;
    }

    #[test]
    fn mutated_messages_never_panic(
        ranges in proptest::collection::vec(any_range(), 0..8),
        (first, regions, restored, words) in any_page(),
        which in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let payload = [0x42u8; 1024];
        let message = match which {
            0 => Message::MissingBatch(MissingBatch::new(&ranges).unwrap()),
            1 => Message::BitmapPage(BitmapPage::new(first, regions, restored, &words).unwrap()),
            2 => Message::Hydrate(Hydrate::data(4096, &payload)),
            _ => Message::StatusCounters(counters()),
        };
        let mut bytes = encode(&message);
        for (at, xor) in flips {
            let at = at % bytes.len();
            bytes[at] ^= xor;
        }
        check_hostile(&bytes)?;
    }
}

/// Decoding hostile bytes returns, and whatever decodes re-encodes to the same bytes.
pub(super) fn check_hostile(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(message) = Message::decode_any(bytes) {
        prop_assert_eq!(encode(&message), bytes);
    }
    Ok(())
}
