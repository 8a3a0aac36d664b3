//! The restore map as the metadata would load it if power failed now, read from the
//! store's durable image the way `Metadata::open` reads it: per bitmap page, every slot
//! that decodes contributes its bits (ORed), and a page with no valid slot is damage.
//!
//! A commit rewrites one slot of the pages it dirtied (and the header), so most slots
//! are the same bytes from one check to the next. Each slot's bytes are kept with what
//! they decoded to, and a check decodes only the slots whose bytes changed: the cost
//! of the check after a commit follows what that commit wrote, not the map's size. The
//! bytes are compared whole, so a torn or damaged slot is never taken for the one seen
//! before.

use rehydrate_driver::meta::testing::CrashStore;
use rehydrate_driver::meta::{
    decode_page_slot, HEADER_STORE_PAGES, REGIONS_PER_PAGE, WORDS_PER_PAGE,
};

/// One durable slot as last decoded.
#[derive(Clone, Debug, Default)]
struct Slot {
    /// Its bytes then (empty: never read).
    bytes: Vec<u8>,
    /// Its words, when it decoded.
    words: Option<Vec<u64>>,
}

/// The durable restore map of one store, decoded slot by slot as it changes.
#[derive(Clone, Debug, Default)]
pub struct DurableMarks {
    /// Two per bitmap page, in store order.
    slots: Vec<Slot>,
    /// The map loaded from them at the last check.
    words: Vec<u64>,
    /// Slots decoded (rather than found unchanged) so far.
    pub decoded: u64,
}

impl DurableMarks {
    /// Reads the map of `region_count` regions that `store` would load now, for identity
    /// `tag`. `Err(page)`: bitmap page `page` has no valid durable slot.
    pub fn load(&mut self, store: &CrashStore, region_count: u64, tag: u32) -> Result<&[u64], u64> {
        let pages = region_count.div_ceil(REGIONS_PER_PAGE);
        let word_count = region_count.div_ceil(64) as usize;
        self.slots.resize_with(2 * pages as usize, Slot::default);
        self.words.clear();
        self.words.resize(word_count, 0);
        for page in 0..pages {
            let mut valid = false;
            for b in 0..2 {
                let index = HEADER_STORE_PAGES + 2 * page + b;
                let bytes = store.durable_page(index);
                let slot = &mut self.slots[(2 * page + b) as usize];
                if slot.bytes != bytes {
                    slot.bytes.clear();
                    slot.bytes.extend_from_slice(bytes);
                    slot.words = decode_page_slot(bytes, page, tag)
                        .ok()
                        .map(|s| s.words().collect());
                    self.decoded += 1;
                }
                let Some(words) = &slot.words else { continue };
                valid = true;
                let first = page as usize * WORDS_PER_PAGE;
                for (out, w) in self.words.iter_mut().skip(first).zip(words) {
                    *out |= w;
                }
            }
            if !valid {
                return Err(page);
            }
        }
        Ok(&self.words)
    }
}

#[cfg(test)]
mod tests {
    use rehydrate_driver::meta::{identity_tag, Identity, Metadata};
    use rehydrate_driver::Geometry;

    use super::*;

    /// The map a fresh decode of every slot gives (what each check did before).
    fn afresh(store: &CrashStore, region_count: u64, tag: u32) -> Result<Vec<u64>, u64> {
        DurableMarks::default()
            .load(store, region_count, tag)
            .map(<[u64]>::to_vec)
    }

    #[test]
    fn only_rewritten_slots_are_decoded_and_the_map_is_a_fresh_decode() {
        let region_size_bytes = 4096;
        let region_count = 3 * REGIONS_PER_PAGE - 5;
        let volume_size_bytes = region_count * region_size_bytes;
        let geometry = Geometry::new(volume_size_bytes, region_size_bytes as u32).unwrap();
        let identity = Identity {
            volume_size_bytes,
            region_size_bytes: region_size_bytes as u32,
            backup_id: [3; 32],
        };
        let tag = identity_tag(&identity);
        let mut store = CrashStore::new(Metadata::store_pages(&geometry));
        let mut meta = Metadata::create(&mut store, &identity).unwrap();
        let mut marks = DurableMarks::default();
        assert_eq!(
            marks.load(&store, region_count, tag).unwrap(),
            &afresh(&store, region_count, tag).unwrap()[..]
        );
        assert_eq!(marks.decoded, 6, "the first check decodes every slot");
        // A commit of page 1 rewrites one of its slots (and the header).
        let region = REGIONS_PER_PAGE + 70;
        meta.note_marked(region..region + 1);
        let word = (region / 64) as usize;
        meta.commit(
            &mut store,
            |w| if w == word { 1 << (region % 64) } else { 0 },
        )
        .unwrap();
        let loaded = marks.load(&store, region_count, tag).unwrap().to_vec();
        assert_eq!(marks.decoded, 7, "one slot changed, one decoded");
        assert_eq!(loaded, afresh(&store, region_count, tag).unwrap());
        assert_eq!(loaded[word], 1 << (region % 64));
        assert_eq!(loaded.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        // Nothing written: nothing decoded.
        marks.load(&store, region_count, tag).unwrap();
        assert_eq!(marks.decoded, 7);
        // Damage to both slots of page 2 is seen, as a fresh decode sees it.
        for b in 0..2 {
            store.damage(HEADER_STORE_PAGES + 4 + b, 100, 0x40);
        }
        assert_eq!(marks.load(&store, region_count, tag), Err(2));
        assert_eq!(afresh(&store, region_count, tag), Err(2));
    }
}
