//! The start decision and the refused volume: another volume's I/O passes untouched and
//! the service is refused with a reason; the restore's own volume starts as before.

extern crate std;

use alloc::sync::Arc;
use std::vec;
use std::vec::Vec;

use super::fake_fw::{Did, Fw};
use super::start::{check_metadata, check_volume, Probe};
use super::*;
use crate::abi::{Control, Ioctl, Refusal};
use crate::dsm::IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES;
use crate::geometry::Geometry;
use crate::meta::testing::CrashStore;
use crate::meta::{Binding, Identity, Metadata, SourcePin, TargetPin};
use crate::volume_id::answers::{geometry, partition_info};
use crate::volume_id::{Partition, PartitionId, VolumeId};

const VOLUME_BYTES: u64 = 1 << 20;

fn partition(guid_byte: u8, offset_bytes: u64) -> Partition {
    Partition {
        id: PartitionId::Gpt {
            partition_guid: [guid_byte; 16],
        },
        offset_bytes,
        length_bytes: VOLUME_BYTES,
    }
}

fn pin_of(p: &Partition) -> TargetPin {
    VolumeId::new([0x11; 16], p).pin()
}

/// The answers of the volume below, kept alive for a [`Probe`] over them.
struct Answers {
    info: [u8; 144],
    geometry: Vec<u8>,
    size_bytes: u64,
}

impl Answers {
    fn of(p: &Partition) -> Answers {
        Answers {
            info: partition_info(p),
            geometry: geometry(p, 1 << 30).to_vec(),
            size_bytes: p.length_bytes,
        }
    }

    fn probe(&self) -> Probe<'_> {
        Probe {
            volume_size_bytes: self.size_bytes,
            partition_info: Ok(&self.info),
            geometry: Ok(&self.geometry),
        }
    }
}

/// What the metadata's header records, made for `target` and a volume of `size_bytes`:
/// its target and size.
fn header(target: TargetPin, size_bytes: u64) -> (TargetPin, u64) {
    let identity = Identity {
        volume_size_bytes: size_bytes,
        region_size_bytes: 4096,
        backup_id: [3; 32],
    };
    let g = identity.geometry().unwrap();
    let mut store = CrashStore::new(Metadata::store_pages(&g));
    let binding = Binding {
        source: SourcePin::UNRECORDED,
        target,
    };
    Metadata::create_bound(&mut store, &identity, &binding).unwrap();
    let header = Metadata::read_header(&mut store).unwrap();
    (header.binding.target, header.identity.volume_size_bytes)
}

fn check_header(
    recorded: (TargetPin, u64),
    parameters: &TargetPin,
    probe: &Probe<'_>,
) -> Result<(), Refusal> {
    check_metadata(&recorded.0, recorded.1, parameters, probe)
}

#[test]
fn the_pinned_volume_starts_and_every_other_is_refused_by_name() {
    let ours = partition(1, 1 << 20);
    let pin = pin_of(&ours);
    let here = Answers::of(&ours);
    assert_eq!(check_volume(&pin, &here.probe()), Ok(()));
    assert_eq!(
        check_header(header(pin, VOLUME_BYTES), &pin, &here.probe()),
        Ok(())
    );

    let another = Answers::of(&partition(2, 1 << 20));
    assert_eq!(
        check_volume(&pin, &another.probe()),
        Err(Refusal::PartitionId)
    );
    let moved = Answers::of(&partition(1, 2 << 20));
    assert_eq!(
        check_volume(&pin, &moved.probe()),
        Err(Refusal::PartitionOffset)
    );
    let silent = Probe {
        partition_info: Err(Status::INVALID_DEVICE_REQUEST),
        ..here.probe()
    };
    assert_eq!(check_volume(&pin, &silent), Err(Refusal::PartitionUnknown));
    // Parameters written before volumes were recorded.
    assert_eq!(
        check_volume(&TargetPin::UNRECORDED, &here.probe()),
        Err(Refusal::TargetUnrecorded)
    );
}

#[test]
fn metadata_of_another_volume_or_size_or_none_recorded_is_refused() {
    let ours = partition(1, 1 << 20);
    let pin = pin_of(&ours);
    let here = Answers::of(&ours);
    // Legacy metadata: no target recorded.
    assert_eq!(
        check_header(
            header(TargetPin::UNRECORDED, VOLUME_BYTES),
            &pin,
            &here.probe()
        ),
        Err(Refusal::TargetUnrecorded)
    );
    // Metadata of another partition.
    assert_eq!(
        check_header(
            header(pin_of(&partition(2, 1 << 20)), VOLUME_BYTES),
            &pin,
            &here.probe()
        ),
        Err(Refusal::PartitionId)
    );
    // Same partition, but recorded under another volume GUID than the parameters name.
    let other_name = VolumeId::new([0x22; 16], &ours).pin();
    assert_eq!(
        check_header(header(other_name, VOLUME_BYTES), &pin, &here.probe()),
        Err(Refusal::MetadataOfAnotherVolume)
    );
    assert_eq!(
        check_header(header(pin, VOLUME_BYTES * 2), &pin, &here.probe()),
        Err(Refusal::VolumeSize)
    );
}

fn io(v: &mut Volume<Fw>, fw: &mut Fw, r: u32, params: RequestParameters) {
    fw.params.insert(r, params);
    v.on_io(fw, r);
}

fn service(v: &mut Volume<Fw>, fw: &mut Fw, r: u32, ioctl: Ioctl, input: Vec<u8>, out: usize) {
    fw.params.insert(
        r,
        RequestParameters::DeviceControl {
            ioctl: ioctl.code(),
            input_len: input.len(),
            output_len: out,
        },
    );
    fw.input.insert(r, input);
    fw.output.insert(r, vec![0; out]);
    v.on_control(fw, r);
}

fn encoded_attach() -> Vec<u8> {
    let a = Attach {
        volume_size_bytes: VOLUME_BYTES,
        region_size_bytes: 4096,
        backup_identity: [3; 32],
        mode: crate::abi::RestoreMode::InPlace,
    };
    let mut buf = vec![0; a.encoded_len()];
    a.encode(&mut buf).unwrap();
    buf
}

#[test]
fn a_refused_volume_passes_its_own_io_down_untouched_and_holds_nothing() {
    let mut v: Volume<Fw> = Volume::Refused(Refused::new(Refusal::PartitionId));
    let mut fw = Fw::default();
    let requests = [
        RequestParameters::Read {
            offset: 0,
            len: 4096,
        },
        RequestParameters::Write {
            offset: 8192,
            len: 4096,
            fua: true,
        },
        RequestParameters::Flush,
        RequestParameters::DeviceControl {
            ioctl: IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES,
            input_len: 0,
            output_len: 0,
        },
        RequestParameters::Other,
    ];
    for (r, params) in requests.into_iter().enumerate() {
        io(&mut v, &mut fw, r as u32, params);
    }
    v.on_timer(&mut fw);
    v.on_remove(&mut fw);
    let forgot: Vec<Did> = (0..5).map(Did::Forgot).collect();
    assert_eq!(
        fw.did, forgot,
        "down untouched, one send each, nothing else"
    );
    assert_eq!(v.refusal(), Some(Refusal::PartitionId));
    assert!(v.filter().is_none());
}

#[test]
fn a_refused_volume_refuses_the_service_and_says_why() {
    let mut v: Volume<Fw> = Volume::Refused(Refused::new(Refusal::VolumeSize));
    let mut fw = Fw::default();
    let control = |command| {
        let c = Control { command };
        let mut buf = vec![0; c.encoded_len()];
        c.encode(&mut buf).unwrap();
        buf
    };
    let calls = [
        (Ioctl::Attach, encoded_attach(), 0),
        (Ioctl::Control, control(ControlCommand::Start), 0),
        (
            Ioctl::GetMissing,
            vec![],
            crate::abi::MISSING_BATCH_MAX_BYTES,
        ),
        (Ioctl::Hydrate, vec![0; 64], 0),
        (Ioctl::FetchFailed, vec![0; 32], 0),
        (Ioctl::QueryBitmap, vec![0; 24], 4096),
    ];
    for (r, (ioctl, input, out)) in calls.into_iter().enumerate() {
        service(&mut v, &mut fw, r as u32, ioctl, input, out);
        assert_eq!(
            fw.did.last(),
            Some(&Did::Completed(r as u32, Status::WRONG_VOLUME, 0)),
            "{ioctl:?}"
        );
    }
    assert!(fw.parked.is_empty(), "nothing parked");
    service(&mut v, &mut fw, 50, Ioctl::GetStatus, vec![], 80);
    let Some(Did::Completed(50, Status::SUCCESS, n)) = fw.did.last().cloned() else {
        panic!("GET_STATUS answered: {:?}", fw.did.last());
    };
    let counters = StatusCounters::decode(&fw.output[&50][..n]).unwrap();
    assert_eq!(counters.state, DriverState::Detached);
    assert_eq!(counters.refusal, Some(Refusal::VolumeSize));
    assert_eq!(counters.regions_total, 0);
}

#[test]
fn the_restores_own_volume_runs_the_filter_unchanged() {
    let geometry = Geometry::new(VOLUME_BYTES, 4096).unwrap();
    let mut store = CrashStore::new(Metadata::store_pages(&geometry));
    let identity = Identity {
        volume_size_bytes: VOLUME_BYTES,
        region_size_bytes: 4096,
        backup_id: [3; 32],
    };
    let meta = Metadata::create(&mut store, &identity).unwrap();
    let map = Arc::new(RegionMap::new(geometry).unwrap());
    let attach = Attach::decode(&encoded_attach()).unwrap();
    let mut v = Volume::Restoring(Filter::new(map, meta, attach, FilterConfig::default()));
    let mut fw = Fw::default();
    assert_eq!(v.refusal(), None);
    service(&mut v, &mut fw, 1, Ioctl::Attach, encoded_attach(), 0);
    assert_eq!(fw.did.last(), Some(&Did::Completed(1, Status::SUCCESS, 0)));
    // A read of a missing region is held (marked cancelable), not passed down.
    io(
        &mut v,
        &mut fw,
        2,
        RequestParameters::Read {
            offset: 0,
            len: 4096,
        },
    );
    assert_eq!(fw.did.last(), Some(&Did::Marked(2)));
    assert_eq!(v.filter().map(|f| f.status_counters().refusal), Some(None));
}
