//! The demo's volume image: real bytes that agree with the simulator's tags.
//!
//! The simulated disk keeps one `u64` tag per 512-byte sector, and a hydrate's payload
//! is read as tags from the first 8 bytes of each sector (see `wdf.rs`). So each data
//! sector of the image is self-describing:
//!
//! ```text
//! bytes 0..8     the sector's tag, little-endian (`Backup::tag` for the image;
//!                an application write's tag for data the workload wrote)
//! bytes 8..512   63 words of a splitmix64 stream seeded by the tag, little-endian
//! ```
//!
//! A zero tag (a hole of the backup, [`crate::data::ZERO`]) is 512 zero bytes. Any
//! sector's full content can be rebuilt from its tag alone, which is how the final
//! check compares the simulated disk byte for byte with what it must hold.

use std::io::Write;
use std::path::Path;

use crate::data::{Backup, ZERO};
use crate::rng::splitmix64;

/// Bytes per sector of the image.
pub const SECTOR_BYTES: usize = 512;

/// The 512 bytes a sector with `tag` holds.
pub fn sector_bytes(tag: u64, out: &mut [u8; SECTOR_BYTES]) {
    if tag == ZERO {
        out.fill(0);
        return;
    }
    let (head, rest) = out.split_at_mut(8);
    head.copy_from_slice(&tag.to_le_bytes());
    let mut state = tag;
    for word in rest.chunks_exact_mut(8) {
        word.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
}

/// The bytes of `tags`, one sector each, appended to `out`.
pub fn expand(tags: impl IntoIterator<Item = u64>, out: &mut Vec<u8>) {
    let mut sector = [0u8; SECTOR_BYTES];
    for tag in tags {
        sector_bytes(tag, &mut sector);
        out.extend_from_slice(&sector);
    }
}

/// What the image says about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Sectors in the image.
    pub sectors: u64,
    /// Sectors that are zero (holes of the backup).
    pub zero_sectors: u64,
}

/// Writes the image of `backup` over `sectors` sectors to `path`.
pub fn write_image(path: &Path, backup: &Backup, sectors: u64) -> std::io::Result<ImageStats> {
    write_sectors(path, sectors, |s| backup.tag(s))
}

/// Writes `sectors` sectors to `path`, sector `s` holding the bytes of `tag(s)`.
pub fn write_sectors(
    path: &Path,
    sectors: u64,
    mut tag: impl FnMut(u64) -> u64,
) -> std::io::Result<ImageStats> {
    // 1 MiB at a time: large sequential writes, bounded memory.
    const BATCH: u64 = 2048;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = Vec::with_capacity(BATCH as usize * SECTOR_BYTES);
    let mut stats = ImageStats {
        sectors,
        zero_sectors: 0,
    };
    let mut s = 0;
    while s < sectors {
        let end = (s + BATCH).min(sectors);
        buf.clear();
        expand(
            (s..end).map(|x| {
                let t = tag(x);
                stats.zero_sectors += u64::from(t == ZERO);
                t
            }),
            &mut buf,
        );
        file.write_all(&buf)?;
        s = end;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::app_tag;

    #[test]
    fn a_sector_starts_with_its_tag_and_zero_is_all_zeros() {
        let mut a = [0u8; SECTOR_BYTES];
        let mut b = [0u8; SECTOR_BYTES];
        let tag = Backup::file_system_like(3, 4096).tag(1);
        sector_bytes(tag, &mut a);
        assert_eq!(u64::from_le_bytes(a[..8].try_into().unwrap()), tag);
        sector_bytes(app_tag(1, 1), &mut b);
        assert_ne!(a[8..], b[8..], "the rest of the sector depends on the tag");
        sector_bytes(ZERO, &mut a);
        assert!(a.iter().all(|&x| x == 0));
    }

    #[test]
    fn an_image_round_trips_through_its_tags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let backup = Backup::file_system_like(9, 4096);
        let stats = write_image(&path, &backup, 5000).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 5000 * SECTOR_BYTES);
        assert!(stats.zero_sectors > 0 && stats.zero_sectors < 5000);
        let mut want = Vec::new();
        expand((0..5000).map(|s| backup.tag(s)), &mut want);
        assert_eq!(bytes, want);
    }
}
