//! The map of regions changed since the last backup (changed-block tracking, as
//! VMware's CBT): the decisions, sans-IO. The bits live in a named map of the restore's
//! metadata ([`crate::meta::maps`], name [`CHANGED_MAP`]), committed with the restore
//! map; this module says what marks it, when it can be trusted, and how a backup
//! consumes it. The Linux restore (and, later, the Windows filter once the restore is
//! complete) calls it; the backup reads it.
//!
//! # What marks it
//!
//! Every client write, write-zeroes and trim, from the moment it is taken, over every
//! region it touches (a partly covered region counts: a region is the unit a backup
//! reads). A write that fails may have changed some of its sectors, so it counts too.
//! Restore data (hydrates) never marks it: it brings back the backup's own bytes.
//!
//! # When it is trusted
//!
//! The map is exact only if every write to the volume went through the tracker and
//! every mark reached the metadata. Both are decided from the map's record:
//!
//! * a **session** ([`begin_session`]) commits the state *open* before the first write
//!   is taken; a clean stop ([`end_session`]) commits *clean* only after the last data
//!   flush, in a commit that writes the map's pages before the record (the metadata's
//!   strict two-phase commit). A crash leaves *open*: marks may have been lost, so the
//!   map is not trusted ([`Distrust::NotStoppedCleanly`]);
//! * the clean stop records a **stamp** of the target (on Linux its modification time
//!   and size): a different stamp at backup time means the volume was written without
//!   the tracker ([`Distrust::WrittenOutside`]). A target that cannot be stamped (a
//!   block device) is trusted on the session alone;
//! * the map counts changes from a **base**, the backup version the volume last equalled
//!   (the version restored, then each backup taken with the map); none known, or a base
//!   the store no longer holds as recorded, means a full read.
//!
//! # How a backup consumes it, crash-safely
//!
//! The backup reads only the chunks the map touches against the base version, publishes
//! the new version, and only then resets the map ([`after_backup`]: empty, base = the
//! new version). A crash between the two leaves the map and its old base: the next
//! backup reads the changes since the old base, a superset of those since the new one,
//! and is still exact. Nothing is ever trusted that could have missed a change.
//!
//! # Record layout (the map's 112-byte record in the metadata header), little-endian
//!
//! ```text
//! offset size  field
//!      0    1  record_version   u8 = 1
//!      1    1  state            0 = never tracked, 1 = open (a session writes), 2 = clean
//!      2    1  base_known       0 = no base (a full read first), 1 = base below
//!      3    5  reserved         zero
//!      8    8  base_version     u64, the backup version the changes count from
//!     16   32  base_digest      that version's index checksum
//!     48   16  stamp            the target's stamp at the clean stop (Linux: mtime in
//!                               ns i64, size u64); all zero: none
//!     64   48  reserved         zero
//! ```

use alloc::sync::Arc;
use core::ops::Range;

use crate::geometry::Geometry;
use crate::meta::{MapName, NamedMap, MAP_RECORD_BYTES};

/// The changed map's name in the metadata.
pub const CHANGED_MAP: MapName = match MapName::new("changed") {
    Some(name) => name,
    None => panic!("a valid map name"),
};

/// The record layout's version.
pub const RECORD_VERSION: u8 = 1;
/// Bytes of a target stamp.
pub const STAMP_BYTES: usize = 16;

const R_VERSION: usize = 0;
const R_STATE: usize = 1;
const R_BASE_KNOWN: usize = 2;
const R_BASE_VERSION: usize = 8;
const R_BASE_DIGEST: usize = 16;
const R_STAMP: usize = 48;
const R_END: usize = 64;
const _: () = assert!(R_BASE_VERSION % 8 == 0 && R_BASE_VERSION + 8 == R_BASE_DIGEST);
const _: () = assert!(R_BASE_DIGEST + 32 == R_STAMP);
const _: () = assert!(R_STAMP + STAMP_BYTES == R_END);
const _: () = assert!(R_END <= MAP_RECORD_BYTES);

/// Where a tracking session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Nothing was ever tracked (a fresh record).
    Never = 0,
    /// A session takes writes (or crashed while it did).
    Open = 1,
    /// The last session stopped cleanly: every write it took is in the map.
    Clean = 2,
}

/// The backup version the changes count from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Base {
    /// Its version number.
    pub version: u64,
    /// Its index checksum (names its contents exactly).
    pub digest: [u8; 32],
}

/// A stamp of the target that changes when anything writes it (Linux: modification
/// time and size); all zero when the target cannot be stamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stamp(pub [u8; STAMP_BYTES]);

impl Stamp {
    /// No stamp.
    pub const NONE: Stamp = Stamp([0; STAMP_BYTES]);

    /// A stamp from a modification time (ns since the epoch) and a size.
    pub fn of(modified_ns: i64, size_bytes: u64) -> Stamp {
        let mut out = [0u8; STAMP_BYTES];
        out[..8].copy_from_slice(&modified_ns.to_le_bytes());
        out[8..].copy_from_slice(&size_bytes.to_le_bytes());
        Stamp(out)
    }
}

/// The changed map's record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The session's state.
    pub state: State,
    /// Changes count from this version.
    pub base: Option<Base>,
    /// The target's stamp at the last clean stop (or backup).
    pub stamp: Stamp,
}

/// Why a record cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A record layout this build does not know.
    #[error("changed-map record version {0}")]
    Version(u8),
    /// A state byte that names no state.
    #[error("changed-map state {0}")]
    State(u8),
    /// A field that must be 0 or 1, or zero, is not.
    #[error("changed-map record field at byte {0} is malformed")]
    Malformed(usize),
}

impl Record {
    /// A fresh record: nothing tracked, changes counted from `base`.
    pub fn new(base: Option<Base>) -> Record {
        Record {
            state: State::Never,
            base,
            stamp: Stamp::NONE,
        }
    }

    /// The record's bytes.
    pub fn encode(&self) -> [u8; MAP_RECORD_BYTES] {
        let mut out = [0u8; MAP_RECORD_BYTES];
        out[R_VERSION] = RECORD_VERSION;
        out[R_STATE] = self.state as u8;
        if let Some(base) = &self.base {
            out[R_BASE_KNOWN] = 1;
            out[R_BASE_VERSION..R_BASE_DIGEST].copy_from_slice(&base.version.to_le_bytes());
            out[R_BASE_DIGEST..R_STAMP].copy_from_slice(&base.digest);
        }
        out[R_STAMP..R_END].copy_from_slice(&self.stamp.0);
        debug_assert_eq!(Record::decode(&out), Ok(*self));
        out
    }

    /// Decodes a record; an all-zero one (a map never given a record) is a fresh one.
    pub fn decode(bytes: &[u8; MAP_RECORD_BYTES]) -> Result<Record, RecordError> {
        if bytes.iter().all(|&b| b == 0) {
            return Ok(Record::new(None));
        }
        if bytes[R_VERSION] != RECORD_VERSION {
            return Err(RecordError::Version(bytes[R_VERSION]));
        }
        let state = match bytes[R_STATE] {
            0 => State::Never,
            1 => State::Open,
            2 => State::Clean,
            other => return Err(RecordError::State(other)),
        };
        let zero = |range: Range<usize>| bytes[range.clone()].iter().all(|&b| b == 0);
        if !zero(3..R_BASE_VERSION) {
            return Err(RecordError::Malformed(3));
        }
        if !zero(R_END..MAP_RECORD_BYTES) {
            return Err(RecordError::Malformed(R_END));
        }
        let base = match bytes[R_BASE_KNOWN] {
            0 if zero(R_BASE_VERSION..R_STAMP) => None,
            1 => {
                let mut version = [0u8; 8];
                version.copy_from_slice(&bytes[R_BASE_VERSION..R_BASE_DIGEST]);
                let mut digest = [0u8; 32];
                digest.copy_from_slice(&bytes[R_BASE_DIGEST..R_STAMP]);
                Some(Base {
                    version: u64::from_le_bytes(version),
                    digest,
                })
            }
            _ => return Err(RecordError::Malformed(R_BASE_KNOWN)),
        };
        let mut stamp = [0u8; STAMP_BYTES];
        stamp.copy_from_slice(&bytes[R_STAMP..R_END]);
        Ok(Record {
            state,
            base,
            stamp: Stamp(stamp),
        })
    }
}

/// The regions a write of `[offset, offset + len)` dirties: every region it touches,
/// at any byte alignment, clipped to the volume.
pub fn dirtied_by_write(geometry: &Geometry, offset: u64, len: u64) -> Range<u64> {
    let end = offset.saturating_add(len).min(geometry.volume_size_bytes());
    if offset >= end {
        return 0..0;
    }
    geometry.region_of(offset)..geometry.region_of(end - 1) + 1
}

/// Marks the changed map as writes are taken: from any thread, lock-free; a region
/// already marked costs one load.
#[derive(Clone, Debug)]
pub struct Tracker {
    map: Arc<NamedMap>,
}

impl Tracker {
    /// A tracker marking `map`.
    pub fn new(map: Arc<NamedMap>) -> Tracker {
        Tracker { map }
    }

    /// A write (or write-zeroes, or trim) of `[offset, offset + len)` was taken: called
    /// before it can complete, so every completed write is counted, and a failed one
    /// too (it may have changed some sectors).
    pub fn on_write(&self, offset: u64, len: u64) {
        self.map
            .mark(dirtied_by_write(self.map.geometry(), offset, len));
    }

    /// The map it marks.
    pub fn map(&self) -> &Arc<NamedMap> {
        &self.map
    }
}

/// The record a session commits before it takes its first write.
pub fn begin_session(record: &Record) -> Record {
    Record {
        state: State::Open,
        ..*record
    }
}

/// The record a session commits at a clean stop, after its last data flush.
pub fn end_session(record: &Record, stamp: Stamp) -> Record {
    Record {
        state: State::Clean,
        stamp,
        ..*record
    }
}

/// The record committed with the map's reset once a backup published version `base`;
/// `stamp` is the target's stamp taken before the backup read it (a write during the
/// read then shows as a write without the tracker next time).
pub fn after_backup(base: Base, stamp: Stamp) -> Record {
    Record {
        state: State::Clean,
        base: Some(base),
        stamp,
    }
}

/// Why the map cannot be trusted; each reason means a full read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Distrust {
    /// The metadata has no changed map (made before it existed, or by another tool).
    #[error("the metadata has no map of changes")]
    NoMap,
    /// The record is malformed.
    #[error("the map's record is malformed ({0})")]
    BadRecord(RecordError),
    /// A page of the map was lost to damage.
    #[error("part of the map was damaged")]
    Damaged,
    /// Nothing was ever tracked with it.
    #[error("no write was ever tracked with it")]
    NeverTracked,
    /// The last session did not stop cleanly: marks may have been lost in a crash.
    #[error(
        "the last restore or live export did not stop cleanly, so a crash may have lost changes"
    )]
    NotStoppedCleanly,
    /// The target changed since the clean stop without the tracker seeing it.
    #[error("the volume was written without the live export since it stopped")]
    WrittenOutside,
    /// No backup version is known to equal the volume before the changes.
    #[error("no backup version is known to hold the volume before these changes")]
    NoBase,
}

/// Whether a changed map can be used, given its record (`None`: no changed map), whether
/// it loaded intact, and the target's stamp now. `Ok(base)`: read only what the map
/// marks, against `base` (the caller still checks the store holds `base` as recorded).
pub fn trust(
    record: Option<&[u8; MAP_RECORD_BYTES]>,
    intact: bool,
    stamp_now: Stamp,
) -> Result<Base, Distrust> {
    let record = record.ok_or(Distrust::NoMap)?;
    let record = Record::decode(record).map_err(Distrust::BadRecord)?;
    if !intact {
        return Err(Distrust::Damaged);
    }
    match record.state {
        State::Never => return Err(Distrust::NeverTracked),
        State::Open => return Err(Distrust::NotStoppedCleanly),
        State::Clean => {}
    }
    if record.stamp != Stamp::NONE && record.stamp != stamp_now {
        return Err(Distrust::WrittenOutside);
    }
    record.base.ok_or(Distrust::NoBase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Base {
        Base {
            version: 7,
            digest: [0xD1; 32],
        }
    }

    #[test]
    fn records_round_trip_and_damage_is_typed() {
        let r = end_session(&begin_session(&Record::new(Some(base()))), Stamp::of(-5, 9));
        let bytes = r.encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[1], 2);
        assert_eq!(bytes[8], 7);
        assert_eq!(Record::decode(&bytes), Ok(r));
        assert_eq!(
            Record::decode(&[0; MAP_RECORD_BYTES]),
            Ok(Record::new(None))
        );
        for (at, value, want) in [
            (0, 9, RecordError::Version(9)),
            (1, 3, RecordError::State(3)),
            (2, 2, RecordError::Malformed(2)),
            (5, 1, RecordError::Malformed(3)),
            (100, 1, RecordError::Malformed(64)),
        ] {
            let mut bad = bytes;
            bad[at] = value;
            assert_eq!(Record::decode(&bad), Err(want), "byte {at}");
        }
        let mut no_base = Record::new(None).encode();
        no_base[0] = 1;
        no_base[20] = 1; // a digest without a base
        assert_eq!(Record::decode(&no_base), Err(RecordError::Malformed(2)));
    }

    #[test]
    fn a_write_dirties_every_region_it_touches() {
        let g = Geometry::new(16 * 4096, 4096).unwrap();
        assert_eq!(dirtied_by_write(&g, 0, 4096), 0..1);
        assert_eq!(
            dirtied_by_write(&g, 4095, 2),
            0..2,
            "partly covered regions count"
        );
        assert_eq!(dirtied_by_write(&g, 5 * 4096 + 512, 512), 5..6);
        assert_eq!(dirtied_by_write(&g, 0, 0), 0..0);
        assert_eq!(
            dirtied_by_write(&g, 15 * 4096, 9999),
            15..16,
            "clipped at the end"
        );
        assert_eq!(dirtied_by_write(&g, 16 * 4096, 1), 0..0);
    }

    #[test]
    fn the_tracker_marks_every_region_a_write_touches() {
        let g = Geometry::new(64 * 4096, 4096).unwrap();
        let tracker = Tracker::new(Arc::new(NamedMap::new(g).unwrap()));
        tracker.on_write(4095, 2);
        tracker.on_write(40 * 4096, 3 * 4096);
        tracker.on_write(40 * 4096, 512);
        let runs: alloc::vec::Vec<_> = tracker.map().runs().collect();
        assert_eq!(runs, [0..2, 40..43]);
    }

    #[test]
    fn only_a_clean_unchanged_session_with_a_base_is_trusted() {
        let stamp = Stamp::of(1_700_000_000_000_000_000, 1 << 30);
        let fresh = Record::new(Some(base()));
        let open = begin_session(&fresh);
        let clean = end_session(&open, stamp);
        assert_eq!(trust(Some(&clean.encode()), true, stamp), Ok(base()));
        assert_eq!(trust(None, true, stamp), Err(Distrust::NoMap));
        assert_eq!(
            trust(Some(&clean.encode()), false, stamp),
            Err(Distrust::Damaged)
        );
        assert_eq!(
            trust(Some(&fresh.encode()), true, stamp),
            Err(Distrust::NeverTracked)
        );
        assert_eq!(
            trust(Some(&open.encode()), true, stamp),
            Err(Distrust::NotStoppedCleanly)
        );
        let later = Stamp::of(1_700_000_000_000_000_001, 1 << 30);
        assert_eq!(
            trust(Some(&clean.encode()), true, later),
            Err(Distrust::WrittenOutside)
        );
        // No stamp (a block device): the session alone decides.
        let unstamped = end_session(&open, Stamp::NONE);
        assert_eq!(trust(Some(&unstamped.encode()), true, later), Ok(base()));
        let baseless = end_session(&begin_session(&Record::new(None)), stamp);
        assert_eq!(
            trust(Some(&baseless.encode()), true, stamp),
            Err(Distrust::NoBase)
        );
        let mut bad = clean.encode();
        bad[1] = 9;
        assert!(matches!(
            trust(Some(&bad), true, stamp),
            Err(Distrust::BadRecord(_))
        ));
        // A backup's reset makes it trusted again, from the new version.
        let next = Base {
            version: 8,
            digest: [2; 32],
        };
        assert_eq!(
            trust(Some(&after_backup(next, stamp).encode()), true, stamp),
            Ok(next)
        );
    }
}
