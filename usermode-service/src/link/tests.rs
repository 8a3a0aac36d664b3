//! The channel link against a fake driver end that serves requests in a loop the way
//! the filter's control device does: decode the input with the ABI, park `GET_MISSING`,
//! complete everything else at once with an encoded reply.

use std::collections::VecDeque;
use std::time::Duration;

use rehydrate_driver::abi::{
    Attach, BitmapPage, BitmapQuery, Control, ControlCommand, DriverState, FetchFailed, Hydrate,
    HydrateFlags, Ioctl, MissingBatch, MissingFlags, MissingRange, StatusCounters,
};
use rehydrate_driver::{FailReason, Status};
use tokio::sync::mpsc;

use super::*;

const VOLUME_BYTES: u64 = 1 << 20;
const REGION_BYTES: u32 = 4096;
const REGIONS: u64 = VOLUME_BYTES / REGION_BYTES as u64;

fn identity() -> Attach {
    Attach {
        volume_size_bytes: VOLUME_BYTES,
        region_size_bytes: REGION_BYTES,
        backup_identity: [7; 32],
    }
}

/// What the fake driver saw, decoded.
#[derive(Debug, PartialEq)]
enum Seen {
    Attach(Attach),
    Control(ControlCommand),
    Hydrate {
        offset: u64,
        len: u64,
        zero: bool,
        payload: Vec<u8>,
    },
    FetchFailed(FetchFailed),
}

/// A driver end: an identity, a state, wanted ranges, parked `GET_MISSING`s and a map in
/// which hydrated regions are set.
struct FakeDriver {
    state: DriverState,
    wanted: VecDeque<MissingRange>,
    parked: VecDeque<LinkRequest>,
    words: Vec<u64>,
    counters: StatusCounters,
    seen: mpsc::UnboundedSender<Seen>,
}

impl FakeDriver {
    /// Serves `requests`, and takes ranges to ask for from `wants`, until the link closes.
    async fn serve(
        mut self,
        mut requests: LinkRequests,
        mut wants: mpsc::UnboundedReceiver<MissingRange>,
    ) {
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(r) => self.on_request(r),
                    None => return,
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
        match r.ioctl {
            Ioctl::Attach => match Attach::decode(&r.input)
                .and_then(|a| a.check_matches(&identity()).map(|()| a))
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
                if self.state == DriverState::Detached {
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
                let counters = StatusCounters {
                    state: self.state,
                    ..self.counters
                };
                let mut out = vec![0; r.output_len];
                let n = counters.encode(&mut out).unwrap();
                out.truncate(n);
                r.complete(Status::SUCCESS, out);
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

struct Harness {
    link: ChannelLink,
    wants: mpsc::UnboundedSender<MissingRange>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

fn start() -> Harness {
    let (link, requests) = channel();
    let (wants_tx, wants_rx) = mpsc::unbounded_channel();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let driver = FakeDriver {
        state: DriverState::Detached,
        wanted: VecDeque::new(),
        parked: VecDeque::new(),
        words: vec![0; (REGIONS / 64) as usize],
        counters: StatusCounters {
            state: DriverState::Detached,
            regions_total: REGIONS,
            regions_restored: 0,
            held_requests: 0,
            misses: 0,
            bytes_hydrated: 0,
            hydrate_dropped_stale: 0,
            fetch_failures: 0,
            requests_failed: 0,
        },
        seen: seen_tx,
    };
    tokio::spawn(driver.serve(requests, wants_rx));
    Harness {
        link,
        wants: wants_tx,
        seen,
    }
}

fn on_demand(offset: u64, len: u64) -> MissingRange {
    MissingRange {
        offset,
        len,
        flags: MissingFlags::ON_DEMAND,
    }
}

#[tokio::test]
async fn every_call_crosses_as_abi_bytes_and_comes_back_decoded() {
    let mut h = start();
    h.link.attach(identity()).await.unwrap();
    h.link.control(ControlCommand::Start).await.unwrap();
    let data = vec![0xA5u8; 8192];
    assert_eq!(
        h.link.hydrate(4096, 8192, false, &data).await.unwrap(),
        Status::SUCCESS
    );
    assert_eq!(
        h.link.hydrate(65536, 4096, true, &[]).await.unwrap(),
        Status::SUCCESS
    );
    let failed = FetchFailed {
        offset: 1 << 19,
        len: 4096,
        reason: FailReason::Unreachable,
    };
    h.link.fetch_failed(failed).await.unwrap();

    let page = h
        .link
        .query_bitmap(BitmapQuery {
            first_word: 0,
            word_count: 4096,
        })
        .await
        .unwrap();
    // The map has REGIONS / 64 words; the page stops there.
    assert_eq!(page.words.len(), (REGIONS / 64) as usize);
    assert_eq!(page.words[0], 0b110 | 1 << 16);
    assert_eq!((page.region_count, page.restored_count), (REGIONS, 3));
    assert_eq!(page.page().unwrap().is_restored(16), Some(true));

    let status = h.link.get_status().await.unwrap();
    assert_eq!(status.state, DriverState::Running);
    assert_eq!(
        (
            status.regions_restored,
            status.bytes_hydrated,
            status.fetch_failures
        ),
        (3, 12288, 1)
    );

    let mut seen = Vec::new();
    while let Ok(s) = h.seen.try_recv() {
        seen.push(s);
    }
    assert_eq!(
        seen,
        vec![
            Seen::Attach(identity()),
            Seen::Control(ControlCommand::Start),
            Seen::Hydrate {
                offset: 4096,
                len: 8192,
                zero: false,
                payload: data
            },
            Seen::Hydrate {
                offset: 65536,
                len: 4096,
                zero: true,
                payload: Vec::new()
            },
            Seen::FetchFailed(failed),
        ]
    );
}

#[tokio::test]
async fn get_missing_resolves_only_when_the_driver_has_ranges() {
    let h = start();
    h.link.attach(identity()).await.unwrap();
    h.link.control(ControlCommand::Start).await.unwrap();
    let link = h.link.clone();
    let pended = tokio::spawn(async move { link.get_missing().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!pended.is_finished(), "GET_MISSING must stay pended");
    // Other calls pass a pended GET_MISSING by.
    h.link.get_status().await.unwrap();
    h.wants.send(on_demand(8192, 4096)).unwrap();
    h.wants.send(on_demand(0, 512)).unwrap();
    let ranges = pended.await.unwrap().unwrap();
    assert_eq!(ranges[0], on_demand(8192, 4096));
    // The second range comes in the same batch or the next one.
    let mut all = ranges;
    if all.len() == 1 {
        all.extend(h.link.get_missing().await.unwrap());
    }
    assert_eq!(all, vec![on_demand(8192, 4096), on_demand(0, 512)]);
}

#[tokio::test]
async fn a_detach_fails_pended_get_missing_with_device_not_ready() {
    let h = start();
    h.link.attach(identity()).await.unwrap();
    let link = h.link.clone();
    let pended = tokio::spawn(async move { link.get_missing().await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.link.control(ControlCommand::Detach).await.unwrap();
    let error = pended.await.unwrap().unwrap_err();
    assert!(error.is_detached(), "{error}");
    assert!(h.link.get_missing().await.unwrap_err().is_detached());
}

#[tokio::test]
async fn refusals_are_typed_and_a_failed_hydrate_is_a_status() {
    let h = start();
    let wrong = Attach {
        volume_size_bytes: VOLUME_BYTES * 2,
        ..identity()
    };
    match h.link.attach(wrong).await {
        Err(LinkError::Refused {
            ioctl: Ioctl::Attach,
            status,
        }) => assert_eq!(status, Status::DEVICE_NOT_READY),
        other => panic!("{other:?}"),
    }
    h.link.attach(identity()).await.unwrap();
    // Past the end of the volume: the driver's write fails, which is an answer.
    let data = vec![0u8; 4096];
    assert_eq!(
        h.link
            .hydrate(VOLUME_BYTES, 4096, false, &data)
            .await
            .unwrap(),
        Status::IO_DEVICE_ERROR
    );
    // Misaligned, or a payload that is not the length: never sent.
    for (offset, len, zero, payload) in [
        (100, 4096, false, &data[..]),
        (0, 8192, false, &data[..]),
        (0, 4096, true, &data[..]),
    ] {
        match h.link.hydrate(offset, len, zero, payload).await {
            Err(LinkError::Encode {
                ioctl: Ioctl::Hydrate,
                ..
            }) => {}
            other => panic!("{offset} {len} {zero}: {other:?}"),
        }
    }
}

/// A driver end that answers every request with `reply`.
fn rogue(reply: LinkReply) -> ChannelLink {
    let (link, mut requests) = channel();
    tokio::spawn(async move {
        while let Some(r) = requests.recv().await {
            r.complete(reply.status, reply.output.clone());
        }
    });
    link
}

#[tokio::test]
async fn bad_replies_are_typed_errors_never_panics() {
    let garbage = rogue(LinkReply {
        status: Status::SUCCESS,
        output: vec![1, 0, 7, 0, 8, 0, 0, 0],
    });
    assert!(matches!(
        garbage.get_status().await,
        Err(LinkError::Decode {
            ioctl: Ioctl::GetStatus,
            ..
        })
    ));
    assert!(matches!(
        garbage.get_missing().await,
        Err(LinkError::Decode {
            ioctl: Ioctl::GetMissing,
            ..
        })
    ));
    assert!(matches!(
        garbage
            .query_bitmap(BitmapQuery {
                first_word: 0,
                word_count: 1
            })
            .await,
        Err(LinkError::Decode { .. })
    ));
    // Output for a call that offers no output buffer.
    assert!(matches!(
        garbage.control(ControlCommand::Pause).await,
        Err(LinkError::OutputOverrun {
            ioctl: Ioctl::Control,
            got: 8,
            max: 0
        })
    ));
    let empty_success = rogue(LinkReply {
        status: Status::SUCCESS,
        output: Vec::new(),
    });
    assert!(matches!(
        empty_success.get_status().await,
        Err(LinkError::Decode { .. })
    ));
}

#[tokio::test]
async fn a_gone_driver_is_closed_and_a_dropped_call_is_cancelled() {
    let (link, mut requests) = channel();
    // The caller gives up on a pended GET_MISSING: the driver side sees it cancelled.
    let gave_up = tokio::time::timeout(Duration::from_millis(10), link.get_missing()).await;
    assert!(gave_up.is_err());
    let parked = requests.try_recv().expect("the request was queued");
    assert_eq!(
        (parked.ioctl, parked.output_len),
        (Ioctl::GetMissing, Ioctl::GetMissing.output_max_bytes())
    );
    assert!(parked.is_cancelled());
    assert!(!parked.complete(Status::SUCCESS, Vec::new()));
    // A request dropped unanswered, then the whole driver end.
    let call = tokio::spawn({
        let link = link.clone();
        async move { link.get_status().await }
    });
    drop(requests.recv().await);
    assert!(matches!(
        call.await.unwrap(),
        Err(LinkError::Closed {
            ioctl: Ioctl::GetStatus
        })
    ));
    drop(requests);
    assert!(matches!(
        link.control(ControlCommand::Start).await,
        Err(LinkError::Closed { .. })
    ));
}
