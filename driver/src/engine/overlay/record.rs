//! The overlay mode's record: the 112-byte record of the named map [`OVERLAY_MAP`] in
//! the restore's metadata header ([`crate::meta::maps`]). Its presence is the mode: a
//! metadata store without a map of this name belongs to an in-place restore, whose
//! destination takes the application's writes; one with it, to an overlay restore,
//! whose destination must hold nothing but backup data until the cutover. A shell
//! refuses either for the other (the map table is part of the header, so the mode is
//! as durable as the restore itself).
//!
//! # Layout, little-endian
//!
//! ```text
//! offset size  field
//!      0    1  record_version   u8 = 1
//!      1    1  state            1 = pseudo-volume (restoring, or restored and not
//!                               cut over), 2 = merging (the destination may hold
//!                               overlay data of regions in the map), 3 = merged (the
//!                               destination is the volume; the overlay is not needed)
//!      2    1  overlay_kind     what `overlay_id` means: a `TargetKind` byte
//!      3    5  reserved         zero
//!      8    8  overlay_size     u64, bytes the overlay must have (the volume's size)
//!     16   48  overlay_id       the overlay's identity, as a target's (`TargetPin`):
//!                               an overlay of another restore is refused
//!     64   48  reserved         zero
//! ```
//!
//! An all-zero record (a map created but never given a record) is refused: the shell
//! that creates the map sets the record in the same creation.

use core::ops::Range;

use crate::meta::{MapName, MAP_RECORD_BYTES, TARGET_ID_BYTES};

/// The overlay map's name in the metadata.
pub const OVERLAY_MAP: MapName = match MapName::new("overlay") {
    Some(name) => name,
    None => panic!("a valid map name"),
};

/// The record layout's version.
pub const RECORD_VERSION: u8 = 1;

const R_VERSION: usize = 0;
const R_STATE: usize = 1;
const R_KIND: usize = 2;
const R_SIZE: usize = 8;
const R_ID: usize = 16;
const R_END: usize = 64;
const _: () = assert!(R_SIZE % 8 == 0 && R_SIZE + 8 == R_ID);
const _: () = assert!(R_ID + TARGET_ID_BYTES == R_END);
const _: () = assert!(R_END <= MAP_RECORD_BYTES);

/// Where an overlay restore stands; only ever moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// The application runs on the pseudo-volume; the destination holds only backup
    /// data.
    Pseudo = 1,
    /// A cutover began: the destination may hold overlay data of regions in the
    /// overlay map (never of others), and a cutover must be finished.
    Merging = 2,
    /// The cutover is durable: the destination is the volume.
    Merged = 3,
}

impl State {
    /// The name `status` shows.
    pub const fn name(self) -> &'static str {
        match self {
            State::Pseudo => "pseudo-volume",
            State::Merging => "merging",
            State::Merged => "merged",
        }
    }
}

/// Which overlay a restore writes, as the record pins it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OverlayPin {
    /// A `TargetKind` byte: what `id` means.
    pub kind: u8,
    /// The overlay's size in bytes.
    pub size_bytes: u64,
    /// Its identity (kind-specific, as a target's).
    pub id: [u8; TARGET_ID_BYTES],
}

/// The overlay map's record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// Where the restore stands.
    pub state: State,
    /// The overlay it writes.
    pub overlay: OverlayPin,
}

/// Why a record cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The map has no record (all zero).
    #[error("the overlay map has no record")]
    Missing,
    /// A layout this build does not know.
    #[error("overlay record version {0}")]
    Version(u8),
    /// A state byte that names no state.
    #[error("overlay record state {0}")]
    State(u8),
    /// A reserved byte is not zero.
    #[error("overlay record byte {0} is reserved and not zero")]
    Reserved(usize),
}

impl Record {
    /// A new overlay restore of `overlay`.
    pub fn new(overlay: OverlayPin) -> Record {
        Record {
            state: State::Pseudo,
            overlay,
        }
    }

    /// The record's bytes.
    pub fn encode(&self) -> [u8; MAP_RECORD_BYTES] {
        let mut out = [0u8; MAP_RECORD_BYTES];
        out[R_VERSION] = RECORD_VERSION;
        out[R_STATE] = self.state as u8;
        out[R_KIND] = self.overlay.kind;
        out[R_SIZE..R_ID].copy_from_slice(&self.overlay.size_bytes.to_le_bytes());
        out[R_ID..R_END].copy_from_slice(&self.overlay.id);
        debug_assert_eq!(Record::decode(&out), Ok(*self));
        out
    }

    /// Decodes a record.
    pub fn decode(bytes: &[u8; MAP_RECORD_BYTES]) -> Result<Record, RecordError> {
        if bytes.iter().all(|&b| b == 0) {
            return Err(RecordError::Missing);
        }
        if bytes[R_VERSION] != RECORD_VERSION {
            return Err(RecordError::Version(bytes[R_VERSION]));
        }
        let state = match bytes[R_STATE] {
            1 => State::Pseudo,
            2 => State::Merging,
            3 => State::Merged,
            other => return Err(RecordError::State(other)),
        };
        let reserved: [Range<usize>; 2] = [R_KIND + 1..R_SIZE, R_END..MAP_RECORD_BYTES];
        for range in reserved {
            if let Some(at) = range.clone().find(|&i| bytes[i] != 0) {
                return Err(RecordError::Reserved(at));
            }
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[R_SIZE..R_ID]);
        let mut id = [0u8; TARGET_ID_BYTES];
        id.copy_from_slice(&bytes[R_ID..R_END]);
        Ok(Record {
            state,
            overlay: OverlayPin {
                kind: bytes[R_KIND],
                size_bytes: u64::from_le_bytes(size),
                id,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> OverlayPin {
        OverlayPin {
            kind: 1,
            size_bytes: 1 << 20,
            id: [0xAB; TARGET_ID_BYTES],
        }
    }

    #[test]
    fn records_round_trip_and_every_damage_is_typed() {
        for state in [State::Pseudo, State::Merging, State::Merged] {
            let r = Record {
                state,
                overlay: pin(),
            };
            assert_eq!(Record::decode(&r.encode()), Ok(r));
        }
        let bytes = Record::new(pin()).encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[1], 1);
        assert_eq!(bytes[2], 1);
        assert_eq!(&bytes[8..16], &(1u64 << 20).to_le_bytes());
        assert_eq!(
            Record::decode(&[0; MAP_RECORD_BYTES]),
            Err(RecordError::Missing)
        );
        for (at, value, want) in [
            (0, 2, RecordError::Version(2)),
            (1, 0, RecordError::State(0)),
            (1, 4, RecordError::State(4)),
            (3, 1, RecordError::Reserved(3)),
            (7, 9, RecordError::Reserved(7)),
            (64, 1, RecordError::Reserved(64)),
            (111, 1, RecordError::Reserved(111)),
        ] {
            let mut bad = bytes;
            bad[at] = value;
            assert_eq!(Record::decode(&bad), Err(want), "byte {at}");
        }
    }

    #[test]
    fn states_only_move_forward_in_their_order() {
        assert!(State::Pseudo < State::Merging && State::Merging < State::Merged);
        assert_eq!(State::Merging.name(), "merging");
    }
}
