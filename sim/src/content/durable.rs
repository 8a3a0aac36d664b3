//! What survives power loss: per run of sectors, the value a flush (or a FUA write)
//! made durable, and a log of everything a device applied since, as redb's crash tests
//! keep a "durable" image beside the live one.
//!
//! After power loss a sector may hold its stable value or any value applied to it since
//! (DESIGN.md rule 3; the device model in `device.rs` keeps exactly that promise). The
//! log holds each device application as one entry for its whole range, in the order the
//! device applied them, with the oracle clock at which its request was acknowledged (or
//! [`PENDING`]). Per sector, the entries covering it, in log order, are its history.
//!
//! * A flush issued at clock `c` makes stable, per sector, the newest entry acknowledged
//!   before `c`, and forgets every entry older than it on that sector.
//! * A FUA write makes its own entries stable the same way.
//! * Power loss: each sector may hold its stable value or any entry's; that becomes the
//!   new stable value, and the log starts over.
//!
//! Both passes walk the log from newest to oldest once, keeping the sectors already
//! settled in a [`RangeSet`], and cut entries where they straddle a settled range, so
//! their cost follows the number of entries since the last flush, not the sectors.

use std::ops::Range;

use super::allowed::{Allowed, Values};
use super::intervals::{IntervalMap, RangeSet};

/// The acknowledgement clock of an entry whose request is not acknowledged yet: no flush
/// makes it stable.
pub const PENDING: u64 = u64::MAX;

/// Most entries the log holds. It shrinks at every flush, FUA write and power loss; a
/// run with none of them for this many device writes is not one the workload draws.
pub const LOG_MAX: usize = 1 << 20;

/// One application of data to a range by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The sectors.
    pub range: (u64, u64),
    /// What it put there (a write's source, or `Any` for a trim).
    pub value: Allowed,
    /// Oracle clock when its request was acknowledged, or [`PENDING`].
    pub ack: u64,
}

impl Entry {
    fn sectors(&self) -> Range<u64> {
        self.range.0..self.range.1
    }

    fn with(&self, range: Range<u64>) -> Entry {
        Entry {
            range: (range.start, range.end),
            ..*self
        }
    }
}

/// The durable side of one device's content.
#[derive(Clone, Debug)]
pub struct Durable {
    stable: IntervalMap<Allowed>,
    /// Device applications since the stable values, oldest first.
    log: Vec<Entry>,
    /// Sectors a pass has settled (taken by a newer entry).
    settled: RangeSet,
    /// A pass's pieces of entries and of ranges, kept for their capacity.
    scratch: Vec<Entry>,
    fresh: Vec<Range<u64>>,
}

impl Durable {
    /// `sectors` sectors whose durable content is `initial`.
    pub fn new(sectors: u64, initial: Allowed) -> Durable {
        Durable {
            stable: IntervalMap::new(sectors, initial),
            log: Vec::new(),
            settled: RangeSet::default(),
            scratch: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// The stable values.
    pub fn stable(&self) -> &IntervalMap<Allowed> {
        &self.stable
    }

    /// The log, oldest first.
    pub fn log(&self) -> &[Entry] {
        &self.log
    }

    /// The device applied `value` to `range` (not acknowledged yet).
    pub fn apply(&mut self, range: Range<u64>, value: Allowed) {
        debug_assert!(range.end <= self.stable.len());
        if range.is_empty() {
            return;
        }
        assert!(
            self.log.len() < LOG_MAX,
            "{LOG_MAX} device writes with no flush, FUA write or power loss in between"
        );
        self.log.push(Entry {
            range: (range.start, range.end),
            value,
            ack: PENDING,
        });
    }

    /// A request that applied `value` was acknowledged at `clock`: per sector of
    /// `range`, the newest pending entry of `value` is acknowledged (a flush issued from
    /// now on covers it).
    pub fn acknowledge(&mut self, range: Range<u64>, value: Allowed, clock: u64) {
        debug_assert_ne!(clock, PENDING);
        self.settled.clear();
        let mut i = self.log.len();
        // Bounded by the log: each pass looks at one entry; a cut one leaves its pieces
        // behind the cursor.
        while i > 0 {
            i -= 1;
            let e = self.log[i];
            let lo = e.range.0.max(range.start);
            let hi = e.range.1.min(range.end);
            if e.value != value || e.ack != PENDING || lo >= hi {
                continue;
            }
            if e.range == (lo, hi) && self.settled.is_empty() {
                // The usual case: the whole entry, nothing newer in the way.
                self.log[i].ack = clock;
                self.settled.insert(lo..hi);
                continue;
            }
            // Pieces: outside `range` and inside but already taken by a newer entry stay
            // pending; the rest is acknowledged now.
            let mut pieces = std::mem::take(&mut self.scratch);
            let mut fresh = std::mem::take(&mut self.fresh);
            pieces.clear();
            fresh.clear();
            if e.range.0 < lo {
                pieces.push(e.with(e.range.0..lo));
            }
            self.settled.pieces(lo..hi, |r, taken| {
                if taken {
                    pieces.push(e.with(r));
                } else {
                    pieces.push(Entry {
                        ack: clock,
                        ..e.with(r.clone())
                    });
                    fresh.push(r);
                }
            });
            if hi < e.range.1 {
                pieces.push(e.with(hi..e.range.1));
            }
            for r in fresh.drain(..) {
                self.settled.insert(r);
            }
            self.log.splice(i..=i, pieces.drain(..));
            self.scratch = pieces;
            self.fresh = fresh;
        }
    }

    /// Per sector of `range`: the newest entry that `stabilizes` becomes the stable
    /// value, and it and every older entry on that sector are forgotten.
    pub fn stabilize(&mut self, range: Range<u64>, stabilizes: impl Fn(&Entry) -> bool) {
        self.settled.clear();
        let mut kept = std::mem::take(&mut self.scratch);
        let mut fresh = std::mem::take(&mut self.fresh);
        kept.clear();
        // Bounded by the log: one pass over it, newest first; `kept` is newest first too.
        for e in self.log.iter().rev() {
            let lo = e.range.0.max(range.start);
            let hi = e.range.1.min(range.end);
            if lo >= hi {
                kept.push(*e);
                continue;
            }
            if hi < e.range.1 {
                kept.push(e.with(hi..e.range.1));
            }
            let takes = stabilizes(e);
            fresh.clear();
            self.settled.pieces(lo..hi, |r, settled| {
                if settled {
                    // Older than the stable value of these sectors: forgotten.
                } else if takes {
                    fresh.push(r);
                } else {
                    kept.push(e.with(r));
                }
            });
            for r in fresh.drain(..) {
                self.stable.set(r.clone(), e.value);
                self.settled.insert(r);
            }
            if e.range.0 < lo {
                kept.push(e.with(e.range.0..lo));
            }
        }
        self.log.clear();
        self.log.extend(kept.drain(..).rev());
        self.scratch = kept;
        self.fresh = fresh;
    }

    /// Power loss: every sector may hold its stable value or any logged one; that is its
    /// stable value now, and the log is empty.
    pub fn crash(&mut self, values: &mut Values) {
        for e in std::mem::take(&mut self.log) {
            self.stable
                .update(e.sectors(), |old| values.union(old, e.value));
        }
    }

    /// True when sector `s` may hold `v` after power loss now.
    pub fn allowed_after_crash(&self, values: &Values, s: u64, v: u64) -> bool {
        values.allows(self.stable.get(s), s, v)
            || self
                .log
                .iter()
                .any(|e| e.range.0 <= s && s < e.range.1 && values.allows(e.value, s, v))
    }

    /// What sector `s` may hold after power loss now.
    pub fn after_crash(&self, values: &mut Values, s: u64) -> Allowed {
        let mut a = self.stable.get(s);
        for e in &self.log {
            if e.range.0 <= s && s < e.range.1 {
                a = values.union(a, e.value);
            }
        }
        a
    }

    /// The first sector of `range` whose value (`value_of`) is not allowed after power
    /// loss, if any.
    pub fn first_not_durable(
        &self,
        values: &Values,
        range: Range<u64>,
        mut value_of: impl FnMut(u64) -> u64,
    ) -> Option<(u64, u64)> {
        let touching = || {
            self.log
                .iter()
                .filter(move |e| e.range.0 < range.end && range.start < e.range.1)
        };
        for (run, stable) in self.stable.iter(range.clone()) {
            for s in run {
                let v = value_of(s);
                if values.allows(stable, s, v) {
                    continue;
                }
                let logged = touching()
                    .any(|e| e.range.0 <= s && s < e.range.1 && values.allows(e.value, s, v));
                if !logged {
                    return Some((s, v));
                }
            }
        }
        None
    }

    /// Checks the log's entries lie inside the device and are not empty (tests).
    pub fn check_invariants(&self) {
        self.stable.check_invariants();
        for e in &self.log {
            assert!(
                e.range.0 < e.range.1 && e.range.1 <= self.stable.len(),
                "{e:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::allowed::Src;
    use crate::data::{app_tag, Backup};

    fn values() -> Values {
        Values::new(Backup::new(1, 4096, 0))
    }

    const BACKUP: Allowed = Allowed::One(Src::Backup);

    fn w(id: u64) -> Allowed {
        Allowed::One(Src::App(id))
    }

    #[test]
    fn a_flush_makes_stable_only_what_was_acknowledged_before_it() {
        let mut vals = values();
        let mut d = Durable::new(16, BACKUP);
        d.apply(0..8, w(1));
        d.acknowledge(0..8, w(1), 5);
        d.apply(4..12, w(2));
        // Issued at clock 6: write 1 is covered, write 2 (pending) is not.
        d.stabilize(0..16, |e| e.ack != PENDING && e.ack < 6);
        assert_eq!(d.stable().get(0), w(1));
        assert_eq!(d.stable().get(9), BACKUP);
        assert_eq!(d.log().len(), 1);
        assert!(d.allowed_after_crash(&vals, 5, app_tag(2, 5)));
        assert!(d.allowed_after_crash(&vals, 5, app_tag(1, 5)));
        assert!(!d.allowed_after_crash(&vals, 0, app_tag(2, 0)));
        d.crash(&mut vals);
        assert!(d.log().is_empty());
        assert_eq!(d.stable().get(0), w(1));
        assert!(vals.allows(d.stable().get(5), 5, app_tag(2, 5)));
        assert!(vals.allows(d.stable().get(5), 5, app_tag(1, 5)));
        assert!(vals.allows(d.stable().get(10), 10, Backup::new(1, 4096, 0).tag(10)));
        d.check_invariants();
    }

    #[test]
    fn a_stable_value_forgets_every_older_entry_even_a_pending_one() {
        let mut d = Durable::new(16, BACKUP);
        d.apply(0..16, w(1));
        d.apply(0..4, w(2));
        d.acknowledge(0..4, w(2), 3);
        d.stabilize(0..16, |e| e.ack != PENDING && e.ack < 4);
        assert_eq!(d.stable().get(0), w(2));
        assert_eq!(d.stable().get(8), BACKUP);
        // Write 1 stays pending where write 2 did not land.
        assert_eq!(d.log().len(), 1);
        assert_eq!(d.log()[0].range, (4, 16));
        d.check_invariants();
    }

    #[test]
    fn an_acknowledgement_takes_the_newest_pending_entry_per_sector() {
        let mut d = Durable::new(16, BACKUP);
        d.apply(0..8, w(1));
        d.apply(4..12, w(1));
        d.acknowledge(0..16, w(1), 2);
        let acked: Vec<_> = d.log().iter().map(|e| (e.range, e.ack)).collect();
        assert_eq!(acked, vec![((0, 4), 2), ((4, 8), PENDING), ((4, 12), 2)]);
        d.check_invariants();
    }
}
