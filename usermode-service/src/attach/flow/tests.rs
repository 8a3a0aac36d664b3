//! `rehydrate attach` end to end on Linux: a real backup server in this process, a fake
//! host (metadata in a temporary file, the parameters kept in memory) and the fake
//! driver end, which takes its restore from the parameters as the filter does.

use rehydrate_driver::abi::Refusal;
use rehydrate_driver::meta::{Metadata, SourceKind};
use rehydrate_driver::volume_id::{Partition, PartitionId};

use super::*;
use crate::link::testkit::{start_with, Harness, Seen, VOLUME_BYTES};
use crate::link::ChannelLink;
use crate::restore::test_server::Server;
use crate::restore::FileMetaStore;
use crate::status::{read_status, Phase};

/// A GPT volume of the fake driver's size whose partition GUID ends in `which`.
fn volume(which: u8) -> TargetVolume {
    let mut partition_guid = [0x42; 16];
    partition_guid[15] = which;
    let partition = Partition {
        id: PartitionId::Gpt { partition_guid },
        offset_bytes: 1 << 20,
        length_bytes: VOLUME_BYTES,
    };
    TargetVolume {
        id: VolumeId::new([0x11; 16], &partition),
        length_bytes: VOLUME_BYTES,
    }
}

struct FakeHost {
    volume: TargetVolume,
    metadata: PathBuf,
    parameters: Option<RestoreParameters>,
    /// What the filter does on this volume: restore it, or refuse it.
    refusal: Option<Refusal>,
    /// The fake driver, once the filter "started" (after the parameters were written).
    driver: Option<Harness>,
}

impl FakeHost {
    fn new(server: &Server, volume: TargetVolume) -> FakeHost {
        FakeHost {
            volume,
            metadata: server.dir.path().join("sys.meta"),
            parameters: None,
            refusal: None,
            driver: None,
        }
    }

    /// The volume as the fake driver left it, once the attach is over.
    async fn restored(&mut self) -> Vec<u8> {
        let driver = self.driver.take().expect("the filter started");
        drop(driver.link);
        driver.volume.await.unwrap()
    }
}

impl Host for FakeHost {
    type Store = FileMetaStore;
    type Link = ChannelLink;

    fn volume(&mut self) -> Result<TargetVolume, AttachError> {
        Ok(self.volume)
    }

    fn open_metadata(&mut self) -> Result<Option<FileMetaStore>, AttachError> {
        match self.metadata.exists() {
            true => Ok(Some(FileMetaStore::open_unchecked(&self.metadata, None)?)),
            false => Ok(None),
        }
    }

    fn create_metadata(&mut self, pages: u64) -> Result<FileMetaStore, AttachError> {
        Ok(FileMetaStore::open_unchecked(&self.metadata, Some(pages))?)
    }

    fn write_parameters(&mut self, parameters: &RestoreParameters) -> Result<(), AttachError> {
        self.parameters = Some(*parameters);
        Ok(())
    }

    async fn wait_for_filter(&mut self) -> Result<ChannelLink, AttachError> {
        let p = self
            .parameters
            .expect("parameters are written before the filter starts");
        let identity = Attach {
            volume_size_bytes: self.volume.length_bytes,
            region_size_bytes: p.region_size_bytes,
            backup_identity: p.backup_id,
            mode: rehydrate_driver::abi::RestoreMode::InPlace,
        };
        let driver = start_with(identity, self.refusal, 0);
        let link = driver.link.clone();
        self.driver = Some(driver);
        Ok(link)
    }
}

fn args(server: &Server, host: &FakeHost) -> AttachArgs {
    AttachArgs {
        volume: r"\\?\Volume{11111111-1111-1111-1111-111111111111}\".into(),
        source: server.url.to_string(),
        metadata: host.metadata.clone(),
        region_size: 4096,
        fetch_size: 64 << 10,
        in_flight: 4,
        rate_limit: None,
        deadline: 10,
        pended: 2,
        wait: 1,
        status_file: Some(server.dir.path().join("status.json")),
    }
}

#[tokio::test]
async fn attach_pins_and_binds_like_restore_and_restores_the_volume() {
    let server = Server::start(VOLUME_BYTES as usize).await;
    let mut host = FakeHost::new(&server, volume(1));
    let args = args(&server, &host);
    let summary = run(&args, &mut host, std::future::pending()).await.unwrap();
    assert_eq!(summary.bytes, VOLUME_BYTES);
    assert!(summary
        .line()
        .starts_with("attach: complete bytes=1048576 "));
    assert!(
        host.restored().await == server.image(1),
        "the volume differs from the backup"
    );

    // The metadata is bound to the pinned version and to this volume, and the filter's
    // parameters name the same restore and volume.
    let mut store = FileMetaStore::open(&host.metadata, 0, false).unwrap();
    let header = Metadata::read_header(&mut store).unwrap();
    assert_eq!(header.binding.source.kind, SourceKind::BackupVersion);
    assert_eq!(header.binding.source.name(), "sys@1");
    assert_eq!(header.binding.target, volume(1).id.pin());
    let p = host.parameters.unwrap();
    assert_eq!(p.backup_id, header.identity.backup_id);
    assert_eq!(
        p.backup_id,
        crate::restore::pin::backup_id_of(&header.binding.source)
    );
    assert_eq!(p.target_volume, volume(1).id.pin().id);

    // `rehydrate status` sees the attach session, complete.
    let status = read_status(&server.dir.path().join("status.json")).unwrap();
    assert_eq!(status.phase, Phase::Complete);
    assert_eq!(status.bytes_restored, VOLUME_BYTES);
    assert_eq!(status.source, server.url.to_string());
}

#[tokio::test]
async fn a_resumed_attach_reads_the_pinned_version_and_refuses_another_volume() {
    let server = Server::start(VOLUME_BYTES as usize).await;
    let mut host = FakeHost::new(&server, volume(1));
    let args = args(&server, &host);
    run(&args, &mut host, std::future::pending()).await.unwrap();
    let _ = host.restored().await;

    // A newer backup behind the same name: the restore stays on version 1.
    server.back_up(2).await;
    let mut again = FakeHost::new(&server, volume(1));
    run(&args, &mut again, std::future::pending())
        .await
        .unwrap();
    assert!(
        again.restored().await == server.image(1),
        "version 2 leaked into a restore of version 1"
    );

    // Another volume under the same metadata is refused before anything is written.
    let mut other = FakeHost::new(&server, volume(2));
    let refused = run(&args, &mut other, std::future::pending()).await;
    assert!(
        matches!(
            &refused,
            Err(AttachError::Restore(e))
                if matches!(**e, ServiceError::MetadataOfAnotherTarget { .. })
        ),
        "{:?}",
        refused.err()
    );
    assert!(other.parameters.is_none(), "no parameters written");
}

#[tokio::test]
async fn a_filter_that_refused_its_volume_ends_the_attach_with_its_reason() {
    let server = Server::start(VOLUME_BYTES as usize).await;
    let mut host = FakeHost::new(&server, volume(1));
    host.refusal = Some(Refusal::PartitionId);
    let args = args(&server, &host);
    let result = run(&args, &mut host, std::future::pending()).await;
    assert!(
        matches!(
            result,
            Err(AttachError::Refused {
                refusal: Some(Refusal::PartitionId),
                ..
            })
        ),
        "{:?}",
        result.err()
    );
    let mut driver = host.driver.take().unwrap();
    let mut seen = Vec::new();
    while let Ok(s) = driver.seen.try_recv() {
        seen.push(s);
    }
    assert!(
        !seen
            .iter()
            .any(|s| matches!(s, Seen::Attach(_) | Seen::Hydrate { .. })),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_volume_of_another_size_is_refused_before_any_metadata_exists() {
    let server = Server::start(VOLUME_BYTES as usize).await;
    let mut small = volume(1);
    small.length_bytes -= 512;
    let mut host = FakeHost::new(&server, small);
    let args = args(&server, &host);
    let result = run(&args, &mut host, std::future::pending()).await;
    assert!(
        matches!(
            result,
            Err(AttachError::VolumeSize {
                needed_bytes: VOLUME_BYTES,
                ..
            })
        ),
        "{:?}",
        result.err()
    );
    assert!(!host.metadata.exists());
}

#[tokio::test]
async fn a_resume_against_another_source_is_refused_before_anything_is_written() {
    // Pinned to version 2 of `sys` on the first server.
    let first = Server::start(VOLUME_BYTES as usize).await;
    first.back_up(2).await;
    let mut host = FakeHost::new(&first, volume(1));
    run(&args(&first, &host), &mut host, std::future::pending())
        .await
        .unwrap();
    let before = std::fs::read(&host.metadata).unwrap();

    // Another server with a `sys@2` of the same size and other data: the same metadata
    // resumed against it is refused with one line, nothing written.
    let second = Server::start(VOLUME_BYTES as usize).await;
    second.back_up(3).await;
    let mut other = FakeHost::new(&first, volume(1));
    let refused = run(&args(&second, &other), &mut other, std::future::pending()).await;
    let Err(AttachError::Restore(e)) = &refused else {
        panic!("resumed against another source: {:?}", refused.err());
    };
    assert!(matches!(**e, ServiceError::SourceChanged { .. }), "{e}");
    assert!(!e.to_string().contains('\n'), "one line: {e}");
    assert!(other.parameters.is_none(), "no parameters written");
    assert!(other.driver.is_none(), "the filter was never waited for");
    assert_eq!(std::fs::read(&host.metadata).unwrap(), before);
}
