//! The ordered range gate: the one place that orders local I/O on both sites.
//!
//! Operations enter in the order they are decided (a write when it is admitted, a
//! region read for sending when its region was marked sent, a stream item when its turn
//! in the stream came, a client read when its regions became present) and start in that
//! order wherever they overlap: an operation starts only when nothing running overlaps
//! it in conflict and no earlier waiting operation does. Two reads never conflict.
//! This is what makes the stream order alone right: the region read for sending runs
//! after every write admitted before it, and every write admitted after it runs after it.
//!
//! Bounds: at most `ops_max` operations are held (waiting + running); the caller keeps
//! its own admission within that (checked by [`Gate::has_room`]).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::ops::Range;

/// Whether an operation reads or changes the bytes it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads: runs beside other reads.
    Read,
    /// Writes (or changes marks of) its range: runs alone over it.
    Write,
}

#[derive(Clone, Debug)]
struct Op {
    id: u64,
    bytes: Range<u64>,
    access: Access,
}

impl Op {
    fn conflicts(&self, other: &Op) -> bool {
        let overlap = self.bytes.start < other.bytes.end && other.bytes.start < self.bytes.end;
        overlap && !(self.access == Access::Read && other.access == Access::Read)
    }
}

/// Operations waiting (in admission order) and running.
#[derive(Debug)]
pub struct Gate {
    waiting: VecDeque<Op>,
    running: Vec<Op>,
    ops_max: usize,
}

impl Gate {
    /// A gate holding at most `ops_max` operations.
    pub fn new(ops_max: usize) -> Gate {
        assert!(ops_max > 0);
        Gate {
            waiting: VecDeque::new(),
            running: Vec::new(),
            ops_max,
        }
    }

    /// True when another operation may be admitted.
    pub fn has_room(&self) -> bool {
        self.held() < self.ops_max
    }

    /// Operations held (waiting + running).
    pub fn held(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    /// Admits operation `id` over `bytes` (non-empty); it starts when
    /// [`Gate::next_ready`] returns it.
    pub fn admit(&mut self, id: u64, bytes: Range<u64>, access: Access) {
        assert!(bytes.start < bytes.end, "empty range {bytes:?}");
        assert!(self.has_room(), "gate over its bound of {}", self.ops_max);
        debug_assert!(self.waiting.iter().chain(&self.running).all(|o| o.id != id));
        self.waiting.push_back(Op { id, bytes, access });
    }

    /// Starts every operation whose turn came, in admission order, handing each id to
    /// `start`.
    pub fn start_ready(&mut self, mut start: impl FnMut(u64)) {
        let mut i = 0;
        while i < self.waiting.len() {
            let op = &self.waiting[i];
            let blocked = self.running.iter().any(|r| r.conflicts(op))
                || self.waiting.iter().take(i).any(|w| w.conflicts(op));
            if blocked {
                i += 1;
                continue;
            }
            let op = self.waiting.remove(i).expect("index in range");
            start(op.id);
            self.running.push(op);
        }
    }

    /// Operation `id`, which was running, finished.
    pub fn finish(&mut self, id: u64) {
        let at = self
            .running
            .iter()
            .position(|o| o.id == id)
            .unwrap_or_else(|| panic!("operation {id} finished but was not running"));
        self.running.swap_remove(at);
    }

    /// Forgets operation `id` wherever it is (the caller dropped it).
    pub fn forget(&mut self, id: u64) {
        self.waiting.retain(|o| o.id != id);
        self.running.retain(|o| o.id != id);
    }

    /// True when a held operation other than `id` overlaps `bytes`.
    pub fn busy_but(&self, id: u64, bytes: Range<u64>) -> bool {
        self.waiting
            .iter()
            .chain(&self.running)
            .any(|o| o.id != id && o.bytes.start < bytes.end && bytes.start < o.bytes.end)
    }

    /// True when any held operation overlaps `bytes`.
    pub fn busy(&self, bytes: Range<u64>) -> bool {
        self.waiting
            .iter()
            .chain(&self.running)
            .any(|o| o.bytes.start < bytes.end && bytes.start < o.bytes.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn started(g: &mut Gate) -> Vec<u64> {
        let mut v = Vec::new();
        g.start_ready(|id| v.push(id));
        v
    }

    #[test]
    fn overlapping_ops_start_in_admission_order_and_reads_share() {
        let mut g = Gate::new(8);
        g.admit(1, 0..10, Access::Write);
        g.admit(2, 5..15, Access::Read);
        g.admit(3, 12..20, Access::Read);
        g.admit(4, 100..110, Access::Write);
        g.admit(5, 14..16, Access::Write);
        // 2 waits for 1; 3 overlaps 2 but both read; 5 waits for 2 and 3.
        assert_eq!(started(&mut g), vec![1, 3, 4]);
        g.finish(1);
        assert_eq!(started(&mut g), vec![2]);
        g.finish(3);
        assert_eq!(started(&mut g), Vec::<u64>::new());
        g.finish(2);
        assert_eq!(started(&mut g), vec![5]);
        assert!(g.busy(0..15));
        assert!(!g.busy_but(5, 14..16) && g.busy_but(4, 14..16));
        g.finish(5);
        g.finish(4);
        assert!(!g.busy(0..1000));
    }
}
