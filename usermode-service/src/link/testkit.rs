//! A fake driver end for tests of the service side of the link: it serves requests the
//! way the filter's control device does (decode the input with the ABI, park
//! `GET_MISSING`, complete everything else at once with an encoded reply), keeps the
//! volume's bytes as hydrates write them, and reports every region restored when it is.

use std::collections::VecDeque;

use rehydrate_driver::abi::{
    Attach, BitmapPage, BitmapQuery, Control, ControlCommand, DriverState, FetchFailed, Hydrate,
    HydrateFlags, Ioctl, MissingBatch, MissingRange, Refusal, StatusCounters,
};
use rehydrate_driver::Status;
use tokio::sync::mpsc;

use super::{channel, ChannelLink, LinkRequest, LinkRequests};

pub const VOLUME_BYTES: u64 = 1 << 20;
pub const REGION_BYTES: u32 = 4096;
pub const REGIONS: u64 = VOLUME_BYTES / REGION_BYTES as u64;

/// The restore the fake driver serves.
pub fn identity() -> Attach {
    Attach {
        volume_size_bytes: VOLUME_BYTES,
        region_size_bytes: REGION_BYTES,
        backup_identity: [7; 32],
        mode: rehydrate_driver::abi::RestoreMode::InPlace,
    }
}

/// What the fake driver saw, decoded.
#[derive(Debug, PartialEq)]
pub enum Seen {
    Attach(Attach),
    Control(ControlCommand),
    Hydrate {
        offset: u64,
        len: u64,
        zero: bool,
        payload: Vec<u8>,
    },
    FetchFailed(FetchFailed),
    /// A `GET_MISSING` arrived (parked, or refused while detached).
    GetMissing,
}

/// A driver end: an identity, a state, wanted ranges, parked `GET_MISSING`s and a map in
/// which hydrated regions are set.
struct FakeDriver {
    /// The restore it accepts an attach for.
    identity: Attach,
    /// It refused its volume at start: only `GET_STATUS` is answered.
    refusal: Option<Refusal>,
    state: DriverState,
    wanted: VecDeque<MissingRange>,
    parked: VecDeque<LinkRequest>,
    words: Vec<u64>,
    counters: StatusCounters,
    seen: mpsc::UnboundedSender<Seen>,
    /// The volume as hydrates left it (it starts as [`VOLUME_FILL`], not zeros, so a
    /// zero-fill that never happened shows).
    volume: Vec<u8>,
    /// `GET_MISSING`s still to fail with `INSUFFICIENT_RESOURCES`, as a driver short of
    /// memory would.
    pend_failures: u32,
    /// Goes away (closes the link) right after it reported every region restored, as
    /// a volume removed at that moment does.
    leaves_when_restored: bool,
    /// It has gone away.
    gone: bool,
}

/// What the fake volume holds before anything is hydrated.
pub const VOLUME_FILL: u8 = 0xEE;

impl FakeDriver {
    /// Serves `requests`, and takes ranges to ask for from `wants`, until the link closes;
    /// returns the volume's bytes.
    async fn serve(
        mut self,
        mut requests: LinkRequests,
        mut wants: mpsc::UnboundedReceiver<MissingRange>,
    ) -> Vec<u8> {
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(r) => {
                        self.on_request(r);
                        if self.gone {
                            return self.volume;
                        }
                    }
                    None => return self.volume,
                },
                Some(range) = wants.recv() => {
                    self.wanted.push_back(range);
                    self.deliver();
                }
            }
        }
    }

    fn on_request(&mut self, r: LinkRequest) {
        let refuse = |r: LinkRequest, e: rehydrate_driver::abi::AbiError| {
            r.complete(e.status(), Vec::new());
        };
        if self.refusal.is_some() && r.ioctl != Ioctl::GetStatus {
            r.complete(Status::WRONG_VOLUME, Vec::new());
            return;
        }
        match r.ioctl {
            Ioctl::Attach => match Attach::decode(&r.input)
                .and_then(|a| a.check_matches(&self.identity).map(|()| a))
            {
                Ok(a) => {
                    self.state = DriverState::Attached;
                    let _ = self.seen.send(Seen::Attach(a));
                    r.complete(Status::SUCCESS, Vec::new());
                }
                Err(e) => refuse(r, e),
            },
            Ioctl::Control => match Control::decode(&r.input) {
                Ok(c) => {
                    let _ = self.seen.send(Seen::Control(c.command));
                    r.complete(Status::SUCCESS, Vec::new());
                    match c.command {
                        ControlCommand::Start | ControlCommand::Resume => {
                            self.state = DriverState::Running;
                            self.deliver();
                        }
                        ControlCommand::Pause => self.state = DriverState::Paused,
                        // The fake drives an in-place restore only.
                        ControlCommand::MergeOnline | ControlCommand::Cutover => {}
                        ControlCommand::Detach => {
                            self.state = DriverState::Detached;
                            for p in self.parked.drain(..) {
                                p.complete(Status::DEVICE_NOT_READY, Vec::new());
                            }
                        }
                    }
                }
                Err(e) => refuse(r, e),
            },
            Ioctl::GetMissing => {
                let _ = self.seen.send(Seen::GetMissing);
                if self.pend_failures > 0 {
                    self.pend_failures -= 1;
                    r.complete(Status::INSUFFICIENT_RESOURCES, Vec::new());
                } else if self.state == DriverState::Detached {
                    r.complete(Status::DEVICE_NOT_READY, Vec::new());
                } else {
                    self.parked.push_back(r);
                    self.deliver();
                }
            }
            Ioctl::Hydrate => match Hydrate::decode(&r.input) {
                Ok(h) if h.offset + h.len > VOLUME_BYTES => {
                    r.complete(Status::IO_DEVICE_ERROR, Vec::new());
                }
                Ok(h) => {
                    let zero = h.flags.contains(HydrateFlags::ZERO);
                    for region in h.offset / 4096..(h.offset + h.len).div_ceil(4096) {
                        if self.words[(region / 64) as usize] & (1 << (region % 64)) == 0 {
                            self.counters.regions_restored += 1;
                        }
                        self.words[(region / 64) as usize] |= 1 << (region % 64);
                    }
                    self.counters.bytes_hydrated += h.len;
                    let range = h.offset as usize..(h.offset + h.len) as usize;
                    if zero {
                        self.volume[range].fill(0);
                    } else {
                        self.volume[range].copy_from_slice(h.payload);
                    }
                    let _ = self.seen.send(Seen::Hydrate {
                        offset: h.offset,
                        len: h.len,
                        zero,
                        payload: h.payload.to_vec(),
                    });
                    r.complete(Status::SUCCESS, Vec::new());
                }
                Err(e) => refuse(r, e),
            },
            Ioctl::FetchFailed => match FetchFailed::decode(&r.input) {
                Ok(f) => {
                    self.counters.fetch_failures += 1;
                    let _ = self.seen.send(Seen::FetchFailed(f));
                    r.complete(Status::SUCCESS, Vec::new());
                }
                Err(e) => refuse(r, e),
            },
            Ioctl::QueryBitmap => match BitmapQuery::decode(&r.input) {
                Ok(q) => {
                    let first = (q.first_word as usize).min(self.words.len());
                    let end = (first + q.word_count as usize).min(self.words.len());
                    let page = BitmapPage::new(
                        q.first_word,
                        REGIONS,
                        self.counters.regions_restored,
                        &self.words[first..end],
                    )
                    .unwrap();
                    let mut out = vec![0; r.output_len];
                    let n = page.encode(&mut out).unwrap();
                    out.truncate(n);
                    r.complete(Status::SUCCESS, out);
                }
                Err(e) => refuse(r, e),
            },
            Ioctl::GetStatus => {
                let all = self.counters.regions_restored == REGIONS && self.refusal.is_none();
                let counters = StatusCounters {
                    refusal: self.refusal,
                    state: if all {
                        DriverState::AllRestored
                    } else {
                        self.state
                    },
                    ..self.counters
                };
                let mut out = vec![0; r.output_len];
                let n = counters.encode(&mut out).unwrap();
                out.truncate(n);
                r.complete(Status::SUCCESS, out);
                self.gone = all && self.leaves_when_restored;
            }
        }
    }

    /// Completes parked `GET_MISSING`s with wanted ranges, as the filter does; a request
    /// whose caller left is skipped and its ranges stay wanted.
    fn deliver(&mut self) {
        while self.state == DriverState::Running && !self.wanted.is_empty() {
            let Some(parked) = self.parked.pop_front() else {
                return;
            };
            if parked.is_cancelled() {
                continue;
            }
            let batch: Vec<MissingRange> = self.wanted.iter().copied().collect();
            let message = MissingBatch::new(&batch).unwrap();
            let mut out = vec![0; parked.output_len];
            let n = message.encode(&mut out).unwrap();
            out.truncate(n);
            if parked.complete(Status::SUCCESS, out) {
                self.counters.misses += batch.len() as u64;
                self.wanted.clear();
            }
        }
    }
}

pub struct Harness {
    pub link: ChannelLink,
    /// The volume's bytes once every clone of `link` is gone.
    pub volume: tokio::task::JoinHandle<Vec<u8>>,
    pub wants: mpsc::UnboundedSender<MissingRange>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

/// A fake driver serving a new channel link, detached.
pub fn start() -> Harness {
    start_failing_pends(0)
}

/// As [`start`], with the first `pend_failures` `GET_MISSING`s refused.
pub fn start_failing_pends(pend_failures: u32) -> Harness {
    start_with(identity(), None, pend_failures)
}

/// As [`start`], with a driver that goes away as soon as it has reported every region
/// restored.
pub fn start_leaving_when_restored() -> Harness {
    spawn(FakeDriver {
        leaves_when_restored: true,
        ..FakeDriver::new(identity(), None, 0)
    })
}

/// A fake driver of the restore `identity`, or one that refused its volume.
pub fn start_with(identity: Attach, refusal: Option<Refusal>, pend_failures: u32) -> Harness {
    spawn(FakeDriver::new(identity, refusal, pend_failures))
}

impl FakeDriver {
    fn new(identity: Attach, refusal: Option<Refusal>, pend_failures: u32) -> FakeDriver {
        FakeDriver {
            identity,
            refusal,
            state: DriverState::Detached,
            wanted: VecDeque::new(),
            parked: VecDeque::new(),
            words: vec![0; (REGIONS / 64) as usize],
            counters: StatusCounters::detached(REGIONS, None),
            seen: mpsc::unbounded_channel().0,
            volume: vec![VOLUME_FILL; VOLUME_BYTES as usize],
            pend_failures,
            leaves_when_restored: false,
            gone: false,
        }
    }
}

/// Serves a new channel link with `driver`.
fn spawn(mut driver: FakeDriver) -> Harness {
    let (link, requests) = channel();
    let (wants_tx, wants_rx) = mpsc::unbounded_channel();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    driver.seen = seen_tx;
    let volume = tokio::spawn(driver.serve(requests, wants_rx));
    Harness {
        link,
        volume,
        wants: wants_tx,
        seen,
    }
}
