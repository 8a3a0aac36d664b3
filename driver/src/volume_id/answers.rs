//! What a partition's stack answers the two IOCTLs with, byte for byte (the layouts in
//! the parent module): for tests, and for the simulator's partition device.

use super::{
    Partition, PartitionId, GEOMETRY_EX_BUFFER_BYTES, GEO_PARTITION_INFO, PARTITION_INFO_EX_BYTES,
    PARTITION_STYLE_GPT, PARTITION_STYLE_MBR, PI_GPT_ID, PI_LENGTH, PI_OFFSET, PI_STYLE,
};

/// Bytes of `DISK_PARTITION_INFO`.
const DISK_PARTITION_INFO_BYTES: u32 = 24;
/// Bytes `IOCTL_DISK_GET_DRIVE_GEOMETRY_EX` returns today (geometry, size, partition
/// and detection information).
pub const GEOMETRY_EX_ANSWER_BYTES: usize = 96;
const _: () = assert!(GEOMETRY_EX_ANSWER_BYTES <= GEOMETRY_EX_BUFFER_BYTES);

/// `PARTITION_INFORMATION_EX` of `partition` (an MBR one as type 0x07, NTFS).
pub fn partition_info(partition: &Partition) -> [u8; PARTITION_INFO_EX_BYTES] {
    let mut out = [0u8; PARTITION_INFO_EX_BYTES];
    let style = match partition.id {
        PartitionId::Mbr { .. } => {
            out[32] = 0x07;
            out[34] = 1;
            PARTITION_STYLE_MBR
        }
        PartitionId::Gpt { partition_guid } => {
            out[PI_GPT_ID..PI_GPT_ID + 16].copy_from_slice(&partition_guid);
            PARTITION_STYLE_GPT
        }
    };
    out[PI_STYLE..PI_STYLE + 4].copy_from_slice(&style.to_le_bytes());
    out[PI_OFFSET..PI_OFFSET + 8].copy_from_slice(&partition.offset_bytes.to_le_bytes());
    out[PI_LENGTH..PI_LENGTH + 8].copy_from_slice(&partition.length_bytes.to_le_bytes());
    // PartitionNumber: 1.
    out[24] = 1;
    out
}

/// `DISK_GEOMETRY_EX` of the disk `partition` is on, of `disk_bytes`.
pub fn geometry(partition: &Partition, disk_bytes: u64) -> [u8; GEOMETRY_EX_ANSWER_BYTES] {
    let mut out = [0u8; GEOMETRY_EX_ANSWER_BYTES];
    // MediaType FixedMedia, 512-byte sectors.
    out[8] = 12;
    out[20..24].copy_from_slice(&512u32.to_le_bytes());
    out[24..32].copy_from_slice(&disk_bytes.to_le_bytes());
    let info = GEO_PARTITION_INFO;
    out[info..info + 4].copy_from_slice(&DISK_PARTITION_INFO_BYTES.to_le_bytes());
    match partition.id {
        PartitionId::Mbr { disk_signature } => {
            out[info + 4..info + 8].copy_from_slice(&PARTITION_STYLE_MBR.to_le_bytes());
            out[info + 8..info + 12].copy_from_slice(&disk_signature.to_le_bytes());
        }
        PartitionId::Gpt { .. } => {
            out[info + 4..info + 8].copy_from_slice(&PARTITION_STYLE_GPT.to_le_bytes());
            // The disk GUID: any value; the filter reads only the partition's.
            out[info + 8..info + 24].fill(0x5A);
        }
    }
    out
}
