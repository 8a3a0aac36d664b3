//! Exclusive locks on the target and the metadata for the whole run, so two restores
//! of one target never run side by side (both would fetch everything, and with two
//! sources they would race). The lock lives as long as the file handle; a killed
//! process releases it with its descriptors, so a rerun after `kill -9` is not blocked.
//!
//! Unix: `flock(LOCK_EX | LOCK_NB)`; the holder's pid is read from `/proc/locks` (Linux),
//! which the kernel keeps for every lock, so nothing has to be written to say who holds
//! it.
//!
//! Windows: `LockFileEx(EXCLUSIVE | FAIL_IMMEDIATELY)` of one byte at [`WINDOWS_LOCK_BYTE`],
//! far past any data. Windows byte-range locks are mandatory, so a lock over the data
//! would make every read through another handle fail (`rehydrate status --metadata`
//! reads beside the writer); a lock on a byte nobody reads or writes excludes a second
//! locker and nothing else. (`std::fs::File::try_lock` locks the whole range, hence the
//! call by hand.) Windows cannot say who holds it.

use std::fs::File;
use std::path::Path;

use crate::error::ServiceError;

/// Takes an exclusive lock on `file` (opened from `path`) or says who holds it.
pub fn lock_exclusive(file: &File, path: &Path) -> Result<(), ServiceError> {
    try_lock_exclusive(file).map_err(|holder| ServiceError::Locked {
        path: path.to_owned(),
        holder,
    })
}

/// Who holds a lock, as error messages say it.
pub fn held_by(holder: &Option<u32>) -> String {
    holder.map_or("its pid is unknown".to_string(), |pid| format!("pid {pid}"))
}

/// Takes an exclusive lock on `file`, held as long as the file is open; `Err(holder pid,
/// if known)` when another open file holds it.
pub fn try_lock_exclusive(file: &File) -> Result<(), Option<u32>> {
    imp::lock_exclusive(file)
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

/// The byte the Windows lock covers: 2^62, past the end of any file we lock and inside
/// the signed 64-bit offsets `NtLockFile` accepts.
#[cfg(windows)]
pub const WINDOWS_LOCK_BYTE: u64 = 1 << 62;

#[cfg(windows)]
#[allow(unsafe_code)] // one Win32 call; std has no lock of a single byte
mod imp {
    use std::fs::File;
    use std::os::windows::io::AsRawHandle;

    use windows_sys::Win32::Storage::FileSystem::{
        LockFileEx, LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY,
    };
    use windows_sys::Win32::System::IO::OVERLAPPED;

    /// `Err(None)` when another open file holds the lock (Windows cannot say whose).
    pub fn lock_exclusive(file: &File) -> Result<(), Option<u32>> {
        // SAFETY: OVERLAPPED is plain data; all zeros is its documented initial state.
        let mut at: OVERLAPPED = unsafe { std::mem::zeroed() };
        at.Anonymous.Anonymous.Offset = super::WINDOWS_LOCK_BYTE as u32;
        at.Anonymous.Anonymous.OffsetHigh = (super::WINDOWS_LOCK_BYTE >> 32) as u32;
        // SAFETY: the handle is open for the call (borrowed from `file`), `at` outlives
        // it, and with FAIL_IMMEDIATELY on a synchronous handle the call does not pend.
        let locked = unsafe {
            LockFileEx(
                file.as_raw_handle(),
                LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY,
                0,
                1,
                0,
                &mut at,
            )
        };
        if locked != 0 {
            Ok(())
        } else {
            Err(None)
        }
    }
}

#[cfg(not(any(unix, windows)))]
mod imp {
    use std::fs::File;

    /// No lock on other systems: the service is built for Unix and Windows only.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_is_refused_with_our_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, b"x").unwrap();
        let first = File::options().read(true).write(true).open(&path).unwrap();
        lock_exclusive(&first, &path).unwrap();
        let second = File::options().read(true).write(true).open(&path).unwrap();
        match lock_exclusive(&second, &path) {
            Err(ServiceError::Locked { holder, .. }) => {
                // Linux only: a Windows build under wine sees a /proc/locks too.
                if cfg!(target_os = "linux") {
                    assert_eq!(holder, Some(std::process::id()));
                }
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        // The lock excludes lockers only: the data reads and writes through another
        // handle as before (Windows locks are mandatory, hence the far byte there).
        use rehydrate_nbd::PositionalIo as _;
        let mut byte = [0u8; 1];
        second.read_exact_at(&mut byte, 0).unwrap();
        assert_eq!(&byte, b"x");
        second.write_all_at(b"y", 0).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"y");
        drop(first);
        lock_exclusive(&second, &path).unwrap();
    }
}
