//! One attachment of the service to the filter: the loop `rehydrate attach` runs on
//! Windows, written against [`DriverLink`] so the same code runs on Linux tests over
//! the in-process channel.
//!
//! Order matters to the filter: it refuses `GET_MISSING` while no service is attached,
//! so the session sends `ATTACH` and `CONTROL(Start)` first and only then pends
//! `GET_MISSING`s (the inverted call), keeping `pended` of them at the driver: each one
//! that completes, with ranges or with an error, is sent again, after a short pause if
//! it failed, so a driver short of memory does not lose the service's ear. The hydrator
//! decides everything else (what to fetch, hydrate, report); this loop performs it. The
//! session ends when the driver reports every region restored, or when `stop` fires
//! ([`Stop`]), and either way it detaches (`CONTROL(Detach)`), which sends the pended
//! requests back (unless the driver's side is gone). Progress goes to the status file
//! `rehydrate status` reads and to a bar on stderr (`report.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rehydrate_driver::abi::{
    Attach, ControlCommand, DriverState, FetchFailed, MissingRange, StatusCounters,
};
use rehydrate_driver::engine::BatchId;
use rehydrate_driver::{Geometry, Status};
use tokio::sync::mpsc;

use crate::hydrator::{
    ConfigError, FetchId, Hydrator, HydratorConfig, Input, Missing, Output, Progress,
};
use crate::link::{BitmapWords, DriverLink, LinkError};
use crate::restore::StatusReport;
use crate::source::{fetch, Fetched, Source, SourceError};
use report::Reporter;

mod report;

/// Most `GET_MISSING` requests a session keeps pended.
pub const PENDED_MAX: usize = 16;
/// How often the hydrator is ticked when nothing else happens.
const TICK: Duration = Duration::from_millis(20);
/// How often the driver's counters are asked for (the end of the restore shows there).
const STATUS_POLL: Duration = Duration::from_millis(250);
/// How long a session whose `GET_MISSING`s the driver sent back as detached waits for a
/// last word before it ends with [`SessionError::Detached`]: the driver's counters saying
/// every region is restored, or `stop` saying the driver's side is gone (a driver that
/// detaches its service as it goes away after the restore, like the demo's machine).
const DETACHED_GRACE: Duration = Duration::from_secs(2);

/// What a session needs.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The volume.
    pub geometry: Geometry,
    /// The restore, as the driver must know it.
    pub attach: Attach,
    /// The hydrator's settings.
    pub hydrator: HydratorConfig,
    /// `GET_MISSING` requests kept pended (1 to [`PENDED_MAX`]).
    pub pended: usize,
    /// Pause before a failed `GET_MISSING` is sent again (doubled up to 16 times that).
    pub pend_retry: Duration,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress_bar: bool,
}

/// Why a session is told to end before the driver reported every region restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C or the like: the session detaches and ends with [`SessionError::Stopped`];
    /// the restore resumes at the next attach.
    Interrupted,
    /// The driver's side is gone (an in-process driver that shut down), having seen
    /// every region restored or not. Nothing more is sent to it, not even a detach.
    DriverGone {
        /// It saw every region restored: the session ends as complete.
        restored: bool,
    },
}

/// What a session did.
#[derive(Clone, Debug)]
pub struct SessionReport {
    /// The hydrator's counters at the end.
    pub progress: Progress,
    /// The driver's counters last seen.
    pub counters: Option<StatusCounters>,
    /// `GET_MISSING`s that failed and were sent again.
    pub pends_failed: u64,
}

/// Why a session ended without the restore complete.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The hydrator refused its settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `pended` is out of range.
    #[error("{0} GET_MISSING requests pended: must be 1 to {PENDED_MAX}")]
    Pended(usize),
    /// A call on the driver link failed.
    #[error("driver link: {0}")]
    Link(#[from] LinkError),
    /// The driver asked for a range outside the volume.
    #[error("the driver asked for {offset}+{len}, outside the volume")]
    BadRange {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// The driver detached this service (the volume went away, or another service
    /// attached).
    #[error("the driver detached this service: {0}")]
    Detached(LinkError),
    /// Stopped before the restore completed (Ctrl-C); it resumes at the next attach.
    #[error("stopped before the restore completed; attach again to resume")]
    Stopped,
    /// The driver's side went away before the restore completed.
    #[error("the driver went away before the volume was restored")]
    DriverGone,
}

/// Something a task finished.
enum Event {
    Missing(Vec<MissingRange>),
    PendFailed,
    PendStopped(LinkError),
    Fetched(FetchId, Result<Fetched, SourceError>),
    Hydrated(BatchId, Result<Status, LinkError>),
    Page(Result<BitmapWords, LinkError>),
    Counters(Result<StatusCounters, LinkError>),
}

/// Runs one attachment until the volume is restored or `stop` fires; detaches either way
/// (unless the driver's side is gone). `status` is kept current while it runs and says
/// complete, stopped or failed at the end.
pub async fn run<L, S>(
    link: L,
    source: Arc<S>,
    config: SessionConfig,
    status: StatusReport,
    stop: impl Future<Output = Stop>,
) -> Result<SessionReport, SessionError>
where
    L: DriverLink + Clone + Send + Sync + 'static,
    S: Source,
{
    let mut reporter = Reporter::new(status, config.geometry, config.progress_bar);
    let ended = drive(link, source, &config, &mut reporter, stop).await;
    reporter.finish(
        &ended.result,
        &ended.report.progress,
        ended.report.counters.as_ref(),
    );
    ended.result.map(|()| ended.report)
}

/// How a session ended, with what it did either way.
struct Ended {
    result: Result<(), SessionError>,
    report: SessionReport,
}

impl Ended {
    fn early(e: SessionError) -> Ended {
        Ended {
            result: Err(e),
            report: SessionReport {
                progress: Progress::default(),
                counters: None,
                pends_failed: 0,
            },
        }
    }
}

async fn drive<L, S>(
    link: L,
    source: Arc<S>,
    config: &SessionConfig,
    reporter: &mut Reporter,
    stop: impl Future<Output = Stop>,
) -> Ended
where
    L: DriverLink + Clone + Send + Sync + 'static,
    S: Source,
{
    if !(1..=PENDED_MAX).contains(&config.pended) {
        return Ended::early(SessionError::Pended(config.pended));
    }
    let hydrator = match Hydrator::new(config.geometry, config.hydrator) {
        Ok(h) => h,
        Err(e) => return Ended::early(e.into()),
    };
    if let Err(e) = link.attach(config.attach).await {
        return Ended::early(e.into());
    }
    if let Err(e) = link.control(ControlCommand::Start).await {
        return Ended::early(e.into());
    }
    tracing::info!(pended = config.pended, "attach: attached and started");
    let (tx, rx) = mpsc::unbounded_channel();
    let penders: Vec<_> = (0..config.pended)
        .map(|_| tokio::spawn(keep_pended(link.clone(), tx.clone(), config.pend_retry)))
        .collect();
    let mut session = Session {
        geometry: config.geometry,
        hydrator,
        link: link.clone(),
        source,
        tx,
        payloads: HashMap::new(),
        out: Vec::new(),
        started: Instant::now(),
        counters: None,
        pends_failed: 0,
        failure: None,
        detached: None,
        restored: false,
        reporter,
    };
    let result = session.run(rx, stop).await;
    // No new GET_MISSING after this (one already sent still reaches the driver first);
    // detaching sends the pended ones back. A session that failed detaches too, so
    // held reads fail at once instead of waiting for their deadline. A driver that is
    // gone hears nothing more.
    for pender in penders {
        pender.abort();
    }
    let result = match result {
        Ok(Some(Stop::DriverGone { restored: true })) => Ok(()),
        Ok(Some(Stop::DriverGone { restored: false })) => Err(SessionError::DriverGone),
        other => {
            let detached = link.control(ControlCommand::Detach).await;
            match other {
                // Complete: a driver gone before the detach (its volume removed the
                // moment it was restored) lost nothing.
                Ok(None) if matches!(detached, Err(LinkError::Closed { .. })) => {
                    tracing::debug!("attach: restored; the driver was gone before the detach");
                    Ok(())
                }
                Ok(None) => detached.map_err(SessionError::from),
                Ok(Some(_)) => Err(SessionError::Stopped),
                Err(e) => Err(e),
            }
        }
    };
    Ended {
        result,
        report: SessionReport {
            progress: session.hydrator.progress(),
            counters: session.counters,
            pends_failed: session.pends_failed,
        },
    }
}

/// Keeps one `GET_MISSING` pended: sends it again whenever it completes, after a pause
/// when it failed; stops when the driver detached this service or the link closed.
async fn keep_pended<L: DriverLink>(link: L, tx: mpsc::UnboundedSender<Event>, retry: Duration) {
    let mut failures = 0u32;
    loop {
        let event = match link.get_missing().await {
            Ok(ranges) => {
                failures = 0;
                Event::Missing(ranges)
            }
            Err(e) if e.is_detached() || matches!(e, LinkError::Closed { .. }) => {
                let _ = tx.send(Event::PendStopped(e));
                return;
            }
            Err(e) => {
                tracing::warn!(%e, "attach: GET_MISSING failed; pending it again");
                failures = failures.saturating_add(1);
                Event::PendFailed
            }
        };
        if tx.send(event).is_err() {
            return;
        }
        if failures > 0 {
            tokio::time::sleep(retry * (1 << failures.min(5)) / 2).await;
        }
    }
}

struct Session<'r, L, S> {
    geometry: Geometry,
    hydrator: Hydrator,
    link: L,
    source: Arc<S>,
    tx: mpsc::UnboundedSender<Event>,
    /// Data of completed fetches, shared with the hydrates that carry it.
    payloads: HashMap<FetchId, Arc<Vec<u8>>>,
    out: Vec<Output>,
    started: Instant,
    counters: Option<StatusCounters>,
    pends_failed: u64,
    failure: Option<SessionError>,
    /// The driver sent a `GET_MISSING` back as detached, then: the session ends after
    /// [`DETACHED_GRACE`] unless the restore is seen complete first.
    detached: Option<(Instant, LinkError)>,
    restored: bool,
    reporter: &'r mut Reporter,
}

impl<L, S> Session<'_, L, S>
where
    L: DriverLink + Clone + Send + Sync + 'static,
    S: Source,
{
    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Until the driver reports every region restored (`None`), `stop` fires, or
    /// something fails.
    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        stop: impl Future<Output = Stop>,
    ) -> Result<Option<Stop>, SessionError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(STATUS_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            if let Some(e) = self.failure.take() {
                return Err(e);
            }
            if self.restored {
                return Ok(None);
            }
            if let Some((at, _)) = &self.detached {
                if at.elapsed() >= DETACHED_GRACE {
                    let (_, e) = self.detached.take().expect("checked just above");
                    return Err(SessionError::Detached(e));
                }
            }
            tokio::select! {
                why = &mut stop => return Ok(Some(why)),
                // The session holds a sender, so the channel never closes under it.
                Some(event) = rx.recv() => self.on_event(event),
                _ = tick.tick() => {
                    let now_ns = self.now_ns();
                    self.feed(Input::Tick { now_ns });
                }
                _ = poll.tick() => {
                    let (tx, link) = (self.tx.clone(), self.link.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(Event::Counters(link.get_status().await));
                    });
                    self.reporter
                        .update(&self.hydrator.progress(), self.counters.as_ref());
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Missing(ranges) => {
                for range in ranges {
                    match Missing::from_abi(&range, &self.geometry) {
                        Ok(m) => self.feed(m.input()),
                        Err(_) => {
                            self.failure.get_or_insert(SessionError::BadRange {
                                offset: range.offset,
                                len: range.len,
                            });
                        }
                    }
                }
            }
            Event::PendFailed => self.pends_failed += 1,
            Event::PendStopped(e) => {
                if self.detached.is_none() {
                    // One last look at the counters: a restore that just completed
                    // ends well.
                    let (tx, link) = (self.tx.clone(), self.link.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(Event::Counters(link.get_status().await));
                    });
                    self.detached = Some((Instant::now(), e));
                }
            }
            Event::Fetched(fetch, Ok(fetched)) => {
                self.payloads.insert(fetch, Arc::new(fetched.data));
                self.feed(Input::Fetched {
                    fetch,
                    segments: &fetched.segments,
                });
                // Every hydrate of this fetch holds its own reference by now.
                self.payloads.remove(&fetch);
            }
            Event::Fetched(fetch, Err(e)) => {
                tracing::warn!(%e, fetch, "attach: fetch failed");
                let error = e.fetch_error();
                self.feed(Input::FetchFailed { fetch, error });
            }
            Event::Hydrated(batch, Ok(status)) => {
                if !status.is_success() {
                    tracing::warn!(batch, status = status.0, "attach: hydrate refused");
                }
                self.feed(Input::HydrateDone {
                    batch,
                    ok: status.is_success(),
                });
            }
            Event::Hydrated(_, Err(e)) | Event::Page(Err(e)) => {
                self.failure.get_or_insert(e.into());
            }
            Event::Page(Ok(words)) => match words.page() {
                Ok(page) => self.feed(Input::BitmapPage(page)),
                Err(source) => {
                    self.failure
                        .get_or_insert(SessionError::Link(LinkError::Decode {
                            ioctl: rehydrate_driver::abi::Ioctl::QueryBitmap,
                            source,
                        }));
                }
            },
            Event::Counters(Ok(c)) => {
                self.restored = c.state == DriverState::AllRestored;
                self.counters = Some(c);
            }
            Event::Counters(Err(e)) => tracing::debug!(%e, "attach: GET_STATUS"),
        }
    }

    /// Hands one input to the hydrator and performs what it asks.
    fn feed(&mut self, input: Input<'_>) {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.hydrator.handle(input, &mut out);
        for o in out.drain(..) {
            self.perform(o);
        }
        self.out = out;
    }

    fn perform(&mut self, output: Output) {
        let tx = self.tx.clone();
        let link = self.link.clone();
        match output {
            Output::Fetch {
                fetch: id,
                offset,
                len,
                block_status,
                ..
            } => {
                let source = Arc::clone(&self.source);
                let geometry = self.geometry;
                tokio::spawn(async move {
                    let result = fetch(source.as_ref(), &geometry, offset, len, block_status).await;
                    let _ = tx.send(Event::Fetched(id, result));
                });
            }
            Output::Hydrate {
                batch,
                offset,
                len,
                zero,
                payload,
            } => {
                let data = match payload.filter(|_| !zero) {
                    None => None,
                    Some(p) => {
                        let found = self.payloads.get(&p.fetch).and_then(|d| {
                            let start = usize::try_from(p.offset).ok()?;
                            let end = start.checked_add(usize::try_from(len).ok()?)?;
                            (end <= d.len()).then(|| (Arc::clone(d), start..end))
                        });
                        if found.is_none() {
                            // The hydrator hands out payloads only while their fetch's data
                            // is held (`PayloadRef`): a broken promise, not a link failure.
                            debug_assert!(false, "hydrate {batch} without its fetch's data");
                            self.feed(Input::HydrateDone { batch, ok: false });
                            return;
                        }
                        found
                    }
                };
                tokio::spawn(async move {
                    let bytes: &[u8] = match &data {
                        Some((d, range)) => &d[range.clone()],
                        None => &[],
                    };
                    let result = link.hydrate(offset, len, zero, bytes).await;
                    let _ = tx.send(Event::Hydrated(batch, result));
                });
            }
            Output::FetchFailed {
                offset,
                len,
                reason,
            } => {
                tracing::warn!(offset, len, ?reason, "attach: giving up on a range");
                let failed = FetchFailed {
                    offset,
                    len,
                    reason,
                };
                tokio::spawn(async move {
                    if let Err(e) = link.fetch_failed(failed).await {
                        tracing::warn!(%e, "attach: FETCH_FAILED not delivered");
                    }
                });
            }
            Output::QueryBitmap(query) => {
                tokio::spawn(async move {
                    let _ = tx.send(Event::Page(link.query_bitmap(query).await));
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
