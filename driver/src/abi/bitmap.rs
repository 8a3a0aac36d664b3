//! Reading the region map a page at a time: which regions are restored.

use core::fmt;

use super::wire::{self, Reader, Writer};
use super::{
    AbiError, MapSelector, MessageKind, BITMAP_PAGE_MAX_BYTES, BITMAP_PAGE_PREFIX_BYTES,
    BITMAP_PAGE_WORDS_MAX, BITMAP_QUERY_BYTES, HEADER_BYTES,
};
use crate::geometry::REGION_COUNT_MAX;

const BITS: u64 = 64;
/// Words in the largest map any volume can have; no page or query reaches past it, which
/// also keeps `first_word + word_count` far from overflow.
const WORDS_MAX: u64 = REGION_COUNT_MAX / BITS;

/// Service → driver: send `word_count` words of map `map` starting at word
/// `first_word`. The answer is a [`BitmapPage`], shorter (even empty) where the map ends.
///
/// ```text
/// offset size field
///      0    8 header      kind 5, total_len 24
///      8    8 first_word  word index; first_word + word_count <= 2^26 (the largest map)
///     16    4 word_count  <= BITMAP_PAGE_WORDS_MAX (4096); zero is allowed
///     20    4 map         MapSelector: 1 restored (D), 2 overlay (O)
///     24      end
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct BitmapQuery {
    /// First word wanted.
    pub first_word: u64,
    /// Words wanted.
    pub word_count: u32,
    /// Which map.
    pub map: MapSelector,
}

impl BitmapQuery {
    fn check(&self) -> Result<(), AbiError> {
        check_word_count(MessageKind::BitmapQuery, self.word_count)?;
        let end = self.first_word.saturating_add(u64::from(self.word_count));
        if end > WORDS_MAX {
            return Err(AbiError::BitmapPastEnd {
                first_word: self.first_word,
                word_count: u64::from(self.word_count),
                word_total: WORDS_MAX,
                region_count: REGION_COUNT_MAX,
            });
        }
        Ok(())
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub const fn encoded_len(&self) -> usize {
        BITMAP_QUERY_BYTES
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        self.check()?;
        let mut w = Writer::new(out, BITMAP_QUERY_BYTES)?;
        wire::write_header(&mut w, MessageKind::BitmapQuery, BITMAP_QUERY_BYTES)?;
        w.u64(self.first_word)?;
        w.u32(self.word_count)?;
        w.u32(self.map as u32)?;
        Ok(w.finish(BITMAP_QUERY_BYTES))
    }

    /// Decodes a whole buffer that must hold exactly one query.
    pub fn decode(bytes: &[u8]) -> Result<BitmapQuery, AbiError> {
        let mut r = wire::body(bytes, MessageKind::BitmapQuery)?;
        wire::exact_len(bytes, MessageKind::BitmapQuery, BITMAP_QUERY_BYTES)?;
        let first_word = r.u64()?;
        let word_count = r.u32()?;
        let map = r.u32()?;
        let query = BitmapQuery {
            first_word,
            word_count,
            map: MapSelector::from_u32(map).ok_or(AbiError::UnknownMap(map))?,
        };
        query.check()?;
        Ok(query)
    }
}

/// Driver → service: part of a region map. Bit `b` of word `w` (absolute index
/// `first_word + i` for the page's word `i`) is set when region `64*w + b` is marked
/// (restored, for the restore map; in the overlay, for the overlay map).
///
/// ```text
/// offset size          field
///      0    8          header          kind 6, total_len 40 + 8 * word_count
///      8    8          first_word      <= ceil(region_count / 64)
///     16    4          word_count      <= BITMAP_PAGE_WORDS_MAX (4096);
///                                      first_word + word_count <= ceil(region_count / 64)
///     20    4          map             MapSelector the words are of
///     24    8          region_count    regions in the volume, <= 2^32
///     32    8          restored_count  regions marked in the whole map, <= region_count
///     40    8*word_count words         u64 each; bits past the last region are zero
/// ```
#[derive(Clone, Copy)]
pub struct BitmapPage<'a> {
    /// Index of the page's first word in the map.
    pub first_word: u64,
    /// Regions in the volume.
    pub region_count: u64,
    /// Regions marked in the whole map when the page was taken.
    pub restored_count: u64,
    /// Which map the words are of.
    pub map: MapSelector,
    words: Words<'a>,
}

/// Where the words live: the sender's slice, or the receiver's checked bytes.
#[derive(Clone, Copy)]
enum Words<'a> {
    Typed(&'a [u64]),
    Wire(&'a [u8]),
}

impl<'a> BitmapPage<'a> {
    /// A page of the restore map's `words` starting at `first_word`, checked as the
    /// decoder will check it.
    pub fn new(
        first_word: u64,
        region_count: u64,
        restored_count: u64,
        words: &'a [u64],
    ) -> Result<BitmapPage<'a>, AbiError> {
        Self::of_map(
            MapSelector::Restored,
            first_word,
            region_count,
            restored_count,
            words,
        )
    }

    /// A page of map `map`'s `words` starting at `first_word` (`marked_count` regions
    /// of the whole map are marked), checked as the decoder will check it.
    pub fn of_map(
        map: MapSelector,
        first_word: u64,
        region_count: u64,
        marked_count: u64,
        words: &'a [u64],
    ) -> Result<BitmapPage<'a>, AbiError> {
        let page = BitmapPage {
            first_word,
            region_count,
            restored_count: marked_count,
            map,
            words: Words::Typed(words),
        };
        page.check()?;
        Ok(page)
    }

    /// Words in the page.
    pub fn word_count(&self) -> usize {
        match self.words {
            Words::Typed(words) => words.len(),
            Words::Wire(bytes) => bytes.len() / 8,
        }
    }

    /// The page's word `index` (map word `first_word + index`), or `None` past the end.
    pub fn word(&self, index: usize) -> Option<u64> {
        match self.words {
            Words::Typed(words) => words.get(index).copied(),
            Words::Wire(bytes) => {
                let start = index.checked_mul(8)?;
                let word = bytes.get(start..start.checked_add(8)?)?;
                word.try_into().ok().map(u64::from_le_bytes)
            }
        }
    }

    /// The page's words in order.
    pub fn words(&self) -> impl Iterator<Item = u64> + 'a {
        let page = *self;
        (0..page.word_count()).map_while(move |i| page.word(i))
    }

    /// Whether `region` is restored, or `None` when the page does not cover it.
    pub fn is_restored(&self, region: u64) -> Option<bool> {
        if region >= self.region_count {
            return None;
        }
        let index = (region / BITS).checked_sub(self.first_word)?;
        let word = self.word(usize::try_from(index).ok()?)?;
        Some(word & (1 << (region % BITS)) != 0)
    }

    fn check(&self) -> Result<(), AbiError> {
        let word_count = u32::try_from(self.word_count()).unwrap_or(u32::MAX);
        check_word_count(MessageKind::BitmapPage, word_count)?;
        if self.region_count > REGION_COUNT_MAX {
            return Err(AbiError::CountTooLarge {
                kind: MessageKind::BitmapPage,
                count: self.region_count,
                max: REGION_COUNT_MAX,
            });
        }
        if self.restored_count > self.region_count {
            return Err(AbiError::RestoredCount {
                restored: self.restored_count,
                total: self.region_count,
            });
        }
        let word_total = self.region_count.div_ceil(BITS);
        let end = self.first_word.saturating_add(u64::from(word_count));
        if end > word_total {
            return Err(AbiError::BitmapPastEnd {
                first_word: self.first_word,
                word_count: u64::from(word_count),
                word_total,
                region_count: self.region_count,
            });
        }
        // Only the map's last word can have bits past the last region.
        let tail_regions = self.region_count % BITS;
        if tail_regions != 0 && end == word_total && word_count > 0 {
            let last = self
                .word(self.word_count().saturating_sub(1))
                .unwrap_or_default();
            let past_end = last & (u64::MAX << tail_regions);
            if past_end != 0 {
                return Err(AbiError::BitmapTailBits {
                    word: word_total - 1,
                    bits: past_end,
                });
            }
        }
        Ok(())
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        BITMAP_PAGE_PREFIX_BYTES.saturating_add(self.word_count().saturating_mul(8))
    }

    /// Encodes into the front of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AbiError> {
        self.check()?;
        let total = self.encoded_len();
        debug_assert!(total <= BITMAP_PAGE_MAX_BYTES);
        let word_count = u32::try_from(self.word_count()).unwrap_or(u32::MAX);
        let mut w = Writer::new(out, total)?;
        wire::write_header(&mut w, MessageKind::BitmapPage, total)?;
        w.u64(self.first_word)?;
        w.u32(word_count)?;
        w.u32(self.map as u32)?;
        w.u64(self.region_count)?;
        w.u64(self.restored_count)?;
        for word in self.words() {
            w.u64(word)?;
        }
        Ok(w.finish(total))
    }

    /// Decodes a whole buffer that must hold exactly one page; the words borrow from
    /// `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<BitmapPage<'a>, AbiError> {
        let mut r: Reader<'a> = wire::body(bytes, MessageKind::BitmapPage)?;
        if bytes.len() < BITMAP_PAGE_PREFIX_BYTES {
            return Err(AbiError::Length {
                kind: MessageKind::BitmapPage,
                expected: BITMAP_PAGE_PREFIX_BYTES,
                got: bytes.len(),
            });
        }
        let first_word = r.u64()?;
        let word_count = r.u32()?;
        let map = r.u32()?;
        let map = MapSelector::from_u32(map).ok_or(AbiError::UnknownMap(map))?;
        let region_count = r.u64()?;
        let restored_count = r.u64()?;
        check_word_count(MessageKind::BitmapPage, word_count)?;
        // word_count <= 4096 here, so this cannot overflow.
        let words_bytes = usize::try_from(word_count)
            .unwrap_or(usize::MAX)
            .saturating_mul(8);
        let expected = BITMAP_PAGE_PREFIX_BYTES.saturating_add(words_bytes);
        if bytes.len() != expected {
            return Err(AbiError::Length {
                kind: MessageKind::BitmapPage,
                expected,
                got: bytes.len(),
            });
        }
        let page = BitmapPage {
            first_word,
            region_count,
            restored_count,
            map,
            words: Words::Wire(r.take(words_bytes)?),
        };
        page.check()?;
        Ok(page)
    }
}

fn check_word_count(kind: MessageKind, word_count: u32) -> Result<(), AbiError> {
    if word_count > BITMAP_PAGE_WORDS_MAX {
        return Err(AbiError::CountTooLarge {
            kind,
            count: u64::from(word_count),
            max: u64::from(BITMAP_PAGE_WORDS_MAX),
        });
    }
    Ok(())
}

impl PartialEq for BitmapPage<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.first_word == other.first_word
            && self.map == other.map
            && self.region_count == other.region_count
            && self.restored_count == other.restored_count
            && self.word_count() == other.word_count()
            && self.words().eq(other.words())
    }
}

impl Eq for BitmapPage<'_> {}

impl fmt::Debug for BitmapPage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// A word shown in hex, where restored runs are easy to see.
        struct Hex(u64);
        impl fmt::Debug for Hex {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#018x}", self.0)
            }
        }
        /// The words as a list, without collecting them.
        struct WordList<'p>(BitmapPage<'p>);
        impl fmt::Debug for WordList<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.0.words().map(Hex)).finish()
            }
        }
        f.debug_struct("BitmapPage")
            .field("first_word", &self.first_word)
            .field("map", &self.map)
            .field("region_count", &self.region_count)
            .field("restored_count", &self.restored_count)
            .field("words", &WordList(*self))
            .finish()
    }
}

const _: () = assert!(BITMAP_QUERY_BYTES == HEADER_BYTES + 8 + 4 + 4);
const _: () = assert!(BITMAP_PAGE_PREFIX_BYTES == HEADER_BYTES + 8 + 4 + 4 + 8 + 8);
const _: () = assert!(BITMAP_PAGE_WORDS_MAX as u64 <= WORDS_MAX);
