//! An interval map over sectors: a total function from `0..len` to a small `Copy` value,
//! stored as maximal runs of equal values, and a set of sector ranges.
//!
//! The oracle keeps what a sector may hold in these rather than one entry per sector:
//! a 1 MiB write is one run, not 2,048 entries, so the cost of bookkeeping follows the
//! number of requests, not their size. Adjacent runs with equal values are always
//! merged, so a map holds at most one run per distinct boundary a request left behind.
//!
//! The runs sit in a `BTreeMap` keyed by their first sector: finding the run of a sector,
//! cutting a run in two and replacing the runs of a range are each a few `O(log runs)`
//! steps.

use std::collections::BTreeMap;
use std::ops::Range;

/// A total map from sectors `0..len` to `V`, as maximal runs.
#[derive(Clone, Debug)]
pub struct IntervalMap<V> {
    len: u64,
    /// First sector of each run → (end of the run, its value). The runs tile `0..len` in
    /// order; none is empty; no two adjacent runs hold equal values.
    runs: BTreeMap<u64, (u64, V)>,
}

impl<V: Copy + Eq> IntervalMap<V> {
    /// `len` sectors, all holding `value`.
    pub fn new(len: u64, value: V) -> IntervalMap<V> {
        let mut runs = BTreeMap::new();
        if len > 0 {
            runs.insert(0, (len, value));
        }
        IntervalMap { len, runs }
    }

    /// Sectors covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the map covers no sector.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs in the map.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The value of sector `s` (`s < len`).
    #[inline]
    pub fn get(&self, s: u64) -> V {
        debug_assert!(
            s < self.len,
            "sector {s} past the map's {} sectors",
            self.len
        );
        let (_, &(end, value)) = self
            .runs
            .range(..=s)
            .next_back()
            .expect("the runs tile the map from sector 0");
        debug_assert!(s < end);
        value
    }

    /// First sector of the run holding `s`.
    #[inline]
    fn run_start(&self, s: u64) -> u64 {
        self.runs
            .range(..=s)
            .next_back()
            .map_or(0, |(&start, _)| start)
    }

    /// The runs meeting `range`, each clipped to it, in order.
    pub fn iter(&self, range: Range<u64>) -> impl Iterator<Item = (Range<u64>, V)> + '_ {
        debug_assert!(range.end <= self.len);
        let first = if range.start < range.end {
            self.run_start(range.start)
        } else {
            range.end
        };
        self.runs
            .range(first..range.end.max(first))
            .map(move |(&start, &(end, value))| (start.max(range.start)..end.min(range.end), value))
    }

    /// Makes a run start at `at` (cutting the run around it in two).
    fn cut(&mut self, at: u64) {
        if at == 0 || at >= self.len {
            return;
        }
        let start = self.run_start(at);
        if start == at {
            return;
        }
        let run = self.runs.get_mut(&start).expect("the run found above");
        let (end, value) = *run;
        debug_assert!(at < end);
        run.0 = at;
        self.runs.insert(at, (end, value));
    }

    /// Merges the run starting at `at` into the one before it when they hold equal
    /// values.
    fn merge_at(&mut self, at: u64) {
        if at == 0 || at >= self.len {
            return;
        }
        let Some(&(end, value)) = self.runs.get(&at) else {
            return;
        };
        let prev = self.run_start(at - 1);
        let before = self.runs.get_mut(&prev).expect("the runs tile the map");
        debug_assert_eq!(before.0, at);
        if before.1 == value {
            before.0 = end;
            self.runs.remove(&at);
        }
    }

    /// Sets every sector of `range` to `value`.
    pub fn set(&mut self, range: Range<u64>, value: V) {
        assert!(range.end <= self.len, "range {range:?} past {}", self.len);
        if range.is_empty() {
            return;
        }
        self.cut(range.start);
        self.cut(range.end);
        // Bounded: each pass removes one run inside the range.
        while let Some(inner) = self
            .runs
            .range(range.start + 1..range.end)
            .next()
            .map(|(&k, _)| k)
        {
            self.runs.remove(&inner);
        }
        self.runs.insert(range.start, (range.end, value));
        self.merge_at(range.end);
        self.merge_at(range.start);
        self.debug_check_around(range);
    }

    /// Replaces the value of every sector of `range` by `f` of it (run by run).
    pub fn update(&mut self, range: Range<u64>, mut f: impl FnMut(V) -> V) {
        assert!(range.end <= self.len, "range {range:?} past {}", self.len);
        if range.is_empty() {
            return;
        }
        self.cut(range.start);
        self.cut(range.end);
        let mut changed = false;
        for (_, (_, value)) in self.runs.range_mut(range.clone()) {
            let new = f(*value);
            changed |= new != *value;
            *value = new;
        }
        if !changed {
            // Nothing moved: only the cuts may need undoing.
            self.merge_at(range.end);
            self.merge_at(range.start);
            return;
        }
        self.merge_at(range.end);
        // Merge inside the range, last run first so each key looked up still exists.
        let mut at = range.end;
        // Bounded by the runs of the range: each step moves to an earlier run.
        while let Some((&start, _)) = self.runs.range(range.start + 1..at).next_back() {
            self.merge_at(start);
            at = start;
        }
        self.merge_at(range.start);
        self.debug_check_around(range);
    }

    /// Checks the runs near `range` keep the map's invariants (debug builds).
    fn debug_check_around(&self, range: Range<u64>) {
        if cfg!(debug_assertions) {
            let from = self.run_start(range.start.saturating_sub(1));
            let mut last: Option<(u64, V)> = None;
            for (&start, &(end, value)) in self.runs.range(from..) {
                assert!(start < end, "an empty run at {start}");
                if let Some((prev_end, prev_value)) = last {
                    assert_eq!(prev_end, start, "runs do not tile at {start}");
                    assert!(prev_value != value, "equal adjacent runs at {start}");
                }
                last = Some((end, value));
                if start > range.end {
                    break;
                }
            }
        }
    }

    /// Checks every invariant of the map (tests).
    pub fn check_invariants(&self) {
        let mut at = 0;
        let mut last: Option<V> = None;
        for (&start, &(end, value)) in &self.runs {
            assert_eq!(start, at, "runs do not tile at {at}");
            assert!(start < end, "an empty run at {start}");
            assert!(last != Some(value), "equal adjacent runs at {start}");
            last = Some(value);
            at = end;
        }
        assert_eq!(at, self.len, "the runs end at {at}, not {}", self.len);
    }
}

/// A set of sectors as sorted, disjoint, non-adjacent ranges. Meant for the few ranges
/// one request or one pass touches (it shifts a vector on insertion).
#[derive(Clone, Debug, Default)]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
}

impl RangeSet {
    /// Empties the set (keeping its capacity).
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// True when no sector is in the set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Adds `range`.
    pub fn insert(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        // Every range that meets or touches `range` merges with it.
        let first = self.ranges.partition_point(|r| r.end < range.start);
        let last = self.ranges.partition_point(|r| r.start <= range.end);
        if first == last {
            self.ranges.insert(first, range);
            return;
        }
        let start = range.start.min(self.ranges[first].start);
        let end = range.end.max(self.ranges[last - 1].end);
        self.ranges.drain(first + 1..last);
        self.ranges[first] = start..end;
    }

    /// Cuts `range` into pieces in order, each wholly inside the set (`true`) or wholly
    /// outside it (`false`).
    pub fn pieces(&self, range: Range<u64>, mut each: impl FnMut(Range<u64>, bool)) {
        let mut at = range.start;
        let first = self.ranges.partition_point(|r| r.end <= range.start);
        for r in &self.ranges[first..] {
            if r.start >= range.end {
                break;
            }
            if at < r.start {
                each(at..r.start, false);
            }
            let inside = at.max(r.start)..r.end.min(range.end);
            each(inside.clone(), true);
            at = inside.end;
        }
        if at < range.end {
            each(at..range.end, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn set_and_update_keep_maximal_runs_and_agree_with_a_plain_array() {
        for seed in 0..40 {
            let mut rng = Rng::new(seed);
            let len = rng.range(1, 300);
            let mut map = IntervalMap::new(len, 0u8);
            let mut plain = vec![0u8; len as usize];
            for _ in 0..200 {
                let a = rng.below(len);
                let b = rng.range(a, len);
                if rng.coin() {
                    let v = rng.below(4) as u8;
                    map.set(a..b, v);
                    plain[a as usize..b as usize].fill(v);
                } else {
                    let k = rng.below(3) as u8;
                    map.update(a..b, |v| (v + k) % 4);
                    for v in &mut plain[a as usize..b as usize] {
                        *v = (*v + k) % 4;
                    }
                }
                map.check_invariants();
                let c = rng.below(len);
                let d = rng.range(c, len);
                let mut at = c;
                for (r, v) in map.iter(c..d) {
                    assert_eq!(r.start, at);
                    assert!(plain[r.start as usize..r.end as usize]
                        .iter()
                        .all(|&p| p == v));
                    at = r.end;
                }
                assert_eq!(at, d);
            }
            for (s, &p) in plain.iter().enumerate() {
                assert_eq!(map.get(s as u64), p, "seed {seed} sector {s}");
            }
            let edges = plain.windows(2).filter(|w| w[0] != w[1]).count();
            assert_eq!(map.run_count(), edges + 1, "runs are maximal");
        }
    }

    #[test]
    fn an_empty_range_changes_nothing_and_iterates_nothing() {
        let mut map = IntervalMap::new(10, 1u8);
        map.set(4..4, 2);
        map.update(4..4, |_| 3);
        assert_eq!(map.run_count(), 1);
        assert_eq!(map.iter(4..4).count(), 0);
        assert_eq!(map.iter(10..10).count(), 0);
    }

    #[test]
    fn a_range_set_merges_and_cuts_ranges_into_pieces() {
        let mut set = RangeSet::default();
        set.insert(10..20);
        set.insert(30..40);
        set.insert(20..25);
        assert_eq!(set.ranges(), &[10..25, 30..40]);
        set.insert(5..31);
        assert_eq!(set.ranges(), std::slice::from_ref(&(5..40)));
        set.insert(50..60);
        let mut pieces = Vec::new();
        set.pieces(0..55, |r, inside| pieces.push((r, inside)));
        assert_eq!(
            pieces,
            vec![
                (0..5, false),
                (5..40, true),
                (40..50, false),
                (50..55, true)
            ]
        );
        let mut pieces = Vec::new();
        set.pieces(41..49, |r, inside| pieces.push((r, inside)));
        assert_eq!(pieces, vec![(41..49, false)]);
    }
}
