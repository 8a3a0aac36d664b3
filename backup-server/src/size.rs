//! Sizes on the command line (`4096`, `64KiB`, `1MiB`, `1GiB`) and the chunk size type.

use std::fmt;
use std::str::FromStr;

use crate::error::BackupError;

/// Smallest chunk size, as log2 (64 KiB).
pub const MIN_CHUNK_SHIFT: u8 = 16;
/// Largest chunk size, as log2 (8 MiB).
pub const MAX_CHUNK_SHIFT: u8 = 23;
/// Largest chunk size in bytes; buffers sized for "any chunk" use this.
pub const MAX_CHUNK_BYTES: usize = 1 << MAX_CHUNK_SHIFT;
const _: () = assert!(MIN_CHUNK_SHIFT <= MAX_CHUNK_SHIFT);
// A chunk must fit in one NBD read reply and in a u32 length.
const _: () = assert!(MAX_CHUNK_BYTES <= 32 << 20);

/// Parse a byte count: a plain number, or a number with a binary unit
/// (`KiB`/`MiB`/`GiB`/`TiB`, also `K`/`M`/`G`/`T`, case-insensitive; `B` alone is bytes).
pub fn parse_size(text: &str) -> Result<u64, BackupError> {
    let bad = |reason| BackupError::InvalidSize {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(bad("expected a number, e.g. 1MiB"));
    }
    let number: u64 = digits.parse().map_err(|_| bad("number too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(bad("unknown unit (use B, KiB, MiB, GiB or TiB)")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("size too large"))
}

/// A chunk size: a power of two from 64 KiB to 8 MiB, chosen per volume version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkSize {
    shift: u8,
}

impl ChunkSize {
    /// The default, 1 MiB: large enough that per-chunk overhead (one object, one lookup)
    /// is small, small enough that a changed block costs little to store again.
    pub const DEFAULT: ChunkSize = ChunkSize { shift: 20 };

    /// The chunk size of `2^shift` bytes, if allowed.
    pub fn from_shift(shift: u8) -> Option<Self> {
        (MIN_CHUNK_SHIFT..=MAX_CHUNK_SHIFT)
            .contains(&shift)
            .then_some(Self { shift })
    }

    /// The chunk size of `bytes`, if it is an allowed power of two.
    pub fn from_bytes(bytes: u64) -> Result<Self, BackupError> {
        if !bytes.is_power_of_two() {
            return Err(BackupError::InvalidChunkSize(bytes));
        }
        u8::try_from(bytes.trailing_zeros())
            .ok()
            .and_then(Self::from_shift)
            .ok_or(BackupError::InvalidChunkSize(bytes))
    }

    /// log2 of the size.
    pub fn shift(self) -> u8 {
        self.shift
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        1u64 << self.shift
    }

    /// The size in bytes, as a buffer length (always at most [`MAX_CHUNK_BYTES`]).
    pub fn len(self) -> usize {
        1usize << self.shift
    }

    /// Never true; present because `len` is.
    pub fn is_empty(self) -> bool {
        false
    }

    /// How many chunks cover `volume_size_bytes` (the last may be partial).
    pub fn chunk_count(self, volume_size_bytes: u64) -> u64 {
        volume_size_bytes.div_ceil(self.bytes())
    }

    /// The length of chunk `index` of a volume of `volume_size_bytes`: the chunk size,
    /// less for the last chunk, 0 past the end.
    pub fn chunk_len(self, volume_size_bytes: u64, index: u64) -> usize {
        let start = index.saturating_mul(self.bytes());
        // At most the chunk size (<= 8 MiB), so the cast is lossless.
        volume_size_bytes.saturating_sub(start).min(self.bytes()) as usize
    }
}

impl Default for ChunkSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FromStr for ChunkSize {
    type Err = BackupError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(parse_size(text)?)
    }
}

impl fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shift {
            s if s >= 20 => write!(f, "{}MiB", 1u64 << (s - 20)),
            s => write!(f, "{}KiB", 1u64 << (s - 10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("1gib").unwrap(), 1 << 30);
        assert_eq!(parse_size("2 M").unwrap(), 2 << 20);
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "1XiB",
            "99999999999999999999",
            "16777216TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunk_sizes_are_bounded_powers_of_two() {
        assert_eq!("1MiB".parse::<ChunkSize>().unwrap(), ChunkSize::DEFAULT);
        assert_eq!("64KiB".parse::<ChunkSize>().unwrap().bytes(), 65536);
        assert_eq!("8MiB".parse::<ChunkSize>().unwrap().to_string(), "8MiB");
        assert_eq!("64KiB".parse::<ChunkSize>().unwrap().to_string(), "64KiB");
        for bad in ["32KiB", "16MiB", "1000000", "0"] {
            assert!(bad.parse::<ChunkSize>().is_err(), "{bad}");
        }
        assert_eq!(ChunkSize::DEFAULT.chunk_count(0), 0);
        assert_eq!(ChunkSize::DEFAULT.chunk_count(1), 1);
        assert_eq!(ChunkSize::DEFAULT.chunk_count(1 << 20), 1);
        assert_eq!(ChunkSize::DEFAULT.chunk_count((1 << 20) + 1), 2);
    }
}
