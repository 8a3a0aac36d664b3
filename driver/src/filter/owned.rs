//! What the filter owns: the requests from above the engine knows (by the engine's id
//! for them) and the service's hydrate requests whose payload is being written. Both
//! grow only through `try_reserve`: a request the filter has no room to remember is
//! refused with `INSUFFICIENT_RESOURCES` instead of an allocation failing at
//! DISPATCH_LEVEL (a bug check).

use alloc::vec::Vec;

use crate::engine::{BatchId, RequestId};

/// A request from above the filter owns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owned<R> {
    pub(crate) request: R,
    /// Bytes transferred on success (reads and writes), else zero.
    pub(crate) information: usize,
    /// Marked cancelable (it is held): unmarked before it is completed or sent.
    pub(crate) cancelable: bool,
    /// Unmarking found it cancelled: only the cancel callback may complete it.
    pub(crate) cancelling: bool,
    /// The engine finished with it while it was cancelling.
    pub(crate) done: bool,
}

impl<R> Owned<R> {
    pub(crate) fn new(request: R, information: usize) -> Owned<R> {
        Owned {
            request,
            information,
            cancelable: false,
            cancelling: false,
            done: false,
        }
    }
}

#[derive(Debug)]
struct Slot<R> {
    /// Bumped each time the slot is reused, so a stale id never finds a new request.
    generation: u32,
    owned: Option<Owned<R>>,
}

/// Owned requests by id: a slab (id = generation << 32 | slot).
#[derive(Debug)]
pub(crate) struct Requests<R> {
    slots: Vec<Slot<R>>,
    free: Vec<u32>,
}

impl<R: Copy + Eq> Requests<R> {
    pub(crate) fn new() -> Requests<R> {
        Requests {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn split(id: RequestId) -> (usize, u32) {
        ((id & u64::from(u32::MAX)) as usize, (id >> 32) as u32)
    }

    /// Remembers `owned`; `None` when there is no room (memory is short).
    pub(crate) fn insert(&mut self, owned: Owned<R>) -> Option<RequestId> {
        let slot = match self.free.pop() {
            Some(slot) => slot as usize,
            None => {
                let slot = self.slots.len();
                let next = u32::try_from(slot + 1).ok()?;
                // Room for the slot and for it to be freed later.
                self.slots.try_reserve(1).ok()?;
                self.free
                    .try_reserve(next as usize - self.free.len())
                    .ok()?;
                self.slots.push(Slot {
                    generation: 0,
                    owned: None,
                });
                slot
            }
        };
        let s = &mut self.slots[slot];
        debug_assert!(s.owned.is_none());
        s.generation = s.generation.wrapping_add(1);
        s.owned = Some(owned);
        Some(u64::from(s.generation) << 32 | slot as u64)
    }

    pub(crate) fn get(&self, id: RequestId) -> Option<&Owned<R>> {
        let (slot, generation) = Self::split(id);
        let s = self.slots.get(slot)?;
        (s.generation == generation).then_some(())?;
        s.owned.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: RequestId) -> Option<&mut Owned<R>> {
        let (slot, generation) = Self::split(id);
        let s = self.slots.get_mut(slot)?;
        (s.generation == generation).then_some(())?;
        s.owned.as_mut()
    }

    pub(crate) fn remove(&mut self, id: RequestId) -> Option<Owned<R>> {
        let (slot, generation) = Self::split(id);
        let s = self.slots.get_mut(slot)?;
        if s.generation != generation {
            return None;
        }
        let owned = s.owned.take()?;
        debug_assert!(self.free.len() < self.free.capacity(), "no room kept");
        self.free.push(slot as u32);
        Some(owned)
    }

    /// The id of `request`, if owned. Bounded by the requests owned (used on cancel).
    pub(crate) fn find(&self, request: R) -> Option<RequestId> {
        self.slots.iter().enumerate().find_map(|(slot, s)| {
            s.owned
                .filter(|o| o.request == request)
                .map(|_| u64::from(s.generation) << 32 | slot as u64)
        })
    }
}

/// The service's hydrate requests whose payload is being written, by batch (batches
/// are numbered in order, so the list stays sorted).
#[derive(Debug)]
pub(crate) struct Hydrates<R> {
    by_batch: Vec<(BatchId, R)>,
}

impl<R: Copy> Hydrates<R> {
    pub(crate) fn new() -> Hydrates<R> {
        Hydrates {
            by_batch: Vec::new(),
        }
    }

    /// Remembers `request` as batch `batch` (the newest); false when there is no room.
    pub(crate) fn insert(&mut self, batch: BatchId, request: R) -> bool {
        debug_assert!(self.by_batch.last().is_none_or(|&(b, _)| b < batch));
        if self.by_batch.try_reserve(1).is_err() {
            return false;
        }
        self.by_batch.push((batch, request));
        true
    }

    pub(crate) fn get(&self, batch: BatchId) -> Option<R> {
        let at = self
            .by_batch
            .binary_search_by_key(&batch, |&(b, _)| b)
            .ok()?;
        Some(self.by_batch[at].1)
    }

    pub(crate) fn remove(&mut self, batch: BatchId) -> Option<R> {
        let at = self
            .by_batch
            .binary_search_by_key(&batch, |&(b, _)| b)
            .ok()?;
        Some(self.by_batch.remove(at).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_id() {
        let mut r = Requests::new();
        let a = r.insert(Owned::new(1u32, 0)).unwrap();
        assert_eq!(r.remove(a).map(|o| o.request), Some(1));
        let b = r.insert(Owned::new(2u32, 0)).unwrap();
        assert_ne!(a, b);
        assert!(r.get(a).is_none() && r.remove(a).is_none());
        assert_eq!(r.get(b).map(|o| o.request), Some(2));
        assert_eq!(r.find(2), Some(b));
        assert_eq!(r.find(1), None);
    }

    #[test]
    fn hydrates_are_found_by_batch() {
        let mut h = Hydrates::new();
        assert!(h.insert(3, 'a') && h.insert(7, 'b'));
        assert_eq!(h.get(7), Some('b'));
        assert_eq!(h.remove(3), Some('a'));
        assert_eq!(h.get(3), None);
    }
}
