//! Positioned file I/O that never moves a shared cursor, on Unix and Windows alike:
//! [`PositionalIo`] for `std::fs::File`. Unix has `pread`/`pwrite` (std's
//! `std::os::unix::fs::FileExt`); Windows has `ReadFile`/`WriteFile` with an offset in
//! the `OVERLAPPED` (`std::os::windows::fs::FileExt::seek_read`/`seek_write`), which
//! may transfer less than asked, so the whole-buffer forms loop here.
//!
//! The export, the backup reader and the restore target all read and write at offsets
//! from several threads at once through one handle; this is the one place that knows
//! how each platform does that.

use std::fs::File;
use std::io;

/// Whole-buffer reads and writes at an offset.
pub trait PositionalIo {
    /// Fills `buf` from `offset`; `UnexpectedEof` if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

#[cfg(unix)]
impl PositionalIo for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
}

#[cfg(windows)]
impl PositionalIo for File {
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        // Bounded: every turn either consumes bytes or returns.
        while !buf.is_empty() {
            match self.seek_read(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ends before the range read",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        // Bounded: every turn either consumes bytes or returns.
        while !buf.is_empty() {
            match self.seek_write(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `IOV_MAX` on Linux: a vectored write of more slices is refused.
#[cfg(unix)]
const SLICES_MAX: usize = 1024;

/// Writes `parts` one after the other from `offset`, with as few system calls as the
/// platform allows: `pwritev` of up to [`SLICES_MAX`] parts at a time on Unix (a run of
/// adjacent buffers reaches the file in one call, under one acquisition of its lock);
/// one part at a time elsewhere.
pub fn write_all_vectored_at(file: &File, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
    #[cfg(unix)]
    {
        let mut slices: Vec<io::IoSlice<'_>> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| io::IoSlice::new(p))
            .collect();
        let mut slices = &mut slices[..];
        let mut at = offset;
        // Bounded: each turn writes at least one byte or fails.
        while !slices.is_empty() {
            let n = slices.len().min(SLICES_MAX);
            match rustix::io::pwritev(file, &slices[..n], at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    at += written as u64;
                    io::IoSlice::advance_slices(&mut slices, written);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let mut at = offset;
        for part in parts {
            file.write_all_at(part, at)?;
            at += part.len() as u64;
        }
        Ok(())
    }
}

/// What an I/O that must not wait did.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub enum Nowait {
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
fn nowait(result: rustix::io::Result<usize>) -> io::Result<Nowait> {
    use rustix::io::Errno;
    match result {
        Ok(n) => Ok(Nowait::Done(n)),
        Err(Errno::INTR) => Ok(Nowait::Interrupted),
        Err(Errno::AGAIN) => Ok(Nowait::WouldWait),
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => Ok(Nowait::Unsupported),
        Err(e) => Err(e.into()),
    }
}

/// Reads at `at` only from the page cache (`preadv2` with `RWF_NOWAIT`; elsewhere
/// always [`Nowait::Unsupported`]).
pub fn pread_nowait(file: &File, buf: &mut [u8], at: u64) -> io::Result<Nowait> {
    #[cfg(target_os = "linux")]
    {
        use rustix::io::ReadWriteFlags;
        let mut slice = [io::IoSliceMut::new(buf)];
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

/// Writes at `at` only if no waiting is needed (`pwritev2` with `RWF_NOWAIT`;
/// elsewhere always [`Nowait::Unsupported`]).
pub fn pwrite_nowait(file: &File, buf: &[u8], at: u64) -> io::Result<Nowait> {
    #[cfg(target_os = "linux")]
    {
        use rustix::io::ReadWriteFlags;
        let slice = [io::IoSlice::new(buf)];
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

/// Fills `buf` from `at` as far as the page cache holds it, without waiting: how many
/// bytes it filled (all of `buf` when it was cached; fewer when a page is not, the file
/// ends, or the system cannot tell without waiting). The rest is the caller's to read
/// where waiting is fine.
pub fn read_cached_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut done = 0usize;
    // Bounded: every turn consumes bytes, or is interrupted by a signal, or returns.
    while done < buf.len() {
        match pread_nowait(file, &mut buf[done..], at + done as u64)? {
            Nowait::Done(0) | Nowait::WouldWait | Nowait::Unsupported => break,
            Nowait::Done(n) => done += n,
            Nowait::Interrupted => {}
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_at_offsets_and_refuses_reading_past_the_end() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(b"world", 6).unwrap();
        file.write_all_at(b"hello ", 0).unwrap();
        let mut buf = [0u8; 11];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello world");
        let mut tail = [0u8; 4];
        let past = file.read_exact_at(&mut tail, 9).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
        let mut mid = [0u8; 3];
        file.read_exact_at(&mut mid, 4).unwrap();
        assert_eq!(&mid, b"o w");
    }

    #[test]
    fn a_vectored_write_puts_every_part_in_place_one_after_the_other() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&[9u8; 64], 0).unwrap();
        let big = vec![7u8; 3 * 4096 + 5];
        let parts: Vec<&[u8]> = vec![b"ab", b"", &big, b"c"];
        write_all_vectored_at(&file, 3, &parts).unwrap();
        let mut got = vec![0u8; 3 + 2 + big.len() + 1];
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got[..3], &[9, 9, 9]);
        assert_eq!(&got[3..5], b"ab");
        assert_eq!(&got[5..5 + big.len()], &big[..]);
        assert_eq!(got[5 + big.len()], b'c');
        // More parts than one call takes (1024 on Linux).
        let many: Vec<[u8; 1]> = (0..2 * 1024 + 3).map(|i| [(i % 256) as u8]).collect();
        let parts: Vec<&[u8]> = many.iter().map(|p| &p[..]).collect();
        write_all_vectored_at(&file, 100, &parts).unwrap();
        let mut got = vec![0u8; many.len()];
        file.read_exact_at(&mut got, 100).unwrap();
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 256) as u8));
    }

    #[test]
    fn a_cached_read_fills_what_the_page_cache_holds_and_stops_at_the_end() {
        let file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&data, 0).unwrap();
        // Just written, so cached: all of it where the system can tell, else nothing.
        let mut buf = vec![0u8; data.len()];
        let filled = read_cached_at(&file, &mut buf, 0).unwrap();
        assert!(filled == data.len() || (filled == 0 && !cfg!(target_os = "linux")));
        assert_eq!(buf[..filled], data[..filled]);
        // Past the end: only what is there.
        let mut tail = vec![0u8; 8192];
        let filled = read_cached_at(&file, &mut tail, data.len() as u64 - 100).unwrap();
        assert!(filled <= 100);
        assert_eq!(tail[..filled], data[data.len() - 100..][..filled]);
    }
}
