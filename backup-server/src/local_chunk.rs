//! Storing a new chunk in a local store in one blocking call: encode, write a temporary
//! file, start its writeback, hard-link it into place, remove the temporary name.
//!
//! The same steps `object_store`'s local put takes (a temporary file `PATH#N`, created
//! exclusively, then `link` so that an existing chunk is never replaced), done on one
//! thread with one open of the file instead of a hop per step (compress on the CPU
//! pool, put on the blocking pool, reopen for the writeback hint): a first backup stores
//! every chunk, and each hop costs a wake-up on a busy machine.
//!
//! Durability is not this call's business: [`crate::store::ChunkStore::sync_chunks`]
//! fsyncs the file and its directory before any index names the chunk.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::chunk;
use crate::store::PutOutcome;

/// Temporary names tried before giving up (each taken by a concurrent writer of the
/// same chunk, or left by a killed one).
const MAX_STAGING_NAMES: u32 = 1024;

/// Encodes `data` (see [`chunk::encode`]) and stores it at `path` unless a file is
/// already there; the outcome and the stored size in bytes.
pub(crate) fn put(path: &Path, data: Bytes) -> io::Result<(PutOutcome, u64)> {
    let encoded = chunk::encode(data);
    let stored = encoded.stored_len();
    let (mut file, staging) = create_staging(path)?;
    let linked = file
        .write_all(&[encoded.encoding])
        .and_then(|()| file.write_all(&encoded.body))
        .and_then(|()| {
            // The data starts going to disk now, so the fsync before publishing finds
            // little left to write.
            crate::os::start_writeback(&file);
            match std::fs::hard_link(&staging, path) {
                Ok(()) => Ok(PutOutcome::Written),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyStored),
                Err(e) => Err(e),
            }
        });
    // The temporary name goes whatever happened (the chunk keeps its own name).
    let removed = std::fs::remove_file(&staging);
    let outcome = linked?;
    removed?;
    Ok((outcome, stored))
}

/// A stored chunk's size in bytes and first byte (its encoding; `None` when empty), or
/// `None` when there is no such file.
pub(crate) fn head(path: &Path) -> io::Result<Option<(u64, Option<u8>)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let mut first = [0u8; 1];
    let read = io::Read::read(&mut file, &mut first)?;
    Ok(Some((size, (read == 1).then_some(first[0]))))
}

/// A new, empty temporary file `PATH#N` beside `path` (its directory made if missing).
pub(crate) fn create_staging(path: &Path) -> io::Result<(File, PathBuf)> {
    for n in 1..=MAX_STAGING_NAMES {
        let mut name = path.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let staging = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(file) => return Ok((file, staging)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let dir = path.parent().ok_or(e)?;
                std::fs::create_dir_all(dir)?;
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&staging);
                match file {
                    Ok(file) => return Ok((file, staging)),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        ErrorKind::AlreadyExists,
        format!(
            "{MAX_STAGING_NAMES} temporary names beside {} are taken",
            path.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_once_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunks").join("ab").join("c");
        let data = Bytes::from(vec![7u8; 100_000]);
        let (outcome, stored) = put(&path, data.clone()).unwrap();
        assert_eq!(outcome, PutOutcome::Written);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len() as u64, stored);
        let hash = chunk::ChunkHash::of(&data);
        assert_eq!(chunk::decode(&hash, &on_disk, data.len()).unwrap(), data);

        // A second store of the same name keeps the first file; a left-over temporary
        // name from a killed writer is stepped over.
        std::fs::write(dir.path().join("chunks/ab/c#1"), b"junk").unwrap();
        assert_eq!(
            head(&path).unwrap(),
            Some((stored, Some(on_disk[0]))),
            "size and encoding"
        );
        assert_eq!(head(&dir.path().join("chunks/ab/none")).unwrap(), None);
        let (again, _) = put(&path, Bytes::from(vec![9u8; 10])).unwrap();
        assert_eq!(again, PutOutcome::AlreadyStored);
        assert_eq!(std::fs::read(&path).unwrap(), on_disk);
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("chunks/ab"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["c", "c#1"],
            "only the killed writer's file is left"
        );
    }
}
