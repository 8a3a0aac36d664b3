//! A plain bitmap of regions that can be set *and cleared*: the sent map of the primary
//! and the present map of the DR site both lose bits (a write clears a durable sent mark
//! before it goes down; an invalidation clears present marks), which the restore map
//! (`crate::region`, set-only and atomic) never does.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

/// One bit per region, `len` regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bits {
    words: Vec<u64>,
    len: u64,
    ones: u64,
}

impl Bits {
    /// `len` regions, all clear.
    pub fn new(len: u64) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64) as usize],
            len,
            ones: 0,
        }
    }

    /// `len` regions, all set.
    pub fn full(len: u64) -> Bits {
        let mut b = Bits::new(len);
        b.set_range(0..len);
        b
    }

    /// Regions the map covers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when it covers no region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Regions set.
    pub fn count(&self) -> u64 {
        debug_assert_eq!(
            self.ones,
            self.words
                .iter()
                .map(|w| w.count_ones() as u64)
                .sum::<u64>()
        );
        self.ones
    }

    /// True when every region is set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// True when `region` is set.
    pub fn get(&self, region: u64) -> bool {
        assert!(region < self.len, "region {region} of {}", self.len);
        self.words[(region / 64) as usize] & (1 << (region % 64)) != 0
    }

    /// Sets `region`; true when it was clear.
    pub fn set(&mut self, region: u64) -> bool {
        assert!(region < self.len, "region {region} of {}", self.len);
        let w = &mut self.words[(region / 64) as usize];
        let bit = 1u64 << (region % 64);
        let was_clear = *w & bit == 0;
        *w |= bit;
        self.ones += was_clear as u64;
        was_clear
    }

    /// Clears `region`; true when it was set.
    pub fn clear(&mut self, region: u64) -> bool {
        assert!(region < self.len, "region {region} of {}", self.len);
        let w = &mut self.words[(region / 64) as usize];
        let bit = 1u64 << (region % 64);
        let was_set = *w & bit != 0;
        *w &= !bit;
        self.ones -= was_set as u64;
        was_set
    }

    /// Sets every region of `regions`.
    pub fn set_range(&mut self, regions: Range<u64>) {
        for r in regions {
            self.set(r);
        }
    }

    /// Clears every region of `regions`.
    pub fn clear_range(&mut self, regions: Range<u64>) {
        for r in regions {
            self.clear(r);
        }
    }

    /// True when every region of `regions` is set.
    pub fn all_set(&self, regions: Range<u64>) -> bool {
        regions.into_iter().all(|r| self.get(r))
    }

    /// The first clear region at or after `from`.
    pub fn next_clear(&self, from: u64) -> Option<u64> {
        let mut r = from;
        while r < self.len {
            let word = self.words[(r / 64) as usize] >> (r % 64);
            let avail = 64 - r % 64;
            let zeros = (!word).trailing_zeros() as u64;
            if zeros < avail {
                let found = r + zeros;
                return (found < self.len).then_some(found);
            }
            r += avail;
        }
        None
    }

    /// The run of clear regions that starts at the first clear region at or after `from`,
    /// at most `max` long.
    pub fn next_clear_run(&self, from: u64, max: u64) -> Option<Range<u64>> {
        let start = self.next_clear(from)?;
        let mut end = start + 1;
        while end < self.len && end - start < max && !self.get(end) {
            end += 1;
        }
        Some(start..end)
    }

    /// The words, for committing the map (bit `r % 64` of word `r / 64` is region `r`;
    /// bits past `len` are zero).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// A map from committed words; `None` when the count is wrong or a bit past `len`
    /// is set.
    pub fn from_words(len: u64, words: &[u64]) -> Option<Bits> {
        if words.len() as u64 != len.div_ceil(64) {
            return None;
        }
        if len % 64 != 0 {
            let last = *words.last()?;
            if last >> (len % 64) != 0 {
                return None;
            }
        }
        let ones = words.iter().map(|w| w.count_ones() as u64).sum();
        Some(Bits {
            words: words.to_vec(),
            len,
            ones,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_and_runs() {
        let mut b = Bits::new(130);
        assert_eq!(b.next_clear(0), Some(0));
        b.set_range(0..70);
        assert_eq!(b.count(), 70);
        assert_eq!(b.next_clear(3), Some(70));
        assert_eq!(b.next_clear_run(0, 1000), Some(70..130));
        assert_eq!(b.next_clear_run(0, 5), Some(70..75));
        b.set_range(70..130);
        assert!(b.is_full());
        assert_eq!(b.next_clear(0), None);
        assert!(b.clear(64));
        assert!(!b.clear(64));
        assert_eq!(b.next_clear(0), Some(64));
        let again = Bits::from_words(130, b.words()).unwrap();
        assert_eq!(again, b);
        assert_eq!(Bits::from_words(130, &[0, 0, 1 << 2]), None);
        assert_eq!(Bits::from_words(130, &[0, 0]), None);
    }
}
