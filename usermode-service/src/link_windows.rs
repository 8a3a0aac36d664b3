//! The driver link on Windows: [`WindowsLink`], a [`Transport`] over `DeviceIoControl`
//! on the filter's control device, `\\.\RehydrateControl` (SYSTEM and Administrators
//! only). The messages are the link's (`link/messages.rs`); this file only moves bytes.
//!
//! One handle opened for overlapped I/O and bound to an I/O completion port. Every
//! exchange is overlapped, the short ones (`ATTACH`, `GET_STATUS`, ...) and the ones
//! that stay in the driver (pended `GET_MISSING`s, `HYDRATE`s until their data reached
//! the volume) alike: KMDF answers every queued request through the port, because it
//! returns `STATUS_PENDING` for each request it queues, even one completed at once
//! (`FxIoQueue::QueueRequest`, fxioqueue.cpp). One reaper thread takes the packets and
//! wakes the waiting caller with the completion status, which the port hands back in
//! the `OVERLAPPED` (`Internal` is the NTSTATUS the driver completed with).
//!
//! Each operation owns its `OVERLAPPED` and buffers in a `Box` that stays put until the
//! port returns it; a caller that stops waiting only drops its receiver. Dropping the
//! last clone cancels what the handle has in the driver (`CancelIoEx`: parked
//! `GET_MISSING`s complete cancelled) and waits for every packet before the buffers are
//! freed and the handles closed.
#![allow(unsafe_code)]

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rehydrate_driver::abi::{Ioctl, METHOD_IN_DIRECT};
use rehydrate_driver::Status;
use tokio::sync::oneshot;
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_IO_PENDING, GENERIC_READ, GENERIC_WRITE, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, DeviceIoControl, GetQueuedCompletionStatus,
    PostQueuedCompletionStatus, OVERLAPPED,
};

use crate::link::{LinkError, LinkReply, Transport};

/// The Win32 name of the filter's control device (`\DosDevices\RehydrateControl`).
pub const CONTROL_DEVICE_PATH: &str = r"\\.\RehydrateControl";

/// Completion key of the packet that tells the reaper to finish.
const STOP_KEY: usize = usize::MAX;
/// How long a closing link waits for the driver to give back its operations before it
/// leaks their buffers rather than free memory the driver may still write.
const CLOSE_WAIT_MS: u32 = 30_000;

/// One overlapped operation; `overlapped` first so the pointer the port returns is the
/// pointer to the whole operation.
#[repr(C)]
struct Op {
    overlapped: OVERLAPPED,
    input: Vec<u8>,
    output: Vec<u8>,
    /// METHOD_IN_DIRECT: `output` carries the message in, and nothing comes back in it.
    direct_in: bool,
    done: Option<oneshot::Sender<LinkReply>>,
}

/// The open control device; clones share it.
#[derive(Clone)]
pub struct WindowsLink {
    device: Arc<Device>,
}

struct Device {
    handle: HANDLE,
    port: HANDLE,
    /// Operations started and not yet returned by the port.
    in_flight: Arc<AtomicUsize>,
    reaper: Mutex<Option<JoinHandle<()>>>,
}

// SAFETY: the handles are process-wide kernel handles, usable from any thread; the
// kernel serialises the calls made on them.
unsafe impl Send for Device {}
// SAFETY: as above; the only mutable state is atomic or behind a mutex.
unsafe impl Sync for Device {}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

fn len_u32(ioctl: Ioctl, len: usize) -> Result<u32, LinkError> {
    u32::try_from(len).map_err(|_| LinkError::Os {
        ioctl,
        source: io::Error::new(io::ErrorKind::InvalidInput, "buffer over 4 GiB"),
    })
}

impl WindowsLink {
    /// Opens the control device. `NotFound` while no filter instance runs (the control
    /// device exists while the filter is attached to a volume).
    pub fn open() -> io::Result<WindowsLink> {
        let path = wide(CONTROL_DEVICE_PATH);
        // SAFETY: `path` is NUL-terminated and outlives the call; no security attributes
        // or template.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: binds our overlapped handle to a new port (key 0, one thread).
        let port = unsafe { CreateIoCompletionPort(handle, ptr::null_mut(), 0, 1) };
        if port.is_null() {
            let error = io::Error::last_os_error();
            // SAFETY: our handle, closed once.
            unsafe { CloseHandle(handle) };
            return Err(error);
        }
        let in_flight = Arc::new(AtomicUsize::new(0));
        let reaper = {
            let (port, in_flight) = (port as usize, Arc::clone(&in_flight));
            std::thread::Builder::new()
                .name("rehydrate-link".into())
                .spawn(move || reap(port as HANDLE, &in_flight))
        };
        let device = Device {
            handle,
            port,
            in_flight,
            reaper: Mutex::new(None),
        };
        // From here dropping `device` closes both handles.
        *device.reaper.lock().unwrap_or_else(|e| e.into_inner()) = Some(reaper?);
        Ok(WindowsLink {
            device: Arc::new(device),
        })
    }
}

impl Transport for WindowsLink {
    async fn exchange(&self, ioctl: Ioctl, input: Vec<u8>) -> Result<LinkReply, LinkError> {
        // The transfer method is the code's low two bits (`METHOD_FROM_CTL_CODE`).
        let direct_in = ioctl.code() & 3 == METHOD_IN_DIRECT;
        let (input, output) = if direct_in {
            (Vec::new(), input)
        } else {
            (input, vec![0u8; ioctl.output_max_bytes()])
        };
        let (done, reply) = oneshot::channel();
        self.device.start(
            ioctl,
            Box::new(Op {
                overlapped: OVERLAPPED::default(),
                input,
                output,
                direct_in,
                done: Some(done),
            }),
        )?;
        reply.await.map_err(|_| LinkError::Closed { ioctl })
    }
}

impl Device {
    /// Starts one overlapped exchange; its packet comes back to the reaper.
    fn start(&self, ioctl: Ioctl, op: Box<Op>) -> Result<(), LinkError> {
        let in_len = len_u32(ioctl, op.input.len())?;
        let out_len = len_u32(ioctl, op.output.len())?;
        let op = Box::into_raw(op);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // SAFETY: `op` is a live heap allocation that stays put until the port returns
        // its OVERLAPPED (the reaper turns it back into a Box), or until the call fails
        // at once (freed below); empty buffers are passed as null with length 0.
        let ok = unsafe {
            let input = if in_len == 0 {
                ptr::null()
            } else {
                (*op).input.as_ptr().cast()
            };
            let output = if out_len == 0 {
                ptr::null_mut()
            } else {
                (*op).output.as_mut_ptr().cast()
            };
            DeviceIoControl(
                self.handle,
                ioctl.code(),
                input,
                in_len,
                output,
                out_len,
                ptr::null_mut(),
                ptr::addr_of_mut!((*op).overlapped),
            )
        };
        // SAFETY: plain FFI call, right after the one that set the error.
        if ok == 0 && unsafe { GetLastError() } != ERROR_IO_PENDING {
            let source = io::Error::last_os_error();
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            // SAFETY: the call failed before reaching the driver, so no packet will come
            // and nobody else holds the operation.
            drop(unsafe { Box::from_raw(op) });
            return Err(LinkError::Os { ioctl, source });
        }
        // Completed at once or pending: either way a packet reaches the port.
        Ok(())
    }
}

/// The reaper thread: hands each completed operation back to its caller until told to
/// stop and every operation came back (or the driver kept some past `CLOSE_WAIT_MS`).
fn reap(port: HANDLE, in_flight: &AtomicUsize) {
    let mut stopping = false;
    loop {
        if stopping && in_flight.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut bytes = 0u32;
        let mut key = 0usize;
        let mut overlapped: *mut OVERLAPPED = ptr::null_mut();
        let wait_ms = if stopping { CLOSE_WAIT_MS } else { u32::MAX };
        // SAFETY: our port; the out-pointers are locals.
        let ok = unsafe {
            GetQueuedCompletionStatus(port, &mut bytes, &mut key, &mut overlapped, wait_ms)
        };
        if overlapped.is_null() {
            if ok != 0 && key == STOP_KEY {
                stopping = true;
                continue;
            }
            // SAFETY: plain FFI call.
            let error = unsafe { GetLastError() };
            if error == WAIT_TIMEOUT {
                tracing::error!(
                    left = in_flight.load(Ordering::SeqCst),
                    "driver link: requests not given back by the driver; their buffers are leaked"
                );
            }
            // A timeout while stopping, or the port is gone: nothing more will come.
            return;
        }
        // SAFETY: every OVERLAPPED on this port is the first field of an `Op` leaked by
        // `Device::start`; the driver is done with it, so it is ours again. `Internal`
        // holds the NTSTATUS of the completion (the I/O status block's `Status`).
        let mut op = unsafe { Box::from_raw(overlapped.cast::<Op>()) };
        in_flight.fetch_sub(1, Ordering::SeqCst);
        let status = Status(op.overlapped.Internal as u32);
        let mut output = std::mem::take(&mut op.output);
        if op.direct_in || !status.is_success() {
            output.clear();
        } else {
            output.truncate(bytes as usize);
        }
        if let Some(done) = op.done.take() {
            // The caller may have stopped waiting; the operation is finished either way.
            let _ = done.send(LinkReply { status, output });
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: our handle; cancels every operation it has in the driver (parked
        // GET_MISSINGs complete cancelled; HYDRATEs complete when their writes do).
        unsafe { CancelIoEx(self.handle, ptr::null()) };
        // SAFETY: our port; a packet with no OVERLAPPED and the stop key.
        unsafe { PostQueuedCompletionStatus(self.port, 0, STOP_KEY, ptr::null()) };
        let reaper = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(reaper) = reaper {
            let _ = reaper.join();
        }
        // SAFETY: our handles, closed once, after the reaper stopped using the port.
        unsafe {
            CloseHandle(self.handle);
            CloseHandle(self.port);
        }
    }
}
