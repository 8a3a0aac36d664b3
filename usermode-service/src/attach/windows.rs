//! `rehydrate attach` on Windows: the [`Host`] of the portable flow (`flow.rs`) — volume
//! names and identity, the metadata file, the filter's `Parameters` key, and waiting for
//! the filter's control device.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rehydrate_driver::meta::TARGET_ID_BYTES;
use rehydrate_driver::volume_id::{
    self, ProbeError, VolumeId, GEOMETRY_EX_BUFFER_BYTES, IOCTL_DISK_GET_DRIVE_GEOMETRY_EX,
    IOCTL_DISK_GET_PARTITION_INFO_EX, PARTITION_INFO_EX_BYTES,
};
use rehydrate_driver::Status;
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_SUCCESS, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, GetVolumeNameForVolumeMountPointW, GetVolumePathNameW, QueryDosDeviceW,
    FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::Registry::{
    RegCloseKey, RegCreateKeyExW, RegOpenKeyExW, RegSetValueExW, HKEY, HKEY_LOCAL_MACHINE,
    KEY_READ, KEY_SET_VALUE, REG_BINARY, REG_DWORD, REG_OPTION_NON_VOLATILE, REG_SZ,
    REG_VALUE_TYPE,
};
use windows_sys::Win32::System::IO::DeviceIoControl;

use super::flow::{self, Host, RestoreParameters, TargetVolume};
use super::names::{self, reg_sz, VolumeName};
use super::session::Stop;
use super::{AttachArgs, AttachError, Summary};
use crate::link::{DriverLink, LinkError};
use crate::link_windows::WindowsLink;
use crate::restore::FileMetaStore;

/// The driver's service key and the key it reads its parameters from (driver/kmdf
/// src/config.rs).
const SERVICE_KEY: &str = r"SYSTEM\CurrentControlSet\Services\Rehydrate";
const PARAMETERS_KEY: &str = r"SYSTEM\CurrentControlSet\Services\Rehydrate\Parameters";
/// Longest volume or device name we read back (`MAX_PATH` is plenty for both).
const NAME_UNITS_MAX: usize = 1024;
/// How often the control device is looked for while the filter starts.
const FILTER_POLL: Duration = Duration::from_millis(500);
/// `ERROR_SHARING_VIOLATION`: another handle (the filter's) has the file open for writing.
const ERROR_SHARING_VIOLATION: i32 = 32;

fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AttachError {
    let what = what.into();
    move |source| AttachError::Os { what, source }
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

/// The text of a NUL-terminated UTF-16 buffer.
fn from_wide(units: &[u16]) -> String {
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    String::from_utf16_lossy(&units[..end])
}

/// Runs `rehydrate attach` to the end.
pub fn run(args: &AttachArgs) -> Result<Summary, AttachError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AttachError::Runtime)?;
    runtime.block_on(async {
        let mut host = WindowsHost::new(args)?;
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
            Stop::Interrupted
        };
        flow::run(args, &mut host, stop).await
    })
}

/// The volume, the metadata file and the registry of this machine.
struct WindowsHost {
    /// `--volume` as given.
    volume: String,
    /// `Volume{GUID}` of the target.
    guid: String,
    /// The NT name of its device (`TargetDevice`).
    pdo: String,
    metadata: PathBuf,
    /// The metadata file's NT path on its volume's GUID (`MetadataPath`).
    metadata_nt: String,
    wait_secs: u64,
}

impl WindowsHost {
    fn new(args: &AttachArgs) -> Result<WindowsHost, AttachError> {
        let guid = volume_guid(&args.volume)?;
        Ok(WindowsHost {
            volume: args.volume.clone(),
            pdo: dos_device(&guid)?,
            metadata_nt: metadata_nt_path(&args.metadata, &guid)?,
            metadata: args.metadata.clone(),
            guid,
            wait_secs: args.wait,
        })
    }
}

impl Host for WindowsHost {
    type Store = FileMetaStore;
    type Link = WindowsLink;

    fn volume(&mut self) -> Result<TargetVolume, AttachError> {
        let device = Device::open(&format!(r"\\.\{}", self.guid))?;
        let mut info = [0u8; PARTITION_INFO_EX_BYTES];
        let info = device
            .ioctl(IOCTL_DISK_GET_PARTITION_INFO_EX, &mut info)
            .map_err(os(format!("partition information of {}", self.volume)))?;
        let mut geometry = [0u8; GEOMETRY_EX_BUFFER_BYTES];
        // Only an MBR partition needs it; its failure matters only then.
        let (geometry, geometry_error) =
            match device.ioctl(IOCTL_DISK_GET_DRIVE_GEOMETRY_EX, &mut geometry) {
                Ok(bytes) => (Ok(bytes), None),
                Err(e) => (Err(Status::IO_DEVICE_ERROR), Some(e)),
            };
        let partition = match volume_id::decode_partition(Ok(info), geometry) {
            Ok(p) => p,
            Err(ProbeError::Failed { ioctl, .. }) if ioctl == IOCTL_DISK_GET_DRIVE_GEOMETRY_EX => {
                let source = geometry_error.unwrap_or_else(|| std::io::Error::other("failed"));
                return Err(os(format!("disk signature of {}", self.volume))(source));
            }
            Err(source) => {
                return Err(AttachError::VolumeIdentity {
                    volume: self.volume.clone(),
                    source,
                })
            }
        };
        let braces = self.guid.strip_prefix("Volume").unwrap_or(&self.guid);
        let volume_guid = volume_id::parse_guid(braces)
            .ok_or_else(|| names::NameError::Volume(self.volume.clone()))?;
        Ok(TargetVolume {
            id: VolumeId::new(volume_guid, &partition),
            length_bytes: partition.length_bytes,
        })
    }

    fn open_metadata(&mut self) -> Result<Option<FileMetaStore>, AttachError> {
        if !self.metadata.exists() {
            return Ok(None);
        }
        match FileMetaStore::open_unchecked(&self.metadata, None) {
            Ok(store) => Ok(Some(store)),
            Err(crate::ServiceError::MetaIo { source, .. })
                if source.raw_os_error() == Some(ERROR_SHARING_VIOLATION) =>
            {
                // The filter has it open: its volume runs. Read it to check it and to
                // learn the pinned source; the filter keeps writing it.
                FileMetaStore::open_read_only(&self.metadata)
                    .map(Some)
                    .map_err(os(format!("open {}", self.metadata.display())))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn create_metadata(&mut self, pages: u64) -> Result<FileMetaStore, AttachError> {
        if let Some(dir) = self.metadata.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(os(format!("create {}", dir.display())))?;
        }
        Ok(FileMetaStore::open_unchecked(&self.metadata, Some(pages))?)
    }

    fn write_parameters(&mut self, parameters: &RestoreParameters) -> Result<(), AttachError> {
        write_parameters(&self.pdo, &self.metadata_nt, parameters)
    }

    async fn wait_for_filter(&mut self) -> Result<WindowsLink, AttachError> {
        wait_for_filter(&self.volume, self.wait_secs).await
    }
}

/// A volume opened for device queries only (no read or write access).
struct Device(HANDLE);

impl Device {
    fn open(path: &str) -> Result<Device, AttachError> {
        let name = wide(path);
        // SAFETY: `name` is NUL-terminated; no security attributes or template. Access 0
        // asks for queries only, so the volume is neither locked nor read.
        let handle = unsafe {
            CreateFileW(
                name.as_ptr(),
                0,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                std::ptr::null(),
                OPEN_EXISTING,
                0,
                std::ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Err(os(format!("open {path}"))(std::io::Error::last_os_error()));
        }
        Ok(Device(handle))
    }

    /// A METHOD_BUFFERED query without input, synchronously: the bytes it returned.
    fn ioctl<'a>(&self, code: u32, out: &'a mut [u8]) -> std::io::Result<&'a [u8]> {
        let mut returned: u32 = 0;
        let capacity = u32::try_from(out.len()).unwrap_or(u32::MAX);
        // SAFETY: our open handle, not overlapped, so the call completes before it
        // returns; `out` holds the length passed; `returned` is a local.
        let ok = unsafe {
            DeviceIoControl(
                self.0,
                code,
                std::ptr::null(),
                0,
                out.as_mut_ptr().cast(),
                capacity,
                &mut returned,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(&out[..(returned as usize).min(out.len())])
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: opened by `Device::open`, closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// `Volume{GUID}` of `--volume` (a drive letter is looked up).
fn volume_guid(volume: &str) -> Result<String, AttachError> {
    match VolumeName::parse(volume)? {
        VolumeName::Guid(guid) => Ok(guid),
        VolumeName::Drive(letter) => {
            let path = mount_point_volume(&format!(r"{letter}:\"))?;
            Ok(names::guid_of_volume_path(&path)?)
        }
    }
}

/// `GetVolumeNameForVolumeMountPoint`: `\\?\Volume{GUID}\` of a mount point.
fn mount_point_volume(mount_point: &str) -> Result<String, AttachError> {
    let mount = wide(mount_point);
    let mut out = vec![0u16; NAME_UNITS_MAX];
    // SAFETY: `mount` is NUL-terminated; `out` holds the length passed.
    let ok = unsafe {
        GetVolumeNameForVolumeMountPointW(mount.as_ptr(), out.as_mut_ptr(), out.len() as u32)
    };
    if ok == 0 {
        return Err(os(format!("volume of {mount_point}"))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(from_wide(&out))
}

/// `QueryDosDevice("Volume{GUID}")`: the NT name of the volume's device, which the
/// filter compares with its PDO's name (`TargetDevice`).
fn dos_device(guid: &str) -> Result<String, AttachError> {
    let name = wide(guid);
    let mut out = vec![0u16; NAME_UNITS_MAX];
    // SAFETY: `name` is NUL-terminated; `out` holds the length passed.
    let n = unsafe { QueryDosDeviceW(name.as_ptr(), out.as_mut_ptr(), out.len() as u32) };
    if n == 0 {
        return Err(os(format!("device of {guid}"))(
            std::io::Error::last_os_error(),
        ));
    }
    // A multi-string: the first entry is the current target.
    Ok(from_wide(&out))
}

/// The NT path the driver opens for `--metadata`, on its volume's GUID.
fn metadata_nt_path(metadata: &Path, target_guid: &str) -> Result<String, AttachError> {
    let absolute = std::path::absolute(metadata).map_err(os("resolve --metadata"))?;
    let text = absolute.display().to_string();
    let file = wide(&text);
    let mut root = vec![0u16; NAME_UNITS_MAX];
    // SAFETY: `file` is NUL-terminated; `root` holds the length passed. The file need
    // not exist yet.
    let ok = unsafe { GetVolumePathNameW(file.as_ptr(), root.as_mut_ptr(), root.len() as u32) };
    if ok == 0 {
        return Err(os(format!("volume of {text}"))(
            std::io::Error::last_os_error(),
        ));
    }
    let root = from_wide(&root);
    let volume = mount_point_volume(&root)?;
    Ok(names::nt_metadata_path(&text, &root, &volume, target_guid)?)
}

/// An open registry key, closed on drop.
struct Key(HKEY);

impl Key {
    fn open(path: &str, access: u32, create: bool) -> Result<Key, u32> {
        let path = wide(path);
        let mut key: HKEY = std::ptr::null_mut();
        // SAFETY: `path` is NUL-terminated; the out-pointer is a local; no class, no
        // security attributes, no disposition wanted.
        let code = unsafe {
            if create {
                RegCreateKeyExW(
                    HKEY_LOCAL_MACHINE,
                    path.as_ptr(),
                    0,
                    std::ptr::null(),
                    REG_OPTION_NON_VOLATILE,
                    access,
                    std::ptr::null(),
                    &mut key,
                    std::ptr::null_mut(),
                )
            } else {
                RegOpenKeyExW(HKEY_LOCAL_MACHINE, path.as_ptr(), 0, access, &mut key)
            }
        };
        if code == ERROR_SUCCESS {
            Ok(Key(key))
        } else {
            Err(code)
        }
    }

    fn set(&self, name: &str, kind: REG_VALUE_TYPE, data: &[u8]) -> Result<(), AttachError> {
        let wide_name = wide(name);
        // SAFETY: our open key; `wide_name` is NUL-terminated; `data` holds the length
        // passed.
        let code = unsafe {
            RegSetValueExW(
                self.0,
                wide_name.as_ptr(),
                0,
                kind,
                data.as_ptr(),
                data.len() as u32,
            )
        };
        if code == ERROR_SUCCESS {
            Ok(())
        } else {
            Err(os(format!(r"set Parameters\{name}"))(
                std::io::Error::from_raw_os_error(code as i32),
            ))
        }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: opened by `Key::open`, closed once.
        unsafe { RegCloseKey(self.0) };
    }
}

/// Writes the values the filter reads when the volume starts (driver/kmdf
/// src/config.rs), after checking the driver is installed: creating `Parameters` under a
/// missing service key would make a service key without a driver.
fn write_parameters(
    pdo: &str,
    metadata_nt: &str,
    parameters: &RestoreParameters,
) -> Result<(), AttachError> {
    Key::open(SERVICE_KEY, KEY_READ, false).map_err(|_| AttachError::NotInstalled)?;
    let key = Key::open(PARAMETERS_KEY, KEY_SET_VALUE, true).map_err(|code| {
        os(format!(r"create HKLM\{PARAMETERS_KEY}"))(std::io::Error::from_raw_os_error(code as i32))
    })?;
    const _: () = assert!(TARGET_ID_BYTES == 48);
    key.set("TargetDevice", REG_SZ, &reg_sz(pdo))?;
    key.set("MetadataPath", REG_SZ, &reg_sz(metadata_nt))?;
    key.set(
        "RegionSizeBytes",
        REG_DWORD,
        &parameters.region_size_bytes.to_le_bytes(),
    )?;
    key.set("BackupId", REG_BINARY, &parameters.backup_id)?;
    key.set("TargetVolume", REG_BINARY, &parameters.target_volume)
}

/// Opens the control device once the filter runs on the volume: the device appears with
/// the filter's first instance, and answers once that instance decided about its volume.
async fn wait_for_filter(volume: &str, wait_secs: u64) -> Result<WindowsLink, AttachError> {
    let until = Instant::now() + Duration::from_secs(wait_secs);
    // Bounded by the deadline: each turn sleeps FILTER_POLL.
    loop {
        match WindowsLink::open() {
            Ok(link) => match link.get_status().await {
                Ok(_) => return Ok(link),
                Err(LinkError::Refused {
                    status: Status::DEVICE_NOT_READY,
                    ..
                }) => {}
                Err(e) => return Err(AttachError::Session(e.into())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(os(r"open \\.\RehydrateControl")(e)),
        }
        if Instant::now() >= until {
            return Err(AttachError::NoFilter {
                volume: volume.to_string(),
                secs: wait_secs,
            });
        }
        tokio::time::sleep(FILTER_POLL).await;
    }
}
