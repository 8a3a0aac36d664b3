//! The overlay layer's invariants, checked after every event in debug builds.

use super::super::state::Kind;
use super::{OverlayEngine, Own, Owner, State};
use crate::mutants;

/// Above this many map words the O ⊇ durable O check is skipped (it walks them all).
const WORDS_CHECKED_MAX: usize = 4096;

impl OverlayEngine {
    pub(super) fn check_invariants(&self) {
        if !cfg!(debug_assertions) || mutants::any() {
            return;
        }
        assert!(self.reqs.len() <= self.config.requests_max);
        assert!(self.fills.len() <= self.config.fills_max);
        assert!(self.reqs.windows(2).all(|w| w[0].key < w[1].key));
        assert!(self.own.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(self.inner_ids.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(self
            .marks
            .iter()
            .zip(self.marks.iter().skip(1))
            .all(|(a, b)| a.tag <= b.tag));
        assert!(self.committed_gen <= self.flushed_gen);
        assert!(
            self.record_state <= self.record.state,
            "the record went back"
        );
        assert!(!self.merged || self.merge.is_none());
        assert!(!self.merged || self.record_state == State::Merged);
        assert!(
            self.to_inner.is_empty(),
            "events left for the in-place engine"
        );
        // Fills: of regions not in O, each once, never under a write at the overlay.
        for (i, &(region, id)) in self.fills.iter().enumerate() {
            assert!(
                !self.o.is_restored(region),
                "region {region} filled while in O"
            );
            assert!(
                self.fills[..i].iter().all(|&(r, _)| r != region),
                "region {region} filled twice"
            );
            assert!(
                !self.claimed(region),
                "region {region} filled under a write"
            );
            assert!(
                matches!(self.owner(id), Some(Owner::Fill { region: r }) if r == region),
                "fill of region {region} lost its read"
            );
        }
        let running_writes = self
            .reqs
            .iter()
            .filter(|r| r.run.is_some() && matches!(r.kind, Kind::Write { .. }))
            .count();
        if !self.merged {
            assert_eq!(
                self.marks_reserved,
                running_writes + self.fills.len(),
                "room kept for the marks of writes and fills at a device"
            );
        }
        for r in &self.reqs {
            let pieces_here = self
                .own
                .iter()
                .filter(|(_, io)| matches!(io, Own::Piece { key } if *key == r.key))
                .count()
                + self
                    .inner_ids
                    .iter()
                    .filter(|(_, o)| matches!(o, Owner::Piece { key, .. } if *key == r.key))
                    .count();
            match &r.run {
                Some(run) => assert_eq!(
                    run.pieces as usize, pieces_here,
                    "pieces of request {}",
                    r.id
                ),
                None => {
                    assert_eq!(pieces_here, 0, "a waiting request has pieces");
                    assert!(r.ordering && r.hold_said, "a waiting request was not held");
                }
            }
        }
        // O only holds what its durable part holds and more.
        let words = self.o.word_count();
        if words <= WORDS_CHECKED_MAX {
            for w in 0..words {
                let durable = self.o_durable.word(w);
                assert_eq!(
                    self.o.word(w) & durable,
                    durable,
                    "durable O mark {w} missing in memory"
                );
            }
        }
    }
}
