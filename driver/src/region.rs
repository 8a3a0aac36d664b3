//! The region map: one atomic bit per region, "restored" when set.
//!
//! Bits only ever go from 0 to 1 (a mark never reverts, DESIGN.md rule 2), which is what
//! lets readers on any processor test bits without a lock while completion routines set
//! them. Layout in memory:
//!
//! ```text
//! words[w]   bit b  = region 64*w + b restored            (region_count bits, tail zero)
//! summary[s] bit b  = words[64*s + b] is full               (every region in it restored)
//! top[t]     bit b  = summary[64*t + b] is full             (4096 words, 262144 regions)
//! all_restored      = restored_count == region_count        (the filter's one-load fast path)
//! ```
//!
//! Memory: region_count/8 bytes for `words` plus 1/64 of that for `summary` and 1/4096
//! for `top`; a 1 TiB volume at 4 KiB regions is 32 MiB + 512 KiB + 8 KiB. With `top`,
//! finding the first missing region reads at most 1/4096 of the map's words even when
//! the only missing regions are at the end.
//!
//! Ordering: a mark is a `fetch_or` with Release after the region's data reached the
//! lower device; tests load with Acquire, so whoever sees the bit also sees the data
//! write's completion. The summary bit is set after its word is full, so a set summary
//! bit implies 64 set region bits (checked in debug builds on every read of it).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::geometry::Geometry;

const BITS: u64 = 64;

/// The map could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot allocate a region map of {bytes} bytes")]
pub struct AllocError {
    /// Bytes the map needed.
    pub bytes: usize,
}

/// One bit per region with a summary level. See the module comment for the layout.
pub struct RegionMap {
    geometry: Geometry,
    words: Box<[AtomicU64]>,
    summary: Box<[AtomicU64]>,
    top: Box<[AtomicU64]>,
    restored_count: AtomicU64,
    all_restored: AtomicBool,
}

fn try_zeroed(len: usize) -> Result<Box<[AtomicU64]>, AllocError> {
    let mut v: Vec<AtomicU64> = Vec::new();
    v.try_reserve_exact(len).map_err(|_| AllocError {
        bytes: len.saturating_mul(8),
    })?;
    v.resize_with(len, || AtomicU64::new(0));
    Ok(v.into_boxed_slice())
}

impl RegionMap {
    /// An empty map (nothing restored). Fails rather than aborting when memory is short.
    pub fn new(geometry: Geometry) -> Result<RegionMap, AllocError> {
        let word_count = geometry.region_count().div_ceil(BITS);
        let summary_count = word_count.div_ceil(BITS);
        let words = try_zeroed(word_count as usize)?;
        let summary = try_zeroed(summary_count as usize)?;
        let top = try_zeroed(summary_count.div_ceil(BITS) as usize)?;
        Ok(RegionMap {
            geometry,
            words,
            summary,
            top,
            restored_count: AtomicU64::new(0),
            all_restored: AtomicBool::new(false),
        })
    }

    /// The geometry this map was built for.
    #[inline]
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Number of regions.
    #[inline]
    pub fn region_count(&self) -> u64 {
        self.geometry.region_count()
    }

    /// Bytes the map holds (all levels).
    pub fn memory_bytes(&self) -> usize {
        (self.words.len() + self.summary.len() + self.top.len()) * 8
    }

    /// Number of 64-bit words in the bitmap.
    #[inline]
    pub fn word_count(&self) -> usize {
        self.words.len()
    }

    /// Bits of word `index` (region `64*index + b` is bit `b`). Tail bits past the last
    /// region are always zero.
    #[inline]
    pub fn word(&self, index: usize) -> u64 {
        self.words[index].load(Ordering::Acquire)
    }

    /// Regions restored so far, exactly.
    #[inline]
    pub fn restored_count(&self) -> u64 {
        self.restored_count.load(Ordering::Acquire)
    }

    /// The fast path: one atomic load.
    #[inline(always)]
    pub fn is_all_restored(&self) -> bool {
        self.all_restored.load(Ordering::Acquire)
    }

    /// Mask of the valid bits of word `index` (all ones but for the last word).
    #[inline]
    fn full_mask(&self, index: usize) -> u64 {
        let first_region = index as u64 * BITS;
        let regions_in_word = (self.region_count() - first_region).min(BITS);
        if regions_in_word == BITS {
            u64::MAX
        } else {
            (1u64 << regions_in_word) - 1
        }
    }

    /// Mask of the valid bits of summary word `s_index`.
    #[inline]
    fn summary_full_mask(&self, s_index: usize) -> u64 {
        let words_in = (self.words.len() - s_index * BITS as usize).min(BITS as usize);
        if words_in == BITS as usize {
            u64::MAX
        } else {
            (1u64 << words_in) - 1
        }
    }

    /// True when `region` is restored.
    #[inline]
    pub fn is_restored(&self, region: u64) -> bool {
        debug_assert!(region < self.region_count());
        let word = self.word((region / BITS) as usize);
        word & (1 << (region % BITS)) != 0
    }

    /// Marks one region restored. Returns true when this call set it.
    pub fn mark(&self, region: u64) -> bool {
        assert!(region < self.region_count(), "mark past the map");
        self.or_word((region / BITS) as usize, 1 << (region % BITS)) == 1
    }

    /// Marks every region in `regions`. Returns how many this call set.
    pub fn mark_range(&self, regions: Range<u64>) -> u64 {
        assert!(regions.end <= self.region_count(), "mark past the map");
        let mut newly = 0;
        let mut region = regions.start;
        while region < regions.end {
            let index = (region / BITS) as usize;
            let bit = region % BITS;
            let take = (BITS - bit).min(regions.end - region);
            let bits = if take == BITS {
                u64::MAX
            } else {
                ((1u64 << take) - 1) << bit
            };
            newly += self.or_word(index, bits);
            region += take;
        }
        newly
    }

    /// Sets `bits` in word `index` (used when loading durable metadata). Bits past the
    /// last region are ignored. Returns how many bits this call set.
    pub fn or_word(&self, index: usize, bits: u64) -> u64 {
        let full = self.full_mask(index);
        let bits = bits & full;
        if bits == 0 {
            return 0;
        }
        let before = self.words[index].fetch_or(bits, Ordering::AcqRel);
        let newly_set = bits & !before;
        if newly_set == 0 {
            return 0;
        }
        let after = before | bits;
        if after == full {
            let s_index = index / BITS as usize;
            let s_bit = 1 << (index as u64 % BITS);
            let s_after = self.summary[s_index].fetch_or(s_bit, Ordering::AcqRel) | s_bit;
            if s_after == self.summary_full_mask(s_index) {
                self.top[s_index / BITS as usize]
                    .fetch_or(1 << (s_index as u64 % BITS), Ordering::AcqRel);
            }
        }
        let newly = u64::from(newly_set.count_ones());
        let total = self.restored_count.fetch_add(newly, Ordering::AcqRel) + newly;
        assert!(
            total <= self.region_count(),
            "restored count past region count"
        );
        if total == self.region_count() {
            self.all_restored.store(true, Ordering::Release);
        }
        newly
    }

    /// True when every region in `regions` is restored.
    pub fn is_range_restored(&self, regions: Range<u64>) -> bool {
        debug_assert!(regions.end <= self.region_count());
        if self.is_all_restored() {
            return true;
        }
        let mut region = regions.start;
        while region < regions.end {
            let index = (region / BITS) as usize;
            let bit = region % BITS;
            let take = (BITS - bit).min(regions.end - region);
            if bit == 0 && take == BITS && self.summary_says_full(index) {
                region += BITS;
                continue;
            }
            let mask = if take == BITS {
                u64::MAX
            } else {
                ((1u64 << take) - 1) << bit
            };
            if self.word(index) & mask != mask {
                return false;
            }
            region += take;
        }
        true
    }

    #[inline]
    fn summary_says_full(&self, index: usize) -> bool {
        let s = self.summary[index / BITS as usize].load(Ordering::Acquire);
        let full = s & (1 << (index as u64 % BITS)) != 0;
        debug_assert!(!full || self.word(index) == self.full_mask(index));
        full
    }

    /// First region at or after `from` that is not restored, if any.
    pub fn first_missing_from(&self, from: u64) -> Option<u64> {
        if from >= self.region_count() || self.is_all_restored() {
            return None;
        }
        let mut index = (from / BITS) as usize;
        // The first word may start mid-way.
        let head = !self.word(index) & self.full_mask(index) & (u64::MAX << (from % BITS));
        if head != 0 {
            return Some(index as u64 * BITS + u64::from(head.trailing_zeros()));
        }
        index += 1;
        // Then whole words, skipping 4096 full words at a time by `top` and 64 at a
        // time by `summary`. Bounded: every pass moves `index` forward.
        while index < self.words.len() {
            let s_index = index / BITS as usize;
            let t_index = s_index / BITS as usize;
            let top_not_full =
                !self.top[t_index].load(Ordering::Acquire) & (u64::MAX << (s_index as u64 % BITS));
            if top_not_full == 0 {
                index = (t_index + 1) * (BITS * BITS) as usize;
                continue;
            }
            let s_next = t_index * BITS as usize + top_not_full.trailing_zeros() as usize;
            if s_next != s_index {
                debug_assert!(s_next > s_index);
                index = s_next * BITS as usize;
                continue;
            }
            let s_bit = index as u64 % BITS;
            let not_full = !self.summary[s_index].load(Ordering::Acquire) & (u64::MAX << s_bit);
            if not_full == 0 {
                index = (s_index + 1) * BITS as usize;
                continue;
            }
            index = s_index * BITS as usize + not_full.trailing_zeros() as usize;
            if index >= self.words.len() {
                break;
            }
            let missing = !self.word(index) & self.full_mask(index);
            if missing != 0 {
                return Some(index as u64 * BITS + u64::from(missing.trailing_zeros()));
            }
            // Summary lagged a word that just became full; look at the next one.
            index += 1;
        }
        None
    }

    /// The next run of missing regions at or after `from`, at most `max_regions` long.
    pub fn next_missing_run(&self, from: u64, max_regions: u64) -> Option<Range<u64>> {
        let start = self.first_missing_from(from)?;
        let limit = start
            .saturating_add(max_regions.max(1))
            .min(self.region_count());
        let mut end = start + 1;
        while end < limit && !self.is_restored(end) {
            end += 1;
        }
        Some(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    extern crate std;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    fn map(regions: u64) -> RegionMap {
        RegionMap::new(Geometry::new(regions * 4096, 4096).unwrap()).unwrap()
    }

    #[test]
    fn marks_are_counted_exactly_and_only_once() {
        let m = map(130);
        assert!(m.mark(5));
        assert!(!m.mark(5));
        assert_eq!(m.restored_count(), 1);
        assert_eq!(m.mark_range(0..130), 129);
        assert_eq!(m.restored_count(), 130);
        assert!(m.is_all_restored());
    }

    #[test]
    fn summary_skips_full_words_and_first_missing_finds_the_hole() {
        let m = map(64 * 64 * 3 + 7);
        m.mark_range(0..m.region_count());
        assert!(m.is_all_restored());
        let m = map(64 * 64 * 3 + 7);
        m.mark_range(0..m.region_count() - 1);
        assert!(!m.is_all_restored());
        assert_eq!(m.first_missing_from(0), Some(m.region_count() - 1));
        assert!(m.is_range_restored(0..m.region_count() - 1));
        assert!(!m.is_range_restored(10..m.region_count()));
    }

    #[test]
    fn tail_bits_never_count() {
        let m = map(65);
        assert_eq!(m.or_word(1, u64::MAX), 1);
        assert_eq!(m.word(1), 1);
        assert_eq!(m.restored_count(), 1);
    }

    #[test]
    fn a_1tib_map_at_4kib_fits_in_33mib() {
        let m = RegionMap::new(Geometry::new(1 << 40, 4096).unwrap()).unwrap();
        assert!(m.memory_bytes() <= 33 * 1024 * 1024, "{}", m.memory_bytes());
    }

    #[test]
    fn the_top_level_skips_full_summaries_and_never_hides_a_hole() {
        // 3 top words' worth of regions plus a ragged tail.
        let regions = 3 * 64 * 64 * 64 + 64 * 5 + 3;
        let m = map(regions);
        let holes = [
            5u64,
            64 * 64 * 64 + 7,
            2 * 64 * 64 * 64 + 64 * 64 + 1,
            regions - 1,
        ];
        let mut start = 0;
        for &h in &holes {
            m.mark_range(start..h);
            start = h + 1;
        }
        m.mark_range(start..regions);
        let mut from = 0;
        for &h in &holes {
            assert_eq!(m.first_missing_from(from), Some(h));
            from = h + 1;
        }
        assert_eq!(m.first_missing_from(from), None);
        for &h in &holes {
            m.mark(h);
        }
        assert!(m.is_all_restored());
        assert_eq!(m.first_missing_from(0), None);
    }

    #[test]
    fn missing_runs_stop_at_restored_regions_and_the_bound() {
        let m = map(200);
        m.mark_range(0..10);
        m.mark(20);
        assert_eq!(m.next_missing_run(0, 100), Some(10..20));
        assert_eq!(m.next_missing_run(0, 4), Some(10..14));
        assert_eq!(m.next_missing_run(21, 1000), Some(21..200));
        m.mark_range(21..200);
        assert_eq!(m.next_missing_run(0, 1000), Some(10..20));
        assert_eq!(m.next_missing_run(20, 1000), None);
    }

    proptest! {
        #[test]
        fn agrees_with_a_set(regions in 1u64..5000, ops in proptest::collection::vec((0u64..5000, 1u64..300), 0..60), from in 0u64..5000) {
            let m = map(regions);
            let mut model = BTreeSet::new();
            for (start, len) in ops {
                let start = start % regions;
                let end = (start + len).min(regions);
                let newly = m.mark_range(start..end);
                let before = model.len();
                model.extend(start..end);
                prop_assert_eq!(newly as usize, model.len() - before);
            }
            prop_assert_eq!(m.restored_count() as usize, model.len());
            prop_assert_eq!(m.is_all_restored(), model.len() as u64 == regions);
            let expected = (from..regions).find(|r| !model.contains(r));
            prop_assert_eq!(m.first_missing_from(from), expected);
            let probe: Vec<u64> = (0..regions).step_by(37).collect();
            for w in probe.windows(2) {
                let all = (w[0]..w[1]).all(|r| model.contains(&r));
                prop_assert_eq!(m.is_range_restored(w[0]..w[1]), all);
            }
        }
    }
}
