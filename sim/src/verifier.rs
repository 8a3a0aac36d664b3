//! Failures: Driver Verifier's I/O rules, the oracle's rules, liveness. A run stops at
//! the first; a verifier violation is a failure like any other.
//!
//! The I/O rules checked (by the I/O manager in `kernel.rs`, which calls [`Verifier`]):
//! * an IRP is completed exactly once by its owner, and never after it was freed;
//! * a dispatch routine returns `STATUS_PENDING` if and only if it marked the IRP
//!   pending (`IoMarkIrpPending`) at its own location;
//! * no IRP is completed, or passed to `IoCallDriver`, while a cancel routine is set
//!   (for a WDF request: while it is marked cancelable and was not cancelled);
//! * a request a driver keeps after its queue callback is cancelable (KMDF);
//! * no driver touches an IRP after passing it on (`IoCallDriver`) or completing it,
//!   unless its completion routine took it back (`STATUS_MORE_PROCESSING_REQUIRED`);
//! * no stack-location underflow (`IoCallDriver` with no location left) or overflow
//!   (skipping or completing past the top);
//! * no data is touched through an MDL whose IRP is gone;
//! * every IRP is freed by the end of a run (no leaks, no lost completions).

use std::fmt;

/// Which rule a failure broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Completed twice, or by a driver that does not own it.
    DoubleCompletion,
    /// Returned `STATUS_PENDING` without marking the IRP pending.
    PendingNotMarked,
    /// Marked pending but returned another status.
    MarkedNotPending,
    /// Completed with a cancel routine still set (for a WDF request: still marked
    /// cancelable, and not cancelled).
    CompletedWithCancelRoutine,
    /// Passed to `IoCallDriver` (or forwarded to a queue) with a cancel routine still set.
    SentWithCancelRoutine,
    /// A request the driver kept after its queue callback returned is not cancelable,
    /// or it broke another KMDF request rule (marked twice, unmarked unmarked).
    WdfRequest,
    /// Touched by a driver that does not own it (after passing it on or completing it).
    NotOwner,
    /// A handle used after the IRP was freed.
    UseAfterFree,
    /// `IoCallDriver`/`IoGetNextIrpStackLocation` with no location left.
    StackUnderflow,
    /// Skipped or completed past the top location.
    StackOverflow,
    /// Data touched through an MDL whose IRP is gone or no longer owned.
    StaleMdl,
    /// An IRP never freed, or an operation never completed, by the end.
    Leak,
    /// DESIGN.md rule 1: a read returned something other than the newest acknowledged
    /// write or the backup's data.
    ReadValue,
    /// Rule 2: a region durably marked while its data was not durable, or a durable
    /// mark lost.
    DurableMark,
    /// Rule 3: after reboot a sector holds neither its flushed value nor a later one.
    CrashState,
    /// Rule 4: restore data overwrote newer application data.
    StaleRestore,
    /// Rule 5: a request completed with an error that nothing in the run explains, or
    /// with a wrong status or length.
    Status,
    /// A request overtook an earlier held request on the same sectors.
    Ordering,
    /// The run did not settle: requests hung, or the restore never finished.
    Liveness,
    /// The driver panicked or refused to start.
    Driver,
    /// Write capture and its journal (`journal.rs`): a point that does not replay to
    /// the volume, a point inside an epoch or a gap, a record lost or out of order.
    Journal,
}

impl Rule {
    /// Short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Rule::DoubleCompletion => "verifier:double-completion",
            Rule::PendingNotMarked => "verifier:pending-not-marked",
            Rule::MarkedNotPending => "verifier:marked-not-pending",
            Rule::CompletedWithCancelRoutine => "verifier:completed-with-cancel-routine",
            Rule::SentWithCancelRoutine => "verifier:sent-with-cancel-routine",
            Rule::WdfRequest => "verifier:wdf-request",
            Rule::NotOwner => "verifier:not-owner",
            Rule::UseAfterFree => "verifier:use-after-free",
            Rule::StackUnderflow => "verifier:stack-underflow",
            Rule::StackOverflow => "verifier:stack-overflow",
            Rule::StaleMdl => "verifier:stale-mdl",
            Rule::Leak => "verifier:leak",
            Rule::ReadValue => "oracle:read-value",
            Rule::DurableMark => "oracle:durable-mark",
            Rule::CrashState => "oracle:crash-state",
            Rule::StaleRestore => "oracle:stale-restore",
            Rule::Status => "oracle:status",
            Rule::Ordering => "oracle:ordering",
            Rule::Liveness => "liveness",
            Rule::Driver => "driver",
            Rule::Journal => "journal",
        }
    }

    /// True for Driver Verifier's I/O rules.
    pub const fn is_verifier(self) -> bool {
        matches!(
            self,
            Rule::DoubleCompletion
                | Rule::PendingNotMarked
                | Rule::MarkedNotPending
                | Rule::CompletedWithCancelRoutine
                | Rule::SentWithCancelRoutine
                | Rule::WdfRequest
                | Rule::NotOwner
                | Rule::UseAfterFree
                | Rule::StackUnderflow
                | Rule::StackOverflow
                | Rule::StaleMdl
                | Rule::Leak
        )
    }
}

/// One failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// Simulated time it was seen.
    pub time_ns: u64,
    /// What exactly.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at t={}ns: {}",
            self.rule.name(),
            self.time_ns,
            self.detail
        )
    }
}

/// Collects failures; the run loop stops once there is one.
#[derive(Debug, Default)]
pub struct Verifier {
    first: Option<Violation>,
    count: u64,
    now_ns: u64,
}

impl Verifier {
    /// Records a failure (the first one is kept whole, later ones only counted: they are
    /// usually consequences of the first).
    #[cold]
    pub fn fail(&mut self, rule: Rule, detail: impl Into<String>) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(Violation {
                rule,
                time_ns: self.now_ns,
                detail: detail.into(),
            });
        }
    }

    /// Keeps the clock for failure reports.
    #[inline]
    pub fn set_now(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// True once anything failed.
    #[inline]
    pub fn failed(&self) -> bool {
        self.first.is_some()
    }

    /// The first failure.
    pub fn first(&self) -> Option<&Violation> {
        self.first.as_ref()
    }

    /// Failures seen.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_kept_and_later_ones_counted() {
        let mut v = Verifier::default();
        assert!(!v.failed());
        v.set_now(5);
        v.fail(Rule::NotOwner, "a");
        v.fail(Rule::Leak, "b");
        assert!(v.failed());
        assert_eq!(v.count(), 2);
        assert_eq!(v.first().unwrap().rule, Rule::NotOwner);
        assert_eq!(
            v.first().unwrap().to_string(),
            "verifier:not-owner at t=5ns: a"
        );
        assert!(Rule::Leak.is_verifier() && !Rule::ReadValue.is_verifier());
    }
}
