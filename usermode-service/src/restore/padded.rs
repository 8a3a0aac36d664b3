//! A source whose size is not a whole number of sectors, seen as one that is: the engine
//! tracks whole 512-byte sectors, so the restore asks for a padded last sector. Bytes
//! past the source's end read as zeros (and are clipped again by the target, so they
//! never reach the file).

use bytes::BytesMut;

use crate::hydrator::Allocation;
use crate::source::{Source, SourceError};

/// `inner`, padded with zeros to `size_bytes`.
pub struct PaddedSource<S> {
    inner: S,
    size_bytes: u64,
}

impl<S: Source> PaddedSource<S> {
    /// Pads `inner` to `size_bytes` (at least its own size, less than a sector more).
    pub fn new(inner: S, size_bytes: u64) -> PaddedSource<S> {
        debug_assert!(size_bytes >= inner.size_bytes());
        debug_assert!(size_bytes - inner.size_bytes() < 512);
        PaddedSource { inner, size_bytes }
    }
}

impl<S: Source> Source for PaddedSource<S> {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn supports_block_status(&self) -> bool {
        self.inner.supports_block_status()
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, SourceError> {
        let real_end = self.inner.size_bytes();
        let inside = (len as u64).min(real_end.saturating_sub(offset)) as usize;
        let mut data = if inside == 0 {
            Vec::new()
        } else {
            self.inner.read(offset, inside).await?
        };
        data.resize(len, 0);
        Ok(data)
    }

    async fn read_into(&self, offset: u64, mut buf: BytesMut) -> Result<BytesMut, SourceError> {
        let real_end = self.inner.size_bytes();
        let inside = (buf.len() as u64).min(real_end.saturating_sub(offset)) as usize;
        if inside == buf.len() {
            return self.inner.read_into(offset, buf).await;
        }
        let mut padding = buf.split_off(inside);
        padding.fill(0);
        let mut data = if inside == 0 {
            buf
        } else {
            self.inner.read_into(offset, buf).await?
        };
        data.unsplit(padding);
        Ok(data)
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Allocation>, SourceError> {
        let real_end = self.inner.size_bytes();
        let inside = len.min(real_end.saturating_sub(offset));
        let mut map = if inside == 0 {
            Vec::new()
        } else {
            self.inner.block_status(offset, inside).await?
        };
        // The padding reads as zeros: a hole of its own.
        if inside < len {
            map.push(Allocation {
                len: len - inside,
                zero: true,
            });
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemSource;

    #[test]
    fn the_padding_reads_as_zeros_and_is_a_hole() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let s = PaddedSource::new(MemSource::new(vec![7u8; 1000]), 1024);
        assert_eq!(s.size_bytes(), 1024);
        let data = rt.block_on(s.read(512, 512)).unwrap();
        assert_eq!(&data[..488], &[7; 488][..]);
        assert_eq!(&data[488..], &[0; 24][..]);
        assert_eq!(rt.block_on(s.read(1000, 24)).unwrap(), vec![0; 24]);
        let into = rt
            .block_on(s.read_into(512, BytesMut::from(&[1u8; 512][..])))
            .unwrap();
        assert_eq!(&into[..], &data[..]);
        let map = rt.block_on(s.block_status(0, 1024)).unwrap();
        assert_eq!(map.iter().map(|a| a.len).sum::<u64>(), 1024);
        assert_eq!(
            map.last(),
            Some(&Allocation {
                len: 24,
                zero: true
            })
        );
    }
}
