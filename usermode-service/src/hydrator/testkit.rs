//! A fake driver and source around a [`Hydrator`], for the unit and model tests.
//!
//! The driver's region map is a plain `Vec<bool>` (the truth); bitmap queries are
//! answered from it, at once or later from a snapshot taken when asked (as a real driver
//! may); fetches and hydrates wait until the test completes them.

use std::collections::{BTreeMap, BTreeSet};

use rehydrate_driver::abi::BitmapPage;
use rehydrate_driver::{FailReason, Geometry};

use super::*;

pub(super) struct Harness {
    pub h: Hydrator,
    pub g: Geometry,
    pub restored: Vec<bool>,
    pub holes: BTreeSet<u64>,
    /// Every Fetch output in order: (id, first region, end region, on_demand).
    pub fetch_log: Vec<(FetchId, u64, u64, bool)>,
    pub pending_fetches: BTreeMap<FetchId, (u64, u64)>,
    pub pending_hydrates: BTreeMap<BatchId, (u64, u64, bool)>,
    pub failures: Vec<(u64, u64, FailReason)>,
    pub queries: u64,
    /// Answer bitmap queries at once; else keep the snapshot for `deliver_page`.
    pub answer_now: bool,
    pub page_snapshot: Option<(u64, Vec<u64>, u64)>,
    pub now_ns: u64,
    /// Every output so far (tests clear it to look at what one step did).
    pub last: Vec<Output>,
}

impl Harness {
    pub fn new(regions: u64, config: HydratorConfig) -> Harness {
        let g = Geometry::new(regions * 4096, 4096).unwrap();
        Harness::with_geometry(g, config)
    }

    pub fn with_geometry(g: Geometry, config: HydratorConfig) -> Harness {
        Harness {
            h: Hydrator::new(g, config).unwrap(),
            g,
            restored: vec![false; g.region_count() as usize],
            holes: BTreeSet::new(),
            fetch_log: Vec::new(),
            pending_fetches: BTreeMap::new(),
            pending_hydrates: BTreeMap::new(),
            failures: Vec::new(),
            queries: 0,
            answer_now: true,
            page_snapshot: None,
            now_ns: 0,
            last: Vec::new(),
        }
    }

    pub fn feed(&mut self, input: Input<'_>) {
        let mut out = Vec::new();
        self.h.handle(input, &mut out);
        self.last.extend(out.iter().cloned());
        for o in out {
            self.perform(o);
        }
    }

    fn perform(&mut self, o: Output) {
        match o {
            Output::Fetch {
                fetch,
                offset,
                len,
                on_demand,
                ..
            } => {
                let r = self.g.regions_touched(offset, len);
                self.fetch_log.push((fetch, r.start, r.end, on_demand));
                self.pending_fetches.insert(fetch, (offset, len));
            }
            Output::Hydrate {
                batch,
                offset,
                len,
                zero,
                ..
            } => {
                self.pending_hydrates.insert(batch, (offset, len, zero));
            }
            Output::FetchFailed {
                offset,
                len,
                reason,
            } => self.failures.push((offset, len, reason)),
            Output::QueryBitmap(q) => {
                self.queries += 1;
                let words_total = self.g.region_count().div_ceil(64);
                let end = (q.first_word + u64::from(q.word_count)).min(words_total);
                let words: Vec<u64> = (q.first_word..end).map(|w| self.word(w)).collect();
                let restored = self.restored.iter().filter(|&&b| b).count() as u64;
                self.page_snapshot = Some((q.first_word, words, restored));
                if self.answer_now {
                    self.deliver_page();
                }
            }
        }
    }

    fn word(&self, w: u64) -> u64 {
        (0..64)
            .filter(|b| {
                self.restored
                    .get((w * 64 + b) as usize)
                    .copied()
                    .unwrap_or(false)
            })
            .fold(0, |acc, b| acc | 1 << b)
    }

    pub fn deliver_page(&mut self) {
        if let Some((first, words, restored)) = self.page_snapshot.take() {
            let page = BitmapPage::new(first, self.g.region_count(), restored, &words).unwrap();
            self.feed(Input::BitmapPage(page));
        }
    }

    pub fn tick(&mut self, advance_ns: u64) {
        self.now_ns += advance_ns;
        self.feed(Input::Tick {
            now_ns: self.now_ns,
        });
    }

    pub fn miss(&mut self, regions: std::ops::Range<u64>) {
        self.feed(Input::Missing {
            regions,
            on_demand: true,
        });
    }

    /// Completes fetch `id` with data, or zeros where the source has holes.
    pub fn complete(&mut self, id: FetchId) {
        let Some((offset, len)) = self.pending_fetches.remove(&id) else {
            return;
        };
        let mut map = Vec::new();
        for r in self.g.regions_touched(offset, len) {
            let b = self.g.regions_byte_range(r..r + 1);
            map.push(Allocation {
                len: b.end - b.start,
                zero: self.holes.contains(&r),
            });
        }
        let segments = plan_segments(&self.g, offset, len, &map);
        self.feed(Input::Fetched {
            fetch: id,
            segments: &segments,
        });
    }

    pub fn fail(&mut self, id: FetchId, error: FetchError) {
        if self.pending_fetches.remove(&id).is_some() {
            self.feed(Input::FetchFailed { fetch: id, error });
        }
    }

    /// Writes hydrate `batch` into the truth map and acknowledges it.
    pub fn ack(&mut self, batch: BatchId, ok: bool) {
        let Some((offset, len, _)) = self.pending_hydrates.remove(&batch) else {
            return;
        };
        if ok {
            for r in self.g.regions_touched(offset, len) {
                self.restored[r as usize] = true;
            }
        }
        self.feed(Input::HydrateDone { batch, ok });
    }

    pub fn first_pending_fetch(&self) -> Option<FetchId> {
        self.pending_fetches.keys().next().copied()
    }

    /// Completes and acknowledges everything until the hydrator has nothing to do.
    pub fn run_to_end(&mut self) {
        for _ in 0..100_000 {
            if let Some(&id) = self.pending_fetches.keys().next() {
                self.complete(id);
            } else if let Some(&b) = self.pending_hydrates.keys().next() {
                self.ack(b, true);
            } else if let Some(at) = self.h.next_wakeup_ns() {
                let advance = at.saturating_sub(self.now_ns).max(1);
                self.tick(advance);
            } else if self.page_snapshot.is_some() {
                self.deliver_page();
            } else if !self.h.is_idle() {
                self.tick(1);
                if self.pending_fetches.is_empty()
                    && self.pending_hydrates.is_empty()
                    && self.page_snapshot.is_none()
                    && self.h.next_wakeup_ns().is_none()
                {
                    return;
                }
            } else {
                return;
            }
        }
        panic!("did not settle");
    }

    pub fn all_restored(&self) -> bool {
        self.restored.iter().all(|&b| b)
    }
}
