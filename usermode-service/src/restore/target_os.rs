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

/// One positioned write of several buffers (`pwritev`): the bytes written. Elsewhere the
/// first non-empty buffer is written, which callers loop over like a short write.
pub(super) fn pwritev(
    file: &File,
    slices: &[std::io::IoSlice<'_>],
    at: u64,
) -> std::io::Result<usize> {
    #[cfg(unix)]
    {
        rustix::io::pwritev(file, slices, at).map_err(Into::into)
    }
    #[cfg(not(unix))]
    {
        use rehydrate_nbd::PositionalIo;
        let Some(first) = slices.iter().find(|s| !s.is_empty()) else {
            return Ok(0);
        };
        file.write_all_at(first, at)?;
        Ok(first.len())
    }
}

/// Asks the kernel to start writing `[offset, offset + len)` out now without waiting
/// (`POSIX_FADV_DONTNEED` starts writeback of dirty pages). A hint; nothing elsewhere.
pub(super) fn start_writeback(file: &File, offset: u64, len: std::num::NonZeroU64) {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
    }
}

/// What an I/O that must not wait did.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(super) enum Nowait {
    /// This many bytes moved.
    Done(usize),
    /// A signal came first: try again.
    Interrupted,
    /// It would have had to wait: do it where waiting is fine.
    WouldWait,
    /// This file (or system) cannot do I/O without waiting.
    Unsupported,
}

#[cfg(target_os = "linux")]
fn nowait(result: rustix::io::Result<usize>) -> std::io::Result<Nowait> {
    use rustix::io::Errno;
    match result {
        Ok(n) => Ok(Nowait::Done(n)),
        Err(Errno::INTR) => Ok(Nowait::Interrupted),
        Err(Errno::AGAIN) => Ok(Nowait::WouldWait),
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => Ok(Nowait::Unsupported),
        Err(e) => Err(e.into()),
    }
}

/// Reads at `at` only from the page cache (`preadv2` with `RWF_NOWAIT`).
pub(super) fn pread_nowait(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<Nowait> {
    #[cfg(target_os = "linux")]
    {
        use rustix::io::ReadWriteFlags;
        let mut slice = [std::io::IoSliceMut::new(buf)];
        nowait(rustix::io::preadv2(
            file,
            &mut slice,
            at,
            ReadWriteFlags::NOWAIT,
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, buf, at);
        Ok(Nowait::Unsupported)
    }
}

/// Writes at `at` only if no waiting is needed (`pwritev2` with `RWF_NOWAIT`).
pub(super) fn pwrite_nowait(file: &File, buf: &[u8], at: u64) -> std::io::Result<Nowait> {
    #[cfg(target_os = "linux")]
    {
        use rustix::io::ReadWriteFlags;
        let slice = [std::io::IoSlice::new(buf)];
        nowait(rustix::io::pwritev2(
            file,
            &slice,
            at,
            ReadWriteFlags::NOWAIT,
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, buf, at);
        Ok(Nowait::Unsupported)
    }
}
