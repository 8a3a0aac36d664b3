//! The shape every decoder returns, and a bounds-checked reader over untrusted bytes.
//!
//! Decoders never index: every read goes through `Reader`, which returns `None` when the
//! bytes run out, so a short or hostile buffer cannot panic.

/// What a decoder made of the bytes it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    /// Not enough bytes yet: the buffer must grow to at least `needed` bytes in total
    /// before the decoder can make progress.
    Incomplete {
        /// Minimum total buffer length for the next attempt.
        needed: usize,
    },
    /// A whole message, which used the first `consumed` bytes of the buffer.
    Complete {
        /// The decoded message.
        message: T,
        /// Bytes of the buffer the message occupied.
        consumed: usize,
    },
}

impl<T> Decoded<T> {
    /// Map the message, keeping `consumed`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Decoded<U> {
        match self {
            Decoded::Incomplete { needed } => Decoded::Incomplete { needed },
            Decoded::Complete { message, consumed } => Decoded::Complete {
                message: f(message),
                consumed,
            },
        }
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N).and_then(|b| b.try_into().ok())
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let all = self.rest;
        self.rest = &[];
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_reads_past_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.bytes(2), None);
        assert_eq!(r.rest(), &[3]);
        assert_eq!(r.u64(), None);
    }
}
