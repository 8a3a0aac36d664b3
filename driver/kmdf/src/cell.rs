//! Who may touch the filter, and when: one owner at a time, everyone else leaves a note.
//!
//! # Why not just hold a spin lock around every call
//! Queue callbacks, completion routines and the timer DPC run at up to DISPATCH_LEVEL,
//! on any processor, concurrently, so the filter needs a spin lock (a WDFSPINLOCK;
//! a wait lock or mutex cannot be taken at DISPATCH_LEVEL). Two things rule out holding
//! that lock across a call into the filter:
//!
//! * **Re-entry.** `WdfRequestSend` may complete the request before it returns, so the
//!   completion routine runs on the same stack, inside the filter call that sent it, and
//!   would spin forever on a lock its own thread holds.
//! * **The metadata commit.** [`Filter::on_commit_work`] writes and flushes the metadata
//!   file while it holds `&mut Filter`; `ZwWriteFile` must run at PASSIVE_LEVEL, and a
//!   thread holding a spin lock runs at DISPATCH_LEVEL.
//!
//! # What we do instead (an owner flag and a backlog, as in Linux's socket lock)
//! The WDFSPINLOCK guards only a few words: an `owned` flag and a FIFO of deferred
//! callbacks. A callback takes the spin lock for a few instructions: if nobody owns the
//! filter it becomes the owner, drops the spin lock and calls the filter at whatever
//! IRQL it runs at; if somebody does, it appends itself to the backlog and returns (the
//! WDF request stays owned by the driver, so nothing is lost). Before giving up
//! ownership the owner runs the backlog in arrival order. So the filter is never
//! re-entered (as in the simulator, where a completion runs after the callback that
//! caused it), callers never spin on the filter's work, and the commit work item can
//! own the filter at PASSIVE_LEVEL for as long as the file I/O takes: meanwhile I/O is
//! noted in the backlog and runs when the commit is done.
//!
//! The backlog needs no allocation: its links live in each request's WDF context (a
//! request is in it at most once: either as a new request or as a completed one), and
//! the timer and a removal are flags. A thread at PASSIVE_LEVEL that needs ownership (the commit work
//! item, device removal) waits on an event and is handed ownership by the owner leaving.
//! An owner at DISPATCH_LEVEL runs at most [`DRAIN_MAX`] backlog entries, then hands
//! the rest to a work item, to stay far from the DPC watchdog.
//!
//! Nothing here decides anything about I/O: it only serialises calls into the filter.

use core::cell::UnsafeCell;
use core::ptr;

use rehydrate_driver::filter::Volume;
use wdk_sys::{
    call_unsafe_wdf_function_binding, ntddk::KeInitializeEvent, ntddk::KeSetEvent,
    ntddk::KeWaitForSingleObject, _EVENT_TYPE, _KWAIT_REASON, KEVENT, NTSTATUS, WDFOBJECT,
    WDFREQUEST, WDFSPINLOCK, WDFWORKITEM,
};

use crate::kmdf::{Kmdf, RequestContext};
use crate::meta_store::FileStore;

/// Backlog entries an owner at DISPATCH_LEVEL runs before handing the rest to a work item.
pub const DRAIN_MAX: u32 = 64;

/// What a deferred callback was (kept in the request's context while it waits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Pending {
    /// Not in the backlog.
    None = 0,
    /// A request from the volume's default queue (or a flush from the preprocess hook).
    Io = 1,
    /// A request from the control device's queue.
    Control = 2,
    /// A request the filter sent down came back (lower id and status in the context).
    LowerComplete = 3,
    /// A held request was cancelled (its `EvtRequestCancel` ran).
    Cancel = 4,
}

/// A callback to run as the owner.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// See [`Pending::Io`].
    Io(WDFREQUEST),
    /// See [`Pending::Control`].
    Control(WDFREQUEST),
    /// See [`Pending::LowerComplete`].
    LowerComplete(WDFREQUEST),
    /// See [`Pending::Cancel`].
    Cancel(WDFREQUEST),
    /// The filter's timer fired.
    Timer,
    /// The volume is being removed: fail what the filter holds (`Filter::on_remove`) and
    /// refuse new requests, before KMDF's purge waits for every request the driver owns.
    Remove,
}

/// What only the owner touches.
pub struct Inner {
    /// The filter, once `EvtDevicePrepareHardware` decided (restoring the volume, or
    /// refused and out of its way).
    pub filter: Option<Volume<Kmdf>>,
    /// The WDF handles the filter's `Framework` calls use.
    pub fw: Kmdf,
    /// The metadata file, used by the commit work item at PASSIVE_LEVEL (none on a
    /// refused volume).
    pub store: Option<FileStore>,
    /// Set when the device is being removed: everything still arriving is refused.
    pub removed: bool,
}

/// Guarded by the spin lock.
struct Gate {
    owned: bool,
    /// Threads at PASSIVE_LEVEL waiting to be handed ownership.
    passive_waiters: u32,
    head: WDFREQUEST,
    tail: WDFREQUEST,
    timer_fired: bool,
    remove_requested: bool,
}

/// One filter instance's state and its lock.
pub struct Shared {
    lock: WDFSPINLOCK,
    gate: UnsafeCell<Gate>,
    inner: UnsafeCell<Inner>,
    handoff: UnsafeCell<KEVENT>,
    /// Runs the backlog when an owner at DISPATCH_LEVEL stops early.
    drain_item: UnsafeCell<WDFWORKITEM>,
}

// SAFETY: `gate` is only touched with `lock` held, `inner` only by the owner (at most one
// thread, by the protocol above), `handoff` only through the kernel's event calls, which
// synchronise themselves, and `drain_item` is written once before the value is shared.
unsafe impl Sync for Shared {}
// SAFETY: as above; the WDF handles inside may be used from any thread.
unsafe impl Send for Shared {}

impl Shared {
    /// A new cell around `inner`. `lock` is a WDFSPINLOCK whose parent is the driver
    /// (so it outlives the device, for control requests racing with removal).
    pub fn new(lock: WDFSPINLOCK, inner: Inner) -> Shared {
        Shared {
            lock,
            gate: UnsafeCell::new(Gate {
                owned: false,
                passive_waiters: 0,
                head: ptr::null_mut(),
                tail: ptr::null_mut(),
                timer_fired: false,
                remove_requested: false,
            }),
            inner: UnsafeCell::new(inner),
            handoff: UnsafeCell::new(KEVENT::default()),
            drain_item: UnsafeCell::new(ptr::null_mut()),
        }
    }

    /// Finishes construction once the value has its final address (inside its `Arc`).
    ///
    /// # Safety
    /// Call once, before the value is shared with any other thread.
    pub unsafe fn init(&self, drain_item: WDFWORKITEM) {
        // SAFETY: not shared yet (caller's contract), so these writes race with nothing;
        // the event lives inside the heap allocation of the `Arc`, which does not move.
        unsafe {
            *self.drain_item.get() = drain_item;
            KeInitializeEvent(self.handoff.get(), _EVENT_TYPE::SynchronizationEvent, 0);
        }
    }

    #[allow(clippy::mut_from_ref)]
    fn acquire(&self) -> &mut Gate {
        // SAFETY: `lock` is a live WDFSPINLOCK (parented to the driver, deleted only in
        // `Drop`); acquiring it makes us the only user of `gate` until `release`.
        unsafe {
            call_unsafe_wdf_function_binding!(WdfSpinLockAcquire, self.lock);
            &mut *self.gate.get()
        }
    }

    fn release(&self) {
        // SAFETY: paired with `acquire` on the same thread; no reference into `gate`
        // outlives this call (callers drop theirs first).
        unsafe { call_unsafe_wdf_function_binding!(WdfSpinLockRelease, self.lock) }
    }

    /// Runs `event` now if nobody owns the filter, else leaves it in the backlog for the
    /// owner. Callable at IRQL <= DISPATCH_LEVEL.
    pub fn enter(&self, event: Event) {
        let gate = self.acquire();
        if gate.owned {
            match event {
                Event::Timer => gate.timer_fired = true,
                Event::Remove => gate.remove_requested = true,
                Event::Io(r) => push(gate, r, Pending::Io),
                Event::Control(r) => push(gate, r, Pending::Control),
                Event::LowerComplete(r) => push(gate, r, Pending::LowerComplete),
                Event::Cancel(r) => push(gate, r, Pending::Cancel),
            }
            self.release();
            return;
        }
        gate.owned = true;
        self.release();
        self.run(event);
        self.leave();
    }

    /// Becomes the owner, waiting for the current one if needed. PASSIVE_LEVEL only.
    pub fn enter_passive(&self) {
        let gate = self.acquire();
        if !gate.owned {
            gate.owned = true;
            self.release();
            return;
        }
        gate.passive_waiters += 1;
        self.release();
        // SAFETY: the event was initialised in `init` and lives as long as `self`; a
        // PASSIVE_LEVEL caller may wait without a timeout. The owner leaving sets it once
        // per waiter and leaves `owned` set: ownership passes to us.
        let _: NTSTATUS = unsafe {
            KeWaitForSingleObject(
                self.handoff.get().cast(),
                _KWAIT_REASON::Executive,
                wdk_sys::_MODE::KernelMode as _,
                0,
                ptr::null_mut(),
            )
        };
    }

    /// The state, before the value is shared (no owner needed: `&mut self` is unique).
    pub fn inner_mut(&mut self) -> &mut Inner {
        self.inner.get_mut()
    }

    /// The owner's state.
    ///
    /// # Safety
    /// The caller must be the owner (between `enter_passive` and `leave`, or inside a
    /// callback `run` called), and must not keep the reference past `leave`.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn inner(&self) -> &mut Inner {
        // SAFETY: the owner is unique (module comment), so this is the only reference.
        unsafe { &mut *self.inner.get() }
    }

    /// Runs the backlog, then gives up ownership (or hands it to a PASSIVE waiter or to
    /// the drain work item).
    pub fn leave(&self) {
        let mut ran = 0u32;
        loop {
            let gate = self.acquire();
            let more = gate.remove_requested || gate.timer_fired || !gate.head.is_null();
            if more && ran >= DRAIN_MAX {
                if gate.passive_waiters > 0 {
                    // A waiting commit goes first; its own `leave` runs the rest, so a
                    // steady stream of I/O cannot postpone the metadata commit.
                    gate.passive_waiters -= 1;
                    self.release();
                    // SAFETY: as below: one set per counted waiter, `owned` stays set.
                    unsafe { KeSetEvent(self.handoff.get(), 0, 0) };
                    return;
                }
                self.release();
                // SAFETY: the work item was created with the device and set in `init`;
                // enqueueing is allowed at DISPATCH_LEVEL. We stay the owner: the work
                // item runs `leave` itself, at PASSIVE_LEVEL.
                unsafe {
                    call_unsafe_wdf_function_binding!(WdfWorkItemEnqueue, *self.drain_item.get())
                };
                return;
            }
            // A removal first: the requests behind it are then refused at once.
            let next = if gate.remove_requested {
                gate.remove_requested = false;
                Some(Event::Remove)
            } else if gate.timer_fired {
                gate.timer_fired = false;
                Some(Event::Timer)
            } else {
                pop(gate)
            };
            let Some(event) = next else {
                if gate.passive_waiters > 0 {
                    gate.passive_waiters -= 1;
                    self.release();
                    // SAFETY: initialised event, alive as long as `self`. One set per
                    // waiter counted above; `owned` stays set for the waiter.
                    unsafe { KeSetEvent(self.handoff.get(), 0, 0) };
                } else {
                    gate.owned = false;
                    self.release();
                }
                return;
            };
            self.release();
            self.run(event);
            ran += 1;
        }
    }

    /// Calls the filter for one event, as the owner.
    fn run(&self, event: Event) {
        // SAFETY: only called by the owner (from `enter` after taking ownership, or from
        // `leave`, which only the owner calls).
        let inner = unsafe { self.inner() };
        crate::device::dispatch(inner, event);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the last reference is gone, so nobody holds or waits for the lock; the
        // spin lock's parent is the driver, so only we delete it.
        unsafe { call_unsafe_wdf_function_binding!(WdfObjectDelete, self.lock as WDFOBJECT) };
    }
}

fn push(gate: &mut Gate, request: WDFREQUEST, pending: Pending) {
    // SAFETY: every request the shell sees (queue-presented, created, or wrapped from an
    // IRP) is given a `RequestContext`; the request is owned by the driver while queued
    // here, so its context is alive, and only the spin lock holder touches these fields.
    unsafe {
        let ctx = RequestContext::of(request);
        debug_assert_eq!((*ctx).pending, Pending::None);
        (*ctx).pending = pending;
        (*ctx).next = ptr::null_mut();
        if gate.tail.is_null() {
            gate.head = request;
        } else {
            (*RequestContext::of(gate.tail)).next = request;
        }
    }
    gate.tail = request;
}

fn pop(gate: &mut Gate) -> Option<Event> {
    // Bounded by the backlog's length: each turn unlinks one request.
    loop {
        let request = gate.head;
        if request.is_null() {
            return None;
        }
        // SAFETY: as in `push`: a queued request is alive and its context is ours.
        let pending = unsafe {
            let ctx = RequestContext::of(request);
            gate.head = (*ctx).next;
            (*ctx).next = ptr::null_mut();
            core::mem::replace(&mut (*ctx).pending, Pending::None)
        };
        if gate.head.is_null() {
            gate.tail = ptr::null_mut();
        }
        match pending {
            Pending::Io => return Some(Event::Io(request)),
            Pending::Control => return Some(Event::Control(request)),
            Pending::LowerComplete => return Some(Event::LowerComplete(request)),
            Pending::Cancel => return Some(Event::Cancel(request)),
            Pending::None => debug_assert!(false, "request in the backlog without a kind"),
        }
    }
}
