//! Exclusive locks on the target and the metadata for the whole run, so two restores
//! of one target never run side by side (both would fetch everything, and with two
//! sources they would race). The lock lives as long as the file handle; a killed
//! process releases it with its descriptors, so a rerun after `kill -9` is not blocked.
//!
//! Unix: `flock(LOCK_EX | LOCK_NB)`; the holder's pid is read from `/proc/locks` (Linux),
//! which the kernel keeps for every lock, so nothing has to be written to say who holds
//! it. Other systems: no lock yet (a Windows port takes `LockFileEx` here).

use std::fs::File;
use std::path::Path;

use crate::error::ServiceError;

/// Takes an exclusive lock on `file` (opened from `path`) or says who holds it.
pub fn lock_exclusive(file: &File, path: &Path) -> Result<(), ServiceError> {
    imp::lock_exclusive(file).map_err(|holder| ServiceError::Locked {
        path: path.to_owned(),
        holder,
    })
}

#[cfg(unix)]
mod imp {
    use std::fs::File;

    use rustix::fs::{flock, FlockOperation};

    /// `Err(holder pid, if known)` when another open file holds the lock.
    pub fn lock_exclusive(file: &File) -> Result<(), Option<u32>> {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(()),
            Err(_) => Err(super::holder::of(file)),
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use std::fs::File;

    pub fn lock_exclusive(_file: &File) -> Result<(), Option<u32>> {
        Ok(())
    }
}

#[cfg(unix)]
mod holder {
    use std::fs::File;
    use std::os::unix::fs::MetadataExt;

    /// The pid holding an flock on `file`, from `/proc/locks` (Linux); `None` elsewhere
    /// or when it cannot be told.
    pub fn of(file: &File) -> Option<u32> {
        let meta = file.metadata().ok()?;
        let dev = meta.dev();
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        find(
            &locks,
            rustix::fs::major(dev),
            rustix::fs::minor(dev),
            meta.ino(),
        )
    }

    /// Parses `/proc/locks` lines such as `1: FLOCK  ADVISORY  WRITE 4711 fd:01:1234 0 EOF`
    /// (device numbers in hex, inode in decimal) and returns the pid of a `FLOCK` on
    /// the inode: on the same device if one is listed, else on any (overlay and btrfs
    /// report another device number than `stat`). Lines of waiters (`->`) are skipped.
    pub fn find(locks: &str, major: u32, minor: u32, inode: u64) -> Option<u32> {
        let mut any_device = None;
        for line in locks.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, kind, _, _, pid, id, ..] = fields.as_slice() else {
                continue;
            };
            if *kind != "FLOCK" {
                continue;
            }
            let mut parts = id.split(':');
            let (Some(maj), Some(min), Some(ino), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(maj), Ok(min), Ok(ino), Ok(pid)) = (
                u32::from_str_radix(maj, 16),
                u32::from_str_radix(min, 16),
                ino.parse::<u64>(),
                pid.parse::<u32>(),
            ) else {
                continue;
            };
            if ino != inode {
                continue;
            }
            if (maj, min) == (major, minor) {
                return Some(pid);
            }
            any_device.get_or_insert(pid);
        }
        any_device
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn finds_the_pid_of_a_flock_on_the_inode() {
            let locks = "1: POSIX  ADVISORY  WRITE 10 fd:01:99 0 EOF\n\
                         2: FLOCK  ADVISORY  WRITE 4711 fd:01:99 0 EOF\n\
                         2: -> FLOCK  ADVISORY  WRITE 12 fd:01:99 0 EOF\n\
                         3: FLOCK  ADVISORY  WRITE 13 00:2d:99 0 EOF\n\
                         garbage\n4: FLOCK ADVISORY WRITE x fd:01:99 0 EOF\n";
            assert_eq!(find(locks, 0xfd, 1, 99), Some(4711));
            assert_eq!(find(locks, 0x08, 1, 99), Some(4711));
            assert_eq!(find(locks, 0, 0x2d, 99), Some(13));
            assert_eq!(find(locks, 0xfd, 1, 98), None);
            assert_eq!(find("", 0, 0, 1), None);
        }
    }
}

#[cfg(not(unix))]
mod holder {}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_is_refused_with_our_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, b"x").unwrap();
        let first = File::open(&path).unwrap();
        lock_exclusive(&first, &path).unwrap();
        let second = File::open(&path).unwrap();
        match lock_exclusive(&second, &path) {
            Err(ServiceError::Locked { holder, .. }) => {
                if std::path::Path::new("/proc/locks").exists() {
                    assert_eq!(holder, Some(std::process::id()));
                }
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        lock_exclusive(&second, &path).unwrap();
    }
}
