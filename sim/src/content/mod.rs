//! Expected content of a simulated device, kept as intervals: the bookkeeping the
//! oracles share.
//!
//! * [`intervals`]: an interval map over sectors, and a set of sector ranges;
//! * [`allowed`]: what a run of sectors may hold — a source (the backup, a write, a
//!   constant), a set of sources, or anything written — and the values they stand for;
//! * [`durable`]: what survives power loss — stable values and a log of what was applied
//!   since, with flushes, FUA writes and crashes.
//!
//! The T1 oracle (`oracle/`) holds one of each for its volume: what a read may return
//! now, and what a power loss may leave. An oracle of another device (an overlay, a
//! journal's point, a disaster-recovery copy) instantiates the same pieces for it.

pub mod allowed;
pub mod durable;
pub mod intervals;

pub use allowed::{Allowed, Expect, Src, Values};
pub use durable::Durable;
pub use intervals::{IntervalMap, RangeSet};
