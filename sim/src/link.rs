//! The backup server and the network between it and the service.
//!
//! A fetch is answered after a latency plus its size over the bandwidth, with the
//! range's tags, a block-status map (which regions are holes) and a checksum computed
//! by the server over the true data. Faults, all from the run's RNG: a reply may be
//! dropped (the service's fetch timeout must notice), delayed enough to overtake or be
//! overtaken (reordering), or corrupted on the way (one tag flipped after the checksum
//! was taken: the service must refuse it). The connection may break (replies in flight
//! are lost and fetches fail until it is back) and the backup may be unreachable for
//! longer than the hydrator's deadline (an outage).

use crate::data::{checksum, Backup};
use crate::faults::{Fault, Faults};
use crate::rng::Rng;
use crate::sched::{Ev, Sched};

/// What reaches the service.
#[derive(Debug)]
pub enum Reply {
    /// Data (possibly corrupted on the way) with the server's checksum.
    Data {
        /// Tags of every sector of the fetch's range, holes included (as zeros).
        tags: Vec<u64>,
        /// The server's checksum of the true tags.
        checksum: u64,
    },
    /// The connection failed the request.
    Failed,
}

/// A reply on its way.
#[derive(Debug)]
pub struct InFlight {
    /// The service instance that asked.
    pub instance: u32,
    /// The hydrator's fetch id.
    pub fetch: u64,
    /// Connection generation it was sent on: a disconnect loses it.
    conn: u64,
    /// The reply.
    pub reply: Reply,
}

/// Link tunables, drawn per run.
#[derive(Clone, Copy, Debug)]
pub struct LinkConfig {
    /// Typical one-way latency.
    pub latency_ns: u64,
    /// Bytes per microsecond.
    pub bytes_per_us: u64,
    /// Replies dropped, per million.
    pub drop_ppm: u32,
    /// Replies corrupted, per million.
    pub corrupt_ppm: u32,
    /// Replies delayed a lot, per million.
    pub reorder_ppm: u32,
}

/// The link and the server behind it.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    faults: Faults,
    backup: Backup,
    region_sectors: u64,
    up: bool,
    conn: u64,
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    pool: Vec<Vec<u64>>,
    /// Faults are off (the run is settling).
    pub calm: bool,
    /// Counters.
    pub fetches: u64,
    /// Replies corrupted.
    pub corrupted: u64,
    /// Replies dropped.
    pub dropped: u64,
    /// When a fault last hit a fetch (dropped, corrupted, delayed, refused), for the
    /// liveness bound.
    pub last_fault_ns: Option<u64>,
}

impl Link {
    /// A link to `backup`.
    pub fn new(config: LinkConfig, faults: Faults, backup: Backup, region_sectors: u64) -> Link {
        Link {
            config,
            faults,
            backup,
            region_sectors,
            up: true,
            conn: 0,
            slots: Vec::new(),
            free: Vec::new(),
            pool: Vec::new(),
            calm: false,
            fetches: 0,
            corrupted: 0,
            dropped: 0,
            last_fault_ns: None,
        }
    }

    /// True while the backup can be reached.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The connection breaks (or the backup becomes unreachable): replies in flight are
    /// lost.
    pub fn go_down(&mut self) {
        self.up = false;
        self.conn += 1;
    }

    /// The backup is reachable again.
    pub fn come_up(&mut self) {
        self.up = true;
    }

    /// Sends a fetch of sectors `[sector, sector + count)`.
    pub fn send(
        &mut self,
        instance: u32,
        fetch: u64,
        sector: u64,
        count: u64,
        rng: &mut Rng,
        sched: &mut Sched,
    ) {
        self.fetches += 1;
        let faults = !self.calm;
        if !self.up {
            self.last_fault_ns = Some(sched.now_ns());
            // Connection refused, quickly.
            let delay = rng.latency(self.config.latency_ns / 4 + 1, 4);
            self.put(instance, fetch, Reply::Failed, delay, sched);
            return;
        }
        if faults && self.faults.has(Fault::LinkDrop) && rng.chance(self.config.drop_ppm) {
            self.last_fault_ns = Some(sched.now_ns());
            self.dropped += 1;
            return;
        }
        let mut tags = self.pool.pop().unwrap_or_default();
        tags.clear();
        tags.extend((sector..sector + count).map(|s| self.backup.tag(s)));
        let sum = checksum(&tags);
        if faults && self.faults.has(Fault::LinkCorrupt) && rng.chance(self.config.corrupt_ppm) {
            let at = rng.pick(tags.len());
            tags[at] ^= 1 << rng.below(62);
            self.corrupted += 1;
            self.last_fault_ns = Some(sched.now_ns());
        }
        let transfer_ns = count * 512 * 1000 / self.config.bytes_per_us.max(1);
        let mut delay = rng.latency(self.config.latency_ns, 8) * 2 + transfer_ns;
        if faults && self.faults.has(Fault::LinkReorder) && rng.chance(self.config.reorder_ppm) {
            delay *= rng.range(2, 30);
            self.last_fault_ns = Some(sched.now_ns());
        }
        self.put(
            instance,
            fetch,
            Reply::Data {
                tags,
                checksum: sum,
            },
            delay,
            sched,
        );
    }

    fn put(&mut self, instance: u32, fetch: u64, reply: Reply, delay: u64, sched: &mut Sched) {
        let entry = InFlight {
            instance,
            fetch,
            conn: self.conn,
            reply,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        sched.after(delay, Ev::LinkReply { slot });
    }

    /// The reply in `slot` arrives at `now_ns`: a reply sent on a connection that broke
    /// since is a failure.
    pub fn take(&mut self, slot: u32, now_ns: u64) -> Option<InFlight> {
        let mut entry = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        if entry.conn != self.conn {
            self.last_fault_ns = Some(now_ns);
            if let Reply::Data { tags, .. } = std::mem::replace(&mut entry.reply, Reply::Failed) {
                self.pool.push(tags);
            }
        }
        Some(entry)
    }

    /// Returns a reply's buffer for reuse.
    pub fn recycle(&mut self, tags: Vec<u64>) {
        self.pool.push(tags);
    }

    /// Which regions of a fetch are holes, for block status.
    pub fn is_hole(&self, region: u64) -> bool {
        self.backup.region_is_zero(region)
    }

    /// Sectors per region.
    pub fn region_sectors(&self) -> u64 {
        self.region_sectors
    }

    /// Power loss: nothing is in flight any more.
    pub fn reset(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.up = true;
        self.conn += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(faults: Faults) -> Link {
        let config = LinkConfig {
            latency_ns: 1000,
            bytes_per_us: 100,
            drop_ppm: 0,
            corrupt_ppm: 1_000_000,
            reorder_ppm: 0,
        };
        Link::new(config, faults, Backup::new(1, 4096, 0), 8)
    }

    #[test]
    fn corrupt_replies_fail_their_checksum_and_clean_ones_pass() {
        for (faults, corrupt) in [
            (Faults::NONE, false),
            (Faults::NONE.with(Fault::LinkCorrupt), true),
        ] {
            let mut l = link(faults);
            let mut sched = Sched::default();
            let mut rng = Rng::new(5);
            l.send(1, 7, 0, 16, &mut rng, &mut sched);
            let Some(Ev::LinkReply { slot }) = sched.pop() else {
                panic!("no reply")
            };
            let r = l.take(slot, 0).unwrap();
            let Reply::Data {
                tags,
                checksum: sum,
            } = r.reply
            else {
                panic!("failed")
            };
            assert_eq!(checksum(&tags) != sum, corrupt);
        }
    }

    #[test]
    fn a_disconnect_loses_replies_in_flight() {
        let mut l = link(Faults::NONE);
        let mut sched = Sched::default();
        let mut rng = Rng::new(5);
        l.send(1, 7, 0, 16, &mut rng, &mut sched);
        l.go_down();
        let Some(Ev::LinkReply { slot }) = sched.pop() else {
            panic!("no reply")
        };
        assert!(matches!(l.take(slot, 0).unwrap().reply, Reply::Failed));
        l.send(1, 8, 0, 16, &mut rng, &mut sched);
        let Some(Ev::LinkReply { slot }) = sched.pop() else {
            panic!("no reply")
        };
        assert!(
            matches!(l.take(slot, 0).unwrap().reply, Reply::Failed),
            "refused while down"
        );
    }
}
