//! Sector contents as tags: one `u64` per 512-byte sector instead of 512 bytes.
//!
//! A tag says where data came from, so a wrong value in a read names its culprit:
//!
//! ```text
//! bits 63..62  class  00 zero (a zero region of the backup, a zero-fill, a trim)
//!                     01 application write: hash(write id, sector)
//!                     10 backup data: hash(backup seed, sector)
//!                     11 garbage: what the device holds where nobody wrote
//! bits 61..0   hash (or the sector index, for garbage)
//! ```
//!
//! The backup's content is a pure function of the sector, so the link, the service and
//! the oracle all agree on it without sharing state, and a corrupted reply is caught by
//! a checksum over the tags the service receives.

use crate::rng::mix64;

const CLASS_SHIFT: u32 = 62;
const HASH_MASK: u64 = (1 << CLASS_SHIFT) - 1;
const APP: u64 = 1 << CLASS_SHIFT;
const BACKUP: u64 = 2 << CLASS_SHIFT;
const GARBAGE: u64 = 3 << CLASS_SHIFT;

/// A zero sector.
pub const ZERO: u64 = 0;

/// What application write `write_id` puts in `sector`.
#[inline]
pub fn app_tag(write_id: u64, sector: u64) -> u64 {
    APP | (mix64(write_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector) & HASH_MASK)
}

/// What the device holds in `sector` before anyone wrote it.
#[inline]
pub const fn garbage_tag(sector: u64) -> u64 {
    GARBAGE | (sector & HASH_MASK)
}

/// True for device contents nobody wrote.
#[inline]
pub const fn is_garbage(tag: u64) -> bool {
    tag >> CLASS_SHIFT == 3
}

/// A short description of a tag, for failure messages.
pub fn describe(tag: u64) -> String {
    match tag >> CLASS_SHIFT {
        0 if tag == 0 => "zero".to_string(),
        1 => format!("app-write({tag:#x})"),
        2 => format!("backup({tag:#x})"),
        3 => format!("garbage(sector {})", tag & HASH_MASK),
        _ => format!("{tag:#x}"),
    }
}

/// The backup: a pure function of the sector, with some regions all zero (holes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backup {
    seed: u64,
    region_shift: u32,
    /// One region in `zero_one_in` is zero (0 = none).
    zero_one_in: u64,
    /// Zero regions come in runs, as free space does on a file system.
    extents: bool,
}

/// Runs of zero regions in a file-system-like backup: aligned blocks of `1 << shift`
/// regions, each zero with probability `per_mille / 1000`. Big blocks give long runs
/// of free space that fill whole backup chunks (restored without a transfer), small
/// ones give short holes between files; the union leaves data extents of every length.
/// About 38% of the volume is zero.
const ZERO_RUNS: [(u32, u64); 4] = [(10, 150), (8, 150), (4, 100), (1, 50)];

impl Backup {
    /// The backup of a run.
    pub fn new(seed: u64, region_size_bytes: u32, zero_one_in: u64) -> Backup {
        Backup {
            seed: mix64(seed ^ 0xBAC0_0B5E),
            region_shift: region_size_bytes.trailing_zeros() - 9,
            zero_one_in,
            extents: false,
        }
    }

    /// A backup shaped like a used file system: zero regions in runs of varying length
    /// (see [`ZERO_RUNS`]), data in between. The demo builds its volume image from it.
    pub fn file_system_like(seed: u64, region_size_bytes: u32) -> Backup {
        Backup {
            extents: true,
            ..Backup::new(seed, region_size_bytes, 0)
        }
    }

    /// True when `region` is a hole (all zeros) in the backup.
    #[inline]
    pub fn region_is_zero(&self, region: u64) -> bool {
        if self.extents {
            return ZERO_RUNS.iter().any(|&(shift, per_mille)| {
                let block = (region >> shift) ^ u64::from(shift) << 56;
                mix64(self.seed ^ block.wrapping_mul(0xD1B5_4A32_D192_ED03)) % 1000 < per_mille
            });
        }
        self.zero_one_in != 0
            && mix64(self.seed ^ region.wrapping_mul(0xD1B5_4A32_D192_ED03)) % self.zero_one_in == 0
    }

    /// The backup's content of volume sector `sector`.
    #[inline]
    pub fn tag(&self, sector: u64) -> u64 {
        if self.region_is_zero(sector >> self.region_shift) {
            ZERO
        } else {
            BACKUP | (mix64(self.seed ^ sector) & HASH_MASK)
        }
    }
}

/// The checksum a fetch reply carries and the service verifies: a cheap order-sensitive
/// hash of the tags (a stand-in for the BLAKE3 chunk hashes of the real backup store).
pub fn checksum(tags: &[u64]) -> u64 {
    tags.iter().fold(0x243F_6A88_85A3_08D3, |h, &t| {
        mix64(h ^ t).wrapping_add(0x9E37_79B9)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_never_collide() {
        for s in 0..1000 {
            let a = app_tag(7, s);
            let b = Backup::new(1, 4096, 0).tag(s);
            let g = garbage_tag(s);
            assert_eq!(a >> 62, 1);
            assert_eq!(b >> 62, 2);
            assert!(is_garbage(g) && !is_garbage(a) && !is_garbage(b) && !is_garbage(ZERO));
            assert_ne!(app_tag(7, s), app_tag(8, s));
        }
    }

    #[test]
    fn zero_regions_are_whole_regions() {
        let b = Backup::new(3, 8192, 4);
        let zero: Vec<bool> = (0..64).map(|r| b.region_is_zero(r)).collect();
        assert!(zero.iter().any(|&z| z) && zero.iter().any(|&z| !z));
        for s in 0..64 * 16 {
            assert_eq!(b.tag(s) == ZERO, zero[(s / 16) as usize]);
        }
    }

    #[test]
    fn a_file_system_like_backup_has_zero_runs_and_data_extents() {
        let b = Backup::file_system_like(5, 4096);
        let zero: Vec<bool> = (0..65536).map(|r| b.region_is_zero(r)).collect();
        let zeros = zero.iter().filter(|&&z| z).count();
        assert!(
            (20_000..32_000).contains(&zeros),
            "{zeros} zero regions of 65536"
        );
        let runs = zero.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            runs > 500,
            "zeros come in runs, not one block: {runs} edges"
        );
        assert!(
            zero.chunks(256).any(|c| c.iter().all(|&z| z)),
            "some 1 MiB chunks are all zero"
        );
    }

    #[test]
    fn a_flipped_tag_changes_the_checksum() {
        let tags: Vec<u64> = (0..64).map(|s| Backup::new(1, 4096, 0).tag(s)).collect();
        let mut bad = tags.clone();
        bad[17] ^= 1;
        assert_ne!(checksum(&tags), checksum(&bad));
        let mut swapped = tags.clone();
        swapped.swap(1, 2);
        assert_ne!(checksum(&tags), checksum(&swapped));
    }
}
