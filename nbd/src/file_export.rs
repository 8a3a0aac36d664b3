//! [`FileExport`]: a raw image file (or block device) served as an export.
//!
//! Positioned reads and writes ([`PositionalIo`]) run on tokio's blocking pool, so many
//! requests proceed at once without sharing a file cursor. On Unix, block status comes
//! from `SEEK_DATA`/`SEEK_HOLE` and trim punches holes; where the file system lacks them,
//! and on Windows, every extent is data and trim is ignored (it is a hint).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::export::{BoxFuture, Export, ExportError, Extent};
use crate::positional::PositionalIo;

/// Most extents one block status call gathers (the client asks again for the rest).
pub const MAX_FILE_EXTENTS: usize = 4096;

/// A raw image file served as an export.
#[derive(Clone, Debug)]
pub struct FileExport {
    file: Arc<File>,
    size_bytes: u64,
    read_only: bool,
}

impl FileExport {
    /// Open `path`; `read_only` opens it without write access.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        // Seeking to the end works for block devices too, whose metadata length is 0.
        let size_bytes = (&file).seek(SeekFrom::End(0))?;
        Ok(Self {
            file: Arc::new(file),
            size_bytes,
            read_only,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> Result<T, ExportError> + Send + 'static,
    ) -> Result<T, ExportError> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || f(&file))
            .await
            .map_err(|e| ExportError::Io(std::io::Error::other(e)))?
    }
}

impl Export for FileExport {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<Bytes, ExportError>> {
        Box::pin(self.blocking(move |file| {
            let mut buf = vec![0u8; length as usize];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        }))
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), ExportError>> {
        if self.read_only {
            return Box::pin(async { Err(ExportError::ReadOnly) });
        }
        Box::pin(self.blocking(move |file| {
            file.write_all_at(&data, offset)?;
            if fua {
                file.sync_data()?;
            }
            Ok(())
        }))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ExportError>> {
        if self.read_only {
            return Box::pin(async { Ok(()) });
        }
        Box::pin(self.blocking(|file| Ok(file.sync_data()?)))
    }

    fn trim(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<(), ExportError>> {
        if self.read_only {
            return Box::pin(async { Err(ExportError::ReadOnly) });
        }
        Box::pin(self.blocking(move |file| {
            sparse::punch_hole(file, offset, length.into());
            Ok(())
        }))
    }

    fn block_status(
        &self,
        offset: u64,
        length: u32,
    ) -> BoxFuture<'_, Result<Vec<Extent>, ExportError>> {
        let end = offset.saturating_add(length.into()).min(self.size_bytes);
        Box::pin(self.blocking(move |file| Ok(sparse::file_extents(file, offset, end))))
    }
}

/// Holes in files: Linux's `SEEK_DATA`/`SEEK_HOLE` and `FALLOC_FL_PUNCH_HOLE`.
#[cfg(unix)]
mod sparse {
    use std::fs::File;

    use rustix::fs::{FallocateFlags, SeekFrom};
    use rustix::io::Errno;

    use super::MAX_FILE_EXTENTS;
    use crate::export::Extent;

    /// Trim is a hint: a file system that cannot punch holes simply keeps the data.
    pub fn punch_hole(file: &File, offset: u64, length: u64) {
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        if let Err(e) = rustix::fs::fallocate(file, mode, offset, length) {
            tracing::debug!(%e, "trim: hole punching unavailable, ignoring");
        }
    }

    /// Extents of `[offset, end)` from `SEEK_DATA`/`SEEK_HOLE`, at most [`MAX_FILE_EXTENTS`].
    pub fn file_extents(file: &File, offset: u64, end: u64) -> Vec<Extent> {
        let mut extents = Vec::new();
        let mut pos = offset;
        while pos < end && extents.len() < MAX_FILE_EXTENTS {
            let data_start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
                Ok(d) => d.min(end),
                // ENXIO: no data after `pos`, the rest is a hole.
                Err(Errno::NXIO) => end,
                Err(e) => {
                    tracing::debug!(%e, "SEEK_DATA unavailable, reporting data");
                    extents.push(Extent::data(end - pos));
                    return extents;
                }
            };
            if data_start > pos {
                extents.push(Extent::hole(data_start - pos));
                pos = data_start;
                continue;
            }
            let hole_start = match rustix::fs::seek(file, SeekFrom::Hole(pos)) {
                Ok(h) => h.clamp(pos + 1, end),
                Err(_) => end,
            };
            extents.push(Extent::data(hole_start - pos));
            pos = hole_start;
        }
        extents
    }
}

/// Windows: no hole queries or punching here (both are hints); every extent is data.
#[cfg(windows)]
mod sparse {
    use std::fs::File;

    use crate::export::Extent;

    /// Trim is a hint; the data stays.
    pub fn punch_hole(_file: &File, _offset: u64, _length: u64) {}

    /// `[offset, end)` as one data extent.
    pub fn file_extents(_file: &File, offset: u64, end: u64) -> Vec<Extent> {
        if end > offset {
            vec![Extent::data(end - offset)]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn reads_and_reports_holes() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        let size = 3 * 1024 * 1024 + 100;
        tmp.as_file().set_len(size).unwrap();
        tmp.as_file()
            .write_all_at(&[7u8; 4096], 1024 * 1024)
            .unwrap();
        tmp.flush().unwrap();
        let export = FileExport::open(tmp.path(), true).unwrap();
        assert_eq!(export.size_bytes(), size);
        let data = export.read(1024 * 1024, 8192).await.unwrap();
        assert_eq!(&data[..4096], &[7u8; 4096]);
        assert_eq!(&data[4096..], &[0u8; 4096]);
        let extents = export
            .block_status(0, u32::try_from(size).unwrap())
            .await
            .unwrap();
        assert_eq!(extents.iter().map(|e| e.length_bytes).sum::<u64>(), size);
        assert!(extents.iter().any(|e| !e.hole));
        assert!(matches!(
            export.write(0, Bytes::from_static(b"x"), false).await,
            Err(ExportError::ReadOnly)
        ));
    }
}
