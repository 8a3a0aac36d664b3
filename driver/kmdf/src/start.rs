//! `EvtDevicePrepareHardware`'s work: ask the volume below what it is, let the portable
//! start decide whether this is the volume the restore writes
//! (`rehydrate_driver::filter::start`), and open the metadata of the one that is.
//!
//! Everything here runs at PASSIVE_LEVEL. The questions are synchronous IOCTLs to the
//! device's default I/O target (the volume below), which KMDF creates in the started
//! state and does not stop around PnP start, so they are sent at once, not queued
//! (`FxIoTarget::Construct`, `FxIoTarget::SubmitLocked`). Each has a timeout: a volume
//! that does not answer is reported as such instead of hanging the start. The answers
//! are handed over as bytes; the shell reads no field of them.

use alloc::sync::Arc;
use core::ptr;

use rehydrate_driver::abi::{
    ctl_code, Attach, Refusal, RestoreMode, FILE_READ_ACCESS, METHOD_BUFFERED,
};
use rehydrate_driver::filter::start::{self, Probe};
use rehydrate_driver::filter::{Filter, FilterConfig, Refused, Volume};
use rehydrate_driver::meta::{Identity, MetaError, Metadata, StoreError};
use rehydrate_driver::volume_id::{
    GEOMETRY_EX_BUFFER_BYTES, IOCTL_DISK_GET_DRIVE_GEOMETRY_EX, IOCTL_DISK_GET_PARTITION_INFO_EX,
    PARTITION_INFO_EX_BYTES,
};
use rehydrate_driver::{RegionMap, Status};
use wdk::nt_success;
use wdk_sys::{
    call_unsafe_wdf_function_binding, _WDF_MEMORY_DESCRIPTOR_TYPE, _WDF_REQUEST_SEND_OPTIONS_FLAGS,
    NTSTATUS, STATUS_DISK_CORRUPT_ERROR, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
    ULONG, ULONG_PTR, WDFIOTARGET, WDF_MEMORY_DESCRIPTOR, WDF_REQUEST_SEND_OPTIONS,
};

use crate::config;
use crate::control;
use crate::kmdf::Kmdf;
use crate::meta_store::FileStore;
use crate::wdf::size_ulong;

/// `IOCTL_DISK_GET_LENGTH_INFO` (ntdddisk.h): `CTL_CODE(IOCTL_DISK_BASE, 0x0017,
/// METHOD_BUFFERED, FILE_READ_ACCESS)`, a function-like macro bindgen cannot evaluate.
const IOCTL_DISK_GET_LENGTH_INFO: ULONG =
    ctl_code(0x0000_0007, 0x0017, METHOD_BUFFERED, FILE_READ_ACCESS);
const _: () = assert!(IOCTL_DISK_GET_LENGTH_INFO == 0x0007_405C);

/// How long the volume below may take to answer one question at start: 10 s, relative
/// (`WDF_REL_TIMEOUT_IN_SEC`, 100 ns units, negative).
const ANSWER_TIMEOUT_100NS: i64 = -10 * 10_000_000;

/// The filter of the volume that started: restoring it, or refused, with the metadata
/// file of the one restored. `Err` fails the volume's start with that status.
pub fn start(lower: WDFIOTARGET) -> Result<(Volume<Kmdf>, Option<FileStore>), NTSTATUS> {
    let params = config::restore_parameters(control::driver())?;
    let mut length = [0u8; 8];
    let length_bytes = ask(lower, IOCTL_DISK_GET_LENGTH_INFO, &mut length).map_err(nt)?;
    if length_bytes.len() < 8 {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let volume_size_bytes =
        u64::try_from(i64::from_le_bytes(length)).map_err(|_| STATUS_INVALID_PARAMETER)?;
    let mut info = [0u8; PARTITION_INFO_EX_BYTES];
    let mut geometry = [0u8; GEOMETRY_EX_BUFFER_BYTES];
    let probe = Probe {
        volume_size_bytes,
        partition_info: ask(lower, IOCTL_DISK_GET_PARTITION_INFO_EX, &mut info),
        geometry: ask(lower, IOCTL_DISK_GET_DRIVE_GEOMETRY_EX, &mut geometry),
    };
    if let Err(refusal) = start::check_volume(&params.target, &probe) {
        return Ok((refused(refusal), None));
    }
    let mut store = FileStore::open(&params.metadata_path.unicode())?;
    let header = match Metadata::read_header(&mut store) {
        Ok(header) => header,
        Err(e) => {
            store.close();
            return Err(meta_status(e));
        }
    };
    let recorded = (header.binding.target, header.identity.volume_size_bytes);
    if let Err(refusal) = start::check_metadata(&recorded.0, recorded.1, &params.target, &probe) {
        store.close();
        return Ok((refused(refusal), None));
    }
    let identity = Identity {
        volume_size_bytes,
        region_size_bytes: params.region_size_bytes,
        backup_id: params.backup_id,
    };
    let restoring = identity
        .geometry()
        .map_err(|_| STATUS_INVALID_PARAMETER)
        .and_then(|geometry| RegionMap::new(geometry).map_err(|_| STATUS_INSUFFICIENT_RESOURCES))
        .and_then(|map| {
            let map = Arc::new(map);
            let meta = Metadata::open(&mut store, &identity, &map).map_err(meta_status)?;
            let attach = Attach {
                volume_size_bytes,
                region_size_bytes: params.region_size_bytes,
                backup_identity: params.backup_id,
                // The shell has one lower target: the overlay mode's second one (the
                // overlay file) is not wired here yet, so it restores in place only.
                mode: RestoreMode::InPlace,
            };
            Ok(Filter::new(map, meta, attach, FilterConfig::default()))
        });
    match restoring {
        Ok(filter) => Ok((Volume::Restoring(filter), Some(store))),
        Err(nt_status) => {
            store.close();
            Err(nt_status)
        }
    }
}

/// The refused filter, said on the debugger too (the service hears it through
/// `GET_STATUS`).
fn refused(refusal: Refusal) -> Volume<Kmdf> {
    wdk::println!(
        "rehydrate: not the volume the restore writes, staying out of its way: {}",
        refusal.describe()
    );
    Volume::Refused(Refused::new(refusal))
}

fn meta_status(error: MetaError) -> NTSTATUS {
    match error {
        MetaError::Store(StoreError::Device { code }) => code as NTSTATUS,
        MetaError::AllocFailed { .. } => STATUS_INSUFFICIENT_RESOURCES,
        _ => STATUS_DISK_CORRUPT_ERROR,
    }
}

fn nt(status: Status) -> NTSTATUS {
    status.0 as NTSTATUS
}

/// One METHOD_BUFFERED IOCTL without input to the volume below, synchronously, with
/// [`ANSWER_TIMEOUT_100NS`]: the bytes it returned in `out`, or its status.
fn ask(lower: WDFIOTARGET, ioctl: ULONG, out: &mut [u8]) -> Result<&[u8], Status> {
    let mut output = WDF_MEMORY_DESCRIPTOR {
        Type: _WDF_MEMORY_DESCRIPTOR_TYPE::WdfMemoryDescriptorTypeBuffer,
        ..WDF_MEMORY_DESCRIPTOR::default()
    };
    let mut options = WDF_REQUEST_SEND_OPTIONS {
        Size: size_ulong::<WDF_REQUEST_SEND_OPTIONS>(),
        Flags: _WDF_REQUEST_SEND_OPTIONS_FLAGS::WDF_REQUEST_SEND_OPTION_TIMEOUT as ULONG,
        Timeout: ANSWER_TIMEOUT_100NS,
    };
    let capacity = ULONG::try_from(out.len()).unwrap_or(ULONG::MAX);
    let mut returned: ULONG_PTR = 0;
    // SAFETY: PASSIVE_LEVEL (EvtDevicePrepareHardware); the descriptor's buffer arm
    // names `out`, which outlives the call: KMDF waits for the request to complete, and
    // after a timeout cancels it and waits again (`FxIoTarget::SubmitSync`); no input,
    // no request of ours; `returned` is a local.
    let nt_status = unsafe {
        output.u.BufferType.Buffer = out.as_mut_ptr().cast();
        output.u.BufferType.Length = capacity;
        call_unsafe_wdf_function_binding!(
            WdfIoTargetSendIoctlSynchronously,
            lower,
            ptr::null_mut(),
            ioctl,
            ptr::null_mut(),
            &mut output,
            &mut options,
            &mut returned
        )
    };
    if !nt_success(nt_status) {
        return Err(Status(nt_status as u32));
    }
    let n = usize::try_from(returned)
        .unwrap_or(usize::MAX)
        .min(out.len());
    Ok(&out[..n])
}
