//! The simulated service's journal on disk: the backup server's own segment files
//! (`rehydrate_backup::journal`) in a temporary directory, so the rule that a torn
//! append is never applied is checked against the real writer and scanner.
//!
//! A service killed (or a machine losing power) while it appends leaves the append
//! torn: the records were written, one of them damaged, none acknowledged. The next
//! service opens the journal: the torn append must be gone and the head must be the
//! acknowledged sequence (`journal:torn-tail` otherwise). One journal holds every epoch
//! of a run (sequences continue across power losses); it is kept in one segment so the
//! damaged record is easy to place.

use std::path::Path;

use rehydrate_backup::journal::format::{RECORD_CHECKSUM_AT, RECORD_HEADER_BYTES};
use rehydrate_backup::journal::map::{PointMap, Source};
use rehydrate_backup::journal::writer::{JournalBase, JournalWriter};
use rehydrate_backup::journal::Journal;
use rehydrate_backup::name::VolumeName;
use rehydrate_driver::abi::CaptureRecord;
use rehydrate_service::protect::pump::journal_record;

/// A sector of a point restored from the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The epoch's base: no record up to the point wrote it.
    Base,
    /// The tag a write record left (first 8 bytes of the sector).
    Tag(u64),
    /// A zero record (a trim or write-zeroes) left it.
    Zero,
}

/// Segments never fill up in a simulated run.
const SEGMENT_MAX_BYTES: u64 = 1 << 40;

/// A journal in its own temporary directory.
pub struct DiskJournal {
    dir: tempfile::TempDir,
    base: JournalBase,
    writer: JournalWriter,
    /// Where the segment's bytes end after the last append.
    end: u64,
}

fn base(volume_size_bytes: u64) -> JournalBase {
    JournalBase {
        volume: VolumeName::new("sim").expect("a valid volume name"),
        version: 1,
        volume_size_bytes,
        index_checksum: [7; 32],
    }
}

fn segment_len(root: &Path, base: &JournalBase) -> u64 {
    let dir = rehydrate_backup::journal::journal_dir(root, &base.volume, base.version);
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| d.filter_map(Result::ok).map(|e| e.path()).max())
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

impl DiskJournal {
    /// An empty journal of a volume of `volume_size_bytes`.
    pub fn new(volume_size_bytes: u64) -> Result<DiskJournal, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("journal directory: {e}"))?;
        let base = base(volume_size_bytes);
        let (writer, _) = JournalWriter::open(dir.path(), base.clone(), SEGMENT_MAX_BYTES)
            .map_err(|e| format!("journal open: {e}"))?;
        Ok(DiskJournal {
            dir,
            base,
            writer,
            end: 0,
        })
    }

    /// The last durable sequence.
    pub fn head(&self) -> u64 {
        self.writer.head()
    }

    /// Appends `records` (one synced append).
    pub fn append(&mut self, records: &[CaptureRecord<'_>]) -> Result<u64, String> {
        let records: Vec<_> = records.iter().map(journal_record).collect();
        let head = self
            .writer
            .append(&records)
            .map_err(|e| format!("journal append: {e}"))?;
        self.end = segment_len(self.dir.path(), &self.base);
        Ok(head)
    }

    /// The service dies while appending `records`: they are written with the first
    /// one's checksum damaged. Then the next service opens the journal; returns its
    /// head as opened.
    pub fn tear_and_reopen(&mut self, records: &[CaptureRecord<'_>]) -> Result<u64, String> {
        if !records.is_empty() {
            let start = self.end;
            self.append(records)?;
            let dir = rehydrate_backup::journal::journal_dir(
                self.dir.path(),
                &self.base.volume,
                self.base.version,
            );
            let segment = std::fs::read_dir(&dir)
                .map_err(|e| format!("journal directory: {e}"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .max()
                .ok_or("no segment after an append")?;
            let mut bytes = std::fs::read(&segment).map_err(|e| format!("segment: {e}"))?;
            let at = start as usize + RECORD_CHECKSUM_AT;
            debug_assert!(at < start as usize + RECORD_HEADER_BYTES);
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 0x5a;
            }
            std::fs::write(&segment, &bytes).map_err(|e| format!("segment: {e}"))?;
        }
        // The writer warns when it truncates a torn append: here that is every loss.
        let opened =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::new(), || {
                JournalWriter::open(self.dir.path(), self.base.clone(), SEGMENT_MAX_BYTES)
            });
        let (writer, journal) = opened.map_err(|e| format!("journal reopen: {e}"))?;
        self.writer = writer;
        self.end = segment_len(self.dir.path(), &self.base);
        Ok(head_of(&journal))
    }
}

impl DiskJournal {
    /// The journal as a reader opens it from the segment files now.
    pub fn reader(&self) -> Result<Journal, String> {
        Journal::open(self.dir.path(), &self.base.volume, self.base.version)
            .map_err(|e| format!("journal open to restore points: {e}"))
    }

    /// Restores point `point` of `journal` (see [`DiskJournal::reader`]) the way `rehydrate serve` serves one: the journal opened
    /// from its segment files, the point's map built by the backup server's own
    /// [`PointMap`] from the records in `epoch` (the records of earlier epochs are over
    /// another base), and each of `sectors` read from where the map says.
    pub fn restore_point(
        journal: &Journal,
        epoch: std::ops::RangeInclusive<u64>,
        point: u64,
        sectors: u64,
    ) -> Result<Vec<Restored>, String> {
        if journal.point(point).is_none() || !epoch.contains(&point) {
            return Err(format!("the journal on disk does not list point {point}"));
        }
        let map = PointMap::build_from(journal, epoch);
        let files = journal.files();
        let sector_bytes = crate::journal::SECTOR_BYTES as u64;
        let mut out = Vec::with_capacity(sectors as usize);
        for (range, source) in map.lookup(0..sectors * sector_bytes) {
            let count = (range.end - range.start) / sector_bytes;
            for k in 0..count {
                out.push(match source {
                    None => Restored::Base,
                    Some(Source::Zero) => Restored::Zero,
                    Some(Source::Data { segment, at }) => {
                        let file = files
                            .get(segment as usize)
                            .ok_or_else(|| format!("point {point}: no segment {segment}"))?;
                        let mut tag = [0u8; 8];
                        rehydrate_nbd::PositionalIo::read_exact_at(
                            file.as_ref(),
                            &mut tag,
                            at + k * sector_bytes,
                        )
                        .map_err(|e| format!("point {point}: reading the journal: {e}"))?;
                        Restored::Tag(u64::from_le_bytes(tag))
                    }
                });
            }
        }
        Ok(out)
    }
}

fn head_of(journal: &Journal) -> u64 {
    journal.head()
}
