//! The disk class driver: answers the geometry query, and splits transfers longer than
//! the maximum transfer length into pieces, each a new IRP pointing into the original's
//! buffer (a partial MDL), completed with `STATUS_MORE_PROCESSING_REQUIRED` and freed
//! here; the original completes with the first failure once every piece is back.

use rehydrate_driver::Status;

use crate::irp::{
    IrpId, Layer, Mdl, Routine, IOCTL_DISK_GET_DRIVE_GEOMETRY, IRP_MJ_DEVICE_CONTROL, IRP_MJ_PNP,
    IRP_MJ_POWER, IRP_MJ_READ, IRP_MJ_WRITE, STATUS_MORE_PROCESSING_REQUIRED,
};
use crate::kernel::Kernel;

const ME: Layer = Layer::Disk;

/// `IRP_MJ_*` dispatch.
pub fn dispatch(k: &mut Kernel, id: IrpId) -> Status {
    let Some(loc) = k.cur_loc(ME, id) else {
        return Status::INVALID_DEVICE_REQUEST;
    };
    match loc.major {
        IRP_MJ_READ | IRP_MJ_WRITE if loc.length / 512 > k.lower.max_transfer_sectors => {
            split(k, id)
        }
        IRP_MJ_DEVICE_CONTROL if loc.ioctl == IOCTL_DISK_GET_DRIVE_GEOMETRY => {
            let sector_bytes = k.lower.disk.sector_bytes();
            let Some(irp) = k.irps.get_mut(id) else {
                return Status::INVALID_DEVICE_REQUEST;
            };
            // DISK_GEOMETRY: Cylinders(8) MediaType(4) TracksPerCylinder(4)
            // SectorsPerTrack(4) BytesPerSector(4).
            if irp.output.len() < 24 {
                k.complete(ME, id, Status::BUFFER_TOO_SMALL, 0);
                return Status::BUFFER_TOO_SMALL;
            }
            irp.output[20..24].copy_from_slice(&sector_bytes.to_le_bytes());
            k.complete(ME, id, Status::SUCCESS, 24);
            Status::SUCCESS
        }
        IRP_MJ_PNP | IRP_MJ_POWER => super::forward_pnp(k, ME, id),
        _ => {
            k.copy_to_next(ME, id);
            k.call(ME, id, Layer::Port)
        }
    }
}

fn split(k: &mut Kernel, id: IrpId) -> Status {
    let Some(loc) = k.cur_loc(ME, id) else {
        return Status::INVALID_DEVICE_REQUEST;
    };
    let Some(master) = k.irps.get(id) else {
        return Status::INVALID_DEVICE_REQUEST;
    };
    let (mdl, origin) = (master.mdl, master.origin);
    let piece = k.lower.max_transfer_sectors;
    let sectors = loc.length / 512;
    let pieces = sectors.div_ceil(piece);
    k.mark_pending(ME, id);
    if let Some(m) = k.irps.get_mut(id) {
        m.split_left = pieces as u32;
        m.split_status = Status::SUCCESS;
    }
    for p in 0..pieces {
        let first = p * piece;
        let count = piece.min(sectors - first);
        let sub = k.alloc_irp(ME, Layer::Port.stack_size());
        if let Some(irp) = k.irps.get_mut(sub) {
            irp.origin = origin;
            irp.mdl = match mdl {
                Mdl::Own => Mdl::Partial {
                    irp: id,
                    sector: first as u32,
                },
                Mdl::Partial { irp, sector } => Mdl::Partial {
                    irp,
                    sector: sector + first as u32,
                },
                Mdl::Payload { irp, byte } => Mdl::Payload {
                    irp,
                    byte: byte + (first * 512) as u32,
                },
                other => other,
            };
        }
        if let Some(next) = k.next_loc(ME, sub) {
            next.major = loc.major;
            next.flags = loc.flags;
            next.offset = loc.offset + first * 512;
            next.length = count * 512;
        }
        k.set_completion(ME, sub, Routine::DiskSplit { master: id });
        k.call(ME, sub, Layer::Port);
    }
    Status::PENDING
}

/// The completion routine of one piece.
pub fn split_done(k: &mut Kernel, piece: IrpId, master: IrpId) -> Status {
    let status = k
        .irps
        .get(piece)
        .map_or(Status::IO_DEVICE_ERROR, |p| p.status);
    k.free_irp(ME, piece);
    let Some(m) = k.irps.get_mut(master) else {
        k.v.fail(
            crate::verifier::Rule::UseAfterFree,
            format!("split piece came back to freed IRP {master:?}"),
        );
        return STATUS_MORE_PROCESSING_REQUIRED;
    };
    debug_assert!(m.split_left > 0);
    m.split_left -= 1;
    if !status.is_success() && m.split_status.is_success() {
        m.split_status = status;
    }
    if m.split_left == 0 {
        let status = m.split_status;
        let length = m.loc().length as usize;
        let info = if status.is_success() { length } else { 0 };
        k.complete(ME, master, status, info);
    }
    STATUS_MORE_PROCESSING_REQUIRED
}
