//! A machine's file system: it issues the workload's requests (never two overlapping at
//! the device unless the filter held the earlier one), cancels some, reads the whole
//! volume back at the end, and hands every completion to the oracle.

use rehydrate_driver::Status;

use super::{Machine, Phase};
use crate::data::{app_tag, garbage_tag};
use crate::faults::Fault;
use crate::irp::{
    IrpId, Layer, Mdl, Origin, Routine, IOCTL_DISK_GET_LENGTH_INFO,
    IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES, IRP_MJ_DEVICE_CONTROL, IRP_MJ_FLUSH_BUFFERS,
    IRP_MJ_READ, IRP_MJ_WRITE, SL_WRITE_THROUGH,
};
use crate::link::Link;
use crate::oracle::OpKind;
use crate::sched::Ev;
use crate::verifier::Rule;
use crate::wdf;
use crate::workload::Request;

impl Machine {
    pub(crate) fn fs_tick(&mut self) {
        if !self.mounted {
            return;
        }
        if self.hung() {
            return;
        }
        match self.phase {
            Phase::Run => {}
            Phase::Verify { .. } => {
                self.verify_reads();
                return;
            }
            _ => return,
        }
        let depth = u64::from(self.workload.config.depth_max);
        // Bounded: at most `depth` requests per tick.
        for _ in 0..depth {
            if self.ops_issued >= self.ops_target || self.wdf.k.oracle.in_flight() as u64 >= depth {
                break;
            }
            let req = self.workload.next(&mut self.wdf.k.rng);
            let ranged = matches!(req.kind, OpKind::Read | OpKind::Write { .. } | OpKind::Trim);
            if ranged && !self.wdf.k.oracle.may_issue(req.sector, req.count) {
                break;
            }
            self.ops_issued += 1;
            self.issue(req);
            if self.faults_on(Fault::PowerLoss) && self.wdf.k.rng.chance(self.crash_per_op_ppm) {
                let delay = self.wdf.k.rng.range(0, 5_000_000);
                self.k().sched.after(delay, Ev::PowerLoss);
            }
            if self.faults_on(Fault::ServiceKill) && self.wdf.k.rng.chance(self.kill_per_op_ppm) {
                let delay = self.wdf.k.rng.range(0, 5_000_000);
                self.k().sched.after(delay, Ev::ServiceKill);
            }
            if self.wdf.k.v.failed() || !self.mounted || self.wdf.k.rng.coin() {
                break;
            }
        }
        // With its queue full the file system waits for a completion (`fs_done`);
        // else it comes back after a think time (also after a refused overlap).
        if self.ops_issued < self.ops_target && (self.wdf.k.oracle.in_flight() as u64) < depth {
            self.schedule_fs_tick();
        }
    }

    /// Liveness: nothing the file system sent may hang far past the hold deadline.
    pub(crate) fn hung(&mut self) -> bool {
        let now = self.wdf.k.now_ns();
        let limit = self.hold_deadline_ns + 60_000_000_000;
        if let Some(&(irp, at)) = self
            .fs_irps
            .iter()
            .flatten()
            .find(|&&(_, at)| now - at > limit)
        {
            self.k().v.fail(
                Rule::Liveness,
                format!("IRP {irp:?} issued at {at}ns never completed"),
            );
            return true;
        }
        false
    }

    /// Wakes the file system after a think time, unless a wake-up is already coming.
    pub(crate) fn schedule_fs_tick(&mut self) {
        if !self.fs_tick_pending {
            self.fs_tick_pending = true;
            let think = self.wdf.k.rng.latency(self.workload.config.think_ns, 10);
            self.k().sched.after(think, Ev::FsTick);
        }
    }

    pub(crate) fn fs_cancel(&mut self) {
        if !self.faults_on(Fault::Cancel) {
            return;
        }
        let live: Vec<(u32, IrpId)> = self
            .fs_irps
            .iter()
            .enumerate()
            .filter_map(|(op, f)| f.map(|(irp, _)| (op as u32, irp)))
            .collect();
        if !live.is_empty() {
            let (op, irp) = live[self.wdf.k.rng.pick(live.len())];
            self.k().oracle.excuse(op, Status::CANCELLED);
            self.k().cancel(irp);
        }
        let delay = self.wdf.k.rng.range(1_000_000, 50_000_000);
        self.k().sched.after(delay, Ev::FsCancel);
    }

    /// Sends one file-system request down the stack; returns its slot.
    pub(crate) fn issue(&mut self, req: Request) -> u32 {
        let write_id = if matches!(req.kind, OpKind::Write { .. }) {
            self.next_write_id += 1;
            self.next_write_id
        } else {
            0
        };
        let protected = self.protect.is_some();
        let k = &mut self.wdf.k;
        let now = k.now_ns();
        let slot = k
            .oracle
            .start(req.kind, req.sector, req.count, write_id, now);
        let id = k.alloc_irp(Layer::Fs, Layer::Filter.stack_size());
        let (major, flags, ioctl) = match req.kind {
            OpKind::Read | OpKind::Bad => (IRP_MJ_READ, 0, 0),
            OpKind::Write { fua } => (IRP_MJ_WRITE, if fua { SL_WRITE_THROUGH } else { 0 }, 0),
            OpKind::Flush => (IRP_MJ_FLUSH_BUFFERS, 0, 0),
            OpKind::Trim => (
                IRP_MJ_DEVICE_CONTROL,
                0,
                IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES,
            ),
            OpKind::GetLength => (IRP_MJ_DEVICE_CONTROL, 0, IOCTL_DISK_GET_LENGTH_INFO),
        };
        if let Some(irp) = k.irps.get_mut(id) {
            irp.origin = Origin::App {
                op: slot,
                first_sector: req.sector,
            };
            match req.kind {
                OpKind::Read | OpKind::Bad => {
                    irp.mdl = Mdl::Own;
                    // Never a valid read result: a read "served" without data shows.
                    irp.buffer.resize(req.count as usize, garbage_tag(u64::MAX));
                }
                OpKind::Write { .. } => {
                    irp.mdl = Mdl::Own;
                    irp.buffer
                        .extend((req.sector..req.sector + req.count).map(|s| app_tag(write_id, s)));
                    // What the filter's capture reads as the write's input buffer.
                    if protected {
                        irp.input = crate::journal::tags_to_bytes(&irp.buffer);
                    }
                }
                OpKind::Trim => encode_trim(&mut irp.input, req.sector * 512, req.count * 512),
                OpKind::GetLength => irp.output.resize(8, 0),
                OpKind::Flush => {}
            }
        }
        if let Some(next) = k.next_loc(Layer::Fs, id) {
            next.major = major;
            next.flags = flags;
            next.ioctl = ioctl;
            next.offset = req.sector * 512;
            next.length = req.count * 512;
        }
        k.set_completion(Layer::Fs, id, Routine::Fs { op: slot });
        let now = k.now_ns();
        if self.fs_irps.len() <= slot as usize {
            self.fs_irps.resize(slot as usize + 1, None);
        }
        self.fs_irps[slot as usize] = Some((id, now));
        wdf::dispatch(
            &mut self.wdf,
            &mut self.filter,
            Layer::Fs,
            id,
            Layer::Filter,
        );
        slot
    }

    pub(crate) fn fs_done(&mut self, op: u32, irp: IrpId, link: &mut Link) {
        let k = &mut self.wdf.k;
        let Some(i) = k.irps.get(irp) else { return };
        let (status, info) = (i.status, i.information);
        let kind = k.oracle.op(op).kind;
        if kind == OpKind::GetLength && status.is_success() {
            let len = u64::from_le_bytes(i.output[..8].try_into().unwrap_or([0; 8]));
            if len != self.volume_sectors * 512 || info != 8 {
                k.v.fail(
                    Rule::Status,
                    format!("IOCTL_DISK_GET_LENGTH_INFO said {len} bytes ({info} returned)"),
                );
            }
        }
        let data: &[u64] = if kind == OpKind::Read && status.is_success() {
            &i.buffer
        } else {
            &[]
        };
        if let (Some(ext), Some(Some((_, issued_ns)))) =
            (self.ext.as_mut(), self.fs_irps.get(op as usize))
        {
            let o = k.oracle.op(op);
            ext.note_fs_done(
                o.kind,
                o.held,
                *issued_ns,
                k.now_ns(),
                status.is_success(),
                matches!(self.phase, Phase::Run),
            );
        }
        let now = k.now_ns();
        k.oracle.finish(op, status, info, data, now, &mut k.v);
        self.capture_answered(op, status.is_success());
        let k = &mut self.wdf.k;
        k.free_irp(Layer::Fs, irp);
        if let Some(slot) = self.fs_irps.get_mut(op as usize) {
            *slot = None;
        }
        self.ops_done += 1;
        if matches!(self.phase, Phase::Run) && self.ops_issued < self.ops_target {
            self.schedule_fs_tick();
        }
        if self.shutdown_flush == Some(op) {
            self.shutdown_flush = None;
            if !status.is_success() {
                self.k().v.fail(
                    Rule::Status,
                    format!("the shutdown flush failed with {status:?}"),
                );
                return;
            }
            self.phase = Phase::Shutdown { step: 1 };
            self.shutdown(link);
        } else if matches!(self.phase, Phase::Verify { .. }) {
            if !status.is_success() {
                self.k().v.fail(
                    Rule::Status,
                    format!(
                        "a verification read failed with {status:?} after everything was restored"
                    ),
                );
                return;
            }
            self.verify_reads();
        }
    }

    /// Reads the whole volume back, a few requests at a time.
    pub(crate) fn verify_reads(&mut self) {
        const CHUNK: u64 = 256;
        const DEPTH: usize = 8;
        while let Phase::Verify { next_sector } = self.phase {
            if next_sector >= self.volume_sectors || self.wdf.k.oracle.in_flight() >= DEPTH {
                return;
            }
            let count = CHUNK.min(self.volume_sectors - next_sector);
            self.phase = Phase::Verify {
                next_sector: next_sector + count,
            };
            self.issue(Request {
                kind: OpKind::Read,
                sector: next_sector,
                count,
            });
        }
    }
}

/// A one-range trim in `DEVICE_MANAGE_DATA_SET_ATTRIBUTES` layout (see the driver's
/// `dsm` module): 28-byte header, ranges at offset 32.
fn encode_trim(buf: &mut Vec<u8>, offset: u64, len: u64) {
    buf.clear();
    buf.resize(48, 0);
    buf[0..4].copy_from_slice(&28u32.to_le_bytes());
    buf[4..8].copy_from_slice(&rehydrate_driver::dsm::DSM_ACTION_TRIM.to_le_bytes());
    buf[20..24].copy_from_slice(&32u32.to_le_bytes());
    buf[24..28].copy_from_slice(&16u32.to_le_bytes());
    buf[32..40].copy_from_slice(&offset.to_le_bytes());
    buf[40..48].copy_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_buffer_decodes_as_one_range() {
        let mut b = Vec::new();
        encode_trim(&mut b, 4096, 8192);
        let d = rehydrate_driver::dsm::decode(&b).unwrap();
        assert_eq!(d.range_count(), 1);
        assert_eq!(d.range(0), Some((4096, 8192)));
    }
}
