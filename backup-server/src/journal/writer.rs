//! The journal's one writer: opens a journal (truncating a torn final append, refusing a
//! damaged one), appends batches of records, each synced before it counts, and starts a
//! new segment when the current one is full.
//!
//! Durability order: an append is written at the segment's end and `fdatasync`ed; only
//! then is its last sequence the durable head. A new segment's header is written and
//! synced, then its directory entry is synced, before any record goes into it; the
//! previous segment was synced by its last append. So after any crash the journal is a
//! prefix of what was appended, plus at most one torn append at its very end.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};

use rehydrate_nbd::positional::write_all_vectored_at;
use rehydrate_nbd::PositionalIo;

use super::format::{padding, Record, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::{io, journal_dir, segment_name, Journal, JournalError};
use crate::name::VolumeName;

/// Payloads at least this long are written in place rather than copied.
const VECTOR_MIN_BYTES: usize = 4096;

/// A piece of an append: encoded bytes, or the payload of the `i`-th record.
enum Part {
    Buf(Range<usize>),
    Payload(usize),
}

/// Default size at which a segment is sealed and the next one started.
pub const SEGMENT_MAX_BYTES_DEFAULT: u64 = 64 << 20;

/// What a journal is of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalBase {
    /// The volume.
    pub volume: VolumeName,
    /// The base version.
    pub version: u32,
    /// Its size in bytes.
    pub volume_size_bytes: u64,
    /// Its index checksum.
    pub index_checksum: [u8; 32],
}

/// Appends to one journal.
#[derive(Debug)]
pub struct JournalWriter {
    root: PathBuf,
    base: JournalBase,
    dir: PathBuf,
    /// The segment being appended to and where its bytes end.
    current: Option<(File, PathBuf, u64)>,
    head: u64,
    segment_max_bytes: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

impl JournalWriter {
    /// Opens the journal of `base` in the local store at `root` for appending: a torn
    /// final append is truncated (and synced), a damaged journal is refused. Returns the
    /// writer and the journal as it now stands.
    pub fn open(
        root: &Path,
        base: JournalBase,
        segment_max_bytes: u64,
    ) -> Result<(JournalWriter, Journal), JournalError> {
        let mut journal = Journal::open(root, &base.volume, base.version)?;
        if let Some(e) = journal.damage_error() {
            return Err(e);
        }
        if let Some(h) = journal.header() {
            if h.volume_size_bytes != base.volume_size_bytes
                || h.base_index_checksum != base.index_checksum
            {
                return Err(JournalError::Misplaced {
                    path: journal_dir(root, &base.volume, base.version),
                    reason:
                        "the journal was written for another base (size or index checksum differs)"
                            .into(),
                });
            }
        }
        if let Some((path, at)) = journal.torn_tail() {
            let path = path.to_owned();
            tracing::warn!(path = %path.display(), at, "journal: truncating a torn final append");
            if at == 0 {
                std::fs::remove_file(&path).map_err(io(&path))?;
            } else {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(at).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            journal.refresh()?;
            debug_assert!(journal.torn_tail().is_none());
        }
        let dir = journal_dir(root, &base.volume, base.version);
        let head = journal.head();
        let current = match journal.last_segment() {
            Some((path, end)) => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io(path))?;
                Some((f, path.to_owned(), end))
            }
            None => None,
        };
        Ok((
            JournalWriter {
                root: root.to_owned(),
                base,
                dir,
                current,
                head,
                segment_max_bytes: segment_max_bytes.max(SEGMENT_HEADER_BYTES as u64 + 1),
                buf: Vec::new(),
            },
            journal,
        ))
    }

    /// The last durable sequence.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the journal is of.
    pub fn base(&self) -> &JournalBase {
        &self.base
    }

    /// Appends `records` (checked; those at or below the head are skipped, so a batch
    /// sent again after a restart is harmless; the rest must continue the head) as one
    /// append, synced. Returns the new durable head.
    pub fn append(&mut self, records: &[Record<'_>]) -> Result<u64, JournalError> {
        let fresh: Vec<&Record<'_>> = records.iter().filter(|r| r.seq > self.head).collect();
        let Some(first) = fresh.first() else {
            return Ok(self.head);
        };
        let batch_seq = first.seq;
        // Headers (and small payloads) are encoded into one buffer; large payloads are
        // written from where they are, in the same vectored write.
        self.buf.clear();
        let mut parts: Vec<Part> = Vec::with_capacity(2 * fresh.len());
        let mut seq = self.head;
        for (i, r) in fresh.iter().enumerate() {
            if r.seq != seq + 1 {
                return Err(JournalError::Discontinuous {
                    head: seq,
                    found: r.seq,
                });
            }
            let r = Record { batch_seq, ..**r };
            r.check(self.base.volume_size_bytes)
                .map_err(|source| JournalError::BadRecord { seq: r.seq, source })?;
            let start = self.buf.len();
            if r.payload.len() >= VECTOR_MIN_BYTES && padding(r.payload.len()) == 0 {
                r.encode_header_into(&mut self.buf);
                parts.push(Part::Buf(start..self.buf.len()));
                parts.push(Part::Payload(i));
            } else {
                r.encode_into(&mut self.buf);
                parts.push(Part::Buf(start..self.buf.len()));
            }
            seq = r.seq;
        }
        let needs_segment = match &self.current {
            None => true,
            Some((_, _, end)) => *end >= self.segment_max_bytes,
        };
        if needs_segment {
            self.start_segment(batch_seq)?;
        }
        let Some((file, path, end)) = &mut self.current else {
            return Err(io(&self.dir)(std::io::Error::other(
                "no segment to append to",
            )));
        };
        let pieces: Vec<&[u8]> = parts
            .iter()
            .map(|p| match p {
                Part::Buf(r) => &self.buf[r.clone()],
                Part::Payload(i) => fresh[*i].payload,
            })
            .collect();
        let total: u64 = pieces.iter().map(|s| s.len() as u64).sum();
        write_all_vectored_at(file, *end, &pieces).map_err(io(path))?;
        file.sync_data().map_err(io(path))?;
        *end += total;
        self.head = seq;
        Ok(seq)
    }

    /// Starts the segment whose first record is `first_seq`: header written and synced,
    /// then the directory entry.
    fn start_segment(&mut self, first_seq: u64) -> Result<(), JournalError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(segment_name(first_seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        let header = SegmentHeader {
            base_version: self.base.version,
            first_seq,
            volume_size_bytes: self.base.volume_size_bytes,
            base_index_checksum: self.base.index_checksum,
        };
        file.write_all_at(&header.encode(), 0).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        // The new entry, and the directories a first segment created.
        let mut dir = self.dir.clone();
        loop {
            sync_dir(&dir)?;
            if !dir.pop() || !dir.starts_with(&self.root) || dir == self.root {
                break;
            }
        }
        self.current = Some((file, path, SEGMENT_HEADER_BYTES as u64));
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    crate::os::sync_dir(dir).map_err(io(dir))
}

impl Journal {
    /// The last segment and where its valid records end.
    pub(crate) fn last_segment(&self) -> Option<(&Path, u64)> {
        self.segments.last().map(|s| (s.path.as_path(), s.scanned))
    }
}
