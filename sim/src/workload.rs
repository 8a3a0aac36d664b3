//! What the file system asks of the volume: a tunable mix of reads, writes, FUA writes,
//! flushes and trims of 512 B to 1 MiB, aligned to regions or not, in hot spots and
//! sequential runs, with a few requests no volume can serve.

use crate::oracle::OpKind;
use crate::rng::Rng;

/// The mix, in parts per thousand, and the shape of requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Reads.
    pub read: u32,
    /// Writes.
    pub write: u32,
    /// FUA writes.
    pub fua_write: u32,
    /// Flushes.
    pub flush: u32,
    /// Trims.
    pub trim: u32,
    /// Length queries.
    pub get_length: u32,
    /// Requests past the end of the volume.
    pub bad: u32,
    /// Requests in flight at most.
    pub depth_max: u32,
    /// Percent of requests in the hot spot.
    pub hot_pct: u32,
    /// Percent continuing the previous request (sequential runs).
    pub sequential_pct: u32,
    /// Percent aligned to whole regions.
    pub aligned_pct: u32,
    /// Typical time between requests.
    pub think_ns: u64,
    /// Largest request, in 512-byte sectors (2048 = 1 MiB).
    pub max_sectors: u64,
    /// Percent of unaligned requests that are large (129 sectors up to the largest), as
    /// a file copy or a read-ahead issues them.
    pub large_pct: u32,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            read: 440,
            write: 330,
            fua_write: 50,
            flush: 80,
            trim: 40,
            get_length: 10,
            bad: 10,
            depth_max: 16,
            hot_pct: 50,
            sequential_pct: 20,
            aligned_pct: 40,
            think_ns: 30_000,
            max_sectors: 2048,
            large_pct: 5,
        }
    }
}

/// One request to issue: kind, first sector, sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What.
    pub kind: OpKind,
    /// First 512-byte sector.
    pub sector: u64,
    /// Sectors.
    pub count: u64,
}

/// The generator's state.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The mix.
    pub config: WorkloadConfig,
    sectors: u64,
    region_sectors: u64,
    align_sectors: u64,
    hot_start: u64,
    hot_len: u64,
    last_end: u64,
}

impl Workload {
    /// A workload on a volume of `sectors` sectors with regions of `region_sectors`,
    /// whose device wants multiples of `align_sectors` (8 on a 4Kn device).
    pub fn new(
        config: WorkloadConfig,
        sectors: u64,
        region_sectors: u64,
        align_sectors: u64,
        rng: &mut Rng,
    ) -> Workload {
        let hot_len = (region_sectors * 16).min(sectors);
        let hot_start = rng.below(sectors - hot_len + 1) / align_sectors * align_sectors;
        Workload {
            config,
            sectors,
            region_sectors,
            align_sectors,
            hot_start,
            hot_len,
            last_end: 0,
        }
    }

    /// The next request.
    pub fn next(&mut self, rng: &mut Rng) -> Request {
        let c = &self.config;
        let total = c.read + c.write + c.fua_write + c.flush + c.trim + c.get_length + c.bad;
        let mut x = rng.below(u64::from(total.max(1))) as u32;
        let mut pick = |w: u32| {
            let hit = x < w;
            x = x.saturating_sub(w);
            hit
        };
        let kind = if pick(c.read) {
            OpKind::Read
        } else if pick(c.write) {
            OpKind::Write { fua: false }
        } else if pick(c.fua_write) {
            OpKind::Write { fua: true }
        } else if pick(c.flush) {
            OpKind::Flush
        } else if pick(c.trim) {
            OpKind::Trim
        } else if pick(c.get_length) {
            OpKind::GetLength
        } else {
            OpKind::Bad
        };
        match kind {
            OpKind::Flush | OpKind::GetLength => Request {
                kind,
                sector: 0,
                count: 0,
            },
            OpKind::Bad => Request {
                kind,
                sector: self.sectors + rng.below(64),
                count: self.align_sectors,
            },
            _ => {
                let (sector, count) = self.place(rng);
                Request {
                    kind,
                    sector,
                    count,
                }
            }
        }
    }

    fn size(&self, rng: &mut Rng) -> u64 {
        // Mostly small, some medium, a few (`large_pct`) up to 1 MiB.
        if rng.below(100) < u64::from(self.config.large_pct) {
            return rng.range(129, 2048);
        }
        if rng.below(19) < 12 {
            rng.range(1, 8)
        } else {
            rng.range(9, 128)
        }
    }

    fn place(&mut self, rng: &mut Rng) -> (u64, u64) {
        let a = self.align_sectors;
        let (mut sector, mut count) = if rng.below(100) < u64::from(self.config.aligned_pct) {
            let regions = self.sectors.div_ceil(self.region_sectors);
            let n = rng.range(1, 4.min(regions));
            // Region-aligned sequential runs: the next regions are what the service's
            // scan-ahead is fetching, so writes race restore data there.
            let first = if rng.below(100) < u64::from(self.config.sequential_pct) * 2 {
                self.last_end.div_ceil(self.region_sectors) % regions
            } else {
                rng.below(regions)
            };
            (first * self.region_sectors, n * self.region_sectors)
        } else {
            let count = self.size(rng).div_ceil(a) * a;
            let sector = if rng.below(100) < u64::from(self.config.sequential_pct) {
                self.last_end
            } else if rng.below(100) < u64::from(self.config.hot_pct) {
                self.hot_start + rng.below(self.hot_len)
            } else {
                rng.below(self.sectors)
            };
            (sector / a * a, count)
        };
        if sector >= self.sectors {
            sector = 0;
        }
        count = count.min(self.config.max_sectors.max(a) / a * a);
        count = count
            .min(self.sectors - sector)
            .max(a.min(self.sectors - sector));
        debug_assert!(count > 0 && sector + count <= self.sectors);
        debug_assert!(sector % a == 0 && count % a == 0);
        self.last_end = (sector + count) % self.sectors;
        (sector, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_inside_the_volume_and_aligned_to_the_device() {
        let mut rng = Rng::new(9);
        for align in [1, 8] {
            let mut w = Workload::new(WorkloadConfig::default(), 8192 + 8 * 3, 32, align, &mut rng);
            let mut kinds = std::collections::BTreeSet::new();
            for _ in 0..5000 {
                let r = w.next(&mut rng);
                kinds.insert(format!("{:?}", r.kind));
                match r.kind {
                    OpKind::Bad => assert!(r.sector >= 8192 + 24),
                    OpKind::Flush | OpKind::GetLength => {}
                    _ => {
                        assert!(r.count >= 1 && r.count <= 2048 && r.sector + r.count <= 8192 + 24);
                        assert_eq!(r.sector % align, 0);
                        assert_eq!(r.count % align, 0);
                    }
                }
            }
            assert_eq!(kinds.len(), 7, "every kind shows up: {kinds:?}");
        }
    }
}
