//! Binding against a real `rehydrate serve` in this process: a new restore pins the
//! version it dials and records it with the target; a resumed one dials that version
//! even when a newer one exists; metadata without a pin, or bound to another target or
//! source, is refused. `rehydrate restore`'s end-to-end tests run the same function
//! through the binary; these pin down what `rehydrate attach` relies on.

use std::path::PathBuf;

use rehydrate_driver::meta::{TargetKind, TARGET_ID_BYTES};

use super::*;
use crate::restore::test_server::Server;
use crate::restore::FileMetaStore;
use crate::source::Source;

const IMAGE_BYTES: usize = 256 << 10;

/// A target that is only a pin, with its metadata in a file.
struct Fake {
    pin: TargetPin,
    metadata: PathBuf,
    prepared: Option<u64>,
}

impl BindTarget for Fake {
    type Store = FileMetaStore;
    type Error = ServiceError;

    fn prepare(&mut self, source_bytes: u64) -> Result<TargetPin, ServiceError> {
        self.prepared = Some(source_bytes);
        Ok(self.pin)
    }

    fn create_store(&mut self, pages: u64) -> Result<FileMetaStore, ServiceError> {
        FileMetaStore::open_unchecked(&self.metadata, Some(pages))
    }

    fn describe(&self) -> PathBuf {
        PathBuf::from("the fake volume")
    }
}

fn volume_pin(byte: u8) -> TargetPin {
    TargetPin {
        kind: TargetKind::WindowsVolume,
        id: [byte; TARGET_ID_BYTES],
    }
}

async fn bind_once(
    server: &Server,
    metadata: &Path,
    pin: TargetPin,
) -> Result<Bind<FileMetaStore>, ServiceError> {
    let hydrator = HydratorConfig::default();
    let request = BindRequest {
        url: &server.url,
        metadata,
        region_size_bytes: 4096,
        hydrator: &hydrator,
        source_in_flight: 4,
        deadline: Duration::from_secs(10),
        named_maps: &[],
    };
    let store = match metadata.exists() {
        true => Some(FileMetaStore::open_unchecked(metadata, None)?),
        false => None,
    };
    let existing = read_existing(store, metadata)?;
    let mut target = Fake {
        pin,
        metadata: metadata.to_owned(),
        prepared: None,
    };
    let bound = bind(&request, existing, &mut target).await?;
    assert_eq!(target.prepared, Some(IMAGE_BYTES as u64));
    Ok(bound)
}

fn ready(bind: Bind<FileMetaStore>) -> Bound<FileMetaStore> {
    match bind {
        Bind::Ready(b) => *b,
        Bind::Empty => panic!("the source is not empty"),
    }
}

#[tokio::test]
async fn a_new_restore_pins_the_version_and_the_target_and_a_resumed_one_dials_that_version() {
    let server = Server::start(IMAGE_BYTES).await;
    let metadata = server.dir.path().join("m");
    let first = ready(bind_once(&server, &metadata, volume_pin(1)).await.unwrap());
    assert!(first.fresh);
    assert_eq!(first.binding.source.kind, SourceKind::BackupVersion);
    assert_eq!(first.binding.source.name(), "sys@1");
    assert_eq!(first.binding.target, volume_pin(1));
    assert_eq!(
        first.identity.backup_id,
        pin::backup_id_of(&first.binding.source)
    );
    let header = Metadata::read_header(&mut FileMetaStore::open(&metadata, 0, false).unwrap());
    assert_eq!(header.unwrap().binding, first.binding);
    drop(first);

    // A newer version behind the same name: the resumed restore still reads version 1.
    server.back_up(2).await;
    let again = ready(bind_once(&server, &metadata, volume_pin(1)).await.unwrap());
    assert!(!again.fresh);
    assert_eq!(again.binding.source.name(), "sys@1");
    let block = again.source.read(0, 4096).await.unwrap();
    assert_eq!(block, server.image(1)[..4096], "the pinned version's data");
    assert_ne!(server.image(1), server.image(2));
}

#[tokio::test]
async fn metadata_of_another_target_or_with_no_pin_is_refused() {
    let server = Server::start(IMAGE_BYTES).await;
    let metadata = server.dir.path().join("m");
    drop(bind_once(&server, &metadata, volume_pin(1)).await.unwrap());
    let other = bind_once(&server, &metadata, volume_pin(2)).await;
    assert!(
        matches!(other, Err(ServiceError::MetadataOfAnotherTarget { .. })),
        "{:?}",
        other.err()
    );

    // Metadata that records no source (made before restores were pinned).
    let legacy = server.dir.path().join("legacy");
    let identity = Identity {
        volume_size_bytes: IMAGE_BYTES as u64,
        region_size_bytes: 4096,
        backup_id: [0; 32],
    };
    let g = identity.geometry().unwrap();
    let mut store = FileMetaStore::open(&legacy, Metadata::store_pages(&g), true).unwrap();
    Metadata::create(&mut store, &identity).unwrap();
    drop(store);
    let refused = bind_once(&server, &legacy, volume_pin(1)).await;
    assert!(
        matches!(refused, Err(ServiceError::MetadataUnpinned(_))),
        "{:?}",
        refused.err()
    );
}
