//! The I/O queues the shell creates, as plain data: dispatch type, default or not, power
//! management, and the cap on requests presented at once.
//!
//! Plain Rust with no WDK types, so the Linux CI compiles this very file into a test
//! (`driver/tests/kmdf_queues.rs`) and checks the values KMDF needs; `queues.rs` turns
//! each spec into a `WDF_IO_QUEUE_CONFIG`, the only place one is built.
//!
//! Why the cap matters: KMDF stores `Settings.Parallel.NumberOfPresentedRequests` as the
//! most requests a parallel queue hands the driver at once (`FxIoQueue::Initialize`,
//! fxioqueue.cpp) and stops presenting when the driver owns that many
//! (`FxIoQueue::DispatchEvents`). Zero therefore presents nothing and every read of the
//! volume waits forever; `WDF_IO_QUEUE_CONFIG_INIT` writes `(ULONG)-1` for a parallel
//! queue, and `FxIoQueue::Initialize` refuses anything but 0 on a manual or sequential one.

/// `(ULONG)-1`: a parallel queue presents every request it has.
pub const PRESENTED_UNLIMITED: u32 = u32::MAX;

/// `WDF_IO_QUEUE_DISPATCH_TYPE`, the two the shell uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// `WdfIoQueueDispatchParallel`: requests presented as they come.
    Parallel,
    /// `WdfIoQueueDispatchManual`: nothing presented; the driver retrieves requests.
    Manual,
}

/// One queue's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// How requests leave the queue.
    pub dispatch: Dispatch,
    /// The device's default queue (receives every request type without a queue of its own).
    pub default_queue: bool,
    /// `PowerManaged`: false for all of ours (a storage filter in the paging path must not
    /// stall I/O across power transitions; a control device has no power state).
    pub power_managed: bool,
    /// `Settings.Parallel.NumberOfPresentedRequests`.
    pub presented_requests_max: u32,
}

/// The volume's requests: parallel, because the filter holds reads for minutes while
/// others flow.
pub const VOLUME_QUEUE: QueueSpec = QueueSpec {
    dispatch: Dispatch::Parallel,
    default_queue: true,
    power_managed: false,
    presented_requests_max: PRESENTED_UNLIMITED,
};

/// The control device's requests from the service.
pub const CONTROL_QUEUE: QueueSpec = QueueSpec {
    dispatch: Dispatch::Parallel,
    default_queue: true,
    power_managed: false,
    presented_requests_max: PRESENTED_UNLIMITED,
};

/// Where the filter parks the service's pended `GET_MISSING` requests (the inverted call).
pub const PARKED_QUEUE: QueueSpec = QueueSpec {
    dispatch: Dispatch::Manual,
    default_queue: false,
    power_managed: false,
    presented_requests_max: 0,
};
