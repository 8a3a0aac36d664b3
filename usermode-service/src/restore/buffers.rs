//! Fetch buffers, reused: the data of a fetch is read from the socket straight into one
//! of these and written to the target from it, so a restore copies no byte in user
//! space; reusing them spares the allocator's zeroing and the page faults of fresh
//! memory (a tenth of a restore's time without it).
//!
//! Bounded: at most `kept_max` buffers wait for reuse; the hydrator bounds
//! how many are in use at once (fetches in flight plus hydrates being written).

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// Buffers waiting for reuse.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<BytesMut>>,
    kept_max: usize,
    /// Buffers of at least this capacity are kept; smaller ones go back to the allocator.
    size_bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `kept_max` buffers of `size_bytes` each.
    pub fn new(size_bytes: usize, kept_max: usize) -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::with_capacity(kept_max)),
            kept_max,
            size_bytes,
        }
    }

    /// A buffer of `len` bytes whose contents are unspecified (a reader overwrites all
    /// of them).
    pub fn take(&self, len: usize) -> BytesMut {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        match reused {
            Some(mut buf) if buf.capacity() >= len => {
                // Only growth is zero-filled: a reused buffer keeps its full length.
                buf.truncate(len);
                buf.resize(len, 0);
                buf
            }
            _ => BytesMut::zeroed(len),
        }
    }

    /// Gives a buffer back, if nobody else holds part of it and there is room.
    pub fn give(&self, data: Bytes) {
        let Ok(mut buf) = data.try_into_mut() else {
            return;
        };
        if buf.capacity() < self.size_bytes {
            return;
        }
        // Back to its full size, so the next `take` needs no zero-fill.
        let full = buf.capacity();
        buf.resize(full, 0);
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.kept_max {
                free.push(buf);
            }
        }
    }

    /// Buffers waiting for reuse now.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.free.lock().map_or(0, |f| f.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_the_pool_stays_bounded() {
        let pool = BufferPool::new(4096, 2);
        let (a, b, c) = (pool.take(4096), pool.take(4096), pool.take(4096));
        let kept_ptr = a.as_ptr() as usize;
        for buf in [a, b, c] {
            pool.give(buf.freeze());
        }
        assert_eq!(pool.kept(), 2, "at most kept_max are kept");
        // Reused (the last kept comes first), cut to the length asked for.
        let _first = pool.take(4096);
        let again = pool.take(1000);
        assert_eq!(again.len(), 1000);
        assert_eq!(again.as_ptr() as usize, kept_ptr, "the memory is reused");
        // Held elsewhere (a slice is still being written): not taken back.
        let shared = pool.take(4096).freeze();
        let slice = shared.slice(10..20);
        let before = pool.kept();
        pool.give(shared);
        assert_eq!(pool.kept(), before, "a shared buffer is not reused");
        drop(slice);
        // Too small to be worth keeping.
        pool.give(Bytes::from(vec![0u8; 100]));
        assert_eq!(pool.kept(), before);
        // Given back at full size: the next take needs no zero-fill.
        pool.give(again.freeze());
        assert_eq!(pool.take(4096).len(), 4096);
    }
}
