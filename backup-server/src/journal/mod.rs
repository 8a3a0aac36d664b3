//! The point-in-time journal (technique T3): every write to a protected volume since a
//! base version, so any recovery point between the base and now can be served.
//!
//! Layout in a local store (each segment's bytes in [`format`]):
//!
//! ```text
//! volumes/NAME/journal/BBBBBBBB/SSSSSSSSSSSSSSSSSSSS.seg   one segment of the journal of
//!                                                          NAME's base version B, whose
//!                                                          first record has sequence S
//!                                                          (8 and 20 decimal digits)
//! ```
//!
//! One writer (`rehydrate protect`) appends to the last segment: each append is a batch
//! of records written at once and synced before it is acknowledged, and a segment is
//! synced and never written again once the next one starts. Readers (`rehydrate serve`,
//! `rehydrate points`) scan the segments; a torn final append is not part of the journal
//! (the writer truncates it when it opens the journal), and a damaged record ends the
//! journal for readers with an error that names it (see [`scan`]).
//!
//! A *point* is a flush or mark record outside a gap. Point `P` of base `B` reads, for
//! each byte, the newest write or zero record with sequence at most `P` covering it,
//! else base version `B` ([`map::PointMap`]). Each point has a digest: a chain of
//! BLAKE3 over the base's identity and every record's header (with its CRC32C) up to
//! it, so a restore can pin exactly what it recovers.

pub mod export;
pub mod format;
pub mod map;
pub mod registry;
pub mod resolve;
pub mod scan;
pub mod writer;

#[cfg(any(test, feature = "mutants"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use format::{Kind, SegmentHeader, SEGMENT_HEADER_BYTES};
use scan::{Entry, Tail};

use crate::name::{VolumeName, VERSION_DIGITS};
use rehydrate_nbd::PositionalIo;

/// Digits of a segment's first sequence in its file name.
pub const SEQ_DIGITS: usize = 20;
/// Most segments one journal may have (a bound on the files a scan opens).
pub const SEGMENTS_MAX: usize = 1 << 20;

/// True when the mutant that applies a torn tail is selected (never without the
/// `mutants` feature).
pub(crate) fn mutant_torn_tail_applied() -> bool {
    #[cfg(feature = "mutants")]
    {
        rehydrate_driver::mutants::active(rehydrate_driver::mutants::Mutant::TornTailApplied)
    }
    #[cfg(not(feature = "mutants"))]
    {
        false
    }
}

/// Everything that can go wrong with a journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal lives in files appended in place: only a local store has it.
    #[error("the journal needs a local directory store, not {0}")]
    NeedsLocalStore(String),
    /// A file could not be read, written, synced or listed.
    #[error("journal file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A segment's header is unusable.
    #[error("journal segment {path} has a bad header: {source}")]
    Header {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        source: format::FormatError,
    },
    /// A segment belongs to another journal than its place says.
    #[error("journal segment {path} does not belong here: {reason}")]
    Misplaced {
        /// The segment.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A record that had been durable is damaged: the journal ends before it.
    #[error("journal of {volume}@{base} is damaged at sequence {seq} ({path}, byte {at}): {reason}; points before it are still served")]
    Damaged {
        /// The volume.
        volume: String,
        /// The base version.
        base: u32,
        /// The first sequence lost.
        seq: u64,
        /// The segment.
        path: PathBuf,
        /// Byte offset in it.
        at: u64,
        /// What is wrong.
        reason: String,
    },
    /// A point that cannot be served; the text says why.
    #[error("{0}")]
    Point(String),
    /// An append that does not continue the journal.
    #[error("records from sequence {found} do not continue the journal ending at {head}")]
    Discontinuous {
        /// The journal's last sequence.
        head: u64,
        /// The first sequence offered.
        found: u64,
    },
    /// An append of a record the format refuses.
    #[error("record {seq} cannot be journaled: {source}")]
    BadRecord {
        /// Its sequence.
        seq: u64,
        /// What is wrong.
        source: format::FormatError,
    },
    /// Too many segments to open.
    #[error("journal {0} has more segments than the {SEGMENTS_MAX} a scan opens")]
    TooManySegments(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `volumes/NAME/journal` under a local store's root.
pub fn volume_dir(root: &Path, volume: &VolumeName) -> PathBuf {
    root.join("volumes").join(volume.as_str()).join("journal")
}

/// The directory of the journal of `volume`'s base version `base`.
pub fn journal_dir(root: &Path, volume: &VolumeName, base: u32) -> PathBuf {
    volume_dir(root, volume).join(format!("{base:0width$}", width = VERSION_DIGITS))
}

/// A segment's file name.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:0width$}.seg", width = SEQ_DIGITS)
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == SEQ_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        .filter(|&s| s >= 1)
}

/// The base versions of `volume` that have a journal, ascending.
pub fn bases(root: &Path, volume: &VolumeName) -> Result<Vec<u32>, JournalError> {
    let dir = volume_dir(root, volume);
    let listing = match std::fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut out: Vec<u32> = listing
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.len() == VERSION_DIGITS && name.bytes().all(|b| b.is_ascii_digit()))
                .then(|| name.parse().ok())
                .flatten()
                .filter(|&v| v >= 1)
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// A recovery point.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PointInfo {
    /// Its sequence.
    pub seq: u64,
    /// Flush or mark.
    pub kind: Kind,
    /// When its flush completed, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// The mark's label.
    pub label: Option<String>,
    /// The chain digest up to it (what a restore pins).
    #[serde(skip)]
    pub digest: [u8; 32],
}

/// A gap: records from `begin` until `end` (exclusive of points) are not a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// Sequence of the gap-begin record.
    pub begin: u64,
    /// Sequence of the gap-end record, if the gap closed.
    pub end: Option<u64>,
}

/// Where a damaged journal ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The first sequence lost.
    pub seq: u64,
    /// The segment.
    pub path: PathBuf,
    /// Byte offset in it.
    pub at: u64,
    /// What is wrong.
    pub reason: String,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes scanned so far (header included): where the next scan starts.
    scanned: u64,
    file: Arc<File>,
}

/// One journal (a volume's base version), loaded: its records' places, its points and
/// gaps, and how it ends. [`Journal::refresh`] takes what was appended since.
#[derive(Debug)]
pub struct Journal {
    volume: VolumeName,
    base: u32,
    dir: PathBuf,
    header: Option<SegmentHeader>,
    segments: Vec<Segment>,
    entries: Vec<Entry>,
    /// Segment of each entry.
    entry_segment: Vec<u32>,
    points: Vec<PointInfo>,
    labels: HashMap<String, usize>,
    gaps: Vec<Gap>,
    chain: [u8; 32],
    damage: Option<Damage>,
    /// A torn final append: (segment index, byte offset).
    torn: Option<(usize, u64)>,
    /// A last segment whose header was never completely written.
    torn_segment: Option<PathBuf>,
}

impl Journal {
    /// Loads the journal of `volume`'s base version `base` from a local store rooted at
    /// `root` (an empty journal if it has no segment yet).
    pub fn open(root: &Path, volume: &VolumeName, base: u32) -> Result<Journal, JournalError> {
        let mut j = Journal {
            volume: volume.clone(),
            base,
            dir: journal_dir(root, volume, base),
            header: None,
            segments: Vec::new(),
            entries: Vec::new(),
            entry_segment: Vec::new(),
            points: Vec::new(),
            labels: HashMap::new(),
            gaps: Vec::new(),
            chain: [0; 32],
            damage: None,
            torn: None,
            torn_segment: None,
        };
        j.refresh()?;
        Ok(j)
    }

    /// The volume.
    pub fn volume(&self) -> &VolumeName {
        &self.volume
    }

    /// The base version.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// The first segment's header, once there is a segment.
    pub fn header(&self) -> Option<&SegmentHeader> {
        self.header.as_ref()
    }

    /// The last valid sequence (0: none).
    pub fn head(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.seq)
    }

    /// Every valid record's place, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The points, in order.
    pub fn points(&self) -> &[PointInfo] {
        &self.points
    }

    /// The gaps, in order.
    pub fn gaps(&self) -> &[Gap] {
        &self.gaps
    }

    /// Where the journal is damaged, if it is.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// True while the journal's last gap has not ended.
    pub fn in_gap(&self) -> bool {
        self.gaps.last().is_some_and(|g| g.end.is_none())
    }

    /// The torn final append, if the last scan found one: the segment and the byte
    /// offset where the valid records end (0: the segment's header itself is torn).
    pub fn torn_tail(&self) -> Option<(&Path, u64)> {
        if let Some(path) = &self.torn_segment {
            return Some((path.as_path(), 0));
        }
        self.torn
            .and_then(|(i, at)| self.segments.get(i).map(|s| (s.path.as_path(), at)))
    }

    /// The point named by its label.
    pub fn mark(&self, label: &str) -> Option<&PointInfo> {
        self.labels.get(label).and_then(|&i| self.points.get(i))
    }

    /// The point with sequence `seq`.
    pub fn point(&self, seq: u64) -> Option<&PointInfo> {
        self.points
            .binary_search_by_key(&seq, |p| p.seq)
            .ok()
            .map(|i| &self.points[i])
    }

    /// The open segment files, by segment index (for reading payloads).
    pub fn files(&self) -> Vec<Arc<File>> {
        self.segments.iter().map(|s| Arc::clone(&s.file)).collect()
    }

    /// Segment index of entry `i`.
    pub fn entry_segment(&self, i: usize) -> u32 {
        self.entry_segment.get(i).copied().unwrap_or(0)
    }

    /// The error for this journal's damage.
    pub fn damage_error(&self) -> Option<JournalError> {
        self.damage.as_ref().map(|d| JournalError::Damaged {
            volume: self.volume.to_string(),
            base: self.base,
            seq: d.seq,
            path: d.path.clone(),
            at: d.at,
            reason: d.reason.clone(),
        })
    }

    /// Takes what was appended since the last scan (new bytes and new segments). A
    /// damaged journal stays as it is: nothing after the damage is ever read.
    pub fn refresh(&mut self) -> Result<(), JournalError> {
        if self.damage.is_some() {
            return Ok(());
        }
        self.torn_segment = None;
        let names = self.segment_names()?;
        // A segment that was the last may have grown, and may now be sealed.
        let known = self.segments.len();
        if known > 0 {
            let last = known - 1;
            let sealed = names.len() > known;
            self.scan_segment(last, !sealed)?;
        }
        for (k, &first_seq) in names.iter().enumerate().skip(known) {
            if self.damage.is_some() || self.torn.is_some() {
                break;
            }
            if self.segments.len() >= SEGMENTS_MAX {
                return Err(JournalError::TooManySegments(self.dir.clone()));
            }
            let last = k + 1 == names.len();
            let path = self.dir.join(segment_name(first_seq));
            let expected = self.head() + 1;
            if first_seq != expected {
                self.damage = Some(Damage {
                    seq: expected,
                    path,
                    at: 0,
                    reason: format!("the segment starts at sequence {first_seq}, not {expected}"),
                });
                break;
            }
            let file = File::open(&path).map_err(io(&path))?;
            let mut head = [0u8; SEGMENT_HEADER_BYTES];
            let header = match file.read_exact_at(&mut head, 0) {
                Ok(()) => SegmentHeader::decode(&head),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Err(format::FormatError::Truncated { missing: 1 })
                }
                Err(e) => return Err(io(&path)(e)),
            };
            let header = match header {
                Ok(h) => h,
                Err(_) if last => {
                    // The writer died while starting this segment: a torn append.
                    self.torn_segment = Some(path);
                    break;
                }
                Err(source) => {
                    self.damage = Some(Damage {
                        seq: expected,
                        path,
                        at: 0,
                        reason: format!("bad segment header: {source}"),
                    });
                    break;
                }
            };
            self.check_header(&path, &header, first_seq)?;
            if self.header.is_none() {
                self.chain = chain_start(self.base, &header);
                self.header = Some(header);
            }
            self.segments.push(Segment {
                path,
                scanned: SEGMENT_HEADER_BYTES as u64,
                file: Arc::new(file),
            });
            let i = self.segments.len() - 1;
            self.scan_segment(i, last)?;
        }
        Ok(())
    }

    fn segment_names(&self) -> Result<Vec<u64>, JournalError> {
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut names: Vec<u64> = listing
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_segment_name(e.file_name().to_str()?))
            .collect();
        names.sort_unstable();
        Ok(names)
    }

    fn check_header(
        &self,
        path: &Path,
        h: &SegmentHeader,
        first_seq: u64,
    ) -> Result<(), JournalError> {
        let misplaced = |reason: String| JournalError::Misplaced {
            path: path.to_owned(),
            reason,
        };
        if h.base_version != self.base {
            return Err(misplaced(format!(
                "it continues base version {}, not {}",
                h.base_version, self.base
            )));
        }
        if h.first_seq != first_seq {
            return Err(misplaced(format!(
                "it starts at sequence {}, its name says {first_seq}",
                h.first_seq
            )));
        }
        if let Some(first) = &self.header {
            if first.volume_size_bytes != h.volume_size_bytes
                || first.base_index_checksum != h.base_index_checksum
            {
                return Err(misplaced(
                    "its base differs from the first segment's".into(),
                ));
            }
        }
        Ok(())
    }

    /// Scans segment `i` from where its last scan stopped.
    fn scan_segment(&mut self, i: usize, last: bool) -> Result<(), JournalError> {
        let Some(header) = self.header else {
            return Ok(());
        };
        let seg = &self.segments[i];
        let len = seg.file.metadata().map_err(io(&seg.path))?.len();
        let start = seg.scanned;
        if len < start {
            // Only torn bytes past the valid records are ever truncated.
            return Err(io(&seg.path)(std::io::Error::other(
                "the segment shrank below its valid records",
            )));
        }
        if len == start {
            self.torn = None;
            return Ok(());
        }
        let mut bytes = vec![0u8; (len - start) as usize];
        seg.file
            .read_exact_at(&mut bytes, start)
            .map_err(io(&seg.path))?;
        let scanned = scan::scan(
            &bytes,
            start,
            self.head() + 1,
            header.volume_size_bytes,
            last,
        );
        let path = seg.path.clone();
        for e in scanned.entries {
            self.take_entry(e, i as u32);
        }
        self.segments[i].scanned = scanned.end;
        match scanned.tail {
            Tail::Clean => self.torn = None,
            Tail::Torn { at } => self.torn = Some((i, at)),
            Tail::Damaged { at, seq, reason } => {
                self.torn = None;
                self.damage = Some(Damage {
                    seq,
                    path,
                    at,
                    reason,
                });
            }
        }
        Ok(())
    }

    fn take_entry(&mut self, e: Entry, segment: u32) {
        debug_assert_eq!(e.seq, self.head() + 1);
        let mut h = blake3::Hasher::new();
        h.update(&self.chain);
        h.update(&e.header);
        self.chain = *h.finalize().as_bytes();
        match e.kind {
            // A gap begun while one is open (a restart inside a gap) continues it.
            Kind::GapBegin if !self.in_gap() => self.gaps.push(Gap {
                begin: e.seq,
                end: None,
            }),
            Kind::GapEnd => {
                if let Some(g) = self.gaps.last_mut().filter(|g| g.end.is_none()) {
                    g.end = Some(e.seq);
                }
            }
            kind if kind.is_point() && !self.in_gap() => {
                if let Some(label) = &e.label {
                    self.labels.insert(label.clone(), self.points.len());
                }
                self.points.push(PointInfo {
                    seq: e.seq,
                    kind,
                    time_unix_ns: e.time_unix_ns,
                    label: e.label.clone(),
                    digest: self.chain,
                });
            }
            _ => {}
        }
        self.entries.push(e);
        self.entry_segment.push(segment);
    }
}

/// The chain digest before any record: the base's identity.
fn chain_start(base: u32, h: &SegmentHeader) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rehydrate journal v1\0");
    hasher.update(&u64::from(base).to_le_bytes());
    hasher.update(&h.volume_size_bytes.to_le_bytes());
    hasher.update(&h.base_index_checksum);
    *hasher.finalize().as_bytes()
}
