//! The attach session against the fake driver end of `link/testkit.rs`, with an
//! in-memory source: the order of the calls, the pended requests kept up through
//! failures, a clean detach, and the volume byte for byte.

use std::time::Duration;

use rehydrate_driver::abi::{ControlCommand, MissingFlags, MissingRange};
use rehydrate_driver::Geometry;

use super::*;
use crate::link::testkit::{
    identity, start, start_failing_pends, start_leaving_when_restored, Seen, REGION_BYTES,
    VOLUME_BYTES, VOLUME_FILL,
};
use crate::source::MemSource;

/// A volume of data with zero runs (restored without a transfer).
fn image() -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..VOLUME_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    bytes[64 << 10..192 << 10].fill(0);
    bytes
}

fn config(pended: usize) -> SessionConfig {
    SessionConfig {
        geometry: Geometry::new(VOLUME_BYTES, REGION_BYTES).unwrap(),
        attach: identity(),
        hydrator: HydratorConfig {
            fetch_size_bytes: 64 << 10,
            in_flight_max: 4,
            ..HydratorConfig::default()
        },
        pended,
        pend_retry: Duration::from_millis(1),
        progress_bar: false,
    }
}

/// A status report nobody reads (the session's own tests look at it in `report.rs`'s).
fn no_status() -> StatusReport {
    StatusReport::with_file(None, "nbd://h/x", "volume")
}

fn drain(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    let mut out = Vec::new();
    while let Ok(s) = seen.try_recv() {
        out.push(s);
    }
    out
}

#[tokio::test]
async fn attaches_first_keeps_requests_pended_and_restores_the_volume_byte_for_byte() {
    let mut h = start_failing_pends(2);
    let source = Arc::new(MemSource::new(image()));
    let report = run(
        h.link.clone(),
        source,
        config(3),
        no_status(),
        std::future::pending(),
    )
    .await
    .unwrap();
    drop(h.link);
    let volume = h.volume.await.unwrap();
    assert!(
        volume == image(),
        "the restored volume differs from the source"
    );
    assert_ne!(VOLUME_FILL, 0, "zero runs must have been written, not left");

    let seen = drain(&mut h.seen);
    assert_eq!(
        seen[0],
        Seen::Attach(identity()),
        "ATTACH comes first: {seen:?}"
    );
    assert_eq!(seen[1], Seen::Control(ControlCommand::Start));
    assert_eq!(seen.last(), Some(&Seen::Control(ControlCommand::Detach)));
    let pends = seen.iter().filter(|s| **s == Seen::GetMissing).count();
    // Three kept pended, and the two refused ones sent again.
    assert!(pends >= 5, "{pends} GET_MISSING sent: {seen:?}");
    assert_eq!(report.pends_failed, 2);
    let counters = report.counters.expect("the driver's counters were read");
    assert_eq!(counters.state, DriverState::AllRestored);
    assert_eq!(report.progress.restored_bytes, VOLUME_BYTES);
}

#[tokio::test]
async fn a_driver_gone_just_after_it_said_all_restored_ends_the_session_well() {
    // The volume goes away between the status that says complete and the detach that
    // follows it: the restore is complete, so the detach finding no driver is no error.
    let h = start_leaving_when_restored();
    let source = Arc::new(MemSource::new(image()));
    let report = run(
        h.link.clone(),
        source,
        config(2),
        no_status(),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(report.progress.restored_bytes, VOLUME_BYTES);
    assert_eq!(
        report.counters.map(|c| c.state),
        Some(DriverState::AllRestored)
    );
    drop(h.link);
    assert!(h.volume.await.unwrap() == image());
}

#[tokio::test]
async fn a_refused_get_missing_is_pended_again_and_then_delivers() {
    // Only one request pended, and the driver refuses it twice: without pending it again
    // the service would never hear of a miss.
    let h = start_failing_pends(2);
    h.link.attach(identity()).await.unwrap();
    h.link.control(ControlCommand::Start).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pender = tokio::spawn(keep_pended(h.link.clone(), tx, Duration::from_millis(1)));
    let want = MissingRange {
        offset: 8192,
        len: 4096,
        flags: MissingFlags::ON_DEMAND,
    };
    h.wants.send(want).unwrap();
    let mut refused = 0;
    let ranges = loop {
        match rx.recv().await.expect("the pender keeps going") {
            Event::PendFailed => refused += 1,
            Event::Missing(ranges) => break ranges,
            _ => panic!("unexpected event"),
        }
    };
    assert_eq!((refused, ranges), (2, vec![want]));
    // And it is pended once more after delivering.
    h.link.control(ControlCommand::Detach).await.unwrap();
    assert!(matches!(
        rx.recv().await,
        Some(Event::PendStopped(e)) if e.is_detached()
    ));
    pender.await.unwrap();
}

#[tokio::test]
async fn stopping_detaches_cleanly_and_says_the_restore_resumes() {
    let mut h = start();
    let source = Arc::new(MemSource::new(image()));
    let result = run(h.link.clone(), source, config(2), no_status(), async {
        Stop::Interrupted
    })
    .await;
    assert!(matches!(result, Err(SessionError::Stopped)), "{result:?}");
    let seen = drain(&mut h.seen);
    assert_eq!(seen[0], Seen::Attach(identity()));
    assert_eq!(seen.last(), Some(&Seen::Control(ControlCommand::Detach)));
}

#[tokio::test]
async fn a_refused_attach_ends_the_session_before_any_get_missing() {
    let mut h = start();
    let source = Arc::new(MemSource::new(image()));
    let mut other = config(2);
    other.attach.backup_identity = [9; 32];
    let result = run(
        h.link.clone(),
        source,
        other,
        no_status(),
        std::future::pending(),
    )
    .await;
    assert!(
        matches!(result, Err(SessionError::Link(LinkError::Refused { .. }))),
        "{result:?}"
    );
    assert_eq!(drain(&mut h.seen), Vec::new(), "nothing else was sent");
    assert!(matches!(
        run(
            h.link.clone(),
            Arc::new(MemSource::new(image())),
            config(0),
            no_status(),
            async { Stop::Interrupted }
        )
        .await,
        Err(SessionError::Pended(0))
    ));
}

fn status_at(path: &std::path::Path) -> StatusReport {
    StatusReport::new(Some(path), "nbd://h/x", std::path::Path::new("/volume"))
}

#[tokio::test]
async fn the_status_file_follows_the_session_to_complete_or_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done.json");
    let h = start();
    let source = Arc::new(MemSource::new(image()));
    let report = run(
        h.link.clone(),
        source,
        config(2),
        status_at(&done),
        std::future::pending(),
    )
    .await
    .unwrap();
    let snapshot = crate::status::read_status(&done).unwrap();
    assert_eq!(snapshot.phase, crate::status::Phase::Complete);
    assert_eq!(snapshot.bytes_restored, VOLUME_BYTES);
    assert_eq!(snapshot.bytes_fetched, report.progress.fetched_bytes);
    assert_eq!(snapshot.source, "nbd://h/x");

    let stopped = dir.path().join("stopped.json");
    let h = start();
    let source = Arc::new(MemSource::new(image()));
    let result = run(
        h.link.clone(),
        source,
        config(2),
        status_at(&stopped),
        async { Stop::Interrupted },
    )
    .await;
    assert!(matches!(result, Err(SessionError::Stopped)), "{result:?}");
    let snapshot = crate::status::read_status(&stopped).unwrap();
    assert_eq!(snapshot.phase, crate::status::Phase::Stopped);
}

#[tokio::test]
async fn a_driver_that_went_away_hears_no_detach() {
    for restored in [true, false] {
        let mut h = start();
        let source = Arc::new(MemSource::new(image()));
        let result = run(h.link.clone(), source, config(2), no_status(), async move {
            Stop::DriverGone { restored }
        })
        .await;
        match restored {
            true => assert!(result.is_ok(), "{result:?}"),
            false => assert!(
                matches!(result, Err(SessionError::DriverGone)),
                "{result:?}"
            ),
        }
        let seen = drain(&mut h.seen);
        assert!(
            !seen.contains(&Seen::Control(ControlCommand::Detach)),
            "{seen:?}"
        );
    }
}

/// A source that never answers: the restore cannot end by itself.
struct Stalled(u64);

impl Source for Stalled {
    fn size_bytes(&self) -> u64 {
        self.0
    }

    fn supports_block_status(&self) -> bool {
        false
    }

    async fn read(&self, _offset: u64, _len: usize) -> Result<Vec<u8>, SourceError> {
        std::future::pending().await
    }

    async fn block_status(
        &self,
        _offset: u64,
        _len: u64,
    ) -> Result<Vec<crate::hydrator::Allocation>, SourceError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_driver_that_detaches_the_service_ends_it_unless_it_went_away_restored() {
    for gone in [None, Some(true)] {
        let h = start();
        let driver_side = h.link.clone();
        let stop = async move {
            // The driver detaches its service (the volume goes away) while it runs.
            tokio::time::sleep(Duration::from_millis(50)).await;
            driver_side.control(ControlCommand::Detach).await.unwrap();
            match gone {
                // ... and the driver's side then says it is gone, having seen the
                // volume restored (the demo's machine, shutting down after the restore).
                Some(restored) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Stop::DriverGone { restored }
                }
                None => std::future::pending().await,
            }
        };
        let started = Instant::now();
        let source = Arc::new(Stalled(VOLUME_BYTES));
        let result = run(h.link.clone(), source, config(2), no_status(), stop).await;
        match gone {
            None => {
                assert!(
                    matches!(result, Err(SessionError::Detached(_))),
                    "{result:?}"
                );
                assert!(started.elapsed() >= DETACHED_GRACE);
            }
            Some(_) => assert!(result.is_ok(), "{result:?}"),
        }
    }
}
