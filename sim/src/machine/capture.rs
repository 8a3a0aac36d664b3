//! A protected machine (technique T3): the filter captures every write and flush, and
//! the service journals the records (`journal.rs`), with kills and power losses.
//!
//! * At every filter start the capture starts after the journal's durable head, over a
//!   new epoch whose base is the volume as it booted.
//! * Every point the capture offers (at a flush's completion) is checked at once
//!   against the volume as it is then: every batch is taken first, so the journal holds
//!   every record up to the point.
//! * The service's journal tick makes what it received durable, acknowledges it (held
//!   writes go down, sync answers go up), takes new batches and performs the read-backs
//!   that close a gap (a read of the volume below the filter).
//! * In sync mode every write the file system gets an answer for must be durable.
//!
//! The volume "as it is" is what a read returns: the device's current contents where
//! the region is restored, else the backup's data (what the restore brings; after a
//! power loss that includes regions whose marks were not durable, even where an
//! unflushed write had landed). A trim leaves its sectors undefined: the journal holds
//! zeros, the volume may read zeros or what the restore brings.

use rehydrate_driver::abi::RECORD_BATCH_MAX_BYTES;
use rehydrate_driver::capture::{Capture, CaptureConfig, CaptureMode, BUFFER_MIN_BYTES};
use rehydrate_driver::filter::CaptureTap;

use super::Machine;
use crate::data::{app_tag, Backup};
use crate::journal::{tags_to_bytes, JournalSink, JournalViolation, ANY};
use crate::oracle::OpKind;
use crate::rng::Rng;
use crate::sched::Ev;
use crate::verifier::Rule;

/// Batches the service takes per tick.
const BATCHES_PER_TICK: usize = 8;

/// The journal side of a protected machine.
pub(crate) struct Protect {
    pub(crate) sink: JournalSink,
    backup: Backup,
    buffer_max_bytes: u64,
    tick_min_ns: u64,
    tick_max_ns: u64,
    /// Generation of the tick chain (a power loss starts a new one).
    gen: u64,
    batch: Vec<u8>,
}

impl Protect {
    /// Drawn from its own stream, so unprotected runs draw exactly as before.
    /// Half the runs keep the journal on disk too (the backup server's segment files),
    /// so appends torn by kills are checked.
    pub(crate) fn draw(
        mode: CaptureMode,
        backup: Backup,
        volume_size_bytes: u64,
        seed: u64,
    ) -> Result<Protect, JournalViolation> {
        let mut rng = Rng::new(seed ^ 0x6a6f_7572_6e61_6c00);
        // Small buffers make sync holds and async gaps common.
        let buffer_max_bytes = [BUFFER_MIN_BYTES, 64 << 10, 1 << 20][rng.below(3) as usize];
        let fast = rng.coin();
        let mut sink = JournalSink::new(mode);
        if rng.coin() {
            sink.keep_on_disk(volume_size_bytes)?;
        }
        Ok(Protect {
            sink,
            backup,
            buffer_max_bytes,
            tick_min_ns: if fast { 100_000 } else { 2_000_000 },
            tick_max_ns: if fast { 2_000_000 } else { 50_000_000 },
            gen: 0,
            batch: vec![0u8; RECORD_BATCH_MAX_BYTES],
        })
    }
}

impl Machine {
    fn journal_failed(&mut self, v: JournalViolation) {
        self.k()
            .v
            .fail(Rule::Journal, format!("journal:{}: {}", v.rule, v.detail));
    }

    /// What volume sectors `first..first + count` read as now: the device's contents
    /// where the region is restored, else the backup's (what the restore brings).
    fn volume_tags(&self, backup: &Backup, first: u64, count: u64) -> Vec<u64> {
        let region_sectors = u64::from(self.geometry.region_size_bytes()) / 512;
        let map = self.filter.as_ref().map(|f| f.engine().map());
        let disk = &self.wdf.k.lower.disk;
        (first..first + count)
            .map(|s| {
                let restored = map.is_none_or(|m| m.is_restored(s / region_sectors));
                if restored {
                    disk.live((self.partition_start + s) as usize)
                } else {
                    backup.tag(s)
                }
            })
            .collect()
    }

    /// The filter started: capture starts after the durable head, over a new epoch.
    pub(crate) fn capture_start(&mut self) {
        let Some(p) = self.protect.as_ref() else {
            return;
        };
        let backup = p.backup;
        let base = self.volume_tags(&backup, 0, self.volume_sectors);
        let Some(p) = self.protect.as_mut() else {
            return;
        };
        p.sink.new_epoch(base);
        let config = CaptureConfig {
            buffer_max_bytes: p.buffer_max_bytes,
            ..CaptureConfig::new(p.sink.mode(), p.sink.durable_seq() + 1)
        };
        p.gen += 1;
        let gen = p.gen;
        match Capture::new(self.geometry, config) {
            Ok(core) => {
                if let Some(f) = self.filter.as_mut() {
                    f.enable_capture(CaptureTap::new(core));
                }
            }
            Err(e) => {
                self.k()
                    .v
                    .fail(Rule::Driver, format!("capture refused to start: {e}"));
                return;
            }
        }
        self.k().sched.after(1_000_000, Ev::JournalTick { gen });
    }

    /// The service was killed: it loses what it received. The next service starts by
    /// telling the capture where its journal ends (done at once: the checker takes
    /// batches at every point, service or not).
    pub(crate) fn capture_service_killed(&mut self) {
        let Some(p) = self.protect.as_mut() else {
            return;
        };
        if let Err(v) = p.sink.lose_received() {
            self.journal_failed(v);
            return;
        }
        let Some(p) = self.protect.as_ref() else {
            return;
        };
        let durable = p.sink.durable_seq();
        let rewound = self
            .filter
            .as_mut()
            .and_then(|f| f.capture_mut())
            .map(|t| t.rewind(durable));
        if let Some(Err(e)) = rewound {
            let e = format!("capture refused the rewind to {durable}: {e}");
            self.k().v.fail(Rule::Journal, e);
        }
    }

    /// Power loss: the capture is gone with the filter; the service loses what it
    /// received.
    pub(crate) fn capture_power_loss(&mut self) {
        if let Some(p) = self.protect.as_mut() {
            p.gen += 1;
            if let Err(v) = p.sink.lose_received() {
                self.journal_failed(v);
            }
        }
    }

    /// Takes up to `max` batches into the journal; false on a violation.
    fn take_batches(&mut self, max: usize) -> bool {
        // Bounded by `max`.
        for _ in 0..max {
            let (Some(p), Some(f)) = (self.protect.as_mut(), self.filter.as_mut()) else {
                return true;
            };
            let Some(tap) = f.capture_mut() else {
                return true;
            };
            let taken = match tap.next_batch(&mut p.batch) {
                Ok(Some(len)) => p.sink.take(&p.batch[..len]),
                Ok(None) => return true,
                Err(e) => {
                    let e = format!("capture refused a batch: {e}");
                    self.k().v.fail(Rule::Journal, e);
                    return false;
                }
            };
            if let Err(v) = taken {
                self.journal_failed(v);
                return false;
            }
        }
        true
    }

    /// After the filter handled a completion: checks every point it offered against
    /// the volume as it is now.
    pub(crate) fn capture_points(&mut self) {
        if self.protect.is_none() {
            return;
        }
        if let Some(e) = self
            .filter
            .as_ref()
            .and_then(|f| f.capture())
            .and_then(|t| t.failure())
        {
            self.k().v.fail(
                Rule::Journal,
                format!("capture failed on the filter's path: {e}"),
            );
            return;
        }
        // Bounded by the tap's queue of offered points.
        loop {
            let Some(point) = self
                .filter
                .as_mut()
                .and_then(|f| f.capture_mut())
                .and_then(|t| t.take_offered())
            else {
                return;
            };
            if !self.take_batches(usize::MAX) {
                return;
            }
            let Some(p) = self.protect.as_ref() else {
                return;
            };
            let backup = p.backup;
            let mut volume = self.volume_tags(&backup, 0, self.volume_sectors);
            if let Some(tap) = self.filter.as_ref().and_then(|f| f.capture()) {
                for (offset, len) in tap.writes_in_flight() {
                    let first = (offset / 512) as usize;
                    let end = (((offset + len) / 512) as usize).min(volume.len());
                    volume[first..end].fill(ANY);
                }
            }
            let Some(p) = self.protect.as_mut() else {
                return;
            };
            if let Err(v) = p.sink.check_point(point.seq, &volume) {
                self.journal_failed(v);
                return;
            }
        }
    }

    /// The service's journal tick: durable, acknowledged, new batches, read-backs.
    pub(crate) fn journal_tick(&mut self, gen: u64) {
        let Some(p) = self.protect.as_mut() else {
            return;
        };
        if gen != p.gen {
            return;
        }
        let delay = self.wdf.k.rng.range(p.tick_min_ns, p.tick_max_ns);
        self.k().sched.after(delay, Ev::JournalTick { gen });
        if !self.service.is_alive() || self.filter.is_none() {
            return;
        }
        let Some(p) = self.protect.as_mut() else {
            return;
        };
        let durable = match p.sink.make_durable() {
            Ok(d) => d,
            Err(v) => {
                self.journal_failed(v);
                return;
            }
        };
        if let Some(f) = self.filter.as_mut() {
            if let Err(e) = f.capture_ack(&mut self.wdf, durable) {
                let e = format!("capture refused the acknowledgement of {durable}: {e}");
                self.k().v.fail(Rule::Journal, e);
                return;
            }
            self.wdf.collect();
        }
        let capture_durable = self
            .filter
            .as_ref()
            .and_then(|f| f.capture())
            .map(|t| t.core().durable_seq());
        if let (Some(d), Some(p)) = (capture_durable, self.protect.as_ref()) {
            if let Err(v) = p.sink.check_durable(d) {
                self.journal_failed(v);
                return;
            }
        }
        if !self.take_batches(BATCHES_PER_TICK) {
            return;
        }
        self.resync();
        self.capture_points();
    }

    /// Read-backs of a gap: each a read of the volume below the filter.
    fn resync(&mut self) {
        let Some(backup) = self.protect.as_ref().map(|p| p.backup) else {
            return;
        };
        let now = self.wdf.k.now_ns();
        // Bounded by the dirty regions: each read-back takes some.
        for _ in 0..64 {
            let Some(r) = self
                .filter
                .as_mut()
                .and_then(|f| f.capture_mut())
                .and_then(|t| t.next_resync(now))
            else {
                return;
            };
            let tags = self.volume_tags(&backup, r.offset / 512, r.len / 512);
            let bytes = tags_to_bytes(&tags);
            if let Some(f) = self.filter.as_mut() {
                if let Err(e) = f.capture_resync_done(&mut self.wdf, r.ticket, Some(&bytes)) {
                    let e = format!("capture refused a read-back: {e}");
                    self.k().v.fail(Rule::Journal, e);
                    return;
                }
                self.wdf.collect();
            }
        }
    }

    /// The file system got the answer to request `op`: in sync mode a write's record
    /// must be durable.
    pub(crate) fn capture_answered(&mut self, op: u32, ok: bool) {
        if self.protect.is_none() || !ok {
            return;
        }
        let o = self.wdf.k.oracle.op(op);
        if !matches!(o.kind, OpKind::Write { .. }) {
            return;
        }
        let tag = app_tag(o.write_id, o.sector);
        if let Some(Err(v)) = self.protect.as_mut().map(|p| p.sink.check_answered(tag)) {
            self.journal_failed(v);
        }
    }
}
