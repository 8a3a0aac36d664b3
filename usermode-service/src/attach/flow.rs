//! `rehydrate attach` from its arguments to its summary, written against [`Host`] (the
//! calls into Windows: the volume, the metadata file, the registry, the control device;
//! `windows.rs`) so Linux tests run all of it with a fake host and the fake driver end.
//!
//! 1. The target volume's identity ([`VolumeId`]: volume GUID, partition, offset) and
//!    length, from the same partition IOCTLs the filter sends at start.
//! 2. The restore bound exactly as `rehydrate restore` binds it (`restore::bound`): the
//!    existing metadata's pinned source dialled and checked, the metadata opened bound
//!    to that source and this volume, or created for a new restore.
//! 3. The filter's parameters, the volume's identity among them, so the filter refuses
//!    any other volume that inherits the device name.
//! 4. The filter, once it started on the volume; a filter that refused its volume says
//!    why, and that ends the attach with one line.
//! 5. The session, with the status file `rehydrate status` reads.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rehydrate_driver::abi::Attach;
use rehydrate_driver::geometry::SECTOR_SIZE_BYTES;
use rehydrate_driver::meta::{MetaStore, TargetPin, TARGET_ID_BYTES};
use rehydrate_driver::volume_id::VolumeId;
use rehydrate_driver::Status;
use rehydrate_nbd::NbdUrl;

use super::session::{self, SessionConfig, SessionError, Stop};
use super::{AttachArgs, AttachError, Summary};
use crate::hydrator::HydratorConfig;
use crate::link::{DriverLink, LinkError};
use crate::restore::bound::{self, Bind, BindRequest, BindTarget};
use crate::restore::{PaddedSource, StatusReport};
use crate::ServiceError;

/// The target volume as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetVolume {
    /// What it is.
    pub id: VolumeId,
    /// Its length (the partition's).
    pub length_bytes: u64,
}

/// What the filter reads from its `Parameters` besides the names the host knows
/// (`TargetDevice`, `MetadataPath`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreParameters {
    /// `RegionSizeBytes`.
    pub region_size_bytes: u32,
    /// `BackupId`: the restore's backup id, named after the pinned source.
    pub backup_id: [u8; 32],
    /// `TargetVolume`: the volume's pin.
    pub target_volume: [u8; TARGET_ID_BYTES],
}

/// The calls `rehydrate attach` makes into the operating system.
pub trait Host {
    /// The metadata store.
    type Store: MetaStore;
    /// The link to the filter.
    type Link: DriverLink + Clone + Send + Sync + 'static;

    /// The target volume: its identity and length.
    fn volume(&mut self) -> Result<TargetVolume, AttachError>;
    /// The metadata file, if it exists, open for reading (the filter may have it open
    /// for writing).
    fn open_metadata(&mut self) -> Result<Option<Self::Store>, AttachError>;
    /// A new metadata file of `pages` pages, never over an existing one.
    fn create_metadata(&mut self, pages: u64) -> Result<Self::Store, AttachError>;
    /// Writes the filter's parameters.
    fn write_parameters(&mut self, parameters: &RestoreParameters) -> Result<(), AttachError>;
    /// Waits until the filter's control device answers for the volume, then links to it.
    fn wait_for_filter(&mut self) -> impl Future<Output = Result<Self::Link, AttachError>>;
}

/// Runs `rehydrate attach` on `host` until restored, or `stop` fires.
pub async fn run<H: Host>(
    args: &AttachArgs,
    host: &mut H,
    stop: impl Future<Output = Stop>,
) -> Result<Summary, AttachError> {
    let started = Instant::now();
    let url = NbdUrl::parse(&args.source).map_err(AttachError::Url)?;
    let region_size = u32::try_from(args.region_size).unwrap_or(u32::MAX);
    let deadline = Duration::from_secs(args.deadline.max(1));
    let volume = host.volume()?;
    let existing = host.open_metadata()?;
    let existing = bound::read_existing(existing, &args.metadata)?;
    let hydrator = HydratorConfig {
        fetch_size_bytes: args.fetch_size,
        in_flight_max: args.in_flight,
        background_rate_bytes_per_sec: args.rate_limit,
        deadline_ns: deadline.as_nanos() as u64,
        ..HydratorConfig::default()
    };
    let request = BindRequest {
        url: &url,
        metadata: &args.metadata,
        region_size_bytes: region_size,
        hydrator: &hydrator,
        source_in_flight: args.in_flight.saturating_mul(2),
        deadline,
        // The filter keeps no named maps yet.
        named_maps: &[],
    };
    let mut target = AttachTarget {
        host: &mut *host,
        volume,
        name: &args.volume,
    };
    let bound = match bound::bind(&request, existing, &mut target).await? {
        Bind::Empty => return Err(AttachError::EmptySource(args.source.clone())),
        Bind::Ready(bound) => *bound,
    };
    let bound::Bound {
        source,
        binding,
        identity,
        geometry,
        map,
        store,
        meta,
        fresh,
    } = bound;
    let (restored, regions) = (map.restored_count(), geometry.region_count());
    // The filter opens the metadata itself when the volume starts: let go of it first.
    drop((store, meta, map));
    host.write_parameters(&RestoreParameters {
        region_size_bytes: region_size,
        backup_id: identity.backup_id,
        target_volume: binding.target.id,
    })?;
    if fresh {
        eprintln!("attach: a new restore of {}", args.volume);
    } else {
        eprintln!("attach: resuming: {restored} of {regions} regions already restored");
    }
    eprintln!(
        "attach: parameters written for {}; waiting for the filter to start on it \
         (bring the disk online: diskpart, online disk)",
        args.volume
    );
    let link = host.wait_for_filter().await?;
    refused(&link, &args.volume).await?;
    let config = SessionConfig {
        geometry,
        attach: Attach {
            volume_size_bytes: identity.volume_size_bytes,
            region_size_bytes: region_size,
            backup_identity: identity.backup_id,
            mode: rehydrate_driver::abi::RestoreMode::InPlace,
        },
        hydrator,
        pended: args.pended,
        pend_retry: Duration::from_millis(100),
        progress_bar: true,
    };
    let status = StatusReport::new(
        args.status_file.as_deref(),
        &args.source,
        Path::new(&args.volume),
    );
    let source = Arc::new(PaddedSource::new(source, identity.volume_size_bytes));
    let report = match session::run(link.clone(), source, config, status, stop).await {
        Err(SessionError::Link(LinkError::Refused {
            status: Status::WRONG_VOLUME,
            ..
        })) => {
            refused(&link, &args.volume).await?;
            return Err(AttachError::Refused {
                volume: args.volume.clone(),
                refusal: None,
            });
        }
        other => other?,
    };
    Ok(Summary {
        bytes: identity.volume_size_bytes,
        secs: started.elapsed().as_secs_f64(),
        report,
    })
}

/// Ends the attach with the filter's reason when it refused the volume it started on.
async fn refused<L: DriverLink>(link: &L, volume: &str) -> Result<(), AttachError> {
    match link.get_status().await {
        Ok(counters) => match counters.refusal {
            Some(refusal) => Err(AttachError::Refused {
                volume: volume.to_owned(),
                refusal: Some(refusal),
            }),
            None => Ok(()),
        },
        // The session's first call says what is wrong with the link.
        Err(e) => {
            tracing::debug!(%e, "attach: GET_STATUS before attaching");
            Ok(())
        }
    }
}

/// The volume for [`bound::bind`]: it must be exactly the restored volume's size (the
/// source rounded up to a sector), and its pin is its identity.
struct AttachTarget<'a, H: Host> {
    host: &'a mut H,
    volume: TargetVolume,
    name: &'a str,
}

impl<H: Host> BindTarget for AttachTarget<'_, H> {
    type Store = H::Store;
    type Error = AttachError;

    fn prepare(&mut self, source_bytes: u64) -> Result<TargetPin, AttachError> {
        let needed_bytes = source_bytes.div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES;
        if self.volume.length_bytes != needed_bytes {
            return Err(AttachError::VolumeSize {
                volume: self.name.to_owned(),
                length_bytes: self.volume.length_bytes,
                needed_bytes,
            });
        }
        Ok(self.volume.id.pin())
    }

    fn create_store(&mut self, pages: u64) -> Result<H::Store, AttachError> {
        self.host.create_metadata(pages)
    }

    fn describe(&self) -> PathBuf {
        PathBuf::from(format!("{} ({})", self.name, self.volume.id))
    }
}

impl From<ServiceError> for AttachError {
    fn from(e: ServiceError) -> AttachError {
        AttachError::Restore(Box::new(e))
    }
}

#[cfg(test)]
mod tests;
