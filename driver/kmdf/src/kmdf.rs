//! `impl Framework for Kmdf`: each method is one or a few WDF calls, nothing more.
//!
//! A `Framework::Request` is a `WDFREQUEST`. Every request the shell hands the filter
//! carries a [`RequestContext`]: requests presented by the volume's or the control
//! device's queues get it from `WdfDeviceInitSetRequestAttributes`, flushes wrapped by
//! `WdfRequestCreateFromIrp` and the filter's own writes and flushes get it from the
//! attributes they are created with. It holds the backlog link (`cell.rs`), where the
//! request came from, and, for a request sent down, its `LowerId` and final status.
//!
//! # Completion context
//! A request sent down with [`Framework::send_to_lower`] or made by
//! [`Framework::write_lower`] / [`Framework::flush_lower`] gets the completion routine
//! [`evt_lower_complete`] with the engine's `LowerId` as its WDF completion context
//! (a `u64` in a pointer-sized `WDFCONTEXT`: the driver builds only for 64-bit targets,
//! asserted below). The routine stores that id and `WdfRequestGetStatus` in the request
//! context and hands the request to the cell as `Event::LowerComplete`, which calls
//! `Filter::on_lower_complete(lower, status)` as the owner.

use core::ptr;

use rehydrate_driver::abi::{HYDRATE_PREFIX_BYTES, METHOD_IN_DIRECT};
use rehydrate_driver::engine::LowerId;
use rehydrate_driver::framework::{Framework, RequestParameters, WriteSource};
use rehydrate_driver::Status;
use wdk::nt_success;
use wdk_sys::{
    call_unsafe_wdf_function_binding,
    ntddk::{
        IoAllocateMdl, IoBuildPartialMdl, IoFreeMdl, IofCompleteRequest,
        KeQueryInterruptTimePrecise,
    },
    _POOL_TYPE, _WDF_REQUEST_SEND_OPTIONS_FLAGS, _WDF_REQUEST_TYPE, IO_STACK_LOCATION, NTSTATUS,
    PIRP, PMDL, PVOID, PWDF_REQUEST_COMPLETION_PARAMS, ULONG, ULONG_PTR, WDFCONTEXT, WDFDEVICE,
    WDFIOTARGET, WDFMEMORY, WDFOBJECT, WDFQUEUE, WDFREQUEST, WDFTIMER, WDFWORKITEM,
    WDF_REQUEST_PARAMETERS, WDF_REQUEST_SEND_OPTIONS,
};

use crate::cell::{Event, Pending, Shared};
use crate::wdf::{self, context_type, size_ulong, size_ushort};

// A `LowerId` travels in a `WDFCONTEXT`.
const _: () = assert!(core::mem::size_of::<WDFCONTEXT>() >= core::mem::size_of::<LowerId>());

/// Pool tag of the zero buffers ("RhyZ", read backwards in a pool dump).
const ZERO_BUFFER_TAG: ULONG = u32::from_le_bytes(*b"RhyZ");

/// Where a request came from, which decides how it is finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Origin {
    /// Presented by a WDF queue: finished with `WdfRequestCompleteWithInformation`.
    /// Never constructed in Rust: WDF zero-fills the context of every request it
    /// presents, and zero is this variant.
    #[allow(dead_code)]
    Queue = 0,
    /// An `IRP_MJ_FLUSH_BUFFERS` wrapped by `WdfRequestCreateFromIrp` in the preprocess
    /// hook: finished with `WdfObjectDelete` + `IoCompleteRequest` on the IRP.
    FlushIrp = 1,
    /// A write the filter made itself: deleted after its completion is reported.
    OwnWrite = 2,
    /// A flush the filter made itself: likewise.
    OwnFlush = 3,
}

/// The per-request context. WDF zero-fills it, and zero is a valid value of every field
/// (`Pending::None`, `Origin::Queue`, null pointers).
#[repr(C)]
pub struct RequestContext {
    /// Next request in the cell's backlog.
    pub next: WDFREQUEST,
    /// Why the request is in the backlog.
    pub pending: Pending,
    /// Where the request came from.
    pub origin: Origin,
    /// A wrapped flush the filter passed through: complete it with the lower status
    /// without telling the filter (it asked for send-and-forget).
    pub forget: bool,
    /// The engine's id for the lower request (completion routine).
    pub lower: LowerId,
    /// The lower status (completion routine).
    pub status: NTSTATUS,
    /// Sent down and back (completion routine): the lower driver's `Information` in the
    /// request's IRP is then what a success reports (bytes read or written, the
    /// data-set-management output), not the length the request asked for.
    pub returned: bool,
    /// The wrapped IRP (`Origin::FlushIrp`).
    pub irp: PIRP,
    /// The partial MDL of a hydrate payload (`Origin::OwnWrite`), freed with the request.
    pub partial_mdl: PMDL,
    /// The filter instance the request was sent for (completion routine).
    pub shared: *const Shared,
}

context_type!(REQUEST_CONTEXT_TYPE, RequestContext);

impl RequestContext {
    /// The descriptor to pass in a request's attributes.
    pub fn type_info() -> &'static wdf::ContextType {
        &REQUEST_CONTEXT_TYPE
    }

    /// The context of `request`.
    ///
    /// # Safety
    /// `request` must be a live request created with this context type (every request
    /// the shell handles is: module comment).
    pub unsafe fn of(request: WDFREQUEST) -> *mut RequestContext {
        // SAFETY: the caller's contract.
        unsafe { REQUEST_CONTEXT_TYPE.get(request as WDFOBJECT) }
    }
}

/// The WDF objects one filter instance calls into. Only the cell's owner touches it.
pub struct Kmdf {
    /// The filter device object.
    pub device: WDFDEVICE,
    /// `WdfDeviceGetIoTarget`: the volume below.
    pub lower: WDFIOTARGET,
    /// The control device's manual queue for pended `GET_MISSING` requests.
    pub parked: WDFQUEUE,
    /// One-shot timer: `Filter::on_timer`.
    pub timer: WDFTIMER,
    /// Work item: `Filter::on_commit_work` at PASSIVE_LEVEL.
    pub commit_item: WDFWORKITEM,
    /// This instance's cell, recorded in requests sent down.
    pub shared: *const Shared,
    /// The commit the work item is to perform (one is in flight at a time).
    pub pending_commit: Option<u64>,
}

fn status(nt: NTSTATUS) -> Status {
    Status(nt as u32)
}

fn nt(status: Status) -> NTSTATUS {
    status.0 as NTSTATUS
}

impl Kmdf {
    /// `WdfRequestGetParameters`.
    fn wdf_parameters(request: WDFREQUEST) -> WDF_REQUEST_PARAMETERS {
        let mut params = WDF_REQUEST_PARAMETERS {
            Size: size_ushort::<WDF_REQUEST_PARAMETERS>(),
            ..WDF_REQUEST_PARAMETERS::default()
        };
        // SAFETY: `request` is a live request the driver owns (Framework contract) and
        // `params` is initialised with its size as WDF_REQUEST_PARAMETERS_INIT does.
        unsafe { call_unsafe_wdf_function_binding!(WdfRequestGetParameters, request, &mut params) };
        params
    }

    /// `WdfRequestRetrieveInputBuffer` or `...OutputBuffer` as one slice.
    fn retrieve(
        request: WDFREQUEST,
        min_len: usize,
        output: bool,
    ) -> Result<(*mut u8, usize), Status> {
        let mut buffer: PVOID = ptr::null_mut();
        let mut len: usize = 0;
        // SAFETY: live, driver-owned request; both out-pointers are locals. WDF checks
        // `min_len` and returns STATUS_BUFFER_TOO_SMALL itself.
        let nt_status = unsafe {
            if output {
                call_unsafe_wdf_function_binding!(
                    WdfRequestRetrieveOutputBuffer,
                    request,
                    min_len,
                    &mut buffer,
                    &mut len
                )
            } else {
                call_unsafe_wdf_function_binding!(
                    WdfRequestRetrieveInputBuffer,
                    request,
                    min_len,
                    &mut buffer,
                    &mut len
                )
            }
        };
        if !nt_success(nt_status) {
            return Err(status(nt_status));
        }
        if buffer.is_null() || len < min_len {
            return Err(Status::BUFFER_TOO_SMALL);
        }
        Ok((buffer.cast(), len))
    }

    /// Creates a request of our own for the lower target, with a request context.
    fn create_request(&self, origin: Origin, lower: LowerId) -> Result<WDFREQUEST, Status> {
        let mut attributes =
            wdf::attributes(Some(RequestContext::type_info()), self.device as WDFOBJECT);
        let mut request: WDFREQUEST = ptr::null_mut();
        // SAFETY: the attributes are initialised (size, context type, parent device); the
        // target is the device's live local I/O target, so the IRP gets its stack size.
        let nt_status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRequestCreate,
                &mut attributes,
                self.lower,
                &mut request
            )
        };
        if !nt_success(nt_status) {
            return Err(status(nt_status));
        }
        // SAFETY: just created with the context type; zero-filled by WDF.
        unsafe {
            let ctx = RequestContext::of(request);
            (*ctx).origin = origin;
            (*ctx).lower = lower;
            (*ctx).shared = self.shared;
        }
        Ok(request)
    }

    /// Sets the next stack location of one of our requests by hand
    /// (`WdfRequestWdmFormatUsingStackLocation`): a write of `len` bytes at `offset`, or a
    /// flush.
    fn format_by_hand(request: WDFREQUEST, major: u32, offset: i64, len: ULONG) {
        let mut location = IO_STACK_LOCATION {
            MajorFunction: major as u8,
            ..IO_STACK_LOCATION::default()
        };
        if major == wdk_sys::IRP_MJ_WRITE {
            // `Parameters.Write` is the arm IRP_MJ_WRITE uses (writing a union field of
            // plain integers is safe).
            location.Parameters.Write.Length = len;
            location.Parameters.Write.ByteOffset.QuadPart = offset;
        }
        // SAFETY: `request` was created by `create_request` for the lower target and is
        // not sent yet; WDF copies `location` into the IRP's next stack location.
        unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRequestWdmFormatUsingStackLocation,
                request,
                &mut location
            )
        };
    }

    /// Completion routine + `WdfRequestSend`; on failure the request is still ours.
    fn send_with_completion(&self, request: WDFREQUEST, lower: LowerId) -> Result<(), Status> {
        // SAFETY: live, driver-owned, formatted request; the routine and its context (the
        // lower id, a plain integer) stay valid for as long as the request is in flight.
        unsafe {
            call_unsafe_wdf_function_binding!(
                WdfRequestSetCompletionRoutine,
                request,
                Some(evt_lower_complete),
                lower as usize as WDFCONTEXT
            );
            let sent = call_unsafe_wdf_function_binding!(
                WdfRequestSend,
                request,
                self.lower,
                ptr::null_mut()
            );
            if sent == 0 {
                return Err(status(call_unsafe_wdf_function_binding!(
                    WdfRequestGetStatus,
                    request
                )));
            }
        }
        Ok(())
    }

    /// Frees one of our own requests (after its completion was reported, or when it
    /// could not be sent): the partial MDL, then the request object.
    ///
    /// # Safety
    /// `request` must be an `OwnWrite`/`OwnFlush` request that is not in flight.
    pub unsafe fn free_own(request: WDFREQUEST) {
        // SAFETY: the caller's contract; the IRP belongs to the request until deleted,
        // and the MDL was allocated by `write_lower` for this IRP only.
        unsafe {
            let ctx = RequestContext::of(request);
            debug_assert!(matches!((*ctx).origin, Origin::OwnWrite | Origin::OwnFlush));
            let partial = core::mem::replace(&mut (*ctx).partial_mdl, ptr::null_mut());
            if !partial.is_null() {
                let irp = call_unsafe_wdf_function_binding!(WdfRequestWdmGetIrp, request);
                (*irp).MdlAddress = ptr::null_mut();
                IoFreeMdl(partial);
            }
            call_unsafe_wdf_function_binding!(WdfObjectDelete, request as WDFOBJECT);
        }
    }

    /// The payload source of a write: a partial MDL over `len` bytes of the hydrate
    /// request's direct buffer, starting `payload_offset` bytes into its payload.
    fn payload_mdl(hydrate: WDFREQUEST, payload_offset: u64, len: ULONG) -> Result<PMDL, Status> {
        let mut source: PMDL = ptr::null_mut();
        // SAFETY: the hydrate request is owned by the filter until every write made from
        // it completed (Filter contract); for METHOD_IN_DIRECT its output MDL describes
        // the locked message the service sent.
        let nt_status = unsafe {
            call_unsafe_wdf_function_binding!(WdfRequestRetrieveOutputWdmMdl, hydrate, &mut source)
        };
        if !nt_success(nt_status) || source.is_null() {
            return Err(Status::INVALID_PARAMETER);
        }
        let byte = u64::try_from(HYDRATE_PREFIX_BYTES)
            .ok()
            .and_then(|prefix| prefix.checked_add(payload_offset))
            .ok_or(Status::INVALID_PARAMETER)?;
        // SAFETY: `source` is the live MDL of the request (above).
        let (start, total) = unsafe {
            let va = (*source)
                .StartVa
                .cast::<u8>()
                .wrapping_add((*source).ByteOffset as usize);
            (va, u64::from((*source).ByteCount))
        };
        if byte
            .checked_add(u64::from(len))
            .is_none_or(|end| end > total)
        {
            return Err(Status::INVALID_PARAMETER);
        }
        // In bounds of the MDL's range (checked above), so this stays inside it.
        let va: PVOID = start.wrapping_add(byte as usize).cast();
        // SAFETY: `va..va+len` lies inside the range `source` describes (checked above);
        // IoBuildPartialMdl maps the same locked pages, no copy.
        unsafe {
            let partial = IoAllocateMdl(va, len, 0, 0, ptr::null_mut());
            if partial.is_null() {
                return Err(Status::INSUFFICIENT_RESOURCES);
            }
            IoBuildPartialMdl(source, partial, va, len);
            Ok(partial)
        }
    }
}

impl Framework for Kmdf {
    type Request = WDFREQUEST;

    fn parameters(&self, request: WDFREQUEST) -> RequestParameters {
        // SAFETY: every request the filter gets has our context (module comment).
        if unsafe { (*RequestContext::of(request)).origin } == Origin::FlushIrp {
            return RequestParameters::Flush;
        }
        let params = Self::wdf_parameters(request);
        // SAFETY: each arm reads the union member WDF fills for that request type.
        unsafe {
            match params.Type {
                _WDF_REQUEST_TYPE::WdfRequestTypeRead => RequestParameters::Read {
                    offset: params.Parameters.Read.DeviceOffset as u64,
                    len: params.Parameters.Read.Length as u64,
                },
                _WDF_REQUEST_TYPE::WdfRequestTypeWrite => {
                    // WDF_REQUEST_PARAMETERS has no stack-location flags: read
                    // SL_WRITE_THROUGH from the IRP (the current location is ours).
                    let irp = call_unsafe_wdf_function_binding!(WdfRequestWdmGetIrp, request);
                    let flags = (*wdf::current_stack_location(irp)).Flags;
                    RequestParameters::Write {
                        offset: params.Parameters.Write.DeviceOffset as u64,
                        len: params.Parameters.Write.Length as u64,
                        fua: u32::from(flags) & wdk_sys::SL_WRITE_THROUGH != 0,
                    }
                }
                _WDF_REQUEST_TYPE::WdfRequestTypeFlushBuffers => RequestParameters::Flush,
                _WDF_REQUEST_TYPE::WdfRequestTypeDeviceControl
                | _WDF_REQUEST_TYPE::WdfRequestTypeDeviceControlInternal => {
                    RequestParameters::DeviceControl {
                        ioctl: params.Parameters.DeviceIoControl.IoControlCode,
                        input_len: params.Parameters.DeviceIoControl.InputBufferLength,
                        output_len: params.Parameters.DeviceIoControl.OutputBufferLength,
                    }
                }
                _ => RequestParameters::Other,
            }
        }
    }

    fn input_buffer(&self, request: WDFREQUEST, min_len: usize) -> Result<&[u8], Status> {
        // METHOD_IN_DIRECT (HYDRATE) carries the whole message in the buffer Win32 calls
        // the output buffer, described by an MDL (abi::ioctl); WDF maps it for us.
        let params = Self::wdf_parameters(request);
        // SAFETY: the DeviceIoControl arm is only read for device-control requests.
        let direct_in = params.Type == _WDF_REQUEST_TYPE::WdfRequestTypeDeviceControl
            && unsafe { params.Parameters.DeviceIoControl.IoControlCode } & 3 == METHOD_IN_DIRECT;
        let (buffer, len) = Self::retrieve(request, min_len, direct_in)?;
        // SAFETY: WDF returned `len` valid bytes that stay mapped while the driver owns
        // the request; the filter uses the slice within the call that asked for it.
        Ok(unsafe { core::slice::from_raw_parts(buffer, len) })
    }

    fn output_buffer(&mut self, request: WDFREQUEST, min_len: usize) -> Result<&mut [u8], Status> {
        let (buffer, len) = Self::retrieve(request, min_len, true)?;
        // SAFETY: as in `input_buffer`; the output buffer is writable and nobody else
        // touches it while the driver owns the request.
        Ok(unsafe { core::slice::from_raw_parts_mut(buffer, len) })
    }

    fn send_to_lower(&mut self, request: WDFREQUEST, lower: LowerId) -> Result<(), Status> {
        // SAFETY: live, driver-owned request with our context; formatting copies our
        // stack location to the next one (read, write, flush or IOCTL alike).
        unsafe {
            let ctx = RequestContext::of(request);
            (*ctx).lower = lower;
            (*ctx).shared = self.shared;
            (*ctx).forget = false;
            (*ctx).returned = false;
            call_unsafe_wdf_function_binding!(WdfRequestFormatRequestUsingCurrentType, request);
        }
        self.send_with_completion(request, lower)
    }

    fn send_and_forget(&mut self, request: WDFREQUEST) -> Result<(), Status> {
        // SAFETY: as above.
        let ctx = unsafe { RequestContext::of(request) };
        // SAFETY: our context, read by the owner only.
        if unsafe { (*ctx).origin } == Origin::FlushIrp {
            // A request made from an IRP cannot be sent and forgotten (WDF would not
            // complete the IRP): send it with a completion that completes the IRP with
            // the lower status and does not involve the filter.
            // SAFETY: as in `send_to_lower`.
            unsafe {
                (*ctx).shared = self.shared;
                (*ctx).forget = true;
                (*ctx).returned = false;
                call_unsafe_wdf_function_binding!(WdfRequestFormatRequestUsingCurrentType, request);
            }
            return self.send_with_completion(request, 0);
        }
        let mut options = WDF_REQUEST_SEND_OPTIONS {
            Size: size_ulong::<WDF_REQUEST_SEND_OPTIONS>(),
            Flags: _WDF_REQUEST_SEND_OPTIONS_FLAGS::WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET
                as ULONG,
            Timeout: 0,
        };
        // SAFETY: a queue-presented request the driver owns; with SEND_AND_FORGET WDF
        // skips our stack location and the request is no longer ours once sent.
        unsafe {
            let sent = call_unsafe_wdf_function_binding!(
                WdfRequestSend,
                request,
                self.lower,
                &mut options
            );
            if sent == 0 {
                return Err(status(call_unsafe_wdf_function_binding!(
                    WdfRequestGetStatus,
                    request
                )));
            }
        }
        Ok(())
    }

    fn write_lower(
        &mut self,
        lower: LowerId,
        offset: u64,
        len: u64,
        source: WriteSource<WDFREQUEST>,
    ) -> Result<(), Status> {
        let len_ulong = ULONG::try_from(len).map_err(|_| Status::INVALID_PARAMETER)?;
        let mut device_offset = i64::try_from(offset).map_err(|_| Status::INVALID_PARAMETER)?;
        let request = self.create_request(Origin::OwnWrite, lower)?;
        let formatted = match source {
            WriteSource::Zeros => {
                // A zeroed nonpaged buffer, freed with the request (its parent).
                let mut attributes = wdf::attributes(None, request as WDFOBJECT);
                let mut memory: WDFMEMORY = ptr::null_mut();
                let mut buffer: PVOID = ptr::null_mut();
                // SAFETY: initialised attributes; out-pointers are locals. On success
                // `buffer` holds `len` writable bytes, which we zero before use.
                let nt_status = unsafe {
                    call_unsafe_wdf_function_binding!(
                        WdfMemoryCreate,
                        &mut attributes,
                        _POOL_TYPE::NonPagedPoolNx,
                        ZERO_BUFFER_TAG,
                        len_ulong as usize,
                        &mut memory,
                        &mut buffer
                    )
                };
                if nt_success(nt_status) {
                    // SAFETY: see above, plus the target's formatting of our own request
                    // for a write of that memory at `device_offset`.
                    unsafe {
                        ptr::write_bytes(buffer.cast::<u8>(), 0, len_ulong as usize);
                        let nt_status = call_unsafe_wdf_function_binding!(
                            WdfIoTargetFormatRequestForWrite,
                            self.lower,
                            request,
                            memory,
                            ptr::null_mut(),
                            &mut device_offset
                        );
                        if nt_success(nt_status) {
                            Ok(())
                        } else {
                            Err(status(nt_status))
                        }
                    }
                } else {
                    Err(status(nt_status))
                }
            }
            WriteSource::Payload {
                request: hydrate,
                payload_offset,
            } => Self::payload_mdl(hydrate, payload_offset, len_ulong).map(|partial| {
                Self::format_by_hand(request, wdk_sys::IRP_MJ_WRITE, device_offset, len_ulong);
                // SAFETY: our own request, not sent yet; the MDL is freed with it.
                unsafe {
                    (*RequestContext::of(request)).partial_mdl = partial;
                    let irp = call_unsafe_wdf_function_binding!(WdfRequestWdmGetIrp, request);
                    (*irp).MdlAddress = partial;
                }
            }),
        };
        let sent = formatted.and_then(|()| self.send_with_completion(request, lower));
        if sent.is_err() {
            // SAFETY: our own request, never sent (or refused by WdfRequestSend).
            unsafe { Self::free_own(request) };
        }
        sent
    }

    fn flush_lower(&mut self, lower: LowerId) -> Result<(), Status> {
        let request = self.create_request(Origin::OwnFlush, lower)?;
        Self::format_by_hand(request, wdk_sys::IRP_MJ_FLUSH_BUFFERS, 0, 0);
        let sent = self.send_with_completion(request, lower);
        if sent.is_err() {
            // SAFETY: our own request, refused by WdfRequestSend.
            unsafe { Self::free_own(request) };
        }
        sent
    }

    fn complete(&mut self, request: WDFREQUEST, status: Status, information: usize) {
        // SAFETY: a live request the filter owns, with our context.
        let ctx = unsafe { RequestContext::of(request) };
        // SAFETY: as above; the IRP's Information is the lower driver's once the request
        // came back (`WdfRequestGetInformation` reads `Irp->IoStatus.Information`).
        let information = unsafe {
            if (*ctx).returned && status.is_success() {
                call_unsafe_wdf_function_binding!(WdfRequestGetInformation, request)
            } else {
                information as ULONG_PTR
            }
        };
        // SAFETY: as above.
        match unsafe { (*ctx).origin } {
            Origin::Queue => {
                // SAFETY: a queue-presented request the driver owns; completing it ends
                // our ownership, and the filter forgets it.
                unsafe {
                    call_unsafe_wdf_function_binding!(
                        WdfRequestCompleteWithInformation,
                        request,
                        nt(status),
                        information
                    )
                };
            }
            Origin::FlushIrp => {
                // SAFETY: a request made by WdfRequestCreateFromIrp must be deleted, not
                // completed, and the IRP then completed by us (WDF documentation); the
                // IRP was marked pending in the preprocess hook and is ours again.
                unsafe {
                    let irp = (*ctx).irp;
                    call_unsafe_wdf_function_binding!(WdfObjectDelete, request as WDFOBJECT);
                    (*irp).IoStatus.__bindgen_anon_1.Status = nt(status);
                    (*irp).IoStatus.Information = information;
                    IofCompleteRequest(irp, wdk_sys::IO_NO_INCREMENT as _);
                }
            }
            Origin::OwnWrite | Origin::OwnFlush => {
                debug_assert!(false, "the filter completed a request it made itself");
            }
        }
    }

    fn park(&mut self, request: WDFREQUEST) -> Result<(), Status> {
        // SAFETY: a control-device request the driver owns; the manual queue belongs to
        // the same (control) device, as WdfRequestForwardToIoQueue requires.
        let nt_status = unsafe {
            call_unsafe_wdf_function_binding!(WdfRequestForwardToIoQueue, request, self.parked)
        };
        if nt_success(nt_status) {
            Ok(())
        } else {
            Err(status(nt_status))
        }
    }

    fn take_parked(&mut self) -> Option<WDFREQUEST> {
        let mut request: WDFREQUEST = ptr::null_mut();
        // SAFETY: the manual queue is live while any filter instance is; the out-pointer
        // is a local. STATUS_NO_MORE_ENTRIES means empty. A request being cancelled is
        // not returned (WDF completes it itself).
        let nt_status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfIoQueueRetrieveNextRequest,
                self.parked,
                &mut request
            )
        };
        (nt_success(nt_status) && !request.is_null()).then_some(request)
    }

    fn now_ns(&self) -> u64 {
        let mut performance_counter = 0u64;
        // SAFETY: reads the interrupt-time clock (monotonic, 100 ns units) at any IRQL and
        // writes the local. (`KeQueryInterruptTime` is a header macro on x64, so bindgen
        // has no function for it; the precise variant is exported everywhere.)
        let ticks = unsafe { KeQueryInterruptTimePrecise(&mut performance_counter) };
        ticks.saturating_mul(100)
    }

    fn start_timer(&mut self, due_ns: u64) {
        // Negative due time = relative, in 100 ns units; at least one unit.
        let due = i64::try_from((due_ns / 100).max(1)).unwrap_or(i64::MAX);
        // SAFETY: the timer is a live child of the device; (re)starting a one-shot timer
        // is allowed at DISPATCH_LEVEL. The result (already queued or not) is irrelevant.
        let _ = unsafe { call_unsafe_wdf_function_binding!(WdfTimerStart, self.timer, -due) };
    }

    fn queue_commit_work(&mut self, commit: u64) {
        debug_assert!(
            self.pending_commit.is_none(),
            "one commit in flight at a time"
        );
        self.pending_commit = Some(commit);
        // SAFETY: the work item is a live child of the device; enqueueing is allowed at
        // DISPATCH_LEVEL and is ignored if it is already queued.
        unsafe { call_unsafe_wdf_function_binding!(WdfWorkItemEnqueue, self.commit_item) };
    }

    fn mark_cancelable(&mut self, request: WDFREQUEST) -> Result<(), Status> {
        // SAFETY: a queue-presented request the filter owns and keeps (only held reads,
        // writes and trims are marked; wrapped flushes never are, they belong to no
        // queue). Its context names this instance's cell for the cancel callback.
        let nt_status = unsafe {
            (*RequestContext::of(request)).shared = self.shared;
            call_unsafe_wdf_function_binding!(
                WdfRequestMarkCancelableEx,
                request,
                Some(evt_request_cancel)
            )
        };
        if nt_success(nt_status) {
            Ok(())
        } else {
            Err(status(nt_status))
        }
    }

    fn unmark_cancelable(&mut self, request: WDFREQUEST) -> Result<(), Status> {
        // SAFETY: a request the filter marked cancelable and still owns; on
        // STATUS_CANCELLED the cancel callback owns its completion.
        let nt_status =
            unsafe { call_unsafe_wdf_function_binding!(WdfRequestUnmarkCancelable, request) };
        if nt_success(nt_status) {
            Ok(())
        } else {
            Err(status(nt_status))
        }
    }
}

/// `EVT_WDF_REQUEST_COMPLETION_ROUTINE` of every request sent down with a completion.
/// Runs at IRQL <= DISPATCH_LEVEL, possibly inside the `WdfRequestSend` that sent it:
/// the cell turns that re-entry into a backlog entry.
pub extern "C" fn evt_lower_complete(
    request: WDFREQUEST,
    _target: WDFIOTARGET,
    _params: PWDF_REQUEST_COMPLETION_PARAMS,
    context: WDFCONTEXT,
) {
    // SAFETY: WDF hands back a request we sent, with our context; it is ours again. The
    // cell it names lives until the device is destroyed, which waits for sent requests.
    unsafe {
        let ctx = RequestContext::of(request);
        (*ctx).lower = context as usize as LowerId;
        (*ctx).status = call_unsafe_wdf_function_binding!(WdfRequestGetStatus, request);
        (*ctx).returned = true;
        let shared = (*ctx).shared;
        debug_assert!(!shared.is_null());
        (*shared).enter(Event::LowerComplete(request));
    }
}

/// `EVT_WDF_REQUEST_CANCEL` of a held request (IRQL <= DISPATCH_LEVEL): the cell runs
/// `Filter::on_cancel` as the owner, which completes the request.
pub extern "C" fn evt_request_cancel(request: WDFREQUEST) {
    // SAFETY: WDF hands back a request we marked cancelable; it stays ours until the
    // filter completes it, and its context names the cell it was marked for, which
    // lives until the device is destroyed (after every request is completed).
    unsafe {
        let shared = (*RequestContext::of(request)).shared;
        debug_assert!(!shared.is_null());
        (*shared).enter(Event::Cancel(request));
    }
}
