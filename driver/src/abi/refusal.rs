//! Why the filter refused the volume it started on: the volume below is not the one the
//! restore writes (`crate::filter::start`). A refused filter stays out of the volume's
//! way and says why in `GET_STATUS` ([`super::StatusCounters::refusal`]); every other
//! request of the service gets `STATUS_WRONG_VOLUME`.

/// Why the filter refused its volume. Crosses the ABI as a `u32`; zero means none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Refusal {
    /// Neither the parameters nor the metadata say which volume the restore writes
    /// (written before volumes were recorded): it cannot be told from any other.
    TargetUnrecorded = 1,
    /// The restore's target is recorded as something other than a Windows volume (a
    /// file or device of a Linux restore).
    TargetNotAVolume = 2,
    /// The recorded volume identity is malformed.
    TargetRecordInvalid = 3,
    /// The volume below did not say which partition it is (the query failed, or it
    /// answered something that does not decode, or it is not a partition).
    PartitionUnknown = 4,
    /// The volume is on a GPT disk and the restore's on an MBR one, or the other way.
    PartitionStyle = 5,
    /// Another GPT partition (its unique GUID), or another MBR disk (its signature).
    PartitionId = 6,
    /// The partition starts elsewhere on its disk.
    PartitionOffset = 7,
    /// The metadata was made for another volume than the parameters name.
    MetadataOfAnotherVolume = 8,
    /// The volume has another size than the restore's.
    VolumeSize = 9,
}

impl Refusal {
    /// Decodes the ABI value; zero and unknown values are `None`.
    pub const fn from_u32(value: u32) -> Option<Refusal> {
        Some(match value {
            1 => Refusal::TargetUnrecorded,
            2 => Refusal::TargetNotAVolume,
            3 => Refusal::TargetRecordInvalid,
            4 => Refusal::PartitionUnknown,
            5 => Refusal::PartitionStyle,
            6 => Refusal::PartitionId,
            7 => Refusal::PartitionOffset,
            8 => Refusal::MetadataOfAnotherVolume,
            9 => Refusal::VolumeSize,
            _ => return None,
        })
    }

    /// Every refusal, for tests and tables.
    pub const ALL: [Refusal; 9] = [
        Refusal::TargetUnrecorded,
        Refusal::TargetNotAVolume,
        Refusal::TargetRecordInvalid,
        Refusal::PartitionUnknown,
        Refusal::PartitionStyle,
        Refusal::PartitionId,
        Refusal::PartitionOffset,
        Refusal::MetadataOfAnotherVolume,
        Refusal::VolumeSize,
    ];

    /// What it means, for the service's one line.
    pub const fn describe(self) -> &'static str {
        match self {
            Refusal::TargetUnrecorded => {
                "the restore does not record which volume it writes (made by an older rehydrate)"
            }
            Refusal::TargetNotAVolume => "the restore's target is not a Windows volume",
            Refusal::TargetRecordInvalid => "the restore's record of its volume is malformed",
            Refusal::PartitionUnknown => "the volume did not say which partition it is",
            Refusal::PartitionStyle => {
                "the volume is on a disk of another partition style (GPT or MBR)"
            }
            Refusal::PartitionId => {
                "the volume is another partition (GPT partition GUID or MBR disk signature differs)"
            }
            Refusal::PartitionOffset => "the volume's partition starts elsewhere on its disk",
            Refusal::MetadataOfAnotherVolume => {
                "the metadata belongs to another volume than the one the parameters name"
            }
            Refusal::VolumeSize => "the volume's size differs from the restore's",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_and_zero_is_none() {
        for (i, r) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(r as u32, i as u32 + 1);
            assert_eq!(Refusal::from_u32(r as u32), Some(r));
            assert!(!r.describe().is_empty());
        }
        assert_eq!(Refusal::from_u32(0), None);
        assert_eq!(Refusal::from_u32(Refusal::ALL.len() as u32 + 1), None);
    }
}
