//! The device: pends every transfer, flush and trim and finishes it on a later step
//! (a [`crate::sched::Ev::DeviceDone`] after a random latency), so completion always
//! runs outside the dispatch that sent the IRP, in any order the latencies give. Media
//! errors, when injected, fail a transfer; a failed write may leave any prefix of its
//! device sectors written. A flush covers the writes completed when it arrived, and,
//! when the device is kind (a coin per flush), everything cached when it completes.

use rehydrate_driver::dsm::{self, Dsm};
use rehydrate_driver::Status;

use crate::faults::Fault;
use crate::irp::{
    IrpId, Layer, Origin, IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES, IRP_MJ_DEVICE_CONTROL,
    IRP_MJ_FLUSH_BUFFERS, IRP_MJ_PNP, IRP_MJ_POWER, IRP_MJ_READ, IRP_MJ_WRITE, IRP_MN_SET_POWER,
    SL_WRITE_THROUGH, STATUS_MEDIA_ERROR,
};
use crate::kernel::Kernel;
use crate::sched::Ev;

const ME: Layer = Layer::Device;

/// `IRP_MJ_*` dispatch.
pub fn dispatch(k: &mut Kernel, id: IrpId) -> Status {
    let Some(loc) = k.cur_loc(ME, id) else {
        return Status::INVALID_DEVICE_REQUEST;
    };
    match loc.major {
        IRP_MJ_READ | IRP_MJ_WRITE | IRP_MJ_FLUSH_BUFFERS => pend(k, id),
        IRP_MJ_DEVICE_CONTROL if loc.ioctl == IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES => {
            pend(k, id)
        }
        IRP_MJ_POWER => {
            if loc.minor == IRP_MN_SET_POWER && loc.ioctl == 4 {
                // Going to D3: a drive writes its cache out (STANDBY IMMEDIATE).
                k.lower.disk.flush();
            }
            k.complete(ME, id, Status::SUCCESS, 0);
            Status::SUCCESS
        }
        IRP_MJ_PNP => {
            k.lower.started[ME as usize] = true;
            k.complete(ME, id, Status::SUCCESS, 0);
            Status::SUCCESS
        }
        _ => {
            k.complete(ME, id, Status::INVALID_DEVICE_REQUEST, 0);
            Status::INVALID_DEVICE_REQUEST
        }
    }
}

fn pend(k: &mut Kernel, id: IrpId) -> Status {
    k.mark_pending(ME, id);
    let mark = k.lower.disk.cache_mark();
    if let Some(irp) = k.irps.get_mut(id) {
        irp.flush_mark = mark;
    }
    let latency = k.rng.latency(k.lower.latency_ns, 20);
    k.sched.after(latency, Ev::DeviceDone(id));
    Status::PENDING
}

fn media_error(k: &mut Kernel) -> bool {
    !k.calm && k.faults.has(Fault::Media) && k.rng.chance(k.lower.media_ppm)
}

/// The device finishes `id` (scheduled by [`dispatch`]).
pub fn done(k: &mut Kernel, id: IrpId) {
    let Some(loc) = k.cur_loc(ME, id) else { return };
    let origin = k.irps.get(id).map_or(Origin::System, |i| i.origin);
    let start = loc.offset / 512;
    let count = loc.length / 512;
    let (status, information) = match loc.major {
        IRP_MJ_READ | IRP_MJ_WRITE
            if loc.offset % 512 != 0
                || loc.length % 512 != 0
                || !k.lower.disk.fits(start, count) =>
        {
            (Status::INVALID_PARAMETER, 0)
        }
        IRP_MJ_READ => {
            if media_error(k) {
                (STATUS_MEDIA_ERROR, 0)
            } else {
                read(k, id, start as usize, count as usize);
                (Status::SUCCESS, loc.length as usize)
            }
        }
        IRP_MJ_WRITE => {
            let fua = loc.flags & SL_WRITE_THROUGH != 0;
            if media_error(k) {
                // Any prefix of the device sectors may have been written.
                let spb = u64::from(k.lower.disk.sector_bytes() / 512);
                let landed = k.rng.below(count / spb + 1) * spb;
                write(k, id, origin, start, landed, fua);
                (STATUS_MEDIA_ERROR, 0)
            } else {
                write(k, id, origin, start, count, fua);
                (Status::SUCCESS, loc.length as usize)
            }
        }
        IRP_MJ_FLUSH_BUFFERS => {
            if media_error(k) {
                k.lower.disk.destage();
                (Status::IO_DEVICE_ERROR, 0)
            } else {
                // Strict or kind, per flush: a flush promises only what completed
                // before it arrived.
                if k.rng.coin() {
                    let mark = k.irps.get(id).map_or(0, |i| i.flush_mark);
                    k.lower.disk.flush_before(mark);
                } else {
                    k.lower.disk.flush();
                }
                (Status::SUCCESS, 0)
            }
        }
        _ => (trim(k, id, origin), 0),
    };
    k.trace.mix(u64::from(status.0) ^ start << 20 ^ count);
    if !status.is_success() {
        // A media error: the request it belongs to may fail with it.
        k.note_delay_fault();
        if let Origin::App { op, .. } = origin {
            k.oracle.excuse(op, status);
        }
    }
    k.complete(ME, id, status, information);
}

fn read(k: &mut Kernel, id: IrpId, start: usize, count: usize) {
    let Some((target, first, payload)) = k.resolve_mdl(id) else {
        return;
    };
    debug_assert!(!payload, "reads land in tag buffers");
    let Some(t) = k.irps.get_mut(target) else {
        return;
    };
    let first = first as usize;
    if t.buffer.len() < first + count {
        k.v.fail(
            crate::verifier::Rule::StaleMdl,
            format!("read IRP {id:?} buffer too short for {count} sectors"),
        );
        return;
    }
    k.lower
        .disk
        .read(start, &mut t.buffer[first..first + count]);
}

fn write(k: &mut Kernel, id: IrpId, origin: Origin, start: u64, count: u64, fua: bool) {
    if count == 0 {
        return;
    }
    let source = k.resolve_mdl(id);
    let disk = &mut k.lower.disk;
    match source {
        None => disk.write(start as usize, count as usize, fua, |_| 0),
        Some((target, first, false)) => {
            let Some(t) = k.irps.get(target) else { return };
            let src = &t.buffer[first as usize..first as usize + count as usize];
            disk.write(start as usize, count as usize, fua, |i| src[i]);
        }
        Some((target, byte, true)) => {
            let Some(t) = k.irps.get(target) else { return };
            let bytes = &t.input;
            let at = byte as usize;
            if bytes.len() < at + count as usize * 512 {
                k.v.fail(
                    crate::verifier::Rule::StaleMdl,
                    format!("write IRP {id:?} runs past its payload"),
                );
                return;
            }
            disk.write(start as usize, count as usize, fua, |i| {
                let p = at + i * 512;
                u64::from_le_bytes(bytes[p..p + 8].try_into().unwrap_or([0; 8]))
            });
        }
    }
    if let Origin::App { op, .. } = origin {
        let volume_start = start - k.lower.partition_start;
        k.oracle.on_device_write(op, volume_start, count, &mut k.v);
    }
}

fn trim(k: &mut Kernel, id: IrpId, origin: Origin) -> Status {
    let Some(irp) = k.irps.get(id) else {
        return Status::INVALID_DEVICE_REQUEST;
    };
    let mut ranges = [(0u64, 0u64); 8];
    let n = match dsm::decode(&irp.input) {
        Ok(d @ Dsm::Trim(_)) if d.range_count() <= ranges.len() => {
            for (i, r) in ranges.iter_mut().enumerate().take(d.range_count()) {
                *r = d.range(i).unwrap_or((0, 0));
            }
            d.range_count()
        }
        Ok(Dsm::Other(_)) => return Status::SUCCESS,
        _ => return Status::INVALID_PARAMETER,
    };
    for &(offset, len) in &ranges[..n] {
        let (start, count) = (offset / 512, len / 512);
        if offset % 512 != 0 || len % 512 != 0 || !k.lower.disk.fits(start, count) {
            return Status::INVALID_PARAMETER;
        }
        // This device reads trimmed sectors as zeros (RZAT); like a write, the trim is
        // volatile until flushed.
        k.lower
            .disk
            .write(start as usize, count as usize, false, |_| 0);
        if let Origin::App { .. } = origin {
            k.oracle
                .on_device_trim(start - k.lower.partition_start, count);
        }
    }
    Status::SUCCESS
}
