//! The volume manager: answers the volume IOCTLs itself, refuses I/O while offline,
//! passes everything else to the partition.

use rehydrate_driver::Status;

use crate::irp::{
    IrpId, Layer, IOCTL_DISK_GET_LENGTH_INFO, IOCTL_VOLUME_OFFLINE, IOCTL_VOLUME_ONLINE,
    IRP_MJ_DEVICE_CONTROL, IRP_MJ_PNP, IRP_MJ_POWER, IRP_MJ_READ, IRP_MJ_WRITE,
    STATUS_DEVICE_OFF_LINE,
};
use crate::kernel::Kernel;

const ME: Layer = Layer::Volume;

/// Completes `id` here with `status`.
fn finish(k: &mut Kernel, id: IrpId, status: Status, information: usize) -> Status {
    k.complete(ME, id, status, information);
    status
}

/// `IRP_MJ_*` dispatch.
pub fn dispatch(k: &mut Kernel, id: IrpId) -> Status {
    let Some(loc) = k.cur_loc(ME, id) else {
        return Status::INVALID_DEVICE_REQUEST;
    };
    match loc.major {
        IRP_MJ_READ | IRP_MJ_WRITE if !k.lower.volume_online => {
            finish(k, id, STATUS_DEVICE_OFF_LINE, 0)
        }
        IRP_MJ_DEVICE_CONTROL => match loc.ioctl {
            IOCTL_DISK_GET_LENGTH_INFO => {
                let len = k.lower.volume_sectors * 512;
                let Some(irp) = k.irps.get_mut(id) else {
                    return Status::INVALID_DEVICE_REQUEST;
                };
                if irp.output.len() < 8 {
                    return finish(k, id, Status::BUFFER_TOO_SMALL, 0);
                }
                irp.output[..8].copy_from_slice(&len.to_le_bytes());
                finish(k, id, Status::SUCCESS, 8)
            }
            IOCTL_VOLUME_ONLINE => {
                k.lower.volume_online = true;
                finish(k, id, Status::SUCCESS, 0)
            }
            IOCTL_VOLUME_OFFLINE => {
                k.lower.volume_online = false;
                finish(k, id, Status::SUCCESS, 0)
            }
            _ => pass(k, id),
        },
        IRP_MJ_PNP | IRP_MJ_POWER => super::forward_pnp(k, ME, id),
        _ => pass(k, id),
    }
}

fn pass(k: &mut Kernel, id: IrpId) -> Status {
    k.copy_to_next(ME, id);
    k.call(ME, id, Layer::Partition)
}
