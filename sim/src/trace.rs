//! The trace hash: everything that decides what happens is folded into one `u64`, so
//! two runs of a seed are compared by a number (`--check-determinism`).

use crate::rng::mix64;

/// A running hash of the run's events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    hash: u64,
    events: u64,
}

impl Trace {
    /// Folds `x` in. Order matters: a reordering is a different trace.
    #[inline]
    pub fn mix(&mut self, x: u64) {
        self.hash = mix64(self.hash.rotate_left(5) ^ x);
        self.events += 1;
    }

    /// The hash so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Values folded in so far.
    pub fn events(&self) -> u64 {
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_changes_the_hash() {
        let mut a = Trace::default();
        a.mix(1);
        a.mix(2);
        let mut b = Trace::default();
        b.mix(2);
        b.mix(1);
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.events(), 2);
    }
}
