//! The chunk buffers a backup reads into, from one arena backed by transparent huge
//! pages where the kernel offers them (Linux), else from the heap.
//!
//! Why an arena: a fresh buffer costs a page fault per 4 KiB page on its first use (each
//! one zeroes, charges and maps a page): 256 for a 1 MiB chunk, longer than hashing the
//! chunk. A backup that reads few chunks (an incremental one: 11 of 1024) fills each of
//! its buffers once, and spent a third of its CPU time in those faults and in unmapping
//! the buffers at the end. The arena is one anonymous mapping of
//! [`crate::backup::IN_FLIGHT_CHUNKS`] slots, advised as huge pages: a slot's first use
//! faults in 2 MiB at once, and only the pages touched ever take memory (where memory
//! is too fragmented for a huge page, the kernel backs the slot with small pages). When
//! the arena cannot be had (another OS, a refused mapping) or every slot is out, buffers
//! come from the heap and are kept for reuse, as before.
//!
//! Soundness of the arena: each slot index is out to at most one [`ChunkBuf`] at a time
//! (taken from and returned to the free list under its lock), so the slices handed out
//! never overlap; anonymous mappings start zero-filled, so every byte is initialized;
//! a buffer holds the arena (`Arc`), so the mapping outlives every slice into it.

use std::ops::{Deref, DerefMut};
#[cfg(target_os = "linux")]
use std::sync::Arc;
use std::sync::Mutex;

use bytes::Bytes;

/// Heap buffers kept for reuse when the arena cannot serve, at most.
const HEAP_KEPT_MAX: usize = crate::backup::IN_FLIGHT_CHUNKS;

/// Buffers of up to `slot_bytes` each, [`crate::backup::IN_FLIGHT_CHUNKS`] of them from
/// the arena.
pub(crate) struct BufferPool {
    #[cfg(target_os = "linux")]
    arena: Option<Arc<arena::Arena>>,
    heap: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// A pool for chunks of at most `slot_bytes` bytes. Maps the arena (no memory is
    /// used until a slot is written).
    pub(crate) fn new(slot_bytes: usize) -> BufferPool {
        #[cfg(not(target_os = "linux"))]
        let _ = slot_bytes;
        BufferPool {
            #[cfg(target_os = "linux")]
            arena: arena::Arena::map(slot_bytes, crate::backup::IN_FLIGHT_CHUNKS).map(Arc::new),
            heap: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified).
    pub(crate) fn take(&self, len: usize) -> ChunkBuf {
        #[cfg(target_os = "linux")]
        if let Some(arena) = &self.arena {
            if let Some(index) = arena.acquire(len) {
                return ChunkBuf(Inner::Slot(Slot {
                    arena: Arc::clone(arena),
                    index,
                    len,
                }));
            }
        }
        let mut buf = self
            .heap
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_default();
        buf.resize(len, 0);
        ChunkBuf(Inner::Heap(buf))
    }

    /// Returns a buffer no longer needed: a slot goes back to the arena, a heap buffer
    /// is kept for the next [`BufferPool::take`] (up to [`HEAP_KEPT_MAX`]).
    pub(crate) fn give(&self, buf: ChunkBuf) {
        match buf.0 {
            Inner::Heap(vec) => {
                if let Ok(mut kept) = self.heap.lock() {
                    if kept.len() < HEAP_KEPT_MAX {
                        kept.push(vec);
                    }
                }
            }
            #[cfg(target_os = "linux")]
            Inner::Slot(_) => {}
        }
    }

    /// How many of the arena's slots were ever used (`None`: no arena), for tests.
    #[cfg(test)]
    pub(crate) fn slots_touched(&self) -> Option<usize> {
        #[cfg(target_os = "linux")]
        return self.arena.as_ref().map(|a| a.slots_touched());
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// Whether buffers come from the huge-page arena (for tests).
    #[cfg(test)]
    fn has_arena(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.arena.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }
}

/// One chunk's buffer: a slot of the arena (returned when dropped) or a heap vector.
pub(crate) struct ChunkBuf(Inner);

enum Inner {
    Heap(Vec<u8>),
    #[cfg(target_os = "linux")]
    Slot(Slot),
}

/// A slot of the arena, out to one buffer until dropped.
#[cfg(target_os = "linux")]
struct Slot {
    arena: Arc<arena::Arena>,
    index: usize,
    len: usize,
}

impl Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Inner::Heap(vec) => vec,
            #[cfg(target_os = "linux")]
            Inner::Slot(s) => s.arena.slot(s.index, s.len),
        }
    }
}

impl DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Inner::Heap(vec) => vec,
            #[cfg(target_os = "linux")]
            Inner::Slot(s) => s.arena.slot_mut(s.index, s.len),
        }
    }
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<ChunkBuf> for Bytes {
    /// The buffer as `Bytes` without a copy; a slot returns to the arena when the last
    /// `Bytes` of it is dropped.
    fn from(buf: ChunkBuf) -> Bytes {
        match buf.0 {
            Inner::Heap(vec) => Bytes::from(vec),
            #[cfg(target_os = "linux")]
            slot @ Inner::Slot(_) => Bytes::from_owner(ChunkBuf(slot)),
        }
    }
}

#[cfg(target_os = "linux")]
impl Drop for Slot {
    fn drop(&mut self) {
        self.arena.release(self.index);
    }
}

#[cfg(target_os = "linux")]
mod arena {
    use std::ffi::c_void;
    use std::ptr::NonNull;
    use std::sync::Mutex;

    use rustix::mm::{Advice, MapFlags, ProtFlags};

    /// The huge page size the arena aligns to (x86-64 and arm64 with 4 KiB pages).
    const HUGE_PAGE_BYTES: usize = 2 << 20;

    /// One anonymous mapping of `slots` slots of `slot_bytes` each.
    pub(super) struct Arena {
        /// The mapping as made (for unmapping).
        map: NonNull<c_void>,
        map_bytes: usize,
        /// The first slot: `map` rounded up to a huge page.
        base: NonNull<u8>,
        slot_bytes: usize,
        slots: usize,
        /// Slot indices not out: untouched ones at the bottom, highest first, so that a
        /// slot given back is the next one out and an untouched one is taken only when
        /// every touched one is out.
        free: Mutex<Vec<usize>>,
        /// Slots ever out: one past the highest index taken.
        #[cfg(test)]
        touched: std::sync::atomic::AtomicUsize,
    }

    // SAFETY: the mapping is plain memory owned by the arena; the only access to it is
    // through slices of distinct slots (see the module's soundness note), each held by
    // one buffer at a time, so sharing the arena between threads shares no bytes.
    unsafe impl Send for Arena {}
    // SAFETY: as for `Send`; `free` is behind a lock.
    unsafe impl Sync for Arena {}

    impl Arena {
        /// Maps the arena, or `None` if the kernel refuses (buffers then come from the
        /// heap).
        pub(super) fn map(slot_bytes: usize, slots: usize) -> Option<Arena> {
            let total = slot_bytes.checked_mul(slots)?;
            let huge_total = total.checked_next_multiple_of(HUGE_PAGE_BYTES)?;
            // Room to start at a huge page boundary wherever the kernel puts the map.
            let map_bytes = huge_total.checked_add(HUGE_PAGE_BYTES)?;
            if total == 0 {
                return None;
            }
            // SAFETY: a new private anonymous mapping at an address of the kernel's
            // choosing aliases nothing.
            let map = unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    map_bytes,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE,
                )
            }
            .ok()?;
            let map = NonNull::new(map)?;
            let skip =
                (map.as_ptr() as usize).next_multiple_of(HUGE_PAGE_BYTES) - map.as_ptr() as usize;
            debug_assert!(skip < HUGE_PAGE_BYTES && skip + huge_total <= map_bytes);
            // SAFETY: `skip + huge_total <= map_bytes`: still inside the mapping.
            let base = unsafe { map.cast::<u8>().add(skip) };
            // Only a hint: without huge pages the arena still works, page by page.
            // SAFETY: the range lies inside our own mapping, and the advice changes
            // only how its pages are backed, never their contents.
            let _ = unsafe {
                rustix::mm::madvise(base.as_ptr().cast(), huge_total, Advice::LinuxHugepage)
            };
            Some(Arena {
                map,
                map_bytes,
                base,
                slot_bytes,
                slots,
                free: Mutex::new((0..slots).rev().collect()),
                #[cfg(test)]
                touched: std::sync::atomic::AtomicUsize::new(0),
            })
        }

        /// A free slot for `len` bytes, if one is left and `len` fits.
        pub(super) fn acquire(&self, len: usize) -> Option<usize> {
            if len > self.slot_bytes {
                return None;
            }
            let index = self.free.lock().ok()?.pop()?;
            debug_assert!(index < self.slots);
            // Untouched slots leave the free list in index order (see `map`).
            #[cfg(test)]
            self.touched
                .fetch_max(index + 1, std::sync::atomic::Ordering::Relaxed);
            Some(index)
        }

        /// Slots ever handed out (for tests).
        #[cfg(test)]
        pub(super) fn slots_touched(&self) -> usize {
            self.touched.load(std::sync::atomic::Ordering::Relaxed)
        }

        /// Slot `index` is no longer out.
        pub(super) fn release(&self, index: usize) {
            debug_assert!(index < self.slots);
            if let Ok(mut free) = self.free.lock() {
                debug_assert!(!free.contains(&index), "slot {index} released twice");
                free.push(index);
            }
        }

        /// The first `len` bytes of slot `index`, which the caller holds.
        pub(super) fn slot(&self, index: usize, len: usize) -> &[u8] {
            assert!(index < self.slots && len <= self.slot_bytes);
            // SAFETY: in bounds (asserted), initialized (anonymous memory starts
            // zeroed), and the slot is held by the caller alone (module note).
            unsafe {
                std::slice::from_raw_parts(self.base.as_ptr().add(index * self.slot_bytes), len)
            }
        }

        /// As [`Arena::slot`], writable.
        #[allow(clippy::mut_from_ref)]
        pub(super) fn slot_mut(&self, index: usize, len: usize) -> &mut [u8] {
            assert!(index < self.slots && len <= self.slot_bytes);
            // SAFETY: as in `slot`; the caller holds the slot's only buffer mutably, so
            // no other slice of these bytes exists while this one lives.
            unsafe {
                std::slice::from_raw_parts_mut(self.base.as_ptr().add(index * self.slot_bytes), len)
            }
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            // SAFETY: every buffer holds the arena, so none is left to use the mapping.
            let _ = unsafe { rustix::mm::munmap(self.map.as_ptr(), self.map_bytes) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_distinct_reused_and_outlive_their_pool_as_bytes() {
        let pool = BufferPool::new(4096);
        let mut bufs: Vec<ChunkBuf> = (0..crate::backup::IN_FLIGHT_CHUNKS + 2)
            .map(|i| {
                let mut b = pool.take(4096 - i);
                b.fill(i as u8);
                b
            })
            .collect();
        // Every buffer kept its own bytes: no two share memory, arena or heap.
        for (i, b) in bufs.iter().enumerate() {
            assert_eq!(b.len(), 4096 - i);
            assert!(b.iter().all(|&x| x == i as u8), "buffer {i}");
        }
        // Too large for a slot: from the heap, still exact.
        assert_eq!(pool.take(5000).len(), 5000);
        // Given back and taken again: the same count is available.
        let last = bufs.pop().unwrap();
        pool.give(last);
        let as_bytes = Bytes::from(bufs.remove(0));
        drop(bufs);
        drop(pool);
        // The arena outlives its pool while a `Bytes` of a slot lives.
        assert_eq!(as_bytes.len(), 4096);
        assert!(as_bytes.iter().all(|&x| x == 0));
    }

    #[test]
    fn slots_return_when_dropped() {
        let pool = BufferPool::new(1 << 20);
        if !pool.has_arena() {
            return;
        }
        for round in 0..3u8 {
            let bufs: Vec<ChunkBuf> = (0..crate::backup::IN_FLIGHT_CHUNKS)
                .map(|_| {
                    let mut b = pool.take(1 << 20);
                    b[0] = round;
                    b
                })
                .collect();
            // All from the arena each round: dropped slots came back.
            #[cfg(target_os = "linux")]
            assert!(bufs.iter().all(|b| matches!(b.0, Inner::Slot(_))));
            drop(bufs);
        }
    }
}
