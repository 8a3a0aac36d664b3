//! The fixed-size messages: attach, fetch failure, status counters, control.

use super::wire::{self, Writer};
use super::Refusal;
use super::{
    AbiError, MessageKind, RestoreMode, ATTACH_BYTES, CONTROL_BYTES, FETCH_FAILED_BYTES,
    HEADER_BYTES, STATUS_COUNTERS_BYTES,
};
use crate::geometry::Geometry;
use crate::status::FailReason;

/// Service → driver, first: which restore the service drives. The driver compares it
/// with the volume and the restore in its metadata and refuses a mismatch
/// ([`Attach::check_matches`]), so a service can never hydrate a volume from the wrong
/// backup or with the wrong region size.
///
/// ```text
/// offset size field
///      0    8 header             kind 1, total_len 56
///      8    8 volume_size_bytes  non-zero multiple of 512
///     16    4 region_size_bytes  power of two, 4 KiB..=1 MiB
///     20    4 mode               RestoreMode: 1 in place, 2 overlay (reserved zero in
///                                version 1)
///     24   32 backup_identity    opaque to the driver (the backup version's hash)
///     56      end
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Attach {
    /// Size of the volume being restored.
    pub volume_size_bytes: u64,
    /// Region size of the restore.
    pub region_size_bytes: u32,
    /// Identity of the backup version the data comes from.
    pub backup_identity: [u8; 32],
    /// How the restore treats the application's writes.
    pub mode: RestoreMode,
}

impl Attach {
    /// The geometry the attach describes; the same check the decoder applies.
    pub fn geometry(&self) -> Result<Geometry, AbiError> {
        Ok(Geometry::new(
            self.volume_size_bytes,
            self.region_size_bytes,
        )?)
    }

    /// Refuses an attach that does not describe `expected` (what the driver knows of the
    /// volume and the restore in progress), naming the first field that differs.
    pub fn check_matches(&self, expected: &Attach) -> Result<(), AbiError> {
        if self.volume_size_bytes != expected.volume_size_bytes {
            return Err(AbiError::VolumeSizeMismatch {
                attached: self.volume_size_bytes,
                volume: expected.volume_size_bytes,
            });
        }
        if self.region_size_bytes != expected.region_size_bytes {
            return Err(AbiError::RegionSizeMismatch {
                attached: self.region_size_bytes,
                volume: expected.region_size_bytes,
            });
        }
        if self.backup_identity != expected.backup_identity {
            return Err(AbiError::BackupIdentityMismatch);
        }
        if self.mode != expected.mode {
            return Err(AbiError::ModeMismatch {
                attached: self.mode,
                volume: expected.mode,
            });
        }
        Ok(())
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub const fn encoded_len(&self) -> usize {
        ATTACH_BYTES
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        self.geometry()?;
        let mut w = Writer::new(out, ATTACH_BYTES)?;
        wire::write_header(&mut w, MessageKind::Attach, ATTACH_BYTES)?;
        w.u64(self.volume_size_bytes)?;
        w.u32(self.region_size_bytes)?;
        w.u32(self.mode as u32)?;
        w.put(&self.backup_identity)?;
        Ok(w.finish(ATTACH_BYTES))
    }

    /// Decodes a whole buffer that must hold exactly one attach.
    pub fn decode(bytes: &[u8]) -> Result<Attach, AbiError> {
        let mut r = wire::body(bytes, MessageKind::Attach)?;
        wire::exact_len(bytes, MessageKind::Attach, ATTACH_BYTES)?;
        let volume_size_bytes = r.u64()?;
        let region_size_bytes = r.u32()?;
        let mode = r.u32()?;
        let backup_identity = r.bytes32()?;
        let attach = Attach {
            volume_size_bytes,
            region_size_bytes,
            backup_identity,
            mode: RestoreMode::from_u32(mode).ok_or(AbiError::UnknownMode(mode))?,
        };
        attach.geometry()?;
        Ok(attach)
    }
}

/// Service → driver: the range could not be fetched; requests held on it complete with
/// [`FailReason::status`]. The range need not be one the driver asked for exactly (the
/// service may have coalesced), but it is always sector-aligned and non-empty.
///
/// ```text
/// offset size field
///      0    8 header    kind 4, total_len 32
///      8    8 offset    multiple of 512
///     16    8 len       non-zero multiple of 512; offset + len fits in u64
///     24    4 reason    FailReason (1..=5)
///     28    4 reserved  zero
///     32      end
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FetchFailed {
    /// Byte offset of the range.
    pub offset: u64,
    /// Byte length of the range.
    pub len: u64,
    /// Why it failed.
    pub reason: FailReason,
}

impl FetchFailed {
    /// Bytes [`encode`](Self::encode) writes.
    pub const fn encoded_len(&self) -> usize {
        FETCH_FAILED_BYTES
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        wire::check_range(self.offset, self.len)?;
        let mut w = Writer::new(out, FETCH_FAILED_BYTES)?;
        wire::write_header(&mut w, MessageKind::FetchFailed, FETCH_FAILED_BYTES)?;
        w.u64(self.offset)?;
        w.u64(self.len)?;
        w.u32(self.reason as u32)?;
        w.u32(0)?;
        Ok(w.finish(FETCH_FAILED_BYTES))
    }

    /// Decodes a whole buffer that must hold exactly one fetch failure.
    pub fn decode(bytes: &[u8]) -> Result<FetchFailed, AbiError> {
        let mut r = wire::body(bytes, MessageKind::FetchFailed)?;
        wire::exact_len(bytes, MessageKind::FetchFailed, FETCH_FAILED_BYTES)?;
        let offset = r.u64()?;
        let len = r.u64()?;
        let reason = r.u32()?;
        r.reserved_u32()?;
        wire::check_range(offset, len)?;
        let reason = FailReason::from_u32(reason).ok_or(AbiError::UnknownReason(reason))?;
        Ok(FetchFailed {
            offset,
            len,
            reason,
        })
    }
}

/// Where the driver's restore stands. Crosses the ABI as a `u32`; zero is never a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DriverState {
    /// No service attached; requests for missing regions fail with
    /// `STATUS_DEVICE_NOT_READY`.
    Detached = 1,
    /// A service attached but has not sent `Start`; missing reads are held.
    Attached = 2,
    /// Restoring: misses are sent to the service, hydrates are written.
    Running = 3,
    /// The service paused the restore; held requests stay held.
    Paused = 4,
    /// Every region is restored; the filter is a pass-through.
    AllRestored = 5,
    /// Overlay mode: a cutover is merging the overlay into the destination.
    Merging = 6,
    /// Overlay mode: the cutover is durable; the volume is the destination.
    Merged = 7,
}

impl DriverState {
    /// Decodes the ABI value; unknown values are `None`.
    pub const fn from_u32(value: u32) -> Option<DriverState> {
        match value {
            1 => Some(DriverState::Detached),
            2 => Some(DriverState::Attached),
            3 => Some(DriverState::Running),
            4 => Some(DriverState::Paused),
            5 => Some(DriverState::AllRestored),
            6 => Some(DriverState::Merging),
            7 => Some(DriverState::Merged),
            _ => None,
        }
    }
}

/// Driver → service: the counters behind `rehydrate status`.
///
/// ```text
/// offset size field
///      0    8 header                 kind 7, total_len 96
///      8    4 state                  DriverState (1..=7)
///     12    4 mode                   RestoreMode
///     16    4 refusal                0, or why the filter refused its volume (Refusal,
///                                    1..=9); only with state Detached
///     20    4 reserved               zero
///     24    8 regions_total
///     32    8 regions_restored       <= regions_total
///     40    8 held_requests          requests held now
///     48    8 misses                 on-demand regions requested so far
///     56    8 bytes_hydrated
///     64    8 hydrate_dropped_stale  hydrate writes dropped: region restored or
///                                    overwritten meanwhile (rule 4)
///     72    8 fetch_failures         FetchFailed messages received
///     80    8 requests_failed        requests completed with an error
///     88    8 overlay_regions        overlay mode: regions in O (in memory); else 0
///     96      end
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct StatusCounters {
    /// Where the restore stands.
    pub state: DriverState,
    /// Why the filter refused the volume it started on (then it stays detached and
    /// out of the volume's way); `None` on the volume the restore writes.
    pub refusal: Option<Refusal>,
    /// The restore's mode.
    pub mode: RestoreMode,
    /// Regions in the volume.
    pub regions_total: u64,
    /// Regions restored.
    pub regions_restored: u64,
    /// Requests held waiting for data now.
    pub held_requests: u64,
    /// On-demand regions requested so far.
    pub misses: u64,
    /// Bytes written from hydrates.
    pub bytes_hydrated: u64,
    /// Hydrate writes dropped because the region was restored or overwritten meanwhile.
    pub hydrate_dropped_stale: u64,
    /// Fetch failures the service reported.
    pub fetch_failures: u64,
    /// Requests completed with an error.
    pub requests_failed: u64,
    /// Overlay mode: regions whose current data is in the overlay.
    pub overlay_regions: u64,
}

impl StatusCounters {
    /// Detached with nothing counted: a driver before its first attach, or one that
    /// refused its volume (`refusal`).
    pub const fn detached(regions_total: u64, refusal: Option<Refusal>) -> StatusCounters {
        StatusCounters {
            state: DriverState::Detached,
            mode: RestoreMode::InPlace,
            refusal,
            regions_total,
            regions_restored: 0,
            held_requests: 0,
            misses: 0,
            bytes_hydrated: 0,
            hydrate_dropped_stale: 0,
            fetch_failures: 0,
            requests_failed: 0,
            overlay_regions: 0,
        }
    }

    fn check(&self) -> Result<(), AbiError> {
        // Pair assertion: a refused filter is detached for good.
        if self.refusal.is_some() && self.state != DriverState::Detached {
            return Err(AbiError::RefusedNotDetached { state: self.state });
        }
        if self.regions_restored > self.regions_total {
            return Err(AbiError::RestoredCount {
                restored: self.regions_restored,
                total: self.regions_total,
            });
        }
        Ok(())
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub const fn encoded_len(&self) -> usize {
        STATUS_COUNTERS_BYTES
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        self.check()?;
        let mut w = Writer::new(out, STATUS_COUNTERS_BYTES)?;
        wire::write_header(&mut w, MessageKind::StatusCounters, STATUS_COUNTERS_BYTES)?;
        w.u32(self.state as u32)?;
        w.u32(self.mode as u32)?;
        w.u32(self.refusal.map_or(0, |r| r as u32))?;
        w.u32(0)?;
        for counter in [
            self.regions_total,
            self.regions_restored,
            self.held_requests,
            self.misses,
            self.bytes_hydrated,
            self.hydrate_dropped_stale,
            self.fetch_failures,
            self.requests_failed,
            self.overlay_regions,
        ] {
            w.u64(counter)?;
        }
        Ok(w.finish(STATUS_COUNTERS_BYTES))
    }

    /// Decodes a whole buffer that must hold exactly one set of counters.
    pub fn decode(bytes: &[u8]) -> Result<StatusCounters, AbiError> {
        let mut r = wire::body(bytes, MessageKind::StatusCounters)?;
        wire::exact_len(bytes, MessageKind::StatusCounters, STATUS_COUNTERS_BYTES)?;
        let state = r.u32()?;
        let mode = r.u32()?;
        let refusal = r.u32()?;
        let _reserved = r.u32()?;
        let state = DriverState::from_u32(state).ok_or(AbiError::UnknownState(state))?;
        let mode = RestoreMode::from_u32(mode).ok_or(AbiError::UnknownMode(mode))?;
        let refusal = match refusal {
            0 => None,
            code => Some(Refusal::from_u32(code).ok_or(AbiError::UnknownRefusal(code))?),
        };
        let counters = StatusCounters {
            state,
            mode,
            refusal,
            regions_total: r.u64()?,
            regions_restored: r.u64()?,
            held_requests: r.u64()?,
            misses: r.u64()?,
            bytes_hydrated: r.u64()?,
            hydrate_dropped_stale: r.u64()?,
            fetch_failures: r.u64()?,
            requests_failed: r.u64()?,
            overlay_regions: r.u64()?,
        };
        counters.check()?;
        Ok(counters)
    }
}

/// What the service asks the driver to do. Crosses the ABI as a `u32`; zero is never a
/// command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ControlCommand {
    /// Begin restoring after an attach.
    Start = 1,
    /// Stop asking for ranges; held requests stay held.
    Pause = 2,
    /// Continue after a pause.
    Resume = 3,
    /// The service is leaving: pended `GET_MISSING` requests complete, and reads of
    /// missing regions fail until a service attaches again.
    Detach = 4,
    /// Overlay mode: begin the cutover with the online merge (copy while the volume is
    /// used; hold it only for the regions written since). Refused unless every region
    /// is durably restored.
    MergeOnline = 5,
    /// Overlay mode: begin the cutover with the volume held for the whole merge.
    Cutover = 6,
}

impl ControlCommand {
    /// True for the commands that begin a cutover (overlay mode).
    pub const fn is_cutover(self) -> bool {
        matches!(self, ControlCommand::MergeOnline | ControlCommand::Cutover)
    }

    /// Decodes the ABI value; unknown values are `None`.
    pub const fn from_u32(value: u32) -> Option<ControlCommand> {
        match value {
            1 => Some(ControlCommand::Start),
            2 => Some(ControlCommand::Pause),
            3 => Some(ControlCommand::Resume),
            4 => Some(ControlCommand::Detach),
            5 => Some(ControlCommand::MergeOnline),
            6 => Some(ControlCommand::Cutover),
            _ => None,
        }
    }
}

/// Service → driver: change the restore's state.
///
/// ```text
/// offset size field
///      0    8 header    kind 8, total_len 16
///      8    4 command   ControlCommand (1..=6)
///     12    4 reserved  zero
///     16      end
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Control {
    /// What to do.
    pub command: ControlCommand,
}

impl Control {
    /// Bytes [`encode`](Self::encode) writes.
    pub const fn encoded_len(&self) -> usize {
        CONTROL_BYTES
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        let mut w = Writer::new(out, CONTROL_BYTES)?;
        wire::write_header(&mut w, MessageKind::Control, CONTROL_BYTES)?;
        w.u32(self.command as u32)?;
        w.u32(0)?;
        Ok(w.finish(CONTROL_BYTES))
    }

    /// Decodes a whole buffer that must hold exactly one control message.
    pub fn decode(bytes: &[u8]) -> Result<Control, AbiError> {
        let mut r = wire::body(bytes, MessageKind::Control)?;
        wire::exact_len(bytes, MessageKind::Control, CONTROL_BYTES)?;
        let command = r.u32()?;
        r.reserved_u32()?;
        let command = ControlCommand::from_u32(command).ok_or(AbiError::UnknownCommand(command))?;
        Ok(Control { command })
    }
}

// Each layout comment above ends where its constant says.
const _: () = assert!(ATTACH_BYTES == HEADER_BYTES + 8 + 4 + 4 + 32);
const _: () = assert!(FETCH_FAILED_BYTES == HEADER_BYTES + 8 + 8 + 4 + 4);
const _: () = assert!(STATUS_COUNTERS_BYTES == HEADER_BYTES + 4 * 4 + 9 * 8);
const _: () = assert!(CONTROL_BYTES == HEADER_BYTES + 4 + 4);
// The in-memory structs mirror the wire bodies where the field order allows it.
const _: () = assert!(core::mem::size_of::<FetchFailed>() == FETCH_FAILED_BYTES - HEADER_BYTES);
const _: () =
    assert!(core::mem::size_of::<StatusCounters>() == STATUS_COUNTERS_BYTES - HEADER_BYTES);
const _: () = assert!(core::mem::size_of::<RestoreMode>() == 4);
