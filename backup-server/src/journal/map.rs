//! The interval map of one point: for each byte of the volume, the newest journal
//! record at or before the point that wrote it (its place in a segment, or zeros), else
//! nothing (the base version's byte).
//!
//! Built by replaying the data records in sequence order into a map of disjoint
//! extents; a later record replaces whatever earlier extents it overlaps (cutting their
//! ends off). Building costs O(records × log extents); a lookup O(log extents + pieces).

use std::collections::BTreeMap;
use std::ops::Range;

use super::format::Kind;
use super::Journal;

/// Where an extent's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Segment `segment`'s bytes from file offset `at` (for the extent's first byte).
    Data {
        /// Segment index.
        segment: u32,
        /// File offset of the extent's first byte.
        at: u64,
    },
    /// Zeros.
    Zero,
}

impl Source {
    /// The source of the byte `by` bytes further on.
    fn advanced(self, by: u64) -> Source {
        match self {
            Source::Data { segment, at } => Source::Data {
                segment,
                at: at + by,
            },
            Source::Zero => Source::Zero,
        }
    }
}

/// One piece of a lookup: a volume range and where it comes from (`None`: the base).
pub type Piece = (Range<u64>, Option<Source>);

/// A point's extents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PointMap {
    /// start → (end, source); disjoint.
    extents: BTreeMap<u64, (u64, Source)>,
}

impl PointMap {
    /// The map of point `seq` of `journal` (every data record up to it).
    pub fn build(journal: &Journal, seq: u64) -> PointMap {
        PointMap::build_from(journal, 0..=seq)
    }

    /// The map of the data records of `journal` whose sequences lie in `seqs` (a point
    /// over another base than the journal's first: the records since that base).
    pub fn build_from(journal: &Journal, seqs: core::ops::RangeInclusive<u64>) -> PointMap {
        let mut map = PointMap::default();
        for (i, e) in journal.entries().iter().enumerate() {
            if e.seq > *seqs.end() {
                break;
            }
            if e.seq < *seqs.start() {
                continue;
            }
            let source = match e.kind {
                Kind::Write => Source::Data {
                    segment: journal.entry_segment(i),
                    at: e.payload_at,
                },
                Kind::Zero => Source::Zero,
                _ => continue,
            };
            map.insert(e.offset..e.offset + e.len, source);
        }
        map
    }

    /// Extents held.
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    /// True when no record wrote anything.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Makes `range` come from `source`, replacing what it overlaps.
    pub fn insert(&mut self, range: Range<u64>, source: Source) {
        if range.is_empty() {
            return;
        }
        // The extent starting before `range` may reach into it.
        let before = self
            .extents
            .range(..range.start)
            .next_back()
            .map(|(&s, &(e, src))| (s, e, src));
        if let Some((s, e, src)) = before {
            if e > range.start {
                self.extents.insert(s, (range.start, src));
                if e > range.end {
                    self.extents
                        .insert(range.end, (e, src.advanced(range.end - s)));
                }
            }
        }
        // Extents starting inside `range`: bounded by the extents held.
        while let Some((&s, &(e, src))) = self.extents.range(range.start..range.end).next() {
            self.extents.remove(&s);
            if e > range.end {
                self.extents
                    .insert(range.end, (e, src.advanced(range.end - s)));
            }
        }
        self.extents.insert(range.start, (range.end, source));
        debug_assert!(self.check());
    }

    /// The pieces of `range`, consecutive from its start.
    pub fn lookup(&self, range: Range<u64>) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut at = range.start;
        let first = self
            .extents
            .range(..=range.start)
            .next_back()
            .filter(|(_, &(e, _))| e > range.start)
            .map(|(&s, _)| s)
            .unwrap_or(range.start);
        // One step per extent overlapping the range, plus the spaces between them.
        for (&s, &(e, src)) in self.extents.range(first..range.end) {
            if s > at {
                out.push((at..s.min(range.end), None));
            }
            let from = s.max(at);
            let to = e.min(range.end);
            if from < to {
                out.push((from..to, Some(src.advanced(from - s))));
                at = to;
            }
        }
        if at < range.end {
            out.push((at..range.end, None));
        }
        out
    }

    fn check(&self) -> bool {
        let mut previous_end = 0;
        self.extents.iter().all(|(&s, &(e, _))| {
            let ok = s < e && s >= previous_end;
            previous_end = e;
            ok
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(segment: u32, at: u64) -> Source {
        Source::Data { segment, at }
    }

    #[test]
    fn later_writes_cut_earlier_ones() {
        let mut m = PointMap::default();
        m.insert(0..100, data(0, 1000));
        m.insert(40..60, Source::Zero);
        assert_eq!(
            m.lookup(0..120),
            vec![
                (0..40, Some(data(0, 1000))),
                (40..60, Some(Source::Zero)),
                (60..100, Some(data(0, 1060))),
                (100..120, None),
            ]
        );
        m.insert(30..70, data(1, 5));
        assert_eq!(
            m.lookup(50..90),
            vec![(50..70, Some(data(1, 25))), (70..90, Some(data(0, 1070)))]
        );
        assert_eq!(m.len(), 3);
    }

    proptest! {
        /// The map agrees with a byte-by-byte model for any sequence of writes.
        #[test]
        fn the_map_matches_a_byte_model(
            writes in proptest::collection::vec((0u64..200, 1u64..60, any::<bool>()), 0..40),
            from in 0u64..250, len in 1u64..100,
        ) {
            let mut m = PointMap::default();
            // Model: for each byte, (record index, offset within it) or zero.
            let mut model: Vec<Option<Source>> = vec![None; 400];
            for (i, (o, l, zero)) in writes.iter().enumerate() {
                let src = if *zero { Source::Zero } else { data(i as u32, 10_000 * i as u64) };
                m.insert(*o..o + l, src);
                for b in *o..o + l {
                    model[b as usize] = Some(src.advanced(b - o));
                }
            }
            let pieces = m.lookup(from..from + len);
            let mut at = from;
            for (r, src) in pieces {
                prop_assert_eq!(r.start, at);
                for b in r.clone() {
                    prop_assert_eq!(model[b as usize], src.map(|s| s.advanced(b - r.start)));
                }
                at = r.end;
            }
            prop_assert_eq!(at, from + len);
        }
    }
}
