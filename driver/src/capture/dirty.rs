//! The dirty-region map of a gap: regions written (or possibly written) whose data the
//! capture did not keep, to be read back from the volume and journaled before the gap
//! closes.
//!
//! Kept as a set of disjoint region runs rather than a bitmap: a gap is usually a burst
//! of writes over a few areas, so the runs are few, and nothing is allocated while no
//! gap is open. The number of runs is bounded: past the bound the two runs closest to
//! each other are merged, which only makes the set larger (reading back a clean region
//! is harmless; missing a dirty one would not be).

use alloc::collections::BTreeMap;
use core::ops::Range;

/// Disjoint, non-adjacent runs of region indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtySet {
    /// start → end (exclusive); no two runs touch.
    runs: BTreeMap<u64, u64>,
    runs_max: usize,
}

impl DirtySet {
    /// An empty set that keeps at most `runs_max` (at least 1) runs.
    pub fn new(runs_max: usize) -> DirtySet {
        DirtySet {
            runs: BTreeMap::new(),
            runs_max: runs_max.max(1),
        }
    }

    /// True when no region is dirty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Runs held now.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Regions dirty now.
    pub fn region_count(&self) -> u64 {
        self.runs.iter().map(|(s, e)| e - s).sum()
    }

    /// True when `region` is dirty.
    pub fn contains(&self, region: u64) -> bool {
        self.runs
            .range(..=region)
            .next_back()
            .is_some_and(|(_, &end)| region < end)
    }

    /// Adds `regions`, merging with every run it touches.
    pub fn insert(&mut self, regions: Range<u64>) {
        if regions.is_empty() {
            return;
        }
        let (mut start, mut end) = (regions.start, regions.end);
        // A run starting before `start` that reaches it.
        if let Some((&s, &e)) = self.runs.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.runs.remove(&s);
            }
        }
        // Runs starting inside [start, end]: bounded by the runs held.
        while let Some((&s, &e)) = self.runs.range(start..=end).next() {
            end = end.max(e);
            self.runs.remove(&s);
        }
        self.runs.insert(start, end);
        while self.runs.len() > self.runs_max {
            self.merge_closest();
        }
        self.check();
    }

    /// Takes up to `max_regions` of the first run that `busy` does not refuse (it is
    /// asked about each candidate range; a refused run is skipped). Returns the regions
    /// taken, now clean.
    pub fn take(
        &mut self,
        max_regions: u64,
        mut busy: impl FnMut(Range<u64>) -> bool,
    ) -> Option<Range<u64>> {
        debug_assert!(max_regions > 0);
        let candidate = self.runs.iter().find_map(|(&s, &e)| {
            let taken = s..e.min(s.saturating_add(max_regions.max(1)));
            (!busy(taken.clone())).then_some((s, e, taken))
        });
        let (s, e, taken) = candidate?;
        self.runs.remove(&s);
        if taken.end < e {
            self.runs.insert(taken.end, e);
        }
        self.check();
        Some(taken)
    }

    /// Merges the two neighbouring runs with the smallest space between them.
    fn merge_closest(&mut self) {
        let mut best: Option<(u64, u64, u64)> = None; // (space, first start, second start)
        let mut previous: Option<(u64, u64)> = None;
        for (&s, &e) in &self.runs {
            if let Some((ps, pe)) = previous {
                let space = s - pe;
                if best.is_none_or(|(b, _, _)| space < b) {
                    best = Some((space, ps, s));
                }
            }
            previous = Some((s, e));
        }
        if let Some((_, first, second)) = best {
            let end = self.runs.remove(&second).unwrap_or(second);
            self.runs.insert(first, end);
        }
    }

    fn check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let mut previous_end: Option<u64> = None;
        for (&s, &e) in &self.runs {
            assert!(s < e, "empty dirty run {s}..{e}");
            if let Some(pe) = previous_end {
                assert!(pe < s, "dirty runs touch or overlap at {s}");
            }
            previous_end = Some(e);
        }
        assert!(self.runs.len() <= self.runs_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    #[test]
    fn runs_merge_when_they_touch() {
        let mut d = DirtySet::new(16);
        d.insert(4..6);
        d.insert(8..9);
        assert_eq!(d.run_count(), 2);
        d.insert(6..8);
        assert_eq!(d.run_count(), 1);
        assert_eq!(d.region_count(), 5);
        assert!(d.contains(4) && d.contains(8) && !d.contains(9) && !d.contains(3));
    }

    #[test]
    fn take_skips_busy_runs_and_splits_long_ones() {
        let mut d = DirtySet::new(16);
        d.insert(0..2);
        d.insert(10..20);
        assert_eq!(d.take(4, |r| r.start < 2), Some(10..14));
        assert_eq!(d.take(100, |_| false), Some(0..2));
        assert_eq!(d.take(100, |_| false), Some(14..20));
        assert!(d.is_empty());
        assert_eq!(d.take(1, |_| false), None);
    }

    #[test]
    fn past_the_bound_the_closest_runs_merge_and_nothing_is_lost() {
        let mut d = DirtySet::new(2);
        d.insert(0..1);
        d.insert(100..101);
        d.insert(10..11);
        assert_eq!(d.run_count(), 2);
        for r in [0, 10, 100] {
            assert!(d.contains(r), "{r}");
        }
    }

    proptest! {
        #[test]
        fn the_set_covers_every_inserted_region(
            inserts in proptest::collection::vec((0u64..200, 1u64..20), 0..40),
            runs_max in 1usize..8,
        ) {
            let mut d = DirtySet::new(runs_max);
            let mut model = BTreeSet::new();
            for (s, n) in inserts {
                d.insert(s..s + n);
                model.extend(s..s + n);
            }
            for r in &model {
                prop_assert!(d.contains(*r));
            }
            // Taking everything returns every dirty region exactly once.
            let mut taken: Vec<u64> = Vec::new();
            while let Some(r) = d.take(7, |_| false) {
                taken.extend(r);
            }
            let unique: BTreeSet<u64> = taken.iter().copied().collect();
            prop_assert_eq!(unique.len(), taken.len());
            prop_assert!(model.is_subset(&unique));
        }
    }
}
