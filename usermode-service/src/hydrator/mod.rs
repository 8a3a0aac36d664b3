//! The hydrator: a sans-IO scheduler that decides what to fetch from the source, in
//! which order, and what to tell the driver.
//!
//! The shell feeds [`Input`]s to [`Hydrator::handle`] and carries out the [`Output`]s it
//! appends; between inputs it calls [`Hydrator::next_wakeup_ns`] and sends a
//! [`Input::Tick`] then. Nothing here blocks, sleeps, allocates per region, or does I/O,
//! so the tokio shell, the Windows service and the simulator run the same decisions.
//!
//! # Policies
//! * **On demand first.** Misses wait in their own queue and take the next free slot
//!   before any background fetch; a miss for a region already being fetched or written
//!   is attached to that work (and promotes it to on-demand), never fetched twice. If
//!   every slot holds a background fetch that is only waiting to retry, that fetch gives
//!   its slot up (its regions go back to the front of the background queue).
//! * **Background floor.** While the background has a fetch ready, on-demand work uses at
//!   most `in_flight_max - background_floor_slots` slots, so the sweep never starves.
//! * **Background order.** Scan-ahead first (the regions just past each miss, checked
//!   against a bitmap page so restored ones are skipped), then driver hints, then a
//!   sweep over the bitmap in ascending order, one page at a time, wrapping around
//!   until a pass finds nothing left to do.
//! * **Coalescing.** A fetch is one run of adjacent regions, at most `fetch_size_bytes`.
//! * **Never twice.** A region is *busy* from the fetch that covers it until the driver
//!   acknowledges its hydrate (or the fetch finally fails); busy regions are never
//!   fetched. A region the driver asks for again *after* its hydrate was sent is not
//!   attached to that hydrate: the driver has already decided about that data (it may
//!   have dropped it for a region a write was overwriting, and the write then failed).
//!   It is queued again when the hydrate is acknowledged. Regions acknowledged while a bitmap page was being asked for are kept in a
//!   "recently done" set, so a page taken before their marks cannot plan them again.
//! * **Zeros.** With block status, the shell reads only data; regions the source reports
//!   as zeros become zero-fill hydrates.
//! * **Failures.** A transient failure is retried with exponential backoff and jitter
//!   until `deadline_ns` after the first failure; then one `FetchFailed` covering exactly
//!   that fetch's range. Corrupt data is retried `corrupt_retries` times, then reported
//!   `Corrupt`; a range the source does not hold is reported at once. A hydrate the
//!   driver refuses or fails to write is fetched again soon (ahead of the sweep).
//! * **Rate.** An optional token bucket paces background bytes; on-demand is never paced.
//!
//! # Bounds (memory does not grow with the volume)
//! * fetches tracked (in flight or waiting to retry) ≤ `in_flight_max` (≤ 256);
//! * hydrates awaiting acknowledgement ≤ 2 × `in_flight_max` × `fetch_size_bytes` bytes;
//! * on-demand queue ≤ [`ON_DEMAND_QUEUE_MAX`] ranges (more: `FetchFailed` with
//!   `FailReason::Other`, so the driver fails the request rather than waiting forever);
//! * scan-ahead windows ≤ [`SCAN_WINDOWS_MAX`], background runs ≤ [`SCAN_RUNS_MAX`] and
//!   [`SWEEP_RUNS_MAX`] ranges (the sweep plans at most one page at a time);
//! * busy and recently-done sets: ranges, at most a few per fetch or hydrate outstanding;
//! * regions asked again while their hydrate is with the driver: within the regions of
//!   the hydrates outstanding.

mod backoff;
mod config;
mod io;
mod missing;
mod progress;
mod ranges;
mod segments;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use rehydrate_driver::abi::{BitmapPage, BitmapQuery, BITMAP_PAGE_WORDS_MAX};
use rehydrate_driver::engine::BatchId;
use rehydrate_driver::{FailReason, Geometry};

pub use backoff::Jitter;
pub use config::{
    ConfigError, HydratorConfig, DEADLINE_DEFAULT_NS, FETCH_SIZE_DEFAULT_BYTES, IN_FLIGHT_DEFAULT,
    IN_FLIGHT_MAX,
};
pub use io::{FetchError, FetchId, Input, Missing, Output, PayloadRef, Segment};
pub use progress::Progress;
pub use ranges::RangeSet;
pub use segments::{plan_segments, Allocation};

use progress::RateMeter;

/// Most on-demand ranges waiting for a slot.
pub const ON_DEMAND_QUEUE_MAX: usize = 4096;
/// Most scan-ahead windows waiting for their bitmap check; older ones are dropped (the
/// sweep covers them later).
pub const SCAN_WINDOWS_MAX: usize = 16;
/// Most known-missing background runs (scan-ahead and driver hints) queued.
pub const SCAN_RUNS_MAX: usize = 1024;
/// Most runs the sweep plans from one page; the rest of the page is asked for again.
pub const SWEEP_RUNS_MAX: usize = 1024;
/// Most regions acknowledged during one bitmap query that are remembered; past it the
/// page is thrown away and asked for again.
pub const RECENTLY_DONE_MAX: usize = 4096;

/// Where a fetch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FetchState {
    /// At the source; an answer will come.
    AtSource,
    /// Failed; sent again at `retry_at_ns`.
    Waiting { retry_at_ns: u64 },
}

#[derive(Clone, Debug)]
struct Fetch {
    regions: Range<u64>,
    on_demand: bool,
    state: FetchState,
    retries: u32,
    corrupt: u32,
    first_failure_ns: Option<u64>,
    last_error: FetchError,
}

/// What an outstanding bitmap query is for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum QueryPurpose {
    Sweep,
    Scan(Range<u64>),
}

#[derive(Clone, Debug)]
struct Query {
    purpose: QueryPurpose,
    first_word: u64,
}

/// The background sweep's place.
#[derive(Clone, Debug, Default)]
struct Sweep {
    /// Next region the sweep looks at.
    cursor: u64,
    /// Missing runs planned from the last page, ascending.
    runs: VecDeque<Range<u64>>,
    /// Runs found in the current pass.
    pass_found: u64,
    /// A whole pass found nothing: wait for something to go missing again.
    idle: bool,
}

/// Token bucket for background bytes.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    rate_bytes_per_sec: u64,
    tokens: i128,
    capacity: i128,
    last_ns: u64,
}

impl Bucket {
    fn refill(&mut self, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_ns);
        self.last_ns = now_ns;
        let add = i128::from(dt) * i128::from(self.rate_bytes_per_sec) / 1_000_000_000;
        self.tokens = (self.tokens + add).min(self.capacity);
    }

    fn ready(&self) -> bool {
        self.tokens > 0
    }

    /// When the bucket is next ready.
    fn ready_at_ns(&self) -> u64 {
        if self.ready() {
            return self.last_ns;
        }
        let need = (1 - self.tokens) as u128;
        let ns = need * 1_000_000_000 / u128::from(self.rate_bytes_per_sec.max(1)) + 1;
        self.last_ns
            .saturating_add(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// The scheduler. See the module comment.
pub struct Hydrator {
    geometry: Geometry,
    config: HydratorConfig,
    fetch_regions: u64,
    scan_regions: u64,
    now_ns: u64,
    jitter: Jitter,
    next_fetch: FetchId,
    next_batch: BatchId,
    on_demand: VecDeque<Range<u64>>,
    scan_windows: VecDeque<Range<u64>>,
    scan_runs: VecDeque<Range<u64>>,
    sweep: Sweep,
    query: Option<Query>,
    fetches: BTreeMap<FetchId, Fetch>,
    busy: RangeSet,
    batches: BTreeMap<BatchId, Range<u64>>,
    hydrating_bytes: u64,
    recently_done: RangeSet,
    /// Regions asked for again (on demand, background) while a hydrate of them was
    /// with the driver: queued again when it is acknowledged.
    reasked_on_demand: RangeSet,
    reasked_background: RangeSet,
    bucket: Option<Bucket>,
    /// Restored regions per the last bitmap page.
    page_restored_regions: u64,
    /// Regions acknowledged since the last bitmap query was sent.
    done_since_query_regions: u64,
    seen_map: bool,
    progress: Progress,
    meter: RateMeter,
}

impl Hydrator {
    /// A hydrator for a volume of `geometry`. Nothing happens until the first input (send
    /// a `Tick` to start the sweep).
    pub fn new(geometry: Geometry, config: HydratorConfig) -> Result<Hydrator, ConfigError> {
        config.check(&geometry)?;
        let region = u64::from(geometry.region_size_bytes());
        let bucket = config.background_rate_bytes_per_sec.map(|rate| Bucket {
            rate_bytes_per_sec: rate,
            tokens: i128::from(config.fetch_size_bytes),
            capacity: i128::from(rate.max(config.fetch_size_bytes)),
            last_ns: 0,
        });
        Ok(Hydrator {
            geometry,
            config,
            fetch_regions: config.fetch_size_bytes / region,
            scan_regions: config.scan_ahead_bytes.div_ceil(region),
            now_ns: 0,
            jitter: Jitter::new(config.seed),
            next_fetch: 1,
            next_batch: 1,
            on_demand: VecDeque::new(),
            scan_windows: VecDeque::new(),
            scan_runs: VecDeque::new(),
            sweep: Sweep::default(),
            query: None,
            fetches: BTreeMap::new(),
            busy: RangeSet::new(),
            batches: BTreeMap::new(),
            hydrating_bytes: 0,
            recently_done: RangeSet::new(),
            reasked_on_demand: RangeSet::new(),
            reasked_background: RangeSet::new(),
            bucket,
            page_restored_regions: 0,
            done_since_query_regions: 0,
            seen_map: false,
            progress: Progress {
                total_bytes: geometry.volume_size_bytes(),
                ..Progress::default()
            },
            meter: RateMeter::default(),
        })
    }

    /// The geometry it schedules for.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Its configuration.
    pub fn config(&self) -> &HydratorConfig {
        &self.config
    }

    /// Progress so far.
    pub fn progress(&self) -> Progress {
        let mut p = self.progress;
        p.in_flight = self.fetches.len();
        p.on_demand_queued = self.on_demand.len();
        p.rate_bytes_per_sec = self.meter.rate();
        let left = p.total_bytes.saturating_sub(p.restored_bytes);
        p.eta_secs = (p.rate_bytes_per_sec >= 1.0)
            .then(|| (left as f64 / p.rate_bytes_per_sec).ceil() as u64);
        p
    }

    /// True when nothing is in flight, queued or being written, and the sweep has
    /// finished a pass that found nothing to do.
    pub fn is_idle(&self) -> bool {
        self.fetches.is_empty()
            && self.batches.is_empty()
            && self.on_demand.is_empty()
            && self.scan_windows.is_empty()
            && self.scan_runs.is_empty()
            && self.sweep.runs.is_empty()
            && self.sweep.idle
            && self.query.is_none()
    }

    /// True when every region of `regions` is being fetched or hydrated, or waits in one
    /// of the hydrator's queues (on demand, scan-ahead and hints, the sweep's planned
    /// runs): the service will get to it without being asked again. A region the sweep
    /// would only find on a later pass does not count. For checkers of the driver and
    /// service together (every region the driver asked for is known here).
    pub fn tracks(&self, regions: Range<u64>) -> bool {
        let queued = |q: &VecDeque<Range<u64>>, r: u64| q.iter().any(|x| x.contains(&r));
        regions.into_iter().all(|r| {
            // A fetch not delivered yet (a hydrate already sent does not count).
            self.fetches.values().any(|f| f.regions.contains(&r))
                || self.reasked_on_demand.contains(r)
                || self.reasked_background.contains(r)
                || queued(&self.on_demand, r)
                || queued(&self.scan_runs, r)
                || queued(&self.sweep.runs, r)
        })
    }

    /// When the shell should send the next `Tick` (a retry comes due, or the rate limit
    /// lets the background go again); `None`: only other inputs can make progress.
    pub fn next_wakeup_ns(&self) -> Option<u64> {
        let retry = self
            .fetches
            .values()
            .filter_map(|f| match f.state {
                FetchState::Waiting { retry_at_ns } => Some(retry_at_ns),
                FetchState::AtSource => None,
            })
            .min();
        let bucket = self
            .bucket
            .filter(|b| !b.ready() && self.background_has_runs())
            .map(|b| b.ready_at_ns());
        match (retry, bucket) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles one input, appending what to do to `out`.
    pub fn handle(&mut self, input: Input<'_>, out: &mut Vec<Output>) {
        match input {
            Input::Missing { regions, on_demand } => self.on_missing(regions, on_demand, out),
            Input::BitmapPage(page) => self.on_page(&page),
            Input::Fetched { fetch, segments } => self.on_fetched(fetch, segments, out),
            Input::FetchFailed { fetch, error } => self.on_fetch_failed(fetch, error, out),
            Input::HydrateDone { batch, ok } => self.on_hydrate_done(batch, ok),
            Input::Tick { now_ns } => self.on_tick(now_ns, out),
        }
        self.pump(out);
        self.check_invariants();
    }

    // ----- inputs ------------------------------------------------------------------

    fn on_missing(&mut self, regions: Range<u64>, on_demand: bool, out: &mut Vec<Output>) {
        let count = self.geometry.region_count();
        if regions.is_empty() || regions.end > count {
            // The ABI conversion rejects these; an in-process caller's bug changes nothing.
            debug_assert!(false, "missing regions {regions:?} outside 0..{count}");
            return;
        }
        self.note_reasked(regions.clone(), on_demand);
        if !on_demand {
            push_bounded(&mut self.scan_runs, regions, SCAN_RUNS_MAX);
            return;
        }
        self.promote(regions.clone());
        if self.on_demand.len() >= ON_DEMAND_QUEUE_MAX {
            let bytes = self.geometry.regions_byte_range(regions);
            self.progress.failures += 1;
            out.push(Output::FetchFailed {
                offset: bytes.start,
                len: bytes.end - bytes.start,
                reason: FailReason::Other,
            });
            return;
        }
        self.on_demand.push_back(regions.clone());
        if self.scan_regions > 0 && regions.end < count {
            let window = regions.end..(regions.end + self.scan_regions).min(count);
            let repeat = self
                .scan_windows
                .back()
                .is_some_and(|w| w.start <= window.start && window.start < w.end);
            if !repeat {
                push_bounded(&mut self.scan_windows, window, SCAN_WINDOWS_MAX);
            }
        }
    }

    /// Marks busy fetches overlapping `regions` as on demand (their failure is then
    /// reported as a request's failure and their retries go first).
    /// Regions of `regions` whose hydrate is with the driver: remembered, to be queued
    /// again once it is acknowledged.
    fn note_reasked(&mut self, regions: Range<u64>, on_demand: bool) {
        for sent in self.batches.values() {
            let both = sent.start.max(regions.start)..sent.end.min(regions.end);
            if both.is_empty() {
                continue;
            }
            if on_demand {
                self.reasked_on_demand.insert(both);
            } else {
                self.reasked_background.insert(both);
            }
        }
    }

    fn promote(&mut self, regions: Range<u64>) {
        if !self.busy.intersects(regions.clone()) {
            return;
        }
        for f in self.fetches.values_mut() {
            if f.regions.start < regions.end && regions.start < f.regions.end {
                f.on_demand = true;
            }
        }
    }

    fn on_page(&mut self, page: &BitmapPage<'_>) {
        let Some(query) = self.query.take() else {
            return; // Not asked for (a stale answer): ignore.
        };
        if page.first_word != query.first_word || page.region_count != self.geometry.region_count()
        {
            // An answer to another question, or from another volume: ask again later.
            return;
        }
        self.page_restored_regions = page.restored_count;
        self.done_since_query_regions = 0;
        if !self.seen_map {
            self.seen_map = true;
            self.progress.restored_at_start_bytes = self.regions_bytes(page.restored_count);
        }
        self.update_restored();
        if self.recently_done.range_count() > RECENTLY_DONE_MAX {
            // Too much changed while the page was asked for to trust it; ask again.
            self.recently_done.clear();
            return;
        }
        let page_regions = page.first_word * 64
            ..((page.first_word + page.word_count() as u64) * 64).min(page.region_count);
        match query.purpose {
            QueryPurpose::Scan(window) => {
                let from = window.start.max(page_regions.start);
                let to = window.end.min(page_regions.end);
                let mut runs = Vec::new();
                self.missing_runs(page, from..to, usize::MAX, &mut runs);
                for r in runs {
                    push_bounded(&mut self.scan_runs, r, SCAN_RUNS_MAX);
                }
            }
            QueryPurpose::Sweep => {
                if page.restored_count >= page.region_count {
                    self.sweep.idle = true;
                    self.sweep.cursor = 0;
                    self.sweep.runs.clear();
                    self.recently_done.clear();
                    return;
                }
                let from = self.sweep.cursor.max(page_regions.start);
                let mut runs = Vec::new();
                let stopped =
                    self.missing_runs(page, from..page_regions.end, SWEEP_RUNS_MAX, &mut runs);
                self.sweep.pass_found += runs.len() as u64;
                self.sweep.runs.extend(runs);
                self.sweep.cursor = stopped.max(from);
                if self.sweep.cursor >= self.geometry.region_count() || page.word_count() == 0 {
                    if self.sweep.pass_found == 0 {
                        self.sweep.idle = true;
                    }
                    self.sweep.cursor = 0;
                    self.sweep.pass_found = 0;
                }
            }
        }
        self.recently_done.clear();
    }

    /// Appends the runs of `within` that the page says are missing and that are neither
    /// busy nor recently done, up to `max_runs`; returns the region where it stopped.
    fn missing_runs(
        &self,
        page: &BitmapPage<'_>,
        within: Range<u64>,
        max_runs: usize,
        runs: &mut Vec<Range<u64>>,
    ) -> u64 {
        let mut region = within.start;
        while region < within.end {
            let Some(start) = find_bit(page, region, within.end, true) else {
                return within.end;
            };
            let end = find_bit(page, start, within.end, false).unwrap_or(within.end);
            let mut at = start;
            while at < end {
                let Some(free) = self.busy.first_gap(at..end) else {
                    break;
                };
                let Some(fresh) = self.recently_done.first_gap(free.clone()) else {
                    at = free.end;
                    continue;
                };
                if runs.len() >= max_runs {
                    return fresh.start;
                }
                runs.push(fresh.clone());
                at = fresh.end;
            }
            region = end;
        }
        within.end
    }

    fn on_fetched(&mut self, id: FetchId, segments: &[Segment], out: &mut Vec<Output>) {
        let Some(fetch) = self.fetches.get(&id) else {
            return; // Unknown or already given up on: nothing to do.
        };
        if fetch.state != FetchState::AtSource {
            return;
        }
        let bytes = self.geometry.regions_byte_range(fetch.regions.clone());
        if !self.segments_valid(bytes.clone(), segments) {
            self.on_fetch_failed(id, FetchError::Corrupt, out);
            return;
        }
        let Some(fetch) = self.fetches.remove(&id) else {
            return;
        };
        if fetch.on_demand {
            self.progress.misses_served += 1;
        }
        for s in segments {
            let batch = self.next_batch;
            self.next_batch += 1;
            let regions = self.geometry.regions_touched(s.offset, s.len);
            self.batches.insert(batch, regions);
            self.hydrating_bytes += s.len;
            if s.zero {
                self.progress.zero_bytes += s.len;
            } else {
                self.progress.fetched_bytes += s.len;
            }
            out.push(Output::Hydrate {
                batch,
                offset: s.offset,
                len: s.len,
                zero: s.zero,
                payload: (!s.zero).then_some(PayloadRef {
                    fetch: id,
                    offset: s.offset - bytes.start,
                }),
            });
        }
    }

    /// Segments cover `bytes` exactly, in order, split only at region boundaries.
    fn segments_valid(&self, bytes: Range<u64>, segments: &[Segment]) -> bool {
        let region = u64::from(self.geometry.region_size_bytes());
        let mut at = bytes.start;
        for s in segments {
            if s.offset != at || s.len == 0 || s.offset % region != 0 {
                return false;
            }
            let Some(end) = s.offset.checked_add(s.len) else {
                return false;
            };
            if end > bytes.end || (end % region != 0 && end != self.geometry.volume_size_bytes()) {
                return false;
            }
            at = end;
        }
        at == bytes.end && !segments.is_empty()
    }

    fn on_fetch_failed(&mut self, id: FetchId, error: FetchError, out: &mut Vec<Output>) {
        let now = self.now_ns;
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        if fetch.state != FetchState::AtSource {
            return;
        }
        let first = *fetch.first_failure_ns.get_or_insert(now);
        fetch.last_error = error;
        let give_up = match error {
            FetchError::OutOfRange => Some(FailReason::OutOfRange),
            FetchError::Corrupt => {
                fetch.corrupt += 1;
                (fetch.corrupt > self.config.corrupt_retries).then_some(FailReason::Corrupt)
            }
            FetchError::Transient => None,
        };
        let deadline = first.saturating_add(self.config.deadline_ns);
        let give_up = give_up.or_else(|| {
            (now >= deadline).then_some(match error {
                FetchError::Corrupt => FailReason::Corrupt,
                _ => FailReason::Unreachable,
            })
        });
        if let Some(reason) = give_up {
            self.fail(id, reason, out);
            return;
        }
        fetch.retries += 1;
        let delay = self.jitter.delay_ns(
            fetch.retries,
            self.config.backoff_initial_ns,
            self.config.backoff_max_ns,
        );
        // The last try is at the deadline, so the failure is reported right after it.
        fetch.state = FetchState::Waiting {
            retry_at_ns: now.saturating_add(delay).min(deadline),
        };
        self.progress.retries += 1;
    }

    /// Gives fetch `id` up: its regions are free again and the driver is told.
    fn fail(&mut self, id: FetchId, reason: FailReason, out: &mut Vec<Output>) {
        let Some(fetch) = self.fetches.remove(&id) else {
            return;
        };
        self.busy.remove(fetch.regions.clone());
        let bytes = self.geometry.regions_byte_range(fetch.regions);
        self.progress.failures += 1;
        // The failed regions are still missing: a later pass tries them again.
        self.sweep.idle = false;
        out.push(Output::FetchFailed {
            offset: bytes.start,
            len: bytes.end - bytes.start,
            reason,
        });
    }

    fn on_hydrate_done(&mut self, batch: BatchId, ok: bool) {
        let Some(regions) = self.batches.remove(&batch) else {
            return;
        };
        let bytes = self.geometry.regions_byte_range(regions.clone());
        self.hydrating_bytes -= bytes.end - bytes.start;
        self.busy.remove(regions.clone());
        if !ok {
            self.progress.hydrate_failures += 1;
            self.sweep.idle = false;
            // The driver could not take or write them (no room just now, a media
            // error): fetch them again soon rather than leave a request waiting on them
            // to a later sweep.
            self.scan_runs.push_front(regions.clone());
            if self.scan_runs.len() > SCAN_RUNS_MAX {
                self.scan_runs.pop_back();
            }
            self.requeue_reasked(regions);
            return;
        }
        if self.query.is_some() {
            self.recently_done.insert(regions.clone());
        }
        // Queued work over these regions is done: misses waiting behind this hydrate
        // were attached to it, and planned runs may predate it.
        subtract_runs(&mut self.on_demand, regions.clone());
        subtract_runs(&mut self.sweep.runs, regions.clone());
        subtract_runs(&mut self.scan_runs, regions.clone());
        self.done_since_query_regions += regions.end - regions.start;
        self.update_restored();
        self.requeue_reasked(regions);
    }

    /// The driver asked again for regions of an acknowledged hydrate while it had it:
    /// queue them now (at the front: somebody may be waiting).
    fn requeue_reasked(&mut self, regions: Range<u64>) {
        let runs: Vec<Range<u64>> = self.reasked_on_demand.within(regions.clone()).collect();
        for r in runs.into_iter().rev() {
            self.reasked_on_demand.remove(r.clone());
            self.on_demand.push_front(r);
        }
        let runs: Vec<Range<u64>> = self.reasked_background.within(regions).collect();
        for r in runs.into_iter().rev() {
            self.reasked_background.remove(r.clone());
            self.scan_runs.push_front(r);
            if self.scan_runs.len() > SCAN_RUNS_MAX {
                self.scan_runs.pop_back();
            }
        }
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Vec<Output>) {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        if let Some(b) = self.bucket.as_mut() {
            b.refill(now);
        }
        self.meter.sample(now, self.progress.restored_bytes);
        // Due retries go back to the source, on-demand ones first.
        let mut due: Vec<(bool, FetchId)> = self
            .fetches
            .iter()
            .filter(|(_, f)| matches!(f.state, FetchState::Waiting { retry_at_ns } if retry_at_ns <= now))
            .map(|(&id, f)| (!f.on_demand, id))
            .collect();
        due.sort_unstable();
        for (_, id) in due {
            if let Some(f) = self.fetches.get_mut(&id) {
                f.state = FetchState::AtSource;
                let (on_demand, regions) = (f.on_demand, f.regions.clone());
                self.emit_fetch(id, regions, on_demand, out);
            }
        }
    }

    // ----- scheduling --------------------------------------------------------------

    fn pump(&mut self, out: &mut Vec<Output>) {
        let bound = ON_DEMAND_QUEUE_MAX + SCAN_RUNS_MAX + SWEEP_RUNS_MAX + IN_FLIGHT_MAX + 16;
        for _ in 0..bound {
            if !self.step(out) {
                return;
            }
        }
        debug_assert!(false, "pump did not settle");
    }

    /// One scheduling decision; false when there is nothing more to do now.
    fn step(&mut self, out: &mut Vec<Output>) -> bool {
        let hydrating_max = 2 * self.config.in_flight_max as u64 * self.config.fetch_size_bytes;
        if self.hydrating_bytes >= hydrating_max {
            return false;
        }
        let slots_full = self.fetches.len() >= self.config.in_flight_max;
        // On demand first.
        if let Some(front) = self.on_demand.front().cloned() {
            let Some(gap) = self.busy.first_gap(front.clone()) else {
                // All of it is being fetched or written: attached.
                self.on_demand.pop_front();
                return true;
            };
            let on_demand_count = self.fetches.values().filter(|f| f.on_demand).count();
            let cap = if self.background_ready() {
                self.config.in_flight_max - self.config.background_floor_slots
            } else {
                self.config.in_flight_max
            };
            if on_demand_count < cap {
                if slots_full && !self.yield_background_slot() {
                    return false;
                }
                let take = gap.start..gap.end.min(gap.start + self.fetch_regions);
                if take.end >= front.end {
                    self.on_demand.pop_front();
                } else if let Some(f) = self.on_demand.front_mut() {
                    f.start = take.end;
                }
                self.start_fetch(take, true, out);
                return true;
            }
        }
        if slots_full || !self.bucket.is_none_or(|b| b.ready()) {
            return false;
        }
        // Scan-ahead (and hints) next; the sweep waits while a scan window is checked.
        let take = match take_run(&mut self.scan_runs, &self.busy, self.fetch_regions) {
            Some(take) => Some(take),
            None if !self.scan_windows.is_empty() || self.scan_query_outstanding() => None,
            None => take_run(&mut self.sweep.runs, &self.busy, self.fetch_regions),
        };
        let Some(take) = take else {
            self.maybe_query(out);
            return false;
        };
        if let Some(b) = self.bucket.as_mut() {
            let bytes = self.geometry.regions_byte_range(take.clone());
            b.tokens -= i128::from(bytes.end - bytes.start);
        }
        self.start_fetch(take, false, out);
        true
    }

    fn scan_query_outstanding(&self) -> bool {
        matches!(
            self.query,
            Some(Query {
                purpose: QueryPurpose::Scan(_),
                ..
            })
        )
    }

    /// Frees a slot held by a background fetch that is only waiting to retry; its regions
    /// go back to the front of the background queue.
    fn yield_background_slot(&mut self) -> bool {
        let victim = self
            .fetches
            .iter()
            .find(|(_, f)| !f.on_demand && matches!(f.state, FetchState::Waiting { .. }))
            .map(|(&id, _)| id);
        let Some(id) = victim else { return false };
        let Some(f) = self.fetches.remove(&id) else {
            return false;
        };
        self.busy.remove(f.regions.clone());
        self.scan_runs.push_front(f.regions);
        if self.scan_runs.len() > SCAN_RUNS_MAX {
            self.scan_runs.pop_back();
        }
        true
    }

    fn background_has_runs(&self) -> bool {
        !self.scan_runs.is_empty() || !self.sweep.runs.is_empty()
    }

    /// The background has a fetch it could issue now.
    fn background_ready(&self) -> bool {
        self.background_has_runs() && self.bucket.is_none_or(|b| b.ready())
    }

    /// Asks for the bitmap page the background needs next, if none is outstanding.
    fn maybe_query(&mut self, out: &mut Vec<Output>) {
        if self.query.is_some() {
            return;
        }
        let words_total = self.geometry.region_count().div_ceil(64);
        let (purpose, first_word, word_count) = if let Some(window) = self.scan_windows.pop_front()
        {
            let first = window.start / 64;
            let last = (window.end - 1) / 64 + 1;
            (QueryPurpose::Scan(window), first, last - first)
        } else if !self.sweep.idle {
            let first = self.sweep.cursor / 64;
            (
                QueryPurpose::Sweep,
                first,
                (words_total - first).min(u64::from(BITMAP_PAGE_WORDS_MAX)),
            )
        } else {
            return;
        };
        let word_count = u32::try_from(word_count.min(u64::from(BITMAP_PAGE_WORDS_MAX)))
            .unwrap_or(BITMAP_PAGE_WORDS_MAX);
        self.query = Some(Query {
            purpose,
            first_word,
        });
        self.recently_done.clear();
        out.push(Output::QueryBitmap(BitmapQuery {
            first_word,
            word_count,
            map: rehydrate_driver::abi::MapSelector::Restored,
        }));
    }

    fn start_fetch(&mut self, regions: Range<u64>, on_demand: bool, out: &mut Vec<Output>) {
        debug_assert!(!regions.is_empty() && regions.end - regions.start <= self.fetch_regions);
        debug_assert!(!self.busy.intersects(regions.clone()));
        let id = self.next_fetch;
        self.next_fetch += 1;
        self.busy.insert(regions.clone());
        self.fetches.insert(
            id,
            Fetch {
                regions: regions.clone(),
                on_demand,
                state: FetchState::AtSource,
                retries: 0,
                corrupt: 0,
                first_failure_ns: None,
                last_error: FetchError::Transient,
            },
        );
        self.emit_fetch(id, regions, on_demand, out);
    }

    fn emit_fetch(
        &self,
        fetch: FetchId,
        regions: Range<u64>,
        on_demand: bool,
        out: &mut Vec<Output>,
    ) {
        let bytes = self.geometry.regions_byte_range(regions);
        out.push(Output::Fetch {
            fetch,
            offset: bytes.start,
            len: bytes.end - bytes.start,
            block_status: self.config.block_status,
            on_demand,
        });
    }

    // ----- progress and invariants ---------------------------------------------------

    fn regions_bytes(&self, regions: u64) -> u64 {
        regions
            .saturating_mul(u64::from(self.geometry.region_size_bytes()))
            .min(self.geometry.volume_size_bytes())
    }

    fn update_restored(&mut self) {
        let regions = self.page_restored_regions + self.done_since_query_regions;
        self.progress.restored_bytes = self
            .regions_bytes(regions)
            .max(self.progress.restored_bytes);
    }

    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(self.fetches.len() <= self.config.in_flight_max);
        assert!(self.on_demand.len() <= ON_DEMAND_QUEUE_MAX);
        assert!(self.scan_windows.len() <= SCAN_WINDOWS_MAX);
        assert!(self.scan_runs.len() <= SCAN_RUNS_MAX + 1);
        for f in self.fetches.values() {
            assert!(f.regions.end - f.regions.start <= self.fetch_regions);
            assert!(
                self.busy.first_gap(f.regions.clone()).is_none(),
                "fetch regions are busy"
            );
        }
        for r in self.batches.values() {
            assert!(
                self.busy.first_gap(r.clone()).is_none(),
                "hydrating regions are busy"
            );
        }
    }

    #[cfg(test)]
    fn last_error(&self, id: FetchId) -> Option<FetchError> {
        self.fetches.get(&id).map(|f| f.last_error)
    }
}

/// Takes the next fetch from the front of `queue`: its first run of regions that are not
/// busy, at most `max` long. Fully busy runs are dropped (that work is under way).
fn take_run(queue: &mut VecDeque<Range<u64>>, busy: &RangeSet, max: u64) -> Option<Range<u64>> {
    while let Some(front) = queue.front().cloned() {
        let Some(gap) = busy.first_gap(front.clone()) else {
            queue.pop_front();
            continue;
        };
        let take = gap.start..gap.end.min(gap.start + max);
        if take.end >= front.end {
            queue.pop_front();
        } else if let Some(f) = queue.front_mut() {
            f.start = take.end;
        }
        return Some(take);
    }
    None
}

/// First region in `[from, to)` whose bit is clear (`missing`) or set (`!missing`) in the
/// page; `None` when there is none or the page ends first.
fn find_bit(page: &BitmapPage<'_>, from: u64, to: u64, missing: bool) -> Option<u64> {
    let mut region = from;
    while region < to {
        let index = usize::try_from((region / 64).checked_sub(page.first_word)?).ok()?;
        let word = page.word(index)?;
        let bits = if missing { !word } else { word } >> (region % 64);
        if bits != 0 {
            let found = region + u64::from(bits.trailing_zeros());
            return (found < to).then_some(found);
        }
        region = (region / 64 + 1) * 64;
    }
    None
}

fn push_bounded(queue: &mut VecDeque<Range<u64>>, r: Range<u64>, max: usize) {
    if queue.len() >= max {
        queue.pop_front();
    }
    queue.push_back(r);
}

/// Removes `done` from every run of `runs`, splitting a run it cuts in two.
fn subtract_runs(runs: &mut VecDeque<Range<u64>>, done: Range<u64>) {
    let mut i = 0;
    while i < runs.len() {
        let r = runs[i].clone();
        if r.end <= done.start || done.end <= r.start {
            i += 1;
            continue;
        }
        let head = r.start..done.start.max(r.start);
        let tail = done.end.min(r.end)..r.end;
        match (head.is_empty(), tail.is_empty()) {
            (true, true) => {
                runs.remove(i);
            }
            (false, true) => {
                runs[i] = head;
                i += 1;
            }
            (true, false) => {
                runs[i] = tail;
                i += 1;
            }
            (false, false) => {
                runs[i] = head;
                runs.insert(i + 1, tail);
                i += 2;
            }
        }
    }
}
