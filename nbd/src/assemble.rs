//! The client's half of the transmission rules, sans-IO: collect the simple reply or the
//! structured chunks for one request into a result, checking every chunk against the
//! request it answers (a violation is a [`ProtocolError`], and the client hangs up).
//!
//! A read's data goes into one buffer, the caller's when it gave one
//! ([`Assembly::with_buffer`]). The client may also place data itself, read straight
//! from the socket: [`Assembly::data_chunk`] checks the chunk and says where it goes,
//! [`Assembly::buffer_mut`] is the place.

use bytes::BytesMut;

use crate::error::{Error, ProtocolError};
use crate::export::Extent;
use crate::transmission::{Chunk, ChunkBody};

/// Most chunks one reply may have; a bound on the work a server can make us do per request.
pub const MAX_CHUNKS_PER_REPLY: u32 = 65_536;

/// What a request expects back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Data for `[offset, offset + length)`.
    Read {
        /// Request offset.
        offset: u64,
        /// Request length (bounded by the client's payload maximum).
        length: u32,
    },
    /// Extents for the `base:allocation` context `context_id`.
    BlockStatus {
        /// Request length, to clip the final extent.
        length: u32,
        /// Context id negotiated for `base:allocation`.
        context_id: u32,
    },
    /// No payload (write, flush, trim, write zeroes).
    Nothing,
}

/// The successful result of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Read data, exactly the requested length (the caller's buffer, if it gave one).
    Data(BytesMut),
    /// Extents from the request offset, summing to at most the request length.
    Extents(Vec<Extent>),
    /// Success without payload.
    Done,
}

/// A reply being assembled.
#[derive(Debug)]
pub struct Assembly {
    expect: Expect,
    /// Empty until the first content, unless the caller gave a buffer.
    data: BytesMut,
    /// `data` is the caller's: it may hold old bytes, so holes are zeroed explicitly.
    given: bool,
    ranges: Vec<(u64, u64)>,
    extents: Option<Vec<Extent>>,
    error: Option<(u32, String)>,
    chunks: u32,
}

impl Assembly {
    /// Start assembling the reply to a request.
    pub fn new(expect: Expect) -> Self {
        Self {
            expect,
            data: BytesMut::new(),
            given: false,
            ranges: Vec::new(),
            extents: None,
            error: None,
            chunks: 0,
        }
    }

    /// Start assembling the reply to a read of `buffer.len()` bytes into `buffer`, whose
    /// contents do not matter (every byte is overwritten, holes with zeros).
    pub fn with_buffer(offset: u64, buffer: BytesMut) -> Result<Self, ProtocolError> {
        let length = u32::try_from(buffer.len())
            .map_err(|_| ProtocolError::Unexpected("read buffer longer than 4 GiB"))?;
        let mut assembly = Self::new(Expect::Read { offset, length });
        assembly.data = buffer;
        assembly.given = true;
        Ok(assembly)
    }

    /// The buffer a read's data goes into, allocated (zeroed) on first use. Empty for
    /// other requests.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        if let Expect::Read { length, .. } = self.expect {
            if self.data.is_empty() && length > 0 {
                self.data = BytesMut::zeroed(length as usize);
            }
        }
        &mut self.data
    }

    /// Takes the read's buffer out (allocated as [`Assembly::buffer_mut`] does) while the
    /// caller fills part of it without holding the assembly; give it back with
    /// [`Assembly::put_buffer`].
    pub fn take_buffer(&mut self) -> BytesMut {
        self.buffer_mut();
        std::mem::take(&mut self.data)
    }

    /// Gives back the buffer [`Assembly::take_buffer`] took.
    pub fn put_buffer(&mut self, buffer: BytesMut) {
        debug_assert!(self.data.is_empty(), "a buffer is already in place");
        self.data = buffer;
    }

    /// An `OFFSET_DATA` chunk of `len` bytes at `offset` whose bytes the caller places
    /// itself: checked as [`Assembly::chunk`] checks it; returns where in
    /// [`Assembly::buffer_mut`] the bytes go.
    pub fn data_chunk(&mut self, offset: u64, len: u32) -> Result<usize, ProtocolError> {
        self.count_chunk()?;
        let Expect::Read {
            offset: start,
            length,
        } = self.expect
        else {
            return Err(ProtocolError::Unexpected(
                "chunk type does not fit the request",
            ));
        };
        if len == 0 {
            return Err(ProtocolError::Malformed("OFFSET_DATA shorter than 9 bytes"));
        }
        let at = self.place(offset, len.into(), start, length)?;
        debug_assert!(at + len as usize <= length as usize);
        Ok(at)
    }

    /// Whether a successful simple reply to this request carries data the caller may
    /// place itself (into all of [`Assembly::buffer_mut`]), then [`Assembly::placed`].
    pub fn reads_data(&self) -> bool {
        matches!(self.expect, Expect::Read { length, .. } if length > 0)
    }

    /// The caller placed a whole simple reply's data: the read is complete.
    pub fn placed(self) -> Result<Outcome, Error> {
        match self.expect {
            Expect::Read { .. } => Ok(Outcome::Data(self.data)),
            _ => Err(ProtocolError::Unexpected("data for a request without data").into()),
        }
    }

    fn count_chunk(&mut self) -> Result<(), ProtocolError> {
        self.chunks += 1;
        if self.chunks > MAX_CHUNKS_PER_REPLY {
            return Err(ProtocolError::Unexpected("too many chunks in one reply"));
        }
        Ok(())
    }

    /// Bytes of data a successful simple reply carries (what `decode_reply` must be told).
    pub fn simple_data_len(&self) -> u32 {
        match self.expect {
            Expect::Read { length, .. } => length,
            _ => 0,
        }
    }

    /// A simple reply ends the request.
    pub fn simple(self, error: u32, data: &[u8]) -> Result<Outcome, Error> {
        if error != 0 {
            return Err(Error::Server {
                errno: error,
                message: String::new(),
            });
        }
        Ok(match self.expect {
            Expect::Read { .. } => {
                let mut out = self.data;
                out.clear();
                out.extend_from_slice(data);
                Outcome::Data(out)
            }
            // Block status has no simple form; treat it as a server error, not data.
            Expect::BlockStatus { .. } => {
                return Err(ProtocolError::Unexpected("simple reply to block status").into())
            }
            Expect::Nothing => Outcome::Done,
        })
    }

    /// Apply one chunk. When it carried the DONE flag, call [`Assembly::finish`].
    pub fn chunk(&mut self, chunk: &Chunk<'_>) -> Result<(), ProtocolError> {
        self.count_chunk()?;
        if let Some((error, message)) = chunk.body.error() {
            // Keep the first error; later ones add nothing the caller can use.
            if self.error.is_none() {
                self.error = Some((error, message.to_owned()));
            }
            return Ok(());
        }
        match (&chunk.body, self.expect) {
            (ChunkBody::None, _) => Ok(()),
            (
                ChunkBody::OffsetData { offset, data },
                Expect::Read {
                    offset: start,
                    length,
                },
            ) => {
                let at = self.place(*offset, data.len() as u64, start, length)?;
                // Allocated on first content, bounded by the request length.
                let dest = self
                    .buffer_mut()
                    .get_mut(at..at + data.len())
                    .ok_or(ProtocolError::Malformed("data chunk outside the request"))?;
                dest.copy_from_slice(data);
                Ok(())
            }
            (
                ChunkBody::OffsetHole {
                    offset,
                    length: hole,
                },
                Expect::Read {
                    offset: start,
                    length,
                },
            ) => {
                let at = self.place(*offset, (*hole).into(), start, length)?;
                if self.given {
                    // The caller's buffer may hold old bytes.
                    if let Some(dest) = self.data.get_mut(at..at + *hole as usize) {
                        dest.fill(0);
                    }
                } else {
                    // A fresh buffer is zeroed, and chunks may not overlap (checked in
                    // `finish`): the zeroes are already there.
                    self.buffer_mut();
                }
                Ok(())
            }
            (
                ChunkBody::BlockStatus {
                    context_id,
                    descriptors,
                },
                Expect::BlockStatus {
                    length,
                    context_id: ours,
                },
            ) => {
                if *context_id != ours {
                    // A context we did not select: the spec lets us ignore it.
                    return Ok(());
                }
                if self.extents.is_some() {
                    return Err(ProtocolError::Unexpected(
                        "two block status chunks for one context",
                    ));
                }
                let mut left = u64::from(length);
                let mut extents = Vec::with_capacity(descriptors.len().min(4096));
                for d in descriptors {
                    if left == 0 {
                        break;
                    }
                    let take = u64::from(d.length).min(left);
                    left -= take;
                    extents.push(Extent::from_status(take, d.status));
                }
                self.extents = Some(extents);
                Ok(())
            }
            _ => Err(ProtocolError::Unexpected(
                "chunk type does not fit the request",
            )),
        }
    }

    /// Check that `[offset, offset+len)` lies inside the request and remember it.
    fn place(
        &mut self,
        offset: u64,
        len: u64,
        start: u64,
        length: u32,
    ) -> Result<usize, ProtocolError> {
        let end = offset
            .checked_add(len)
            .ok_or(ProtocolError::Malformed("chunk range overflows"))?;
        if offset < start || end > start + u64::from(length) {
            return Err(ProtocolError::Malformed(
                "content chunk outside the request",
            ));
        }
        self.ranges.push((offset, end));
        usize::try_from(offset - start)
            .map_err(|_| ProtocolError::Malformed("chunk offset too large"))
    }

    /// The reply is complete (a chunk with DONE arrived).
    pub fn finish(mut self) -> Result<Outcome, Error> {
        if let Some((errno, message)) = self.error {
            return Err(Error::Server { errno, message });
        }
        match self.expect {
            Expect::Read { offset, length } => {
                // Content chunks must tile the request exactly: sorted, touching, no overlap.
                self.ranges.sort_unstable();
                let mut at = offset;
                for &(start, end) in &self.ranges {
                    if start != at {
                        return Err(ProtocolError::Malformed(
                            "read reply chunks overlap or leave a gap",
                        )
                        .into());
                    }
                    at = end;
                }
                if at != offset + u64::from(length) {
                    return Err(
                        ProtocolError::Malformed("read reply does not cover the request").into(),
                    );
                }
                self.buffer_mut();
                Ok(Outcome::Data(self.data))
            }
            Expect::BlockStatus { .. } => match self.extents {
                Some(extents) if !extents.is_empty() => Ok(Outcome::Extents(extents)),
                _ => Err(ProtocolError::Malformed("block status reply without our context").into()),
            },
            Expect::Nothing => Ok(Outcome::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transmission::BlockDescriptor;

    fn chunk(body: ChunkBody<'_>) -> Chunk<'_> {
        Chunk {
            done: false,
            cookie: 1,
            body,
        }
    }

    #[test]
    fn data_and_holes_tile_a_read() {
        let mut a = Assembly::new(Expect::Read {
            offset: 100,
            length: 10,
        });
        a.chunk(&chunk(ChunkBody::OffsetHole {
            offset: 104,
            length: 6,
        }))
        .unwrap();
        a.chunk(&chunk(ChunkBody::OffsetData {
            offset: 100,
            data: &[1, 2, 3, 4],
        }))
        .unwrap();
        assert_eq!(
            a.finish().unwrap(),
            Outcome::Data(BytesMut::from(&[1, 2, 3, 4, 0, 0, 0, 0, 0, 0][..]))
        );
    }

    #[test]
    fn a_given_buffer_is_filled_and_its_holes_zeroed() {
        let mut a = Assembly::with_buffer(100, BytesMut::from(&[9u8; 10][..])).unwrap();
        a.chunk(&chunk(ChunkBody::OffsetHole {
            offset: 104,
            length: 6,
        }))
        .unwrap();
        // Data placed by the caller, as the client does from the socket.
        let at = a.data_chunk(100, 4).unwrap();
        let mut taken = a.take_buffer();
        taken[at..at + 4].copy_from_slice(&[1, 2, 3, 4]);
        a.put_buffer(taken);
        assert_eq!(
            a.finish().unwrap(),
            Outcome::Data(BytesMut::from(&[1, 2, 3, 4, 0, 0, 0, 0, 0, 0][..]))
        );
        // Placed data is checked like data in a chunk.
        let mut a = Assembly::with_buffer(0, BytesMut::zeroed(4)).unwrap();
        assert!(a.data_chunk(2, 4).is_err());
        assert!(a.data_chunk(0, 0).is_err());
        let mut a = Assembly::new(Expect::Nothing);
        assert!(a.data_chunk(0, 1).is_err());
        assert!(!a.reads_data());
        // A whole simple reply placed by the caller.
        let mut a = Assembly::with_buffer(0, BytesMut::zeroed(3)).unwrap();
        assert!(a.reads_data());
        a.buffer_mut().copy_from_slice(&[7, 8, 9]);
        assert_eq!(
            a.placed().unwrap(),
            Outcome::Data(BytesMut::from(&[7, 8, 9][..]))
        );
    }

    #[test]
    fn gaps_overlaps_and_strays_are_protocol_errors() {
        let mut a = Assembly::new(Expect::Read {
            offset: 0,
            length: 10,
        });
        a.chunk(&chunk(ChunkBody::OffsetData {
            offset: 0,
            data: &[1; 4],
        }))
        .unwrap();
        assert!(matches!(a.finish(), Err(Error::Protocol(_))));
        let mut a = Assembly::new(Expect::Read {
            offset: 0,
            length: 4,
        });
        a.chunk(&chunk(ChunkBody::OffsetData {
            offset: 0,
            data: &[1; 4],
        }))
        .unwrap();
        a.chunk(&chunk(ChunkBody::OffsetHole {
            offset: 2,
            length: 2,
        }))
        .unwrap();
        assert!(matches!(a.finish(), Err(Error::Protocol(_))));
        let mut a = Assembly::new(Expect::Read {
            offset: 0,
            length: 4,
        });
        assert!(a
            .chunk(&chunk(ChunkBody::OffsetData {
                offset: 2,
                data: &[1; 4]
            }))
            .is_err());
        let mut a = Assembly::new(Expect::Nothing);
        assert!(a
            .chunk(&chunk(ChunkBody::OffsetHole {
                offset: 0,
                length: 1
            }))
            .is_err());
    }

    #[test]
    fn error_chunk_wins() {
        let mut a = Assembly::new(Expect::Read {
            offset: 0,
            length: 4,
        });
        a.chunk(&chunk(ChunkBody::Error {
            error: 5,
            message: "disk".into(),
        }))
        .unwrap();
        assert!(matches!(a.finish(), Err(Error::Server { errno: 5, .. })));
    }

    #[test]
    fn block_status_is_clipped_to_the_request() {
        let mut a = Assembly::new(Expect::BlockStatus {
            length: 10,
            context_id: 3,
        });
        let descriptors = vec![
            BlockDescriptor {
                length: 4,
                status: 3,
            },
            BlockDescriptor {
                length: 100,
                status: 0,
            },
        ];
        a.chunk(&chunk(ChunkBody::BlockStatus {
            context_id: 9,
            descriptors: descriptors.clone(),
        }))
        .unwrap();
        a.chunk(&chunk(ChunkBody::BlockStatus {
            context_id: 3,
            descriptors,
        }))
        .unwrap();
        assert_eq!(
            a.finish().unwrap(),
            Outcome::Extents(vec![Extent::hole(4), Extent::data(6)])
        );
    }
}
