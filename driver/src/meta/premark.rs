//! A restore that starts with regions already marked (DESIGN.md section 6): T3's
//! in-place recovery marks every region the target already holds as the point has it,
//! T5 after a crash the regions it knows are current, so only the rest is fetched.
//!
//! The contract is the caller's: each region passed is *durably* on the target with the
//! data the source has there (the target was flushed since it was last written). The
//! marks are committed before this returns, so a restore that is killed right after
//! resumes with them, exactly as if it had restored them itself.

use core::ops::Range;

use super::{CommitStats, MetaError, MetaStore, Metadata};
use crate::region::RegionMap;

/// Marks `regions` in `map` and commits them to `meta` through `store`.
pub fn premark<S: MetaStore + ?Sized>(
    meta: &mut Metadata,
    store: &mut S,
    map: &RegionMap,
    regions: impl IntoIterator<Item = Range<u64>>,
) -> Result<CommitStats, MetaError> {
    let count = map.region_count();
    for r in regions {
        let r = r.start.min(count)..r.end.min(count);
        if r.is_empty() {
            continue;
        }
        map.mark_range(r.clone());
        meta.note_marked(r);
    }
    // Every bit of the map is durable data by the contract above.
    meta.commit(store, |word| map.word(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Geometry;
    use crate::meta::testing::CrashStore;
    use crate::meta::Identity;

    #[test]
    fn premarked_regions_survive_a_reopen_and_nothing_else_is_marked() {
        let geometry = Geometry::new(64 * 4096, 4096).unwrap();
        let identity = Identity {
            volume_size_bytes: geometry.volume_size_bytes(),
            region_size_bytes: 4096,
            backup_id: [3; 32],
        };
        let mut store = CrashStore::new(Metadata::store_pages(&geometry));
        let mut meta = Metadata::create(&mut store, &identity).unwrap();
        let map = RegionMap::new(geometry).unwrap();
        premark(&mut meta, &mut store, &map, [0..10, 20..64, 70..80]).unwrap();
        assert_eq!(map.restored_count(), 54);
        let reopened = RegionMap::new(geometry).unwrap();
        Metadata::open(&mut store, &identity, &reopened).unwrap();
        assert_eq!(reopened.restored_count(), 54);
        assert!(!reopened.is_restored(10) && reopened.is_restored(20));
    }
}
