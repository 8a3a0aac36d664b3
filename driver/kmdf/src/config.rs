//! The driver's `Parameters` registry key: which volume to attach to and which restore
//! it is. Written by the service before it brings the target volume online (README.md,
//! "Configuration"); read at PASSIVE_LEVEL in `EvtDriverDeviceAdd` and
//! `EvtDevicePrepareHardware`.
//!
//! ```text
//! HKLM\SYSTEM\CurrentControlSet\Services\Rehydrate\Parameters
//!   TargetDevice     REG_SZ     NT name of the target volume's PDO, e.g. \Device\HarddiskVolume5
//!   MetadataPath     REG_SZ     NT path of the metadata file on ANOTHER volume,
//!                               e.g. \??\Volume{...}\Rehydrate\target.meta
//!   RegionSizeBytes  REG_DWORD  region size of the restore (4 KiB..1 MiB, power of two)
//!   BackupId         REG_BINARY 32 bytes naming the backup version (the Attach identity)
//!   TargetVolume     REG_BINARY 48 bytes: the target volume's identity (the layout in
//!                               rehydrate_driver::volume_id); absent when written by an
//!                               older service, which the filter then refuses
//! ```
//!
//! Values are read as given; checking them is the portable crate's job (`Geometry`,
//! `Metadata::open`, `Attach::check_matches`, `filter::start`).

use core::ptr;

use rehydrate_driver::meta::{TargetKind, TargetPin, TARGET_ID_BYTES};
use wdk::nt_success;
use wdk_sys::{
    call_unsafe_wdf_function_binding, NTSTATUS, STATUS_OBJECT_NAME_NOT_FOUND, ULONG,
    UNICODE_STRING, USHORT, WDFDRIVER, WDFKEY, WDF_NO_OBJECT_ATTRIBUTES,
};

use crate::wdf::{unicode, wide};

/// Longest NT path we accept, in UTF-16 units (MAX_PATH plus a `\??\Volume{GUID}` prefix).
pub const PATH_UNITS_MAX: usize = 320;

/// A UTF-16 string read from the registry, in a fixed buffer (no allocation).
pub struct NtName {
    units: [u16; PATH_UNITS_MAX],
    len: usize,
}

impl NtName {
    /// The name's code units, without a terminator.
    pub fn as_units(&self) -> &[u16] {
        &self.units[..self.len]
    }

    /// A counted string over the name (valid while `self` is).
    pub fn unicode(&self) -> UNICODE_STRING {
        unicode(self.as_units())
    }
}

/// What `EvtDevicePrepareHardware` needs to start the filter.
pub struct RestoreParameters {
    /// Where the metadata file is.
    pub metadata_path: NtName,
    /// Region size of the restore.
    pub region_size_bytes: u32,
    /// The backup version restored.
    pub backup_id: [u8; 32],
    /// The volume the restore writes (`TargetPin::UNRECORDED` without the value).
    pub target: TargetPin,
}

/// The open `Parameters` key; closed on drop (PASSIVE_LEVEL, like everything here).
struct Key(WDFKEY);

impl Key {
    fn open(driver: WDFDRIVER) -> Result<Key, NTSTATUS> {
        let mut key: WDFKEY = ptr::null_mut();
        // SAFETY: `driver` is the live driver object; KEY_READ only; out-pointer local.
        let nt_status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfDriverOpenParametersRegistryKey,
                driver,
                wdk_sys::KEY_READ,
                WDF_NO_OBJECT_ATTRIBUTES,
                &mut key
            )
        };
        if nt_success(nt_status) {
            Ok(Key(key))
        } else {
            Err(nt_status)
        }
    }

    fn string(&self, name: &[u16]) -> Result<NtName, NTSTATUS> {
        let mut out = NtName {
            units: [0; PATH_UNITS_MAX],
            len: 0,
        };
        let name = unicode(name);
        let capacity = USHORT::try_from(PATH_UNITS_MAX * 2).unwrap_or(0xFFFE);
        let mut value = UNICODE_STRING {
            Length: 0,
            MaximumLength: capacity,
            Buffer: out.units.as_mut_ptr(),
        };
        let mut value_bytes: USHORT = 0;
        // SAFETY: live key; `value` describes `out.units`, which outlives the call.
        let nt_status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRegistryQueryUnicodeString,
                self.0,
                &name,
                &mut value_bytes,
                &mut value
            )
        };
        if !nt_success(nt_status) {
            return Err(nt_status);
        }
        out.len = (usize::from(value.Length) / 2).min(PATH_UNITS_MAX);
        while out.len > 0 && out.units[out.len - 1] == 0 {
            out.len -= 1;
        }
        Ok(out)
    }

    fn ulong(&self, name: &[u16]) -> Result<ULONG, NTSTATUS> {
        let name = unicode(name);
        let mut value: ULONG = 0;
        // SAFETY: live key; out-pointer local.
        let nt_status = unsafe {
            call_unsafe_wdf_function_binding!(WdfRegistryQueryULong, self.0, &name, &mut value)
        };
        if nt_success(nt_status) {
            Ok(value)
        } else {
            Err(nt_status)
        }
    }

    /// A `REG_BINARY` value of exactly `N` bytes.
    fn binary<const N: usize>(&self, name: &[u16]) -> Result<[u8; N], NTSTATUS> {
        let name = unicode(name);
        let mut value = [0u8; N];
        let mut queried: ULONG = 0;
        let mut value_type: ULONG = 0;
        // SAFETY: live key; WDF writes at most N bytes into `value`; out-pointers local.
        let nt_status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRegistryQueryValue,
                self.0,
                &name,
                N as ULONG,
                value.as_mut_ptr().cast(),
                &mut queried,
                &mut value_type
            )
        };
        if !nt_success(nt_status) {
            return Err(nt_status);
        }
        if queried as usize != N || value_type != wdk_sys::REG_BINARY {
            return Err(STATUS_OBJECT_NAME_NOT_FOUND);
        }
        Ok(value)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: opened by `Key::open`, closed once.
        unsafe { call_unsafe_wdf_function_binding!(WdfRegistryClose, self.0) };
    }
}

/// `TargetDevice`: the PDO name of the one volume to attach to, or `None` when unset.
pub fn target_device(driver: WDFDRIVER) -> Option<NtName> {
    let key = Key::open(driver).ok()?;
    key.string(wide!("TargetDevice")).ok().filter(|n| n.len > 0)
}

/// Everything else, or the status to fail the device's start with.
pub fn restore_parameters(driver: WDFDRIVER) -> Result<RestoreParameters, NTSTATUS> {
    let key = Key::open(driver)?;
    Ok(RestoreParameters {
        metadata_path: key.string(wide!("MetadataPath"))?,
        region_size_bytes: key.ulong(wide!("RegionSizeBytes"))?,
        backup_id: key.binary(wide!("BackupId"))?,
        target: match key.binary::<TARGET_ID_BYTES>(wide!("TargetVolume")) {
            Ok(id) => TargetPin {
                kind: TargetKind::WindowsVolume,
                id,
            },
            Err(_) => TargetPin::UNRECORDED,
        },
    })
}
