//! Simulated time and the event queue.
//!
//! Events run in (time, sequence) order; the sequence number breaks ties in the order
//! events were scheduled, so the order never depends on anything but the seed. Every
//! latency that decides an interleaving comes from the run's one RNG.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::irp::IrpId;

/// Something scheduled to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ev {
    /// The device finishes an IRP.
    DeviceDone(IrpId),
    /// The device's cache writes its oldest entry to the medium on its own.
    Destage,
    /// The filter's WDF timer fires (stale generations are ignored: restarted timers).
    FilterTimer {
        /// Timer generation.
        gen: u64,
    },
    /// The filter's commit work item runs.
    CommitWork {
        /// Commit number.
        commit: u64,
    },
    /// The file system may issue its next requests.
    FsTick,
    /// The file system cancels a request it has in flight.
    FsCancel,
    /// A reply from the backup reaches the service.
    LinkReply {
        /// Slot in the link's reply table.
        slot: u32,
    },
    /// The link's state changes (disconnect, reconnect, outage start and end).
    LinkState,
    /// The service's periodic tick.
    ServiceTick {
        /// The service instance it belongs to.
        instance: u32,
    },
    /// The service starts (after boot or after being killed).
    ServiceStart,
    /// The service is killed.
    ServiceKill,
    /// Power is lost.
    PowerLoss,
    /// Power comes (back) on: the machine boots.
    PowerOn,
    /// The journaling service's tick (`machine/capture.rs`), of one capture's life.
    JournalTick {
        /// Generation: a power loss ends the chain.
        gen: u64,
    },
}

impl Ev {
    /// A number per kind, for the trace hash.
    pub fn code(&self) -> u64 {
        match *self {
            Ev::DeviceDone(id) => 1 | u64::from(id.index) << 8,
            Ev::Destage => 2,
            Ev::FilterTimer { gen } => 3 | gen << 8,
            Ev::CommitWork { commit } => 4 | commit << 8,
            Ev::FsTick => 5,
            Ev::FsCancel => 6,
            Ev::LinkReply { slot } => 7 | u64::from(slot) << 8,
            Ev::LinkState => 8,
            Ev::ServiceTick { instance } => 9 | u64::from(instance) << 8,
            Ev::ServiceStart => 11,
            Ev::ServiceKill => 12,
            Ev::PowerLoss => 13,
            Ev::PowerOn => 14,
            Ev::JournalTick { gen } => 15 | gen << 8,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Scheduled {
    at_ns: u64,
    seq: u64,
    ev: Ev,
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        (other.at_ns, other.seq).cmp(&(self.at_ns, self.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The clock and the queue.
#[derive(Debug, Default)]
pub struct Sched {
    now_ns: u64,
    seq: u64,
    heap: BinaryHeap<Scheduled>,
}

impl Sched {
    /// Now.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Schedules `ev` after `delay_ns`.
    #[inline]
    pub fn after(&mut self, delay_ns: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at_ns: self.now_ns.saturating_add(delay_ns),
            seq: self.seq,
            ev,
        });
    }

    /// The next event, advancing the clock to it.
    #[inline]
    pub fn pop(&mut self) -> Option<Ev> {
        let s = self.heap.pop()?;
        debug_assert!(s.at_ns >= self.now_ns, "time went backwards");
        self.now_ns = s.at_ns;
        Some(s.ev)
    }

    /// Lets time pass without an event, up to `now_ns` (the demo's clock follows the
    /// wall clock while it waits for the service): never past the next event, so events
    /// still come out in order, and never backwards.
    pub fn advance_to(&mut self, now_ns: u64) {
        let cap = self.next_at().unwrap_or(u64::MAX);
        self.now_ns = self.now_ns.max(now_ns.min(cap));
    }

    /// When the next event is due.
    pub fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|s| s.at_ns)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Drops every event (power loss); the clock keeps running.
    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// Drops the events `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&Ev) -> bool) {
        self.heap.retain(|s| keep(&s.ev));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_by_scheduling_order() {
        let mut s = Sched::default();
        s.after(10, Ev::FsTick);
        s.after(5, Ev::Destage);
        s.after(10, Ev::PowerLoss);
        assert_eq!(s.pop(), Some(Ev::Destage));
        assert_eq!(s.now_ns(), 5);
        assert_eq!(s.pop(), Some(Ev::FsTick));
        assert_eq!(s.pop(), Some(Ev::PowerLoss));
        assert_eq!(s.now_ns(), 10);
        assert_eq!(s.pop(), None);
    }

    #[test]
    fn time_passes_up_to_the_next_event_and_never_back() {
        let mut s = Sched::default();
        s.after(100, Ev::FsTick);
        s.advance_to(40);
        assert_eq!(s.now_ns(), 40);
        s.advance_to(500);
        assert_eq!(s.now_ns(), 100, "not past a pending event");
        s.advance_to(10);
        assert_eq!(s.now_ns(), 100);
        assert_eq!(s.pop(), Some(Ev::FsTick));
        s.advance_to(500);
        assert_eq!(s.now_ns(), 500);
    }
}
