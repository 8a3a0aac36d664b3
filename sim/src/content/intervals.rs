//! An interval map over sectors: a total function from `0..len` to a small `Copy` value,
//! stored as maximal runs of equal values, and a set of sector ranges.
//!
//! The oracle keeps what a sector may hold in these rather than one entry per sector:
//! a 1 MiB write is one run, not 2,048 entries, so the cost of bookkeeping follows the
//! number of requests, not their size. Adjacent runs with equal values are always
//! merged, so a map holds at most one run per distinct boundary a request left behind.
//!
//! The runs sit in a vector sorted by first sector: finding the run of a sector is a
//! binary search, and changing a range replaces the few runs it covers in place. A
//! change moves the runs after it (a `memmove` of a few kilobytes for the hundreds to
//! thousands of runs a seed leaves), and allocates nothing once the vector has grown to
//! the most runs the map held: the simulator's hot path makes no allocation per IRP
//! (`sim/tests/hot_path_alloc.rs`).

use std::ops::Range;

/// One run: sectors `start..end` hold `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run<V> {
    start: u64,
    end: u64,
    value: V,
}

/// A total map from sectors `0..len` to `V`, as maximal runs.
#[derive(Clone, Debug)]
pub struct IntervalMap<V> {
    len: u64,
    /// The runs, in order: they tile `0..len`; none is empty; no two adjacent runs hold
    /// equal values.
    runs: Vec<Run<V>>,
}

impl<V: Copy + Eq> IntervalMap<V> {
    /// `len` sectors, all holding `value`.
    pub fn new(len: u64, value: V) -> IntervalMap<V> {
        let mut runs = Vec::new();
        if len > 0 {
            runs.push(Run {
                start: 0,
                end: len,
                value,
            });
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

    /// Index of the run holding sector `s` (`s < len`).
    #[inline]
    fn index_of(&self, s: u64) -> usize {
        debug_assert!(
            s < self.len,
            "sector {s} past the map's {} sectors",
            self.len
        );
        self.runs.partition_point(|r| r.end <= s)
    }

    /// The value of sector `s` (`s < len`).
    #[inline]
    pub fn get(&self, s: u64) -> V {
        self.runs[self.index_of(s)].value
    }

    /// The runs meeting `range`, each clipped to it, in order.
    pub fn iter(&self, range: Range<u64>) -> impl Iterator<Item = (Range<u64>, V)> + '_ {
        debug_assert!(range.end <= self.len);
        let first = if range.start < range.end {
            self.index_of(range.start)
        } else {
            self.runs.len()
        };
        self.runs[first..]
            .iter()
            .take_while(move |r| r.start < range.end)
            .map(move |r| (r.start.max(range.start)..r.end.min(range.end), r.value))
    }

    /// Makes a run start at `at` (cutting the run around it in two).
    fn cut(&mut self, at: u64) {
        if at == 0 || at >= self.len {
            return;
        }
        let i = self.index_of(at);
        let run = self.runs[i];
        if run.start == at {
            return;
        }
        self.runs[i].end = at;
        self.runs.insert(i + 1, Run { start: at, ..run });
    }

    /// Merges equal neighbours among runs `from..to` (indexes, clamped to the map).
    fn merge_between(&mut self, from: usize, to: usize) {
        let to = to.min(self.runs.len());
        if to <= from + 1 {
            return;
        }
        let mut w = from;
        for r in from + 1..to {
            if self.runs[r].value == self.runs[w].value {
                self.runs[w].end = self.runs[r].end;
            } else {
                w += 1;
                self.runs[w] = self.runs[r];
            }
        }
        self.runs.drain(w + 1..to);
    }

    /// Sets every sector of `range` to `value`.
    pub fn set(&mut self, range: Range<u64>, value: V) {
        assert!(range.end <= self.len, "range {range:?} past {}", self.len);
        if range.is_empty() {
            return;
        }
        let (i, j) = (self.index_of(range.start), self.index_of(range.end - 1));
        let (left, right) = (self.runs[i], self.runs[j]);
        // Runs `lo..hi` are replaced by at most three: what stays of the first one, the
        // new run (grown over equal neighbours), what stays of the last one.
        let (mut lo, mut hi) = (i, j + 1);
        let mut middle = Run {
            start: range.start,
            end: range.end,
            value,
        };
        let mut pieces = [middle; 3];
        let mut n = 0;
        if left.start < range.start {
            if left.value == value {
                middle.start = left.start;
            } else {
                pieces[n] = Run {
                    end: range.start,
                    ..left
                };
                n += 1;
            }
        } else if lo > 0 && self.runs[lo - 1].value == value {
            lo -= 1;
            middle.start = self.runs[lo].start;
        }
        let mut after = None;
        if right.end > range.end {
            if right.value == value {
                middle.end = right.end;
            } else {
                after = Some(Run {
                    start: range.end,
                    ..right
                });
            }
        } else if hi < self.runs.len() && self.runs[hi].value == value {
            middle.end = self.runs[hi].end;
            hi += 1;
        }
        pieces[n] = middle;
        n += 1;
        if let Some(a) = after {
            pieces[n] = a;
            n += 1;
        }
        self.runs.splice(lo..hi, pieces[..n].iter().copied());
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
        let first = self.index_of(range.start);
        let mut k = first;
        while k < self.runs.len() && self.runs[k].start < range.end {
            self.runs[k].value = f(self.runs[k].value);
            k += 1;
        }
        self.merge_between(first.saturating_sub(1), k + 1);
        self.debug_check_around(range);
    }

    /// Checks the runs near `range` keep the map's invariants (debug builds).
    fn debug_check_around(&self, range: Range<u64>) {
        if cfg!(debug_assertions) {
            let from = self.index_of(range.start.saturating_sub(1));
            let mut last: Option<&Run<V>> = None;
            for r in &self.runs[from..] {
                assert!(r.start < r.end, "an empty run at {}", r.start);
                if let Some(prev) = last {
                    assert_eq!(prev.end, r.start, "runs do not tile at {}", r.start);
                    assert!(prev.value != r.value, "equal adjacent runs at {}", r.start);
                }
                last = Some(r);
                if r.start > range.end {
                    break;
                }
            }
        }
    }

    /// Checks every invariant of the map (tests).
    pub fn check_invariants(&self) {
        let mut at = 0;
        let mut last: Option<V> = None;
        for r in &self.runs {
            assert_eq!(r.start, at, "runs do not tile at {at}");
            assert!(r.start < r.end, "an empty run at {}", r.start);
            assert!(last != Some(r.value), "equal adjacent runs at {}", r.start);
            last = Some(r.value);
            at = r.end;
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
