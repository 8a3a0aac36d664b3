//! The DR metadata file of either site (`TARGET.dr-meta` unless named): who the volume
//! belongs to, which volume on this machine it was made for, and its region map: the
//! durable sent map on the primary, the present map at the DR site. Replaced whole
//! (written beside, synced, renamed, directory synced), so a crash leaves the old file
//! or the new one, and a checksum refuses anything else.
//!
//! Byte by byte, integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "RHYDDRMT"
//!      8     2  format version (1)
//!     10     1  role: 1 = primary, 2 = DR site
//!     11     1  flags: bit 0 bound to a primary, bit 1 promoted
//!     12     4  region size in bytes
//!     16     8  volume size in bytes
//!     24     8  generation (DR site: bumped whenever regions were dropped)
//!     32    16  primary id
//!     48    16  volume id
//!     64     1  target kind (`TargetKind`: 0 not recorded, 1 Unix file, 2 Unix block
//!               device, 3 Windows volume)
//!     65     7  zero
//!     72    48  target identity (`TargetKind` says what; zero-padded)
//!    120     8  N: words of the map
//!    128    8N  the map: bit r % 64 of word r / 64 is region r
//! 128+8N    32  BLAKE3 of every byte before
//! ```
//!
//! Why the target is recorded: the map says what the volume holds, so metadata that
//! follows a path to another file (one replaced or created anew under the name, or
//! `--metadata` of another site) would serve or skip regions that file never received.
//! A site started on a volume that is not the one its metadata was made for is refused
//! before anything is written.

use std::io::Write;
use std::path::{Path, PathBuf};

use rehydrate_driver::dr::bits::Bits;
use rehydrate_driver::dr::Binding;
use rehydrate_driver::meta::{TargetKind, TargetPin, TARGET_ID_BYTES};
use rehydrate_driver::Geometry;

const MAGIC: [u8; 8] = *b"RHYDDRMT";
const VERSION: u16 = 2;
const TARGET_AT: usize = 64;
const MAP_WORDS_AT: usize = TARGET_AT + 8 + TARGET_ID_BYTES;
const HEADER_BYTES: usize = MAP_WORDS_AT + 8;
const CHECKSUM_BYTES: usize = 32;
/// Largest map accepted (2^32 regions): a length field past it is damage, not a volume.
const MAP_WORDS_MAX: u64 = 1 << 26;

const _: () = assert!(TARGET_ID_BYTES == 48 && MAP_WORDS_AT == 120 && HEADER_BYTES == 128);

/// Which site a metadata file belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The primary: the map is the durable sent map.
    Primary = 1,
    /// The DR site: the map is the present map.
    Secondary = 2,
}

/// One site's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Which site.
    pub role: Role,
    /// The volume's shape.
    pub geometry: Geometry,
    /// The identities (on a DR site, `None` until a primary first attached).
    pub binding: Option<([u8; 16], [u8; 16])>,
    /// The DR site was promoted.
    pub promoted: bool,
    /// The generation.
    pub generation: u64,
    /// The map.
    pub map: Bits,
    /// The volume on this machine the metadata was made for
    /// ([`TargetPin::UNRECORDED`] where the platform cannot say).
    pub target: TargetPin,
}

/// Why a metadata file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// It cannot be read or written.
    #[error("DR metadata {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Its bytes are not a DR metadata file of this version, or fail the checksum.
    #[error("DR metadata {path} is damaged or not DR metadata: {what}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// It was made for another volume than the one the site was started on.
    #[error(
        "DR metadata {path} belongs to another volume than {target} (another file or \
         device, or one created anew): refused, nothing was changed"
    )]
    AnotherTarget {
        /// The file.
        path: PathBuf,
        /// The volume the site was started on.
        target: PathBuf,
    },
}

impl Meta {
    /// The binding as the DR core takes it.
    pub fn core_binding(&self) -> Option<Binding> {
        self.binding.map(|(primary_id, volume_id)| Binding {
            primary_id,
            volume_id,
            volume_size_bytes: self.geometry.volume_size_bytes(),
            region_size_bytes: self.geometry.region_size_bytes(),
        })
    }

    /// Refuses a volume (pinned as `volume`, at `target`) that is not the one this
    /// metadata (at `path`) was made for. Where either pin is not recorded there is
    /// nothing to compare.
    pub fn check_target(
        &self,
        volume: &TargetPin,
        path: &Path,
        target: &Path,
    ) -> Result<(), MetaError> {
        let recorded = |p: &TargetPin| p.kind != TargetKind::Unrecorded;
        if recorded(&self.target) && recorded(volume) && self.target != *volume {
            return Err(MetaError::AnotherTarget {
                path: path.to_owned(),
                target: target.to_owned(),
            });
        }
        Ok(())
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let words = self.map.words();
        let mut b = Vec::with_capacity(HEADER_BYTES + 8 * words.len() + CHECKSUM_BYTES);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(self.role as u8);
        b.push(u8::from(self.binding.is_some()) | (u8::from(self.promoted) << 1));
        b.extend_from_slice(&self.geometry.region_size_bytes().to_le_bytes());
        b.extend_from_slice(&self.geometry.volume_size_bytes().to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        let (p, v) = self.binding.unwrap_or(([0; 16], [0; 16]));
        b.extend_from_slice(&p);
        b.extend_from_slice(&v);
        debug_assert_eq!(b.len(), TARGET_AT);
        b.push(self.target.kind as u8);
        b.extend_from_slice(&[0; 7]);
        b.extend_from_slice(&self.target.id);
        debug_assert_eq!(b.len(), MAP_WORDS_AT);
        b.extend_from_slice(&(words.len() as u64).to_le_bytes());
        debug_assert_eq!(b.len(), HEADER_BYTES);
        for w in words {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    /// Decodes a file's bytes; `path` only names it in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Meta, MetaError> {
        let bad = |what| MetaError::Damaged {
            path: path.to_owned(),
            what,
        };
        if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
            return Err(bad("too short"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        if bytes[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        if u16::from_le_bytes([bytes[8], bytes[9]]) != VERSION {
            return Err(bad("unknown format version"));
        }
        let words = u64_at(MAP_WORDS_AT);
        if words > MAP_WORDS_MAX
            || bytes.len() as u64 != HEADER_BYTES as u64 + 8 * words + CHECKSUM_BYTES as u64
        {
            return Err(bad("length does not match its map"));
        }
        let body = bytes.len() - CHECKSUM_BYTES;
        if blake3::hash(&bytes[..body]).as_bytes() != &bytes[body..] {
            return Err(bad("checksum mismatch"));
        }
        let role = match bytes[10] {
            1 => Role::Primary,
            2 => Role::Secondary,
            _ => return Err(bad("unknown role")),
        };
        let flags = bytes[11];
        if flags & !3 != 0 {
            return Err(bad("unknown flags"));
        }
        let region = u32::from_le_bytes(bytes[12..16].try_into().expect("4"));
        let geometry = Geometry::new(u64_at(16), region).map_err(|_| bad("bad geometry"))?;
        let words: Vec<u64> = bytes[HEADER_BYTES..body]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        let map = Bits::from_words(geometry.region_count(), &words)
            .ok_or_else(|| bad("map does not fit the volume"))?;
        let id = |at: usize| -> [u8; 16] { bytes[at..at + 16].try_into().expect("16") };
        if bytes[TARGET_AT + 1..TARGET_AT + 8] != [0; 7] {
            return Err(bad("reserved bytes are not zero"));
        }
        let target = TargetPin::decode(
            bytes[TARGET_AT],
            bytes[TARGET_AT + 8..MAP_WORDS_AT]
                .try_into()
                .expect("the target identity"),
        )
        .map_err(|_| bad("unknown target kind"))?;
        Ok(Meta {
            role,
            geometry,
            binding: (flags & 1 != 0).then(|| (id(32), id(48))),
            promoted: flags & 2 != 0,
            generation: u64_at(24),
            map,
            target,
        })
    }

    /// Reads the file at `path`; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Meta>, MetaError> {
        match std::fs::read(path) {
            Ok(bytes) => Meta::decode(&bytes, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MetaError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Replaces the file at `path` durably.
    pub fn store(&self, path: &Path) -> Result<(), MetaError> {
        let io = |source| MetaError::Io {
            path: path.to_owned(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&self.encode()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

/// The metadata path for `target` when none is named.
pub fn default_path(target: &Path) -> PathBuf {
    let mut p = target.as_os_str().to_owned();
    p.push(".dr-meta");
    PathBuf::from(p)
}

/// A fresh identity: BLAKE3 of the time, the process and `salt`.
pub fn new_id(salt: &str) -> [u8; 16] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut h = blake3::Hasher::new();
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(salt.as_bytes());
    h.finalize().as_bytes()[..16].try_into().expect("16 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let geometry = Geometry::new(100 * 4096, 4096).unwrap();
        let mut map = Bits::new(100);
        map.set_range(3..70);
        let meta = Meta {
            role: Role::Secondary,
            geometry,
            binding: Some(([1; 16], [2; 16])),
            promoted: false,
            generation: 7,
            map,
            target: TargetPin {
                kind: TargetKind::UnixFile,
                id: [9; TARGET_ID_BYTES],
            },
        };
        let bytes = meta.encode();
        let p = Path::new("m");
        assert_eq!(Meta::decode(&bytes, p).unwrap(), meta);
        for at in [0, 9, 10, 11, 20, 64, 66, 80, 125, 130, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            assert!(Meta::decode(&b, p).is_err(), "byte {at}");
        }
        assert!(Meta::decode(&bytes[..bytes.len() - 1], p).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.dr-meta");
        assert_eq!(Meta::load(&path).unwrap(), None);
        meta.store(&path).unwrap();
        assert_eq!(Meta::load(&path).unwrap(), Some(meta));
    }

    #[test]
    fn another_volume_is_refused_and_an_unrecorded_pin_decides_nothing() {
        let pin = |b| TargetPin {
            kind: TargetKind::UnixFile,
            id: [b; TARGET_ID_BYTES],
        };
        let meta = Meta {
            role: Role::Secondary,
            geometry: Geometry::new(8 * 4096, 4096).unwrap(),
            binding: None,
            promoted: false,
            generation: 0,
            map: Bits::new(8),
            target: pin(1),
        };
        let (m, t) = (Path::new("d.img.dr-meta"), Path::new("d.img"));
        meta.check_target(&pin(1), m, t).unwrap();
        let e = meta.check_target(&pin(2), m, t).unwrap_err();
        assert!(matches!(e, MetaError::AnotherTarget { .. }), "{e}");
        assert!(e.to_string().contains("another volume than d.img"), "{e}");
        meta.check_target(&TargetPin::UNRECORDED, m, t).unwrap();
        let unrecorded = Meta {
            target: TargetPin::UNRECORDED,
            ..meta
        };
        unrecorded.check_target(&pin(2), m, t).unwrap();
        let back = Meta::decode(&unrecorded.encode(), m).unwrap();
        assert_eq!(back, unrecorded);
    }
}
