//! The metadata store over a file (`PATH.rehydrate-meta` by default): the driver's narrow
//! `MetaStore` trait with positioned reads and writes and `fdatasync` as the flush.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rehydrate_driver::meta::{MetaStore, StoreError, META_PAGE_SIZE_BYTES};
use rehydrate_nbd::PositionalIo;

/// A metadata store in a regular file.
pub struct FileMetaStore {
    file: File,
    page_count: u64,
    /// Opened only to read (the file is another writer's): writes are refused and a
    /// flush has nothing to do.
    read_only: bool,
    /// This handle holds the run's lock: taking it again is a no-op (a Windows lock is
    /// not re-entrant, even on its own handle).
    locked: std::sync::atomic::AtomicBool,
}

fn device(e: &std::io::Error) -> StoreError {
    StoreError::Device {
        code: e.raw_os_error().map_or(u32::MAX, |c| c as u32),
    }
}

impl FileMetaStore {
    /// Takes the run's exclusive lock on the file (see `lock.rs`).
    pub fn lock(&self, path: &Path) -> Result<(), crate::ServiceError> {
        use std::sync::atomic::Ordering;
        if self.locked.load(Ordering::Acquire) {
            return Ok(());
        }
        super::lock::lock_exclusive(&self.file, path)?;
        self.locked.store(true, Ordering::Release);
        Ok(())
    }

    /// Opens the existing metadata at `path` (`create_pages: None`, not locked yet: the
    /// caller first checks it is not the target, which it has locked), or creates a new
    /// file of that many pages, locked (never over an existing one).
    pub fn open_unchecked(
        path: &Path,
        create_pages: Option<u64>,
    ) -> Result<FileMetaStore, crate::ServiceError> {
        let io = |op| {
            move |source| crate::ServiceError::MetaIo {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if create_pages.is_some() {
            options.create_new(true);
        }
        let file = options.open(path).map_err(io(if create_pages.is_some() {
            "create"
        } else {
            "open"
        }))?;
        if let Some(pages) = create_pages {
            super::lock::lock_exclusive(&file, path)?;
            file.set_len(pages * META_PAGE_SIZE_BYTES as u64)
                .map_err(io("size"))?;
        }
        let page_count =
            file.metadata().map_err(io("inspect"))?.len() / META_PAGE_SIZE_BYTES as u64;
        Ok(FileMetaStore {
            file,
            page_count,
            read_only: false,
            locked: create_pages.is_some().into(),
        })
    }

    /// Opens the existing metadata at `path` to read it only: on Windows, the file the
    /// filter has open for writing while its volume runs.
    pub fn open_read_only(path: &Path) -> std::io::Result<FileMetaStore> {
        let file = OpenOptions::new().read(true).open(path)?;
        let page_count = file.metadata()?.len() / META_PAGE_SIZE_BYTES as u64;
        Ok(FileMetaStore {
            file,
            page_count,
            read_only: true,
            locked: false.into(),
        })
    }

    /// The open file, for identity checks.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Opens `path`, creating it when `create`; a created or short file is sized to
    /// `page_count` pages (zeros).
    pub fn open(path: &Path, page_count: u64, create: bool) -> std::io::Result<FileMetaStore> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        let want = page_count * META_PAGE_SIZE_BYTES as u64;
        let len = file.metadata()?.len();
        if create && len < want {
            file.set_len(want)?;
        }
        let page_count = file.metadata()?.len() / META_PAGE_SIZE_BYTES as u64;
        Ok(FileMetaStore {
            file,
            page_count,
            read_only: false,
            locked: false.into(),
        })
    }
}

impl MetaStore for FileMetaStore {
    fn page_count(&self) -> u64 {
        self.page_count
    }

    fn read_page(&mut self, index: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        if index >= self.page_count {
            return Err(StoreError::OutOfRange {
                index,
                page_count: self.page_count,
            });
        }
        self.file
            .read_exact_at(buf, index * META_PAGE_SIZE_BYTES as u64)
            .map_err(|e| device(&e))
    }

    fn write_page(&mut self, index: u64, buf: &[u8]) -> Result<(), StoreError> {
        if self.read_only {
            return Err(device(&std::io::Error::from(
                std::io::ErrorKind::PermissionDenied,
            )));
        }
        if index >= self.page_count {
            return Err(StoreError::OutOfRange {
                index,
                page_count: self.page_count,
            });
        }
        self.file
            .write_all_at(buf, index * META_PAGE_SIZE_BYTES as u64)
            .map_err(|e| device(&e))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| device(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rehydrate_driver::meta::{Identity, Metadata};
    use rehydrate_driver::RegionMap;

    #[test]
    fn commits_survive_reopening_and_other_restores_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let id = Identity {
            volume_size_bytes: 1 << 20,
            region_size_bytes: 4096,
            backup_id: [1; 32],
        };
        let g = id.geometry().unwrap();
        let mut store = FileMetaStore::open(&path, Metadata::store_pages(&g), true).unwrap();
        let mut meta = Metadata::create(&mut store, &id).unwrap();
        meta.note_marked(3..5);
        meta.commit(&mut store, |w| if w == 0 { 0b11000 } else { 0 })
            .unwrap();
        drop(store);
        let mut store = FileMetaStore::open(&path, 0, false).unwrap();
        let map = RegionMap::new(g).unwrap();
        Metadata::open(&mut store, &id, &map).unwrap();
        assert_eq!(map.restored_count(), 2);
        let other = Identity {
            backup_id: [2; 32],
            ..id
        };
        assert!(Metadata::open(&mut store, &other, &RegionMap::new(g).unwrap()).is_err());

        // Read only: the marks load, nothing can be written.
        let mut reader = FileMetaStore::open_read_only(&path).unwrap();
        let map = RegionMap::new(g).unwrap();
        let mut meta = Metadata::open(&mut reader, &id, &map).unwrap();
        assert_eq!(map.restored_count(), 2);
        meta.note_marked(7..8);
        assert!(meta.commit(&mut reader, |_| 0b1_1000_0000).is_err());
    }
}
