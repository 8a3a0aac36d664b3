//! What the metadata records to know a target again (see `TargetKind` in the driver's
//! `meta::binding`): a file by device, inode and birth time, a block device by device
//! number and size. A file deleted and recreated under the same name, or metadata
//! pointed at another file or device, no longer matches and is refused.

use std::fs::File;

use rehydrate_driver::meta::TargetPin;

/// The pin of the open target `file` of `size_bytes`.
#[cfg(unix)]
pub fn pin(file: &File, size_bytes: u64) -> std::io::Result<TargetPin> {
    use rehydrate_driver::meta::{TargetKind, TARGET_ID_BYTES};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = file.metadata()?;
    let mut id = [0u8; TARGET_ID_BYTES];
    let kind = if meta.file_type().is_block_device() {
        id[..8].copy_from_slice(&meta.rdev().to_le_bytes());
        id[8..16].copy_from_slice(&size_bytes.to_le_bytes());
        TargetKind::UnixBlockDevice
    } else {
        // Birth time tells a recreated file from the old one when its inode number is
        // reused; file systems without it record zero (then device and inode decide).
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        id[..8].copy_from_slice(&meta.dev().to_le_bytes());
        id[8..16].copy_from_slice(&meta.ino().to_le_bytes());
        id[16..24].copy_from_slice(&born.as_secs().to_le_bytes());
        id[24..28].copy_from_slice(&born.subsec_nanos().to_le_bytes());
        TargetKind::UnixFile
    };
    Ok(TargetPin { kind, id })
}

/// No identity is recorded where there is no Unix one yet (a Windows port records the
/// volume GUID here).
#[cfg(not(unix))]
pub fn pin(_file: &File, _size_bytes: u64) -> std::io::Result<TargetPin> {
    Ok(TargetPin::UNRECORDED)
}

/// Whether two open files are the same file (same device and inode).
#[cfg(unix)]
pub fn same_file(a: &File, b: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// Without inode numbers, paths compared by the caller are all there is.
#[cfg(not(unix))]
pub fn same_file(_a: &File, _b: &File) -> std::io::Result<bool> {
    Ok(false)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use rehydrate_driver::meta::TargetKind;

    #[test]
    fn a_recreated_file_has_another_pin_and_the_same_file_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, b"x").unwrap();
        let first = pin(&File::open(&p).unwrap(), 1).unwrap();
        assert_eq!(first.kind, TargetKind::UnixFile);
        assert_eq!(pin(&File::open(&p).unwrap(), 1).unwrap(), first);
        let link = dir.path().join("link");
        std::fs::hard_link(&p, &link).unwrap();
        assert!(same_file(&File::open(&p).unwrap(), &File::open(&link).unwrap()).unwrap());
        let other = dir.path().join("other");
        std::fs::write(&other, b"y").unwrap();
        assert_ne!(pin(&File::open(&other).unwrap(), 1).unwrap(), first);
        assert!(!same_file(&File::open(&p).unwrap(), &File::open(&other).unwrap()).unwrap());
    }
}
