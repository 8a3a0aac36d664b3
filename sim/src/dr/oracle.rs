//! The two-site oracle: the rules of technique T5, checked as the world runs.
//!
//! * `read-point` — every DR read returns, for each sector, the primary's value as of
//!   one primary sequence point (the primary's volume after its n-th change: a completed
//!   or failed write, a crash), and never a point older than that of a read served
//!   before it was issued;
//! * `stale` — once the DR applied the `Ready` of a session that began after a primary
//!   crash (or a DR crash), a read issued from then on returns a point at or after the
//!   session's start: nothing the crash undid is served again;
//! * `durable-sent` — a region in the primary's durable sent map (as on its metadata)
//!   is durably present at the DR (its committed present map) with the primary's
//!   current bytes on the DR's medium;
//! * `quiet-equal` — once faults stop and everything drained, the DR's volume equals the
//!   primary's byte for byte, and a whole-volume DR read returns the primary's data;
//! * `garbled` — no sector is made of two writes; `protocol` — neither core returns a
//!   typed error the run did not provoke; `progress` — the sync ends once quiet.
//!
//! Sectors carry tags (a u64 repeated over the sector), so a read maps back to writes.

use std::fmt;

/// A rule broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrViolation {
    /// Which rule.
    pub rule: &'static str,
    /// Simulated time it was seen.
    pub time_ns: u64,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for DrViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at t={}ns: {}", self.rule, self.time_ns, self.detail)
    }
}

/// Every value each primary sector held, with the point it took it.
#[derive(Debug)]
pub(crate) struct History {
    /// The current point: the number of changes of the primary's volume so far.
    point: u64,
    /// `values[s]` — (point, tag) in point order; the first entry is at point 0.
    values: Vec<Vec<(u64, u64)>>,
}

impl History {
    /// A primary volume holding `initial` at point 0.
    pub(crate) fn new(initial: &[u64]) -> History {
        History {
            point: 0,
            values: initial.iter().map(|&t| vec![(0, t)]).collect(),
        }
    }

    /// The current point.
    pub(crate) fn point(&self) -> u64 {
        self.point
    }

    /// The primary's volume changed: `changed` yields (sector, new tag).
    pub(crate) fn change(&mut self, changed: impl IntoIterator<Item = (usize, u64)>) -> u64 {
        self.point += 1;
        let point = self.point;
        for (s, tag) in changed {
            let h = &mut self.values[s];
            assert!(
                h.last().is_some_and(|&(p, _)| p < point),
                "one value per point"
            );
            h.push((point, tag));
        }
        point
    }

    /// The points, at or after `floor`, at which sectors `first..` held `tags`; empty when
    /// there is none. Returns the first sector that left no point, if any.
    pub(crate) fn points(&self, first: usize, tags: &[u64], floor: u64) -> Result<u64, usize> {
        // An intersection of intervals [from, to) of points, sector by sector.
        let mut ok: Vec<(u64, u64)> = vec![(floor, self.point + 1)];
        for (k, &tag) in tags.iter().enumerate() {
            let h = &self.values[first + k];
            let mut next = Vec::new();
            for (i, &(from, t)) in h.iter().enumerate() {
                if t != tag {
                    continue;
                }
                let to = h.get(i + 1).map_or(self.point + 1, |n| n.0);
                for &(a, b) in &ok {
                    let (lo, hi) = (a.max(from), b.min(to));
                    if lo < hi {
                        next.push((lo, hi));
                    }
                }
            }
            ok = next;
            if ok.is_empty() {
                return Err(first + k);
            }
        }
        Ok(ok.iter().map(|p| p.0).min().expect("non-empty"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_placed_at_one_point_or_refused() {
        let mut h = History::new(&[10, 20, 30]);
        h.change([(0, 11), (1, 21)]); // point 1
        h.change([(1, 22)]); // point 2
        assert_eq!(h.points(0, &[11, 21], 0), Ok(1));
        assert_eq!(h.points(0, &[10, 20, 30], 0), Ok(0));
        // Sector 0 from point 0 and sector 1 from point 2: no one point.
        assert_eq!(h.points(0, &[10, 22], 0), Err(1));
        // Point 1's values, but the floor is 2.
        assert_eq!(h.points(0, &[11, 21], 2), Err(1));
        assert_eq!(h.points(2, &[30], 2), Ok(2));
        // A tag nobody wrote.
        assert_eq!(h.points(2, &[99], 0), Err(2));
    }
}
