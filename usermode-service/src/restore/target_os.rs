//! What a restore target does differently on Unix and Windows: recognising a block
//! device, punching a hole instead of writing zeros, and finding holes.

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
