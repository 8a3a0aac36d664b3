//! Retention against real processes and a real directory store: `forget` then `gc`
//! leave every remaining version byte-identical and shrink the store by exactly what
//! they report; `gc` racing backups never deletes a chunk a version then names; a dead
//! backup's announcements protect its chunks until they expire.

mod common;
mod gc_race;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rehydrate_backup::{ChunkRef, ChunkStore, VolumeName};

/// The stdout lines of a successful command.
fn lines(cmd: &mut std::process::Command) -> Vec<String> {
    String::from_utf8_lossy(&run_ok(cmd).stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `rehydrate-backup forget --store STORE --volume vol ARGS...`: its stdout lines.
fn forget(store: &str, args: &[&str]) -> Vec<String> {
    lines(
        bin()
            .args(["forget", "--store", store, "--volume", "vol"])
            .args(args),
    )
}

/// `key=value` fields of a summary line.
fn fields(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Files (not directories) under `dir`, recursively; 0 if it does not exist.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => files_under(&e.path()),
                _ => 1,
            })
            .sum()
    })
}

/// Total bytes of the chunk files in a local store.
fn chunk_bytes(store: &std::path::Path) -> u64 {
    chunk_files(store)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

/// Four versions of a changing image; forget keeps the last two; gc deletes exactly
/// the chunks only the forgotten two used; both remaining versions read back whole.
#[test]
fn forget_then_gc_keeps_remaining_versions_whole_and_shrinks_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let image = dir.path().join("img");
    let mut data = noise(8 * MIB as usize, 1);
    let mut images = Vec::new();
    for v in 0..4u64 {
        // Each version rewrites two chunks of its own.
        let at = (2 * v * MIB) as usize;
        data[at..at + 2 * MIB as usize].copy_from_slice(&noise(2 * MIB as usize, 100 + v));
        std::fs::write(&image, &data).unwrap();
        assert_eq!(backup(&image, &store, "vol")["version"], v + 1);
        images.push(data.clone());
    }
    let before_bytes = chunk_bytes(&store);
    let store_s = store.to_str().unwrap();

    // Dry runs change nothing.
    let dry = forget(store_s, &["--keep-last", "2", "--dry-run"]);
    assert_eq!(
        dry.iter()
            .filter(|l| l.starts_with("would remove vol@"))
            .count(),
        2,
        "{dry:?}"
    );
    assert_eq!(version_files(&store, "vol").len(), 4);

    let out = forget(store_s, &["--keep-last", "2"]);
    let last = fields(out.last().unwrap());
    assert_eq!(
        (last["kept"].as_str(), last["removed"].as_str()),
        ("2", "2"),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("removed vol@1 ") && l.contains("volume_bytes=8388608")),
        "{out:?}"
    );
    assert!(
        out.iter().any(|l| l.starts_with("keep (last) vol@4 ")),
        "{out:?}"
    );
    assert_eq!(
        version_files(&store, "vol"),
        vec!["00000003.idx", "00000004.idx"]
    );

    // What should go: chunks no remaining version names.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (referenced, expected_bytes) = rt.block_on(async {
        let s = ChunkStore::open(store_s, false).unwrap();
        let vol = VolumeName::new("vol").unwrap();
        let mut referenced = HashSet::new();
        for v in [3, 4] {
            for c in s.read_index(&vol, v).await.unwrap().chunks {
                if let ChunkRef::Data(h) = c {
                    referenced.insert(h);
                }
            }
        }
        let expected: u64 = chunk_files(&store)
            .iter()
            .filter(|f| {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                !referenced.iter().any(|h| h.to_string() == name)
            })
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        (referenced, expected)
    });
    // Versions 1 and 2 rewrote chunks 0-3; 3 and 4 rewrote 4-7 and kept 2-3 from v2.
    let dry = lines(bin().args(["gc", "--store", store_s, "--dry-run"]));
    assert_eq!(
        fields(dry.last().unwrap())["removed_bytes"],
        expected_bytes.to_string()
    );
    assert_eq!(chunk_bytes(&store), before_bytes);

    let out = lines(bin().args(["gc", "--store", store_s]));
    let summary = fields(out.last().unwrap());
    let removed: u64 = summary["removed_bytes"].parse().unwrap();
    assert_eq!(removed, expected_bytes);
    assert!(removed > 0);
    assert_eq!(summary["removed_chunks"], (out.len() - 1).to_string());
    assert!(
        out[0].starts_with("removed chunk ") && out[0].contains(" bytes="),
        "{out:?}"
    );
    assert_eq!(
        chunk_bytes(&store),
        before_bytes - removed,
        "the store shrank by what gc said"
    );
    assert_eq!(chunk_files(&store).len(), referenced.len());

    // Both remaining versions restore byte for byte, through a server.
    let server = Server::start(&store);
    rt.block_on(async {
        for (v, want) in [(3, &images[2]), (4, &images[3])] {
            let got = read_all(server.addr, &format!("vol@{v}")).await;
            assert!(got == *want, "version {v} differs after forget and gc");
        }
    });
    // A second gc finds nothing more.
    let again = lines(bin().args(["gc", "--store", store_s]));
    assert_eq!(fields(again.last().unwrap())["removed_chunks"], "0");
    // A policy without rules is refused with one line.
    let refused = bin()
        .args(["forget", "--store", store_s, "--volume", "vol"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at least one --keep-* rule"));
}

/// A scratch directory, an empty store directory `store` in it, and a runtime of two
/// workers for the race.
fn race_setup() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    tokio::runtime::Runtime,
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (dir, root, rt)
}

/// gc racing backups: rounds with random store latencies and gc start times.
#[test]
fn gc_racing_backups_never_deletes_a_chunk_a_version_names() {
    let (dir, root, rt) = race_setup();
    for seed in [1u64, 2] {
        let local = object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap();
        let objects = Arc::new(gc_race::Jittery::new(Arc::new(local), seed, 2_000));
        let removed = rt.block_on(gc_race::race(objects, dir.path(), 20, seed));
        assert!(
            removed >= 8 * 20,
            "seed {seed}: gc removed only {removed} chunks"
        );
    }
}

/// The same race through a local store opened as one: its backups let go of the bytes
/// of chunks whose files they find (a `stat`, before announcing them), so a gc deleting
/// such a chunk before the announcement makes the backup read it again.
#[test]
fn gc_racing_backups_in_a_local_store_never_deletes_a_chunk_a_version_names() {
    let (dir, root, rt) = race_setup();
    let store = ChunkStore::open(root.to_str().unwrap(), false).unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap();
    let removed = rt.block_on(gc_race::race_on(store, Arc::new(local), dir.path(), 20, 3));
    assert!(removed >= 8 * 20, "gc removed only {removed} chunks");
}

/// The window the jittery race finds only by luck, forced: a backup announces a chunk
/// just after gc first read the announcements (so gc condemns it), then publishes its
/// index and withdraws the announcement while gc takes its final look. gc must still
/// see the chunk referenced: its final look reads the announcements before the indexes,
/// and a backup withdraws only after publishing.
#[test]
fn a_backup_publishing_during_gcs_final_look_keeps_the_chunk_it_announced() {
    use object_store::ObjectStore;
    use rehydrate_backup::index::{ChunkRef, Index};
    use rehydrate_backup::marks::{encode, pending_root, PENDING_MAGIC};
    use rehydrate_backup::{ChunkHash, ChunkSize, ChunkStore, VolumeName};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let local: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap());
    // An orphan chunk (its versions forgotten) that the backup reuses.
    let reused = ChunkHash::of(b"a chunk the backup finds already stored");
    rt.block_on(local.put(&reused.path(), bytes::Bytes::from_static(b"x").into()))
        .unwrap();
    let announcement = pending_root().child("backup-b").child("00000001");
    let index = Index {
        volume_size_bytes: 64 << 10,
        chunk_size: "64KiB".parse::<ChunkSize>().unwrap(),
        parent_version: 0,
        created_unix_secs: 0,
        chunks: vec![ChunkRef::Data(reused)],
    }
    .encode()
    .unwrap();
    let volume = VolumeName::new("w").unwrap();
    let objects = gc_race::Jittery::new(Arc::clone(&local), 1, 1)
        .with_hook(gc_race::Hook {
            prefix: "pending",
            nth: 1,
            puts: vec![(
                announcement.clone(),
                bytes::Bytes::from(encode(PENDING_MAGIC, &[reused])),
            )],
            deletes: vec![],
        })
        .with_hook(gc_race::Hook {
            prefix: "volumes",
            nth: 2,
            puts: vec![(
                rehydrate_backup::store::version_path(&volume, 1),
                bytes::Bytes::from(index),
            )],
            deletes: vec![announcement],
        });
    let store = ChunkStore::from_object_store(Arc::new(objects), "hooked");
    rt.block_on(rehydrate_backup::gc::gc(
        &store,
        false,
        Duration::from_secs(3600),
        &mut |_| {},
    ))
    .unwrap();
    assert!(
        root.join(reused.path().as_ref()).exists(),
        "gc deleted the chunk that w@1, published during its final look, names"
    );
}

/// A killed backup's announced chunks survive gc until its announcements expire; then
/// gc deletes them and the announcements.
#[test]
fn a_dead_backups_announcements_protect_its_chunks_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (image, store) = (dir.path().join("img"), dir.path().join("store"));
    write_image(&image, &[(32 * MIB, true)], 8);
    let child = bin()
        .arg("backup")
        .arg(&image)
        .arg("--store")
        .arg(&store)
        .args(["--volume", "v", "--rate-limit", "8MiB"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    kill_mid_way(child, || chunk_files(&store).len() >= 4);
    let stored = chunk_files(&store).len();
    let store_s = store.to_str().unwrap();
    let out = lines(bin().args(["gc", "--store", store_s]));
    let summary = fields(out.last().unwrap());
    assert_eq!(
        (
            summary["removed_chunks"].as_str(),
            summary["live_backups"].as_str()
        ),
        ("0", "1")
    );
    assert_eq!(chunk_files(&store).len(), stored);

    std::thread::sleep(Duration::from_millis(2100));
    let out = lines(bin().args(["gc", "--store", store_s, "--pending-expiry", "1s"]));
    let summary = fields(out.last().unwrap());
    assert_eq!(summary["removed_chunks"], stored.to_string(), "{out:?}");
    assert_eq!(summary["expired_backups"], "1");
    assert!(chunk_files(&store).is_empty());
    assert_eq!(
        files_under(&store.join("pending")),
        0,
        "announcements left behind"
    );
    // The dead backup's directory too, and a new backup leaves none of its own.
    assert_eq!(std::fs::read_dir(store.join("pending")).unwrap().count(), 0);
    let backed_up = bin()
        .arg("backup")
        .arg(&image)
        .args(["--store", store_s, "--volume", "v"])
        .status()
        .unwrap();
    assert!(backed_up.success());
    assert_eq!(std::fs::read_dir(store.join("pending")).unwrap().count(), 0);
}
