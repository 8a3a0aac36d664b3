//! The Windows shell's I/O queues, checked on Linux. The shell's queue table
//! (`driver/kmdf/src/queue_spec.rs`, plain Rust) is compiled into this test, so its real
//! values are checked against what KMDF needs; the shell's sources are then read to make
//! sure every queue is built from that table and nothing else.
//!
//! KMDF's rules (microsoft/Windows-Driver-Frameworks, fxioqueue.cpp): a parallel queue
//! presents at most `Settings.Parallel.NumberOfPresentedRequests` requests at once
//! (`FxIoQueue::Initialize` stores it, `FxIoQueue::DispatchEvents` stops at it), so 0
//! presents nothing; `WDF_IO_QUEUE_CONFIG_INIT` writes `(ULONG)-1`. A manual or
//! sequential queue must say 0 and may not have callbacks, else `WdfIoQueueCreate` fails.

#[path = "../kmdf/src/queue_spec.rs"]
mod queue_spec;

mod kmdf_source;

use kmdf_source::{kmdf_code, kmdf_sources};
use queue_spec::{
    Dispatch, QueueSpec, CONTROL_QUEUE, PARKED_QUEUE, PRESENTED_UNLIMITED, VOLUME_QUEUE,
};

const ALL: [(&str, QueueSpec); 3] = [
    ("VOLUME_QUEUE", VOLUME_QUEUE),
    ("CONTROL_QUEUE", CONTROL_QUEUE),
    ("PARKED_QUEUE", PARKED_QUEUE),
];

#[test]
fn parallel_queues_present_every_request_and_manual_ones_none() {
    // `(ULONG)-1`, as WDF_IO_QUEUE_CONFIG_INIT writes it.
    assert_eq!(PRESENTED_UNLIMITED, 0xFFFF_FFFF);
    for (name, spec) in ALL {
        match spec.dispatch {
            Dispatch::Parallel => assert_eq!(
                spec.presented_requests_max,
                PRESENTED_UNLIMITED,
                "{name}: a parallel queue capped at {} presents {}",
                spec.presented_requests_max,
                if spec.presented_requests_max == 0 {
                    "nothing: every request would wait forever"
                } else {
                    "too few: held reads would block the rest"
                }
            ),
            Dispatch::Manual => assert_eq!(
                spec.presented_requests_max, 0,
                "{name}: KMDF refuses NumberOfPresentedRequests != 0 on a manual queue"
            ),
        }
    }
}

#[test]
fn each_queue_has_the_dispatch_type_and_role_the_filter_relies_on() {
    // The volume's requests and the service's requests flow in parallel (a held read must
    // not block the others; GET_MISSING stays pended while HYDRATEs arrive).
    assert_eq!(VOLUME_QUEUE.dispatch, Dispatch::Parallel);
    assert_eq!(CONTROL_QUEUE.dispatch, Dispatch::Parallel);
    // The parked GET_MISSINGs are retrieved by the filter, never presented.
    assert_eq!(PARKED_QUEUE.dispatch, Dispatch::Manual);
    let defaults = ALL.map(|(_, spec)| spec.default_queue);
    assert_eq!(
        defaults,
        [true, true, false],
        "which queues are default queues"
    );
    for (name, spec) in ALL {
        assert!(
            !spec.power_managed,
            "{name}: a power-managed queue stalls the paging path across power transitions"
        );
    }
}

#[test]
fn every_queue_of_the_shell_is_built_from_the_table() {
    let mut configs = Vec::new();
    let mut creates = Vec::new();
    for path in kmdf_sources() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let code = kmdf_code(&name);
        if code.contains("WDF_IO_QUEUE_CONFIG {") {
            configs.push(name.clone());
        }
        if code.contains("WdfIoQueueCreate") {
            creates.push(name);
        }
    }
    assert_eq!(
        configs,
        ["queues.rs"],
        "a WDF_IO_QUEUE_CONFIG built outside queues.rs bypasses queue_spec.rs (a queue left \
         at NumberOfPresentedRequests = 0 presents nothing)"
    );
    assert_eq!(creates, ["queues.rs"], "WdfIoQueueCreate outside queues.rs");
    let queues = kmdf_code("queues.rs");
    assert!(
        queues
            .contains("Settings.Parallel.NumberOfPresentedRequests = spec.presented_requests_max"),
        "queues.rs must copy the table's cap into the config"
    );
    let device = kmdf_code("device.rs");
    assert!(device.contains("queues::create(device, &VOLUME_QUEUE, handlers)"));
    let control = kmdf_code("control.rs");
    assert!(control.contains("&CONTROL_QUEUE,"));
    assert!(control.contains("queues::create(device, &PARKED_QUEUE, Handlers::default())"));
}

#[test]
fn held_requests_fail_before_the_removal_purge_waits_for_them() {
    // KMDF purges the non-power-managed queue and waits for every request the driver owns
    // before the device's cleanup callback runs (pnpstatemachine.cpp,
    // PnpEventRemovedCommonCode), so the filter must let go in EvtDeviceSelfManagedIoFlush
    // (PnpCleanupForRemove) or EvtIoStop, not only at cleanup.
    let device = kmdf_code("device.rs");
    assert!(device.contains("EvtDeviceSelfManagedIoFlush: Some(evt_self_managed_io_flush)"));
    assert!(device.contains("stop: Some(evt_io_stop)"));
    for callback in ["fn evt_self_managed_io_flush(", "fn evt_io_stop("] {
        let at = device
            .find(callback)
            .unwrap_or_else(|| panic!("device.rs lacks {callback}"));
        let body = &device[at..];
        let body = &body[..body.find("\n}\n").expect("end of function")];
        assert!(
            body.contains("Event::Remove"),
            "{callback}) must hand the removal to the filter"
        );
    }
}
