//! IRPs and their stack locations, kept in a slab so the hot path allocates nothing.
//!
//! The layout follows wdm.h where it matters to the rules the verifier checks: an IRP
//! has `stack_count` locations; `current` counts *down* from `stack_count + 1` (the
//! originator, which has no location) to 1 (the lowest driver); `IoCallDriver`
//! decrements it, completion walks back up. A completion routine is stored in the
//! location of the driver *below* the one that set it, as `IoSetCompletionRoutine` does,
//! and runs when completion pops that location.
//!
//! Handles carry a generation: a handle kept past `IoFreeIrp` no longer matches its
//! slot, so every use after free is caught, not silently served by a recycled IRP.

use rehydrate_driver::Status;

/// Most stack locations any IRP here needs (filter .. device is seven).
pub const STACK_MAX: usize = 8;

/// `IRP_MJ_READ`.
pub const IRP_MJ_READ: u8 = 0x03;
/// `IRP_MJ_WRITE`.
pub const IRP_MJ_WRITE: u8 = 0x04;
/// `IRP_MJ_FLUSH_BUFFERS`.
pub const IRP_MJ_FLUSH_BUFFERS: u8 = 0x09;
/// `IRP_MJ_DEVICE_CONTROL`.
pub const IRP_MJ_DEVICE_CONTROL: u8 = 0x0e;
/// `IRP_MJ_POWER`.
pub const IRP_MJ_POWER: u8 = 0x16;
/// `IRP_MJ_PNP`.
pub const IRP_MJ_PNP: u8 = 0x1b;
/// `IRP_MN_START_DEVICE`.
pub const IRP_MN_START_DEVICE: u8 = 0x00;
/// `IRP_MN_REMOVE_DEVICE`.
pub const IRP_MN_REMOVE_DEVICE: u8 = 0x02;
/// `IRP_MN_SET_POWER`.
pub const IRP_MN_SET_POWER: u8 = 0x02;

/// `SL_PENDING_RETURNED` in a location's `Control`.
pub const SL_PENDING_RETURNED: u8 = 0x01;
/// `SL_INVOKE_ON_CANCEL`.
pub const SL_INVOKE_ON_CANCEL: u8 = 0x20;
/// `SL_INVOKE_ON_SUCCESS`.
pub const SL_INVOKE_ON_SUCCESS: u8 = 0x40;
/// `SL_INVOKE_ON_ERROR`.
pub const SL_INVOKE_ON_ERROR: u8 = 0x80;
/// `SL_WRITE_THROUGH` in a location's `Flags`: force unit access.
pub const SL_WRITE_THROUGH: u8 = 0x04;

/// `IOCTL_DISK_GET_LENGTH_INFO`.
pub const IOCTL_DISK_GET_LENGTH_INFO: u32 = 0x0007_405C;
/// `IOCTL_DISK_GET_DRIVE_GEOMETRY`.
pub const IOCTL_DISK_GET_DRIVE_GEOMETRY: u32 = 0x0007_0000;
/// `IOCTL_VOLUME_ONLINE`.
pub const IOCTL_VOLUME_ONLINE: u32 = 0x0056_C008;
/// `IOCTL_VOLUME_OFFLINE`.
pub const IOCTL_VOLUME_OFFLINE: u32 = 0x0056_C00C;
pub use rehydrate_driver::dsm::IOCTL_STORAGE_MANAGE_DATA_SET_ATTRIBUTES;

/// `STATUS_MORE_PROCESSING_REQUIRED`: a completion routine keeps the IRP.
pub const STATUS_MORE_PROCESSING_REQUIRED: Status = Status(0xC000_0016);
/// `STATUS_DEVICE_OFF_LINE`: I/O to an offline volume.
pub const STATUS_DEVICE_OFF_LINE: Status = Status(0x8000_0010);
/// `STATUS_DEVICE_DATA_ERROR` is what a media error reports.
pub const STATUS_MEDIA_ERROR: Status = Status::DEVICE_DATA_ERROR;

/// A device object in the simulated stack, top to bottom, plus the control device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Layer {
    /// The file system: originates IRPs, owns no stack location.
    Fs = 0,
    /// The rehydrate filter (a simulated WDF device).
    Filter = 1,
    /// The volume manager.
    Volume = 2,
    /// The partition manager.
    Partition = 3,
    /// The disk class driver.
    Disk = 4,
    /// The storage port (queue depth, cancellation of queued requests).
    Port = 5,
    /// The bus driver.
    Bus = 6,
    /// The device (its miniport and the hardware).
    Device = 7,
    /// The filter's control device, the service's door.
    Control = 8,
    /// The user-mode service (originates IOCTLs to the control device).
    Service = 9,
    /// The I/O manager itself (PnP and power IRPs it originates).
    IoManager = 10,
}

impl Layer {
    /// The device below this one in the volume stack.
    pub const fn below(self) -> Option<Layer> {
        match self {
            Layer::Fs => Some(Layer::Filter),
            Layer::Filter => Some(Layer::Volume),
            Layer::Volume => Some(Layer::Partition),
            Layer::Partition => Some(Layer::Disk),
            Layer::Disk => Some(Layer::Port),
            Layer::Port => Some(Layer::Bus),
            Layer::Bus => Some(Layer::Device),
            _ => None,
        }
    }

    /// `DEVICE_OBJECT.StackSize`: locations an IRP sent to this device needs.
    pub const fn stack_size(self) -> u8 {
        match self {
            Layer::Filter => 7,
            Layer::Volume => 6,
            Layer::Partition => 5,
            Layer::Disk => 4,
            Layer::Port => 3,
            Layer::Bus => 2,
            Layer::Device | Layer::Control => 1,
            Layer::Fs | Layer::Service | Layer::IoManager => 0,
        }
    }
}

/// An IRP handle: slot index and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IrpId {
    /// Slot in the slab.
    pub index: u32,
    /// Generation of the slot when the IRP was allocated.
    pub gen: u32,
}

/// Who may touch an IRP now (Driver Verifier's ownership rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The slot is free.
    Free,
    /// This driver owns it: it was dispatched to it, it allocated it, or its completion
    /// routine returned `STATUS_MORE_PROCESSING_REQUIRED`.
    Driver(Layer),
}

/// Completion routines, as data: enum dispatch instead of boxed closures keeps the hot
/// path free of allocation and indirect calls. Each names the driver it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routine {
    /// WDF's completion of a request the filter sent down (`own`: an IRP WDF allocated
    /// for `write_lower`/`flush_lower`, freed here).
    Wdf {
        /// The filter's handle for the lower I/O.
        lower: u64,
        /// WDF allocated this IRP.
        own: bool,
    },
    /// WDF's completion of a PnP or power IRP it forwarded.
    WdfPnp,
    /// The file system's completion of an IRP it originated.
    Fs {
        /// Slot of the operation in the oracle's table.
        op: u32,
    },
    /// The service's completion of an IOCTL it sent (the I/O manager's, really).
    Service {
        /// The service's handle for the exchange.
        op: u32,
    },
    /// The I/O manager's completion of a PnP/power IRP it originated.
    IoManager,
    /// The disk class driver's completion of one piece of a split transfer.
    DiskSplit {
        /// The IRP that was split.
        master: IrpId,
    },
    /// The port's completion of an IRP it started on the bus.
    Port,
    /// A layer's completion of a PnP/power IRP (start happens on the way up).
    Pnp(Layer),
    /// Test routines: return `STATUS_MORE_PROCESSING_REQUIRED` or not.
    Test {
        /// Keep the IRP.
        keep: bool,
    },
}

impl Routine {
    /// The driver whose routine this is (the verifier checks it owns the IRP then).
    pub const fn layer(self) -> Layer {
        match self {
            Routine::Wdf { .. } | Routine::WdfPnp => Layer::Filter,
            Routine::Fs { .. } => Layer::Fs,
            Routine::Service { .. } => Layer::Service,
            Routine::IoManager => Layer::IoManager,
            Routine::DiskSplit { .. } => Layer::Disk,
            Routine::Port => Layer::Port,
            Routine::Pnp(layer) => layer,
            Routine::Test { .. } => Layer::Fs,
        }
    }
}

/// Cancel routines, as data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelRoutine {
    /// The port's: the IRP waits in its queue for a free slot.
    Port,
    /// WDF's: the request waits in the filter's manual queue (a parked GET_MISSING).
    WdfQueue,
    /// WDF's for a request the driver owns and marked cancelable
    /// (`WdfRequestMarkCancelableEx`): the driver's `EvtRequestCancel` runs later.
    WdfDriver,
    /// A test's.
    Test,
}

/// Where an IRP's data lives (its MDL). Pieces of a transfer point into the buffer of
/// the IRP they came from, as a partial MDL does; the verifier checks that IRP is alive
/// whenever the data is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mdl {
    /// No data (flush, IOCTL).
    None,
    /// The IRP's own tag buffer.
    Own,
    /// Tags of another IRP's buffer, from sector `sector`.
    Partial {
        /// The IRP whose buffer it is.
        irp: IrpId,
        /// First sector within that buffer.
        sector: u32,
    },
    /// Tags encoded in another IRP's input bytes (a hydrate payload), from `byte`.
    Payload {
        /// The hydrate request's IRP.
        irp: IrpId,
        /// Byte offset of the first sector in its input buffer.
        byte: u32,
    },
    /// All zeros (zero-fill hydrates).
    Zeros,
}

/// What the sim knows about why an IRP exists (never visible to drivers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Made by the I/O manager or a driver for its own purposes.
    System,
    /// A file-system operation, by its slot in the oracle's table.
    App {
        /// Slot.
        op: u32,
        /// First 512-byte sector of the whole operation on the volume.
        first_sector: u64,
    },
}

/// One stack location. Parameters are flattened: each major function reads its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackLocation {
    /// `MajorFunction`.
    pub major: u8,
    /// `MinorFunction`.
    pub minor: u8,
    /// `Flags` (`SL_WRITE_THROUGH`).
    pub flags: u8,
    /// `Control` (`SL_PENDING_RETURNED`, `SL_INVOKE_*`).
    pub control: u8,
    /// `DeviceObject`: set by `IoCallDriver`.
    pub device: Option<Layer>,
    /// `Parameters.Read/Write.ByteOffset`.
    pub offset: u64,
    /// `Parameters.Read/Write.Length`.
    pub length: u64,
    /// `Parameters.DeviceIoControl.IoControlCode`, or the power state for SET_POWER.
    pub ioctl: u32,
    /// `CompletionRoutine` (with its context folded in).
    pub completion: Option<Routine>,
}

impl StackLocation {
    /// An empty location.
    pub const EMPTY: StackLocation = StackLocation {
        major: 0,
        minor: 0,
        flags: 0,
        control: 0,
        device: None,
        offset: 0,
        length: 0,
        ioctl: 0,
        completion: None,
    };
}

/// What WDF knows about a request built on this IRP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WdfState {
    /// Not a WDF request (or no longer one).
    None,
    /// Delivered to the driver, which owns it.
    Owned,
    /// Sent down with a completion routine; comes back to the driver.
    Sent,
    /// In the manual queue.
    Parked,
}

/// An IRP.
#[derive(Debug)]
pub struct Irp {
    /// Generation of the slot.
    pub gen: u32,
    /// Who may touch it.
    pub owner: Owner,
    /// Locations in use.
    pub stack_count: u8,
    /// Current location, 1-based, counting down; `stack_count + 1` at the originator.
    pub current: u8,
    /// The locations; index `k - 1` is location `k`.
    pub stack: [StackLocation; STACK_MAX],
    /// `IoStatus.Status`.
    pub status: Status,
    /// `IoStatus.Information`.
    pub information: usize,
    /// `PendingReturned`, set as completion pops each location.
    pub pending_returned: bool,
    /// `Cancel`.
    pub cancel: bool,
    /// `CancelRoutine`.
    pub cancel_routine: Option<CancelRoutine>,
    /// Where its data is.
    pub mdl: Mdl,
    /// Tags, one per 512-byte sector, when `mdl` is `Own`.
    pub buffer: Vec<u64>,
    /// The IOCTL input (system) buffer.
    pub input: Vec<u8>,
    /// The IOCTL output buffer.
    pub output: Vec<u8>,
    /// Why it exists (sim only).
    pub origin: Origin,
    /// WDF's request state, for requests on the filter or control device.
    pub wdf: WdfState,
    /// The driver marked the request cancelable and has not unmarked it.
    pub wdf_cancelable: bool,
    /// The filter held it at once instead of forwarding it (sim only: the file system's
    /// model of which requests it may overlap).
    pub held: bool,
    /// Pieces of a split transfer still outstanding (disk class).
    pub split_left: u32,
    /// First failure among the pieces.
    pub split_status: Status,
    /// (Device) the cache mark when a flush arrived: what it must cover.
    pub flush_mark: u64,
}

impl Irp {
    fn new() -> Irp {
        Irp {
            gen: 0,
            owner: Owner::Free,
            stack_count: 0,
            current: 1,
            stack: [StackLocation::EMPTY; STACK_MAX],
            status: Status::SUCCESS,
            information: 0,
            pending_returned: false,
            cancel: false,
            cancel_routine: None,
            mdl: Mdl::None,
            buffer: Vec::new(),
            input: Vec::new(),
            output: Vec::new(),
            origin: Origin::System,
            wdf: WdfState::None,
            wdf_cancelable: false,
            held: false,
            split_left: 0,
            split_status: Status::SUCCESS,
            flush_mark: 0,
        }
    }

    /// The current location (`IoGetCurrentIrpStackLocation`); callers check bounds.
    #[inline]
    pub fn loc(&self) -> &StackLocation {
        &self.stack[usize::from(self.current) - 1]
    }

    /// The current location, mutable.
    #[inline]
    pub fn loc_mut(&mut self) -> &mut StackLocation {
        &mut self.stack[usize::from(self.current) - 1]
    }
}

/// The IRP slab: slots are reused, buffers keep their capacity.
#[derive(Debug, Default)]
pub struct Slab {
    slots: Vec<Irp>,
    free: Vec<u32>,
    live: usize,
}

impl Slab {
    /// Takes a free slot, resets it and returns its handle.
    pub fn alloc(&mut self, stack_count: u8, owner: Layer) -> IrpId {
        assert!(
            usize::from(stack_count) <= STACK_MAX,
            "stack count {stack_count} over the bound"
        );
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Irp::new());
                (self.slots.len() - 1) as u32
            }
        };
        let irp = &mut self.slots[index as usize];
        debug_assert_eq!(irp.owner, Owner::Free);
        irp.owner = Owner::Driver(owner);
        irp.stack_count = stack_count;
        irp.current = stack_count + 1;
        irp.stack = [StackLocation::EMPTY; STACK_MAX];
        irp.status = Status::SUCCESS;
        irp.information = 0;
        irp.pending_returned = false;
        irp.cancel = false;
        irp.cancel_routine = None;
        irp.mdl = Mdl::None;
        irp.buffer.clear();
        irp.input.clear();
        irp.output.clear();
        irp.origin = Origin::System;
        irp.wdf = WdfState::None;
        irp.wdf_cancelable = false;
        irp.held = false;
        irp.split_left = 0;
        irp.flush_mark = 0;
        irp.split_status = Status::SUCCESS;
        self.live += 1;
        IrpId {
            index,
            gen: irp.gen,
        }
    }

    /// Returns a slot; its generation moves on so old handles stop matching.
    pub fn free(&mut self, id: IrpId) {
        let irp = &mut self.slots[id.index as usize];
        debug_assert_eq!(irp.gen, id.gen);
        irp.gen = irp.gen.wrapping_add(1);
        irp.owner = Owner::Free;
        self.free.push(id.index);
        self.live -= 1;
    }

    /// The IRP, if the handle is current.
    #[inline]
    pub fn get(&self, id: IrpId) -> Option<&Irp> {
        self.slots
            .get(id.index as usize)
            .filter(|irp| irp.gen == id.gen && irp.owner != Owner::Free)
    }

    /// The IRP, mutable, if the handle is current.
    #[inline]
    pub fn get_mut(&mut self, id: IrpId) -> Option<&mut Irp> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|irp| irp.gen == id.gen && irp.owner != Owner::Free)
    }

    /// IRPs allocated and not freed.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Handles of every live IRP (for leak reports).
    pub fn live_ids(&self) -> Vec<IrpId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, irp)| irp.owner != Owner::Free)
            .map(|(i, irp)| IrpId {
                index: i as u32,
                gen: irp.gen,
            })
            .collect()
    }

    /// Frees every IRP at once (power loss: nothing in flight survives).
    pub fn reset(&mut self) {
        for (i, irp) in self.slots.iter_mut().enumerate() {
            if irp.owner != Owner::Free {
                irp.gen = irp.gen.wrapping_add(1);
                irp.owner = Owner::Free;
                self.free.push(i as u32);
            }
        }
        self.live = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_handles_stop_matching_and_slots_are_reused() {
        let mut slab = Slab::default();
        let a = slab.alloc(3, Layer::Fs);
        assert_eq!(slab.get(a).unwrap().current, 4);
        slab.free(a);
        assert!(slab.get(a).is_none());
        let b = slab.alloc(2, Layer::Fs);
        assert_eq!(b.index, a.index);
        assert_ne!(b.gen, a.gen);
        assert!(slab.get(a).is_none() && slab.get(b).is_some());
        assert_eq!(slab.live(), 1);
        slab.reset();
        assert_eq!(slab.live(), 0);
        assert!(slab.get(b).is_none());
    }

    #[test]
    fn stack_sizes_shrink_down_the_stack() {
        let mut layer = Layer::Filter;
        while let Some(below) = layer.below() {
            assert_eq!(layer.stack_size(), below.stack_size() + 1);
            layer = below;
        }
        assert_eq!(layer, Layer::Device);
    }
}
