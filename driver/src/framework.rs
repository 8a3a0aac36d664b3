//! The KMDF operations the filter uses, as a trait.
//!
//! Each method stands for one or a few WDF calls, named in its comment, so the kernel
//! shell (`kmdf/`) implements it with wdk-sys in a few lines and the simulator implements
//! it over simulated IRPs. Nothing here decides anything: decisions live in
//! [`crate::filter`] and [`crate::engine`], which CI runs.
//!
//! Buffers are borrowed for the length of one call, as `WdfRequestRetrieve*Buffer`
//! pointers are valid only while the request is owned.

use crate::engine::LowerId;
use crate::status::Status;

/// What a request asks, from `WdfRequestGetParameters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestParameters {
    /// `WdfRequestTypeRead`: `Parameters.Read.DeviceOffset` and `.Length`.
    Read {
        /// Byte offset on the volume.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// `WdfRequestTypeWrite`, with `SL_WRITE_THROUGH` as FUA.
    Write {
        /// Byte offset on the volume.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Force unit access (`SL_WRITE_THROUGH` in the stack location's flags).
        fua: bool,
    },
    /// `IRP_MJ_FLUSH_BUFFERS` (routed to the filter's queue by
    /// `WdfDeviceConfigureRequestDispatching` for `WdfRequestTypeFlushBuffers`).
    Flush,
    /// `WdfRequestTypeDeviceControl` or `...Internal`: the IOCTL code and buffer lengths.
    DeviceControl {
        /// The IOCTL code.
        ioctl: u32,
        /// `InputBufferLength`.
        input_len: usize,
        /// `OutputBufferLength`.
        output_len: usize,
    },
    /// Anything else: forwarded unchanged.
    Other,
}

/// Where the data of a write the filter makes itself comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteSource<R> {
    /// A slice of the input buffer of a hydrate request from the service (the request
    /// stays owned by the filter until every write from it completes).
    Payload {
        /// The service's hydrate request.
        request: R,
        /// Byte offset into its payload.
        payload_offset: u64,
    },
    /// Zeros.
    Zeros,
}

/// The framework operations the filter needs. `R` is a request handle (`WDFREQUEST`).
pub trait Framework {
    /// A request handle; copied freely, valid until completed.
    type Request: Copy + Eq + core::fmt::Debug;

    /// `WdfRequestGetParameters`.
    fn parameters(&self, request: Self::Request) -> RequestParameters;

    /// The data a request brings in: `WdfRequestRetrieveInputBuffer`, except for
    /// `METHOD_IN_DIRECT` IOCTLs (the hydrate request), whose data comes in through the
    /// MDL-described buffer Win32 calls the output buffer (`WdfRequestRetrieveOutputBuffer`
    /// maps it). `Err` with the status the request should get when the buffer is shorter
    /// than `min_len` or missing.
    fn input_buffer(&self, request: Self::Request, min_len: usize) -> Result<&[u8], Status>;

    /// `WdfRequestRetrieveOutputBuffer`.
    fn output_buffer(
        &mut self,
        request: Self::Request,
        min_len: usize,
    ) -> Result<&mut [u8], Status>;

    /// `WdfRequestFormatRequestUsingCurrentType` + `WdfRequestSetCompletionRoutine` +
    /// `WdfRequestSend` to the lower target. The completion routine calls
    /// [`crate::filter::Filter::on_lower_complete`] with `lower`. `Err` when the send
    /// failed at once (the request is still the filter's).
    fn send_to_lower(&mut self, request: Self::Request, lower: LowerId) -> Result<(), Status>;

    /// `WdfRequestSend` with `WDF_REQUEST_SEND_OPTION_SEND_AND_FORGET`: the pass-through
    /// path, no completion routine. `Err` when the send failed at once.
    fn send_and_forget(&mut self, request: Self::Request) -> Result<(), Status>;

    /// `WdfRequestCreate` + `WdfIoTargetFormatRequestForWrite` (a partial MDL of the
    /// payload, or a zeroed buffer) + completion routine + `WdfRequestSend`: a write the
    /// filter makes itself. Completion calls `on_lower_complete` with `lower`.
    fn write_lower(
        &mut self,
        lower: LowerId,
        offset: u64,
        len: u64,
        source: WriteSource<Self::Request>,
    ) -> Result<(), Status>;

    /// `WdfRequestCreate` + `IRP_MJ_FLUSH_BUFFERS` formatted by hand + `WdfRequestSend`.
    fn flush_lower(&mut self, lower: LowerId) -> Result<(), Status>;

    /// `WdfRequestCompleteWithInformation`.
    fn complete(&mut self, request: Self::Request, status: Status, information: usize);

    /// `WdfRequestForwardToIoQueue` to the manual queue of the service's pended
    /// requests (the inverted call). `Err` when the queue refuses it.
    fn park(&mut self, request: Self::Request) -> Result<(), Status>;

    /// `WdfIoQueueRetrieveNextRequest` on that manual queue.
    fn take_parked(&mut self) -> Option<Self::Request>;

    /// `KeQueryInterruptTime` in nanoseconds (monotonic).
    fn now_ns(&self) -> u64;

    /// `WdfTimerStart`: call [`crate::filter::Filter::on_timer`] after `due_ns`.
    fn start_timer(&mut self, due_ns: u64);

    /// `WdfWorkItemEnqueue`: call [`crate::filter::Filter::on_commit_work`] at
    /// PASSIVE_LEVEL, where the metadata store may block.
    fn queue_commit_work(&mut self, commit: u64);

    /// `WdfRequestMarkCancelableEx` with the filter's `EvtRequestCancel`, which calls
    /// [`crate::filter::Filter::on_cancel`]. The filter marks every request it keeps
    /// after its queue callback returns (a held request), so the file system can cancel
    /// it. `Err(CANCELLED)` when the request was cancelled already: no callback comes,
    /// and the filter completes it itself.
    fn mark_cancelable(&mut self, request: Self::Request) -> Result<(), Status>;

    /// `WdfRequestUnmarkCancelable`, before the filter completes or sends a request it
    /// marked. `Err(CANCELLED)` when cancellation won the race: the cancel callback runs
    /// (later, since calls into the filter are serialized), and the request may be
    /// completed only from there.
    fn unmark_cancelable(&mut self, request: Self::Request) -> Result<(), Status>;
}
