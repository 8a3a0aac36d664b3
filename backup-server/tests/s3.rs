//! The store on a real S3-compatible server (moto, started per test binary): backups
//! and servers as separate processes sharing one bucket, damaged objects, killed
//! backups, and a server without conditional put.

mod common;
mod gc_race;
mod s3_server;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use rehydrate_backup::ChunkHash;

/// `rehydrate-backup` with the S3 server's environment.
fn s3_bin() -> Command {
    s3_server::with_env(bin())
}

/// Back up `image` into `store` (an s3:// URL); the summary's fields.
fn s3_backup(
    image: &std::path::Path,
    store: &str,
    volume: &str,
) -> std::collections::HashMap<String, u64> {
    summary_fields(&run_ok(
        s3_bin()
            .arg("backup")
            .arg(image)
            .args(["--store", store, "--volume", volume]),
    ))
}

/// Names of every object under `prefix` in the bucket.
fn listed(bucket: &str, prefix: &str) -> Vec<ObjectPath> {
    let store = s3_server::bucket_store(bucket);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let prefix = ObjectPath::from(prefix);
        let mut names: Vec<ObjectPath> = store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    })
}

/// A `rehydrate-backup serve` process over `store` on a free port, waited for.
struct ServeProcess {
    child: std::process::Child,
    port: u16,
}

impl ServeProcess {
    fn start(store: &str) -> Self {
        let port = free_port();
        let child = s3_bin()
            .args(["serve", "--store", store])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut this = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = this.child.try_wait() {
                panic!("serve exited: {status}");
            }
            assert!(Instant::now() < deadline, "serve did not listen in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        this
    }

    fn url(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qemu_convert(url: &str, out: &std::path::Path) -> Output {
    Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", url])
        .arg(out)
        .output()
        .unwrap()
}

/// One backup in a bucket, two stateless servers over it: each restores the newest
/// version and version 1, byte for byte.
#[test]
fn two_servers_over_one_bucket_restore_identical_bytes() {
    require_tool("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img");
    let data = write_image(
        &image,
        &[(3 * MIB, true), (2 * MIB, false), (MIB + 4096, true)],
        41,
    );
    let store = format!(
        "s3://{}/fleet/backups",
        s3_server::new_bucket("two-servers")
    );
    let first = s3_backup(&image, &store, "sys");
    assert_eq!(
        (first["version"], first["new_chunks"], first["zero_chunks"]),
        (1, 5, 2)
    );
    let again = s3_backup(&image, &store, "sys");
    assert_eq!((again["version"], again["new_chunks"]), (2, 0));

    let servers = [ServeProcess::start(&store), ServeProcess::start(&store)];
    for (i, server) in servers.iter().enumerate() {
        for export in ["sys", "sys@1"] {
            let out = dir.path().join(format!("restored-{i}-{export}"));
            let convert = qemu_convert(&server.url(export), &out);
            assert!(
                convert.status.success(),
                "qemu-img convert from server {i} ({export}): {}",
                String::from_utf8_lossy(&convert.stderr)
            );
            assert!(
                std::fs::read(&out).unwrap() == data,
                "server {i} {export} differs"
            );
        }
    }
}

/// Two backups of different images into one bucket at once: distinct versions, and
/// the chunks the images share are stored once.
#[test]
fn concurrent_backups_into_one_bucket_get_distinct_versions_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("s3://{}", s3_server::new_bucket("concurrent"));
    // Both images start with the same 4 MiB; each then has 2 MiB of its own.
    let shared = noise(4 * MIB as usize, 7);
    let images: Vec<_> = (0..2u64)
        .map(|i| {
            let image = dir.path().join(format!("img{i}"));
            let mut data = shared.clone();
            data.extend(noise(2 * MIB as usize, 100 + i));
            std::fs::write(&image, &data).unwrap();
            image
        })
        .collect();
    let children: Vec<_> = images
        .iter()
        .map(|image| {
            s3_bin()
                .arg("backup")
                .arg(image)
                .args(["--store", &store, "--volume", "shared"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let summaries: Vec<_> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            summary_fields(&out)
        })
        .collect();
    let mut versions: Vec<u64> = summaries.iter().map(|s| s["version"]).collect();
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2]);
    // 4 shared + 2 + 2 own chunks: each stored exactly once, whoever got there first.
    let new: u64 = summaries.iter().map(|s| s["new_chunks"]).sum();
    let reused: u64 = summaries.iter().map(|s| s["reused_chunks"]).sum();
    assert_eq!((new, reused), (8, 4), "{summaries:?}");
    let bucket = store.trim_start_matches("s3://");
    assert_eq!(listed(bucket, "chunks").len(), 8);
    assert_eq!(listed(bucket, "volumes").len(), 2);
}

/// A chunk deleted from the bucket and another overwritten with damaged bytes: exactly
/// the reads touching either fail with EIO; every other read returns the right bytes.
#[test]
fn damaged_objects_in_the_bucket_fail_exactly_the_reads_touching_them() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img");
    let data = write_image(&image, &[(6 * MIB, true)], 52);
    let bucket = s3_server::new_bucket("damaged");
    let store = format!("s3://{bucket}/p");
    s3_backup(&image, &store, "vol");

    let chunk_path = |i: u64| {
        let hash = ChunkHash::of(&data[(i * MIB) as usize..((i + 1) * MIB) as usize]);
        ObjectPath::from(format!("p/{}", hash.path()))
    };
    let objects = s3_server::bucket_store(&bucket);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Chunk 1 disappears; chunk 4 gets one bit flipped.
        objects.delete(&chunk_path(1)).await.unwrap();
        let mut bytes = objects
            .get(&chunk_path(4))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        objects
            .put(&chunk_path(4), PutPayload::from(bytes))
            .await
            .unwrap();
    });

    let server = ServeProcess::start(&store);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    rt.block_on(async {
        let client = rehydrate_nbd::Client::connect(addr, "vol").await.unwrap();
        for (offset, len) in [
            (MIB, 4096),
            (2 * MIB - 1, 2),
            (4 * MIB + 100, 1000),
            (0, 6 * MIB),
            (MIB - 10, 20),
            (5 * MIB - 1, 2),
        ] {
            match client.read(offset, len as usize).await {
                Err(rehydrate_nbd::Error::Server { errno, .. }) => {
                    assert_eq!(errno, 5, "EIO at {offset}+{len}")
                }
                other => panic!("read at {offset}+{len} did not fail with EIO: {other:?}"),
            }
        }
        for (offset, len) in [(0, MIB), (2 * MIB, 2 * MIB), (5 * MIB, MIB), (MIB - 1, 1)] {
            let got = client.read(offset, len as usize).await.unwrap();
            assert!(
                got[..] == data[offset as usize..(offset + len) as usize],
                "read at {offset}+{len}"
            );
        }
        client.disconnect().await.unwrap();
    });
}

/// A backup killed mid-way publishes no version; the next backup of the same image
/// reuses every chunk the killed one stored.
#[test]
fn killed_backup_publishes_nothing_and_the_next_reuses_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img");
    write_image(&image, &[(32 * MIB, true)], 63);
    let bucket = s3_server::new_bucket("killed");
    let store = format!("s3://{bucket}");
    // 8 MiB/s: about four seconds for 32 MiB, time to kill it mid-way.
    let child = s3_bin()
        .arg("backup")
        .arg(&image)
        .args(["--store", &store, "--volume", "vol", "--rate-limit", "8MiB"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_mid_way(child, || listed(&bucket, "chunks").len() >= 4);
    assert!(listed(&bucket, "volumes").is_empty(), "a version appeared");
    let stored = listed(&bucket, "chunks").len() as u64;
    assert!((4..32).contains(&stored), "{stored} chunks before the kill");

    let next = s3_backup(&image, &store, "vol");
    assert_eq!(next["version"], 1);
    assert!(next["reused_chunks"] >= stored, "{next:?} after {stored}");
    assert_eq!(next["new_chunks"] + next["reused_chunks"], 32);
}

/// A store that cannot do create-if-not-exists is refused at startup with one clear
/// line, and nothing is published. (object_store's `AWS_CONDITIONAL_PUT=disabled`
/// makes the client behave as one against an S3 API that lacks it.)
#[test]
fn a_store_without_conditional_put_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img");
    write_image(&image, &[(MIB, true)], 5);
    let bucket = s3_server::new_bucket("noconditional");
    let out = s3_bin()
        .env("AWS_CONDITIONAL_PUT", "disabled")
        .arg("backup")
        .arg(&image)
        .args(["--store", &format!("s3://{bucket}"), "--volume", "v"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not support create-if-not-exists"),
        "{stderr}"
    );
    assert!(listed(&bucket, "chunks").is_empty());
    assert!(listed(&bucket, "volumes").is_empty());
}

/// `gc` racing backups in a bucket: no chunk a published version names is ever lost,
/// and gc still deletes the orphans nobody reuses.
#[test]
fn gc_racing_backups_in_a_bucket_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = s3_server::new_bucket("gc-race");
    let objects = std::sync::Arc::new(gc_race::Jittery::new(
        s3_server::bucket_store(&bucket),
        3,
        500,
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let removed = rt.block_on(gc_race::race(objects, dir.path(), 8, 3));
    assert!(removed >= 8 * 8, "gc removed only {removed} chunks");
}
