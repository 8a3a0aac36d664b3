//! The DR metadata file of either site (`TARGET.dr-meta` unless named): who the volume
//! belongs to, and its region map: the durable sent map on the primary, the present map
//! at the DR site. Replaced whole (written beside, synced, renamed, directory synced),
//! so a crash leaves the old file or the new one, and a checksum refuses anything else.
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
//!     64     8  N: words of the map
//!     72    8N  the map: bit r % 64 of word r / 64 is region r
//! 72+8N     32  BLAKE3 of every byte before
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use rehydrate_driver::dr::bits::Bits;
use rehydrate_driver::dr::Binding;
use rehydrate_driver::Geometry;

const MAGIC: [u8; 8] = *b"RHYDDRMT";
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 72;
const CHECKSUM_BYTES: usize = 32;
/// Largest map accepted (2^32 regions): a length field past it is damage, not a volume.
const MAP_WORDS_MAX: u64 = 1 << 26;

const _: () = assert!(HEADER_BYTES == 64 + 8);

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
        let words = u64_at(64);
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
        Ok(Meta {
            role,
            geometry,
            binding: (flags & 1 != 0).then(|| (id(32), id(48))),
            promoted: flags & 2 != 0,
            generation: u64_at(24),
            map,
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
        };
        let bytes = meta.encode();
        let p = Path::new("m");
        assert_eq!(Meta::decode(&bytes, p).unwrap(), meta);
        for at in [0, 9, 10, 11, 20, 70, 80, bytes.len() - 1] {
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
}
