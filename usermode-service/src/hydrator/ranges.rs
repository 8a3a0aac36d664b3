//! A set of regions kept as disjoint, non-adjacent ranges.
//!
//! The hydrator tracks "busy" and "recently done" regions this way so its memory follows
//! the work in flight (a few ranges per fetch), not the size of the volume.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent region ranges, keyed by start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end; ranges never touch or overlap (adjacent ones are merged).
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// Number of disjoint ranges (the memory the set uses).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// True when no region is in the set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Removes every region.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Adds `r`, merging with neighbours.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let mut start = r.start;
        let mut end = r.end;
        // A range starting before `start` that reaches it merges.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
            }
        }
        // Ranges starting inside [start, end] merge.
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
    }

    /// The parts of the set inside `r`, in order.
    pub fn within(&self, r: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        let head = self
            .ranges
            .range(..r.start)
            .next_back()
            .filter(|(_, &e)| e > r.start)
            .map(|(&s, &e)| s..e);
        let rest = self
            .ranges
            .range(r.start..r.end.max(r.start))
            .map(|(&s, &e)| s..e);
        head.into_iter()
            .chain(rest)
            .map(move |x| x.start.max(r.start)..x.end.min(r.end))
    }

    /// Removes `r`, splitting ranges it cuts.
    pub fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        if let Some((&s, &e)) = self.ranges.range(..r.start).next_back() {
            if e > r.start {
                self.ranges.insert(s, r.start);
                if e > r.end {
                    self.ranges.insert(r.end, e);
                }
            }
        }
        while let Some((&s, &e)) = self.ranges.range(r.start..r.end).next() {
            self.ranges.remove(&s);
            if e > r.end {
                self.ranges.insert(r.end, e);
            }
        }
    }

    /// True when `region` is in the set.
    pub fn contains(&self, region: u64) -> bool {
        self.ranges
            .range(..=region)
            .next_back()
            .is_some_and(|(_, &e)| e > region)
    }

    /// True when any region of `r` is in the set.
    pub fn intersects(&self, r: Range<u64>) -> bool {
        if r.is_empty() {
            return false;
        }
        self.contains(r.start) || self.ranges.range(r.start..r.end).next().is_some()
    }

    /// The first run of regions of `r` that is *not* in the set, if any.
    pub fn first_gap(&self, r: Range<u64>) -> Option<Range<u64>> {
        let mut at = r.start;
        // Skip a range covering the start.
        if let Some((_, &e)) = self.ranges.range(..=at).next_back() {
            if e > at {
                at = e;
            }
        }
        if at >= r.end {
            return None;
        }
        let end = self
            .ranges
            .range(at..r.end)
            .next()
            .map_or(r.end, |(&s, _)| s);
        Some(at..end)
    }

    /// The ranges in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|(&s, &e)| s..e)
    }

    /// Regions in the set.
    pub fn len_regions(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn merges_and_splits() {
        let mut s = RangeSet::new();
        s.insert(0..4);
        s.insert(4..8);
        assert_eq!(s.range_count(), 1);
        s.remove(2..3);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..2, 3..8]);
        assert_eq!(s.first_gap(0..10), Some(2..3));
        assert_eq!(s.first_gap(3..10), Some(8..10));
        assert_eq!(s.first_gap(3..8), None);
        assert!(s.intersects(7..20));
        assert!(!s.intersects(8..20));
    }

    proptest! {
        #[test]
        fn agrees_with_a_set(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 0u64..40), 0..60), probe in 0u64..240, len in 1u64..40) {
            let mut s = RangeSet::new();
            let mut model = BTreeSet::new();
            for (add, start, n) in ops {
                if add { s.insert(start..start + n); model.extend(start..start + n); }
                else { s.remove(start..start + n); for r in start..start + n { model.remove(&r); } }
            }
            prop_assert_eq!(s.len_regions() as usize, model.len());
            let ranges: Vec<_> = s.iter().collect();
            for w in ranges.windows(2) { prop_assert!(w[0].end < w[1].start, "adjacent ranges merged"); }
            prop_assert_eq!(s.contains(probe), model.contains(&probe));
            let r = probe..probe + len;
            prop_assert_eq!(s.intersects(r.clone()), r.clone().any(|x| model.contains(&x)));
            let gap_start = r.clone().find(|x| !model.contains(x));
            let gap = gap_start.map(|g| g..(g..r.end).find(|x| model.contains(x)).unwrap_or(r.end));
            prop_assert_eq!(s.first_gap(r), gap);
        }
    }
}
