//! The framing layer: a byte stream cut into length-prefixed, bounded frames.
//!
//! It knows nothing of replication, so any session between two stores or sites (T4
//! replication today, T5 disaster-recovery sync later) can carry its own messages in it.
//! Byte by byte, integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     4  length L of what follows (kind + payload), 1 ..= MAX_FRAME_BYTES
//!      4     1  kind: which message the payload holds (the layer above decides)
//!      5   L-1  payload
//! ```
//!
//! The length is checked before anything is allocated, so a peer can make us hold at
//! most one frame of [`MAX_FRAME_BYTES`]. There is no checksum at this layer: TCP has
//! one, and everything that matters inside is checked above it (chunks by their BLAKE3
//! name, indexes by their own checksum, the manifest by the session id that hashes it).

use bytes::{Buf, Bytes, BytesMut};

/// Bytes before the payload: the length (4) and the kind (1).
pub const HEADER_BYTES: usize = 5;
/// Largest `L` (kind + payload) a frame may declare: one manifest entry carries a whole
/// version index, 32 bytes per chunk, so this admits a 2 TiB volume at 1 MiB chunks; a
/// chunk frame needs at most 8 MiB plus a few bytes.
pub const MAX_FRAME_BYTES: usize = (64 << 20) + (64 << 10);

const _: () = assert!(MAX_FRAME_BYTES <= u32::MAX as usize);
// A frame must hold the largest chunk (8 MiB) with its hash and encoding byte.
const _: () = assert!(MAX_FRAME_BYTES > (8 << 20) + 64);

/// One frame as read off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message kind.
    pub kind: u8,
    /// The payload (no copy of the received bytes).
    pub payload: Bytes,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared length is 0 (no kind byte) or above [`MAX_FRAME_BYTES`].
    #[error("frame length {0} is outside 1..={MAX_FRAME_BYTES}")]
    BadLength(u64),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({0} bytes of it received)")]
    Truncated(usize),
}

/// Encode one frame into `out`.
pub fn encode_into(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len() + 1;
    // Every caller builds payloads from bounded fields; a larger one is a bug here, and
    // the peer would refuse it anyway.
    assert!(len <= MAX_FRAME_BYTES, "frame of {len} bytes is too large");
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Parse the 4-byte length prefix; the kind and payload are `L` more bytes.
pub fn parse_length(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(FrameError::BadLength(len as u64));
    }
    Ok(len)
}

/// A sans-IO frame decoder: push bytes as they arrive in any pieces, take whole frames.
#[derive(Default, Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer, with room for at least what the frame at its front still needs (and
    /// `min_bytes`), for a reader that reads received bytes straight into it instead of
    /// through [`FrameDecoder::push`]. Append only.
    pub fn read_buffer(&mut self, min_bytes: usize) -> &mut BytesMut {
        let needed = match self.front_len() {
            Some(len) => len.map_or(0, |len| (4 + len).saturating_sub(self.buf.len())),
            None => 4 - self.buf.len(),
        };
        self.buf.reserve(needed.max(min_bytes));
        &mut self.buf
    }

    /// True when [`FrameDecoder::next_frame`] answers without more bytes: a whole frame,
    /// or a length that ends the stream, is buffered.
    pub fn is_ready(&self) -> bool {
        self.front_len()
            .is_some_and(|len| len.map_or(true, |len| self.buf.len() >= 4 + len))
    }

    /// The length of the frame at the front, once its prefix arrived.
    fn front_len(&self) -> Option<Result<usize, FrameError>> {
        let p = self.buf.get(..4)?;
        Some(parse_length([p[0], p[1], p[2], p[3]]))
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the error that
    /// ends the stream (the decoder is then useless: a bad length loses the framing).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(len) = self.front_len() else {
            return Ok(None);
        };
        let len = len?;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let mut body = self.buf.split_to(len).freeze();
        let kind = body.get_u8();
        Ok(Some(Frame {
            kind,
            payload: body,
        }))
    }

    /// Call at end of stream: an error if a frame was left unfinished.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, payload) in frames {
            encode_into(*kind, payload, &mut out);
        }
        out
    }

    #[test]
    fn layout() {
        let bytes = encoded(&[(7, vec![1, 2, 3])]);
        assert_eq!(bytes, [4, 0, 0, 0, 7, 1, 2, 3]);
    }

    #[test]
    fn bad_lengths_are_refused_before_allocating() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 0, 9]);
        assert!(d.is_ready(), "a bad length is answered at once");
        assert_eq!(d.next_frame(), Err(FrameError::BadLength(0)));
        let mut d = FrameDecoder::new();
        d.push(&(MAX_FRAME_BYTES as u32 + 1).to_le_bytes());
        assert!(matches!(d.next_frame(), Err(FrameError::BadLength(_))));
        let mut d = FrameDecoder::new();
        d.push(&[3, 0, 0, 0, 1]);
        assert!(!d.is_ready());
        assert!(
            d.read_buffer(0).capacity() >= 4 + 3,
            "room for the rest of the frame"
        );
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(5)));
    }

    proptest! {
        /// However the stream is cut into pieces, and whether they are pushed or read
        /// into the decoder's buffer, the same frames come out in order, and
        /// `is_ready` says whether one is there.
        #[test]
        fn any_split_gives_the_same_frames(
            frames in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let bytes = encoded(&frames);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.push(0);
            points.push(bytes.len());
            points.sort_unstable();
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for (i, pair) in points.windows(2).enumerate() {
                let piece = &bytes[pair[0]..pair[1]];
                if i % 2 == 0 {
                    d.push(piece);
                } else {
                    d.read_buffer(1).extend_from_slice(piece);
                }
                loop {
                    let ready = d.is_ready();
                    let Some(f) = d.next_frame().unwrap() else {
                        prop_assert!(!ready);
                        break;
                    };
                    prop_assert!(ready);
                    got.push((f.kind, f.payload.to_vec()));
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert!(d.finish().is_ok());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = FrameDecoder::new();
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_frame() {}
        }
    }
}
