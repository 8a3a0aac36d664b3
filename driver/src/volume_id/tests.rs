//! The volume identity: its pin, the decoders of the two IOCTL answers, and the filter's
//! decision field by field.

extern crate std;

use std::string::ToString;

use super::answers::{geometry, partition_info};
use super::*;

const VOLUME: [u8; 16] = [0x11; 16];
const GUID: [u8; 16] = [
    0xf1, 0x4c, 0x7d, 0x0b, 0x3e, 0x2a, 0x5f, 0x4c, 0x9d, 0x8a, 0x1f, 0x2e, 0x3d, 0x4c, 0x5b, 0x6a,
];

fn gpt() -> Partition {
    Partition {
        id: PartitionId::Gpt {
            partition_guid: GUID,
        },
        offset_bytes: 16 << 20,
        length_bytes: 1 << 30,
    }
}

fn mbr() -> Partition {
    Partition {
        id: PartitionId::Mbr {
            disk_signature: 0x1234_abcd,
        },
        offset_bytes: 1 << 20,
        length_bytes: 1 << 30,
    }
}

/// What the volume below answers for `p`.
fn probe(p: &Partition) -> Result<Partition, ProbeError> {
    decode_partition(Ok(&partition_info(p)), Ok(&geometry(p, 8 << 30)))
}

#[test]
fn both_answers_decode_to_the_partition_they_describe() {
    for p in [gpt(), mbr()] {
        assert_eq!(probe(&p), Ok(p));
    }
    // A GPT partition needs no geometry: its answer is not even looked at.
    let p = gpt();
    assert_eq!(
        decode_partition(Ok(&partition_info(&p)), Err(Status::NOT_SUPPORTED)),
        Ok(p)
    );
}

#[test]
fn answers_that_do_not_say_which_partition_are_errors() {
    let (g, m) = (gpt(), mbr());
    let status = Status::INVALID_DEVICE_REQUEST;
    assert_eq!(
        decode_partition(Err(status), Ok(&geometry(&g, 1 << 40))),
        Err(ProbeError::Failed {
            ioctl: IOCTL_DISK_GET_PARTITION_INFO_EX,
            status
        })
    );
    let info = partition_info(&g);
    assert_eq!(
        decode_partition(Ok(&info[..PARTITION_INFO_EX_BYTES - 1]), Err(status)),
        Err(ProbeError::Short {
            ioctl: IOCTL_DISK_GET_PARTITION_INFO_EX,
            needed: PARTITION_INFO_EX_BYTES,
            got: PARTITION_INFO_EX_BYTES - 1
        })
    );
    let mut raw = info;
    raw[0] = 2;
    assert_eq!(
        decode_partition(Ok(&raw), Err(status)),
        Err(ProbeError::Style(2))
    );
    let mut negative = info;
    negative[15] = 0x80;
    assert_eq!(
        decode_partition(Ok(&negative), Err(status)),
        Err(ProbeError::Malformed)
    );
    // An MBR partition needs the disk's signature.
    let info = partition_info(&m);
    assert!(matches!(
        decode_partition(Ok(&info), Err(status)),
        Err(ProbeError::Failed { ioctl, .. }) if ioctl == IOCTL_DISK_GET_DRIVE_GEOMETRY_EX
    ));
    let geo = geometry(&m, 1 << 40);
    assert!(matches!(
        decode_partition(Ok(&info), Ok(&geo[..40])),
        Err(ProbeError::Short {
            needed: 44,
            got: 40,
            ..
        })
    ));
    let mut small = geo;
    small[32..36].copy_from_slice(&8u32.to_le_bytes());
    assert_eq!(
        decode_partition(Ok(&info), Ok(&small)),
        Err(ProbeError::Malformed)
    );
    assert_eq!(
        decode_partition(Ok(&info), Ok(&geometry(&g, 1 << 40))),
        Err(ProbeError::StylesDisagree {
            disk: 1,
            partition: 0
        })
    );
}

#[test]
fn pins_round_trip_with_one_encoding() {
    for p in [gpt(), mbr()] {
        let id = VolumeId::new(VOLUME, &p);
        let pin = id.pin();
        assert_eq!(pin.kind, TargetKind::WindowsVolume);
        assert_eq!(VolumeId::from_pin(&pin), Ok(id));
        for at in [41, 47] {
            let mut bad = pin;
            bad.id[at] = 1;
            assert_eq!(VolumeId::from_pin(&bad), Err(Refusal::TargetRecordInvalid));
        }
        let mut style = pin;
        style.id[40] = 2;
        assert_eq!(
            VolumeId::from_pin(&style),
            Err(Refusal::TargetRecordInvalid)
        );
    }
    // An MBR pin holds the signature and nothing else in the partition field.
    let mut pin = VolumeId::new(VOLUME, &mbr()).pin();
    pin.id[20] = 1;
    assert_eq!(VolumeId::from_pin(&pin), Err(Refusal::TargetRecordInvalid));
}

#[test]
fn the_same_volume_matches() {
    for p in [gpt(), mbr()] {
        let pin = VolumeId::new(VOLUME, &p).pin();
        assert_eq!(check(&pin, &probe(&p)), Ok(()));
        // The filter cannot learn the volume GUID: another one is not its business.
        let other_guid = VolumeId::new([0x22; 16], &p).pin();
        assert_eq!(check(&other_guid, &probe(&p)), Ok(()));
        // Nor the partition's length (the volume's size is checked against the restore's).
        let longer = Partition {
            length_bytes: p.length_bytes * 2,
            ..p
        };
        assert_eq!(check(&pin, &probe(&longer)), Ok(()));
    }
}

#[test]
fn each_field_that_differs_is_refused_by_name() {
    let gpt_pin = VolumeId::new(VOLUME, &gpt()).pin();
    let mbr_pin = VolumeId::new(VOLUME, &mbr()).pin();
    assert_eq!(
        check(&gpt_pin, &probe(&mbr())),
        Err(Refusal::PartitionStyle)
    );
    assert_eq!(
        check(&mbr_pin, &probe(&gpt())),
        Err(Refusal::PartitionStyle)
    );
    let mut other_guid = GUID;
    other_guid[15] ^= 1;
    let other_partition = Partition {
        id: PartitionId::Gpt {
            partition_guid: other_guid,
        },
        ..gpt()
    };
    assert_eq!(
        check(&gpt_pin, &probe(&other_partition)),
        Err(Refusal::PartitionId)
    );
    let other_disk = Partition {
        id: PartitionId::Mbr {
            disk_signature: 0x1234_abce,
        },
        ..mbr()
    };
    assert_eq!(
        check(&mbr_pin, &probe(&other_disk)),
        Err(Refusal::PartitionId)
    );
    for (pin, p) in [(gpt_pin, gpt()), (mbr_pin, mbr())] {
        let moved = Partition {
            offset_bytes: p.offset_bytes + 512,
            ..p
        };
        assert_eq!(check(&pin, &probe(&moved)), Err(Refusal::PartitionOffset));
        assert_eq!(
            check(&pin, &Err(ProbeError::Style(2))),
            Err(Refusal::PartitionUnknown)
        );
    }
}

#[test]
fn a_legacy_or_foreign_record_is_refused_whatever_the_volume() {
    let found = probe(&gpt());
    assert_eq!(
        check(&TargetPin::UNRECORDED, &found),
        Err(Refusal::TargetUnrecorded)
    );
    for kind in [TargetKind::UnixFile, TargetKind::UnixBlockDevice] {
        let mut pin = VolumeId::new(VOLUME, &gpt()).pin();
        pin.kind = kind;
        assert_eq!(check(&pin, &found), Err(Refusal::TargetNotAVolume));
    }
}

#[test]
fn guids_read_and_write_as_windows_does() {
    let text = "{0b7d4cf1-2a3e-4c5f-9d8a-1f2e3d4c5b6a}";
    assert_eq!(parse_guid(text), Some(GUID));
    assert_eq!(
        parse_guid("0B7D4CF1-2A3E-4C5F-9D8A-1F2E3D4C5B6A"),
        Some(GUID)
    );
    assert_eq!(GuidText(GUID).to_string(), text);
    for bad in [
        "",
        "{0b7d4cf1-2a3e-4c5f-9d8a-1f2e3d4c5b6}",
        "{0b7d4cf1-2a3e-4c5f-9d8a-1f2e3d4c5b6a-00}",
        "{0b7d4cf1-2a3e-4c5f-9d8a1f2e3d4c5b6a}",
        "{0b7d4cf1-2a3e-4c5f-9d8a-1f2e3d4c5b6g}",
        "{0b7d4cf1+2a3e-4c5f-9d8a-1f2e3d4c5b6a}",
    ] {
        assert_eq!(parse_guid(bad), None, "{bad}");
    }
    let id = VolumeId::new(GUID, &mbr());
    assert_eq!(
        id.to_string(),
        "Volume{0b7d4cf1-2a3e-4c5f-9d8a-1f2e3d4c5b6a} on MBR disk 1234abcd at offset 1048576"
    );
}
