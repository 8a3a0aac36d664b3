//! The partition manager: checks ranges against the partition and turns volume offsets
//! into disk offsets, for transfers and for trim ranges alike.

use rehydrate_driver::dsm::{self, Dsm};
use rehydrate_driver::Status;

use crate::irp::{
    IrpId, Layer, IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES, IRP_MJ_DEVICE_CONTROL, IRP_MJ_PNP,
    IRP_MJ_POWER, IRP_MJ_READ, IRP_MJ_WRITE,
};
use crate::kernel::Kernel;

const ME: Layer = Layer::Partition;

/// `IRP_MJ_*` dispatch.
pub fn dispatch(k: &mut Kernel, id: IrpId) -> Status {
    let Some(loc) = k.cur_loc(ME, id) else {
        return Status::INVALID_DEVICE_REQUEST;
    };
    let volume_bytes = k.lower.volume_sectors * 512;
    let shift = k.lower.partition_start * 512;
    match loc.major {
        IRP_MJ_READ | IRP_MJ_WRITE => {
            let inside = loc.offset % 512 == 0
                && loc.length % 512 == 0
                && loc.length > 0
                && loc
                    .offset
                    .checked_add(loc.length)
                    .is_some_and(|end| end <= volume_bytes);
            if !inside {
                k.complete(ME, id, Status::INVALID_PARAMETER, 0);
                return Status::INVALID_PARAMETER;
            }
            k.copy_to_next(ME, id);
            if let Some(next) = k.next_loc(ME, id) {
                next.offset += shift;
            }
            k.call(ME, id, Layer::Disk)
        }
        IRP_MJ_DEVICE_CONTROL if loc.ioctl == IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES => {
            if !translate_trim(k, id, shift, volume_bytes) {
                k.complete(ME, id, Status::INVALID_PARAMETER, 0);
                return Status::INVALID_PARAMETER;
            }
            k.copy_to_next(ME, id);
            k.call(ME, id, Layer::Disk)
        }
        IRP_MJ_PNP | IRP_MJ_POWER => super::forward_pnp(k, ME, id),
        _ => {
            k.copy_to_next(ME, id);
            k.call(ME, id, Layer::Disk)
        }
    }
}

/// Adds the partition offset to every trim range in place; false when a range is not
/// inside the partition or the buffer does not decode.
fn translate_trim(k: &mut Kernel, id: IrpId, shift: u64, volume_bytes: u64) -> bool {
    let Some(irp) = k.irps.get_mut(id) else {
        return false;
    };
    let (at, count) = match dsm::decode(&irp.input) {
        Ok(d @ Dsm::Trim(ranges)) => {
            let at = ranges.as_ptr() as usize - irp.input.as_ptr() as usize;
            for i in 0..d.range_count() {
                match d.range(i) {
                    Some((o, l)) if o.checked_add(l).is_some_and(|e| e <= volume_bytes) => {}
                    _ => return false,
                }
            }
            (at, d.range_count())
        }
        Ok(_) => return true,
        Err(_) => return false,
    };
    for i in 0..count {
        let p = at + i * 16;
        let o = u64::from_le_bytes(irp.input[p..p + 8].try_into().unwrap_or([0; 8]));
        irp.input[p..p + 8].copy_from_slice(&(o + shift).to_le_bytes());
    }
    true
}

/// What the partition says it is: `IOCTL_DISK_GET_PARTITION_INFO_EX` and the disk's
/// `IOCTL_DISK_GET_DRIVE_GEOMETRY_EX` (through `volume_id::answers`). A GPT partition
/// whose unique GUID follows from its place and size, so no random draw is spent on it.
pub fn identity(lower: &super::Lower) -> rehydrate_driver::volume_id::Partition {
    let mut partition_guid = [0u8; 16];
    partition_guid[..8].copy_from_slice(&lower.partition_start.to_le_bytes());
    partition_guid[8..].copy_from_slice(&lower.volume_sectors.to_le_bytes());
    partition_guid[15] ^= 0x5A;
    rehydrate_driver::volume_id::Partition {
        id: rehydrate_driver::volume_id::PartitionId::Gpt { partition_guid },
        offset_bytes: lower.partition_start * 512,
        length_bytes: lower.volume_sectors * 512,
    }
}
