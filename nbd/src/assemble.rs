//! The client's half of the transmission rules, sans-IO: collect the simple reply or the
//! structured chunks for one request into a result, checking every chunk against the
//! request it answers (a violation is a [`ProtocolError`], and the client hangs up).

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
    /// Read data, exactly the requested length.
    Data(Vec<u8>),
    /// Extents from the request offset, summing to at most the request length.
    Extents(Vec<Extent>),
    /// Success without payload.
    Done,
}

/// A reply being assembled.
#[derive(Debug)]
pub struct Assembly {
    expect: Expect,
    data: Vec<u8>,
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
            data: Vec::new(),
            ranges: Vec::new(),
            extents: None,
            error: None,
            chunks: 0,
        }
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
            Expect::Read { .. } => Outcome::Data(data.to_vec()),
            // Block status has no simple form; treat it as a server error, not data.
            Expect::BlockStatus { .. } => {
                return Err(ProtocolError::Unexpected("simple reply to block status").into())
            }
            Expect::Nothing => Outcome::Done,
        })
    }

    /// Apply one chunk. When it carried the DONE flag, call [`Assembly::finish`].
    pub fn chunk(&mut self, chunk: &Chunk<'_>) -> Result<(), ProtocolError> {
        self.chunks += 1;
        if self.chunks > MAX_CHUNKS_PER_REPLY {
            return Err(ProtocolError::Unexpected("too many chunks in one reply"));
        }
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
                if self.data.is_empty() {
                    // Allocated on first content, bounded by the request length.
                    self.data = vec![0u8; length as usize];
                }
                let dest = self
                    .data
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
                self.place(*offset, (*hole).into(), start, length)?;
                if self.data.is_empty() {
                    self.data = vec![0u8; length as usize];
                }
                // Chunks may not overlap (checked in `finish`), so the zeroes are already there.
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
                if self.data.is_empty() {
                    self.data = vec![0u8; length as usize];
                }
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
            Outcome::Data(vec![1, 2, 3, 4, 0, 0, 0, 0, 0, 0])
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
