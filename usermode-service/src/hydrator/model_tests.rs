//! Model-based property tests: random schedules of misses, completions, failures,
//! acknowledgements, late bitmap pages and ticks, with every output checked against a
//! plain reference model of what may be fetched, in which order, and what must fail.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use proptest::prelude::*;
use rehydrate_driver::{FailReason, Geometry};

use super::testkit::Harness;
use super::*;

const DEADLINE_NS: u64 = 1_000_000_000;
const CORRUPT_RETRIES: u32 = 2;

#[derive(Clone, Debug)]
enum Op {
    Miss { at: u64, len: u64 },
    Complete(usize),
    Fail(usize, FetchError),
    Ack(usize, bool),
    Tick(u64),
    DeliverPage,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..400, 1u64..12).prop_map(|(at, len)| Op::Miss { at, len }),
        4 => (0usize..8).prop_map(Op::Complete),
        2 => (0usize..8, prop_oneof![
            4 => Just(FetchError::Transient),
            2 => Just(FetchError::Corrupt),
            1 => Just(FetchError::OutOfRange)
        ]).prop_map(|(k, e)| Op::Fail(k, e)),
        4 => (0usize..8, prop::bool::weighted(0.9)).prop_map(|(k, ok)| Op::Ack(k, ok)),
        2 => (0u64..400_000_000).prop_map(Op::Tick),
        1 => Just(Op::DeliverPage),
    ]
}

#[derive(Clone, Debug)]
struct ModelFetch {
    regions: Range<u64>,
    waiting: bool,
    first_failure_ns: Option<u64>,
    corrupt: u32,
}

/// What the hydrator may and must do, kept the plain way.
#[derive(Default)]
struct Model {
    fetches: BTreeMap<FetchId, ModelFetch>,
    batches: BTreeMap<BatchId, Range<u64>>,
    /// On-demand regions no fetch covers yet.
    waiting_on_demand: BTreeSet<u64>,
    /// Regions the driver asked for again while their hydrate was with it: they may be
    /// fetched again once it is acknowledged, even if it restored them (the hydrator
    /// cannot tell a stale ask from the driver having dropped that data).
    reasked: BTreeSet<u64>,
}

impl Model {
    fn busy(&self, r: u64) -> bool {
        self.fetches.values().any(|f| f.regions.contains(&r))
            || self.batches.values().any(|b| b.contains(&r))
    }
}

struct Run {
    t: Harness,
    m: Model,
    fetch_regions: u64,
    strict_priority: bool,
}

impl Run {
    /// Checks the outputs of one step, in order, and updates the model.
    fn check_outputs(&mut self, failed_fetch: Option<FetchId>) -> Result<(), TestCaseError> {
        let outputs = std::mem::take(&mut self.t.last);
        let mut failure_seen = false;
        for o in outputs {
            match o {
                Output::Fetch {
                    fetch,
                    offset,
                    len,
                    on_demand,
                    ..
                } => {
                    let g = self.t.g;
                    prop_assert!(offset % 4096 == 0, "fetch not region-aligned");
                    let r = g.regions_touched(offset, len);
                    prop_assert!(
                        r.end - r.start <= self.fetch_regions,
                        "fetch {r:?} larger than the fetch size"
                    );
                    prop_assert_eq!(
                        g.regions_byte_range(r.clone()),
                        offset..offset + len,
                        "fetch covers whole regions"
                    );
                    if let Some(f) = self.m.fetches.get_mut(&fetch) {
                        prop_assert!(f.waiting, "fetch {fetch} sent twice");
                        prop_assert_eq!(&f.regions, &r, "a retry fetches the same regions");
                        f.waiting = false;
                        continue;
                    }
                    for region in r.clone() {
                        prop_assert!(
                            !self.t.restored[region as usize] || self.m.reasked.remove(&region),
                            "fetched restored region {region}"
                        );
                        prop_assert!(!self.m.busy(region), "fetched busy region {region}");
                    }
                    if on_demand {
                        for region in r.clone() {
                            self.m.waiting_on_demand.remove(&region);
                        }
                    } else if self.strict_priority {
                        prop_assert!(
                            self.m.waiting_on_demand.is_empty(),
                            "background fetch {r:?} issued while misses wait: {:?}",
                            self.m.waiting_on_demand
                        );
                    }
                    self.m.fetches.insert(
                        fetch,
                        ModelFetch {
                            regions: r,
                            waiting: false,
                            first_failure_ns: None,
                            corrupt: 0,
                        },
                    );
                }
                Output::Hydrate {
                    batch, offset, len, ..
                } => {
                    let r = self.t.g.regions_touched(offset, len);
                    self.m.batches.insert(batch, r);
                }
                Output::FetchFailed {
                    offset,
                    len,
                    reason,
                } => {
                    let id = failed_fetch
                        .ok_or_else(|| TestCaseError::fail("a failure nobody caused"))?;
                    let f = self
                        .m
                        .fetches
                        .remove(&id)
                        .ok_or_else(|| TestCaseError::fail("failure of an unknown fetch"))?;
                    let bytes = self.t.g.regions_byte_range(f.regions.clone());
                    prop_assert_eq!(
                        (offset, len),
                        (bytes.start, bytes.end - bytes.start),
                        "failure covers exactly the fetch"
                    );
                    prop_assert!(matches!(
                        reason,
                        FailReason::Unreachable | FailReason::Corrupt | FailReason::OutOfRange
                    ));
                    failure_seen = true;
                }
                Output::QueryBitmap(_) => {}
            }
        }
        if let Some(id) = failed_fetch {
            self.check_failure_is_exact(id, failure_seen)?;
        }
        // Fetches the hydrator gave up silently (yielded to a miss) leave the model.
        let tracked: Vec<FetchId> = self.m.fetches.keys().copied().collect();
        for id in tracked {
            if !self.t.h.fetches.contains_key(&id) {
                let f = &self.m.fetches[&id];
                prop_assert!(f.waiting, "fetch {id} vanished while at the source");
                // A restored region can only have been in it on a re-ask (checked when
                // it was issued); giving the fetch up gives that permission back, since
                // the hydrator still has to fetch the region once more.
                for region in f.regions.clone() {
                    if self.t.restored[region as usize] {
                        self.m.reasked.insert(region);
                    }
                }
                self.m.fetches.remove(&id);
            }
        }
        Ok(())
    }

    /// A failure is reported iff the model says the fetch is past its limits.
    fn check_failure_is_exact(&mut self, id: FetchId, reported: bool) -> Result<(), TestCaseError> {
        if reported {
            return Ok(());
        }
        let f = self
            .m
            .fetches
            .get(&id)
            .ok_or_else(|| TestCaseError::fail("failed fetch unknown"))?;
        prop_assert!(f.waiting, "a failed fetch neither retried nor reported");
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Miss { at, len } => {
                let count = self.t.g.region_count();
                let at = at % count;
                // A driver asks only for regions it lacks: clip to the missing run at `at`.
                if self.t.restored[at as usize] {
                    return Ok(());
                }
                let mut end = at + 1;
                while end < count && end < at + len && !self.t.restored[end as usize] {
                    end += 1;
                }
                for r in at..end {
                    if !self.m.busy(r) {
                        self.m.waiting_on_demand.insert(r);
                    }
                    if self.m.batches.values().any(|b| b.contains(&r)) {
                        self.m.reasked.insert(r);
                    }
                }
                self.t.miss(at..end);
                self.check_outputs(None)
            }
            Op::Complete(k) => {
                let Some(&id) = self.t.pending_fetches.keys().nth(k) else {
                    return Ok(());
                };
                self.t.complete(id);
                self.m.fetches.remove(&id);
                self.check_outputs(None)
            }
            Op::Fail(k, error) => {
                let Some(&id) = self.t.pending_fetches.keys().nth(k) else {
                    return Ok(());
                };
                let now = self.t.now_ns;
                let must_fail = {
                    let f =
                        self.m.fetches.get_mut(&id).ok_or_else(|| {
                            TestCaseError::fail("pending fetch unknown to the model")
                        })?;
                    let first = *f.first_failure_ns.get_or_insert(now);
                    f.waiting = true;
                    if error == FetchError::Corrupt {
                        f.corrupt += 1;
                    }
                    error == FetchError::OutOfRange
                        || f.corrupt > CORRUPT_RETRIES
                        || now >= first + DEADLINE_NS
                };
                self.t.fail(id, error);
                let reported = self
                    .t
                    .last
                    .iter()
                    .any(|o| matches!(o, Output::FetchFailed { .. }));
                prop_assert_eq!(
                    reported,
                    must_fail,
                    "fetch {} failure reported {} expected {}",
                    id,
                    reported,
                    must_fail
                );
                self.check_outputs(Some(id))
            }
            Op::Ack(k, ok) => {
                let Some(&b) = self.t.pending_hydrates.keys().nth(k) else {
                    return Ok(());
                };
                self.t.ack(b, ok);
                if let Some(r) = self.m.batches.remove(&b) {
                    if !ok {
                        // Refused or not written: fetched again soon, whatever the
                        // region's state by then.
                        self.m.reasked.extend(r);
                    }
                }
                self.check_outputs(None)
            }
            Op::Tick(dt) => {
                self.t.tick(dt);
                self.check_outputs(None)
            }
            Op::DeliverPage => {
                self.t.deliver_page();
                self.check_outputs(None)
            }
        }
    }
}

fn run(
    regions: u64,
    tail: u64,
    fetch_regions: u64,
    in_flight: usize,
    floor: usize,
    answer_now: bool,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let g = Geometry::new(regions * 4096 + tail, 4096).unwrap();
    let config = HydratorConfig {
        fetch_size_bytes: fetch_regions * 4096,
        in_flight_max: in_flight,
        background_floor_slots: floor.min(in_flight - 1),
        scan_ahead_bytes: fetch_regions * 4096,
        deadline_ns: DEADLINE_NS,
        backoff_initial_ns: 10_000_000,
        backoff_max_ns: 100_000_000,
        corrupt_retries: CORRUPT_RETRIES,
        ..HydratorConfig::default()
    };
    let mut t = Harness::with_geometry(g, config);
    t.answer_now = answer_now;
    let mut r = Run {
        t,
        m: Model::default(),
        fetch_regions,
        strict_priority: config.background_floor_slots == 0,
    };
    r.t.tick(1);
    r.check_outputs(None)?;
    for op in ops {
        r.apply(op)?;
    }
    // Then let everything succeed: the volume ends fully restored.
    r.t.run_to_end();
    prop_assert!(r.t.all_restored(), "not all restored at the end");
    prop_assert!(r.t.h.is_idle());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn strict_priority_schedules_keep_every_rule(
        regions in 1u64..300,
        tail in prop_oneof![Just(0u64), (1u64..8).prop_map(|s| s * 512)],
        fetch_regions in 1u64..16,
        in_flight in 1usize..6,
        answer_now in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        run(regions, tail, fetch_regions, in_flight, 0, answer_now, &ops)?;
    }

    #[test]
    fn schedules_with_a_background_floor_keep_every_other_rule(
        regions in 1u64..300,
        fetch_regions in 1u64..16,
        in_flight in 2usize..6,
        floor in 1usize..3,
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        run(regions, 0, fetch_regions, in_flight, floor, true, &ops)?;
    }
}
