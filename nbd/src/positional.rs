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
}
