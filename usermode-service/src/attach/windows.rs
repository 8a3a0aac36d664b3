//! `rehydrate attach` on Windows: the calls into Windows around the portable session —
//! volume names, the metadata file, the filter's `Parameters` key, and waiting for the
//! filter's control device.
#![allow(unsafe_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rehydrate_driver::abi::Attach;
use rehydrate_driver::meta::{Identity, Metadata};
use rehydrate_driver::{Geometry, RegionMap, Status};
use rehydrate_nbd::NbdUrl;
use windows_sys::Win32::Foundation::ERROR_SUCCESS;
use windows_sys::Win32::Storage::FileSystem::{
    GetVolumeNameForVolumeMountPointW, GetVolumePathNameW, QueryDosDeviceW,
};
use windows_sys::Win32::System::Registry::{
    RegCloseKey, RegCreateKeyExW, RegOpenKeyExW, RegSetValueExW, HKEY, HKEY_LOCAL_MACHINE,
    KEY_READ, KEY_SET_VALUE, REG_BINARY, REG_DWORD, REG_OPTION_NON_VOLATILE, REG_SZ,
    REG_VALUE_TYPE,
};

use super::names::{self, reg_sz, VolumeName};
use super::session::{self, SessionConfig};
use super::{AttachArgs, AttachError, Summary};
use crate::hydrator::HydratorConfig;
use crate::link::{DriverLink, LinkError};
use crate::link_windows::WindowsLink;
use crate::restore::{backup_id, FileMetaStore};
use crate::source::{NbdSource, Source};

/// The driver's service key and the key it reads its parameters from (driver/kmdf
/// src/config.rs).
const SERVICE_KEY: &str = r"SYSTEM\CurrentControlSet\Services\Rehydrate";
const PARAMETERS_KEY: &str = r"SYSTEM\CurrentControlSet\Services\Rehydrate\Parameters";
/// Longest volume or device name we read back (`MAX_PATH` is plenty for both).
const NAME_UNITS_MAX: usize = 1024;
/// How often the control device is looked for while the filter starts.
const FILTER_POLL: Duration = Duration::from_millis(500);

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
    runtime.block_on(attach(args))
}

async fn attach(args: &AttachArgs) -> Result<Summary, AttachError> {
    let started = Instant::now();
    let target = volume_guid(&args.volume)?;
    let pdo = dos_device(&target)?;
    let metadata_nt = metadata_nt_path(&args.metadata, &target)?;
    let url = NbdUrl::parse(&args.source).map_err(AttachError::Url)?;
    let region_size = u32::try_from(args.region_size).unwrap_or(u32::MAX);
    let deadline = Duration::from_secs(args.deadline.max(1));
    let source = NbdSource::connect(&url, args.in_flight.saturating_mul(2), deadline).await?;
    let size = source.size_bytes();
    let geometry = Geometry::new(size, region_size).map_err(|source| AttachError::Geometry {
        size_bytes: size,
        source,
    })?;
    let hydrator = HydratorConfig {
        fetch_size_bytes: args.fetch_size,
        in_flight_max: args.in_flight,
        background_rate_bytes_per_sec: args.rate_limit,
        deadline_ns: deadline.as_nanos() as u64,
        ..HydratorConfig::default()
    };
    hydrator.check(&geometry)?;
    let identity = Identity {
        volume_size_bytes: size,
        region_size_bytes: region_size,
        backup_id: backup_id(&url.export, size),
    };
    prepare_metadata(&args.metadata, &identity, &geometry)?;
    write_parameters(&pdo, &metadata_nt, region_size, &identity.backup_id)?;
    eprintln!(
        "attach: parameters written for {} ({pdo}); waiting for the filter to start on it \
         (bring the disk online: diskpart, online disk)",
        args.volume
    );
    let link = wait_for_filter(&args.volume, args.wait).await?;
    let config = SessionConfig {
        geometry,
        attach: Attach {
            volume_size_bytes: size,
            region_size_bytes: region_size,
            backup_identity: identity.backup_id,
            mode: rehydrate_driver::abi::RestoreMode::InPlace,
        },
        hydrator,
        pended: args.pended,
        pend_retry: Duration::from_millis(100),
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = session::run(link, Arc::new(source), config, stop).await?;
    Ok(Summary {
        bytes: size,
        secs: started.elapsed().as_secs_f64(),
        report,
    })
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

/// Formats the metadata file of a new restore; for an existing one, checks it belongs
/// to this restore (unless the filter has it open already, which means it checked).
fn prepare_metadata(
    path: &Path,
    identity: &Identity,
    geometry: &Geometry,
) -> Result<(), AttachError> {
    let meta_err = |source| AttachError::Metadata {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        let mut store = match FileMetaStore::open(path, 0, false) {
            Ok(store) => store,
            // ERROR_SHARING_VIOLATION: the filter opened it when the volume started.
            Err(e) if e.raw_os_error() == Some(32) => return Ok(()),
            Err(e) => return Err(os(format!("open {}", path.display()))(e)),
        };
        let map = RegionMap::new(*geometry)?;
        Metadata::open(&mut store, identity, &map).map_err(meta_err)?;
        eprintln!(
            "attach: resuming: {} of {} regions already restored",
            map.restored_count(),
            geometry.region_count()
        );
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(os(format!("create {}", dir.display())))?;
    }
    let pages = Metadata::store_pages(geometry);
    let mut store =
        FileMetaStore::open(path, pages, true).map_err(os(format!("create {}", path.display())))?;
    Metadata::create(&mut store, identity).map_err(meta_err)?;
    Ok(())
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
    region_size: u32,
    backup_id: &[u8; 32],
) -> Result<(), AttachError> {
    Key::open(SERVICE_KEY, KEY_READ, false).map_err(|_| AttachError::NotInstalled)?;
    let key = Key::open(PARAMETERS_KEY, KEY_SET_VALUE, true).map_err(|code| {
        os(format!(r"create HKLM\{PARAMETERS_KEY}"))(std::io::Error::from_raw_os_error(code as i32))
    })?;
    key.set("TargetDevice", REG_SZ, &reg_sz(pdo))?;
    key.set("MetadataPath", REG_SZ, &reg_sz(metadata_nt))?;
    key.set("RegionSizeBytes", REG_DWORD, &region_size.to_le_bytes())?;
    key.set("BackupId", REG_BINARY, backup_id)
}

/// Opens the control device once the filter runs on the volume: the device appears with
/// the filter's first instance, and answers once that instance opened its metadata.
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
