//! The metadata store on Windows: a file on another volume, behind `MetaStore`.
//!
//! # Where the metadata lives, and why
//! The filtered volume is the one being restored: below the filter it holds backup data
//! and application writes, and its file system (itself restored from the backup) is not
//! ours to write. So the metadata cannot live on it. A reserved area at the end of the
//! volume, outside the file system, would need the filter to hide those sectors from
//! everything above it (volume length, partition IOCTLs) — a decision that belongs in
//! the portable core, not here. The recovery environment's RAM disk (X: in WinPE) does
//! not survive a reboot, and the restore must resume after one (T1). So the metadata is
//! a **file on another persistent volume** (a second disk, the backup appliance's data
//! disk, a USB drive), named by the `MetadataPath` parameter, e.g.
//! `\??\Volume{GUID}\Rehydrate\target.meta`, the volume GUID path being stable across
//! reboots where drive letters are not.
//!
//! The service creates and formats the file (`Metadata::create` through its own file
//! store) before it brings the target volume online: only it knows that a restore is new.
//! The driver only ever *opens* the file (`FILE_OPEN`): a missing or foreign file fails
//! the device's start with a clear status instead of being silently formatted, which
//! would forget every restored region and let backup data overwrite newer writes.
//!
//! # I/O
//! Opened in `EvtDevicePrepareHardware` (PASSIVE_LEVEL) with `FILE_WRITE_THROUGH` and
//! synchronous I/O; pages are read and written with `ZwReadFile`/`ZwWriteFile` and made
//! durable with `ZwFlushBuffersFile` (which the file system turns into a flush of the
//! volume and disk caches), all at PASSIVE_LEVEL: in `EvtDevicePrepareHardware` and in
//! the commit work item. The handle is a kernel handle, usable from any system thread.

use core::ptr;

use rehydrate_driver::meta::{MetaStore, StoreError, META_PAGE_SIZE_BYTES};
use wdk::nt_success;
use wdk_sys::{
    ntddk::{
        ZwClose, ZwCreateFile, ZwFlushBuffersFile, ZwQueryInformationFile, ZwReadFile, ZwWriteFile,
    },
    _FILE_INFORMATION_CLASS, FILE_STANDARD_INFORMATION, HANDLE, IO_STATUS_BLOCK, LARGE_INTEGER,
    NTSTATUS, OBJECT_ATTRIBUTES, ULONG, UNICODE_STRING,
};

use crate::wdf::size_ulong;

const PAGE_BYTES: ULONG = META_PAGE_SIZE_BYTES as ULONG;
const _: () = assert!(META_PAGE_SIZE_BYTES as u64 == PAGE_BYTES as u64);

/// The metadata file.
pub struct FileStore {
    handle: HANDLE,
    page_count: u64,
}

// SAFETY: a kernel handle may be used from any thread; the cell gives the store one user
// at a time.
unsafe impl Send for FileStore {}

fn device_error(nt_status: NTSTATUS) -> StoreError {
    StoreError::Device {
        code: nt_status as u32,
    }
}

impl FileStore {
    /// Opens the existing metadata file at `path` (an NT path). PASSIVE_LEVEL.
    pub fn open(path: &UNICODE_STRING) -> Result<FileStore, NTSTATUS> {
        let mut attributes = OBJECT_ATTRIBUTES {
            Length: size_ulong::<OBJECT_ATTRIBUTES>(),
            RootDirectory: ptr::null_mut(),
            ObjectName: ptr::from_ref(path).cast_mut(),
            Attributes: wdk_sys::OBJ_KERNEL_HANDLE | wdk_sys::OBJ_CASE_INSENSITIVE,
            SecurityDescriptor: ptr::null_mut(),
            SecurityQualityOfService: ptr::null_mut(),
        };
        let mut handle: HANDLE = ptr::null_mut();
        let mut iosb = IO_STATUS_BLOCK::default();
        // SAFETY: PASSIVE_LEVEL (callers); every pointer is to a local or to `path`, which
        // outlives the call; no EA buffer. Not shared for writing: one writer, us.
        let nt_status = unsafe {
            ZwCreateFile(
                &mut handle,
                wdk_sys::GENERIC_READ | wdk_sys::GENERIC_WRITE | wdk_sys::SYNCHRONIZE,
                &mut attributes,
                &mut iosb,
                ptr::null_mut(),
                wdk_sys::FILE_ATTRIBUTE_NORMAL,
                wdk_sys::FILE_SHARE_READ,
                wdk_sys::FILE_OPEN,
                wdk_sys::FILE_NON_DIRECTORY_FILE
                    | wdk_sys::FILE_SYNCHRONOUS_IO_NONALERT
                    | wdk_sys::FILE_WRITE_THROUGH,
                ptr::null_mut(),
                0,
            )
        };
        if !nt_success(nt_status) {
            return Err(nt_status);
        }
        let mut store = FileStore {
            handle,
            page_count: 0,
        };
        let mut info = FILE_STANDARD_INFORMATION::default();
        // SAFETY: our open handle; `info` is a local of the size passed.
        let nt_status = unsafe {
            ZwQueryInformationFile(
                store.handle,
                &mut iosb,
                ptr::from_mut(&mut info).cast(),
                size_ulong::<FILE_STANDARD_INFORMATION>(),
                _FILE_INFORMATION_CLASS::FileStandardInformation,
            )
        };
        if !nt_success(nt_status) {
            store.close();
            return Err(nt_status);
        }
        // SAFETY: `QuadPart` is the whole of a LARGE_INTEGER.
        let size = unsafe { info.EndOfFile.QuadPart };
        store.page_count = u64::try_from(size).unwrap_or(0) / u64::from(PAGE_BYTES);
        Ok(store)
    }

    /// Closes the file. PASSIVE_LEVEL; called when the device goes away.
    pub fn close(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: our handle, closed once (nulled below).
            let _ = unsafe { ZwClose(self.handle) };
            self.handle = ptr::null_mut();
        }
    }

    fn offset(&self, index: u64, len: usize) -> Result<LARGE_INTEGER, StoreError> {
        if index >= self.page_count || len != META_PAGE_SIZE_BYTES {
            return Err(StoreError::OutOfRange {
                index,
                page_count: self.page_count,
            });
        }
        // index < page_count <= file size / 4096, so the product fits an i64.
        Ok(LARGE_INTEGER {
            QuadPart: (index * u64::from(PAGE_BYTES)) as i64,
        })
    }
}

impl MetaStore for FileStore {
    fn page_count(&self) -> u64 {
        self.page_count
    }

    fn read_page(&mut self, index: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let mut offset = self.offset(index, buf.len())?;
        let mut iosb = IO_STATUS_BLOCK::default();
        // SAFETY: PASSIVE_LEVEL (prepare-hardware or the commit work item); synchronous
        // handle, so `buf`, `iosb` and `offset` are only used during the call.
        let nt_status = unsafe {
            ZwReadFile(
                self.handle,
                ptr::null_mut(),
                None,
                ptr::null_mut(),
                &mut iosb,
                buf.as_mut_ptr().cast(),
                PAGE_BYTES,
                &mut offset,
                ptr::null_mut(),
            )
        };
        if !nt_success(nt_status) {
            return Err(device_error(nt_status));
        }
        if iosb.Information as u64 != u64::from(PAGE_BYTES) {
            return Err(StoreError::OutOfRange {
                index,
                page_count: self.page_count,
            });
        }
        Ok(())
    }

    fn write_page(&mut self, index: u64, buf: &[u8]) -> Result<(), StoreError> {
        let mut offset = self.offset(index, buf.len())?;
        let mut iosb = IO_STATUS_BLOCK::default();
        // SAFETY: as in `read_page`; the file system only reads `buf`.
        let nt_status = unsafe {
            ZwWriteFile(
                self.handle,
                ptr::null_mut(),
                None,
                ptr::null_mut(),
                &mut iosb,
                buf.as_ptr().cast_mut().cast(),
                PAGE_BYTES,
                &mut offset,
                ptr::null_mut(),
            )
        };
        if !nt_success(nt_status) {
            return Err(device_error(nt_status));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let mut iosb = IO_STATUS_BLOCK::default();
        // SAFETY: PASSIVE_LEVEL, our handle, a local status block.
        let nt_status = unsafe { ZwFlushBuffersFile(self.handle, &mut iosb) };
        if nt_success(nt_status) {
            Ok(())
        } else {
            Err(device_error(nt_status))
        }
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        // The device-cleanup callback closes the file at PASSIVE_LEVEL; the value itself
        // may be dropped later at DISPATCH_LEVEL (last reference from a completion), where
        // ZwClose is not allowed, so dropping never closes.
        debug_assert!(self.handle.is_null(), "metadata file dropped while open");
    }
}
