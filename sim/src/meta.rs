//! The metadata device: the driver crate's crashable in-memory store, plus power loss
//! in the middle of a commit.
//!
//! A commit runs inside one work item, so without help a crash could only fall between
//! commits. Arming [`MetaDev::die_after`] makes the store stop answering after that
//! many more page operations, as a device does when power fails: the writes before
//! that point sit in its volatile cache, the rest never happen, the flush never
//! completes. The run loop then cuts power.
//!
//! Power loss follows the data device's model (`device.rs`): each write not yet
//! flushed is lost, kept, or torn, and a torn page keeps *any subset* of its 512-byte
//! sectors, not only a prefix (a drive destages its cache in any order). The metadata
//! protocol must survive that too.

use rehydrate_driver::meta::testing::CrashStore;
use rehydrate_driver::meta::{
    decode_header, decode_page_slot, MetaStore, StoreError, HEADER_STORE_PAGES,
    META_PAGE_SIZE_BYTES, META_SECTOR_SIZE_BYTES,
};

/// What a power loss did to the unflushed page writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaCrash {
    /// Writes not flushed.
    pub unflushed: usize,
    /// Kept whole.
    pub kept: usize,
    /// Torn: some sectors landed, others not.
    pub torn: usize,
}

/// The code a store that lost power reports.
pub const POWER_LOST_CODE: u32 = 0xC000_0185;

/// The store behind the filter's metadata.
#[derive(Clone, Debug)]
pub struct MetaDev {
    /// The store itself.
    pub store: CrashStore,
    dies_in: Option<u64>,
    dead: bool,
    /// Writes since the last successful flush, in order.
    unflushed: Vec<(u64, Vec<u8>)>,
}

impl MetaDev {
    /// A store of `pages` zero pages.
    pub fn new(pages: u64) -> MetaDev {
        MetaDev {
            store: CrashStore::new(pages),
            dies_in: None,
            dead: false,
            unflushed: Vec::new(),
        }
    }

    /// Power fails after `ops` more operations.
    pub fn die_after(&mut self, ops: u64) {
        self.dies_in = Some(ops);
    }

    /// Power did not fail after all (the commit did fewer operations than armed for).
    pub fn disarm(&mut self) {
        self.dies_in = None;
    }

    /// True once power failed under a commit; the run loop must cut power now.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Power loss: see the module comment; the store is alive again afterwards.
    pub fn crash(&mut self, random: &mut dyn FnMut() -> u64) -> MetaCrash {
        self.dies_in = None;
        self.dead = false;
        let writes = std::mem::take(&mut self.unflushed);
        let mut report = MetaCrash {
            unflushed: writes.len(),
            ..MetaCrash::default()
        };
        // What the medium holds for each page, the unflushed writes applied in order.
        let mut pages: Vec<(u64, Vec<u8>)> = Vec::new();
        for (index, data) in &writes {
            // Lost, kept whole, or (half the time) torn.
            let choice = random() % 4;
            if choice == 0 {
                continue;
            }
            let at = match pages.iter().position(|(i, _)| i == index) {
                Some(at) => at,
                None => {
                    pages.push((*index, self.store.durable_page(*index).to_vec()));
                    pages.len() - 1
                }
            };
            let page = &mut pages[at].1;
            if choice == 1 {
                report.kept += 1;
                page.copy_from_slice(data);
            } else {
                report.torn += 1;
                for sector in 0..META_PAGE_SIZE_BYTES / META_SECTOR_SIZE_BYTES {
                    if random() & 1 == 1 {
                        let r =
                            sector * META_SECTOR_SIZE_BYTES..(sector + 1) * META_SECTOR_SIZE_BYTES;
                        page[r.clone()].copy_from_slice(&data[r]);
                    }
                }
            }
        }
        // Drop every unflushed write, then lay down what landed.
        self.store.crash(&mut || 0);
        for (index, page) in &pages {
            self.store.put_durable(*index, page);
        }
        report
    }

    /// The generation of durable slot `index`, if it decodes.
    fn slot_generation(&self, index: u64, tag: u32) -> Option<u64> {
        let bytes = self.store.durable_page(index);
        if index < HEADER_STORE_PAGES {
            return decode_header(bytes).ok().map(|h| h.generation);
        }
        let page = (index - HEADER_STORE_PAGES) / 2;
        decode_page_slot(bytes, page, tag)
            .ok()
            .map(|s| s.generation)
    }

    /// True when some page has two valid durable slots (the state in which a commit's
    /// choice of slot matters most).
    pub fn has_page_with_both_slots(&self, tag: u32) -> bool {
        (0..self.store.page_count() / 2).any(|pair| {
            let a = self.slot_generation(2 * pair, tag).is_some();
            a && self.slot_generation(2 * pair + 1, tag).is_some()
        })
    }

    /// A latent media error: flips byte `at` of the older durable slot of the pair that
    /// slot `index` belongs to, when both slots of the pair are valid (the newer one
    /// holds everything committed, so nothing may be lost). True when it did.
    pub fn corrupt_stale_slot(&mut self, index: u64, tag: u32, at: usize) -> bool {
        let first = index & !1;
        let (Some(a), Some(b)) = (
            self.slot_generation(first, tag),
            self.slot_generation(first + 1, tag),
        ) else {
            return false;
        };
        let stale = if a < b { first } else { first + 1 };
        let mut page = self.store.durable_page(stale).to_vec();
        let len = page.len();
        page[at % len] ^= 0x5A;
        self.store.put_durable(stale, &page);
        true
    }

    fn step(&mut self) -> Result<(), StoreError> {
        if self.dead {
            return Err(StoreError::Device {
                code: POWER_LOST_CODE,
            });
        }
        match self.dies_in {
            Some(0) => {
                self.dead = true;
                self.dies_in = None;
                Err(StoreError::Device {
                    code: POWER_LOST_CODE,
                })
            }
            Some(n) => {
                self.dies_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl MetaStore for MetaDev {
    fn page_count(&self) -> u64 {
        self.store.page_count()
    }

    fn read_page(&mut self, index: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.step()?;
        self.store.read_page(index, buf)
    }

    fn write_page(&mut self, index: u64, buf: &[u8]) -> Result<(), StoreError> {
        self.step()?;
        self.store.write_page(index, buf)?;
        self.unflushed.push((index, buf.to_vec()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.step()?;
        self.store.flush()?;
        self.unflushed.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dying_store_stops_answering_and_a_crash_keeps_only_what_was_flushed() {
        let mut d = MetaDev::new(4);
        let page = vec![7u8; 4096];
        d.write_page(0, &page).unwrap();
        d.flush().unwrap();
        d.die_after(1);
        d.write_page(1, &page).unwrap();
        assert!(d.write_page(2, &page).is_err());
        assert!(d.is_dead());
        assert!(d.flush().is_err());
        let report = d.crash(&mut || 0);
        assert_eq!(report.unflushed, 1);
        assert!(!d.is_dead());
        let mut buf = vec![0u8; 4096];
        d.read_page(0, &mut buf).unwrap();
        assert_eq!(buf, page);
        d.read_page(1, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; 4096], "unflushed and dropped by the crash");
    }

    #[test]
    fn a_torn_page_keeps_any_subset_of_its_sectors() {
        let mut mixed_not_prefix = false;
        for seed in 0..64u64 {
            let mut d = MetaDev::new(1);
            d.write_page(0, &vec![1u8; 4096]).unwrap();
            d.flush().unwrap();
            d.write_page(0, &vec![2u8; 4096]).unwrap();
            let mut state = seed;
            d.crash(&mut || crate::rng::splitmix64(&mut state));
            let mut buf = vec![0u8; 4096];
            d.read_page(0, &mut buf).unwrap();
            let sectors: Vec<u8> = buf
                .chunks(512)
                .map(|c| {
                    assert!(c.iter().all(|&b| b == c[0]), "torn inside a sector");
                    c[0]
                })
                .collect();
            assert!(sectors.iter().all(|&v| v == 1 || v == 2));
            let first_old = sectors.iter().position(|&v| v == 1);
            if let Some(i) = first_old {
                mixed_not_prefix |= sectors[i..].contains(&2);
            }
        }
        assert!(mixed_not_prefix, "tears are not only prefixes");
    }
}
