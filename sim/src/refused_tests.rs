//! The refused filter under the simulated WDF: on a volume that is not the restore's,
//! the file system's requests go down the simulated stack untouched and the service's
//! are refused, all within the KMDF rules the verifier holds the filter to.

use rehydrate_driver::abi::{Ioctl, Refusal, StatusCounters};
use rehydrate_driver::filter::Refused;
use rehydrate_driver::Status;

use crate::irp::{Layer, Owner, IRP_MJ_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE};
use crate::testing::{kernel, presented};
use crate::wdf::SimWdf;

#[test]
fn a_refused_volume_sends_its_own_io_down_and_refuses_the_service_within_kmdf_rules() {
    let mut wdf = SimWdf::new(kernel());
    let mut refused = Refused::new(Refusal::PartitionId);
    for major in [IRP_MJ_READ, IRP_MJ_WRITE] {
        let (id, frame) = presented(&mut wdf, Layer::Fs, Layer::Filter, major, 0);
        refused.on_io(&mut wdf, id);
        wdf.k.end_call(frame, Status::PENDING);
        let below = wdf.k.irps.get(id).map(|i| i.owner);
        assert!(
            matches!(below, Some(Owner::Driver(l)) if l != Layer::Filter && l != Layer::Fs),
            "request {id:?} went down the stack: {below:?}"
        );
    }
    assert_eq!(refused.passthrough_requests(), 2);

    let (attach, frame) = presented(
        &mut wdf,
        Layer::Fs,
        Layer::Control,
        IRP_MJ_DEVICE_CONTROL,
        Ioctl::Attach.code(),
    );
    refused.on_control(&mut wdf, attach);
    wdf.k.end_call(frame, Status::PENDING);
    assert_eq!(
        wdf.k.irps.get(attach).map(|i| i.status),
        Some(Status::WRONG_VOLUME)
    );

    let (status, frame) = presented(
        &mut wdf,
        Layer::Fs,
        Layer::Control,
        IRP_MJ_DEVICE_CONTROL,
        Ioctl::GetStatus.code(),
    );
    if let Some(irp) = wdf.k.irps.get_mut(status) {
        irp.output = vec![0; Ioctl::GetStatus.output_max_bytes()];
    }
    refused.on_control(&mut wdf, status);
    wdf.k.end_call(frame, Status::PENDING);
    let irp = wdf.k.irps.get(status).expect("kept for the test");
    assert_eq!(irp.status, Status::SUCCESS);
    let counters = StatusCounters::decode(&irp.output[..irp.information]).unwrap();
    assert_eq!(counters.refusal, Some(Refusal::PartitionId));
    wdf.collect();
    assert!(!wdf.k.v.failed(), "{:?}", wdf.k.v.first());
}

mod machine {
    //! A whole machine whose metadata file belongs to another volume: the start decision
    //! refuses it as the KMDF shell does, before the metadata is opened, and nothing of
    //! the restore reaches the volume or the metadata.

    use rehydrate_driver::abi::{Ioctl, Refusal, StatusCounters};
    use rehydrate_driver::meta::{
        Binding, Identity, MetaStore, Metadata, SourcePin, TargetPin, META_PAGE_SIZE_BYTES,
    };
    use rehydrate_driver::volume_id::{Partition, PartitionId, VolumeId};
    use rehydrate_driver::Status;

    use crate::faults::Faults;
    use crate::irp::{IrpId, Layer, Mdl, Owner, Routine, IRP_MJ_DEVICE_CONTROL, IRP_MJ_READ};
    use crate::machine::Machine;
    use crate::sim::RunConfig;
    use crate::wdf;

    fn machine(seed: u64) -> Machine {
        Machine::draw(&RunConfig::new(seed, 0, Faults::NONE)).machine
    }

    fn pages(m: &mut Machine) -> Vec<Vec<u8>> {
        (0..m.store.page_count())
            .map(|i| {
                let mut page = vec![0u8; META_PAGE_SIZE_BYTES];
                m.store.read_page(i, &mut page).expect("the page reads");
                page
            })
            .collect()
    }

    fn disk(m: &Machine) -> Vec<u64> {
        let d = &m.wdf.k.lower.disk;
        let mut out = vec![0; d.sectors()];
        d.read(0, &mut out);
        out
    }

    /// A request from `by` to `to` through WDF's dispatch, its completion kept.
    fn send(m: &mut Machine, by: Layer, to: Layer, major: u8, ioctl: u32, out: usize) -> IrpId {
        let k = &mut m.wdf.k;
        let id = k.alloc_irp(by, to.stack_size());
        if let Some(next) = k.next_loc(by, id) {
            next.major = major;
            next.ioctl = ioctl;
            next.offset = 0;
            next.length = 4096;
        }
        if let Some(irp) = k.irps.get_mut(id) {
            if major == IRP_MJ_READ {
                irp.mdl = Mdl::Own;
                irp.buffer.resize(8, 0);
            }
            irp.output = vec![0; out];
        }
        k.set_completion(by, id, Routine::Test { keep: true });
        wdf::dispatch(&mut m.wdf, &mut m.filter, by, id, to);
        id
    }

    /// The other volumes a metadata file could have been made for, and the refusal.
    fn others(m: &Machine) -> Vec<(TargetPin, u64, Refusal)> {
        let own = VolumeId::from_pin(&m.volume_pin()).expect("the machine's pin decodes");
        let size = m.identity.volume_size_bytes;
        let on = |partition_guid, offset_bytes| Partition {
            id: PartitionId::Gpt { partition_guid },
            offset_bytes,
            length_bytes: size,
        };
        let PartitionId::Gpt { partition_guid } = own.partition else {
            panic!("the simulated partition is GPT");
        };
        vec![
            // Another partition of the same size that took the device name.
            (
                VolumeId::new(own.volume_guid, &on([0x77; 16], own.offset_bytes)).pin(),
                size,
                Refusal::PartitionId,
            ),
            // This partition, but the metadata was made when another volume GUID was it.
            (
                VolumeId::new(*b"another-volume!!", &on(partition_guid, own.offset_bytes)).pin(),
                size,
                Refusal::MetadataOfAnotherVolume,
            ),
            // This volume, but a restore of another size.
            (m.volume_pin(), size / 2, Refusal::VolumeSize),
        ]
    }

    #[test]
    fn metadata_of_another_volume_is_refused_at_start_and_nothing_is_written() {
        for seed in [3, 8] {
            let cases = others(&machine(seed));
            for (target, size_bytes, refusal) in cases {
                let mut m = machine(seed);
                let identity = Identity {
                    volume_size_bytes: size_bytes,
                    ..m.identity
                };
                let binding = Binding {
                    source: SourcePin::UNRECORDED,
                    target,
                };
                Metadata::create_bound(&mut m.store, &identity, &binding).unwrap();
                let (meta_before, disk_before) = (pages(&mut m), disk(&m));

                m.start_filter();
                assert!(m.filter.is_none(), "seed {seed}: no restore on {refusal:?}");
                assert_eq!(m.wdf.refused.map(|r| r.refusal()), Some(refusal));

                // The volume's own read goes down untouched (to the device, once the
                // volume below is online).
                m.wdf.k.lower.volume_online = true;
                let read = send(&mut m, Layer::Fs, Layer::Filter, IRP_MJ_READ, 0, 0);
                let below = m.wdf.k.irps.get(read).map(|i| i.owner);
                assert!(
                    matches!(below, Some(Owner::Driver(l)) if l != Layer::Filter && l != Layer::Fs),
                    "the read went down: {below:?}"
                );
                // The service is refused: no attach, no hydrate.
                for ioctl in [Ioctl::Attach, Ioctl::Hydrate, Ioctl::GetMissing] {
                    let id = send(
                        &mut m,
                        Layer::Fs,
                        Layer::Control,
                        IRP_MJ_DEVICE_CONTROL,
                        ioctl.code(),
                        0,
                    );
                    let status = m.wdf.k.irps.get(id).map(|i| i.status);
                    assert_eq!(status, Some(Status::WRONG_VOLUME), "{ioctl:?}");
                }
                // ... and told why.
                let id = send(
                    &mut m,
                    Layer::Fs,
                    Layer::Control,
                    IRP_MJ_DEVICE_CONTROL,
                    Ioctl::GetStatus.code(),
                    Ioctl::GetStatus.output_max_bytes(),
                );
                let irp = m.wdf.k.irps.get(id).expect("kept for the test");
                let counters = StatusCounters::decode(&irp.output[..irp.information]).unwrap();
                assert_eq!(counters.refusal, Some(refusal));

                assert!(!m.failed(), "{:?}", m.wdf.k.v.first());
                assert!(
                    m.wdf.lowers.is_empty(),
                    "the filter wrote nothing of its own"
                );
                assert_eq!(pages(&mut m), meta_before, "the metadata is untouched");
                assert_eq!(disk(&m), disk_before, "the volume is untouched");
            }
        }
    }

    #[test]
    fn the_restores_own_metadata_starts_the_filter() {
        let mut m = machine(3);
        let binding = m.binding();
        Metadata::create_bound(&mut m.store, &m.identity, &binding).unwrap();
        m.start_filter();
        assert!(m.filter.is_some() && m.wdf.refused.is_none());
        assert!(!m.failed(), "{:?}", m.wdf.k.v.first());
    }
}
