//! Whether the filter restores the volume it starts on.
//!
//! The shell names the volume to filter by its `\Device\HarddiskVolumeN`, which Windows
//! may give another volume after a reboot. So at start, before it touches anything, the
//! shell asks the volume below what it is ([`Probe`]: its length, and the raw answers
//! of the two partition IOCTLs of [`crate::volume_id`]) and lets this module decide:
//!
//! 1. [`check_volume`], before the metadata file is opened: the volume must be the one
//!    the filter's parameters pin. Another volume is refused without its metadata being
//!    touched (the metadata may even live on it).
//! 2. [`check_metadata`], once the metadata's header is read: it must pin that same
//!    volume, and be for a volume of this size.
//!
//! A refused volume gets [`super::Refused`]: its own I/O goes down untouched and the
//! service is told why. Any other failure at start (metadata missing, damaged, or of
//! another backup while the volume is the pinned one) still fails the start: that
//! volume is the half-restored one, and exposing it raw would show unrestored regions.

use crate::abi::Refusal;
use crate::meta::TargetPin;
use crate::status::Status;
use crate::volume_id::{self, Partition, ProbeError};

/// What the volume below answered at start.
#[derive(Clone, Copy, Debug)]
pub struct Probe<'a> {
    /// Its length (`IOCTL_DISK_GET_LENGTH_INFO`).
    pub volume_size_bytes: u64,
    /// The bytes `IOCTL_DISK_GET_PARTITION_INFO_EX` returned, or its failure.
    pub partition_info: Result<&'a [u8], Status>,
    /// The bytes `IOCTL_DISK_GET_DRIVE_GEOMETRY_EX` returned, or its failure.
    pub geometry: Result<&'a [u8], Status>,
}

impl Probe<'_> {
    /// The partition the volume is on.
    pub fn partition(&self) -> Result<Partition, ProbeError> {
        volume_id::decode_partition(self.partition_info, self.geometry)
    }
}

/// The volume below against the parameters' pin (`TargetPin::UNRECORDED` when the
/// parameters have none).
pub fn check_volume(parameters: &TargetPin, probe: &Probe<'_>) -> Result<(), Refusal> {
    volume_id::check(parameters, &probe.partition())
}

/// The metadata against the volume below and the parameters: the target its header
/// records (`recorded`) and the size of the volume it was made for.
pub fn check_metadata(
    recorded: &TargetPin,
    recorded_size_bytes: u64,
    parameters: &TargetPin,
    probe: &Probe<'_>,
) -> Result<(), Refusal> {
    check_volume(recorded, probe)?;
    if recorded != parameters {
        return Err(Refusal::MetadataOfAnotherVolume);
    }
    if recorded_size_bytes != probe.volume_size_bytes {
        return Err(Refusal::VolumeSize);
    }
    Ok(())
}
