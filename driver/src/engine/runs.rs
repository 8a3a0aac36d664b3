//! Sets of regions kept as sorted, disjoint, non-touching runs, in a `Vec` that grows
//! only through `try_reserve`: the engine's per-region state costs memory per *run* of
//! regions, not per region, and running out of memory is an error the caller turns
//! into `INSUFFICIENT_RESOURCES`, never a bug check.
//!
//! Every operation that can add a run needs one spare slot ([`Runs::room`] first):
//! an insert adds at most one run, a removal splits at most one. Lookups are binary
//! searches.

use alloc::vec::Vec;
use core::ops::Range;

/// Disjoint, non-touching, sorted runs of regions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Runs {
    runs: Vec<Range<u64>>,
}

impl Runs {
    /// Makes room for `more` runs beyond those there are; false when memory is short.
    pub(crate) fn room_more(&mut self, more: usize) -> bool {
        self.room(self.runs.len() + more)
    }

    /// Makes room for `total` runs in all; false when memory is short.
    pub(crate) fn room(&mut self, total: usize) -> bool {
        total <= self.runs.capacity() || self.runs.try_reserve(total - self.runs.len()).is_ok()
    }

    /// Spare slots: how many runs can be added without allocating.
    pub(crate) fn spare(&self) -> usize {
        self.runs.capacity() - self.runs.len()
    }

    /// Number of runs.
    pub(crate) fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Number of regions in all runs.
    pub(crate) fn region_count(&self) -> u64 {
        self.runs.iter().map(|r| r.end - r.start).sum()
    }

    pub(crate) fn clear(&mut self) {
        self.runs.clear();
    }

    /// Index of the first run that ends after `region`.
    fn first_ending_after(&self, region: u64) -> usize {
        self.runs.partition_point(|r| r.end <= region)
    }

    pub(crate) fn contains(&self, region: u64) -> bool {
        self.runs
            .get(self.first_ending_after(region))
            .is_some_and(|r| r.start <= region)
    }

    /// True when a run shares a region with `range`.
    pub(crate) fn intersects(&self, range: Range<u64>) -> bool {
        !range.is_empty()
            && self
                .runs
                .get(self.first_ending_after(range.start))
                .is_some_and(|r| r.start < range.end)
    }

    /// The first region of `range` in a run.
    pub(crate) fn first_in(&self, range: Range<u64>) -> Option<u64> {
        if range.is_empty() {
            return None;
        }
        let r = self.runs.get(self.first_ending_after(range.start))?;
        (r.start < range.end).then(|| r.start.max(range.start))
    }

    /// The parts of the runs inside `range`, in order.
    #[cfg(test)]
    pub(crate) fn within(&self, range: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        let from = self.first_ending_after(range.start);
        self.runs[from..]
            .iter()
            .take_while(move |r| r.start < range.end)
            .map(move |r| r.start.max(range.start)..r.end.min(range.end))
    }

    /// Every run, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.runs.iter().cloned()
    }

    /// Adds `range`, merging what it overlaps or touches. Needs one spare slot.
    pub(crate) fn insert(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        // Runs that overlap or touch: end >= start and start <= end.
        let i = self.runs.partition_point(|r| r.end < range.start);
        let j = self.runs.partition_point(|r| r.start <= range.end);
        if i == j {
            debug_assert!(self.spare() > 0, "insert without a reserved slot");
            self.runs.insert(i, range);
            return;
        }
        let start = range.start.min(self.runs[i].start);
        let end = range.end.max(self.runs[j - 1].end);
        self.runs[i] = start..end;
        self.runs.drain(i + 1..j);
    }

    /// Removes `range`, splitting a run it falls inside. Needs one spare slot.
    pub(crate) fn remove(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let i = self.first_ending_after(range.start);
        let j = self.runs.partition_point(|r| r.start < range.end);
        if i >= j {
            return;
        }
        let left = (self.runs[i].start < range.start).then(|| self.runs[i].start..range.start);
        let right = (self.runs[j - 1].end > range.end).then(|| range.end..self.runs[j - 1].end);
        match (left, right) {
            (Some(l), Some(r)) => {
                debug_assert!(
                    j - i > 1 || self.spare() > 0,
                    "split without a reserved slot"
                );
                self.runs[i] = l;
                if j - i > 1 {
                    self.runs[j - 1] = r;
                    self.runs.drain(i + 1..j - 1);
                } else {
                    self.runs.insert(i + 1, r);
                }
            }
            (Some(l), None) => {
                self.runs[i] = l;
                self.runs.drain(i + 1..j);
            }
            (None, Some(r)) => {
                self.runs[j - 1] = r;
                self.runs.drain(i..j - 1);
            }
            (None, None) => {
                self.runs.drain(i..j);
            }
        }
    }

    /// Checks the representation (sorted, disjoint, non-touching, non-empty runs).
    pub(crate) fn check(&self) {
        for w in self.runs.windows(2) {
            assert!(
                w[0].end < w[1].start,
                "runs {:?} and {:?} touch",
                w[0],
                w[1]
            );
        }
        for r in &self.runs {
            assert!(r.start < r.end, "empty run {r:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..200, 0u64..20).prop_map(|(s, l)| Op::Insert(s, s + l)),
            (0u64..200, 0u64..30).prop_map(|(s, l)| Op::Remove(s, s + l)),
        ]
    }

    proptest! {
        #[test]
        fn runs_agree_with_a_set_of_regions(
            ops in proptest::collection::vec(op(), 0..60),
            probes in proptest::collection::vec((0u64..230, 0u64..20), 1..20),
        ) {
            let mut runs = Runs::default();
            let mut set = BTreeSet::new();
            for op in ops {
                assert!(runs.room_more(1));
                match op {
                    Op::Insert(s, e) => {
                        runs.insert(s..e);
                        set.extend(s..e);
                    }
                    Op::Remove(s, e) => {
                        runs.remove(s..e);
                        for r in s..e {
                            set.remove(&r);
                        }
                    }
                }
                runs.check();
                prop_assert_eq!(runs.region_count(), set.len() as u64);
            }
            for (s, l) in probes {
                let range = s..s + l;
                prop_assert_eq!(runs.contains(s), set.contains(&s));
                let inside: Vec<u64> = set.range(range.clone()).copied().collect();
                prop_assert_eq!(runs.intersects(range.clone()), !inside.is_empty());
                prop_assert_eq!(runs.first_in(range.clone()), inside.first().copied());
                let listed: Vec<u64> = runs.within(range.clone()).flatten().collect();
                prop_assert_eq!(listed, inside);
            }
        }
    }

    #[test]
    fn a_removal_inside_a_run_splits_it_and_an_insert_merges_neighbours() {
        let mut runs = Runs::default();
        assert!(runs.room_more(2));
        runs.insert(0..10);
        runs.remove(3..5);
        assert_eq!(runs.iter().collect::<Vec<_>>(), [0..3, 5..10]);
        runs.insert(3..5);
        assert_eq!(runs.run_count(), 1);
        assert!(runs.contains(0) && runs.contains(9) && !runs.contains(10));
        runs.insert(10..12);
        assert_eq!(runs.run_count(), 1, "touching runs merge");
        assert_eq!(runs.region_count(), 12);
    }
}
