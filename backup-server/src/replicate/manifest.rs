//! The change manifest: the versions a receiver lacks, parent first, each with its index
//! exactly as the sender stores it. Built by the sender, checked entry by entry by the
//! receiver, kept durably in the session record before any data moves.

use std::collections::HashMap;

use bytes::Bytes;

use crate::chunk::ChunkHash;
use crate::index::{ChunkRef, Index};
use crate::name::VolumeName;

/// Most versions one manifest carries.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Most index bytes one manifest carries (it is held in memory at both ends).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// One version to replicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The volume.
    pub volume: VolumeName,
    /// Its version number (the same at both ends).
    pub version: u32,
    /// The index file's bytes, published unchanged by the receiver.
    pub index_bytes: Bytes,
    /// The decoded index.
    pub index: Index,
}

impl Entry {
    /// The distinct data chunks the version names, in volume order.
    pub fn data_chunks(&self) -> impl Iterator<Item = ChunkHash> + '_ {
        crate::index::distinct_data_chunks(&self.index.chunks)
    }
}

/// Why a manifest entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The index bytes do not decode.
    #[error("version {version} of {volume}: {source}")]
    Index {
        /// The volume.
        volume: String,
        /// The version.
        version: u32,
        /// Why.
        source: crate::index::IndexError,
    },
    /// Versions of a volume must come ascending, and a volume's entries together.
    #[error("version {version} of {volume} is out of order")]
    Order {
        /// The volume.
        volume: String,
        /// The version.
        version: u32,
    },
    /// One chunk named with two different lengths: no content can match both.
    #[error("chunk {0} is named with two different lengths")]
    ChunkLength(ChunkHash),
    /// More entries or bytes than a manifest may hold.
    #[error(
        "the manifest exceeds its bounds ({MAX_ENTRIES} versions, {MAX_MANIFEST_BYTES} bytes)"
    )]
    TooLarge,
}

/// A manifest: entries grouped by volume, versions ascending within a volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
    bytes: u64,
    /// Every data chunk named, with its length.
    lengths: HashMap<ChunkHash, usize>,
}

impl Manifest {
    /// An empty manifest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a version, checking it against what came before.
    pub fn push(
        &mut self,
        volume: VolumeName,
        version: u32,
        index_bytes: Bytes,
    ) -> Result<(), ManifestError> {
        if self.entries.len() >= MAX_ENTRIES
            || self.bytes + index_bytes.len() as u64 > MAX_MANIFEST_BYTES
        {
            return Err(ManifestError::TooLarge);
        }
        let out_of_order = || ManifestError::Order {
            volume: volume.to_string(),
            version,
        };
        if let Some(last) = self.entries.last() {
            let same = last.volume == volume;
            if (same && version <= last.version)
                || (!same && self.entries.iter().any(|e| e.volume == volume))
            {
                return Err(out_of_order());
            }
        }
        if version == 0 {
            return Err(out_of_order());
        }
        let index = Index::decode(&index_bytes).map_err(|source| ManifestError::Index {
            volume: volume.to_string(),
            version,
            source,
        })?;
        // Check every length before recording any, so a refused entry changes nothing.
        let mut fresh = HashMap::new();
        for (i, c) in index.chunks.iter().enumerate() {
            if let ChunkRef::Data(h) = c {
                let len = index.chunk_len(i as u64);
                let known = self.lengths.get(h).or_else(|| fresh.get(h));
                match known {
                    Some(&l) if l != len => return Err(ManifestError::ChunkLength(*h)),
                    Some(_) => {}
                    None => {
                        fresh.insert(*h, len);
                    }
                }
            }
        }
        self.lengths.extend(fresh);
        self.bytes += index_bytes.len() as u64;
        self.entries.push(Entry {
            volume,
            version,
            index_bytes,
            index,
        });
        Ok(())
    }

    /// The entries in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The length of chunk `hash` if the manifest names it.
    pub fn chunk_len(&self, hash: &ChunkHash) -> Option<usize> {
        self.lengths.get(hash).copied()
    }

    /// Every distinct data chunk, in manifest order (volume by volume, parent first), so
    /// chunks are asked for, and sent, in the order that lets versions complete soonest.
    pub fn data_chunks(&self) -> Vec<ChunkHash> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .flat_map(Entry::data_chunks)
            .filter(|h| seen.insert(*h))
            .collect()
    }

    /// The volumes, in manifest order.
    pub fn volumes(&self) -> Vec<VolumeName> {
        let mut out: Vec<VolumeName> = Vec::new();
        for e in &self.entries {
            if out.last() != Some(&e.volume) {
                out.push(e.volume.clone());
            }
        }
        out
    }

    /// The session id: BLAKE3 over every entry's wire payload, each prefixed by its
    /// length, in order. Two manifests with the same id carry the same versions.
    pub fn session_id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for e in &self.entries {
            let p = entry_payload(&e.volume, e.version, &e.index_bytes);
            h.update(&(p.len() as u32).to_le_bytes());
            h.update(&p);
        }
        *h.finalize().as_bytes()
    }
}

/// An entry's payload as a Manifest message carries it (see `message.rs`): the form the
/// session id hashes and the session record stores.
pub fn entry_payload(volume: &VolumeName, version: u32, index: &[u8]) -> Vec<u8> {
    let name = volume.as_str().as_bytes();
    let mut p = Vec::with_capacity(1 + name.len() + 4 + index.len());
    p.push(name.len() as u8);
    p.extend_from_slice(name);
    p.extend_from_slice(&version.to_le_bytes());
    p.extend_from_slice(index);
    p
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::size::ChunkSize;

    /// An index of `chunks` 64 KiB chunks (the last one `tail` bytes if non-zero).
    pub(crate) fn index_bytes(chunks: &[ChunkRef], tail: u64) -> Bytes {
        let chunk_size = ChunkSize::from_shift(16).unwrap();
        let full = chunks.len() as u64 * 65536;
        let size = if tail == 0 { full } else { full - 65536 + tail };
        Bytes::from(
            Index {
                volume_size_bytes: size,
                chunk_size,
                parent_version: 0,
                created_unix_secs: 1,
                chunks: chunks.to_vec(),
            }
            .encode()
            .unwrap(),
        )
    }

    fn data(n: u8) -> ChunkRef {
        ChunkRef::Data(ChunkHash::of(&[n]))
    }

    #[test]
    fn order_and_lengths_are_checked() {
        let v = |s| VolumeName::new(s).unwrap();
        let mut m = Manifest::new();
        m.push(v("a"), 1, index_bytes(&[data(1), ChunkRef::Zero], 0))
            .unwrap();
        m.push(v("a"), 3, index_bytes(&[data(1), data(2)], 0))
            .unwrap();
        assert!(matches!(
            m.push(v("a"), 3, index_bytes(&[data(1)], 0)),
            Err(ManifestError::Order { .. })
        ));
        m.push(v("b"), 1, index_bytes(&[data(3)], 0)).unwrap();
        assert!(matches!(
            m.push(v("a"), 4, index_bytes(&[data(1)], 0)),
            Err(ManifestError::Order { .. })
        ));
        // data(2) as a short last chunk: the same name with another length.
        assert!(matches!(
            m.push(v("b"), 2, index_bytes(&[data(2)], 100)),
            Err(ManifestError::ChunkLength(_))
        ));
        assert!(matches!(
            m.push(v("b"), 2, Bytes::from_static(b"junk")),
            Err(ManifestError::Index { .. })
        ));
        assert_eq!(m.len(), 3);
        assert_eq!(m.volumes(), vec![v("a"), v("b")]);
        assert_eq!(
            m.data_chunks(),
            vec![
                ChunkHash::of(&[1]),
                ChunkHash::of(&[2]),
                ChunkHash::of(&[3])
            ]
        );
        let id = m.session_id();
        let mut other = m.clone();
        other.push(v("c"), 1, index_bytes(&[data(4)], 0)).unwrap();
        assert_ne!(other.session_id(), id);
    }
}
