//! Small pieces C drivers get from WDF and WDM header macros, which bindgen cannot turn
//! into functions: structure sizes, object-context type descriptors, object attributes,
//! counted UTF-16 strings, and the two IRP stack-location accessors the shell needs.

use core::ptr;

use wdk_sys::{
    call_unsafe_wdf_function_binding, _WDF_EXECUTION_LEVEL, _WDF_SYNCHRONIZATION_SCOPE,
    PIO_STACK_LOCATION, PIRP, ULONG, UNICODE_STRING, WDFOBJECT, WDF_OBJECT_ATTRIBUTES,
    WDF_OBJECT_CONTEXT_TYPE_INFO,
};

/// `sizeof(T)` as the `ULONG` every WDF `Size` field wants (`WDF_STRUCTURE_SIZE`).
pub const fn size_ulong<T>() -> ULONG {
    let size = core::mem::size_of::<T>();
    assert!(
        size <= ULONG::MAX as usize,
        "WDF structure larger than 4 GiB"
    );
    size as ULONG
}

/// `sizeof(T)` for the few WDF structures whose `Size` is a `USHORT`
/// (`WDF_REQUEST_PARAMETERS`).
pub const fn size_ushort<T>() -> u16 {
    let size = core::mem::size_of::<T>();
    assert!(
        size <= u16::MAX as usize,
        "WDF structure larger than 64 KiB"
    );
    size as u16
}

/// A `WDF_OBJECT_CONTEXT_TYPE_INFO` in a `static` (what `WDF_DECLARE_CONTEXT_TYPE` emits).
#[repr(transparent)]
pub struct ContextType(pub WDF_OBJECT_CONTEXT_TYPE_INFO);

// SAFETY: the descriptor is written once at compile time and only read afterwards; its
// pointers name other statics (its own address and a string literal).
unsafe impl Sync for ContextType {}

/// Declares `static $info: ContextType` describing context type `$ty`.
macro_rules! context_type {
    ($info:ident, $ty:ty) => {
        static $info: $crate::wdf::ContextType =
            $crate::wdf::ContextType(wdk_sys::WDF_OBJECT_CONTEXT_TYPE_INFO {
                Size: $crate::wdf::size_ulong::<wdk_sys::WDF_OBJECT_CONTEXT_TYPE_INFO>(),
                ContextName: concat!(stringify!($ty), "\0").as_ptr().cast(),
                ContextSize: core::mem::size_of::<$ty>(),
                UniqueType: core::ptr::addr_of!($info).cast(),
                EvtDriverGetUniqueContextType: None,
            });
    };
}
pub(crate) use context_type;

impl ContextType {
    /// `WdfObjectGetTypedContext`: the context of this type on `object`, or null when the
    /// object has none.
    ///
    /// # Safety
    /// `object` must be a live WDF object handle.
    pub unsafe fn get<T>(&'static self, object: WDFOBJECT) -> *mut T {
        // SAFETY: the caller passes a live handle; the descriptor is a static of this type,
        // so WDF compares it by address with the one the object was created with.
        unsafe {
            call_unsafe_wdf_function_binding!(
                WdfObjectGetTypedContextWorker,
                object,
                self.0.UniqueType
            )
        }
        .cast()
    }
}

/// `WDF_OBJECT_ATTRIBUTES_INIT` (+ `_SET_CONTEXT_TYPE`): no callbacks, levels inherited
/// from the parent, an optional context type and parent.
pub fn attributes(
    context: Option<&'static ContextType>,
    parent: WDFOBJECT,
) -> WDF_OBJECT_ATTRIBUTES {
    WDF_OBJECT_ATTRIBUTES {
        Size: size_ulong::<WDF_OBJECT_ATTRIBUTES>(),
        ExecutionLevel: _WDF_EXECUTION_LEVEL::WdfExecutionLevelInheritFromParent,
        SynchronizationScope: _WDF_SYNCHRONIZATION_SCOPE::WdfSynchronizationScopeInheritFromParent,
        ParentObject: parent,
        ContextTypeInfo: context.map_or(ptr::null(), |c| c.0.UniqueType),
        ..WDF_OBJECT_ATTRIBUTES::default()
    }
}

/// ASCII text as UTF-16 code units, at compile time (for `static` names).
pub const fn ascii_utf16<const N: usize>(text: &str) -> [u16; N] {
    let bytes = text.as_bytes();
    assert!(bytes.len() == N, "length mismatch");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        assert!(bytes[i] < 0x80, "ASCII only");
        out[i] = bytes[i] as u16;
        i += 1;
    }
    out
}

/// A `&'static [u16]` of an ASCII literal, without a terminator.
macro_rules! wide {
    ($text:literal) => {{
        const TEXT: &str = $text;
        const UNITS: [u16; TEXT.len()] = $crate::wdf::ascii_utf16::<{ TEXT.len() }>(TEXT);
        &UNITS as &'static [u16]
    }};
}
pub(crate) use wide;

/// A counted string over `units` (`RtlInitUnicodeString` without the scan). The callee
/// only reads it, although the C type says `PWCH`.
pub fn unicode(units: &[u16]) -> UNICODE_STRING {
    let bytes = u16::try_from(units.len() * 2).unwrap_or(0xFFFE);
    UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: units.as_ptr().cast_mut(),
    }
}

/// Case-insensitive comparison of two UTF-16 names that are ASCII in practice (NT device
/// names such as `\Device\HarddiskVolume5`).
pub fn names_equal(a: &[u16], b: &[u16]) -> bool {
    fn fold(u: u16) -> u16 {
        if (u16::from(b'a')..=u16::from(b'z')).contains(&u) {
            u - 32
        } else {
            u
        }
    }
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// `IoGetCurrentIrpStackLocation`.
///
/// # Safety
/// `irp` must point to a live IRP owned by the caller's driver at this stack level.
pub unsafe fn current_stack_location(irp: PIRP) -> PIO_STACK_LOCATION {
    // SAFETY: for an IRP in flight, `Tail.Overlay` is the active arm of the tail union and
    // `CurrentStackLocation` the active arm of its inner union (wdm.h's own definition).
    unsafe {
        (*irp)
            .Tail
            .Overlay
            .__bindgen_anon_2
            .__bindgen_anon_1
            .CurrentStackLocation
    }
}

/// `IoMarkIrpPending`: sets `SL_PENDING_RETURNED` in the current stack location.
///
/// # Safety
/// As for [`current_stack_location`]; the caller then returns `STATUS_PENDING`.
pub unsafe fn mark_irp_pending(irp: PIRP) {
    // SAFETY: the caller's IRP is live and at the caller's level, so its current stack
    // location is valid for writes.
    unsafe {
        let location = current_stack_location(irp);
        (*location).Control |= wdk_sys::SL_PENDING_RETURNED as u8;
    }
}
