//! The simulator's end of the driver link, and the demo's wall clock.
//!
//! The real service (a tokio task) talks to the filter through
//! [`rehydrate_service::link::ChannelLink`]; each call arrives here as a
//! [`LinkRequest`] and becomes what `DeviceIoControl` would make of it: an
//! `IRP_MJ_DEVICE_CONTROL` IRP on the filter's control device, carrying the request's
//! encoded input and an output buffer of the size the service offered, sent with
//! `IoCallDriver` exactly as the simulated service (`crate::service`) sends its own.
//! When the IRP completes the request is completed with the IRP's status and the bytes
//! the filter wrote (its `Information`).
//!
//! Cancellation: a service that stops waiting for a pended `GET_MISSING` drops its
//! future; the next turn sees [`LinkRequest::is_cancelled`] and cancels the IRP
//! (`IoCancelIrp`), so the filter's queue gives it back without ranges and they stay
//! queued in the driver. If the filter completed it with ranges in the same instant,
//! the batch cannot be delivered; it is kept here and handed to the next `GET_MISSING`
//! before that one reaches the filter, so no range is ever lost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use rehydrate_driver::abi::{Control, ControlCommand, Ioctl};
use rehydrate_driver::filter::Filter;
use rehydrate_driver::Status;
use rehydrate_service::link::LinkRequest;

use crate::irp::{IrpId, Layer, Routine, IRP_MJ_DEVICE_CONTROL};
use crate::kernel::Kernel;
use crate::oracle::OpKind;
use crate::wdf::SimWdf;
use rehydrate_service::restore::timeline::Timeline;

/// Longest single sleep of the machine's thread: it also looks for cancelled requests
/// and a vanished service this often.
const WAIT_MAX: Duration = Duration::from_millis(5);
/// Most requests taken from the service per turn, so a burst cannot starve the machine.
const TAKE_PER_TURN: usize = 64;

/// What the demo measures on the machine's side.
#[derive(Clone, Debug, Default)]
pub struct DemoStats {
    /// Wall time from boot to the first read that completed successfully.
    pub first_read_ns: Option<u64>,
    /// Wall time from boot until every region was restored.
    pub restored_ns: Option<u64>,
    /// Workload reads served.
    pub reads: u64,
    /// Workload writes served.
    pub writes: u64,
    /// Workload flushes served.
    pub flushes: u64,
    /// Workload trims served.
    pub trims: u64,
    /// Workload requests that failed (only the deliberate out-of-range ones may).
    pub failed: u64,
    /// Per read the filter held for data: from held to completed.
    pub read_miss_latencies_ns: Vec<u64>,
    /// Writes the filter held (partial regions fetched first).
    pub held_writes: u64,
    /// Control requests the service made.
    pub link_requests: u64,
    /// `GET_MISSING` requests the service gave up on.
    pub cancelled: u64,
    /// Restored bytes over time and each on-demand read miss, for the picture the demo
    /// leaves in its kept directory.
    pub timeline: Timeline,
    /// Restored bytes at the last sample (a sample is taken only when they change).
    restored_sampled_bytes: Option<u64>,
}

struct Pending {
    /// `None` for the detach the machine sends itself at shutdown.
    request: Option<LinkRequest>,
    irp: IrpId,
    cancelled: bool,
}

/// The link server; see the module comment.
pub struct LinkServer {
    requests: Receiver<LinkRequest>,
    started: Instant,
    deadline: Duration,
    pending: BTreeMap<u32, Pending>,
    next_op: u32,
    /// `GET_MISSING` answers whose caller had gone; the next `GET_MISSING` gets them.
    orphans: VecDeque<Vec<u8>>,
    /// Every sender is gone: the service has stopped.
    gone: bool,
    /// Measurements.
    pub stats: DemoStats,
}

impl std::fmt::Debug for LinkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkServer")
            .field("pending", &self.pending.len())
            .field("orphans", &self.orphans.len())
            .field("gone", &self.gone)
            .finish_non_exhaustive()
    }
}

impl LinkServer {
    /// Serves `requests`; the clock starts now. A restore not done within `deadline`
    /// fails the run.
    pub fn new(requests: Receiver<LinkRequest>, deadline: Duration) -> LinkServer {
        LinkServer {
            requests,
            started: Instant::now(),
            deadline,
            pending: BTreeMap::new(),
            next_op: 1,
            orphans: VecDeque::new(),
            gone: false,
            stats: DemoStats::default(),
        }
    }

    /// Restarts the clock at zero (the machine powers on now).
    pub fn start_clock(&mut self) {
        self.started = Instant::now();
    }

    /// Wall nanoseconds since the machine powered on: the demo's simulated clock.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes the service's requests and sends them to the filter. With `wait_ns`, first
    /// sleeps until a request comes or that long has passed. Before the volume is
    /// mounted requests stay queued (the service's `ATTACH` waits for the volume).
    pub fn serve(
        &mut self,
        wdf: &mut SimWdf,
        filter: &mut Option<Filter<SimWdf>>,
        mounted: bool,
        wait_ns: Option<u64>,
    ) {
        let wait = wait_ns.map(|ns| Duration::from_nanos(ns).min(WAIT_MAX));
        if !mounted {
            if let Some(wait) = wait {
                std::thread::sleep(wait);
            }
            return;
        }
        self.reap_cancelled(&mut wdf.k);
        let mut first = match wait {
            Some(wait) => match self.requests.recv_timeout(wait) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.gone = true;
                    None
                }
            },
            None => None,
        };
        for _ in 0..TAKE_PER_TURN {
            let request = match first.take() {
                Some(r) => r,
                None => match self.requests.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.gone = true;
                        break;
                    }
                },
            };
            self.submit(wdf, filter, request);
        }
    }

    /// Why the run cannot go on, if it cannot: the service stopped while the volume
    /// still needs it, or the restore overran its deadline.
    pub fn stalled(&self, now_ns: u64, restoring: bool) -> Option<String> {
        if !restoring {
            return None;
        }
        if self.gone {
            return Some("the service stopped before the volume was restored".into());
        }
        if Duration::from_nanos(now_ns) > self.deadline {
            return Some(format!(
                "the volume was not restored within {}s",
                self.deadline.as_secs()
            ));
        }
        None
    }

    fn submit(
        &mut self,
        wdf: &mut SimWdf,
        filter: &mut Option<Filter<SimWdf>>,
        mut request: LinkRequest,
    ) {
        self.stats.link_requests += 1;
        if request.is_cancelled() {
            return;
        }
        if request.ioctl == Ioctl::GetMissing {
            if let Some(batch) = self.orphans.pop_front() {
                if !request.complete(Status::SUCCESS, batch.clone()) {
                    self.orphans.push_front(batch);
                }
                return;
            }
        }
        let input = std::mem::take(&mut request.input);
        let (ioctl, output_len) = (request.ioctl.code(), request.output_len);
        self.send(wdf, filter, ioctl, input, output_len, Some(request));
    }

    /// `IoAllocateIrp` + `IRP_MJ_DEVICE_CONTROL` + completion routine + `IoCallDriver`
    /// to the control device, as the simulated service does.
    fn send(
        &mut self,
        wdf: &mut SimWdf,
        filter: &mut Option<Filter<SimWdf>>,
        ioctl: u32,
        input: Vec<u8>,
        output_len: usize,
        request: Option<LinkRequest>,
    ) {
        let k = &mut wdf.k;
        let irp = k.alloc_irp(Layer::Service, Layer::Control.stack_size());
        let op = self.next_op;
        self.next_op = self.next_op.wrapping_add(1).max(1);
        if let Some(i) = k.irps.get_mut(irp) {
            i.input = input;
            i.output.clear();
            i.output.resize(output_len, 0);
        }
        if let Some(next) = k.next_loc(Layer::Service, irp) {
            next.major = IRP_MJ_DEVICE_CONTROL;
            next.ioctl = ioctl;
        }
        k.set_completion(Layer::Service, irp, Routine::Service { op });
        let pending = Pending {
            request,
            irp,
            cancelled: false,
        };
        debug_assert!(!self.pending.contains_key(&op));
        self.pending.insert(op, pending);
        crate::wdf::dispatch(wdf, filter, Layer::Service, irp, Layer::Control);
    }

    /// An IRP of ours came back: complete the service's request with it.
    pub fn on_done(&mut self, k: &mut Kernel, op: u32, irp: IrpId) {
        let pending = self.pending.remove(&op);
        let (status, output) = k.irps.get(irp).map_or_else(
            || (Status::IO_DEVICE_ERROR, Vec::new()),
            |i| {
                let n = i.information.min(i.output.len());
                (i.status, i.output[..n].to_vec())
            },
        );
        k.free_irp(Layer::Service, irp);
        let Some(request) = pending.and_then(|p| p.request) else {
            return;
        };
        let ranges = request.ioctl == Ioctl::GetMissing && status.is_success();
        let kept = ranges.then(|| output.clone());
        if !request.complete(status, output) {
            if let Some(batch) = kept.filter(|b| !b.is_empty()) {
                tracing::debug!(
                    bytes = batch.len(),
                    "demo: GET_MISSING answered after its caller left; kept for the next"
                );
                self.orphans.push_back(batch);
            }
        }
    }

    /// Cancels the IRPs of `GET_MISSING` requests the service stopped waiting for.
    fn reap_cancelled(&mut self, k: &mut Kernel) {
        for p in self.pending.values_mut() {
            let gave_up = p.request.as_ref().is_some_and(|r| r.is_cancelled());
            if gave_up && !p.cancelled {
                p.cancelled = true;
                self.stats.cancelled += 1;
                k.cancel(p.irp);
            }
        }
    }

    /// The machine shuts down: `CONTROL(Detach)` on the service's behalf, so the filter
    /// gives its parked `GET_MISSING`s back (the service sees `DEVICE_NOT_READY`).
    pub fn detach(&mut self, wdf: &mut SimWdf, filter: &mut Option<Filter<SimWdf>>) {
        let control = Control {
            command: ControlCommand::Detach,
        };
        let mut input = vec![0u8; control.encoded_len()];
        match control.encode(&mut input) {
            Ok(n) => input.truncate(n),
            Err(e) => {
                tracing::error!(%e, "demo: CONTROL(Detach) does not encode");
                return;
            }
        }
        self.send(wdf, filter, Ioctl::Control.code(), input, 0, None);
    }

    /// The filter has `bytes` of the volume restored now.
    pub fn note_restored_bytes(&mut self, now_ns: u64, bytes: u64) {
        let s = &mut self.stats;
        if s.restored_sampled_bytes != Some(bytes) {
            s.restored_sampled_bytes = Some(bytes);
            s.timeline.restored(now_ns as f64 / 1e9, bytes);
        }
    }

    /// Every region is restored (first time seen).
    pub fn note_restored(&mut self, now_ns: u64) {
        self.stats.restored_ns.get_or_insert(now_ns);
    }

    /// A file-system request completed; `workload` is false for the final read-back.
    pub fn note_fs_done(
        &mut self,
        kind: OpKind,
        held: bool,
        issued_ns: u64,
        now_ns: u64,
        ok: bool,
        workload: bool,
    ) {
        let s = &mut self.stats;
        if kind == OpKind::Read && ok {
            s.first_read_ns.get_or_insert(now_ns);
        }
        if !workload {
            return;
        }
        if !ok {
            s.failed += 1;
            return;
        }
        match kind {
            OpKind::Read => {
                s.reads += 1;
                if held {
                    let latency_ns = now_ns.saturating_sub(issued_ns);
                    s.read_miss_latencies_ns.push(latency_ns);
                    s.timeline
                        .miss(now_ns as f64 / 1e9, latency_ns as f64 / 1e6);
                }
            }
            OpKind::Write { .. } => {
                s.writes += 1;
                s.held_writes += u64::from(held);
            }
            OpKind::Flush => s.flushes += 1,
            OpKind::Trim => s.trims += 1,
            OpKind::GetLength | OpKind::Bad => {}
        }
    }
}
