//! The journal's tests: torn tails never applied, damage reported with earlier points
//! still served, the writer's continuity checks, and point resolution's errors.

use proptest::prelude::*;

use super::format::{Kind, Record};
use super::resolve::{resolve, Journals};
use super::testing::{damage_case, torn_tail_case};
use super::writer::{JournalBase, JournalWriter};
use super::{Journal, JournalError};
use crate::name::{PointSpec, VolumeName};

fn base(version: u32) -> JournalBase {
    JournalBase {
        volume: VolumeName::new("vol").unwrap(),
        version,
        volume_size_bytes: 1 << 20,
        index_checksum: [7; 32],
    }
}

fn rec(seq: u64, kind: Kind, payload: &[u8], time: u64) -> Record<'_> {
    let (offset, len) = match kind {
        Kind::Write => (4096, payload.len() as u64),
        Kind::Zero => (0, 8192),
        _ => (0, 0),
    };
    Record {
        seq,
        kind,
        flags: 0,
        offset,
        len,
        time_unix_ns: time,
        batch_seq: seq,
        payload,
    }
}

struct Direct<'a>(&'a std::path::Path);

impl Journals for Direct<'_> {
    fn journal(&self, base: u32, f: &mut dyn FnMut(&Journal)) -> Result<(), JournalError> {
        let j = Journal::open(self.0, &VolumeName::new("vol").unwrap(), base)?;
        f(&j);
        Ok(())
    }
}

#[test]
fn points_gaps_marks_and_times_resolve_or_say_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut w, j) = JournalWriter::open(root, base(1), 1 << 20).unwrap();
    assert_eq!((j.head(), w.head()), (0, 0));
    let data = [5u8; 512];
    w.append(&[
        rec(1, Kind::Write, &data, 10),
        rec(2, Kind::Flush, &[], 20),
        rec(3, Kind::Write, &data, 30),
        rec(4, Kind::Mark, b"pre", 40),
        rec(5, Kind::GapBegin, &[], 50),
        rec(6, Kind::Flush, &[], 60),
        rec(7, Kind::Write, &data, 70),
        rec(8, Kind::GapEnd, &[], 80),
        rec(9, Kind::Zero, &[], 90),
        rec(10, Kind::Flush, &[], 100),
    ])
    .unwrap();
    let j = Journal::open(root, &VolumeName::new("vol").unwrap(), 1).unwrap();
    assert_eq!(
        j.points().iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![2, 4, 10],
        "the flush inside the gap is no point"
    );
    assert_eq!(j.mark("pre").unwrap().seq, 4);
    assert_ne!(j.point(2).unwrap().digest, j.point(4).unwrap().digest);
    let v = VolumeName::new("vol").unwrap();
    let go =
        |version: Option<u32>, spec: PointSpec| resolve(root, &v, version, &spec, &Direct(root));
    assert_eq!(go(Some(1), PointSpec::Seq(4)).unwrap().point.seq, 4);
    assert_eq!(
        go(None, PointSpec::Mark("pre".into())).unwrap().point.seq,
        4
    );
    assert_eq!(go(None, PointSpec::Time(99)).unwrap().point.seq, 4);
    assert_eq!(go(None, PointSpec::Time(100)).unwrap().point.seq, 10);
    for (version, spec, says) in [
        (Some(1), PointSpec::Seq(6), "inside a gap"),
        (Some(1), PointSpec::Seq(3), "not a recovery point"),
        (Some(1), PointSpec::Seq(11), "past the end"),
        (Some(2), PointSpec::Seq(2), "no journal from version 2"),
        (None, PointSpec::Mark("nope".into()), "no mark"),
        (None, PointSpec::Time(5), "no point at or before"),
    ] {
        let e = go(version, spec.clone()).unwrap_err().to_string();
        assert!(e.contains(says), "{spec:?}: {e}");
    }
}

#[test]
fn appends_must_continue_the_journal_and_repeats_are_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = JournalWriter::open(dir.path(), base(1), 1 << 20).unwrap();
    let data = [1u8; 512];
    assert_eq!(w.append(&[rec(1, Kind::Write, &data, 1)]).unwrap(), 1);
    // Sent again after a restart: skipped.
    assert_eq!(
        w.append(&[rec(1, Kind::Write, &data, 1), rec(2, Kind::Flush, &[], 2)])
            .unwrap(),
        2
    );
    assert!(matches!(
        w.append(&[rec(4, Kind::Flush, &[], 3)]),
        Err(JournalError::Discontinuous { head: 2, found: 4 })
    ));
    let mut bad = rec(3, Kind::Write, &data, 3);
    bad.offset = 1 << 20;
    assert!(matches!(
        w.append(&[bad]),
        Err(JournalError::BadRecord { seq: 3, .. })
    ));
    // Another base's index is refused.
    let other = JournalBase {
        index_checksum: [8; 32],
        ..base(1)
    };
    assert!(matches!(
        JournalWriter::open(dir.path(), other, 1 << 20),
        Err(JournalError::Misplaced { .. })
    ));
}

#[test]
fn segments_rotate_and_a_reader_follows_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = JournalWriter::open(dir.path(), base(1), 1024).unwrap();
    let mut reader = Journal::open(dir.path(), &VolumeName::new("vol").unwrap(), 1).unwrap();
    let data = [3u8; 512];
    for seq in (1..40).step_by(2) {
        w.append(&[
            rec(seq, Kind::Write, &data, seq),
            rec(seq + 1, Kind::Flush, &[], seq),
        ])
        .unwrap();
        reader.refresh().unwrap();
        assert_eq!(reader.head(), seq + 1);
    }
    assert!(
        reader.files().len() > 5,
        "{} segments",
        reader.files().len()
    );
    assert_eq!(reader.points().len(), 20);
}

#[test]
fn a_torn_segment_start_is_removed_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = JournalWriter::open(dir.path(), base(1), 1024).unwrap();
    w.append(&[rec(1, Kind::Flush, &[], 1)]).unwrap();
    drop(w);
    let jdir = super::journal_dir(dir.path(), &VolumeName::new("vol").unwrap(), 1);
    std::fs::write(jdir.join(super::segment_name(2)), b"RHYD").unwrap();
    let j = Journal::open(dir.path(), &VolumeName::new("vol").unwrap(), 1).unwrap();
    assert_eq!(j.head(), 1);
    assert_eq!(j.torn_tail().map(|(_, at)| at), Some(0));
    let (mut w, j) = JournalWriter::open(dir.path(), base(1), 1024).unwrap();
    assert!(j.torn_tail().is_none());
    w.append(&[rec(2, Kind::Flush, &[], 2)]).unwrap();
}

#[test]
fn torn_tails_reach_every_kind_of_cut() {
    let mut torn = 0;
    let mut points = 0;
    for seed in 0..64 {
        let dir = tempfile::tempdir().unwrap();
        let r = torn_tail_case(dir.path(), seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        torn += u64::from(r.torn);
        points += r.points_checked;
    }
    assert!(torn > 20, "{torn} of 64 tears cut a record");
    assert!(points > 64, "{points} points checked");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_torn_tail_is_never_applied(seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        if let Err(e) = torn_tail_case(dir.path(), seed) {
            prop_assert!(false, "seed {seed}: {e}");
        }
    }

    #[test]
    fn damage_ends_the_journal_and_earlier_points_stay(seed in any::<u64>()) {
        let dir = tempfile::tempdir().unwrap();
        if let Err(e) = damage_case(dir.path(), seed) {
            prop_assert!(false, "seed {seed}: {e}");
        }
    }
}

/// A store with version 1 of `vol` (256 KiB of bytes `i % 251`) and a journal over it:
/// a write, a flush, a mark, a zero, a flush.
async fn store_with_journal() -> (tempfile::TempDir, crate::store::ChunkStore, Vec<u8>) {
    use crate::backup::{backup, BackupOptions};
    use crate::size::ChunkSize;
    let dir = tempfile::tempdir().unwrap();
    let store =
        crate::store::ChunkStore::open(dir.path().join("s").to_str().unwrap(), true).unwrap();
    let image: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join("img");
    std::fs::write(&path, &image).unwrap();
    let options = BackupOptions {
        volume: VolumeName::new("vol").unwrap(),
        chunk_size: ChunkSize::from_shift(16).unwrap(),
        progress: false,
        rate_limit_bytes_per_sec: None,
        verify: false,
    };
    backup(&store, &path, &options).await.unwrap();
    let index = store.read_index(&options.volume, 1).await.unwrap();
    let root = store.local_root().unwrap().to_owned();
    let base = JournalBase {
        volume: options.volume.clone(),
        version: 1,
        volume_size_bytes: image.len() as u64,
        index_checksum: index.checksum().unwrap(),
    };
    let (mut w, _) = JournalWriter::open(&root, base, 1 << 20).unwrap();
    let data = [0xEEu8; 8192];
    let zero = Record {
        offset: 65536,
        len: 4096,
        ..rec(4, Kind::Zero, &[], 4)
    };
    w.append(&[
        rec(1, Kind::Write, &data, 1),
        rec(2, Kind::Flush, &[], 2),
        rec(3, Kind::Mark, b"before-zero", 3),
        zero,
        rec(5, Kind::Flush, &[], 5),
    ])
    .unwrap();
    (dir, store, image)
}

#[tokio::test]
async fn the_catalog_serves_points_and_says_why_it_cannot() {
    use rehydrate_nbd::Catalog;
    let (_dir, store, image) = store_with_journal().await;
    let catalog = crate::catalog::StoreCatalog::new(store, 1 << 20);
    let mut expected = image.clone();
    expected[4096..4096 + 8192].fill(0xEE);
    let at_mark = catalog.open("vol@mark:before-zero").await.unwrap().unwrap();
    assert_eq!(at_mark.size_bytes(), image.len() as u64);
    let got = at_mark.read(0, image.len() as u32).await.unwrap();
    assert_eq!(&got[..], &expected[..]);
    let description = at_mark.description();
    assert!(
        description.contains(" point=3 journal=blake3:"),
        "{description}"
    );
    let identity = crate::identity::ExportIdentity::parse(&description).unwrap();
    assert_eq!(identity.pinned_name(), "vol@1+3");
    // The same point by sequence tells the same identity; a later one differs.
    let by_seq = catalog.open("vol@1+3").await.unwrap().unwrap();
    assert_eq!(by_seq.description(), description);
    let last = catalog.open("vol@1+5").await.unwrap().unwrap();
    expected[65536..65536 + 4096].fill(0);
    assert_eq!(
        &last.read(0, image.len() as u32).await.unwrap()[..],
        &expected[..]
    );
    assert_ne!(last.description(), description);
    // A read across journal and base pieces, and block status over a zeroed range.
    let got = last.read(65536 - 100, 200).await.unwrap();
    assert_eq!(&got[..], &expected[65536 - 100..65536 + 100]);
    let status = last.block_status(65536, 4096).await.unwrap();
    assert_eq!(status, vec![rehydrate_nbd::Extent::hole(4096)]);
    for (name, says) in [
        ("vol@mark:nope", "no mark"),
        ("vol@1+4", "not a recovery point"),
        ("vol@1+9", "past the end"),
        ("vol@time:1970-01-01T00:00:00Z", "no point at or before"),
    ] {
        let e = match catalog.open(name).await {
            Err(e) => e.to_string(),
            Ok(found) => panic!("{name} opened: {}", found.is_some()),
        };
        assert!(e.contains(says), "{name}: {e}");
    }
    assert!(catalog.open("other@mark:x").await.unwrap().is_none());
    let listed = catalog.list().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"vol@mark:before-zero"), "{names:?}");
    assert!(names.contains(&"vol@1+5"), "{names:?}");
}
