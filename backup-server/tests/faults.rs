//! Faults against real processes: a corrupted chunk, concurrent backups of one volume,
//! and a backup killed mid-way.

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rehydrate_backup::{ChunkHash, ChunkStore, VolumeName};

/// A corrupted chunk fails exactly the reads that touch it, as EIO, and is logged with
/// its hash and the volume offsets it serves; every other read succeeds.
#[test]
fn corrupted_chunk_fails_only_the_reads_touching_it() {
    require_tool("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let (image, store) = (dir.path().join("img"), dir.path().join("store"));
    // Chunks 0..8; chunk 5 repeats chunk 2, so one bad object backs two offsets.
    let mut data = write_image(&image, &[(8 * MIB, true)], 3);
    let repeated = data[2 * MIB as usize..3 * MIB as usize].to_vec();
    data[5 * MIB as usize..6 * MIB as usize].copy_from_slice(&repeated);
    std::fs::write(&image, &data).unwrap();
    let fields = backup(&image, &store, "vol");
    assert_eq!((fields["new_chunks"], fields["reused_chunks"]), (7, 1));

    let hash = ChunkHash::of(&repeated);
    let file = store.join(hash.path().as_ref());
    let mut stored = std::fs::read(&file).unwrap();
    let middle = stored.len() / 2;
    stored[middle] ^= 0x40;
    std::fs::write(&file, stored).unwrap();

    let port = free_port();
    let log = dir.path().join("server.log");
    let mut server = bin()
        .args(["serve", "--store"])
        .arg(&store)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match rehydrate_nbd::Client::connect(addr, "vol").await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("server did not come up: {e}"),
            }
        };
        for (offset, len) in [
            (2 * MIB, 4096),
            (3 * MIB - 10, 20),
            (5 * MIB + MIB / 2, 100),
            (MIB, 2 * MIB),
        ] {
            match client.read(offset, len as usize).await {
                Err(rehydrate_nbd::Error::Server { errno, .. }) => {
                    assert_eq!(errno, 5, "EIO at {offset}")
                }
                other => panic!(
                    "read at {offset} touching the bad chunk did not fail with EIO: {other:?}"
                ),
            }
        }
        for (offset, len) in [(0, MIB), (3 * MIB, 2 * MIB), (6 * MIB, 2 * MIB), (MIB, MIB)] {
            let got = client.read(offset, len as usize).await.unwrap();
            assert!(
                got[..] == data[offset as usize..(offset + len) as usize],
                "read at {offset}"
            );
        }
        client.disconnect().await.unwrap();
    });
    // qemu-img convert of the whole volume fails rather than copying bad data.
    let out = dir.path().join("out.raw");
    let convert = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &format!("nbd://127.0.0.1:{port}/vol"),
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        !convert.status.success(),
        "qemu-img convert succeeded over a corrupted chunk"
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains(&hash.to_string()))
        .unwrap_or_else(|| panic!("no log names the chunk:\n{logged}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!("[{}, {}]", 2 * MIB, 5 * MIB)),
        "offsets missing: {line}"
    );
}

/// Two backups of one volume at once publish two distinct versions.
#[test]
fn concurrent_backups_get_distinct_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let images: Vec<_> = (0..2)
        .map(|i| {
            let image = dir.path().join(format!("img{i}"));
            write_image(&image, &[(6 * MIB, true), (MIB, false)], 10 + i);
            image
        })
        .collect();
    let children: Vec<_> = images
        .iter()
        .map(|image| {
            bin()
                .arg("backup")
                .arg(image)
                .arg("--store")
                .arg(&store)
                .args(["--volume", "shared", "--chunk-size", "64KiB"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut versions: Vec<u64> = children
        .into_iter()
        .map(|child| summary_fields(&child.wait_with_output().unwrap())["version"])
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(
        version_files(&store, "shared"),
        vec!["00000001.idx", "00000002.idx"]
    );
}

/// A backup killed mid-way leaves no version and no damaged chunk; the next backup of
/// the same image reuses every chunk the killed one stored.
#[test]
fn interrupted_backup_leaves_no_version_and_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (image, store) = (dir.path().join("img"), dir.path().join("store"));
    write_image(&image, &[(64 * MIB, true)], 21);
    // 16 MiB/s makes the 64 MiB backup take about four seconds: time to kill it.
    let mut child = bin()
        .arg("backup")
        .arg(&image)
        .arg("--store")
        .arg(&store)
        .args(["--volume", "vol", "--rate-limit", "16MiB"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while chunk_files(&store).len() < 8 {
        assert!(Instant::now() < deadline, "backup stored no chunks in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        stdout.is_empty(),
        "the killed backup printed a summary: {stdout}"
    );
    assert!(
        version_files(&store, "vol").is_empty(),
        "a killed backup published a version"
    );

    // Every chunk object that exists is whole and verifies under its name.
    let stored = chunk_files(&store).len() as u64;
    assert!(
        (8..64).contains(&stored),
        "{stored} chunks stored before the kill"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = ChunkStore::open(store.to_str().unwrap(), false).unwrap();
        assert!(s
            .versions(&VolumeName::new("vol").unwrap())
            .await
            .unwrap()
            .is_empty());
        for hash in s.chunk_hashes().await.unwrap() {
            s.get_chunk(&hash, MIB as usize).await.unwrap();
        }
    });

    let resumed = backup(&image, &store, "vol");
    assert_eq!(resumed["version"], 1);
    assert!(
        resumed["reused_chunks"] >= stored,
        "{resumed:?} after {stored} stored"
    );
    assert_eq!(resumed["new_chunks"] + resumed["reused_chunks"], 64);
}
