//! What a restore target does differently on Linux and elsewhere: recognising a block
//! device, punching a hole instead of writing zeros, finding holes, vectored writes,
//! writeback hints, and I/O that must not wait.

use std::fs::{File, Metadata};

/// True for a block device (Unix); a Windows restore target is a file (volumes are
/// restored in place by the driver, `rehydrate attach`).
pub(super) fn is_block_device(metadata: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        metadata.file_type().is_block_device()
    }
    #[cfg(windows)]
    {
        let _ = metadata;
        false
    }
}

/// Deallocates `[offset, offset + len)` of a regular file so it reads as zeros, without
/// changing its size; false when the file system cannot (the caller writes zeros).
pub(super) fn punch_hole(file: &File, offset: u64, len: u64) -> bool {
    #[cfg(unix)]
    {
        use rustix::fs::FallocateFlags;
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(file, mode, offset, len).is_ok()
    }
    #[cfg(windows)]
    {
        let _ = (file, offset, len);
        false
    }
}

/// The next run of data at or after `at`: where it starts and where the hole after it
/// starts (`SEEK_DATA`, `SEEK_HOLE`); `None` when only a hole follows. Windows reports
/// everything as data, which is always true.
pub(super) fn next_data_run(file: &File, at: u64) -> std::io::Result<Option<(u64, u64)>> {
    #[cfg(unix)]
    {
        use rustix::fs::SeekFrom;
        // ENXIO: no data at or after `at`.
        let data = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data))?;
        Ok(Some((data, hole)))
    }
    #[cfg(windows)]
    {
        let _ = file;
        Ok(Some((at, u64::MAX)))
    }
}

/// Asks the kernel to start writing `[offset, offset + len)` out now without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). A hint; nothing elsewhere.
pub(crate) fn start_writeback(file: &File, offset: u64, len: std::num::NonZeroU64) {
    #[cfg(target_os = "linux")]
    {
        let _ = writeback::sync_range(file, offset, len, writeback::Wait::No);
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
    }
}

/// Waits until `[offset, offset + len)` is written out (`sync_file_range` with both
/// waits: the device has it, not necessarily its cache, so this never stands in for
/// `fdatasync`), then drops its pages from the page cache (`POSIX_FADV_DONTNEED`), so
/// the next writes reuse them instead of growing the cache. A hint; nothing elsewhere.
pub(super) fn settle(file: &File, offset: u64, len: std::num::NonZeroU64) {
    #[cfg(target_os = "linux")]
    {
        if writeback::sync_range(file, offset, len, writeback::Wait::Yes).is_ok() {
            let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
    }
}

/// `sync_file_range(2)`, which rustix does not offer.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod writeback {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    /// Whether to wait for the range's writeback, before and after starting it.
    pub(super) enum Wait {
        No,
        Yes,
    }

    pub(super) fn sync_range(
        file: &File,
        offset: u64,
        len: std::num::NonZeroU64,
        wait: Wait,
    ) -> std::io::Result<()> {
        let flags = match wait {
            Wait::No => libc::SYNC_FILE_RANGE_WRITE,
            Wait::Yes => {
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER
            }
        };
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len.get())) else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        // SAFETY: plain integers and a file descriptor that `file` keeps open for the
        // call; the kernel touches no memory of ours.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}
