//! `decide`: which versions of a manifest the receiver may publish now. Pure: it reads
//! the manifest, what the receiver has published and which chunks it holds durably, and
//! says nothing of how those facts were learned.
//!
//! A version may be published when every chunk it names is held durably and every
//! earlier manifest version of its volume is published (or is in the same answer,
//! earlier). So what a volume shows is always a prefix of the sender's chain: a version
//! whose chunks have all arrived still waits for its parent's.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::manifest::Manifest;
use crate::chunk::ChunkHash;
use crate::index::ChunkRef;
use crate::name::VolumeName;

/// The manifest entries (positions in [`Manifest::entries`]) that may be published, in
/// the order to publish them: within a volume ascending, never skipping one.
///
/// - `newest`: each volume's newest published version at the receiver (absent: none);
///   entries at or below it are already there and are skipped.
/// - `have`: chunks held durably and verified.
/// - `blocked`: volumes that must not move (a conflict, or chunks the sender cannot read).
pub fn decide(
    manifest: &Manifest,
    newest: &BTreeMap<VolumeName, u32>,
    have: &HashSet<ChunkHash>,
    blocked: &BTreeSet<VolumeName>,
) -> Vec<usize> {
    let mut out = Vec::new();
    // Whether the volume of the entry being looked at may still move in this answer.
    let mut open: Option<(&VolumeName, bool)> = None;
    for (i, entry) in manifest.entries().iter().enumerate() {
        let can_move = match open {
            Some((v, open_now)) if *v == entry.volume => open_now,
            _ => !blocked.contains(&entry.volume),
        };
        let published = newest.get(&entry.volume).copied().unwrap_or(0);
        let movable = can_move
            && (entry.version <= published
                || entry.index.chunks.iter().all(|c| match c {
                    ChunkRef::Zero => true,
                    ChunkRef::Data(h) => have.contains(h),
                }));
        if movable && entry.version > published {
            out.push(i);
        }
        open = Some((&entry.volume, movable));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::manifest::tests::index_bytes;
    use proptest::prelude::*;

    fn hash(n: u8) -> ChunkHash {
        ChunkHash::of(&[n])
    }

    /// A manifest from `(volume number, chunk numbers)` per version, versions counting
    /// up from 1 within each volume.
    fn manifest(spec: &[(u8, Vec<u8>)]) -> Manifest {
        let mut m = Manifest::new();
        let mut next: BTreeMap<u8, u32> = BTreeMap::new();
        let mut sorted = spec.to_vec();
        sorted.sort_by_key(|(v, _)| *v);
        for (vol, chunks) in sorted {
            let version = next.entry(vol).or_insert(0);
            *version += 1;
            let refs: Vec<ChunkRef> = chunks
                .iter()
                .map(|&c| {
                    if c == 0 {
                        ChunkRef::Zero
                    } else {
                        ChunkRef::Data(hash(c))
                    }
                })
                .collect();
            m.push(
                VolumeName::new(&format!("v{vol}")).unwrap(),
                *version,
                index_bytes(&refs, 0),
            )
            .unwrap();
        }
        m
    }

    /// The reference: entry `i` is publishable iff it is above its volume's newest, the
    /// volume is not blocked, all of its chunks are held, and so is every earlier entry
    /// of its volume above the newest.
    fn model(
        m: &Manifest,
        newest: &BTreeMap<VolumeName, u32>,
        have: &HashSet<ChunkHash>,
        blocked: &BTreeSet<VolumeName>,
    ) -> Vec<usize> {
        let complete = |i: usize| {
            m.entries()[i].index.chunks.iter().all(|c| {
                matches!(c, ChunkRef::Zero) || matches!(c, ChunkRef::Data(h) if have.contains(h))
            })
        };
        (0..m.len())
            .filter(|&i| {
                let e = &m.entries()[i];
                let base = newest.get(&e.volume).copied().unwrap_or(0);
                e.version > base
                    && !blocked.contains(&e.volume)
                    && (0..=i)
                        .filter(|&j| {
                            m.entries()[j].volume == e.volume && m.entries()[j].version > base
                        })
                        .all(complete)
            })
            .collect()
    }

    #[test]
    fn a_complete_child_waits_for_its_parent() {
        let m = manifest(&[(1, vec![1, 2]), (1, vec![3]), (2, vec![4, 0])]);
        let have: HashSet<_> = [hash(3), hash(4)].into();
        let none = BTreeMap::new();
        assert_eq!(decide(&m, &none, &have, &BTreeSet::new()), vec![2]);
        let have: HashSet<_> = [1, 2, 3, 4].map(hash).into();
        assert_eq!(decide(&m, &none, &have, &BTreeSet::new()), vec![0, 1, 2]);
        let blocked: BTreeSet<_> = [VolumeName::new("v1").unwrap()].into();
        assert_eq!(decide(&m, &none, &have, &blocked), vec![2]);
        let newest: BTreeMap<_, _> = [(VolumeName::new("v1").unwrap(), 1)].into();
        let have: HashSet<_> = [hash(3)].into();
        assert_eq!(decide(&m, &newest, &have, &BTreeSet::new()), vec![1]);
    }

    proptest! {
        #[test]
        fn decide_matches_the_model(
            spec in proptest::collection::vec((1u8..4, proptest::collection::vec(0u8..12, 1..5)), 0..10),
            have in proptest::collection::btree_set(1u8..12, 0..12),
            newest in proptest::collection::btree_map(1u8..4, 0u32..3, 0..3),
            blocked in proptest::collection::btree_set(1u8..4, 0..2),
        ) {
            let m = manifest(&spec);
            let have: HashSet<_> = have.into_iter().map(hash).collect();
            let name = |v: u8| VolumeName::new(&format!("v{v}")).unwrap();
            let newest: BTreeMap<_, _> = newest.into_iter().map(|(v, n)| (name(v), n)).collect();
            let blocked: BTreeSet<_> = blocked.into_iter().map(name).collect();
            let got = decide(&m, &newest, &have, &blocked);
            prop_assert_eq!(&got, &model(&m, &newest, &have, &blocked));
            // Published in order, each volume's picks are a run of consecutive entries
            // starting right above what it had: a prefix of the sender's chain.
            for v in m.volumes() {
                let base = newest.get(&v).copied().unwrap_or(0);
                let pending: Vec<usize> = (0..m.len())
                    .filter(|&i| m.entries()[i].volume == v && m.entries()[i].version > base)
                    .collect();
                let picked: Vec<usize> = got.iter().copied().filter(|&i| m.entries()[i].volume == v).collect();
                prop_assert_eq!(&pending[..picked.len()], &picked[..]);
            }
        }
    }
}
