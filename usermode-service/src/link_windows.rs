//! The driver link on Windows: the filter's control device and the inverted call.
//!
//! As thin as the kernel shell: it moves the ABI's encoded messages
//! (`rehydrate_driver::abi`) through `DeviceIoControl` and decides nothing; the hydrator
//! decides what to fetch and when.
//!
//! Two handles on `\\.\RehydrateControl` (SYSTEM and Administrators only):
//! * an **overlapped** handle bound to an I/O completion port, for the requests that stay
//!   in the driver: several `GET_MISSING` kept pended (the driver completes one with a
//!   batch of wanted ranges when it has some) and `HYDRATE`s in flight (one completes
//!   when its data reached the volume). [`Link::wait`] reaps one completion at a time.
//! * a **synchronous** handle for the short exchanges that complete at once (`ATTACH`,
//!   `FETCH_FAILED`, `CONTROL`, `GET_STATUS`, `QUERY_BITMAP`).
//!
//! Each overlapped operation owns its `OVERLAPPED` and buffer in a `Box` that stays put
//! until the completion port returns it; dropping the link cancels what is pending and
//! waits for every cancellation before closing the handles.
#![allow(unsafe_code)]

use std::io;
use std::ptr;

use rehydrate_driver::abi::{
    Attach, BitmapQuery, Control, FetchFailed, Ioctl, MissingBatch, MissingRange, StatusCounters,
    BITMAP_PAGE_MAX_BYTES, MISSING_BATCH_MAX_BYTES, STATUS_COUNTERS_BYTES,
};
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_IO_PENDING, GENERIC_READ, GENERIC_WRITE, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, DeviceIoControl, GetQueuedCompletionStatus, OVERLAPPED,
};

/// The Win32 name of the filter's control device (`\DosDevices\RehydrateControl`).
pub const CONTROL_DEVICE_PATH: &str = r"\\.\RehydrateControl";

/// Most `GET_MISSING` requests the link keeps pended.
pub const PENDED_MISSING_MAX: usize = 16;

/// What finished.
#[derive(Debug)]
pub enum Completion {
    /// A `GET_MISSING` came back with these ranges; the link has already pended a new
    /// one in its place.
    Missing(Vec<MissingRange>),
    /// A `GET_MISSING` failed (e.g. `STATUS_DEVICE_NOT_READY` after a detach, or
    /// cancelled); not re-pended.
    MissingFailed(io::Error),
    /// `HYDRATE` number `token` finished.
    Hydrated {
        /// The caller's token from [`Link::hydrate`].
        token: u64,
        /// Ok when the driver took the data (written, or dropped as stale).
        result: io::Result<()>,
    },
}

#[derive(Debug)]
enum Kind {
    Missing,
    Hydrate(u64),
}

/// One overlapped operation; `overlapped` first so the pointer the port returns is the
/// pointer to the whole operation.
#[repr(C)]
struct Op {
    overlapped: OVERLAPPED,
    kind: Kind,
    buffer: Vec<u8>,
}

/// The open control device.
pub struct Link {
    overlapped: HANDLE,
    sync: HANDLE,
    port: HANDLE,
    pending: usize,
    missing_pended: usize,
}

// SAFETY: the handles are process-wide kernel handles; `&mut self` serialises their use.
unsafe impl Send for Link {}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

fn abi_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer over 4 GiB"))
}

fn open_handle(path: &[u16], flags: u32) -> io::Result<HANDLE> {
    // SAFETY: `path` is NUL-terminated and outlives the call; no security attributes or
    // template.
    let handle = unsafe {
        CreateFileW(
            path.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            ptr::null(),
            OPEN_EXISTING,
            flags,
            ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        Err(io::Error::last_os_error())
    } else {
        Ok(handle)
    }
}

impl Link {
    /// Opens the control device and pends `missing_pended` `GET_MISSING` requests
    /// (at most [`PENDED_MISSING_MAX`]).
    pub fn open(missing_pended: usize) -> io::Result<Link> {
        let path = wide(CONTROL_DEVICE_PATH);
        let sync = open_handle(&path, 0)?;
        let overlapped = match open_handle(&path, FILE_FLAG_OVERLAPPED) {
            Ok(h) => h,
            Err(e) => {
                // SAFETY: our handle, closed once.
                unsafe { CloseHandle(sync) };
                return Err(e);
            }
        };
        // SAFETY: binds our overlapped handle to a new port (key 0, one thread).
        let port = unsafe { CreateIoCompletionPort(overlapped, ptr::null_mut(), 0, 1) };
        let mut link = Link {
            overlapped,
            sync,
            port,
            pending: 0,
            missing_pended: 0,
        };
        if port.is_null() {
            link.port = ptr::null_mut();
            return Err(io::Error::last_os_error());
        }
        for _ in 0..missing_pended.min(PENDED_MISSING_MAX) {
            link.pend_missing()?;
        }
        Ok(link)
    }

    /// A synchronous exchange on the synchronous handle; returns the bytes written
    /// into `output`.
    fn call(&self, ioctl: Ioctl, input: &[u8], output: &mut [u8]) -> io::Result<usize> {
        let mut returned = 0u32;
        // SAFETY: synchronous handle, so both buffers are only used during the call; the
        // lengths are the buffers' own.
        let ok = unsafe {
            DeviceIoControl(
                self.sync,
                ioctl.code(),
                if input.is_empty() {
                    ptr::null()
                } else {
                    input.as_ptr().cast()
                },
                len_u32(input.len())?,
                if output.is_empty() {
                    ptr::null_mut()
                } else {
                    output.as_mut_ptr().cast()
                },
                len_u32(output.len())?,
                &mut returned,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(returned as usize)
    }

    /// Starts an overlapped exchange; its completion comes out of [`Link::wait`].
    /// `as_output` puts `op.buffer` in the output-buffer slot (GET_MISSING's answer, and
    /// HYDRATE, whose METHOD_IN_DIRECT message travels there).
    fn start(&mut self, ioctl: Ioctl, op: Op) -> io::Result<()> {
        let len = len_u32(op.buffer.len())?;
        let op = Box::into_raw(Box::new(op));
        // SAFETY: `op` is a live heap allocation that stays put until the port returns
        // its OVERLAPPED (`wait` or `Drop` turns it back into a Box), or until the call
        // fails at once (freed below).
        let ok = unsafe {
            DeviceIoControl(
                self.overlapped,
                ioctl.code(),
                ptr::null(),
                0,
                (*op).buffer.as_mut_ptr().cast(),
                len,
                ptr::null_mut(),
                ptr::addr_of_mut!((*op).overlapped),
            )
        };
        // SAFETY: plain FFI call.
        if ok == 0 && unsafe { GetLastError() } != ERROR_IO_PENDING {
            let error = io::Error::last_os_error();
            // SAFETY: the driver never saw the operation, so no completion will come.
            drop(unsafe { Box::from_raw(op) });
            return Err(error);
        }
        // Completed at once or pending: either way a packet reaches the port.
        self.pending += 1;
        Ok(())
    }

    fn pend_missing(&mut self) -> io::Result<()> {
        self.start(
            Ioctl::GetMissing,
            Op {
                overlapped: OVERLAPPED::default(),
                kind: Kind::Missing,
                buffer: vec![0u8; MISSING_BATCH_MAX_BYTES],
            },
        )?;
        self.missing_pended += 1;
        Ok(())
    }

    /// `ATTACH`: which restore this service drives.
    pub fn attach(&self, attach: &Attach) -> io::Result<()> {
        let mut bytes = vec![0u8; attach.encoded_len()];
        attach.encode(&mut bytes).map_err(abi_error)?;
        self.call(Ioctl::Attach, &bytes, &mut []).map(drop)
    }

    /// `CONTROL`: start, pause, resume, detach.
    pub fn control(&self, control: &Control) -> io::Result<()> {
        let mut bytes = vec![0u8; control.encoded_len()];
        control.encode(&mut bytes).map_err(abi_error)?;
        self.call(Ioctl::Control, &bytes, &mut []).map(drop)
    }

    /// `FETCH_FAILED`: the range could not be fetched.
    pub fn fetch_failed(&self, failed: &FetchFailed) -> io::Result<()> {
        let mut bytes = vec![0u8; failed.encoded_len()];
        failed.encode(&mut bytes).map_err(abi_error)?;
        self.call(Ioctl::FetchFailed, &bytes, &mut []).map(drop)
    }

    /// `GET_STATUS`.
    pub fn status(&self) -> io::Result<StatusCounters> {
        let mut out = [0u8; STATUS_COUNTERS_BYTES];
        let n = self.call(Ioctl::GetStatus, &[], &mut out)?;
        StatusCounters::decode(&out[..n]).map_err(abi_error)
    }

    /// `QUERY_BITMAP`: the encoded `BitmapPage` (decode it with
    /// `BitmapPage::decode(&bytes)`, which borrows from the bytes).
    pub fn query_bitmap(&self, query: &BitmapQuery) -> io::Result<Vec<u8>> {
        let mut input = vec![0u8; query.encoded_len()];
        query.encode(&mut input).map_err(abi_error)?;
        let mut out = vec![0u8; BITMAP_PAGE_MAX_BYTES];
        let n = self.call(Ioctl::QueryBitmap, &input, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// `HYDRATE`: `message` is a whole encoded `Hydrate` (prefix + payload, e.g. built
    /// with `Hydrate::encode_prefix` and the payload read in after it). Completes through
    /// [`Link::wait`] as [`Completion::Hydrated`] with `token`.
    pub fn hydrate(&mut self, token: u64, message: Vec<u8>) -> io::Result<()> {
        self.start(
            Ioctl::Hydrate,
            Op {
                overlapped: OVERLAPPED::default(),
                kind: Kind::Hydrate(token),
                buffer: message,
            },
        )
    }

    /// Operations the driver still holds.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Waits up to `timeout_ms` (`u32::MAX`: forever) for one completion; `Ok(None)` on
    /// timeout. A completed `GET_MISSING` is pended again before this returns.
    pub fn wait(&mut self, timeout_ms: u32) -> io::Result<Option<Completion>> {
        let Some((op, result)) = self.reap(timeout_ms)? else {
            return Ok(None);
        };
        Ok(Some(match op.kind {
            Kind::Hydrate(token) => Completion::Hydrated {
                token,
                result: result.map(drop),
            },
            Kind::Missing => {
                self.missing_pended -= 1;
                match result {
                    Ok(n) => {
                        let ranges = MissingBatch::decode(&op.buffer[..n.min(op.buffer.len())])
                            .map(|batch| batch.iter().collect::<Vec<_>>());
                        // Keep the number pended constant, whatever the batch held.
                        self.pend_missing()?;
                        Completion::Missing(ranges.map_err(abi_error)?)
                    }
                    Err(e) => Completion::MissingFailed(e),
                }
            }
        }))
    }

    /// One packet from the port: the operation and its outcome (bytes returned).
    fn reap(&mut self, timeout_ms: u32) -> io::Result<Option<(Box<Op>, io::Result<usize>)>> {
        let mut bytes = 0u32;
        let mut key = 0usize;
        let mut overlapped: *mut OVERLAPPED = ptr::null_mut();
        // SAFETY: our port; out-pointers are locals.
        let ok = unsafe {
            GetQueuedCompletionStatus(self.port, &mut bytes, &mut key, &mut overlapped, timeout_ms)
        };
        if overlapped.is_null() {
            // SAFETY: plain FFI call.
            let error = unsafe { GetLastError() };
            return if ok == 0 && error == WAIT_TIMEOUT {
                Ok(None)
            } else {
                Err(io::Error::last_os_error())
            };
        }
        self.pending -= 1;
        // SAFETY: every OVERLAPPED on this port is the first field of an `Op` leaked by
        // `start`; the driver is done with it, so we own it again.
        let op = unsafe { Box::from_raw(overlapped.cast::<Op>()) };
        let result = if ok == 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(bytes as usize)
        };
        Ok(Some((op, result)))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // SAFETY: our handle; cancels every operation it has in the driver (GET_MISSING
        // requests parked in its manual queue complete cancelled).
        unsafe { CancelIoEx(self.overlapped, ptr::null()) };
        // Bounded: one packet per pending operation, each now cancelled or done.
        while self.pending > 0 {
            match self.reap(u32::MAX) {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        // SAFETY: our handles, closed once; a null port was never opened.
        unsafe {
            if !self.port.is_null() {
                CloseHandle(self.port);
            }
            CloseHandle(self.overlapped);
            CloseHandle(self.sync);
        }
    }
}
