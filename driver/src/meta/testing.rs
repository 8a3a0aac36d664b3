//! An in-memory [`MetaStore`] with a volatile write cache and a crash model, for the
//! metadata tests here and for the simulator.
//!
//! It keeps two images (redb `tests/crash_consistency.rs` style): `live`, what reads
//! see, and `durable`, what survives power loss. A write lands in `live` and in a log of
//! unflushed writes; `flush` applies the log to `durable`. [`CrashStore::crash`] keeps a
//! random subset of the unflushed writes (in their order), tears one of the kept ones
//! after a random number of its 512-byte sectors (any prefix, from none to all), and
//! makes `live` the durable image. Faults can be injected: the n-th next operation fails.

use alloc::vec;
use alloc::vec::Vec;

use super::{MetaStore, StoreError, META_PAGE_SIZE_BYTES, META_SECTOR_SIZE_BYTES};

/// The device code a store fault injected by [`CrashStore::fail_after`] reports.
pub const INJECTED_FAULT_CODE: u32 = 0xC000_0185;

/// A deterministic random step (splitmix64), so a seed replays a crash exactly.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Operations a store has served, for tests that count I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Page reads.
    pub reads: u64,
    /// Page writes.
    pub writes: u64,
    /// Flushes.
    pub flushes: u64,
}

/// What a crash did to the unflushed writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unflushed writes at the crash.
    pub unflushed: usize,
    /// Of them, kept (the torn one included).
    pub kept: usize,
    /// The torn write's page and how many of its sectors reached the medium.
    pub torn: Option<(u64, usize)>,
}

/// The in-memory crash store. See the module comment.
#[derive(Clone, Debug)]
pub struct CrashStore {
    live: Vec<u8>,
    durable: Vec<u8>,
    unflushed: Vec<(u64, Vec<u8>)>,
    fail_in: Option<u64>,
    counts: StoreCounts,
}

const SECTORS_PER_PAGE: usize = META_PAGE_SIZE_BYTES / META_SECTOR_SIZE_BYTES;

impl CrashStore {
    /// A store of `page_count` zero pages, all durable.
    pub fn new(page_count: u64) -> CrashStore {
        let bytes = page_count as usize * META_PAGE_SIZE_BYTES;
        CrashStore {
            live: vec![0; bytes],
            durable: vec![0; bytes],
            unflushed: Vec::new(),
            fail_in: None,
            counts: StoreCounts::default(),
        }
    }

    /// Operations served so far.
    pub fn counts(&self) -> StoreCounts {
        self.counts
    }

    /// Writes not yet flushed.
    pub fn unflushed_count(&self) -> usize {
        self.unflushed.len()
    }

    /// Page `index` as reads see it.
    pub fn live_page(&self, index: u64) -> &[u8] {
        &self.live[Self::range(index)]
    }

    /// Page `index` as it would survive a crash now.
    pub fn durable_page(&self, index: u64) -> &[u8] {
        &self.durable[Self::range(index)]
    }

    /// XORs `mask` into byte `offset` of page `index`, in both images (media damage).
    pub fn damage(&mut self, index: u64, offset: usize, mask: u8) {
        let at = Self::range(index).start + offset;
        self.live[at] ^= mask;
        self.durable[at] ^= mask;
    }

    /// Overwrites page `index` in both images, as if written and flushed.
    pub fn put_durable(&mut self, index: u64, page: &[u8]) {
        let range = Self::range(index);
        self.live[range.clone()].copy_from_slice(page);
        self.durable[range].copy_from_slice(page);
    }

    /// The next `ops` operations succeed, the one after fails with a device error (and
    /// has no effect). Cleared by [`CrashStore::clear_faults`] and by a crash.
    pub fn fail_after(&mut self, ops: u64) {
        self.fail_in = Some(ops);
    }

    /// No more injected faults.
    pub fn clear_faults(&mut self) {
        self.fail_in = None;
    }

    /// Power loss: see the module comment. `random()` gives uniformly random `u64`s.
    pub fn crash(&mut self, random: &mut dyn FnMut() -> u64) -> CrashReport {
        let unflushed = core::mem::take(&mut self.unflushed);
        let kept: Vec<(u64, Vec<u8>)> = unflushed
            .iter()
            .filter(|_| random() & 1 == 1)
            .cloned()
            .collect();
        let mut report = CrashReport {
            unflushed: unflushed.len(),
            kept: kept.len(),
            torn: None,
        };
        let torn = if kept.is_empty() {
            None
        } else {
            Some((random() % kept.len() as u64) as usize)
        };
        for (i, (index, data)) in kept.iter().enumerate() {
            let range = Self::range(*index);
            let sectors = if Some(i) == torn {
                let sectors = (random() % (SECTORS_PER_PAGE as u64 + 1)) as usize;
                report.torn = Some((*index, sectors));
                sectors
            } else {
                SECTORS_PER_PAGE
            };
            let len = sectors * META_SECTOR_SIZE_BYTES;
            self.durable[range.start..range.start + len].copy_from_slice(&data[..len]);
        }
        self.live.copy_from_slice(&self.durable);
        self.fail_in = None;
        report
    }

    /// Counts one operation down toward an injected fault.
    fn take_fault(&mut self) -> Result<(), StoreError> {
        match self.fail_in {
            Some(0) => {
                self.fail_in = None;
                Err(StoreError::Device {
                    code: INJECTED_FAULT_CODE,
                })
            }
            Some(n) => {
                self.fail_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn range(index: u64) -> core::ops::Range<usize> {
        let start = index as usize * META_PAGE_SIZE_BYTES;
        start..start + META_PAGE_SIZE_BYTES
    }

    fn check(&mut self, index: u64, len: usize) -> Result<core::ops::Range<usize>, StoreError> {
        assert_eq!(len, META_PAGE_SIZE_BYTES, "page buffers are one page");
        self.take_fault()?;
        let page_count = self.page_count();
        if index >= page_count {
            return Err(StoreError::OutOfRange { index, page_count });
        }
        Ok(Self::range(index))
    }
}

impl MetaStore for CrashStore {
    fn page_count(&self) -> u64 {
        (self.live.len() / META_PAGE_SIZE_BYTES) as u64
    }

    fn read_page(&mut self, index: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let range = self.check(index, buf.len())?;
        self.counts.reads += 1;
        buf.copy_from_slice(&self.live[range]);
        Ok(())
    }

    fn write_page(&mut self, index: u64, buf: &[u8]) -> Result<(), StoreError> {
        let range = self.check(index, buf.len())?;
        self.counts.writes += 1;
        self.live[range].copy_from_slice(buf);
        self.unflushed.push((index, buf.to_vec()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.take_fault()?;
        self.counts.flushes += 1;
        for (index, data) in core::mem::take(&mut self.unflushed) {
            self.durable[Self::range(index)].copy_from_slice(&data);
        }
        Ok(())
    }
}
