//! One hydrator fetch, performed for the restore: block status first when asked, then
//! each data piece read from the source straight into a pooled buffer, which the writer
//! then writes to the target as it is (no copy in between).

use bytes::Bytes;
use rehydrate_driver::Geometry;

use super::buffers::BufferPool;
use crate::hydrator::{plan_segments, Allocation, Segment};
use crate::source::{Source, SourceError};

/// A completed fetch: its pieces, and the bytes of each data piece.
#[derive(Debug)]
pub struct Parts {
    /// Region-aligned pieces covering the range, for `Input::Fetched`.
    pub segments: Vec<Segment>,
    /// One buffer per data (non-zero) piece, in order, each exactly its length.
    pub data: Vec<Bytes>,
}

impl Parts {
    /// The bytes of `[offset, offset + len)` (volume offsets), inside one data piece.
    pub fn bytes(&self, offset: u64, len: u64) -> Option<Bytes> {
        let (segment, data) = self
            .segments
            .iter()
            .filter(|s| !s.zero)
            .zip(&self.data)
            .find(|(s, _)| s.offset <= offset && offset < s.offset + s.len)?;
        let start = usize::try_from(offset - segment.offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        (end <= data.len()).then(|| data.slice(start..end))
    }
}

/// Performs one fetch of `[offset, offset + len)`, every length checked.
pub async fn fetch_parts<S: Source>(
    source: &S,
    pool: &BufferPool,
    geometry: &Geometry,
    offset: u64,
    len: u64,
    block_status: bool,
) -> Result<Parts, SourceError> {
    let size = source.size_bytes();
    let out_of_range = SourceError::OutOfRange {
        offset,
        len,
        size_bytes: size,
    };
    if offset.checked_add(len).is_none_or(|end| end > size) || usize::try_from(len).is_err() {
        return Err(out_of_range);
    }
    let map = if block_status && source.supports_block_status() {
        source.block_status(offset, len).await?
    } else {
        vec![Allocation { len, zero: false }]
    };
    let segments = plan_segments(geometry, offset, len, &map);
    let mut data = Vec::new();
    for s in segments.iter().filter(|s| !s.zero) {
        let want = s.len as usize;
        let filled = source.read_into(s.offset, pool.take(want)).await?;
        if filled.len() != want {
            return Err(SourceError::ShortRead {
                offset: s.offset,
                expected: s.len,
                got: filled.len() as u64,
            });
        }
        data.push(filled.freeze());
    }
    Ok(Parts { segments, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemSource;

    #[test]
    fn data_pieces_are_read_into_buffers_and_zeros_are_not_read() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut image = vec![7u8; 4 * 4096];
        image[4096..2 * 4096].fill(0);
        image[3 * 4096] = 9;
        let source = MemSource::new(image.clone());
        let g = Geometry::new(image.len() as u64, 4096).unwrap();
        let pool = BufferPool::new(4096, 4);
        let parts = rt
            .block_on(fetch_parts(&source, &pool, &g, 0, 4 * 4096, true))
            .unwrap();
        assert_eq!(parts.segments.len(), 3);
        assert_eq!(parts.data.len(), 2, "one buffer per data piece");
        assert_eq!(&parts.data[0][..], &image[..4096]);
        assert_eq!(&parts.data[1][..], &image[2 * 4096..]);
        assert_eq!(parts.bytes(3 * 4096, 10).unwrap()[0], 9);
        assert!(parts.bytes(4096, 10).is_none(), "a zero piece has no bytes");
        assert!(parts.bytes(3 * 4096, 4097).is_none(), "past its piece");
        let e = rt
            .block_on(fetch_parts(&source, &pool, &g, 4096, 4 * 4096, true))
            .unwrap_err();
        assert!(matches!(e, SourceError::OutOfRange { .. }));
    }
}
