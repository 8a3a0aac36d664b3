//! Torn-tail and damage cases against a plain reference, for the journal's property
//! tests and its mutant test: a journal is written in appends from a seed, its last
//! append is torn (cut short, zeroed from some byte on, or one byte flipped) or an
//! earlier record is damaged, and the journal as opened must hold exactly the records
//! that survived intact, serve every point it lists with the contents a plain replay
//! gives, truncate the torn bytes when the writer opens it, and continue from there.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::format::{Kind, Record};
use super::map::{PointMap, Source};
use super::writer::{JournalBase, JournalWriter};
use super::{Journal, JournalError};
use crate::name::VolumeName;
use rehydrate_nbd::PositionalIo;

/// Sectors of the test volume.
const SECTORS: u64 = 128;
const VOLUME_BYTES: u64 = SECTORS * 512;

/// What a case did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaseReport {
    /// Records written.
    pub written: u64,
    /// Records the opened journal holds.
    pub kept: u64,
    /// Points checked against the reference.
    pub points_checked: u64,
    /// The tear cut a record of the last append.
    pub torn: bool,
}

/// A record as the reference keeps it.
#[derive(Clone, Debug)]
struct Owned {
    seq: u64,
    kind: Kind,
    offset: u64,
    len: u64,
    payload: Vec<u8>,
}

impl Owned {
    fn record(&self) -> Record<'_> {
        Record {
            seq: self.seq,
            kind: self.kind,
            flags: 0,
            offset: self.offset,
            len: self.len,
            time_unix_ns: self.seq * 1_000,
            batch_seq: 1,
            payload: &self.payload,
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

fn base() -> JournalBase {
    JournalBase {
        volume: VolumeName::new("vol").unwrap_or_else(|_| unreachable!()),
        version: 1,
        volume_size_bytes: VOLUME_BYTES,
        index_checksum: [1; 32],
    }
}

fn batches(rng: &mut Rng, first_seq: u64, count: u64) -> Vec<Vec<Owned>> {
    let mut seq = first_seq;
    (0..count)
        .map(|_| {
            (0..1 + rng.next(5))
                .map(|_| {
                    let r = match rng.next(10) {
                        0..=4 => {
                            let sector = rng.next(SECTORS);
                            let sectors = 1 + rng.next((SECTORS - sector).min(8));
                            let fill = 1 + rng.next(255) as u8;
                            Owned {
                                seq,
                                kind: Kind::Write,
                                offset: sector * 512,
                                len: sectors * 512,
                                payload: vec![fill; (sectors * 512) as usize],
                            }
                        }
                        5 => {
                            let sector = rng.next(SECTORS);
                            Owned {
                                seq,
                                kind: Kind::Zero,
                                offset: sector * 512,
                                len: (1 + rng.next(SECTORS - sector)) * 512,
                                payload: Vec::new(),
                            }
                        }
                        6 => Owned {
                            seq,
                            kind: Kind::Mark,
                            offset: 0,
                            len: 0,
                            payload: format!("m{seq}").into_bytes(),
                        },
                        _ => Owned {
                            seq,
                            kind: Kind::Flush,
                            offset: 0,
                            len: 0,
                            payload: Vec::new(),
                        },
                    };
                    seq += 1;
                    r
                })
                .collect()
        })
        .collect()
}

fn append(w: &mut JournalWriter, batch: &[Owned]) -> Result<u64, String> {
    let records: Vec<Record<'_>> = batch.iter().map(Owned::record).collect();
    w.append(&records).map_err(|e| format!("append: {e}"))
}

/// The volume the reference records give at `seq`.
fn replay(records: &[Owned], seq: u64) -> Vec<u8> {
    let mut v = vec![0u8; VOLUME_BYTES as usize];
    for r in records.iter().filter(|r| r.seq <= seq) {
        let range = r.offset as usize..(r.offset + r.len) as usize;
        match r.kind {
            Kind::Write => v[range].copy_from_slice(&r.payload),
            Kind::Zero => v[range].fill(0),
            _ => {}
        }
    }
    v
}

/// The volume point `seq` of `journal` serves (journal records over a zero base).
fn served(journal: &Journal, seq: u64) -> Result<Vec<u8>, String> {
    let map = PointMap::build(journal, seq);
    let files = journal.files();
    let mut v = vec![0u8; VOLUME_BYTES as usize];
    for (range, source) in map.lookup(0..VOLUME_BYTES) {
        let part = &mut v[range.start as usize..range.end as usize];
        match source {
            None | Some(Source::Zero) => part.fill(0),
            Some(Source::Data { segment, at }) => files
                .get(segment as usize)
                .ok_or("no such segment")?
                .read_exact_at(part, at)
                .map_err(|e| e.to_string())?,
        }
    }
    Ok(v)
}

/// Every point the journal lists must be a point of the reference, served as the
/// reference replays it.
fn check_points(journal: &Journal, reference: &[Owned]) -> Result<u64, String> {
    let mut checked = 0;
    for p in journal.points() {
        let known = reference
            .iter()
            .any(|r| r.seq == p.seq && r.kind.is_point());
        if !known {
            return Err(format!(
                "the journal lists point {} the reference lacks",
                p.seq
            ));
        }
        if served(journal, p.seq)? != replay(reference, p.seq) {
            return Err(format!("point {} is not served as written", p.seq));
        }
        checked += 1;
    }
    Ok(checked)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|l| l.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Writes a journal from `seed` under `root`, tears its last append, and checks the
/// journal as opened, then as the writer leaves it, then after one more append.
pub fn torn_tail_case(root: &Path, seed: u64) -> Result<CaseReport, String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let segment_max = if rng.next(2) == 0 { 2048 } else { 1 << 20 };
    let count = 2 + rng.next(5);
    let all = batches(&mut rng, 1, count);
    let (mut w, _) =
        JournalWriter::open(root, base(), segment_max).map_err(|e| format!("open: {e}"))?;
    let dir = super::journal_dir(root, &base().volume, 1);
    let last_batch = all.len() - 1;
    for b in &all[..last_batch] {
        append(&mut w, b)?;
    }
    // Where the last append lands: the end of the last segment, or a new segment.
    let before: Vec<(PathBuf, u64)> = segment_files(&dir)
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        })
        .collect();
    append(&mut w, &all[last_batch])?;
    drop(w);
    let files = segment_files(&dir);
    let last = files.last().ok_or("no segment")?.clone();
    let start = before
        .iter()
        .find(|(p, _)| *p == last)
        .map_or(super::format::SEGMENT_HEADER_BYTES as u64, |(_, len)| *len);
    let original = std::fs::read(&last).map_err(|e| e.to_string())?;
    let end = original.len() as u64;
    let pos = start + rng.next(end - start);
    let mut torn = original.clone();
    match rng.next(3) {
        0 => torn.truncate(pos as usize),
        1 => torn[pos as usize..].fill(0),
        _ => torn[pos as usize] ^= 1 << rng.next(8),
    }
    std::fs::write(&last, &torn).map_err(|e| e.to_string())?;

    // The reference: every earlier append, and the records of the last one before the
    // first record the tear changed.
    let mut reference: Vec<Owned> = all[..last_batch].concat();
    let mut at = start;
    let mut cut = false;
    for r in &all[last_batch] {
        let len = r.record().encoded_len() as u64;
        // A shorter file reads as missing bytes, which the padding of a zeroed tail
        // does not hide; but zeroed padding alone leaves a record intact.
        let intact = if (torn.len() as u64) < at + len {
            false
        } else {
            original[at as usize..(at + len) as usize] == torn[at as usize..(at + len) as usize]
        };
        if !intact || cut {
            cut = true;
            at += len;
            continue;
        }
        reference.push(r.clone());
        at += len;
    }

    let journal = Journal::open(root, &base().volume, 1).map_err(|e| format!("open: {e}"))?;
    if let Some(d) = journal.damage() {
        return Err(format!("a torn tail was taken for damage: {d:?}"));
    }
    let kept: Vec<u64> = journal.entries().iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = reference.iter().map(|r| r.seq).collect();
    if kept != expected {
        return Err(format!(
            "after the tear the journal holds {kept:?}, the reference {expected:?}"
        ));
    }
    let mut points_checked = check_points(&journal, &reference)?;

    // The writer truncates the torn bytes and continues from the head.
    let (mut w, reopened) =
        JournalWriter::open(root, base(), segment_max).map_err(|e| format!("reopen: {e}"))?;
    if reopened.torn_tail().is_some() || w.head() != expected.last().copied().unwrap_or(0) {
        return Err(format!(
            "the writer reopened at head {} with a torn tail",
            w.head()
        ));
    }
    let more = batches(&mut rng, w.head() + 1, 1);
    append(&mut w, &more[0])?;
    drop(w);
    reference.extend(more[0].iter().cloned());
    let journal = Journal::open(root, &base().volume, 1).map_err(|e| format!("open: {e}"))?;
    let kept: Vec<u64> = journal.entries().iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = reference.iter().map(|r| r.seq).collect();
    if kept != expected || journal.torn_tail().is_some() || journal.damage().is_some() {
        return Err(format!(
            "after appending again the journal holds {kept:?}, the reference {expected:?}"
        ));
    }
    points_checked += check_points(&journal, &reference)?;
    Ok(CaseReport {
        written: all.iter().map(|b| b.len() as u64).sum(),
        kept: kept.len() as u64,
        points_checked,
        torn: cut,
    })
}

/// Writes a journal from `seed`, damages one byte of a record of an earlier append,
/// and checks the journal ends just before it, with every point before still served
/// and the writer refusing to continue.
pub fn damage_case(root: &Path, seed: u64) -> Result<u64, String> {
    let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    let count = 3 + rng.next(4);
    let all = batches(&mut rng, 1, count);
    let (mut w, _) = JournalWriter::open(root, base(), 1 << 20).map_err(|e| e.to_string())?;
    for b in &all {
        append(&mut w, b)?;
    }
    drop(w);
    let dir = super::journal_dir(root, &base().volume, 1);
    let seg = segment_files(&dir).pop().ok_or("no segment")?;
    // A record of any append but the last.
    let victims: u64 = all[..all.len() - 1].iter().map(|b| b.len() as u64).sum();
    let victim = rng.next(victims);
    let flat: Vec<Owned> = all.concat();
    let at: u64 = super::format::SEGMENT_HEADER_BYTES as u64
        + flat[..victim as usize]
            .iter()
            .map(|r| r.record().encoded_len() as u64)
            .sum::<u64>();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    let target = at + 4 + rng.next(52);
    f.read_exact_at(&mut byte, target)
        .map_err(|e| e.to_string())?;
    f.write_all_at(&[byte[0] ^ 0x40], target)
        .map_err(|e| e.to_string())?;
    drop(f);
    let journal = Journal::open(root, &base().volume, 1).map_err(|e| e.to_string())?;
    let seq = victim + 1;
    match journal.damage() {
        Some(d) if d.seq == seq => {}
        other => return Err(format!("damage at seq {seq} reported as {other:?}")),
    }
    if journal.head() != seq - 1 {
        return Err(format!(
            "damaged journal head {} is not {}",
            journal.head(),
            seq - 1
        ));
    }
    let reference = &flat[..victim as usize];
    let checked = check_points(&journal, reference)?;
    match JournalWriter::open(root, base(), 1 << 20) {
        Err(JournalError::Damaged { seq: s, .. }) if s == seq => Ok(checked),
        other => Err(format!(
            "the writer opened a damaged journal: {:?}",
            other.err()
        )),
    }
}
