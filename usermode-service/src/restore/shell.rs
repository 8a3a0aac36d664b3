//! The tokio shell of the Linux restore: performs the hydrator's and the engine's
//! actions and nothing else.
//!
//! One task owns the engine, the hydrator, the metadata and the target, and performs
//! their actions in order; fetches run as separate tasks and report on a channel, their
//! data read straight into pooled buffers ([`super::fetch`]). Hydrate writes go to the
//! writer thread ([`super::writer`]), which batches them and reports each completion
//! back, so fetching and writing overlap. The engine asks for `fdatasync` only on its
//! commit interval (about once a second), never per hydrate, and it runs off this task
//! too, while fetches and writes go on.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rehydrate_driver::abi::BitmapPage;
use rehydrate_driver::engine::either::Core;
use rehydrate_driver::engine::{Action, BatchId, Engine, EngineConfig, Event, LowerId};
use rehydrate_driver::meta::Metadata;
use rehydrate_driver::{Geometry, RegionMap, Status};
use tokio::sync::mpsc;

use super::buffers::BufferPool;
use super::changes::{stamp_of, Changes};
use super::fetch::{fetch_parts, Parts};
use super::live::front::{Front, LowerDone};
use super::live::{Request, Shared};
use super::meta_file::FileMetaStore;
use super::status_report::StatusReport;
use super::target::Target;
use super::timeline::Timeline;
use super::writer::{Job, Writer};
use crate::error::ServiceError;
use crate::hydrator::{FetchId, Hydrator, HydratorConfig, Input, Missing, Output, Progress};
use crate::source::{Source, SourceError};

/// How often the engine and hydrator get a tick when nothing else happens.
const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// How long a stop waits for requests in flight and held before failing the rest.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a finished restore did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Hydrator counters at the end.
    pub progress: Progress,
    /// Bytes already restored when this run started (from the metadata).
    pub resumed_bytes: u64,
    /// Metadata commits this run made.
    pub commits: u64,
    /// Every region is restored (a live export may stop before).
    pub complete: bool,
    /// Bytes restored at the end, including earlier runs'.
    pub restored_bytes: u64,
}

/// The live export's side of the shell (`--export`): requests from clients, their
/// forwarded I/O coming back, and the stop signal.
pub(crate) struct Live {
    pub front: Front,
    pub requests: mpsc::UnboundedReceiver<Request>,
    pub done_rx: mpsc::UnboundedReceiver<LowerDone>,
    pub shared: Arc<Shared>,
    /// Completes on SIGINT or SIGTERM.
    pub stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Where a stop of the live export stands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Running,
    /// Refusing new requests; waiting for those in flight (since then).
    Draining(Instant),
    /// The final flush and commit are in flight (the shell's own flush request).
    Flushing(u64),
    Done,
}

pub(super) mod overlay;

type FetchResult = (FetchId, Result<Parts, SourceError>);
/// A lower flush or hydrate write finished: its handle and status.
type LowerResult = (LowerId, Status);

pub(super) struct Shell<S: Source> {
    geometry: Geometry,
    /// The in-place engine, or the overlay mode's ([`overlay`]).
    engine: Core,
    hydrator: Hydrator,
    meta: Metadata,
    store: FileMetaStore,
    target: Arc<Target>,
    map: Arc<RegionMap>,
    live: Option<Live>,
    /// The map of changes since the backup, whose session ends cleanly with the run.
    changes: Option<Changes>,
    /// The overlay mode's file and cutover control (`--overlay`).
    overlay: Option<overlay::Side>,
    stop: Stop,
    timeline: Option<Timeline>,
    source: Arc<S>,
    /// Fetch buffers, reused (bounded by the hydrator's fetches and hydrates).
    pool: Arc<BufferPool>,
    writer: Writer,
    /// The fetch whose data the hydrator is handing out (only while it does).
    fetched: Option<(FetchId, Parts)>,
    inputs: VecDeque<OwnedInput>,
    all_restored: bool,
    failure: Option<ServiceError>,
    /// The source's last error, for the message if the restore fails.
    last_error: Option<String>,
    started: Instant,
    tx: mpsc::UnboundedSender<FetchResult>,
    rx: mpsc::UnboundedReceiver<FetchResult>,
    flush_tx: mpsc::UnboundedSender<LowerResult>,
    flush_rx: mpsc::UnboundedReceiver<LowerResult>,
    written_tx: mpsc::UnboundedSender<LowerResult>,
    written_rx: mpsc::UnboundedReceiver<LowerResult>,
}

/// Hydrator inputs the shell queues while performing actions.
enum OwnedInput {
    HydrateDone {
        batch: BatchId,
        ok: bool,
    },
    Missing(Missing),
    Page {
        first_word: u64,
        words: Vec<u64>,
        restored: u64,
    },
}

impl<S: Source> Shell<S> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        target: Arc<Target>,
        store: FileMetaStore,
        meta: Metadata,
        map: Arc<RegionMap>,
        config: HydratorConfig,
        source: Arc<S>,
        live: Option<Live>,
        changes: Option<Changes>,
        timeline: bool,
    ) -> Result<Shell<S>, ServiceError> {
        let geometry = *map.geometry();
        let (tx, rx) = mpsc::unbounded_channel();
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let (written_tx, written_rx) = mpsc::unbounded_channel();
        // Every fetch in flight, plus the hydrates the hydrator lets wait for the writer
        // (twice the fetches' bytes): what is in use at most, kept for reuse.
        let pool = Arc::new(BufferPool::new(
            usize::try_from(config.fetch_size_bytes).unwrap_or(usize::MAX),
            3 * config.in_flight_max,
        ));
        let writer = Writer::start(Arc::clone(&target), Arc::clone(&pool), written_tx.clone())
            .map_err(|source| ServiceError::TargetIo {
                op: "start the writer for",
                path: target.path().to_owned(),
                source,
            })?;
        Ok(Shell {
            geometry,
            engine: Core::InPlace(Engine::new(Arc::clone(&map), EngineConfig::default())),
            hydrator: Hydrator::new(geometry, config)?,
            meta,
            store,
            target,
            map,
            live,
            changes,
            overlay: None,
            stop: Stop::Running,
            timeline: timeline.then(Timeline::default),
            source,
            pool,
            writer,
            fetched: None,
            inputs: VecDeque::new(),
            all_restored: false,
            failure: None,
            last_error: None,
            started: Instant::now(),
            tx,
            rx,
            flush_tx,
            flush_rx,
            written_tx,
            written_rx,
        })
    }

    fn restored_bytes(&self) -> u64 {
        let count = self.map.restored_count();
        let region = u64::from(self.geometry.region_size_bytes());
        let mut bytes = count * region;
        let last = self.geometry.region_count() - 1;
        if count > 0 && self.map.is_restored(last) {
            bytes -= region - self.geometry.region_len_bytes(last);
        }
        bytes
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Runs to the end (every region restored; with a live export, until stopped), then
    /// draws the timeline if one was asked for, however the run ended.
    pub(super) async fn run(
        mut self,
        started: Instant,
        status: &mut StatusReport,
        timeline: Option<&std::path::Path>,
        title: &str,
    ) -> Result<Outcome, ServiceError> {
        let result = self.run_loop(started, status).await;
        if let (Some(path), Some((t, secs))) = (timeline, self.timeline()) {
            if let Err(e) = t.write_svg(path, secs, title) {
                tracing::warn!(%e, path = %path.display(), "restore: timeline not written");
            }
        }
        result
    }

    async fn run_loop(
        &mut self,
        started: Instant,
        status: &mut StatusReport,
    ) -> Result<Outcome, ServiceError> {
        self.started = started;
        let resumed_bytes = self.restored_bytes();
        let bar = progress_bar(self.geometry.volume_size_bytes(), resumed_bytes);
        let mut last_tick = Instant::now();
        self.tick();
        self.report(status);
        loop {
            self.drain_inputs();
            if let Some(e) = self.failure.take() {
                bar.abandon();
                return Err(e);
            }
            if self.live.is_none() && self.all_restored {
                break;
            }
            if self.live.is_some() && self.advance_stop() {
                break;
            }
            let wake = self
                .hydrator
                .next_wakeup_ns()
                .map(|at| Duration::from_nanos(at.saturating_sub(self.now_ns())));
            let sleep = wake.unwrap_or(TICK_INTERVAL).min(TICK_INTERVAL);
            tokio::select! {
                done = self.rx.recv() => {
                    if let Some((id, result)) = done {
                        self.on_fetch_result(id, result);
                        // Take whatever else finished without waiting again.
                        while let Ok((id, result)) = self.rx.try_recv() {
                            self.on_fetch_result(id, result);
                        }
                    }
                }
                flushed = self.flush_rx.recv() => {
                    if let Some((lower, status)) = flushed {
                        if !status.is_success() {
                            self.failure.get_or_insert(ServiceError::LowerFailed { status: status.0, what: "flush" });
                        }
                        let mut actions = Vec::new();
                        self.engine.handle(Event::LowerCompleted { lower, status }, &mut actions);
                        self.perform_engine(actions);
                    }
                }
                written = self.written_rx.recv() => {
                    if let Some(done) = written {
                        self.on_written(done);
                        while let Ok(done) = self.written_rx.try_recv() {
                            self.on_written(done);
                        }
                    }
                }
                event = next_live(&mut self.live, self.stop) => self.on_live(event),
                command = overlay::next_command(&mut self.overlay) => self.on_cutover(command),
                _ = tokio::time::sleep(sleep) => {}
            }
            if last_tick.elapsed() >= TICK_INTERVAL {
                last_tick = Instant::now();
                self.tick();
                bar.set_position(self.restored_bytes());
                self.report(status);
            }
        }
        bar.set_position(self.restored_bytes());
        bar.finish_and_clear();
        self.end_changes();
        // The caller writes the final snapshot once it knows how the restore ended.
        self.fill_status(status);
        Ok(Outcome {
            progress: self.hydrator.progress(),
            resumed_bytes,
            commits: self.engine.counters().commits,
            complete: self.map.is_all_restored(),
            restored_bytes: self.restored_bytes(),
        })
    }

    /// A clean end (every region restored, or the live export stopped and flushed):
    /// the map of changes is committed *clean* with the target's stamp. If that fails,
    /// it stays *open*, and the next backup reads everything.
    fn end_changes(&mut self) {
        let Some(changes) = &mut self.changes else {
            return;
        };
        let stamp = match stamp_of(self.target.file()) {
            Ok(stamp) => stamp,
            Err(e) => {
                tracing::warn!(%e, "restore: cannot stamp the target; the next backup reads everything");
                return;
            }
        };
        self.engine.prepare_durable_view();
        let engine = &self.engine;
        if let Err(e) = changes.end(&mut self.meta, &mut self.store, stamp, |w| {
            engine.durable_word(w)
        }) {
            tracing::warn!(%e, "restore: the map of changes could not be closed; the next backup reads everything");
        }
    }

    /// Brings the status snapshot up to date and writes it when due.
    fn report(&self, status: &mut StatusReport) {
        self.fill_status(status);
        status.write_if_due();
    }

    /// The timeline recorded so far, if asked for, with the run's length in seconds.
    pub(super) fn timeline(&self) -> Option<(&Timeline, f64)> {
        self.timeline
            .as_ref()
            .map(|t| (t, self.started.elapsed().as_secs_f64()))
    }

    fn on_live(&mut self, event: LiveEvent) {
        match event {
            LiveEvent::Request(request) => self.on_request(request),
            LiveEvent::Done((lower, id, status, data)) => {
                if let Some(live) = &mut self.live {
                    live.front.lower_done(id, data);
                }
                let mut actions = Vec::new();
                self.engine
                    .handle(Event::LowerCompleted { lower, status }, &mut actions);
                self.perform_engine(actions);
            }
            LiveEvent::Stop => {
                tracing::info!("restore: stopping the live export");
                if let Some(live) = &self.live {
                    live.shared
                        .stopping
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                self.stop = Stop::Draining(Instant::now());
            }
        }
    }

    /// A client request: the engine decides, the front performs.
    fn on_request(&mut self, request: Request) {
        let Some(live) = &mut self.live else { return };
        if self.stop != Stop::Running {
            let _ = request
                .reply
                .send(Err(rehydrate_nbd::ExportError::ShuttingDown));
            return;
        }
        let event = live.front.submit(request);
        let mut actions = Vec::new();
        self.engine.handle(event, &mut actions);
        self.perform_engine(actions);
    }

    /// Moves a stop of the live export along; true when the shell may end.
    fn advance_stop(&mut self) -> bool {
        let Some(live) = &mut self.live else {
            return false;
        };
        match self.stop {
            Stop::Running => false,
            Stop::Draining(since) => {
                let taken = live
                    .shared
                    .requests_in_flight
                    .load(std::sync::atomic::Ordering::Acquire);
                if (live.front.in_flight() > 0 || taken > 0) && since.elapsed() < STOP_GRACE {
                    return false;
                }
                let mut actions = Vec::new();
                if live.front.in_flight() > 0 {
                    // Held past the grace period: failed, not lost.
                    self.engine.handle(Event::Remove, &mut actions);
                }
                let (id, flush) = live.front.own_flush();
                self.stop = Stop::Flushing(id);
                self.engine.handle(flush, &mut actions);
                self.perform_engine(actions);
                false
            }
            Stop::Flushing(_) => false,
            Stop::Done => true,
        }
    }

    fn fill_status(&self, status: &mut StatusReport) {
        let p = self.hydrator.progress();
        let s = status.snapshot_mut();
        s.regions_total = self.geometry.region_count();
        s.regions_restored = self.map.restored_count();
        s.bytes_total = self.geometry.volume_size_bytes();
        s.bytes_restored = self.restored_bytes();
        s.bytes_fetched = p.fetched_bytes;
        s.bytes_zero = p.zero_bytes;
        // Only the live export has requests from above.
        s.held_requests = self.engine.held_count() as u64;
        if let Some(live) = &self.live {
            s.clients = Some(
                live.shared
                    .clients
                    .load(std::sync::atomic::Ordering::Acquire),
            );
            s.miss_latency_ms_p50 = live.front.latency_ms(0.5);
            s.miss_latency_ms_p99 = live.front.latency_ms(0.99);
        }
        s.misses_served = p.misses_served;
        s.fetch_failures = p.failures;
        s.retries = p.retries;
        s.rate_bytes_per_sec = p.rate_bytes_per_sec;
        s.eta_secs = p.eta_secs;
        s.overlay = self.overlay_status();
    }

    fn tick(&mut self) {
        let now_ns = self.now_ns();
        let secs = now_ns as f64 / 1e9;
        let restored = self.restored_bytes();
        if let Some(t) = &mut self.timeline {
            t.restored(secs, restored);
            if let Some(live) = &mut self.live {
                for ms in live.front.take_misses() {
                    t.miss(secs, ms);
                }
            }
        }
        if let Some(live) = &self.live {
            // From here on every request bypasses the engine (one branch).
            if self.engine.is_passthrough() {
                live.shared
                    .passthrough
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let mut actions = Vec::new();
        self.engine.handle(Event::Tick { now_ns }, &mut actions);
        self.perform_engine(actions);
        self.feed(Input::Tick { now_ns });
    }

    /// A hydrate write finished (the writer let its buffer go first).
    fn on_written(&mut self, (lower, status): LowerResult) {
        let mut actions = Vec::new();
        self.engine
            .handle(Event::LowerCompleted { lower, status }, &mut actions);
        self.perform_engine(actions);
    }

    fn on_fetch_result(&mut self, id: FetchId, result: Result<Parts, SourceError>) {
        match result {
            Ok(parts) => {
                let secs = self.now_ns() as f64 / 1e9;
                if let Some(t) = &mut self.timeline {
                    t.source_up(secs);
                }
                let segments = parts.segments.clone();
                self.fetched = Some((id, parts));
                self.feed(Input::Fetched {
                    fetch: id,
                    segments: &segments,
                });
                // Every hydrate of this fetch went to the writer (or was dropped) by now:
                // the writer holds what it needs of the buffers.
                self.fetched = None;
            }
            Err(e @ SourceError::Changed { .. }) => {
                // Never continue against another source than the one pinned.
                self.failure.get_or_insert(ServiceError::Source(e));
            }
            Err(e) => {
                tracing::debug!(%e, id, "restore: fetch failed");
                let secs = self.now_ns() as f64 / 1e9;
                if let Some(t) = &mut self.timeline {
                    t.source_down(secs);
                }
                let error = e.fetch_error();
                self.last_error = Some(e.to_string());
                self.feed(Input::FetchFailed { fetch: id, error });
            }
        }
    }

    fn drain_inputs(&mut self) {
        // Bounded: each input is produced by an action of a bounded batch of work.
        while let Some(input) = self.inputs.pop_front() {
            match input {
                OwnedInput::HydrateDone { batch, ok } => {
                    self.feed(Input::HydrateDone { batch, ok })
                }
                OwnedInput::Missing(m) => self.feed(m.input()),
                OwnedInput::Page {
                    first_word,
                    words,
                    restored,
                } => {
                    match BitmapPage::new(
                        first_word,
                        self.geometry.region_count(),
                        restored,
                        &words,
                    ) {
                        Ok(page) => self.feed(Input::BitmapPage(page)),
                        Err(e) => tracing::error!(%e, "restore: bitmap page refused"),
                    }
                }
            }
        }
    }

    /// Hands one input to the hydrator and performs what it asks.
    fn feed(&mut self, input: Input<'_>) {
        let mut out = Vec::new();
        self.hydrator.handle(input, &mut out);
        for o in out {
            self.perform_hydrator(o);
        }
    }

    fn perform_hydrator(&mut self, o: Output) {
        match o {
            Output::Fetch {
                fetch: id,
                offset,
                len,
                block_status,
                ..
            } => {
                let (source, pool) = (Arc::clone(&self.source), Arc::clone(&self.pool));
                let tx = self.tx.clone();
                let geometry = self.geometry;
                tokio::spawn(async move {
                    let result =
                        fetch_parts(source.as_ref(), &pool, &geometry, offset, len, block_status)
                            .await;
                    let _ = tx.send((id, result));
                });
            }
            Output::Hydrate {
                batch,
                offset,
                len,
                zero,
                payload,
            } => {
                // A hydrate's data is the fetch's being handed out, found by volume offset.
                debug_assert!(payload
                    .is_none_or(|p| self.fetched.as_ref().is_some_and(|(id, _)| *id == p.fetch)));
                let mut actions = Vec::new();
                self.engine.handle(
                    Event::Hydrate {
                        batch,
                        offset,
                        len,
                        zero,
                    },
                    &mut actions,
                );
                self.perform_engine(actions);
            }
            Output::FetchFailed {
                offset,
                len,
                reason,
            } if self.live.is_some() => {
                // Clients wait: the engine fails exactly the requests that needed the
                // range (EIO); everything else keeps being served.
                tracing::warn!(offset, len, ?reason, "restore: range could not be fetched");
                let mut actions = Vec::new();
                self.engine.handle(
                    Event::FetchFailed {
                        offset,
                        len,
                        reason,
                    },
                    &mut actions,
                );
                self.perform_engine(actions);
            }
            Output::FetchFailed {
                offset,
                len,
                reason,
            } => {
                // Nobody waits in a whole-volume restore: a range that cannot be had ends it.
                let detail = self
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "no detail".into());
                self.failure.get_or_insert(ServiceError::FetchFailed {
                    offset,
                    len,
                    reason,
                    detail,
                });
            }
            Output::QueryBitmap(q) => {
                let words_total = self.map.word_count() as u64;
                let end = (q.first_word + u64::from(q.word_count)).min(words_total);
                let words: Vec<u64> = (q.first_word..end)
                    .map(|w| self.map.word(w as usize))
                    .collect();
                self.inputs.push_back(OwnedInput::Page {
                    first_word: q.first_word,
                    words,
                    restored: self.map.restored_count(),
                });
            }
        }
    }

    /// Performs engine actions until none are left (completions feed more events).
    fn perform_engine(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let mut more = Vec::new();
            match action {
                Action::WriteHydrate {
                    lower,
                    batch,
                    offset,
                    len,
                    zero,
                    ..
                } => {
                    let job = if zero {
                        Some(Job::Zero { lower, offset, len })
                    } else {
                        // The engine writes a hydrate when it gets it: its fetch is the one
                        // being handed out, and the bytes are those of the write's range.
                        self.fetched
                            .as_ref()
                            .and_then(|(_, parts)| parts.bytes(offset, len))
                            .map(|data| Job::Write {
                                lower,
                                offset,
                                data,
                            })
                    };
                    match job {
                        Some(job) => self.writer.submit(job, &self.written_tx),
                        None => {
                            tracing::error!(
                                batch,
                                offset,
                                len,
                                "restore: hydrate without its payload"
                            );
                            self.engine.handle(
                                Event::LowerCompleted {
                                    lower,
                                    status: Status::INVALID_PARAMETER,
                                },
                                &mut more,
                            );
                        }
                    }
                }
                Action::FlushDown { lower } => {
                    // fdatasync of a large dirty target takes long: run it off this task
                    // so fetched data keeps being written meanwhile.
                    let tx = self.flush_tx.clone();
                    match self.target.flusher() {
                        Ok(file) => {
                            tokio::task::spawn_blocking(move || {
                                let status = match file.sync_data() {
                                    Ok(()) => Status::SUCCESS,
                                    Err(e) => {
                                        tracing::error!(%e, "restore: fdatasync failed");
                                        Status::IO_DEVICE_ERROR
                                    }
                                };
                                let _ = tx.send((lower, status));
                            });
                        }
                        Err(e) => {
                            tracing::error!(%e, "restore: cannot open a flush handle");
                            let _ = tx.send((lower, Status::IO_DEVICE_ERROR));
                        }
                    }
                }
                Action::CommitMetadata { commit } => {
                    if let Err(e) = self.engine.commit_and_answer(
                        &mut self.meta,
                        &mut self.store,
                        commit,
                        &mut more,
                    ) {
                        tracing::error!(%e, "restore: metadata commit failed");
                        self.failure.get_or_insert(ServiceError::Metadata {
                            path: self.target.path().to_owned(),
                            source: e,
                        });
                    }
                }
                Action::HydrateDone { batch, status } => {
                    if !status.is_success() {
                        self.failure.get_or_insert(ServiceError::LowerFailed {
                            status: status.0,
                            what: "hydrate write",
                        });
                    }
                    self.inputs.push_back(OwnedInput::HydrateDone {
                        batch,
                        ok: status.is_success(),
                    });
                }
                Action::AllRestored => self.all_restored = true,
                Action::Fetch { .. } => {
                    if let Some(m) = Missing::from_engine(&action) {
                        self.inputs.push_back(OwnedInput::Missing(m));
                    }
                }
                // Requests from above: only the live export has them.
                Action::Forward { id, lower } => match &mut self.live {
                    Some(live) => live.front.forward(id, lower),
                    None => tracing::warn!(?action, "restore: unexpected engine action"),
                },
                Action::Hold { id } => {
                    if let Some(live) = &mut self.live {
                        live.front.hold(id);
                    }
                }
                Action::Piece { .. }
                | Action::Copy { .. }
                | Action::FlushOverlay { .. }
                | Action::DestinationRestored
                | Action::Merged
                | Action::MergeFailed { .. } => self.perform_overlay(action, &mut more),
                Action::Complete { id, status } => {
                    if let Some(live) = &mut self.live {
                        let own = live.front.complete(id, status);
                        if own && self.stop == Stop::Flushing(id) {
                            if !status.is_success() {
                                self.failure.get_or_insert(ServiceError::LowerFailed {
                                    status: status.0,
                                    what: "final flush",
                                });
                            }
                            self.stop = Stop::Done;
                        }
                    }
                }
            }
            queue.extend(more);
        }
    }
}

fn progress_bar(total: u64, position: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "restore {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_position(position);
    bar.reset_eta();
    bar
}

/// What the live export has for the shell.
enum LiveEvent {
    /// A client request.
    Request(Request),
    /// A forwarded request's I/O finished.
    Done(LowerDone),
    /// SIGINT or SIGTERM.
    Stop,
}

/// The live export's next event; never, without a live export.
async fn next_live(live: &mut Option<Live>, stop: Stop) -> LiveEvent {
    let Some(live) = live else {
        return std::future::pending().await;
    };
    let (requests, done, signal) = (&mut live.requests, &mut live.done_rx, &mut live.stop);
    tokio::select! {
        Some(request) = requests.recv() => LiveEvent::Request(request),
        Some(finished) = done.recv() => LiveEvent::Done(finished),
        // A completed signal future is never polled again: only while running.
        () = signal.as_mut(), if stop == Stop::Running => LiveEvent::Stop,
        // Closed channels (the server gone) must not wake the loop over and over.
        else => std::future::pending().await,
    }
}
