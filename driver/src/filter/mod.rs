//! The upper filter's callbacks, written against [`Framework`] and driving the engine.
//!
//! The KMDF shell calls these from its queue callbacks, completion routines, timer and
//! work item; the simulator calls them from its simulated WDF objects. Everything the
//! filter decides is here or in the engine, so CI runs the code the kernel runs.
//!
//! # Requests it sees
//! * Default queue ([`Filter::on_io`]): reads, writes, flushes, device controls. Once
//!   every region is durably restored the path is one branch and a send-and-forget.
//!   Before that, reads/writes/flushes go through the engine; the trim IOCTL with one
//!   range becomes an engine discard; a multi-range trim while restoring completes with
//!   success without going down (a trim is a hint; dropping one is always correct and
//!   avoids splitting one request into many). Other data-set-management actions
//!   (offloaded data transfer: an offload read of a missing region would hand out a
//!   token for the empty disk) fail with `NOT_SUPPORTED` until the volume is a
//!   pass-through, so callers fall back to normal reads and writes. Other IOCTLs go
//!   down unchanged.
//! * A request the engine holds is marked cancelable; before the filter completes or
//!   sends it, it is unmarked. If the file system cancelled it meanwhile, unmarking
//!   fails and the cancel callback ([`Filter::on_cancel`]) completes it: KMDF's rule,
//!   since a request completed while still cancelable can be completed twice.
//! * A protected volume ([`Filter::enable_capture`], `capture.rs`): every request takes
//!   the engine's path even once restored; writes, trims and flushes feed the write
//!   capture from their real completions.
//! * Control device ([`Filter::on_control`]): the service's ABI requests. `GET_MISSING`
//!   is the inverted call: the service keeps several pended; the filter parks them in a
//!   manual queue and completes one with a batch of wanted ranges when it has some.
//!   A `HYDRATE` request is kept until every write made from its payload completed.
//!
//! # Bounds
//! Requests the filter owns: one slot each, in a slab that grows only through
//! `try_reserve` (no room: the request completes with `INSUFFICIENT_RESOURCES`); the
//! engine bounds how many it holds. Hydrate requests being written: likewise (the engine
//! bounds the batches). Wanted ranges waiting for a parked request: at most
//! `missing_queue_max`, adjacent ones merged (and merged too when memory is short). Held reads with many scattered missing regions, or a service that is
//! slow to pend requests, can want more: then the newest range is widened to also cover
//! the new one. Nothing wanted is lost and memory stays bounded; the price, only under
//! that pressure, is that the service may fetch regions between the two that are
//! already restored, whose data the engine then drops (rule 4).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::abi::{
    Attach, BitmapPage, BitmapQuery, Control, ControlCommand, DriverState, FetchFailed, Hydrate,
    HydrateFlags, Ioctl, MapSelector, MissingBatch, MissingFlags, MissingRange, StatusCounters,
    BITMAP_PAGE_WORDS_MAX, MISSING_BATCH_MAX,
};
use crate::commit::commit_and_answer;
use crate::dsm::{self, Dsm, IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES};
use crate::engine::{Action, BatchId, Engine, EngineConfig, Event, LowerId, RequestId};
use crate::framework::{Framework, RequestParameters, WriteSource};
use crate::meta::{MetaStore, Metadata};
use crate::mutants::{self, Mutant};
use crate::region::RegionMap;
use crate::status::Status;
use owned::{Hydrates, Owned, Requests};
pub use refused::Refused;
pub use volume::Volume;

/// Most wanted ranges queued for the service, by default.
pub const MISSING_QUEUE_MAX: usize = 4096;

/// Tunables of the filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// The engine's.
    pub engine: EngineConfig,
    /// Timer period: hold deadlines and background commits are checked this often.
    pub tick_ns: u64,
    /// Most wanted ranges queued for the service (see the module comment).
    pub missing_queue_max: usize,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            engine: EngineConfig::default(),
            tick_ns: 100_000_000,
            missing_queue_max: MISSING_QUEUE_MAX,
        }
    }
}

/// Counters the engine does not keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterCounters {
    /// Requests sent down on the pass-through path.
    pub passthrough_requests: u64,
    /// Multi-range trims dropped while restoring.
    pub trims_dropped: u64,
    /// Service requests refused for a bad buffer.
    pub bad_service_requests: u64,
}

/// The filter of one volume.
pub struct Filter<F: Framework> {
    engine: Engine,
    meta: Metadata,
    identity: Attach,
    config: FilterConfig,
    /// The fast path: set once every region is durably restored, never cleared.
    passthrough: bool,
    state: DriverState,
    requests: Requests<F::Request>,
    hydrates: Hydrates<F::Request>,
    next_batch: BatchId,
    missing: VecDeque<MissingRange>,
    events: VecDeque<Event>,
    actions: Vec<Action>,
    counters: FilterCounters,
    timer_running: bool,
    /// Write capture, when the volume is protected (`capture.rs`).
    capture: Option<CaptureTap>,
}

impl<F: Framework> Filter<F> {
    /// The filter over a volume whose durable marks `meta` loaded into `map`.
    /// `identity` is what the service must attach with.
    pub fn new(
        map: Arc<RegionMap>,
        meta: Metadata,
        identity: Attach,
        config: FilterConfig,
    ) -> Filter<F> {
        debug_assert_eq!(
            map.geometry().volume_size_bytes(),
            identity.volume_size_bytes
        );
        Filter {
            engine: Engine::new(map, config.engine),
            meta,
            identity,
            config,
            passthrough: false,
            state: DriverState::Detached,
            requests: Requests::new(),
            hydrates: Hydrates::new(),
            next_batch: 1,
            missing: VecDeque::new(),
            events: VecDeque::new(),
            actions: Vec::new(),
            counters: FilterCounters::default(),
            timer_running: false,
            capture: None,
        }
    }

    /// True once the filter forwards everything untouched.
    #[inline]
    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// The engine (for tests and status).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Counters the filter keeps itself.
    pub fn counters(&self) -> FilterCounters {
        self.counters
    }

    /// Whether the service is attached and running.
    pub fn state(&self) -> DriverState {
        self.state
    }

    /// Byte ranges wanted from the service and not handed to it yet (for checkers that
    /// every region the engine asked for reaches the service).
    pub fn missing_ranges(&self) -> impl Iterator<Item = core::ops::Range<u64>> + '_ {
        self.missing.iter().map(|m| m.offset..m.offset + m.len)
    }

    /// What `GET_STATUS` answers.
    pub fn status_counters(&self) -> StatusCounters {
        let c = self.engine.counters();
        let map = self.engine.map();
        StatusCounters {
            state: if self.passthrough {
                DriverState::AllRestored
            } else {
                self.state
            },
            regions_total: map.region_count(),
            regions_restored: map.restored_count(),
            held_requests: self.engine.held_count() as u64,
            misses: c.misses_regions,
            bytes_hydrated: c.hydrated_bytes,
            hydrate_dropped_stale: c.stale_regions_dropped,
            fetch_failures: c.fetch_failures,
            requests_failed: c.requests_failed,
            refusal: None,
            mode: self.identity.mode,
            overlay_regions: 0,
        }
    }

    // ----- the default queue ---------------------------------------------------------

    /// A request on the volume's default queue: read, write, flush, device control.
    pub fn on_io(&mut self, fw: &mut F, request: F::Request) {
        // A protected volume takes the engine's path even then: its writes are captured
        // and nothing overtakes a write the capture holds.
        if self.passthrough && self.capture.is_none() {
            // Rule 6: one branch, then down.
            self.counters.passthrough_requests += 1;
            if let Err(status) = fw.send_and_forget(request) {
                fw.complete(request, status, 0);
            }
            return;
        }
        self.ensure_timer(fw);
        let params = fw.parameters(request);
        let event = match params {
            RequestParameters::Read { offset, len } => {
                let Some(id) = self.own(fw, request, len) else {
                    return;
                };
                self.note_capture(id, Noted::Read { offset, len });
                Event::Read { id, offset, len }
            }
            RequestParameters::Write { offset, len, fua } => {
                let Some(id) = self.own(fw, request, len) else {
                    return;
                };
                self.note_capture(
                    id,
                    Noted::Write {
                        offset,
                        len,
                        zero: false,
                    },
                );
                Event::Write {
                    id,
                    offset,
                    len,
                    fua,
                }
            }
            RequestParameters::Flush => {
                let Some(id) = self.own(fw, request, 0) else {
                    return;
                };
                self.note_capture(id, Noted::Flush);
                Event::Flush { id }
            }
            RequestParameters::DeviceControl { ioctl, .. }
                if ioctl == IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES =>
            {
                match self.trim_event(fw, request) {
                    Some(event) => event,
                    None => return,
                }
            }
            RequestParameters::DeviceControl { .. } | RequestParameters::Other => {
                if let Err(status) = fw.send_and_forget(request) {
                    fw.complete(request, status, 0);
                }
                return;
            }
        };
        self.run(fw, event);
    }

    /// The engine event for a trim, or `None` when the request was dealt with here.
    fn trim_event(&mut self, fw: &mut F, request: F::Request) -> Option<Event> {
        let decoded = fw
            .input_buffer(request, 0)
            .map(|bytes| dsm::decode(bytes).map(|d| (d, d.range(0), d.range_count())));
        match decoded {
            Ok(Ok((Dsm::Trim(_), Some((offset, len)), 1))) => {
                let id = self.own(fw, request, 0)?;
                self.note_capture(
                    id,
                    Noted::Write {
                        offset,
                        len,
                        zero: true,
                    },
                );
                Some(Event::Discard { id, offset, len })
            }
            Ok(Ok((Dsm::Other(_), ..))) => {
                // Not a trim: an offloaded transfer would see the empty disk.
                fw.complete(request, Status::NOT_SUPPORTED, 0);
                None
            }
            Ok(Ok(_)) => {
                self.counters.trims_dropped += 1;
                fw.complete(request, Status::SUCCESS, 0);
                None
            }
            Ok(Err(_)) => {
                fw.complete(request, Status::INVALID_PARAMETER, 0);
                None
            }
            Err(status) => {
                fw.complete(request, status, 0);
                None
            }
        }
    }

    /// Remembers `request` for the engine; `None` (and the request is refused with
    /// `INSUFFICIENT_RESOURCES`) when there is no room.
    fn own(&mut self, fw: &mut F, request: F::Request, len: u64) -> Option<RequestId> {
        let owned = Owned::new(request, usize::try_from(len).unwrap_or(0));
        let id = self.requests.insert(owned);
        if id.is_none() {
            fw.complete(request, Status::INSUFFICIENT_RESOURCES, 0);
        }
        id
    }

    fn ensure_timer(&mut self, fw: &mut F) {
        if !self.timer_running {
            self.timer_running = true;
            fw.start_timer(self.config.tick_ns);
        }
    }

    // ----- completions, timer, work item ---------------------------------------------

    /// A request the filter sent down completed.
    pub fn on_lower_complete(&mut self, fw: &mut F, lower: LowerId, status: Status) {
        self.capture_completed(fw, lower, status);
        self.run(fw, Event::LowerCompleted { lower, status });
        self.capture_retry(fw);
    }

    /// The volume is being removed (`EvtDeviceSelfManagedIoSuspend` / surprise removal):
    /// held requests fail with `DEVICE_NOT_READY`, and so do the service's parked
    /// requests, so nothing the filter owns outlives the device.
    pub fn on_remove(&mut self, fw: &mut F) {
        self.run(fw, Event::Remove);
        self.state = DriverState::Detached;
        self.missing.clear();
        while let Some(parked) = fw.take_parked() {
            fw.complete(parked, Status::DEVICE_NOT_READY, 0);
        }
    }

    /// `EvtRequestCancel` of a request the filter marked cancelable: the file system
    /// cancelled it. A held request completes with `CANCELLED`; one whose completion the
    /// filter had to leave to this callback completes now.
    pub fn on_cancel(&mut self, fw: &mut F, request: F::Request) {
        // Bounded by the requests the filter owns; cancellation is rare.
        let Some(id) = self.requests.find(request) else {
            debug_assert!(
                false,
                "cancel callback for a request the filter does not own"
            );
            return;
        };
        let Some(owned) = self.requests.get_mut(id) else {
            return;
        };
        owned.cancelable = false;
        if owned.cancelling {
            owned.cancelling = false;
            if owned.done {
                self.requests.remove(id);
                fw.complete(request, Status::CANCELLED, 0);
            }
            return;
        }
        if self.capture_cancel(fw, id) {
            return;
        }
        self.run(fw, Event::Cancel { id });
    }

    /// True when request `id` may be completed or sent now: it is not cancelable (or
    /// was unmarked). False when cancellation won: the cancel callback finishes it.
    fn release_cancelable(&mut self, fw: &mut F, id: RequestId, completing: bool) -> bool {
        let Some(owned) = self.requests.get_mut(id) else {
            return true;
        };
        if owned.cancelling {
            return false;
        }
        if !owned.cancelable || completing && mutants::active(Mutant::CompleteWhileCancelable) {
            return true;
        }
        owned.cancelable = false;
        match fw.unmark_cancelable(owned.request) {
            Ok(()) => true,
            Err(_) => {
                owned.cancelling = true;
                false
            }
        }
    }

    /// The periodic timer fired.
    pub fn on_timer(&mut self, fw: &mut F) {
        self.timer_running = false;
        let now_ns = fw.now_ns();
        self.run(fw, Event::Tick { now_ns });
        if !self.passthrough {
            self.ensure_timer(fw);
        }
    }

    /// The commit work item runs (PASSIVE_LEVEL): commit through `store`.
    pub fn on_commit_work<S: MetaStore + ?Sized>(
        &mut self,
        fw: &mut F,
        commit: u64,
        store: &mut S,
    ) {
        let mut out = core::mem::take(&mut self.actions);
        out.clear();
        // A failed commit is reported to the engine, which fails the flushes waiting on
        // it and retries on a later tick.
        let _ = commit_and_answer(&mut self.engine, &mut self.meta, store, commit, &mut out);
        for action in out.drain(..) {
            self.perform(fw, action);
        }
        self.actions = out;
        self.drain(fw);
    }

    // ----- the control device --------------------------------------------------------

    /// A request from the service on the control device.
    pub fn on_control(&mut self, fw: &mut F, request: F::Request) {
        let RequestParameters::DeviceControl { ioctl, .. } = fw.parameters(request) else {
            fw.complete(request, Status::INVALID_DEVICE_REQUEST, 0);
            return;
        };
        let Some(ioctl) = Ioctl::from_code(ioctl) else {
            fw.complete(request, Status::INVALID_DEVICE_REQUEST, 0);
            return;
        };
        match ioctl {
            Ioctl::Attach => self.on_attach(fw, request),
            Ioctl::GetMissing => {
                if self.state == DriverState::Detached {
                    fw.complete(request, Status::DEVICE_NOT_READY, 0);
                } else if let Err(status) = fw.park(request) {
                    fw.complete(request, status, 0);
                } else {
                    self.drain(fw);
                }
            }
            Ioctl::Hydrate => self.on_hydrate(fw, request),
            Ioctl::FetchFailed => {
                let decoded = fw
                    .input_buffer(request, 0)
                    .map(|b| FetchFailed::decode(b).map_err(|e| e.status()));
                match decoded {
                    Ok(Ok(f)) => {
                        fw.complete(request, Status::SUCCESS, 0);
                        self.run(
                            fw,
                            Event::FetchFailed {
                                offset: f.offset,
                                len: f.len,
                                reason: f.reason,
                            },
                        );
                    }
                    Ok(Err(status)) | Err(status) => self.refuse(fw, request, status),
                }
            }
            Ioctl::QueryBitmap => self.on_query_bitmap(fw, request),
            Ioctl::GetStatus => answer_counters(fw, request, &self.status_counters()),
            Ioctl::Control => {
                let decoded = fw
                    .input_buffer(request, 0)
                    .map(|b| Control::decode(b).map_err(|e| e.status()));
                match decoded {
                    Ok(Ok(c)) if c.command.is_cutover() => {
                        // The cutover belongs to the overlay mode, which needs a second
                        // lower target this shell does not have.
                        self.refuse(fw, request, Status::NOT_SUPPORTED);
                    }
                    Ok(Ok(c)) => {
                        fw.complete(request, Status::SUCCESS, 0);
                        self.on_command(fw, c.command);
                    }
                    Ok(Err(status)) | Err(status) => self.refuse(fw, request, status),
                }
            }
        }
    }

    fn refuse(&mut self, fw: &mut F, request: F::Request, status: Status) {
        self.counters.bad_service_requests += 1;
        fw.complete(request, status, 0);
    }

    fn on_attach(&mut self, fw: &mut F, request: F::Request) {
        let checked = fw.input_buffer(request, 0).map(|b| {
            Attach::decode(b)
                .and_then(|a| a.check_matches(&self.identity))
                .map_err(|e| e.status())
        });
        match checked {
            Ok(Ok(())) => {
                fw.complete(request, Status::SUCCESS, 0);
                if self.state == DriverState::Detached {
                    self.state = DriverState::Attached;
                }
                // Whatever a previous service was asked is asked again.
                self.missing.clear();
                self.run(fw, Event::ServiceAttached);
            }
            Ok(Err(status)) | Err(status) => self.refuse(fw, request, status),
        }
    }

    fn on_command(&mut self, fw: &mut F, command: ControlCommand) {
        match command {
            ControlCommand::Start | ControlCommand::Resume => {
                if self.state != DriverState::Detached {
                    self.state = DriverState::Running;
                    self.drain(fw);
                }
            }
            ControlCommand::Pause => {
                if self.state == DriverState::Running {
                    self.state = DriverState::Paused;
                }
            }
            ControlCommand::Detach => {
                self.state = DriverState::Detached;
                // Pended GET_MISSING requests go back to the leaving service.
                while let Some(parked) = fw.take_parked() {
                    fw.complete(parked, Status::DEVICE_NOT_READY, 0);
                }
            }
            ControlCommand::MergeOnline | ControlCommand::Cutover => {
                debug_assert!(false, "cutover commands are answered before");
            }
        }
    }

    fn on_hydrate(&mut self, fw: &mut F, request: F::Request) {
        let decoded = fw.input_buffer(request, 0).map(|b| {
            Hydrate::decode(b)
                .map(|h| (h.offset, h.len, h.flags.contains(HydrateFlags::ZERO)))
                .map_err(|e| e.status())
        });
        match decoded {
            Ok(Ok((offset, len, zero))) => {
                let batch = self.next_batch;
                self.next_batch += 1;
                if !self.hydrates.insert(batch, request) {
                    fw.complete(request, Status::INSUFFICIENT_RESOURCES, 0);
                    return;
                }
                self.run(
                    fw,
                    Event::Hydrate {
                        batch,
                        offset,
                        len,
                        zero,
                    },
                );
            }
            Ok(Err(status)) | Err(status) => self.refuse(fw, request, status),
        }
    }

    fn on_query_bitmap(&mut self, fw: &mut F, request: F::Request) {
        let query = fw
            .input_buffer(request, 0)
            .map(|b| BitmapQuery::decode(b).map_err(|e| e.status()));
        let query = match query {
            Ok(Ok(q)) if q.map == MapSelector::Restored => q,
            // An in-place restore has no overlay map.
            Ok(Ok(_)) => return self.refuse(fw, request, Status::INVALID_PARAMETER),
            Ok(Err(status)) | Err(status) => return self.refuse(fw, request, status),
        };
        let map = self.engine.map().clone();
        let first = usize::try_from(query.first_word).unwrap_or(usize::MAX);
        let count = (query.word_count.min(BITMAP_PAGE_WORDS_MAX) as usize)
            .min(map.word_count().saturating_sub(first));
        let words: Vec<u64> = (first..first + count).map(|w| map.word(w)).collect();
        let page = BitmapPage::new(
            query.first_word,
            map.region_count(),
            map.restored_count(),
            &words,
        );
        match page {
            Ok(page) => match fw.output_buffer(request, page.encoded_len()) {
                Ok(out) => match page.encode(out) {
                    Ok(n) => fw.complete(request, Status::SUCCESS, n),
                    Err(e) => fw.complete(request, e.status(), 0),
                },
                Err(status) => fw.complete(request, status, 0),
            },
            Err(e) => self.refuse(fw, request, e.status()),
        }
    }

    /// Completes parked `GET_MISSING` requests with queued ranges, a batch each.
    fn deliver_missing(&mut self, fw: &mut F) {
        if self.state != DriverState::Running {
            return;
        }
        while !self.missing.is_empty() {
            let Some(parked) = fw.take_parked() else {
                return;
            };
            let n = self.missing.len().min(MISSING_BATCH_MAX);
            let batch = &self.missing.make_contiguous()[..n];
            let encoded = MissingBatch::new(batch).map(|b| {
                let len = b.encoded_len();
                (b, len)
            });
            let (batch_msg, len) = match encoded {
                Ok(x) => x,
                Err(e) => {
                    // Never happens: ranges come from the engine's checked geometry.
                    debug_assert!(false, "bad missing batch: {e}");
                    fw.complete(parked, e.status(), 0);
                    self.missing.drain(..n);
                    continue;
                }
            };
            match fw.output_buffer(parked, len) {
                Ok(out) => match batch_msg.encode(out) {
                    Ok(written) => {
                        fw.complete(parked, Status::SUCCESS, written);
                        self.missing.drain(..n);
                    }
                    Err(e) => fw.complete(parked, e.status(), 0),
                },
                // Too small a buffer: that request is refused; the ranges wait for the next.
                Err(status) => fw.complete(parked, status, 0),
            }
        }
    }

    // ----- running the engine --------------------------------------------------------

    fn run(&mut self, fw: &mut F, event: Event) {
        self.events.push_back(event);
        self.drain(fw);
    }

    /// Feeds queued events to the engine and performs its actions; an action that fails
    /// at once (a send refused) becomes a completion event, so the loop is bounded by the
    /// actions one event can cause.
    fn drain(&mut self, fw: &mut F) {
        while let Some(event) = self.events.pop_front() {
            let mut out = core::mem::take(&mut self.actions);
            out.clear();
            self.engine.handle(event, &mut out);
            for action in out.drain(..) {
                self.perform(fw, action);
            }
            self.actions = out;
        }
        self.deliver_missing(fw);
    }

    fn perform(&mut self, fw: &mut F, action: Action) {
        match action {
            Action::Forward { id, lower } => {
                if !self.release_cancelable(fw, id, false) {
                    // Cancelled while held: it does not go down.
                    self.events.push_back(Event::LowerCompleted {
                        lower,
                        status: Status::CANCELLED,
                    });
                    return;
                }
                let Some(owned) = self.requests.get(id) else {
                    debug_assert!(false, "forward of unknown request {id}");
                    return;
                };
                let request = owned.request;
                let now_ns = fw.now_ns();
                if let Some(tap) = self.capture.as_mut() {
                    if !tap.on_forward(id, lower, now_ns) {
                        // Held for the capture buffer; sent by `capture_retry`.
                        self.capture_hold(fw, id, lower);
                        return;
                    }
                }
                if let Err(status) = fw.send_to_lower(request, lower) {
                    self.events
                        .push_back(Event::LowerCompleted { lower, status });
                }
            }
            Action::Hold { id } => {
                // The request stays owned by the filter until the engine says otherwise,
                // and the file system may cancel it meanwhile.
                if let Some(owned) = self.requests.get_mut(id) {
                    match fw.mark_cancelable(owned.request) {
                        Ok(()) => owned.cancelable = true,
                        // Cancelled before it could be marked: the engine lets it go.
                        Err(_) => self.events.push_back(Event::Cancel { id }),
                    }
                }
            }
            Action::Fetch { regions, on_demand } => {
                let bytes = self.engine.geometry().regions_byte_range(regions);
                let flags = if on_demand {
                    MissingFlags::ON_DEMAND
                } else {
                    MissingFlags::BACKGROUND
                };
                let range = MissingRange {
                    offset: bytes.start,
                    len: bytes.end - bytes.start,
                    flags,
                };
                let full = self.missing.len() >= self.config.missing_queue_max
                    || self.missing.try_reserve(1).is_err();
                match self.missing.back_mut() {
                    Some(last) if full || last.offset + last.len == range.offset => {
                        let start = last.offset.min(range.offset);
                        let end = (last.offset + last.len).max(range.offset + range.len);
                        last.offset = start;
                        last.len = end - start;
                        last.flags |= range.flags;
                    }
                    _ => self.missing.push_back(range),
                }
            }
            Action::WriteHydrate {
                lower,
                batch,
                offset,
                len,
                payload_offset,
                zero,
            } => {
                let source = if zero {
                    WriteSource::Zeros
                } else {
                    match self.hydrates.get(batch) {
                        Some(request) => WriteSource::Payload {
                            request,
                            payload_offset,
                        },
                        None => {
                            debug_assert!(false, "write from unknown hydrate {batch}");
                            self.events.push_back(Event::LowerCompleted {
                                lower,
                                status: Status::INVALID_PARAMETER,
                            });
                            return;
                        }
                    }
                };
                if let Err(status) = fw.write_lower(lower, offset, len, source) {
                    self.events
                        .push_back(Event::LowerCompleted { lower, status });
                }
            }
            Action::FlushDown { lower } => {
                if let Err(status) = fw.flush_lower(lower) {
                    self.events
                        .push_back(Event::LowerCompleted { lower, status });
                }
            }
            Action::CommitMetadata { commit } => fw.queue_commit_work(commit),
            Action::Complete { id, status } => {
                if let Some(tap) = self.capture.as_mut() {
                    if !tap.on_complete(id, status) {
                        // Answered once its record is durable (sync mode).
                        self.capture_park(fw, id);
                        return;
                    }
                }
                if !self.release_cancelable(fw, id, true) {
                    if let Some(owned) = self.requests.get_mut(id) {
                        owned.done = true;
                    }
                    return;
                }
                if let Some(owned) = self.requests.remove(id) {
                    let information = if status.is_success() {
                        owned.information
                    } else {
                        0
                    };
                    fw.complete(owned.request, status, information);
                } else {
                    debug_assert!(false, "completion of unknown request {id}");
                }
            }
            Action::HydrateDone { batch, status } => {
                if let Some(request) = self.hydrates.remove(batch) {
                    fw.complete(request, status, 0);
                }
            }
            Action::Piece { .. }
            | Action::Copy { .. }
            | Action::FlushOverlay { .. }
            | Action::DestinationRestored
            | Action::Merged
            | Action::MergeFailed { .. } => {
                debug_assert!(false, "the in-place engine emitted {action:?}");
            }
            Action::AllRestored => {
                debug_assert!(self.engine.is_passthrough());
                self.passthrough = true;
                self.state = DriverState::AllRestored;
            }
        }
    }
}

/// Completes a `GET_STATUS` request with `counters`.
fn answer_counters<F: Framework>(fw: &mut F, request: F::Request, counters: &StatusCounters) {
    match fw.output_buffer(request, counters.encoded_len()) {
        Ok(out) => match counters.encode(out) {
            Ok(n) => fw.complete(request, Status::SUCCESS, n),
            Err(e) => fw.complete(request, e.status(), 0),
        },
        Err(status) => fw.complete(request, status, 0),
    }
}

mod capture;
#[cfg(test)]
mod fake_fw;
mod owned;
mod refused;
pub mod start;
mod volume;

pub use capture::{CaptureTap, Noted, OFFERED_MAX};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod volume_tests;
