//! The protect state file, `TARGET.rehydrate-protect`: which journal a protected target
//! belongs to, and whether the target still equals that journal's head.
//!
//! `rehydrate protect` writes it `Running` before it serves a single write, and `Clean`
//! with the journal's head once it stopped with everything flushed and journaled. An
//! in-place recovery (`rehydrate restore` into the protected target) reads a `Clean`
//! state to fetch only the regions written after the point, and sets it back to
//! `Running` before it writes anything. So a `Running` state on start means the target
//! may differ from the journal (killed, recovered, or written by something else): the
//! next protect compares the whole target with the journal's head and journals what
//! differs inside a gap.
//!
//! Byte by byte, integers little-endian, 1280 bytes:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "RHYDPROT"
//!      8     2  format version = 1
//!     10     1  state: 1 running, 2 clean
//!     11     1  reserved, zero
//!     12     4  base version of the journal
//!     16     8  head: the journal's last sequence when it stopped (running: when it started)
//!     24     8  volume size in bytes
//!     32     1  target kind (the restore metadata's target kinds)
//!     33    48  target identity (device, inode, birth time: see the restore metadata)
//!     81     7  reserved, zero
//!     88     2  volume name length (1..=128)
//!     90     2  store length (1..=1024)
//!     92     4  reserved, zero
//!     96   128  volume name, zero-padded
//!    224  1024  store (an absolute directory path, UTF-8), zero-padded
//!   1248    32  checksum: BLAKE3 of bytes 0..1248
//!   1280        end
//! ```
//!
//! Written whole to a temporary file, synced, renamed over the old one, and the
//! directory synced, so a crash leaves the old state or the new one, never a mix.

use std::path::{Path, PathBuf};

use rehydrate_backup::VolumeName;
use rehydrate_driver::meta::TargetPin;

/// Bytes of the state file.
pub const STATE_BYTES: usize = 1280;
const MAGIC: [u8; 8] = *b"RHYDPROT";
const FORMAT_VERSION: u16 = 1;
const VOLUME_AT: usize = 96;
const VOLUME_MAX: usize = 128;
const STORE_AT: usize = 224;
/// Longest store path the state holds.
pub const STORE_MAX_BYTES: usize = 1024;
const CHECKSUM_AT: usize = 1248;

const _: () = assert!(VOLUME_AT + VOLUME_MAX == STORE_AT);
const _: () = assert!(STORE_AT + STORE_MAX_BYTES == CHECKSUM_AT);
const _: () = assert!(CHECKSUM_AT + 32 == STATE_BYTES);
const _: () = assert!(VOLUME_MAX == rehydrate_backup::name::MAX_VOLUME_NAME_BYTES);

/// Whether the target equals the journal's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Protect runs (or was killed, or a recovery wrote the target): it may differ.
    Running,
    /// Protect stopped with the target flushed and every write journaled up to `head`.
    Clean,
}

/// A protected target's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Running or clean.
    pub phase: Phase,
    /// The journal's base version.
    pub base: u32,
    /// The journal's head (see [`Phase`]).
    pub head: u64,
    /// The volume's size.
    pub volume_size_bytes: u64,
    /// The target's identity.
    pub target: TargetPin,
    /// The volume.
    pub volume: VolumeName,
    /// The store's absolute directory.
    pub store: PathBuf,
}

/// Why a state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or syncing it failed.
    #[error("protect state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// It is not a state file of this format, or it is damaged.
    #[error("protect state {path} is unusable: {reason}; remove it to protect the target from a new base")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The state file of `target`.
pub fn path_for(target: &Path) -> PathBuf {
    let mut p = target.as_os_str().to_owned();
    p.push(".rehydrate-protect");
    PathBuf::from(p)
}

impl State {
    /// The state's bytes.
    pub fn encode(&self) -> Result<[u8; STATE_BYTES], &'static str> {
        let volume = self.volume.as_str().as_bytes();
        let store = self
            .store
            .to_str()
            .ok_or("store path is not UTF-8")?
            .as_bytes();
        if store.is_empty() || store.len() > STORE_MAX_BYTES {
            return Err("store path is longer than 1024 bytes");
        }
        let mut b = [0u8; STATE_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10] = match self.phase {
            Phase::Running => 1,
            Phase::Clean => 2,
        };
        b[12..16].copy_from_slice(&self.base.to_le_bytes());
        b[16..24].copy_from_slice(&self.head.to_le_bytes());
        b[24..32].copy_from_slice(&self.volume_size_bytes.to_le_bytes());
        b[32] = self.target.kind as u8;
        b[33..81].copy_from_slice(&self.target.id);
        b[88..90].copy_from_slice(&(volume.len() as u16).to_le_bytes());
        b[90..92].copy_from_slice(&(store.len() as u16).to_le_bytes());
        b[VOLUME_AT..VOLUME_AT + volume.len()].copy_from_slice(volume);
        b[STORE_AT..STORE_AT + store.len()].copy_from_slice(store);
        let sum = blake3::hash(&b[..CHECKSUM_AT]);
        b[CHECKSUM_AT..].copy_from_slice(sum.as_bytes());
        Ok(b)
    }

    /// Decodes and checks a state; `target_kind` turns the kind byte back into the
    /// restore metadata's kind (the caller compares the whole pin with the target's).
    pub fn decode(bytes: &[u8]) -> Result<State, &'static str> {
        if bytes.len() != STATE_BYTES {
            return Err("not 1280 bytes long");
        }
        if bytes[0..8] != MAGIC {
            return Err("no magic");
        }
        if u16::from_le_bytes([bytes[8], bytes[9]]) != FORMAT_VERSION {
            return Err("another format version");
        }
        if blake3::hash(&bytes[..CHECKSUM_AT]).as_bytes()[..] != bytes[CHECKSUM_AT..] {
            return Err("checksum mismatch");
        }
        let phase = match bytes[10] {
            1 => Phase::Running,
            2 => Phase::Clean,
            _ => return Err("unknown state"),
        };
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let base = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        let volume_len = usize::from(u16::from_le_bytes([bytes[88], bytes[89]]));
        let store_len = usize::from(u16::from_le_bytes([bytes[90], bytes[91]]));
        if volume_len > VOLUME_MAX || store_len > STORE_MAX_BYTES {
            return Err("a name is too long");
        }
        let volume = std::str::from_utf8(&bytes[VOLUME_AT..VOLUME_AT + volume_len])
            .ok()
            .and_then(|v| VolumeName::new(v).ok())
            .ok_or("bad volume name")?;
        let store = std::str::from_utf8(&bytes[STORE_AT..STORE_AT + store_len])
            .map_err(|_| "store path is not UTF-8")?;
        let mut id = [0u8; rehydrate_driver::meta::TARGET_ID_BYTES];
        id.copy_from_slice(&bytes[33..81]);
        let target = TargetPin {
            kind: target_kind(bytes[32]).ok_or("unknown target kind")?,
            id,
        };
        Ok(State {
            phase,
            base,
            head: u64_at(16),
            volume_size_bytes: u64_at(24),
            target,
            volume,
            store: PathBuf::from(store),
        })
    }

    /// Reads the state of `target`; `None` when it has none.
    pub fn read(target: &Path) -> Result<Option<State>, StateError> {
        let path = path_for(target);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        State::decode(&bytes)
            .map(Some)
            .map_err(|reason| StateError::Invalid { path, reason })
    }

    /// Replaces the state of `target` durably (see the module comment).
    pub fn write(&self, target: &Path) -> Result<(), StateError> {
        let path = path_for(target);
        let bytes = self.encode().map_err(|reason| StateError::Invalid {
            path: path.clone(),
            reason,
        })?;
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        // Synced through the handle that wrote it (Windows flushes only writable handles).
        std::fs::File::create(&temp)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, &bytes)?;
                f.sync_all()
            })
            .map_err(io)?;
        std::fs::rename(&temp, &path).map_err(io)?;
        sync_parent(&path).map_err(io)
    }
}

fn target_kind(b: u8) -> Option<rehydrate_driver::meta::TargetKind> {
    use rehydrate_driver::meta::TargetKind;
    [
        TargetKind::Unrecorded,
        TargetKind::UnixFile,
        TargetKind::UnixBlockDevice,
        TargetKind::WindowsVolume,
    ]
    .into_iter()
    .find(|k| *k as u8 == b)
}

#[cfg(unix)]
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// NTFS logs the rename itself.
#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rehydrate_driver::meta::TargetKind;

    fn sample() -> State {
        State {
            phase: Phase::Clean,
            base: 3,
            head: 42,
            volume_size_bytes: 1 << 30,
            target: TargetPin {
                kind: TargetKind::UnixFile,
                id: [5; 48],
            },
            volume: VolumeName::new("sys").unwrap(),
            store: PathBuf::from("/srv/store"),
        }
    }

    #[test]
    fn a_state_round_trips_through_its_file_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.img");
        assert!(State::read(&target).unwrap().is_none());
        let s = sample();
        s.write(&target).unwrap();
        assert_eq!(State::read(&target).unwrap(), Some(s.clone()));
        let running = State {
            phase: Phase::Running,
            ..s
        };
        running.write(&target).unwrap();
        assert_eq!(State::read(&target).unwrap(), Some(running));
        let mut bytes = std::fs::read(path_for(&target)).unwrap();
        bytes[100] ^= 1;
        std::fs::write(path_for(&target), &bytes).unwrap();
        let e = State::read(&target).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert_eq!(State::decode(&bytes[..100]), Err("not 1280 bytes long"));
    }
}
