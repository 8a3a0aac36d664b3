//! Which volume the machine's filter starts on, decided as the KMDF shell decides it
//! (`driver/kmdf/src/start.rs`): the portable start decision over the simulated
//! partition's answers, first the volume against the parameters' pin, then the
//! metadata's header against both, before the metadata is opened.
//!
//! The simulator boots the restore's own volume, so a refusal of metadata that records
//! this very volume is a bug in the decision or the encodings: a verifier failure. Metadata
//! that records another volume (a test puts it there) is refused as the shell refuses it:
//! the filter stays out of the volume's way (`SimWdf::refused`) and nothing is written.

use rehydrate_driver::abi::Refusal;
use rehydrate_driver::filter::start::{self, Probe};
use rehydrate_driver::meta::{Binding, MetaError, Metadata, SourcePin, TargetPin};
use rehydrate_driver::volume_id::answers::{geometry, partition_info};
use rehydrate_driver::volume_id::VolumeId;

use super::Machine;
use crate::stack::partition;

/// The mount manager's name of the simulated volume.
const VOLUME_GUID: [u8; 16] = *b"rehydrate-sim-vo";

/// What the start decision came to.
pub(crate) enum Decision {
    /// The restore's volume: open the metadata and restore.
    Restore,
    /// Refused; `own` when the metadata records this very volume (a bug).
    Refused {
        /// Why.
        refusal: Refusal,
        /// The metadata records this volume at its size: the refusal is wrong.
        own: bool,
    },
}

impl Machine {
    /// The volume's pin, as the filter's parameters and the metadata record it.
    pub(crate) fn volume_pin(&self) -> TargetPin {
        VolumeId::new(VOLUME_GUID, &partition::identity(&self.wdf.k.lower)).pin()
    }

    /// What the metadata is bound to: no source (the simulated service attaches by
    /// backup id alone) and this machine's volume.
    pub(crate) fn binding(&self) -> Binding {
        Binding {
            source: SourcePin::UNRECORDED,
            target: self.volume_pin(),
        }
    }

    /// The start decision on this volume, reading only the metadata's header.
    pub(crate) fn start_decision(&mut self) -> Result<Decision, MetaError> {
        let lower = &self.wdf.k.lower;
        let found = partition::identity(lower);
        let info = partition_info(&found);
        let disk = geometry(&found, lower.disk.sectors() as u64 * 512);
        let volume_size_bytes = lower.volume_sectors * 512;
        let probe = Probe {
            volume_size_bytes,
            partition_info: Ok(&info),
            geometry: Ok(&disk),
        };
        let pin = self.volume_pin();
        if let Err(refusal) = start::check_volume(&pin, &probe) {
            return Ok(Decision::Refused { refusal, own: true });
        }
        let header = Metadata::read_header(&mut self.store)?;
        let recorded = header.binding.target;
        let recorded_size_bytes = header.identity.volume_size_bytes;
        Ok(
            match start::check_metadata(&recorded, recorded_size_bytes, &pin, &probe) {
                Ok(()) => Decision::Restore,
                Err(refusal) => Decision::Refused {
                    refusal,
                    own: recorded == pin && recorded_size_bytes == volume_size_bytes,
                },
            },
        )
    }
}
