//! Retry delays: exponential backoff with jitter from a seeded RNG, so tests and the
//! simulator replay the same delays.

/// SplitMix64: tiny, fast, and good enough to spread retries apart.
#[derive(Clone, Debug)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Jitter {
        Jitter { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Delay before retry number `attempt` (1 = first retry): `initial * 2^(attempt-1)`
    /// capped at `max`, then a uniform pick from its upper half ("equal jitter"), so
    /// retries neither synchronise nor collapse to zero.
    pub fn delay_ns(&mut self, attempt: u32, initial_ns: u64, max_ns: u64) -> u64 {
        let shift = attempt.saturating_sub(1).min(32);
        let full = initial_ns.saturating_mul(1u64 << shift).min(max_ns).max(1);
        let half = full / 2;
        half + self.next_u64() % (full - half + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap_and_stay_in_the_upper_half() {
        let mut j = Jitter::new(1);
        for attempt in 1..40 {
            let d = j.delay_ns(attempt, 100, 10_000);
            let full = (100u64 << (attempt - 1).min(32)).min(10_000);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}");
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let a: Vec<u64> = (1..10)
            .map({
                let mut j = Jitter::new(7);
                move |n| j.delay_ns(n, 1000, 1 << 20)
            })
            .collect();
        let b: Vec<u64> = (1..10)
            .map({
                let mut j = Jitter::new(7);
                move |n| j.delay_ns(n, 1000, 1 << 20)
            })
            .collect();
        assert_eq!(a, b);
    }
}
