//! Positioned I/O on a site's volume (an image file or block device) for the core
//! tasks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rehydrate_driver::meta::TargetPin;

use super::DrRunError;
use crate::restore::lock::try_lock_exclusive;
use crate::restore::target_id;

/// Largest zero buffer written at once.
const ZERO_STEP_BYTES: u64 = 1 << 20;

/// The volume.
pub struct Volume {
    file: File,
    /// Its size.
    pub size_bytes: u64,
}

impl Volume {
    /// Opens `path` read-write and locks it for as long as the volume lives: one site
    /// process (or promotion) per volume. Two secondaries on one volume would both write
    /// it and replace each other's metadata; a promotion under a running secondary would
    /// be undone by its next commit. The lock is on the volume, not on the metadata,
    /// which is replaced by a rename at every commit.
    pub fn open(path: &Path) -> Result<Volume, DrRunError> {
        Volume::open_locked(path, false)
    }

    /// Like [`Volume::open`], but creates an empty `path` if there is none (a fresh DR
    /// site, sized by [`Volume::set_size`] once the first primary says how large).
    pub fn open_or_create(path: &Path) -> Result<Volume, DrRunError> {
        Volume::open_locked(path, true)
    }

    fn open_locked(path: &Path, create: bool) -> Result<Volume, DrRunError> {
        let io = |source| DrRunError::Io {
            what: format!("open {}", path.display()),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        try_lock_exclusive(&file).map_err(|holder| DrRunError::Locked {
            path: path.to_owned(),
            holder,
        })?;
        let size_bytes = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(io)?;
        Ok(Volume { file, size_bytes })
    }

    /// Sets the volume's length to `size_bytes` (a fresh DR site's file; a block device
    /// of another size is an error).
    pub fn set_size(&mut self, size_bytes: u64) -> Result<(), DrRunError> {
        if size_bytes == self.size_bytes {
            // Nothing to change (and a block device, which cannot be resized, fits).
            return Ok(());
        }
        self.file
            .set_len(size_bytes)
            .map_err(|source| DrRunError::Io {
                what: format!("size the DR volume to {size_bytes} bytes"),
                source,
            })?;
        self.size_bytes = size_bytes;
        Ok(())
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Writes `parts` one after the other from `offset`, in as few system calls as the
    /// kernel takes (adjacent regions of the stream reach the file together).
    pub fn write_run(&self, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        rehydrate_nbd::positional::write_all_vectored_at(&self.file, offset, parts)
    }

    /// Asks the kernel to start writing `[offset, offset + len)` to the device now,
    /// without waiting (a hint): the next commit's flush then finds most of it written
    /// instead of writing everything since the last commit at once.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        if let Some(len) = std::num::NonZeroU64::new(len) {
            crate::restore::target_os::start_writeback(&self.file, offset, len);
        }
    }

    /// Writes `len` zero bytes at `offset`.
    pub fn zero(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let zeroes = vec![0u8; len.min(ZERO_STEP_BYTES) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_STEP_BYTES);
            self.file
                .write_all_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    /// What the metadata records to know this volume again (`path` names it in errors).
    pub fn pin(&self, path: &Path) -> Result<TargetPin, DrRunError> {
        target_id::pin(&self.file, self.size_bytes).map_err(|source| DrRunError::Io {
            what: format!("inspect {}", path.display()),
            source,
        })
    }

    /// Makes every completed write durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}
