//! The restore target: a regular file (created at the source size when missing) or a
//! block device, checked to be large enough before anything is written.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rehydrate_nbd::PositionalIo;

use crate::error::ServiceError;

/// An opened target.
pub struct Target {
    file: File,
    path: PathBuf,
    regular: bool,
    /// The file did not exist and was created for this restore.
    pub created: bool,
}

/// Largest zero buffer written at once where holes cannot be punched.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

impl Target {
    /// Opens or creates `path` and checks it can hold `needed_bytes`.
    pub fn open(path: &Path, needed_bytes: u64) -> Result<Target, ServiceError> {
        let io = |op: &'static str| {
            move |source| ServiceError::TargetIo {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let existing = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("inspect")(e)),
        };
        let (file, regular, created) = match existing {
            None => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(io("create"))?;
                file.set_len(needed_bytes).map_err(io("size"))?;
                (file, true, true)
            }
            Some(m) if m.is_file() || super::target_os::is_block_device(&m) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io("open"))?;
                (file, m.is_file(), false)
            }
            Some(_) => return Err(ServiceError::TargetKind(path.to_owned())),
        };
        let mut probe = &file;
        let size_bytes = probe.seek(SeekFrom::End(0)).map_err(io("measure"))?;
        if size_bytes < needed_bytes {
            return Err(ServiceError::TargetTooSmall {
                path: path.to_owned(),
                size_bytes,
                needed_bytes,
            });
        }
        Ok(Target {
            file,
            path: path.to_owned(),
            regular,
            created,
        })
    }

    /// The target's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Makes `[offset, offset + len)` read as zeros: a punched hole in a regular file
    /// (no data written), else written zeros.
    pub fn zero(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if self.regular && super::target_os::punch_hole(&self.file, offset, len) {
            return Ok(());
        }
        let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(len as usize)];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Makes written data durable.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// A second handle on the same file, so a flush can run on another thread while
    /// writes go on (the engine only counts writes issued before the flush as covered).
    pub fn flusher(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_created_and_a_small_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let t = Target::open(&p, 8192).unwrap();
        assert!(t.created);
        t.write_at(0, &[1; 8192]).unwrap();
        t.zero(4096, 4096).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..4096], &[1; 4096][..]);
        assert_eq!(&bytes[4096..], &[0; 4096][..]);
        assert!(matches!(
            Target::open(&p, 8193),
            Err(ServiceError::TargetTooSmall { .. })
        ));
        assert!(matches!(
            Target::open(dir.path(), 1),
            Err(ServiceError::TargetKind(_))
        ));
    }
}
