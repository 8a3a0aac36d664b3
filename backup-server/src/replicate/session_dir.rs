//! Where a receiving store keeps its session records: `replication/SENDER/` under the
//! store's root, holding `session` (the record, see [`super::record`]) and `lock` (held
//! with `flock` for the life of a session, so two receivers never share a record).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::ReplicateError;
use super::manifest::Manifest;
use super::record::{self, Record};
use crate::chunk::ChunkHash;

/// Directory under a store's root that holds every sender's session directory.
pub const REPLICATION_DIR: &str = "replication";

/// The session directory of one sender.
#[derive(Clone, Debug)]
pub struct SessionDir {
    dir: PathBuf,
}

/// Sender ids as they name directories: 32 lower-case hex digits.
pub fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReplicateError + '_ {
    move |source| ReplicateError::Record {
        path: path.to_owned(),
        source,
    }
}

impl SessionDir {
    /// The session directory of `sender_id` in the store rooted at `root`.
    pub fn new(root: &Path, sender_id: &[u8; 16]) -> Self {
        Self {
            dir: root.join(REPLICATION_DIR).join(hex_id(sender_id)),
        }
    }

    /// Every session directory of the store rooted at `root`.
    pub fn all(root: &Path) -> Vec<Self> {
        let mut dirs: Vec<Self> = std::fs::read_dir(root.join(REPLICATION_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| Self { dir: e.path() })
            .collect();
        dirs.sort_by(|a, b| a.dir.cmp(&b.dir));
        dirs
    }

    /// The record's path.
    pub fn record_path(&self) -> PathBuf {
        self.dir.join("session")
    }

    /// Take this sender's lock (non-blocking): `None` if another session holds it.
    pub fn lock(&self) -> Result<Option<File>, ReplicateError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join("lock");
        super::platform::open_locked(&path).map_err(io_err(&path))
    }

    /// The record, if there is a readable one. A damaged header or manifest is logged and
    /// treated as none: every chunk is then checked in the store again, nothing is lost.
    pub fn read(&self) -> Result<Option<Record>, ReplicateError> {
        let path = self.record_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        match record::decode(&bytes) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a damaged session record");
                Ok(None)
            }
        }
    }

    /// Write a new record (manifest, no arrival) durably, replacing any old one: a
    /// temporary file, fsync, rename, fsync of the directory.
    pub fn create(
        &self,
        sender_id: [u8; 16],
        manifest: &Manifest,
    ) -> Result<RecordFile, ReplicateError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let head = record::encode_head(sender_id, manifest, now);
        let tmp = self.dir.join("session.tmp");
        let path = self.record_path();
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&head)
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(RecordFile {
            file,
            path,
            session_id: manifest.session_id(),
            next_seq: 0,
            len: head.len() as u64,
        })
    }

    /// Open an existing record for appending, cut back to its valid prefix.
    pub fn resume(&self, record: &Record) -> Result<RecordFile, ReplicateError> {
        let path = self.record_path();
        // Append mode: every write lands at the end, wherever a cut left it.
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(record.valid_len).map_err(io_err(&path))?;
        Ok(RecordFile {
            file,
            path,
            session_id: record.session_id,
            next_seq: record.arrived.len() as u64,
            len: record.valid_len,
        })
    }

    /// Remove the record: its session is complete.
    pub fn remove(&self) -> Result<(), ReplicateError> {
        let path = self.record_path();
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), ReplicateError> {
    crate::os::sync_dir(dir).map_err(io_err(dir))
}

/// An open record, appended to.
#[derive(Debug)]
pub struct RecordFile {
    file: File,
    path: PathBuf,
    session_id: [u8; 32],
    next_seq: u64,
    /// Length of the file up to its last durable append.
    len: u64,
}

impl RecordFile {
    /// The session this record belongs to.
    pub fn session_id(&self) -> [u8; 32] {
        self.session_id
    }

    /// Append arrival records for `hashes` and make them durable.
    pub fn append(&mut self, hashes: &[ChunkHash]) -> Result<(), ReplicateError> {
        let bytes = record::encode_arrivals(&self.session_id, self.next_seq, hashes);
        let result = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            // Cut a partial append back off, so the next append starts on a record
            // boundary (a torn tail would be ignored on reading anyway).
            let _ = self.file.set_len(self.len);
            return Err(io_err(&self.path)(e));
        }
        self.next_seq += hashes.len() as u64;
        self.len += bytes.len() as u64;
        Ok(())
    }
}
