//! The channel link against the fake driver end of `testkit.rs`.

use std::time::Duration;

use rehydrate_driver::abi::{
    BitmapQuery, ControlCommand, DriverState, FetchFailed, Ioctl, MissingFlags, MissingRange,
};
use rehydrate_driver::{FailReason, Status};

use super::testkit::{identity, start, Seen, REGIONS, VOLUME_BYTES};
use super::*;

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
            map: rehydrate_driver::abi::MapSelector::Restored,
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
                word_count: 1,
                map: rehydrate_driver::abi::MapSelector::Restored,
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
