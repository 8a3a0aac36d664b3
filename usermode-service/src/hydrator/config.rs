//! The hydrator's tunables and their checks.

use rehydrate_driver::abi::HYDRATE_MAX_BYTES;
use rehydrate_driver::Geometry;

/// Default bytes per fetch: large enough to amortise a round trip, small enough that
/// eight in flight hold 8 MiB.
pub const FETCH_SIZE_DEFAULT_BYTES: u64 = 1024 * 1024;
/// Default fetches in flight.
pub const IN_FLIGHT_DEFAULT: usize = 8;
/// Most fetches in flight any configuration may ask for (bounds every per-fetch table).
pub const IN_FLIGHT_MAX: usize = 256;
/// Default time a failing fetch keeps being retried before it is reported.
pub const DEADLINE_DEFAULT_NS: u64 = 30_000_000_000;

/// Tunables of a [`super::Hydrator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HydratorConfig {
    /// Largest fetch: whole regions, at most the ABI's hydrate bound (8 MiB).
    pub fetch_size_bytes: u64,
    /// Most fetches at the source at once.
    pub in_flight_max: usize,
    /// Slots on-demand work leaves to the background sweep while the sweep has work, so
    /// constant misses never starve it (0 = strict priority). Less than `in_flight_max`.
    pub background_floor_slots: usize,
    /// Background bytes per second, or `None` for no limit. The floor above still holds
    /// a slot for the sweep; this only paces it.
    pub background_rate_bytes_per_sec: Option<u64>,
    /// Bytes past an on-demand miss fetched next (scan-ahead); 0 turns it off.
    pub scan_ahead_bytes: u64,
    /// A fetch failing transiently is retried until this long after its first failure,
    /// then reported.
    pub deadline_ns: u64,
    /// First retry delay; doubles per attempt up to `backoff_max_ns`, with jitter.
    pub backoff_initial_ns: u64,
    /// Longest retry delay.
    pub backoff_max_ns: u64,
    /// Retries of a fetch whose data failed verification before it is reported corrupt.
    pub corrupt_retries: u32,
    /// Ask the source for block status so holes are zero-filled without transfer.
    pub block_status: bool,
    /// Seed of the jitter RNG (fixed in tests, so runs are reproducible).
    pub seed: u64,
}

impl Default for HydratorConfig {
    fn default() -> Self {
        HydratorConfig {
            fetch_size_bytes: FETCH_SIZE_DEFAULT_BYTES,
            in_flight_max: IN_FLIGHT_DEFAULT,
            background_floor_slots: 1,
            background_rate_bytes_per_sec: None,
            scan_ahead_bytes: FETCH_SIZE_DEFAULT_BYTES,
            deadline_ns: DEADLINE_DEFAULT_NS,
            backoff_initial_ns: 50_000_000,
            backoff_max_ns: 5_000_000_000,
            corrupt_retries: 3,
            block_status: true,
            seed: 0x5eed,
        }
    }
}

/// Why a configuration is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The fetch size is not a whole number of regions between one region and 8 MiB.
    #[error("fetch size {fetch_size_bytes} bytes must be a multiple of the {region_size_bytes}-byte region size, at most {max} bytes")]
    FetchSize {
        /// Asked for.
        fetch_size_bytes: u64,
        /// The region size.
        region_size_bytes: u32,
        /// The ABI's hydrate bound.
        max: u32,
    },
    /// In-flight count outside 1..=256.
    #[error("fetches in flight {0} must be from 1 to 256")]
    InFlight(usize),
    /// The background floor leaves on-demand misses no slot.
    #[error("background floor of {floor} slots must be below {in_flight} fetches in flight")]
    Floor {
        /// Asked for.
        floor: usize,
        /// Fetches in flight.
        in_flight: usize,
    },
    /// A zero rate limit would never fetch.
    #[error("background rate limit must be above zero")]
    Rate,
}

impl HydratorConfig {
    /// Checks the configuration against a geometry.
    pub fn check(&self, geometry: &Geometry) -> Result<(), ConfigError> {
        let region = u64::from(geometry.region_size_bytes());
        if self.fetch_size_bytes < region
            || self.fetch_size_bytes % region != 0
            || self.fetch_size_bytes > u64::from(HYDRATE_MAX_BYTES)
        {
            return Err(ConfigError::FetchSize {
                fetch_size_bytes: self.fetch_size_bytes,
                region_size_bytes: geometry.region_size_bytes(),
                max: HYDRATE_MAX_BYTES,
            });
        }
        if self.in_flight_max == 0 || self.in_flight_max > IN_FLIGHT_MAX {
            return Err(ConfigError::InFlight(self.in_flight_max));
        }
        if self.background_floor_slots >= self.in_flight_max {
            return Err(ConfigError::Floor {
                floor: self.background_floor_slots,
                in_flight: self.in_flight_max,
            });
        }
        if self.background_rate_bytes_per_sec == Some(0) {
            return Err(ConfigError::Rate);
        }
        Ok(())
    }
}
