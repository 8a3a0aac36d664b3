//! The demo's last word: the whole simulated disk, byte for byte, against what it must
//! hold.
//!
//! Per volume sector, what the oracle expects at the end decides the expected bytes:
//! the backup's tag means "never written by the workload", and those bytes come from
//! the volume image file itself (not from the tag), so a sector restored from the wrong
//! place, or an image that disagrees with the model, shows; an application write's tag
//! means the newest acknowledged write, rebuilt from its tag as the image was built
//! (see `image.rs`); a trimmed sector may hold anything somebody wrote, but never what
//! the device held before anyone did.

use std::io::{BufReader, Read, Write};
use std::path::Path;

use crate::data::{describe, is_garbage, Backup};
use crate::oracle::Expect;

use super::image::{sector_bytes, SECTOR_BYTES};
use super::DemoError;

/// What the final check compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Sectors compared.
    pub sectors: u64,
    /// Sectors the workload never wrote, equal to the image's bytes.
    pub from_image: u64,
    /// Sectors holding the newest acknowledged application write.
    pub rewritten: u64,
    /// Trimmed sectors (any written value allowed).
    pub trimmed: u64,
}

/// Compares the disk's content (`tags`, one per volume sector) with the expected bytes;
/// writes the expected bytes to `expected_out` when given (`--keep`).
pub fn final_check(
    image: &Path,
    backup: &Backup,
    tags: &[u64],
    expected: &[Expect],
    expected_out: Option<&Path>,
) -> Result<CheckStats, DemoError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| DemoError::Io { what, path, source }
    };
    if tags.len() != expected.len() {
        return Err(DemoError::Violation(format!(
            "the disk has {} sectors, the oracle {}",
            tags.len(),
            expected.len()
        )));
    }
    let mut reader = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(image).map_err(io("open", image))?,
    );
    let mut out = match expected_out {
        Some(p) => Some((
            std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(p).map_err(io("create", p))?,
            ),
            p,
        )),
        None => None,
    };
    let mut stats = CheckStats::default();
    let mut from_image = [0u8; SECTOR_BYTES];
    let mut want = [0u8; SECTOR_BYTES];
    let mut found = [0u8; SECTOR_BYTES];
    for (s, (&tag, exp)) in tags.iter().zip(expected).enumerate() {
        let sector = s as u64;
        reader
            .read_exact(&mut from_image)
            .map_err(io("read", image))?;
        sector_bytes(tag, &mut found);
        let mismatch = |why: String| DemoError::Mismatch {
            sector,
            detail: format!("{why}; the disk holds {}", describe(tag)),
        };
        match exp {
            Expect::Exact(t) if *t == backup.tag(sector) => {
                stats.from_image += 1;
                want = from_image;
            }
            Expect::Exact(t) => {
                stats.rewritten += 1;
                sector_bytes(*t, &mut want);
            }
            Expect::AnyOf(set) => {
                // Only after a failed write or a crash, neither of which the demo has.
                if !set.contains(&tag) {
                    return Err(mismatch(format!("expected one of {} values", set.len())));
                }
                stats.rewritten += 1;
                want = found;
            }
            Expect::Any => {
                if is_garbage(tag) {
                    return Err(mismatch("expected written data after a trim".into()));
                }
                stats.trimmed += 1;
                want = found;
            }
        }
        if want != found {
            let what = match exp {
                Expect::Exact(t) => describe(*t),
                _ => "data".into(),
            };
            return Err(mismatch(format!("expected the bytes of {what}")));
        }
        if let Some((w, p)) = out.as_mut() {
            w.write_all(&want).map_err(io("write", p))?;
        }
        stats.sectors += 1;
    }
    if let Some((w, p)) = out {
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(io("write", p))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::app_tag;
    use crate::demo::image::write_image;

    #[test]
    fn the_check_passes_the_right_disk_and_names_a_wrong_sector() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        let backup = Backup::file_system_like(2, 4096);
        write_image(&image, &backup, 64).unwrap();
        let mut tags: Vec<u64> = (0..64).map(|s| backup.tag(s)).collect();
        let mut expected: Vec<Expect> = tags.iter().map(|&t| Expect::Exact(t)).collect();
        tags[5] = app_tag(1, 5);
        expected[5] = Expect::Exact(app_tag(1, 5));
        let out = dir.path().join("expected");
        let stats = final_check(&image, &backup, &tags, &expected, Some(&out)).unwrap();
        assert_eq!((stats.sectors, stats.rewritten), (64, 1));
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 64 * 512);
        tags[9] = app_tag(2, 9);
        let e = final_check(&image, &backup, &tags, &expected, None).unwrap_err();
        assert!(matches!(e, DemoError::Mismatch { sector: 9, .. }), "{e}");
    }
}
