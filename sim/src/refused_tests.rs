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
