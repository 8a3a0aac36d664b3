//! The metadata must never be the target itself (`--target X --metadata X`, or the same
//! file spelled another way, or a hard link): the restore would overwrite one with the
//! other and report success. Checked by path before anything exists, and by device and
//! inode once both are open, before anything is written.

use std::path::{Path, PathBuf};

use super::meta_file::FileMetaStore;
use super::target::Target;
use crate::error::ServiceError;

/// Refuses a metadata path that names the target, however it is spelled.
pub fn check_distinct(target: &Path, metadata: &Path) -> Result<(), ServiceError> {
    if normalized(target) == normalized(metadata) {
        return Err(ServiceError::MetadataIsTarget {
            target: target.to_owned(),
            metadata: metadata.to_owned(),
        });
    }
    Ok(())
}

/// Refuses an open metadata file that is the open target (same device and inode).
pub fn check_not_same(
    target: &Target,
    store: &FileMetaStore,
    metadata: &Path,
) -> Result<(), ServiceError> {
    let same = super::target_id::same_file(target.file(), store.file()).map_err(|source| {
        ServiceError::TargetIo {
            op: "inspect",
            path: target.path().to_owned(),
            source,
        }
    })?;
    if same {
        return Err(ServiceError::MetadataIsTarget {
            target: target.path().to_owned(),
            metadata: metadata.to_owned(),
        });
    }
    Ok(())
}

/// The path with its directory resolved (symlinks, `..`, `.`) where it exists, so two
/// spellings of one file compare equal even before the file is created.
fn normalized(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn two_spellings_of_one_path_are_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        let spelled = dir.path().join("sub/../t");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(check_distinct(&t, &spelled).is_err());
        assert!(check_distinct(&t, &dir.path().join("./t")).is_err());
        assert!(check_distinct(&t, &dir.path().join("t.meta")).is_ok());
        std::fs::write(&t, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&t, &link).unwrap();
        assert!(check_distinct(&t, &link).is_err());
    }
}
