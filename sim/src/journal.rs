//! The journal behind the simulated service (technique T3), and the rules it checks.
//!
//! The service takes record batches from the filter's capture (the ABI's batch bytes,
//! decoded as the real service decodes them), keeps them *received* until its journal
//! makes them durable (a later tick), then acknowledges the durable sequence. A killed
//! service loses what it received and not made durable; the capture sends it again
//! after a rewind. A power loss loses the capture too: the next boot starts a new
//! *epoch* whose base is the volume as it booted (as `rehydrate protect` does after an
//! unclean stop, against a new base version), with sequences continuing after the
//! durable head.
//!
//! Sectors are tags (`data.rs`); a record's bytes carry one tag per 512-byte sector in
//! its first 8 bytes, the rest zero ([`tags_to_bytes`]).
//!
//! The rules (violations name them, as `journal:RULE`):
//! * `stream`: batches decode, and records continue the journal one sequence at a time
//!   (a write numbered at dispatch arrives out of order);
//! * `point-inside-epoch`: a point offered when its flush completed covers every write
//!   record made before that completion;
//! * `point-in-gap`: no point is offered while the journal's gap is open;
//! * `point-content`: every offered point, replayed from the journal (base, then every
//!   record up to it), is the volume as it was when the point was offered, sector by
//!   sector (sectors under a write in flight may be either, and so may sectors whose
//!   newest record is a trim: a trim leaves them undefined);
//! * `point-restore`: with the journal on disk, every point that becomes durable and
//!   listed, restored from the segment files through the backup server's own point map
//!   (the epoch's base, then the epoch's records up to it, read back from disk), is the
//!   volume as it was when the point was offered (the same exceptions);
//! * `listed-point`: every point the journal lists (a flush or mark outside a gap) was
//!   offered by the capture;
//! * `sync-durable`: in sync mode a write is answered only once its record is durable;
//! * `durable`: the capture's durable sequence is the journal's; an acknowledged
//!   sequence is never lost (kills and power losses included);
//! * `torn-tail`: with the journal on disk, an append torn by a kill is never applied:
//!   reopened, the journal ends at the acknowledged head.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rehydrate_driver::abi::{CaptureRecord, RecordBatch, RecordFlags, RecordKind};

use crate::journal_store::{DiskJournal, Restored};
use rehydrate_driver::capture::CaptureMode;

/// A sector a point may hold either way: a write over it was in flight.
pub const ANY: u64 = u64::MAX;
/// Bytes per sector tag on the wire.
pub const SECTOR_BYTES: usize = 512;

/// Sector tags as the bytes of a write: each tag little-endian in its sector's first 8
/// bytes.
pub fn tags_to_bytes(tags: &[u64]) -> Vec<u8> {
    let mut out = vec![0u8; tags.len() * SECTOR_BYTES];
    for (i, t) in tags.iter().enumerate() {
        out[i * SECTOR_BYTES..i * SECTOR_BYTES + 8].copy_from_slice(&t.to_le_bytes());
    }
    out
}

/// The tags a write's bytes carry (see [`tags_to_bytes`]).
pub fn bytes_to_tags(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(SECTOR_BYTES)
        .map(|c| u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8])))
        .collect()
}

/// A rule the journal saw broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalViolation {
    /// The rule's name.
    pub rule: &'static str,
    /// What was seen.
    pub detail: String,
}

fn violation(rule: &'static str, detail: String) -> JournalViolation {
    JournalViolation { rule, detail }
}

#[derive(Clone, Debug)]
struct Rec {
    seq: u64,
    kind: RecordKind,
    first_sector: u64,
    /// `None`: zeros.
    tags: Option<Vec<u64>>,
    sectors: u64,
    /// The record as received, for the journal on disk.
    flags: RecordFlags,
    time_unix_ns: u64,
    payload: Vec<u8>,
}

impl Rec {
    fn capture_record(&self) -> CaptureRecord<'_> {
        CaptureRecord {
            seq: self.seq,
            kind: self.kind,
            flags: self.flags,
            offset: self.first_sector * SECTOR_BYTES as u64,
            len: self.sectors * SECTOR_BYTES as u64,
            time_unix_ns: self.time_unix_ns,
            payload: &self.payload,
        }
    }
}

/// What the journal did, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records made durable.
    pub records: u64,
    /// Points offered and checked against the volume.
    pub points_checked: u64,
    /// Points listed by the durable journal.
    pub points_listed: u64,
    /// Listed points restored from the journal on disk and checked.
    pub points_restored: u64,
    /// Gaps begun.
    pub gaps: u64,
    /// Epochs (boots with capture).
    pub epochs: u64,
    /// Times the service lost what it had received (kills, power losses).
    pub losses: u64,
    /// Writes answered in sync mode, each checked durable.
    pub sync_answers: u64,
    /// Appends torn on disk by a loss, each checked not applied on reopening.
    pub torn_appends: u64,
}

impl JournalStats {
    /// Adds another run's figures.
    pub fn add(&mut self, o: &JournalStats) {
        self.records += o.records;
        self.points_checked += o.points_checked;
        self.points_listed += o.points_listed;
        self.points_restored += o.points_restored;
        self.gaps += o.gaps;
        self.epochs += o.epochs;
        self.losses += o.losses;
        self.sync_answers += o.sync_answers;
        self.torn_appends += o.torn_appends;
    }

    /// One line for reports.
    pub fn line(&self) -> String {
        format!(
            "points_checked={} points_listed={} points_restored={} records={} gaps={} epochs={} losses={} sync_answers={} torn_appends={}",
            self.points_checked,
            self.points_listed,
            self.points_restored,
            self.records,
            self.gaps,
            self.epochs,
            self.losses,
            self.sync_answers,
            self.torn_appends
        )
    }
}

/// The journal of one volume, as the simulated service keeps it.
pub struct JournalSink {
    mode: CaptureMode,
    durable_seq: u64,
    received: Vec<Rec>,
    /// The epoch's base with every durable record applied.
    durable_image: Vec<u64>,
    /// ... and every received record too.
    taken_image: Vec<u64>,
    /// Sectors whose newest taken record is a trim (zeros): undefined.
    taken_trimmed: Vec<bool>,
    durable_trimmed: Vec<bool>,
    taken_seq: u64,
    durable_in_gap: bool,
    taken_in_gap: bool,
    /// Data records taken after the last point record (sequence of the newest).
    taken_last_data_seq: u64,
    durable_last_data_seq: u64,
    /// Points the capture offered in this epoch.
    offered: BTreeSet<u64>,
    /// With the journal on disk: the volume when each offered point of this epoch was
    /// offered, until the point is listed and restored.
    offered_volumes: BTreeMap<u64, Vec<u64>>,
    /// The epoch's base and its first sequence (what a point of it is restored over).
    epoch_base: Vec<u64>,
    epoch_first_seq: u64,
    /// The journal on disk was inside a gap when power was lost. The one journal of a
    /// run holds every epoch, so on disk that gap lasts until a gap of this epoch ends;
    /// `rehydrate protect` would begin a new journal over a new base here instead.
    /// Points in it are not restored.
    disk_gap_carried: bool,
    /// Application tags made durable (sync mode's rule).
    durable_tags: HashSet<u64>,
    /// The durable records in the backup server's segment files, when kept on disk.
    disk: Option<DiskJournal>,
    stats: JournalStats,
}

impl JournalSink {
    /// An empty journal for a capture in `mode`.
    pub fn new(mode: CaptureMode) -> JournalSink {
        JournalSink {
            mode,
            durable_seq: 0,
            received: Vec::new(),
            durable_image: Vec::new(),
            taken_image: Vec::new(),
            taken_trimmed: Vec::new(),
            durable_trimmed: Vec::new(),
            taken_seq: 0,
            durable_in_gap: false,
            taken_in_gap: false,
            taken_last_data_seq: 0,
            durable_last_data_seq: 0,
            offered: BTreeSet::new(),
            offered_volumes: BTreeMap::new(),
            epoch_base: Vec::new(),
            epoch_first_seq: 1,
            disk_gap_carried: false,
            durable_tags: HashSet::new(),
            disk: None,
            stats: JournalStats::default(),
        }
    }

    /// Keeps the durable records on disk too, in the backup server's format (a torn
    /// append at every loss is then checked: `journal_store.rs`).
    pub fn keep_on_disk(&mut self, volume_size_bytes: u64) -> Result<(), JournalViolation> {
        let disk = DiskJournal::new(volume_size_bytes).map_err(|e| violation("disk", e))?;
        self.disk = Some(disk);
        Ok(())
    }

    /// The capture's mode.
    pub fn mode(&self) -> CaptureMode {
        self.mode
    }

    /// The durable head.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// What it did.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// A new epoch over `base` (the volume as the capture starts), after the durable
    /// head; whatever was received and not durable is gone.
    pub fn new_epoch(&mut self, base: Vec<u64>) {
        debug_assert!(self.received.is_empty(), "a loss comes before a new epoch");
        self.durable_trimmed = vec![false; base.len()];
        self.taken_trimmed = vec![false; base.len()];
        self.durable_image = base.clone();
        self.epoch_base.clone_from(&base);
        self.epoch_first_seq = self.durable_seq + 1;
        self.disk_gap_carried |= self.durable_in_gap;
        self.taken_image = base;
        self.durable_in_gap = false;
        self.taken_in_gap = false;
        self.offered.clear();
        self.offered_volumes.clear();
        self.stats.epochs += 1;
    }

    /// The service died: what it received and did not make durable is lost. With the
    /// journal on disk it died while appending it: the append is torn, and the journal
    /// as the next service opens it must end at the acknowledged head.
    pub fn lose_received(&mut self) -> Result<(), JournalViolation> {
        if !self.received.is_empty() {
            self.stats.losses += 1;
        }
        let lost = std::mem::take(&mut self.received);
        let reopened = match self.disk.as_mut() {
            Some(disk) => {
                if !lost.is_empty() {
                    self.stats.torn_appends += 1;
                }
                let records: Vec<CaptureRecord<'_>> =
                    lost.iter().map(Rec::capture_record).collect();
                Some(
                    disk.tear_and_reopen(&records)
                        .map_err(|e| violation("disk", e))?,
                )
            }
            None => None,
        };
        self.taken_image.clone_from(&self.durable_image);
        self.taken_trimmed.clone_from(&self.durable_trimmed);
        self.taken_seq = self.durable_seq;
        self.taken_in_gap = self.durable_in_gap;
        self.taken_last_data_seq = self.durable_last_data_seq;
        match reopened {
            Some(head) if head != self.durable_seq => Err(violation(
                "torn-tail",
                format!(
                    "the journal reopened after a torn append ends at {head}, but only {} was acknowledged: the torn append was applied",
                    self.durable_seq
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The service takes one batch (the ABI's bytes).
    pub fn take(&mut self, batch: &[u8]) -> Result<(), JournalViolation> {
        let batch = RecordBatch::decode(batch)
            .map_err(|e| violation("stream", format!("a batch does not decode: {e}")))?;
        for r in batch.iter() {
            if r.seq != self.taken_seq + 1 {
                return Err(violation(
                    "stream",
                    format!(
                        "record {} ({:?}) follows record {}: the journal would have a hole or apply writes out of order",
                        r.seq, r.kind, self.taken_seq
                    ),
                ));
            }
            self.taken_seq = r.seq;
            let first_sector = r.offset / SECTOR_BYTES as u64;
            let sectors = r.len / SECTOR_BYTES as u64;
            let tags = match r.kind {
                RecordKind::Write => Some(bytes_to_tags(r.payload)),
                _ => None,
            };
            match r.kind {
                RecordKind::Write | RecordKind::Zero => {
                    apply(
                        &mut self.taken_image,
                        first_sector,
                        sectors,
                        tags.as_deref(),
                    );
                    mark(
                        &mut self.taken_trimmed,
                        first_sector,
                        sectors,
                        tags.is_none(),
                    );
                    self.taken_last_data_seq = r.seq;
                }
                RecordKind::GapBegin => self.taken_in_gap = true,
                RecordKind::GapEnd => self.taken_in_gap = false,
                _ => {}
            }
            self.received.push(Rec {
                seq: r.seq,
                kind: r.kind,
                first_sector,
                tags,
                sectors,
                flags: r.flags,
                time_unix_ns: r.time_unix_ns,
                payload: r.payload.to_vec(),
            });
        }
        Ok(())
    }

    /// The journal makes what it received durable; returns the durable head to
    /// acknowledge.
    pub fn make_durable(&mut self) -> Result<u64, JournalViolation> {
        if let Some(disk) = self.disk.as_mut() {
            if !self.received.is_empty() {
                let records: Vec<CaptureRecord<'_>> =
                    self.received.iter().map(Rec::capture_record).collect();
                let head = disk.append(&records).map_err(|e| violation("disk", e))?;
                debug_assert_eq!(Some(head), self.received.last().map(|r| r.seq));
            }
        }
        let mut listed = Vec::new();
        for r in std::mem::take(&mut self.received) {
            self.stats.records += 1;
            match r.kind {
                RecordKind::Write | RecordKind::Zero => {
                    apply(
                        &mut self.durable_image,
                        r.first_sector,
                        r.sectors,
                        r.tags.as_deref(),
                    );
                    mark(
                        &mut self.durable_trimmed,
                        r.first_sector,
                        r.sectors,
                        r.tags.is_none(),
                    );
                    if let Some(tags) = &r.tags {
                        self.durable_tags.extend(tags.iter().copied());
                    }
                    self.durable_last_data_seq = r.seq;
                }
                RecordKind::GapBegin => {
                    self.durable_in_gap = true;
                    self.stats.gaps += 1;
                }
                RecordKind::GapEnd => {
                    self.durable_in_gap = false;
                    // On disk too, this ends whatever gap was open.
                    self.disk_gap_carried = false;
                }
                RecordKind::Flush | RecordKind::Mark if !self.durable_in_gap => {
                    self.stats.points_listed += 1;
                    listed.push(r.seq);
                    if !self.offered.contains(&r.seq) {
                        return Err(violation(
                            "listed-point",
                            format!(
                                "the journal lists point {} that the capture never offered",
                                r.seq
                            ),
                        ));
                    }
                }
                _ => {}
            }
            self.durable_seq = r.seq;
        }
        self.check_restored(&listed)?;
        Ok(self.durable_seq)
    }

    /// The capture offered point `seq` now, with every batch taken; `volume` is the
    /// volume as it is now ([`ANY`] where a write is in flight).
    pub fn check_point(&mut self, seq: u64, volume: &[u64]) -> Result<(), JournalViolation> {
        self.offered.insert(seq);
        if self.taken_in_gap {
            return Err(violation(
                "point-in-gap",
                format!("point {seq} was offered while the journal's gap is open"),
            ));
        }
        if self.taken_last_data_seq > seq {
            return Err(violation(
                "point-inside-epoch",
                format!(
                    "point {seq} was offered when its flush completed, but write record {} was made before that completion",
                    self.taken_last_data_seq
                ),
            ));
        }
        if self.taken_seq < seq {
            return Err(violation(
                "stream",
                format!(
                    "point {seq} was offered but the capture sent records only up to {}",
                    self.taken_seq
                ),
            ));
        }
        if let Some((s, (&want, &got))) = volume
            .iter()
            .zip(&self.taken_image)
            .enumerate()
            .find(|(s, (&want, &got))| want != ANY && want != got && !self.taken_trimmed[*s])
        {
            return Err(violation(
                "point-content",
                format!(
                    "point {seq} replays sector {s} as {} but the volume held {} when it was offered",
                    crate::data::describe(got),
                    crate::data::describe(want)
                ),
            ));
        }
        self.stats.points_checked += 1;
        if self.disk.is_some() {
            self.offered_volumes.insert(seq, volume.to_vec());
        }
        Ok(())
    }

    /// Restores `points` (just made durable and listed) from the journal on disk and
    /// compares each with the volume when it was offered.
    fn check_restored(&mut self, points: &[u64]) -> Result<(), JournalViolation> {
        let Some(disk) = self.disk.as_ref() else {
            return Ok(());
        };
        if points.is_empty() || self.disk_gap_carried {
            return Ok(());
        }
        let journal = disk.reader().map_err(|e| violation("point-restore", e))?;
        for &seq in points {
            let Some(want) = self.offered_volumes.remove(&seq) else {
                continue;
            };
            let got = DiskJournal::restore_point(
                &journal,
                self.epoch_first_seq..=seq,
                seq,
                want.len() as u64,
            )
            .map_err(|e| violation("point-restore", e))?;
            let differs = want.iter().zip(&got).enumerate().find(|(s, (&w, &g))| {
                let base = self.epoch_base.get(*s).copied();
                match g {
                    _ if w == ANY => false,
                    // A trim leaves its sectors undefined.
                    Restored::Zero => false,
                    Restored::Base => base != Some(w),
                    Restored::Tag(t) => t != w,
                }
            });
            if let Some((s, (&w, &g))) = differs {
                let restored = match g {
                    Restored::Tag(t) => crate::data::describe(t),
                    Restored::Base => {
                        format!("the base's {}", crate::data::describe(self.epoch_base[s]))
                    }
                    Restored::Zero => "zeros".to_string(),
                };
                return Err(violation(
                    "point-restore",
                    format!(
                        "point {seq} restored from the journal on disk reads sector {s} as {restored} but the volume held {} when it was offered",
                        crate::data::describe(w)
                    ),
                ));
            }
            if got.len() != want.len() {
                return Err(violation(
                    "point-restore",
                    format!(
                        "point {seq} restored {} sectors of {}",
                        got.len(),
                        want.len()
                    ),
                ));
            }
            self.stats.points_restored += 1;
        }
        Ok(())
    }

    /// Sync mode: the file system got the answer to a write whose first sector holds
    /// `tag`.
    pub fn check_answered(&mut self, tag: u64) -> Result<(), JournalViolation> {
        if self.mode != CaptureMode::Sync {
            return Ok(());
        }
        self.stats.sync_answers += 1;
        if self.durable_tags.contains(&tag) {
            return Ok(());
        }
        Err(violation(
            "sync-durable",
            format!(
                "a write ({}) was answered before its record was durable (durable head {})",
                crate::data::describe(tag),
                self.durable_seq
            ),
        ))
    }

    /// The capture says its durable sequence is `capture_durable`.
    pub fn check_durable(&self, capture_durable: u64) -> Result<(), JournalViolation> {
        if capture_durable == self.durable_seq {
            return Ok(());
        }
        Err(violation(
            "durable",
            format!(
                "the capture's durable sequence is {capture_durable}, the journal's {}",
                self.durable_seq
            ),
        ))
    }
}

fn mark(flags: &mut [bool], first: u64, sectors: u64, value: bool) {
    let end = (first + sectors).min(flags.len() as u64);
    flags[first.min(end) as usize..end as usize].fill(value);
}

fn apply(image: &mut [u64], first: u64, sectors: u64, tags: Option<&[u64]>) {
    let end = (first + sectors).min(image.len() as u64);
    for (i, s) in (first..end).enumerate() {
        image[s as usize] = tags.map_or(0, |t| t[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rehydrate_driver::abi::batch_of;

    fn batch(records: &[CaptureRecord<'_>]) -> Vec<u8> {
        batch_of(records).unwrap()
    }

    fn write(seq: u64, sector: u64, tags: &[u64], bytes: &[u8]) -> CaptureRecord<'static> {
        let _ = tags;
        CaptureRecord {
            seq,
            kind: RecordKind::Write,
            flags: RecordFlags::empty(),
            offset: sector * 512,
            len: bytes.len() as u64,
            time_unix_ns: 1,
            payload: Box::leak(bytes.to_vec().into_boxed_slice()),
        }
    }

    fn flush(seq: u64) -> CaptureRecord<'static> {
        CaptureRecord {
            seq,
            kind: RecordKind::Flush,
            flags: RecordFlags::empty(),
            offset: 0,
            len: 0,
            time_unix_ns: 1,
            payload: &[],
        }
    }

    #[test]
    fn a_point_replays_and_a_wrong_volume_is_named() {
        let mut j = JournalSink::new(CaptureMode::Async);
        j.new_epoch(vec![7; 8]);
        let data = tags_to_bytes(&[1, 2]);
        j.take(&batch(&[write(1, 2, &[1, 2], &data), flush(2)]))
            .unwrap();
        j.check_point(2, &[7, 7, 1, 2, 7, 7, 7, ANY]).unwrap();
        let e = j.check_point(2, &[7, 7, 1, 3, 7, 7, 7, 7]).unwrap_err();
        assert_eq!(e.rule, "point-content");
        assert_eq!(j.make_durable().unwrap(), 2);
        assert_eq!(j.stats().points_listed, 1);
    }

    #[test]
    fn listed_points_are_restored_from_disk_and_a_difference_is_named() {
        let mut j = JournalSink::new(CaptureMode::Async);
        j.keep_on_disk(8 * 512).unwrap();
        j.new_epoch(vec![7; 8]);
        let data = tags_to_bytes(&[1, 2]);
        j.take(&batch(&[write(1, 2, &[1, 2], &data), flush(2)]))
            .unwrap();
        j.check_point(2, &[7, 7, 1, 2, 7, 7, 7, ANY]).unwrap();
        assert_eq!(j.make_durable().unwrap(), 2);
        assert_eq!(j.stats().points_restored, 1);

        // A second epoch: its points are restored over its own base, not the first's.
        j.new_epoch(vec![9; 8]);
        let data = tags_to_bytes(&[4]);
        j.take(&batch(&[write(3, 0, &[4], &data), flush(4)]))
            .unwrap();
        j.check_point(4, &[4, 9, 9, 9, 9, 9, 9, 9]).unwrap();
        // What the volume held at the offer, as the check keeps it, differs from what
        // the journal restores in one sector of the base and one written sector.
        j.offered_volumes.get_mut(&4).unwrap()[5] = 8;
        let e = j.make_durable().unwrap_err();
        assert_eq!(e.rule, "point-restore");
        assert!(e.detail.contains("sector 5 as the base's"), "{}", e.detail);
        j.take(&batch(&[flush(5)])).unwrap();
        j.check_point(5, &[4, 9, 9, 9, 9, 9, 9, 9]).unwrap();
        j.offered_volumes.get_mut(&5).unwrap()[0] = 3;
        let e = j.make_durable().unwrap_err();
        assert!(
            e.detail.contains("point 5") && e.detail.contains("sector 0"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn out_of_order_records_a_point_inside_an_epoch_and_unoffered_points_are_caught() {
        let mut j = JournalSink::new(CaptureMode::Async);
        j.new_epoch(vec![0; 4]);
        let data = tags_to_bytes(&[5]);
        let e = j.take(&batch(&[write(2, 0, &[5], &data)])).unwrap_err();
        assert_eq!(e.rule, "stream");
        let mut j = JournalSink::new(CaptureMode::Async);
        j.new_epoch(vec![0; 4]);
        j.take(&batch(&[flush(1), write(2, 0, &[5], &data)]))
            .unwrap();
        assert_eq!(
            j.check_point(1, &[5, 0, 0, 0]).unwrap_err().rule,
            "point-inside-epoch"
        );
        let mut j = JournalSink::new(CaptureMode::Async);
        j.new_epoch(vec![0; 4]);
        j.take(&batch(&[flush(1)])).unwrap();
        assert_eq!(j.make_durable().unwrap_err().rule, "listed-point");
    }

    #[test]
    fn a_lost_service_rolls_back_to_the_durable_head_and_sync_answers_need_durable_records() {
        let mut j = JournalSink::new(CaptureMode::Sync);
        j.new_epoch(vec![0; 4]);
        let data = tags_to_bytes(&[9]);
        j.take(&batch(&[write(1, 1, &[9], &data)])).unwrap();
        assert_eq!(j.check_answered(9).unwrap_err().rule, "sync-durable");
        j.lose_received().unwrap();
        j.take(&batch(&[write(1, 1, &[9], &data)])).unwrap();
        assert_eq!(j.make_durable().unwrap(), 1);
        j.check_answered(9).unwrap();
        j.check_durable(1).unwrap();
        assert_eq!(j.check_durable(0).unwrap_err().rule, "durable");
    }
}
