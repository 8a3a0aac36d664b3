//! The two things a restore target does differently on Unix and Windows: recognising a
//! block device, and punching a hole instead of writing zeros.

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
