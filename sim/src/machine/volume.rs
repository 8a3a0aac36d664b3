//! Which volume the machine's filter starts on: the restore's, recorded in its metadata
//! as `rehydrate attach` records it, and checked at start by the portable start
//! decision over the simulated partition's answers, as the KMDF shell does (`start.rs`
//! there). The simulator always boots the restore's own volume, so a refusal here is a
//! bug in the decision or the encodings: a verifier failure.

use rehydrate_driver::filter::start::{self, Probe};
use rehydrate_driver::meta::{Binding, Metadata, SourcePin, TargetPin};
use rehydrate_driver::volume_id::answers::{geometry, partition_info};
use rehydrate_driver::volume_id::VolumeId;

use super::Machine;
use crate::stack::partition;
use crate::verifier::Rule;

/// The mount manager's name of the simulated volume.
const VOLUME_GUID: [u8; 16] = *b"rehydrate-sim-vo";

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

    /// The start decision on this volume with `meta` opened: true when the filter goes
    /// on (always, unless the decision or an encoding is wrong).
    pub(crate) fn volume_is_the_restores(&mut self, meta: &Metadata) -> bool {
        let lower = &self.wdf.k.lower;
        let found = partition::identity(lower);
        let info = partition_info(&found);
        let disk = geometry(&found, lower.disk.sectors() as u64 * 512);
        let probe = Probe {
            volume_size_bytes: lower.volume_sectors * 512,
            partition_info: Ok(&info),
            geometry: Ok(&disk),
        };
        let pin = self.volume_pin();
        let decided = start::check_volume(&pin, &probe).and_then(|()| {
            let recorded = meta.binding().target;
            start::check_metadata(&recorded, meta.identity().volume_size_bytes, &pin, &probe)
        });
        match decided {
            Ok(()) => true,
            Err(refusal) => {
                let boots = self.boots;
                self.k().v.fail(
                    Rule::Driver,
                    format!(
                        "the filter refused its own volume at boot {boots}: {}",
                        refusal.describe()
                    ),
                );
                false
            }
        }
    }
}
