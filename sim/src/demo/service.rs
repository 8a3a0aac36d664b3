//! The demo's service: the real hydrator with a real NBD source, talking to the filter
//! only through the driver link, as the Windows service would through
//! `DeviceIoControl`.
//!
//! One task owns the hydrator and performs its outputs; everything that waits (fetches,
//! hydrates, bitmap queries, status queries, the pended `GET_MISSING`s) runs as its own
//! task and reports back on a channel, so the hydrator is never blocked by one slow
//! answer. Progress goes to an indicatif bar (hidden when stderr is not a terminal) and
//! to the status file `rehydrate status` reads.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rehydrate_driver::abi::{Attach, ControlCommand, FetchFailed, MissingRange, StatusCounters};
use rehydrate_driver::engine::BatchId;
use rehydrate_driver::{Geometry, Status};
use rehydrate_service::hydrator::{
    FetchId, Hydrator, HydratorConfig, Input, Missing, Output, Progress,
};
use rehydrate_service::link::{BitmapWords, ChannelLink, DriverLink, LinkError};
use rehydrate_service::source::{fetch, Fetched, NbdSource, SourceError};
use rehydrate_service::status::{unix_ms_now, Phase, StatusFile, StatusSnapshot};
use tokio::sync::{mpsc, oneshot};

use super::DemoError;

/// `GET_MISSING` requests kept pended at the driver.
const GET_MISSING_PENDED: usize = 4;
/// How often the hydrator is ticked when nothing else happens.
const TICK: Duration = Duration::from_millis(20);
/// How often the driver's counters are asked for (the bar and the status file).
const REPORT: Duration = Duration::from_millis(250);
/// How often the status file is rewritten.
const STATUS_WRITE: Duration = Duration::from_millis(500);

/// What the service needs to know.
pub struct ServiceSetup {
    /// The volume.
    pub geometry: Geometry,
    /// The restore it attaches to.
    pub attach: Attach,
    /// The hydrator's settings.
    pub hydrator: HydratorConfig,
    /// Where `rehydrate status` looks, if it could be prepared.
    pub status: Option<StatusFile>,
    /// The source's URL, for the status file.
    pub source_url: String,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress_bar: bool,
}

/// What the service did.
#[derive(Clone, Debug)]
pub struct ServiceReport {
    /// The hydrator's counters at the end.
    pub progress: Progress,
    /// The driver's counters last seen.
    pub counters: Option<StatusCounters>,
}

/// Something a task finished.
enum Event {
    Missing(Vec<MissingRange>),
    Fetched(FetchId, Result<Fetched, SourceError>),
    Hydrated(BatchId, Result<Status, LinkError>),
    Page(Result<BitmapWords, LinkError>),
    Reported(Result<(), LinkError>),
    Counters(Result<StatusCounters, LinkError>),
    LinkFailed(LinkError),
}

/// Runs the service until `stop` fires (the machine is done; `true` when it saw every
/// region restored) or it fails.
pub async fn run(
    link: ChannelLink,
    source: Arc<NbdSource>,
    setup: ServiceSetup,
    stop: oneshot::Receiver<bool>,
) -> Result<ServiceReport, DemoError> {
    let hydrator = Hydrator::new(setup.geometry, setup.hydrator)?;
    link.attach(setup.attach).await?;
    link.control(ControlCommand::Start).await?;
    tracing::info!("demo service: attached and started");
    let (tx, rx) = mpsc::unbounded_channel();
    let waiters: Vec<_> = (0..GET_MISSING_PENDED)
        .map(|_| tokio::spawn(get_missing_loop(link.clone(), tx.clone())))
        .collect();
    let bar = progress_bar(setup.geometry.volume_size_bytes(), setup.progress_bar);
    let mut shell = Shell {
        geometry: setup.geometry,
        hydrator,
        link,
        source,
        tx,
        payloads: HashMap::new(),
        out: Vec::new(),
        started: Instant::now(),
        counters: None,
        failure: None,
        status: setup.status,
        snapshot: StatusSnapshot::starting(
            setup.source_url,
            "simulated volume (rehydrate-sim demo)",
        ),
        status_written: None,
        bar,
    };
    let result = shell.run(rx, stop).await;
    // Dropping the pended GET_MISSINGs cancels them: their ranges stay with the driver.
    for w in &waiters {
        w.abort();
    }
    shell.finish(&result);
    result.map(|_| ServiceReport {
        progress: shell.hydrator.progress(),
        counters: shell.counters,
    })
}

/// Keeps one `GET_MISSING` pended at a time until the driver detaches.
async fn get_missing_loop(link: ChannelLink, tx: mpsc::UnboundedSender<Event>) {
    loop {
        let event = match link.get_missing().await {
            Ok(ranges) => Event::Missing(ranges),
            Err(e) if e.is_detached() || matches!(e, LinkError::Closed { .. }) => return,
            Err(e) => Event::LinkFailed(e),
        };
        let failed = matches!(event, Event::LinkFailed(_));
        if tx.send(event).is_err() || failed {
            return;
        }
    }
}

struct Shell {
    geometry: Geometry,
    hydrator: Hydrator,
    link: ChannelLink,
    source: Arc<NbdSource>,
    tx: mpsc::UnboundedSender<Event>,
    /// Data of completed fetches, shared with the hydrates that carry it.
    payloads: HashMap<FetchId, Arc<Vec<u8>>>,
    out: Vec<Output>,
    started: Instant,
    counters: Option<StatusCounters>,
    failure: Option<DemoError>,
    status: Option<StatusFile>,
    snapshot: StatusSnapshot,
    status_written: Option<Instant>,
    bar: ProgressBar,
}

impl Shell {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        mut stop: oneshot::Receiver<bool>,
    ) -> Result<bool, DemoError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report = tokio::time::interval(REPORT);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(e) = self.failure.take() {
                return Err(e);
            }
            tokio::select! {
                restored = &mut stop => return Ok(restored.unwrap_or(false)),
                event = rx.recv() => {
                    // The shell holds a sender, so the channel never closes under it.
                    if let Some(event) = event {
                        self.on_event(event);
                    }
                }
                _ = tick.tick() => {
                    let now_ns = self.now_ns();
                    self.feed(Input::Tick { now_ns });
                }
                _ = report.tick() => self.report(),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Missing(ranges) => {
                for range in ranges {
                    match Missing::from_abi(&range, &self.geometry) {
                        Ok(m) => self.feed(m.input()),
                        Err(e) => {
                            self.failure.get_or_insert(DemoError::Service(format!(
                                "the driver asked for a range outside the volume ({range:?}): {e:?}"
                            )));
                        }
                    }
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
                tracing::warn!(%e, fetch, "demo service: fetch failed");
                let error = e.fetch_error();
                self.feed(Input::FetchFailed { fetch, error });
            }
            Event::Hydrated(batch, Ok(status)) => {
                if !status.is_success() {
                    tracing::warn!(batch, status = status.0, "demo service: hydrate refused");
                }
                self.feed(Input::HydrateDone {
                    batch,
                    ok: status.is_success(),
                });
            }
            Event::Hydrated(_, Err(e)) | Event::Page(Err(e)) | Event::LinkFailed(e) => {
                self.failure.get_or_insert(e.into());
            }
            Event::Page(Ok(words)) => match words.page() {
                Ok(page) => self.feed(Input::BitmapPage(page)),
                Err(e) => {
                    self.failure.get_or_insert(DemoError::Service(format!(
                        "QUERY_BITMAP answer refused: {e}"
                    )));
                }
            },
            Event::Reported(Err(e)) => {
                tracing::warn!(%e, "demo service: FETCH_FAILED not delivered")
            }
            Event::Reported(Ok(())) => {}
            Event::Counters(Ok(c)) => self.counters = Some(c),
            // After the machine detaches, status queries are refused: keep the last.
            Event::Counters(Err(e)) => tracing::debug!(%e, "demo service: GET_STATUS"),
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
                            self.failure.get_or_insert(DemoError::Service(format!(
                                "hydrate {batch} refers to fetch data that is gone"
                            )));
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
                tracing::warn!(offset, len, ?reason, "demo service: giving up on a range");
                let failed = FetchFailed {
                    offset,
                    len,
                    reason,
                };
                tokio::spawn(async move {
                    let _ = tx.send(Event::Reported(link.fetch_failed(failed).await));
                });
            }
            Output::QueryBitmap(query) => {
                tokio::spawn(async move {
                    let _ = tx.send(Event::Page(link.query_bitmap(query).await));
                });
            }
        }
    }

    /// Asks the driver for its counters; updates the bar and the status file.
    fn report(&mut self) {
        let (tx, link) = (self.tx.clone(), self.link.clone());
        tokio::spawn(async move {
            let _ = tx.send(Event::Counters(link.get_status().await));
        });
        self.fill_snapshot();
        let s = &self.snapshot;
        self.bar.set_position(s.bytes_restored);
        self.bar.set_message(format!(
            "misses {} held {}",
            s.misses_served, s.held_requests
        ));
        if self
            .status_written
            .is_none_or(|at| at.elapsed() >= STATUS_WRITE)
        {
            self.write_status();
        }
    }

    fn restored_bytes(&self) -> u64 {
        let region = u64::from(self.geometry.region_size_bytes());
        let total = self.geometry.volume_size_bytes();
        let from_driver = self.counters.map_or(0, |c| c.regions_restored * region);
        from_driver
            .max(self.hydrator.progress().restored_bytes)
            .min(total)
    }

    fn fill_snapshot(&mut self) {
        let p = self.hydrator.progress();
        let restored = self.restored_bytes();
        let s = &mut self.snapshot;
        s.updated_at_unix_ms = unix_ms_now();
        s.regions_total = self.geometry.region_count();
        s.regions_restored = self
            .counters
            .map_or(0, |c| c.regions_restored)
            .min(s.regions_total);
        s.bytes_total = self.geometry.volume_size_bytes();
        s.bytes_restored = restored;
        s.bytes_fetched = p.fetched_bytes;
        s.bytes_zero = p.zero_bytes;
        s.held_requests = self.counters.map_or(0, |c| c.held_requests);
        s.misses_served = p.misses_served;
        s.fetch_failures = p.failures;
        s.retries = p.retries;
        s.rate_bytes_per_sec = p.rate_bytes_per_sec;
        s.eta_secs = p.eta_secs;
    }

    fn write_status(&mut self) {
        if let Some(file) = &self.status {
            if let Err(e) = file.write(&self.snapshot) {
                // A convenience for `rehydrate status`; never a reason to stop.
                tracing::warn!(%e, "demo service: status file not written");
                self.status = None;
            }
        }
        self.status_written = Some(Instant::now());
    }

    /// The last snapshot, and the bar goes away.
    fn finish(&mut self, result: &Result<bool, DemoError>) {
        self.fill_snapshot();
        let s = &mut self.snapshot;
        match result {
            Ok(true) => {
                // The machine saw every region restored (the driver is gone by now, so
                // its counters cannot say so any more).
                s.phase = Phase::Complete;
                s.regions_restored = s.regions_total;
                s.bytes_restored = s.bytes_total;
                s.eta_secs = Some(0);
                s.held_requests = 0;
            }
            Ok(false) => {
                s.phase = Phase::Failed;
                s.error = Some("the demo stopped before the volume was restored".into());
            }
            Err(e) => {
                s.phase = Phase::Failed;
                s.error = Some(e.to_string());
            }
        }
        self.bar.set_position(s.bytes_restored);
        self.write_status();
        self.bar.finish_and_clear();
    }
}

fn progress_bar(total: u64, wanted: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !wanted || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "restore {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}
