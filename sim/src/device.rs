//! The data device's storage model: a medium, a volatile write cache, and what power
//! loss does to them.
//!
//! Two images, as in redb's crash tests: `live` is what reads see, `media` what survives
//! power loss. A write lands in `live` and, with the cache on, in an ordered list of
//! cache entries; the drive also destages its oldest entry on its own now and then. A
//! flush promises only the writes that completed before it was issued: a *strict*
//! flush writes exactly those entries ([`Disk::flush_before`] with the mark taken when
//! the flush arrived), a *kind* one everything cached ([`Disk::flush`]); the device
//! picks per flush, so marking data no flush covered is caught. A FUA write goes to the medium at once and
//! takes its sectors out of older cache entries (the drive never writes stale cached
//! data over newer data). At power loss each entry still cached is lost, kept, or, with
//! tearing on, cut at device-sector boundaries (any subset of its device sectors
//! lands); kept pieces are applied in order. So after a crash every sector holds its
//! medium value or a value written to it since, as DESIGN.md rule 3 assumes of hardware.
//!
//! Sizes are in 512-byte sectors; a 4Kn device groups eight of them per device sector
//! and refuses I/O that is not 4 KiB-aligned.

use std::collections::VecDeque;

use crate::data::garbage_tag;
use crate::rng::Rng;

/// A sector taken out of a cache entry by a later FUA write.
const SUPERSEDED: u64 = u64::MAX;
const _: () = assert!(!crate::data::is_garbage(0) && SUPERSEDED >> 62 == 3);

#[derive(Debug)]
struct Entry {
    /// Order of the write among all cached writes.
    seq: u64,
    start: usize,
    tags: Vec<u64>,
}

/// What a power loss did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Cache entries at the moment of the crash.
    pub entries: usize,
    /// Entries that reached the medium whole.
    pub kept: usize,
    /// Entries cut at device-sector boundaries.
    pub torn: usize,
}

/// The device's contents.
#[derive(Debug)]
pub struct Disk {
    sector_bytes: u32,
    spb: usize,
    live: Vec<u64>,
    media: Vec<u64>,
    cache_on: bool,
    cache: VecDeque<Entry>,
    /// Sequence number of the next cached write.
    next_seq: u64,
    pool: Vec<Vec<u64>>,
}

impl Disk {
    /// A device of `sectors` 512-byte sectors, all garbage, with `sector_bytes` device
    /// sectors (512 or 4096) and a volatile write cache when `cache_on`.
    pub fn new(sectors: usize, sector_bytes: u32, cache_on: bool) -> Disk {
        assert!(sector_bytes == 512 || sector_bytes == 4096);
        let spb = (sector_bytes / 512) as usize;
        assert_eq!(sectors % spb, 0, "the device is whole device sectors");
        let image: Vec<u64> = (0..sectors as u64).map(garbage_tag).collect();
        Disk {
            sector_bytes,
            spb,
            live: image.clone(),
            media: image,
            cache_on,
            cache: VecDeque::new(),
            next_seq: 0,
            pool: Vec::new(),
        }
    }

    /// Bytes per device sector.
    pub fn sector_bytes(&self) -> u32 {
        self.sector_bytes
    }

    /// 512-byte sectors on the device.
    pub fn sectors(&self) -> usize {
        self.live.len()
    }

    /// True when a transfer of `count` sectors at `start` is whole device sectors inside
    /// the device.
    pub fn fits(&self, start: u64, count: u64) -> bool {
        start % self.spb as u64 == 0
            && count % self.spb as u64 == 0
            && count > 0
            && start
                .checked_add(count)
                .is_some_and(|end| end <= self.live.len() as u64)
    }

    /// What a read of sector `s` returns.
    #[inline]
    pub fn live(&self, s: usize) -> u64 {
        self.live[s]
    }

    /// What sector `s` would hold after power loss if nothing cached survived.
    #[inline]
    pub fn media(&self, s: usize) -> u64 {
        self.media[s]
    }

    /// Cache entries not yet on the medium.
    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// Reads `out.len()` sectors from `start`.
    pub fn read(&self, start: usize, out: &mut [u64]) {
        out.copy_from_slice(&self.live[start..start + out.len()]);
    }

    /// Writes `count` sectors from `start`, the tag of sector `start + i` being
    /// `tag(i)`; through to the medium when `fua` or when there is no cache.
    pub fn write(
        &mut self,
        start: usize,
        count: usize,
        fua: bool,
        mut tag: impl FnMut(usize) -> u64,
    ) {
        debug_assert!(self.fits(start as u64, count as u64));
        let range = start..start + count;
        for (i, s) in range.clone().enumerate() {
            self.live[s] = tag(i);
        }
        if fua || !self.cache_on {
            self.media[range.clone()].copy_from_slice(&self.live[range.clone()]);
            for e in self.cache.iter_mut() {
                let lo = e.start.max(range.start);
                let hi = (e.start + e.tags.len()).min(range.end);
                for s in lo..hi {
                    e.tags[s - e.start] = SUPERSEDED;
                }
            }
            return;
        }
        let mut tags = self.pool.pop().unwrap_or_default();
        tags.clear();
        tags.extend_from_slice(&self.live[range]);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.cache.push_back(Entry { seq, start, tags });
    }

    /// Writes every cached entry to the medium (SYNCHRONIZE CACHE, kindly).
    pub fn flush(&mut self) {
        while self.destage() {}
    }

    /// The mark a flush arriving now takes: it must cover the writes completed so far.
    pub fn cache_mark(&self) -> u64 {
        self.next_seq
    }

    /// Writes to the medium exactly the cached writes older than `mark` (strictly).
    pub fn flush_before(&mut self, mark: u64) {
        // Bounded: each pass destages one entry.
        while self.cache.front().is_some_and(|e| e.seq < mark) {
            self.destage();
        }
    }

    /// Writes the oldest cached entry to the medium; false when the cache is empty.
    pub fn destage(&mut self) -> bool {
        let Some(e) = self.cache.pop_front() else {
            return false;
        };
        for (i, &t) in e.tags.iter().enumerate() {
            if t != SUPERSEDED {
                self.media[e.start + i] = t;
            }
        }
        self.pool.push(e.tags);
        true
    }

    /// Power loss: see the module comment. The device then reads back its medium.
    pub fn crash(&mut self, rng: &mut Rng, torn: bool) -> CrashReport {
        let mut report = CrashReport {
            entries: self.cache.len(),
            ..CrashReport::default()
        };
        while let Some(e) = self.cache.pop_front() {
            match rng.below(if torn { 3 } else { 2 }) {
                0 => {}
                1 => {
                    report.kept += 1;
                    for (i, &t) in e.tags.iter().enumerate() {
                        if t != SUPERSEDED {
                            self.media[e.start + i] = t;
                        }
                    }
                }
                _ => {
                    report.torn += 1;
                    for chunk in (0..e.tags.len()).step_by(self.spb) {
                        if rng.coin() {
                            for i in chunk..chunk + self.spb {
                                if e.tags[i] != SUPERSEDED {
                                    self.media[e.start + i] = e.tags[i];
                                }
                            }
                        }
                    }
                }
            }
            self.pool.push(e.tags);
        }
        self.live.copy_from_slice(&self.media);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::is_garbage;

    #[test]
    fn reads_see_the_cache_and_only_flushed_data_survives_a_crash() {
        let mut d = Disk::new(64, 512, true);
        d.write(0, 8, false, |i| 100 + i as u64);
        assert_eq!(d.live(3), 103);
        assert!(is_garbage(d.media(3)));
        d.flush();
        assert_eq!(d.media(3), 103);
        d.write(0, 8, false, |i| 200 + i as u64);
        // Every outcome of a crash is the old or the new value, sector by sector.
        for seed in 0..50 {
            let mut c = Disk::new(64, 512, true);
            c.write(0, 8, false, |i| 100 + i as u64);
            c.flush();
            c.write(0, 8, false, |i| 200 + i as u64);
            c.crash(&mut Rng::new(seed), true);
            for s in 0..8 {
                assert!(c.live(s) == 100 + s as u64 || c.live(s) == 200 + s as u64);
            }
        }
    }

    #[test]
    fn torn_writes_tear_only_at_device_sector_boundaries() {
        let mut mixed = false;
        for seed in 0..200 {
            let mut d = Disk::new(64, 4096, true);
            d.write(0, 32, false, |i| 1000 + i as u64);
            d.crash(&mut Rng::new(seed), true);
            for chunk in 0..4 {
                let landed: Vec<bool> = (0..8)
                    .map(|i| d.live(chunk * 8 + i) == 1000 + (chunk * 8 + i) as u64)
                    .collect();
                assert!(
                    landed.iter().all(|&l| l) || landed.iter().all(|&l| !l),
                    "seed {seed}: torn inside a 4 KiB sector"
                );
            }
            let all: Vec<bool> = (0..4)
                .map(|c| d.live(c * 8) == 1000 + (c * 8) as u64)
                .collect();
            mixed |= all.iter().any(|&x| x) && all.iter().any(|&x| !x);
        }
        assert!(mixed, "tearing never happened");
    }

    #[test]
    fn fua_is_durable_at_once_and_older_cached_data_never_lands_over_it() {
        for seed in 0..50 {
            let mut d = Disk::new(16, 512, true);
            d.write(0, 4, false, |_| 1);
            d.write(0, 4, true, |_| 2);
            assert_eq!(d.media(0), 2);
            d.crash(&mut Rng::new(seed), true);
            for s in 0..4 {
                assert_eq!(d.live(s), 2, "seed {seed}");
            }
        }
    }

    #[test]
    fn without_a_cache_writes_are_durable_and_a_crash_changes_nothing() {
        let mut d = Disk::new(16, 512, false);
        d.write(8, 8, false, |i| i as u64);
        assert_eq!(d.cached_entries(), 0);
        d.crash(&mut Rng::new(1), true);
        assert_eq!(d.live(9), 1);
        assert!(d.fits(8, 8) && !d.fits(8, 9) && !d.fits(0, 0));
        let d4 = Disk::new(16, 4096, false);
        assert!(d4.fits(8, 8) && !d4.fits(1, 8) && !d4.fits(8, 4));
    }
}

#[cfg(test)]
mod flush_tests {
    use super::*;

    #[test]
    fn item7_a_strict_flush_covers_only_writes_completed_before_it_arrived() {
        let mut d = Disk::new(16, 512, true);
        d.write(0, 1, false, |_| 1);
        let mark = d.cache_mark();
        d.write(1, 1, false, |_| 2);
        d.flush_before(mark);
        assert_eq!(d.media(0), 1);
        assert!(
            crate::data::is_garbage(d.media(1)),
            "written after the flush arrived"
        );
        d.flush();
        assert_eq!(d.media(1), 2, "a kind flush writes everything");
    }
}
