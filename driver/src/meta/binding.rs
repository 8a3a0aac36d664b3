//! What a restore is bound to beyond its shape: the exact source it restores (pinned
//! when the restore began) and the target it writes. The header records both (see
//! [`super::layout`]); a shell that cannot say leaves them [`Binding::UNRECORDED`].
//!
//! Why: a restore that resumes against another backup version mixes two backups, and
//! metadata that follows a target name to another device (Windows renumbers
//! `\Device\HarddiskVolumeN` across boots; a path can be recreated) would mark regions
//! of a volume that never received their data. So both ends are recorded and compared.

/// Longest source name the header holds (UTF-8 bytes).
pub const SOURCE_NAME_MAX_BYTES: usize = 256;
/// Bytes of kind-specific target identity the header holds.
pub const TARGET_ID_BYTES: usize = 48;

/// What kind of source a restore reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SourceKind {
    /// Not recorded by the shell that made the metadata (its `backup_id` alone names it).
    Unrecorded = 0,
    /// A version served by `rehydrate serve`: `version` is its number, `digest` the
    /// checksum of its index, `name` the pinned export (`NAME@N`).
    BackupVersion = 1,
    /// Another NBD server (qemu-nbd, nbdkit): `digest` is a checksum of sampled blocks,
    /// `name` the server address and export (`nbd://HOST:PORT/EXPORT`).
    ForeignNbd = 2,
    /// A recovery point of the journal served by `rehydrate serve`: `version` is its base
    /// version, `digest` the journal's chain digest at the point (which covers the base's
    /// index checksum), `name` the pinned export (`NAME@N+SEQ`).
    JournalPoint = 3,
}

impl SourceKind {
    fn from_byte(b: u8) -> Option<SourceKind> {
        Some(match b {
            0 => SourceKind::Unrecorded,
            1 => SourceKind::BackupVersion,
            2 => SourceKind::ForeignNbd,
            3 => SourceKind::JournalPoint,
            _ => return None,
        })
    }
}

/// What kind of target a restore writes; the meaning of [`TargetPin::id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TargetKind {
    /// Not recorded.
    Unrecorded = 0,
    /// A regular file on a Unix system: `st_dev` u64, `st_ino` u64, birth time seconds
    /// i64 and nanoseconds u32 (zero where the file system does not keep it), LE.
    UnixFile = 1,
    /// A block device on a Unix system: `st_rdev` u64 and its size in bytes u64, LE.
    UnixBlockDevice = 2,
    /// A Windows volume: volume GUID (16 bytes), GPT partition GUID or MBR disk
    /// signature (16 bytes, zero-padded), partition offset in bytes u64 LE, partition
    /// style u8 (`crate::volume_id` has the layout and the filter's check).
    WindowsVolume = 3,
}

impl TargetKind {
    fn from_byte(b: u8) -> Option<TargetKind> {
        Some(match b {
            0 => TargetKind::Unrecorded,
            1 => TargetKind::UnixFile,
            2 => TargetKind::UnixBlockDevice,
            3 => TargetKind::WindowsVolume,
            _ => return None,
        })
    }
}

/// The source a restore is pinned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePin {
    /// What the other fields mean.
    pub kind: SourceKind,
    /// Exact size of the source in bytes (the volume is this rounded up to a sector).
    pub size_bytes: u64,
    /// Version number of a backup version; 0 otherwise.
    pub version: u64,
    /// Index checksum, or checksum of sampled blocks (see [`SourceKind`]).
    pub digest: [u8; 32],
    name_len: u16,
    name: [u8; SOURCE_NAME_MAX_BYTES],
}

/// Why a pin cannot be built or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The source name is longer than [`SOURCE_NAME_MAX_BYTES`].
    #[error("source name of {len} bytes, at most 256 fit the metadata header")]
    NameTooLong {
        /// Bytes given.
        len: usize,
    },
    /// The source name is not UTF-8.
    #[error("source name is not UTF-8")]
    NameNotUtf8,
    /// A kind byte names no kind this build knows.
    #[error("unknown {field} kind {value}")]
    UnknownKind {
        /// `source` or `target`.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
}

impl SourcePin {
    /// No source recorded.
    pub const UNRECORDED: SourcePin = SourcePin {
        kind: SourceKind::Unrecorded,
        size_bytes: 0,
        version: 0,
        digest: [0; 32],
        name_len: 0,
        name: [0; SOURCE_NAME_MAX_BYTES],
    };

    /// A pin of `kind` named `name` (at most [`SOURCE_NAME_MAX_BYTES`] of UTF-8).
    pub fn new(
        kind: SourceKind,
        name: &str,
        size_bytes: u64,
        version: u64,
        digest: [u8; 32],
    ) -> Result<SourcePin, BindingError> {
        let bytes = name.as_bytes();
        if bytes.len() > SOURCE_NAME_MAX_BYTES {
            return Err(BindingError::NameTooLong { len: bytes.len() });
        }
        let mut stored = [0u8; SOURCE_NAME_MAX_BYTES];
        stored[..bytes.len()].copy_from_slice(bytes);
        Ok(SourcePin {
            kind,
            size_bytes,
            version,
            digest,
            // At most 256, checked above.
            name_len: bytes.len() as u16,
            name: stored,
        })
    }

    /// Decodes the header's fields (the layout's offsets are the caller's).
    pub(super) fn decode(
        kind: u8,
        name_len: u16,
        size_bytes: u64,
        version: u64,
        digest: [u8; 32],
        name: &[u8; SOURCE_NAME_MAX_BYTES],
    ) -> Result<SourcePin, BindingError> {
        let kind = SourceKind::from_byte(kind).ok_or(BindingError::UnknownKind {
            field: "source",
            value: kind,
        })?;
        let len = usize::from(name_len);
        if len > SOURCE_NAME_MAX_BYTES {
            return Err(BindingError::NameTooLong { len });
        }
        // Negative space: bytes past the name are zero, so one pin has one encoding.
        if name[len..].iter().any(|&b| b != 0) {
            return Err(BindingError::NameTooLong { len: len + 1 });
        }
        if core::str::from_utf8(&name[..len]).is_err() {
            return Err(BindingError::NameNotUtf8);
        }
        Ok(SourcePin {
            kind,
            size_bytes,
            version,
            digest,
            name_len,
            name: *name,
        })
    }

    /// The recorded name (`NAME@N`, or `nbd://HOST:PORT/EXPORT`).
    pub fn name(&self) -> &str {
        let len = usize::from(self.name_len).min(SOURCE_NAME_MAX_BYTES);
        // Checked to be UTF-8 by `new` and `decode`.
        core::str::from_utf8(&self.name[..len]).unwrap_or("")
    }

    /// The name as stored, zero-padded, with its length.
    pub(super) fn raw_name(&self) -> (u16, &[u8; SOURCE_NAME_MAX_BYTES]) {
        (self.name_len, &self.name)
    }
}

/// The target a restore writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetPin {
    /// What [`id`](Self::id) means.
    pub kind: TargetKind,
    /// Kind-specific identity (see [`TargetKind`]), zero-padded.
    pub id: [u8; TARGET_ID_BYTES],
}

impl TargetPin {
    /// No target recorded.
    pub const UNRECORDED: TargetPin = TargetPin {
        kind: TargetKind::Unrecorded,
        id: [0; TARGET_ID_BYTES],
    };

    /// The pin a kind byte and identity bytes record (this header's or another
    /// metadata file's).
    pub fn decode(kind: u8, id: [u8; TARGET_ID_BYTES]) -> Result<TargetPin, BindingError> {
        let kind = TargetKind::from_byte(kind).ok_or(BindingError::UnknownKind {
            field: "target",
            value: kind,
        })?;
        Ok(TargetPin { kind, id })
    }
}

/// Source and target together, as one header records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The pinned source.
    pub source: SourcePin,
    /// The target written.
    pub target: TargetPin,
}

impl Binding {
    /// Neither end recorded: what shells that pin by `backup_id` alone write.
    pub const UNRECORDED: Binding = Binding {
        source: SourcePin::UNRECORDED,
        target: TargetPin::UNRECORDED,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_utf8_with_one_encoding() {
        let pin = SourcePin::new(SourceKind::BackupVersion, "sys@3", 10, 3, [1; 32]).unwrap();
        assert_eq!(pin.name(), "sys@3");
        let (len, raw) = pin.raw_name();
        assert_eq!(SourcePin::decode(1, len, 10, 3, [1; 32], raw), Ok(pin));
        let long = "x".repeat(SOURCE_NAME_MAX_BYTES + 1);
        assert_eq!(
            SourcePin::new(SourceKind::ForeignNbd, &long, 1, 0, [0; 32]),
            Err(BindingError::NameTooLong { len: 257 })
        );
        let mut bad = *raw;
        bad[100] = 1;
        assert!(SourcePin::decode(1, len, 10, 3, [1; 32], &bad).is_err());
        bad = [0; SOURCE_NAME_MAX_BYTES];
        bad[0] = 0xFF;
        assert_eq!(
            SourcePin::decode(1, 1, 0, 0, [0; 32], &bad),
            Err(BindingError::NameNotUtf8)
        );
        assert_eq!(
            SourcePin::decode(9, 0, 0, 0, [0; 32], &[0; SOURCE_NAME_MAX_BYTES]),
            Err(BindingError::UnknownKind {
                field: "source",
                value: 9
            })
        );
        assert!(TargetPin::decode(4, [0; TARGET_ID_BYTES]).is_err());
        assert_eq!(
            TargetPin::decode(0, [0; TARGET_ID_BYTES]),
            Ok(TargetPin::UNRECORDED)
        );
    }
}
