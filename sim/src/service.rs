//! The service side: the real hydrator (`rehydrate_service::hydrator`) behind a shell
//! that speaks the driver ABI through simulated IOCTLs on the control device, and
//! fetches over the simulated link.
//!
//! The shell does what the Windows service loop does: `ATTACH`, `CONTROL(Start)`, keeps
//! several `GET_MISSING` requests pended (the inverted call) and turns their batches into
//! hydrator inputs; carries out the hydrator's outputs (fetch, hydrate, fetch-failed,
//! bitmap query); verifies every fetched range against the checksum the server sent
//! (corrupt data becomes `FetchError::Corrupt`, never a hydrate); gives up on a fetch
//! whose reply does not come within a timeout (`FetchError::Transient`, checked on each
//! tick); and ticks the hydrator. Killing it drops everything it knew; its IRPs are cancelled as the I/O
//! manager does when a process dies, and late completions find nobody. A service that
//! keeps the backup in chunks may report a failure for the whole chunk a fetch was in
//! ([`Service::failure_span_bytes`]): wider than what the driver asked, as the driver
//! must expect.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use rehydrate_driver::abi::{
    self, Attach, BitmapPage, BitmapQuery, Control, ControlCommand, FetchFailed, Hydrate,
    HydrateFlags, MissingBatch, HYDRATE_PREFIX_BYTES, MISSING_BATCH_MAX_BYTES,
};
use rehydrate_driver::filter::Filter;
use rehydrate_driver::{Geometry, Status};
use rehydrate_service::hydrator::{
    plan_segments, Allocation, FetchError, Hydrator, HydratorConfig, Input, Missing, Output,
};

use crate::data::checksum;
use crate::irp::{IrpId, Layer, Routine, IRP_MJ_DEVICE_CONTROL};
use crate::link::{Link, Reply};
use crate::sched::Ev;
use crate::verifier::Rule;
use crate::wdf::SimWdf;

/// `GET_MISSING` requests kept pended.
const GET_MISSING_PENDED: usize = 4;
/// How often the service ticks its hydrator when it asks for nothing sooner.
const TICK_NS: u64 = 20_000_000;

/// What the run loop lends the service for one call.
pub struct Ctx<'a> {
    /// The kernel and WDF.
    pub wdf: &'a mut SimWdf,
    /// The filter (absent while the machine is down).
    pub filter: &'a mut Option<Filter<SimWdf>>,
    /// The link to the backup.
    pub link: &'a mut Link,
}

/// An IOCTL in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exchange {
    Attach,
    Start,
    GetMissing,
    Hydrate { batch: u64 },
    FetchFailed,
    QueryBitmap,
    Detach,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    instance: u32,
    exchange: Exchange,
    irp: IrpId,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceStats {
    /// Starts (1 + restarts).
    pub starts: u64,
    /// Fetch replies refused for a bad checksum.
    pub corrupt_caught: u64,
    /// Fetches given up on for a missing reply.
    pub timeouts: u64,
    /// Hydrates sent.
    pub hydrates: u64,
}

/// The service.
pub struct Service {
    geometry: Geometry,
    attach: Attach,
    config: HydratorConfig,
    /// Current instance; bumped at each start so events of a killed one are ignored.
    pub instance: u32,
    alive: bool,
    running: bool,
    hydrator: Option<Hydrator>,
    pending: BTreeMap<u32, Pending>,
    next_op: u32,
    get_missing: usize,
    /// Fetches at the link: fetch → (first sector, sectors, sent at). Their reply
    /// deadlines are checked on each tick (a handful in flight), not scheduled one by
    /// one, which keeps the event queue small.
    fetches: BTreeMap<u64, (u64, u64, u64)>,
    fetch_timeout_ns: u64,
    out: Vec<Output>,
    scratch: Vec<u8>,
    /// Regions of each hydrate in flight, by the hydrator's batch id.
    hydrates: BTreeMap<u64, Range<u64>>,
    /// Regions this instance delivered (the filter acknowledged the hydrate) that were
    /// not restored when it did: the filter dropped their data. The hydrator believes
    /// them done, so if one is missing again somebody must ask for it.
    dropped: BTreeSet<u64>,
    /// When non-zero, three in four fetch failures are reported for the whole aligned
    /// span of this many bytes around the fetch.
    pub failure_span_bytes: u64,
    /// Counters.
    pub stats: ServiceStats,
}

impl Service {
    /// A service for the restore `attach` describes (not started).
    pub fn new(
        geometry: Geometry,
        attach: Attach,
        config: HydratorConfig,
        fetch_timeout_ns: u64,
    ) -> Service {
        Service {
            geometry,
            attach,
            config,
            instance: 0,
            alive: false,
            running: false,
            hydrator: None,
            pending: BTreeMap::new(),
            next_op: 1,
            get_missing: 0,
            fetches: BTreeMap::new(),
            fetch_timeout_ns,
            out: Vec::new(),
            scratch: Vec::new(),
            hydrates: BTreeMap::new(),
            dropped: BTreeSet::new(),
            failure_span_bytes: 0,
            stats: ServiceStats::default(),
        }
    }

    /// True while a service process runs.
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// True when the hydrator has nothing in flight or queued and its sweep is done.
    pub fn is_idle(&self) -> bool {
        self.hydrator.as_ref().is_none_or(|h| h.is_idle())
    }

    /// True while an instance is attached and started (it pends `GET_MISSING`).
    pub fn is_running(&self) -> bool {
        self.alive && self.running
    }

    /// True when the hydrator is getting, or has queued, every region of `regions`.
    pub fn tracks(&self, regions: Range<u64>) -> bool {
        self.hydrator.as_ref().is_some_and(|h| h.tracks(regions))
    }

    /// True while a hydrate covering `region` is outstanding (if one of its writes
    /// fails, the hydrator hears of it and fetches the region again).
    pub fn hydrating(&self, region: u64) -> bool {
        self.hydrates.values().any(|r| r.contains(&region))
    }

    /// Regions whose delivered data the filter dropped (see the field).
    pub fn delivered_but_dropped(&self) -> impl Iterator<Item = u64> + '_ {
        self.dropped.iter().copied()
    }

    /// Forgets dropped regions that are restored by now.
    pub fn prune_dropped(&mut self, restored: impl Fn(u64) -> bool) {
        if !self.dropped.is_empty() {
            self.dropped.retain(|&r| !restored(r));
        }
    }

    /// Starts a new instance: a fresh hydrator, then `ATTACH`.
    pub fn start(&mut self, cx: &mut Ctx<'_>, seed: u64) {
        self.instance += 1;
        self.alive = true;
        self.running = false;
        self.stats.starts += 1;
        let config = HydratorConfig {
            seed,
            ..self.config
        };
        match Hydrator::new(self.geometry, config) {
            Ok(h) => self.hydrator = Some(h),
            Err(e) => {
                cx.wdf.k.v.fail(
                    Rule::Driver,
                    format!("hydrator refused its configuration: {e}"),
                );
                return;
            }
        }
        self.fetches.clear();
        self.hydrates.clear();
        self.dropped.clear();
        self.get_missing = 0;
        let attach = self.attach;
        self.send(cx, Exchange::Attach, abi::IOCTL_REHYDRATE_ATTACH, 0, |b| {
            encode(b, |o| attach.encode(o))
        });
    }

    /// The process dies: its pended IOCTLs are cancelled; the filter keeps what it owns.
    pub fn kill(&mut self, cx: &mut Ctx<'_>) {
        self.alive = false;
        self.running = false;
        self.hydrator = None;
        self.fetches.clear();
        let irps: Vec<IrpId> = self
            .pending
            .values()
            .filter(|p| p.instance == self.instance)
            .map(|p| p.irp)
            .collect();
        for irp in irps {
            cx.wdf.k.cancel(irp);
        }
    }

    /// Power loss: the process and every IRP are gone.
    pub fn vanish(&mut self) {
        self.alive = false;
        self.running = false;
        self.hydrator = None;
        self.fetches.clear();
        self.pending.clear();
    }

    /// Leaves cleanly: `CONTROL(Detach)` (the filter gives the pended requests back).
    pub fn detach(&mut self, cx: &mut Ctx<'_>) {
        if !self.alive {
            return;
        }
        self.running = false;
        let control = Control {
            command: ControlCommand::Detach,
        };
        self.send(cx, Exchange::Detach, abi::IOCTL_REHYDRATE_CONTROL, 0, |b| {
            encode(b, |o| control.encode(o))
        });
    }

    fn send(
        &mut self,
        cx: &mut Ctx<'_>,
        exchange: Exchange,
        ioctl: u32,
        output_len: usize,
        input: impl FnOnce(&mut Vec<u8>),
    ) {
        let k = &mut cx.wdf.k;
        let irp = k.alloc_irp(Layer::Service, Layer::Control.stack_size());
        let op = self.next_op;
        self.next_op = self.next_op.wrapping_add(1).max(1);
        if let Some(i) = k.irps.get_mut(irp) {
            input(&mut i.input);
            i.output.clear();
            i.output.resize(output_len, 0);
        }
        if let Some(next) = k.next_loc(Layer::Service, irp) {
            next.major = IRP_MJ_DEVICE_CONTROL;
            next.ioctl = ioctl;
        }
        k.set_completion(Layer::Service, irp, Routine::Service { op });
        self.pending.insert(
            op,
            Pending {
                instance: self.instance,
                exchange,
                irp,
            },
        );
        crate::wdf::dispatch(cx.wdf, cx.filter, Layer::Service, irp, Layer::Control);
    }

    fn post_get_missing(&mut self, cx: &mut Ctx<'_>) {
        while self.alive && self.running && self.get_missing < GET_MISSING_PENDED {
            self.get_missing += 1;
            self.send(
                cx,
                Exchange::GetMissing,
                abi::IOCTL_REHYDRATE_GET_MISSING,
                MISSING_BATCH_MAX_BYTES,
                |b| b.clear(),
            );
        }
    }

    /// An IOCTL came back (the IRP is the service's; it is freed here).
    pub fn on_done(&mut self, cx: &mut Ctx<'_>, op: u32, irp: IrpId) {
        let Some(p) = self.pending.remove(&op) else {
            cx.wdf.k.free_irp(Layer::Service, irp);
            return;
        };
        let (status, info) = cx
            .wdf
            .k
            .irps
            .get(irp)
            .map_or((Status::IO_DEVICE_ERROR, 0), |i| (i.status, i.information));
        let current = p.instance == self.instance && self.alive;
        if current {
            self.on_answer(cx, p.exchange, status, info, irp);
        }
        cx.wdf.k.free_irp(Layer::Service, irp);
    }

    fn on_answer(
        &mut self,
        cx: &mut Ctx<'_>,
        exchange: Exchange,
        status: Status,
        info: usize,
        irp: IrpId,
    ) {
        match exchange {
            Exchange::Attach => {
                if !status.is_success() {
                    // The volume is not up yet: try again shortly.
                    cx.wdf.k.sched.after(20_000_000, Ev::ServiceStart);
                    self.alive = false;
                    return;
                }
                let control = Control {
                    command: ControlCommand::Start,
                };
                self.send(cx, Exchange::Start, abi::IOCTL_REHYDRATE_CONTROL, 0, |b| {
                    encode(b, |o| control.encode(o))
                });
            }
            Exchange::Start => {
                if !status.is_success() {
                    cx.wdf.k.v.fail(
                        Rule::Status,
                        format!("CONTROL(Start) failed with {status:?}"),
                    );
                    return;
                }
                self.running = true;
                self.post_get_missing(cx);
                let now_ns = cx.wdf.k.now_ns();
                self.feed(cx, Input::Tick { now_ns }, None);
                cx.wdf.k.sched.after(
                    TICK_NS,
                    Ev::ServiceTick {
                        instance: self.instance,
                    },
                );
            }
            Exchange::GetMissing => {
                self.get_missing -= 1;
                if status.is_success() {
                    let bytes: Vec<u8> = cx
                        .wdf
                        .k
                        .irps
                        .get(irp)
                        .map(|i| i.output[..info.min(i.output.len())].to_vec())
                        .unwrap_or_default();
                    match MissingBatch::decode(&bytes) {
                        Ok(batch) => {
                            for range in batch.iter() {
                                match Missing::from_abi(&range, &self.geometry) {
                                    Ok(m) => self.feed(cx, m.input(), None),
                                    Err(_) => {
                                        cx.wdf.k.v.fail(Rule::Status, format!("driver asked for a range outside the volume: {range:?}"));
                                    }
                                }
                            }
                        }
                        Err(e) => cx.wdf.k.v.fail(
                            Rule::Status,
                            format!("GET_MISSING answer does not decode: {e}"),
                        ),
                    }
                }
                self.post_get_missing(cx);
            }
            Exchange::Hydrate { batch } => {
                if let Some(regions) = self.hydrates.remove(&batch) {
                    if status.is_success() {
                        if let Some(f) = cx.filter.as_ref() {
                            let map = f.engine().map();
                            self.dropped
                                .extend(regions.filter(|&r| !map.is_restored(r)));
                        }
                    } else {
                        // The hydrator hears of the failure and sweeps them again.
                        for r in regions {
                            self.dropped.remove(&r);
                        }
                    }
                }
                self.feed(
                    cx,
                    Input::HydrateDone {
                        batch,
                        ok: status.is_success(),
                    },
                    None,
                );
            }
            Exchange::QueryBitmap => {
                if status.is_success() {
                    let bytes: Vec<u8> = cx
                        .wdf
                        .k
                        .irps
                        .get(irp)
                        .map(|i| i.output[..info.min(i.output.len())].to_vec())
                        .unwrap_or_default();
                    match BitmapPage::decode(&bytes) {
                        Ok(page) => self.feed(cx, Input::BitmapPage(page), None),
                        Err(e) => cx.wdf.k.v.fail(
                            Rule::Status,
                            format!("QUERY_BITMAP answer does not decode: {e}"),
                        ),
                    }
                }
            }
            Exchange::FetchFailed | Exchange::Detach => {}
        }
    }

    /// The periodic tick.
    pub fn on_tick(&mut self, cx: &mut Ctx<'_>, instance: u32) {
        if instance != self.instance || !self.alive {
            return;
        }
        let now_ns = cx.wdf.k.now_ns();
        self.expire_fetches(cx, now_ns);
        self.feed(cx, Input::Tick { now_ns }, None);
        // Sooner when the hydrator has a retry or a rate-limited fetch coming due.
        let due = self
            .hydrator
            .as_ref()
            .and_then(|h| h.next_wakeup_ns())
            .map_or(TICK_NS, |at| {
                at.saturating_sub(now_ns).clamp(1_000_000, TICK_NS)
            });
        cx.wdf.k.sched.after(due, Ev::ServiceTick { instance });
    }

    /// Gives up on fetches whose reply is overdue (the link dropped it).
    fn expire_fetches(&mut self, cx: &mut Ctx<'_>, now_ns: u64) {
        let timeout = self.fetch_timeout_ns;
        let overdue: Vec<u64> = self
            .fetches
            .iter()
            .filter(|(_, &(_, _, sent))| now_ns.saturating_sub(sent) >= timeout)
            .map(|(&f, _)| f)
            .collect();
        for fetch in overdue {
            self.fetches.remove(&fetch);
            self.stats.timeouts += 1;
            let error = FetchError::Transient;
            self.feed(cx, Input::FetchFailed { fetch, error }, None);
        }
    }

    /// A reply from the link.
    pub fn on_reply(&mut self, cx: &mut Ctx<'_>, instance: u32, fetch: u64, reply: Reply) {
        let stale = instance != self.instance || !self.alive;
        let Some(&(sector, count, _)) = self.fetches.get(&fetch).filter(|_| !stale) else {
            if let Reply::Data { tags, .. } = reply {
                cx.link.recycle(tags);
            }
            return;
        };
        self.fetches.remove(&fetch);
        match reply {
            Reply::Failed => self.feed(
                cx,
                Input::FetchFailed {
                    fetch,
                    error: FetchError::Transient,
                },
                None,
            ),
            Reply::Data {
                tags,
                checksum: sum,
            } => {
                if tags.len() as u64 != count || checksum(&tags) != sum {
                    self.stats.corrupt_caught += 1;
                    self.feed(
                        cx,
                        Input::FetchFailed {
                            fetch,
                            error: FetchError::Corrupt,
                        },
                        None,
                    );
                } else {
                    // Block status: which regions of the range are holes.
                    let offset = sector * 512;
                    let len = count * 512;
                    let touched = self.geometry.regions_touched(offset, len);
                    let map: Vec<Allocation> = touched
                        .map(|r| {
                            let b = self.geometry.regions_byte_range(r..r + 1);
                            Allocation {
                                len: b.end - b.start,
                                zero: cx.link.is_hole(r),
                            }
                        })
                        .collect();
                    let segments = plan_segments(&self.geometry, offset, len, &map);
                    self.feed(
                        cx,
                        Input::Fetched {
                            fetch,
                            segments: &segments,
                        },
                        Some((fetch, &tags)),
                    );
                }
                cx.link.recycle(tags);
            }
        }
    }

    /// Feeds the hydrator and carries out what it says. `data` is the fetch whose
    /// payload hydrates of this call may refer to.
    fn feed(&mut self, cx: &mut Ctx<'_>, input: Input<'_>, data: Option<(u64, &[u64])>) {
        let Some(h) = self.hydrator.as_mut() else {
            return;
        };
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        h.handle(input, &mut out);
        for o in out.drain(..) {
            self.perform(cx, o, data);
        }
        self.out = out;
    }

    fn perform(&mut self, cx: &mut Ctx<'_>, output: Output, data: Option<(u64, &[u64])>) {
        match output {
            Output::Fetch {
                fetch, offset, len, ..
            } => {
                let (sector, count) = (offset / 512, len / 512);
                let k = &mut cx.wdf.k;
                self.fetches.insert(fetch, (sector, count, k.now_ns()));
                let instance = self.instance;
                cx.link
                    .send(instance, fetch, sector, count, &mut k.rng, &mut k.sched);
            }
            Output::Hydrate {
                batch,
                offset,
                len,
                zero,
                payload,
            } => {
                self.stats.hydrates += 1;
                self.hydrates
                    .insert(batch, self.geometry.regions_touched(offset, len));
                let mut msg = std::mem::take(&mut self.scratch);
                msg.clear();
                if zero {
                    encode(&mut msg, |o| Hydrate::zero(offset, len).encode(o));
                } else {
                    let Some((p, (fetch, tags))) = payload.zip(data) else {
                        cx.wdf.k.v.fail(
                            Rule::Driver,
                            format!("hydrate {batch} refers to fetch data that is gone"),
                        );
                        return;
                    };
                    debug_assert_eq!(p.fetch, fetch);
                    msg.resize(HYDRATE_PREFIX_BYTES + len as usize, 0);
                    if Hydrate::encode_prefix(offset, len, HydrateFlags::empty(), &mut msg).is_err()
                    {
                        cx.wdf.k.v.fail(
                            Rule::Driver,
                            format!("hydrate {offset}+{len} does not encode"),
                        );
                        return;
                    }
                    let first = (p.offset / 512) as usize;
                    for i in 0..(len / 512) as usize {
                        let at = HYDRATE_PREFIX_BYTES + i * 512;
                        msg[at..at + 8].copy_from_slice(&tags[first + i].to_le_bytes());
                    }
                }
                self.send(
                    cx,
                    Exchange::Hydrate { batch },
                    abi::IOCTL_REHYDRATE_HYDRATE,
                    0,
                    |b| {
                        b.clear();
                        b.extend_from_slice(&msg);
                    },
                );
                self.scratch = msg;
            }
            Output::FetchFailed {
                offset,
                len,
                reason,
            } => {
                let span = self.failure_span_bytes;
                let (offset, len) = if span > 0 && cx.wdf.k.rng.below(4) != 0 {
                    let start = offset / span * span;
                    let end = (offset + len)
                        .div_ceil(span)
                        .saturating_mul(span)
                        .min(self.geometry.volume_size_bytes());
                    (start, end - start)
                } else {
                    (offset, len)
                };
                crate::judge::fetch_failed(cx.wdf, cx.filter, offset, len, reason);
                // Given up on: not believed done any more (a later sweep tries again).
                for r in self.geometry.regions_touched(offset, len) {
                    self.dropped.remove(&r);
                }
                let f = FetchFailed {
                    offset,
                    len,
                    reason,
                };
                self.send(
                    cx,
                    Exchange::FetchFailed,
                    abi::IOCTL_REHYDRATE_FETCH_FAILED,
                    0,
                    |b| encode(b, |o| f.encode(o)),
                );
            }
            Output::QueryBitmap(q) => {
                let out_len = BitmapQuery::encoded_len(&q);
                let words = q.word_count as usize;
                let page_len = abi::BITMAP_PAGE_PREFIX_BYTES + 8 * words;
                debug_assert!(out_len > 0);
                self.send(
                    cx,
                    Exchange::QueryBitmap,
                    abi::IOCTL_REHYDRATE_QUERY_BITMAP,
                    page_len,
                    |b| encode(b, |o| q.encode(o)),
                );
            }
        }
    }
}

/// Encodes a fixed message into `buf` (sized to what it wrote).
fn encode(buf: &mut Vec<u8>, f: impl FnOnce(&mut [u8]) -> Result<usize, abi::AbiError>) {
    buf.clear();
    buf.resize(256, 0);
    let n = f(buf).unwrap_or(0);
    buf.truncate(n);
}
