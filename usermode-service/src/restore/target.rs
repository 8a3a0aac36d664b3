//! The restore target: a regular file (created at the source size when missing) or a
//! block device, locked for the whole run and checked to fit before anything is written.
//!
//! Sizes: a file ends exactly where the source ends, whatever its size. The engine works
//! in whole 512-byte sectors, so it may track a padded last sector; [`Target`] clips
//! every write at `end_bytes`, so the padding never reaches the file. Block devices are
//! always whole sectors, as are Windows volumes.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rehydrate_driver::meta::TargetPin;
use rehydrate_nbd::PositionalIo;

use super::lock::lock_exclusive;
use crate::error::ServiceError;

/// An opened, locked target.
#[derive(Debug)]
pub struct Target {
    file: File,
    path: PathBuf,
    regular: bool,
    /// Size of the file or device when opened.
    size_bytes: u64,
    /// Writes are clipped here: the source's exact size.
    end_bytes: u64,
    /// The file did not exist and was created for this restore.
    pub created: bool,
    inline: InlineWrites,
}

/// Most extents one [`Target::allocation`] call reports.
pub const ALLOCATION_STEPS_MAX: usize = 4096;

/// Largest zero buffer written at once where holes cannot be punched.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Largest write [`Target::write_at_now`] does on the caller's thread without
/// `RWF_NOWAIT`.
pub const INLINE_WRITE_MAX_BYTES: u64 = 64 << 10;
/// The page size those writes must be aligned to (whole pages: nothing to read first).
const INLINE_WRITE_PAGE_BYTES: u64 = 4096;
/// A write on the caller's thread slower than this means the kernel makes writers wait.
pub const INLINE_WRITE_SLOW: std::time::Duration = std::time::Duration::from_millis(1);
/// How long writes then go to the pool.
pub const INLINE_WRITE_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`Target::write_at_now`] learned about this target.
#[derive(Debug)]
struct InlineWrites {
    /// `RWF_NOWAIT` buffered writes are worth trying (until the file system refuses).
    nowait: AtomicBool,
    /// Writes go to the pool until then (ns since `opened`).
    paused_until_ns: AtomicU64,
    opened: std::time::Instant,
}

impl Default for InlineWrites {
    fn default() -> Self {
        InlineWrites {
            nowait: AtomicBool::new(true),
            paused_until_ns: AtomicU64::new(0),
            opened: std::time::Instant::now(),
        }
    }
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ServiceError + 'a {
    move |source| ServiceError::TargetIo {
        op,
        path: path.to_owned(),
        source,
    }
}

impl Target {
    /// Opens and locks an existing target; `None` when there is none. Writes nothing.
    pub fn open_existing(path: &Path) -> Result<Option<Target>, ServiceError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path, "inspect")(e)),
        };
        if !(meta.is_file() || super::target_os::is_block_device(&meta)) {
            return Err(ServiceError::TargetKind(path.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path, "open"))?;
        lock_exclusive(&file, path)?;
        let mut probe = &file;
        // Seeking to the end also sizes block devices, whose metadata length is 0.
        let size_bytes = probe.seek(SeekFrom::End(0)).map_err(io(path, "measure"))?;
        Ok(Some(Target {
            file,
            path: path.to_owned(),
            regular: meta.is_file(),
            size_bytes,
            end_bytes: size_bytes,
            created: false,
            inline: InlineWrites::default(),
        }))
    }

    /// Creates, locks and sizes a new file of `size_bytes`; an existing file is an error
    /// (never truncated).
    pub fn create(path: &Path, size_bytes: u64) -> Result<Target, ServiceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io(path, "create"))?;
        lock_exclusive(&file, path)?;
        file.set_len(size_bytes).map_err(io(path, "size"))?;
        Ok(Target {
            file,
            path: path.to_owned(),
            regular: true,
            size_bytes,
            end_bytes: size_bytes,
            created: true,
            inline: InlineWrites::default(),
        })
    }

    /// Checks the target fits a source of `source_bytes` and clips writes there. A
    /// smaller target is refused; a larger one too unless `force` (the rest would be
    /// left as it is, which is normal for a block device and a surprise for a file).
    pub fn fit(&mut self, source_bytes: u64, force: bool) -> Result<(), ServiceError> {
        if self.size_bytes < source_bytes {
            return Err(ServiceError::TargetTooSmall {
                path: self.path.clone(),
                size_bytes: self.size_bytes,
                needed_bytes: source_bytes,
            });
        }
        if self.size_bytes > source_bytes && !force {
            return Err(ServiceError::TargetTooLarge {
                path: self.path.clone(),
                size_bytes: self.size_bytes,
                needed_bytes: source_bytes,
                block_device: !self.regular,
            });
        }
        self.end_bytes = source_bytes;
        Ok(())
    }

    /// The target's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is a regular file (else a block device).
    pub fn is_regular(&self) -> bool {
        self.regular
    }

    /// The open file, for identity checks.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// What the metadata records to know this target again.
    pub fn pin(&self) -> Result<TargetPin, ServiceError> {
        super::target_id::pin(&self.file, self.size_bytes).map_err(io(&self.path, "inspect"))
    }

    /// `[offset, offset + len)` clipped at the end: the part that exists in the file.
    fn clipped(&self, offset: u64, len: u64) -> u64 {
        len.min(self.end_bytes.saturating_sub(offset))
    }

    /// Writes `data` at `offset` (what lies past the end is the padded last sector: dropped).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let keep = self.clipped(offset, data.len() as u64) as usize;
        self.file.write_all_at(&data[..keep], offset)
    }

    /// Writes `parts` one after the other from `offset`, with as few `pwritev` calls as
    /// the kernel allows (what lies past the end is the padded last sector: dropped).
    pub fn write_vectored_at(&self, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let mut keep = self.clipped(offset, total);
        // The parts cut at the end.
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(parts.len());
        for part in parts {
            let n = (part.len() as u64).min(keep) as usize;
            if n > 0 {
                pieces.push(&part[..n]);
            }
            keep -= n as u64;
        }
        rehydrate_nbd::positional::write_all_vectored_at(&self.file, offset, &pieces)
    }

    /// Asks the kernel to start writing `[offset, offset + len)` out now, without
    /// waiting. A hint: a failure changes nothing.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        let len = self.clipped(offset, len);
        if let Some(len) = std::num::NonZeroU64::new(len) {
            super::target_os::start_writeback(&self.file, offset, len);
        }
    }

    /// Waits until `[offset, offset + len)` is written out, then lets its pages leave
    /// the page cache. Not durability (the caller's `fdatasync` is): a hint that keeps
    /// the cache a restore fills small and its pages reused. A failure changes nothing.
    pub fn settle(&self, offset: u64, len: u64) {
        let len = self.clipped(offset, len);
        if let Some(len) = std::num::NonZeroU64::new(len) {
            super::target_os::settle(&self.file, offset, len);
        }
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past the end read as zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let keep = self.clipped(offset, buf.len() as u64) as usize;
        buf[keep..].fill(0);
        self.file.read_exact_at(&mut buf[..keep], offset)
    }

    /// Reads like [`Target::read_at`] but only if that needs no waiting (the data is in
    /// the page cache: `preadv2` with `RWF_NOWAIT`): `Ok(false)` when it would have to
    /// wait, so the caller does it on a thread that may block.
    pub fn read_at_now(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
        let keep = self.clipped(offset, buf.len() as u64) as usize;
        let (data, past_end) = buf.split_at_mut(keep);
        if rehydrate_nbd::positional::read_cached_at(&self.file, data, offset)? < keep {
            return Ok(false);
        }
        past_end.fill(0);
        Ok(true)
    }

    /// Writes like [`Target::write_at`] if that can be done without a hop to a thread
    /// that may block; `Ok(false)`: do it there (nothing was written, or a part that the
    /// caller writes again with the same bytes).
    ///
    /// - With `pwritev2(RWF_NOWAIT)`, where the file system supports it for buffered
    ///   writes (XFS; not ext4 as of Linux 6.18): written only if no waiting is needed.
    /// - Else small page-aligned writes ([`INLINE_WRITE_MAX_BYTES`]): they replace whole
    ///   pages, so the kernel reads nothing and only copies into the page cache. They
    ///   can still wait when the kernel throttles writers (too much dirty data); a write
    ///   that took longer than [`INLINE_WRITE_SLOW`] sends every write to the pool for
    ///   [`INLINE_WRITE_PAUSE`], so a throttled disk costs the caller one slow write.
    pub fn write_at_now(&self, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        use rehydrate_nbd::positional::{pwrite_nowait, Nowait};
        let keep = self.clipped(offset, data.len() as u64) as usize;
        if self.inline.nowait.load(Ordering::Relaxed) {
            let mut done = 0usize;
            while done < keep {
                match pwrite_nowait(&self.file, &data[done..keep], offset + done as u64)? {
                    Nowait::Done(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Nowait::Done(n) => done += n,
                    Nowait::Interrupted => continue,
                    Nowait::WouldWait => return Ok(false),
                    Nowait::Unsupported if done == 0 => {
                        self.inline.nowait.store(false, Ordering::Relaxed);
                        break;
                    }
                    Nowait::Unsupported => return Ok(false),
                }
            }
            if done == keep {
                return Ok(true);
            }
        }
        let page = INLINE_WRITE_PAGE_BYTES;
        let small = data.len() as u64 <= INLINE_WRITE_MAX_BYTES
            && offset % page == 0
            && (data.len() as u64 % page == 0 || offset + data.len() as u64 >= self.end_bytes);
        let now_ns = self.inline.opened.elapsed().as_nanos() as u64;
        if !small || now_ns < self.inline.paused_until_ns.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        self.write_at(offset, data)?;
        if started.elapsed() > INLINE_WRITE_SLOW {
            let until = now_ns + INLINE_WRITE_PAUSE.as_nanos() as u64;
            self.inline.paused_until_ns.store(until, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Makes `[offset, offset + len)` read as zeros: a punched hole in a regular file
    /// (no data written), else written zeros.
    pub fn zero(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let len = self.clipped(offset, len);
        if len == 0 {
            return Ok(());
        }
        if self.regular && super::target_os::punch_hole(&self.file, offset, len) {
            return Ok(());
        }
        let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(len as usize)];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Allocation of `[start, end)` as the file system reports it (`SEEK_DATA` and
    /// `SEEK_HOLE`): holes read as zeros. A block device is all data. At most
    /// [`ALLOCATION_STEPS_MAX`] extents; the rest is reported as data (always true).
    pub fn allocation(&self, start: u64, end: u64) -> std::io::Result<Vec<rehydrate_nbd::Extent>> {
        use rehydrate_nbd::Extent;
        let end = end.min(self.end_bytes);
        if !self.regular || start >= end {
            return Ok(vec![Extent::data(end.saturating_sub(start))]);
        }
        let mut out = Vec::new();
        let mut at = start;
        for _ in 0..ALLOCATION_STEPS_MAX {
            if at >= end {
                return Ok(out);
            }
            let Some((data, hole)) = super::target_os::next_data_run(&self.file, at)? else {
                out.push(Extent::hole(end - at));
                return Ok(out);
            };
            let data = data.clamp(at, end);
            if data > at {
                out.push(Extent::hole(data - at));
                at = data;
                continue;
            }
            let hole = hole.min(end).max(at + 1);
            out.push(Extent::data(hole - at));
            at = hole;
        }
        if at < end {
            out.push(Extent::data(end - at));
        }
        Ok(out)
    }

    /// Makes written data durable.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// A second handle on the same file, so a flush can run on another thread while
    /// writes go on (the engine only counts writes issued before the flush as covered).
    pub fn flusher(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_created_and_a_small_or_large_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        assert!(Target::open_existing(&p).unwrap().is_none());
        let mut t = Target::create(&p, 8192).unwrap();
        t.fit(8192, false).unwrap();
        assert!(t.created);
        t.write_at(0, &[1; 8192]).unwrap();
        t.zero(4096, 4096).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..4096], &[1; 4096][..]);
        assert_eq!(&bytes[4096..], &[0; 4096][..]);
        assert!(matches!(
            Target::create(&p, 1),
            Err(ServiceError::TargetIo { op: "create", .. })
        ));
        drop(t);
        let mut t = Target::open_existing(&p).unwrap().unwrap();
        assert!(matches!(
            t.fit(8193, false),
            Err(ServiceError::TargetTooSmall { .. })
        ));
        assert!(matches!(
            t.fit(8191, false),
            Err(ServiceError::TargetTooLarge {
                block_device: false,
                ..
            })
        ));
        t.fit(8191, true).unwrap();
        assert!(matches!(
            Target::open_existing(dir.path()),
            Err(ServiceError::TargetKind(_))
        ));
    }

    #[test]
    fn allocation_reports_holes_as_zero() {
        use rehydrate_nbd::Extent;
        let dir = tempfile::tempdir().unwrap();
        let mut t = Target::create(&dir.path().join("t"), 1 << 20).unwrap();
        t.fit(1 << 20, false).unwrap();
        t.write_at(256 << 10, &[1; 4096]).unwrap();
        let map = t.allocation(0, 1 << 20).unwrap();
        assert_eq!(map.iter().map(|e| e.length_bytes).sum::<u64>(), 1 << 20);
        // Where the file system keeps holes, the written block is data between holes.
        if map.len() > 1 {
            assert!(map[0].hole && map[0].zero);
            assert!(map.iter().any(|e| !e.hole));
        } else {
            assert_eq!(map, vec![Extent::data(1 << 20)]);
        }
    }

    #[test]
    fn vectored_writes_land_in_order_and_are_clipped_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let mut t = Target::create(&p, 5000).unwrap();
        t.fit(5000, false).unwrap();
        let parts: Vec<Vec<u8>> = (1..=3u8).map(|b| vec![b; 2048]).collect();
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        t.write_vectored_at(0, &slices).unwrap();
        t.start_writeback(0, 8192);
        // Written out and dropped from the cache: still the same bytes.
        t.settle(0, 8192);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 5000);
        assert_eq!(&bytes[..2048], &[1; 2048][..]);
        assert_eq!(&bytes[2048..4096], &[2; 2048][..]);
        assert_eq!(&bytes[4096..], &[3; 904][..]);
        // More slices than one call takes.
        let many: Vec<&[u8]> = (0..2000).map(|_| &[9u8][..]).collect();
        t.write_vectored_at(100, &many).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[100..2100], &[9; 2000][..]);
    }

    #[test]
    fn reads_and_writes_that_need_no_waiting_are_done_at_once_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let mut t = Target::create(&p, 10_000).unwrap();
        t.fit(10_000, false).unwrap();
        t.write_at(0, &[4; 10_000]).unwrap();
        // Just written: in the page cache, so no waiting is needed to read it.
        let mut buf = [0u8; 4096];
        if t.read_at_now(8192, &mut buf).unwrap() {
            assert_eq!(&buf[..1808], &[4; 1808][..]);
            assert_eq!(&buf[1808..], &[0; 2288][..], "past the end reads as zeros");
        }
        // A small write of whole pages is done here (clipped at the end)...
        assert!(t.write_at_now(8192, &[5; 4096]).unwrap());
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 10_000, "clipped at the end");
        assert_eq!(&bytes[8192..], &[5; 1808][..]);
        // ...one of part of a page, or a large one, only where the file system can
        // promise not to wait; else nothing is written.
        for (offset, len) in [
            (100u64, 512usize),
            (0, (INLINE_WRITE_MAX_BYTES + 4096) as usize),
        ] {
            let before = std::fs::read(&p).unwrap();
            if !t.write_at_now(offset, &vec![6; len]).unwrap() {
                assert_eq!(std::fs::read(&p).unwrap(), before, "{offset}+{len}");
            }
        }
    }

    #[test]
    fn writes_are_clipped_at_the_exact_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let mut t = Target::create(&p, 1000).unwrap();
        t.fit(1000, false).unwrap();
        t.write_at(512, &[7; 512]).unwrap();
        t.zero(0, 1024).unwrap();
        t.write_at(512, &[9; 512]).unwrap();
        let mut back = [1u8; 512];
        t.read_at(512, &mut back).unwrap();
        assert_eq!(&back[..488], &[9; 488][..]);
        assert_eq!(&back[488..], &[0; 24][..]);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1000);
    }
}
