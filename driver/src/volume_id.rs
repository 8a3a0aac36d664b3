//! Which Windows volume a restore writes, and how the filter knows it again.
//!
//! `\Device\HarddiskVolumeN` is numbered in the order volumes arrive, so after a reboot
//! the name the filter is configured with (`TargetDevice`) can belong to another volume
//! of the same size, which would then receive backup data. A restore therefore records
//! the identity of its volume ([`VolumeId`], kept as a [`TargetPin`] of kind
//! [`TargetKind::WindowsVolume`] in the metadata header and in the filter's parameters),
//! and the filter compares it with what the volume below says it is before it touches
//! anything ([`check`], called by `crate::filter::start`).
//!
//! What identifies a volume is its partition: a GPT partition's unique GUID, or an MBR
//! disk's signature with the partition's offset (the pair Windows itself keys an MBR
//! volume by in `MountedDevices`), and the volume GUID the mount manager gave it. The
//! filter learns the partition from the volume below with two IOCTLs at start:
//! `IOCTL_DISK_GET_PARTITION_INFO_EX` (style, offset, length, GPT partition GUID) and
//! `IOCTL_DISK_GET_DRIVE_GEOMETRY_EX` (the disk's MBR signature). The service sends the
//! same two IOCTLs to the same volume when it records the pin, and both decode the
//! answers here ([`decode_partition`]), so the two cannot disagree about what a volume
//! is. The volume GUID is the mount manager's name, which the filter cannot ask for
//! while the volume is starting: the service records it and compares the whole pin
//! whenever it opens the metadata; the filter compares the partition.
//!
//! The pin's 48 bytes:
//!
//! ```text
//! offset size field
//!      0   16 volume GUID        as Windows lays a GUID out in memory (Data1, Data2,
//!                                Data3 little-endian, then Data4); zero if unknown
//!     16   16 partition id       GPT: the partition's unique GUID; MBR: the disk
//!                                signature u32 LE, then 12 zero bytes
//!     32    8 partition offset   bytes from the start of the disk, u64 LE
//!     40    1 partition style    0 MBR, 1 GPT (PARTITION_STYLE)
//!     41    7 reserved           zero
//! ```

use crate::abi::{ctl_code, Refusal, FILE_ANY_ACCESS, METHOD_BUFFERED};
use crate::meta::{TargetKind, TargetPin, TARGET_ID_BYTES};
use crate::status::Status;

/// `IOCTL_DISK_BASE` (ntdddisk.h).
const IOCTL_DISK_BASE: u32 = 0x0000_0007;
/// `IOCTL_DISK_GET_PARTITION_INFO_EX`: `PARTITION_INFORMATION_EX` of the partition a
/// volume (or partition device) is on.
pub const IOCTL_DISK_GET_PARTITION_INFO_EX: u32 =
    ctl_code(IOCTL_DISK_BASE, 0x0012, METHOD_BUFFERED, FILE_ANY_ACCESS);
/// `IOCTL_DISK_GET_DRIVE_GEOMETRY_EX`: `DISK_GEOMETRY_EX`, whose data carries the
/// disk's `DISK_PARTITION_INFO` (the MBR signature or the GPT disk GUID).
pub const IOCTL_DISK_GET_DRIVE_GEOMETRY_EX: u32 =
    ctl_code(IOCTL_DISK_BASE, 0x0028, METHOD_BUFFERED, FILE_ANY_ACCESS);
const _: () = assert!(IOCTL_DISK_GET_PARTITION_INFO_EX == 0x0007_0048);
const _: () = assert!(IOCTL_DISK_GET_DRIVE_GEOMETRY_EX == 0x0007_00A0);

/// `sizeof(PARTITION_INFORMATION_EX)`, and the output buffer offered for it:
///
/// ```text
/// offset size field
///      0    4 PartitionStyle       0 MBR, 1 GPT, 2 RAW
///      8    8 StartingOffset       bytes, i64
///     16    8 PartitionLength      bytes, i64
///     24    4 PartitionNumber
///     28    2 RewritePartition, IsServicePartition
///     32  112 union: Mbr (24 bytes) or Gpt: PartitionType GUID at 32, PartitionId
///             GUID at 48, Attributes at 64, Name at 72
///    144      end
/// ```
pub const PARTITION_INFO_EX_BYTES: usize = 144;
/// The output buffer offered for `DISK_GEOMETRY_EX`, which is variable: the geometry
/// (24 bytes) and the disk size (8), then `DISK_PARTITION_INFO` (its own size at 32,
/// style at 36, MBR signature at 40) and `DISK_DETECTION_INFO`: 96 bytes today.
pub const GEOMETRY_EX_BUFFER_BYTES: usize = 256;

const PI_STYLE: usize = 0;
const PI_OFFSET: usize = 8;
const PI_LENGTH: usize = 16;
const PI_GPT_ID: usize = 48;
const GEO_PARTITION_INFO: usize = 32;
/// The part of `DISK_PARTITION_INFO` read: its size, its style and the MBR signature.
const GEO_PARTITION_INFO_READ: usize = 12;

const PARTITION_STYLE_MBR: u32 = 0;
const PARTITION_STYLE_GPT: u32 = 1;

const ID_VOLUME: usize = 0;
const ID_PARTITION: usize = 16;
const ID_OFFSET: usize = 32;
const ID_STYLE: usize = 40;
const ID_END: usize = 41;
const _: () = assert!(ID_PARTITION == ID_VOLUME + 16 && ID_OFFSET == ID_PARTITION + 16);
const _: () = assert!(ID_STYLE == ID_OFFSET + 8 && ID_END <= TARGET_ID_BYTES);
const _: () = assert!(PI_GPT_ID + 16 <= PARTITION_INFO_EX_BYTES);
const _: () = assert!(GEO_PARTITION_INFO + GEO_PARTITION_INFO_READ <= GEOMETRY_EX_BUFFER_BYTES);

/// Which partition: what tells it from every other one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionId {
    /// On an MBR disk: the disk's signature (the offset tells the partition).
    Mbr {
        /// The 32-bit signature in the disk's master boot record.
        disk_signature: u32,
    },
    /// On a GPT disk: the partition's unique GUID (as Windows lays it out in memory).
    Gpt {
        /// `PARTITION_INFORMATION_GPT.PartitionId`.
        partition_guid: [u8; 16],
    },
}

impl PartitionId {
    const fn style(&self) -> u8 {
        match self {
            PartitionId::Mbr { .. } => PARTITION_STYLE_MBR as u8,
            PartitionId::Gpt { .. } => PARTITION_STYLE_GPT as u8,
        }
    }
}

/// What the volume below says it is (the two IOCTLs, decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Which partition.
    pub id: PartitionId,
    /// Where it starts on its disk.
    pub offset_bytes: u64,
    /// Its length.
    pub length_bytes: u64,
}

/// The identity of a Windows volume a restore writes: see the module comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeId {
    /// The mount manager's `Volume{GUID}`, as Windows lays a GUID out in memory.
    pub volume_guid: [u8; 16],
    /// The partition it is on.
    pub partition: PartitionId,
    /// Where that partition starts on its disk.
    pub offset_bytes: u64,
}

/// Why the volume below did not say what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The IOCTL failed.
    #[error("IOCTL {ioctl:#010x} failed with status {:#010x}", status.0)]
    Failed {
        /// The IOCTL.
        ioctl: u32,
        /// Its status.
        status: Status,
    },
    /// The answer is shorter than the structure it must hold.
    #[error("IOCTL {ioctl:#010x} answered {got} bytes, {needed} needed")]
    Short {
        /// The IOCTL.
        ioctl: u32,
        /// Bytes needed.
        needed: usize,
        /// Bytes answered.
        got: usize,
    },
    /// Not an MBR or GPT partition (`PARTITION_STYLE_RAW`, or a value this build does
    /// not know): nothing stable identifies it.
    #[error("partition style {0} is neither MBR nor GPT")]
    Style(u32),
    /// The disk's partition table is not the style the partition reports.
    #[error("the disk says partition style {disk}, the partition {partition}")]
    StylesDisagree {
        /// Style in `DISK_PARTITION_INFO`.
        disk: u32,
        /// Style in `PARTITION_INFORMATION_EX`.
        partition: u32,
    },
    /// A negative offset or length, or a `DISK_PARTITION_INFO` too small to hold a
    /// signature.
    #[error("the partition information is malformed")]
    Malformed,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn guid_at(bytes: &[u8], at: usize) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&bytes[at..at + 16]);
    g
}

fn answered(ioctl: u32, answer: Result<&[u8], Status>, needed: usize) -> Result<&[u8], ProbeError> {
    let bytes = answer.map_err(|status| ProbeError::Failed { ioctl, status })?;
    if bytes.len() < needed {
        return Err(ProbeError::Short {
            ioctl,
            needed,
            got: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Decodes the answers of `IOCTL_DISK_GET_PARTITION_INFO_EX` and
/// `IOCTL_DISK_GET_DRIVE_GEOMETRY_EX` (each the bytes returned, or the status the IOCTL
/// failed with). The geometry is read only for an MBR partition.
pub fn decode_partition(
    partition_info: Result<&[u8], Status>,
    geometry: Result<&[u8], Status>,
) -> Result<Partition, ProbeError> {
    let info = answered(
        IOCTL_DISK_GET_PARTITION_INFO_EX,
        partition_info,
        PARTITION_INFO_EX_BYTES,
    )?;
    let style = u32_at(info, PI_STYLE);
    let signed = |at| {
        i64::try_from(u64_at(info, at))
            .ok()
            .and_then(|v| u64::try_from(v).ok())
    };
    let (Some(offset_bytes), Some(length_bytes)) = (signed(PI_OFFSET), signed(PI_LENGTH)) else {
        return Err(ProbeError::Malformed);
    };
    let id = match style {
        PARTITION_STYLE_GPT => PartitionId::Gpt {
            partition_guid: guid_at(info, PI_GPT_ID),
        },
        PARTITION_STYLE_MBR => {
            let geometry = answered(
                IOCTL_DISK_GET_DRIVE_GEOMETRY_EX,
                geometry,
                GEO_PARTITION_INFO + GEO_PARTITION_INFO_READ,
            )?;
            let info_size = u32_at(geometry, GEO_PARTITION_INFO) as usize;
            if info_size < GEO_PARTITION_INFO_READ {
                return Err(ProbeError::Malformed);
            }
            let disk_style = u32_at(geometry, GEO_PARTITION_INFO + 4);
            if disk_style != PARTITION_STYLE_MBR {
                return Err(ProbeError::StylesDisagree {
                    disk: disk_style,
                    partition: style,
                });
            }
            PartitionId::Mbr {
                disk_signature: u32_at(geometry, GEO_PARTITION_INFO + 8),
            }
        }
        other => return Err(ProbeError::Style(other)),
    };
    Ok(Partition {
        id,
        offset_bytes,
        length_bytes,
    })
}

impl VolumeId {
    /// The volume `volume_guid` on `partition`.
    pub fn new(volume_guid: [u8; 16], partition: &Partition) -> VolumeId {
        VolumeId {
            volume_guid,
            partition: partition.id,
            offset_bytes: partition.offset_bytes,
        }
    }

    /// As the metadata header and the filter's parameters record it.
    pub fn pin(&self) -> TargetPin {
        let mut id = [0u8; TARGET_ID_BYTES];
        id[ID_VOLUME..ID_PARTITION].copy_from_slice(&self.volume_guid);
        match self.partition {
            PartitionId::Mbr { disk_signature } => {
                id[ID_PARTITION..ID_PARTITION + 4].copy_from_slice(&disk_signature.to_le_bytes());
            }
            PartitionId::Gpt { partition_guid } => {
                id[ID_PARTITION..ID_OFFSET].copy_from_slice(&partition_guid);
            }
        }
        id[ID_OFFSET..ID_STYLE].copy_from_slice(&self.offset_bytes.to_le_bytes());
        id[ID_STYLE] = self.partition.style();
        TargetPin {
            kind: TargetKind::WindowsVolume,
            id,
        }
    }

    /// The volume a pin records, or why the filter cannot go by it.
    pub fn from_pin(pin: &TargetPin) -> Result<VolumeId, Refusal> {
        match pin.kind {
            TargetKind::WindowsVolume => {}
            TargetKind::Unrecorded => return Err(Refusal::TargetUnrecorded),
            TargetKind::UnixFile | TargetKind::UnixBlockDevice => {
                return Err(Refusal::TargetNotAVolume)
            }
        }
        let id = &pin.id;
        // Negative space: one volume has one encoding.
        if id[ID_END..].iter().any(|&b| b != 0) {
            return Err(Refusal::TargetRecordInvalid);
        }
        let partition = match u32::from(id[ID_STYLE]) {
            PARTITION_STYLE_MBR if id[ID_PARTITION + 4..ID_OFFSET].iter().all(|&b| b == 0) => {
                PartitionId::Mbr {
                    disk_signature: u32_at(id, ID_PARTITION),
                }
            }
            PARTITION_STYLE_GPT => PartitionId::Gpt {
                partition_guid: guid_at(id, ID_PARTITION),
            },
            _ => return Err(Refusal::TargetRecordInvalid),
        };
        Ok(VolumeId {
            volume_guid: guid_at(id, ID_VOLUME),
            partition,
            offset_bytes: u64_at(id, ID_OFFSET),
        })
    }
}

/// The filter's decision: is the volume below (`found`) the one `pinned` records? The
/// volume GUID is not compared (the filter cannot learn it; see the module comment).
pub fn check(pinned: &TargetPin, found: &Result<Partition, ProbeError>) -> Result<(), Refusal> {
    let pinned = VolumeId::from_pin(pinned)?;
    let found = found.as_ref().map_err(|_| Refusal::PartitionUnknown)?;
    if pinned.partition.style() != found.id.style() {
        return Err(Refusal::PartitionStyle);
    }
    if pinned.partition != found.id {
        return Err(Refusal::PartitionId);
    }
    if pinned.offset_bytes != found.offset_bytes {
        return Err(Refusal::PartitionOffset);
    }
    Ok(())
}

/// Parses a GUID as Windows writes it, `{0b7d4cf1-2a3e-4c5f-9d8a-1f2e3d4c5b6a}` (braces
/// optional, any case), into its in-memory layout.
pub fn parse_guid(text: &str) -> Option<[u8; 16]> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let groups = [8usize, 4, 4, 4, 12];
    let mut hex = [0u8; 16];
    let mut n = 0;
    let mut parts = inner.split('-');
    for len in groups {
        let part = parts.next()?;
        if part.len() != len {
            return None;
        }
        let bytes = part.as_bytes();
        for pair in bytes.chunks(2) {
            let digit = |c: u8| (c as char).to_digit(16);
            hex[n] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
            n += 1;
        }
    }
    if parts.next().is_some() {
        return None;
    }
    // Data1, Data2 and Data3 are little-endian in memory; Data4 is bytes in order.
    hex[0..4].reverse();
    hex[4..6].reverse();
    hex[6..8].reverse();
    Some(hex)
}

/// Writes a GUID's in-memory layout as `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}`.
pub struct GuidText(pub [u8; 16]);

impl core::fmt::Display for GuidText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{{{:08x}-{:04x}-{:04x}-",
            u32_at(g, 0),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]])
        )?;
        for (i, b) in g[8..].iter().enumerate() {
            if i == 2 {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        f.write_str("}")
    }
}

impl core::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Volume{}", GuidText(self.volume_guid))?;
        match self.partition {
            PartitionId::Gpt { partition_guid } => {
                write!(f, " on GPT partition {}", GuidText(partition_guid))?
            }
            PartitionId::Mbr { disk_signature } => write!(f, " on MBR disk {disk_signature:08x}")?,
        }
        write!(f, " at offset {}", self.offset_bytes)
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod answers;
#[cfg(test)]
mod tests;
