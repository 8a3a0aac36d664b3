//! Replication between two real processes over loopback: a proxy that cuts the
//! connection at random byte offsets until the transfer completes, kill -9 of either end
//! at random points, and a volume whose chunks the sender cannot read. At every step
//! what the receiver shows is a prefix of complete versions; at the end every version
//! reads back (through `serve` and our NBD client) equal to what was backed up.
//!
//! A failing run prints its seed; `REPLICATE_TEST_SEED=N` replays its choices.

mod common;
mod replicate_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{noise, MIB};
use replicate_support::*;

/// A sending store with three volumes: `alpha` (two versions, the second with 10% of
/// its chunks changed, and a run of zeroes), `beta` and `gamma` (one version each).
struct Scenario {
    dir: tempfile::TempDir,
    sender: PathBuf,
    receiver: PathBuf,
    /// (export name, expected bytes)
    versions: Vec<(String, Vec<u8>)>,
}

const VOLUMES: [&str; 3] = ["alpha", "beta", "gamma"];

impl Scenario {
    fn new(alpha_mib: u64, seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sender = dir.path().join("sender");
        let receiver = dir.path().join("receiver");
        let mut versions = Vec::new();
        let mut alpha = noise((alpha_mib * MIB) as usize, seed);
        alpha.extend(vec![0u8; (2 * MIB) as usize]);
        let mut put = |name: &str, data: &[u8]| {
            let image = dir.path().join("image");
            std::fs::write(&image, data).unwrap();
            backup(&image, &sender, name);
            let n = versions
                .iter()
                .filter(|(e, _): &&(String, Vec<u8>)| e.starts_with(&format!("{name}@")))
                .count();
            versions.push((format!("{name}@{}", n + 1), data.to_vec()));
        };
        put("alpha", &alpha);
        change_chunks(&mut alpha, 10, seed + 1);
        put("alpha", &alpha);
        put("beta", &noise((8 * MIB) as usize, seed + 2));
        put("gamma", &noise((6 * MIB) as usize, seed + 3));
        Self {
            dir,
            sender,
            receiver,
            versions,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Every version reads back from the receiver as it was backed up.
    fn assert_all_replicated(&self) {
        assert_eq!(
            assert_prefix_of_complete_versions(&self.sender, &self.receiver, &VOLUMES),
            vec![2, 1, 1]
        );
        for (export, data) in &self.versions {
            assert!(
                read_export(&self.receiver, export) == *data,
                "{export} differs at the receiver"
            );
        }
    }
}

fn status(store: &Path) -> String {
    let out = common::run_ok(bin().args(["replicate", "status", "--store"]).arg(store));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The proxy cuts the first connections at random offsets (the first one early, inside
/// the greeting or manifest); `replicate` is run again until it succeeds. After each cut
/// the receiver shows a prefix of complete versions; at the end every version is equal,
/// and all the bytes sent over all runs are at most 1.05 x the missing chunk bytes plus
/// one manifest per run.
#[test]
fn a_cutting_proxy_until_the_transfer_completes() {
    let seed = Rng::seed();
    let mut rng = Rng::new(seed);
    let s = Scenario::new(20, seed);
    let missing = missing_bytes(&s.sender, &s.receiver);
    let receiver = Receiver::start(&s.receiver, free_port(), &s.path("receiver.log"));
    let mut cut_rng = Rng::new(seed ^ 0xC0FFEE);
    let proxy = Proxy::start(
        receiver.port,
        move |n| match n {
            0 => Some(cut_rng.range(1, 4096)),
            1..=3 => Some(cut_rng.range(256 << 10, 8 << 20)),
            _ => None,
        },
        None,
    );
    let _ = rng.next();
    let (mut total_sent, mut runs) = (0u64, 0u64);
    let mut saw_pending = false;
    loop {
        runs += 1;
        assert!(runs <= 12, "seed {seed}: no success after {runs} runs");
        let run = run_replicate(&s.sender, proxy.port, &["--window", "256KiB"]);
        total_sent += run.bytes_sent;
        assert_prefix_of_complete_versions(&s.sender, &s.receiver, &VOLUMES);
        if run.code == 0 {
            assert_eq!(
                run.last_line,
                format!(
                    "replicate: committed=3 pending=0 failed=0 bytes_sent={}",
                    run.bytes_sent
                ),
                "seed {seed}"
            );
            break;
        }
        assert_eq!(run.code, 1, "seed {seed}: {run:?}");
        assert!(
            run.stderr.contains("replication broke off")
                && run.stderr.contains("run again to resume"),
            "seed {seed}: {run:?}"
        );
        if runs == 3 {
            // Mid-transfer: the receiver has a pending session to show.
            saw_pending = status(&s.receiver).contains("pending_sessions=1");
        }
    }
    assert!(
        proxy.cuts.load(std::sync::atomic::Ordering::Relaxed) >= 4,
        "seed {seed}"
    );
    assert!(
        saw_pending,
        "seed {seed}: replicate status showed no pending session mid-way"
    );
    let manifests = runs * (index_bytes(&s.sender) + 1024);
    eprintln!("seed {seed}: {runs} runs sent {total_sent} bytes for {missing} missing (+{manifests} for manifests)");
    assert!(
        total_sent as f64 <= 1.05 * missing as f64 + manifests as f64,
        "seed {seed}: sent {total_sent} over {runs} runs for {missing} missing bytes"
    );
    s.assert_all_replicated();
    assert!(status(&s.receiver).contains("pending_sessions=0"));
    // And as qemu-img sees them, through both stores' NBD servers.
    common::require_tool("qemu-img", "qemu-utils");
    let (a, b) = (
        common::Server::start(&s.sender),
        common::Server::start(&s.receiver),
    );
    for (export, _) in &s.versions {
        common::run_ok(std::process::Command::new("qemu-img").args([
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &a.url(export),
            &b.url(export),
        ]));
    }
    // Once up to date, a run sends a greeting and an empty manifest, nothing else.
    let again = run_replicate(&s.sender, receiver.port, &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.bytes_sent < 1024, "{again:?}");
}

/// kill -9 of the receiver or of the sender at random moments of a slowed transfer
/// (the receiver restarted on the same port), then runs until it completes. The bytes
/// that crossed the proxy in all are the missing bytes, plus a manifest per connection,
/// plus per kill at most what was in flight: the window, and for a receiver also the
/// chunks it had taken in but not yet written.
#[test]
fn kill_nine_of_either_end_then_resume() {
    let seed = Rng::seed();
    let mut rng = Rng::new(seed);
    let s = Scenario::new(12, seed);
    let missing = missing_bytes(&s.sender, &s.receiver);
    let port = free_port();
    let log = s.path("receiver.log");
    let mut receiver = Receiver::start(&s.receiver, port, &log);
    // 8 MiB/s: the 30 MiB transfer takes about four seconds, time to kill mid-way.
    let proxy = Proxy::start(port, |_| None, Some(8 << 20));
    let window = 256u64 << 10;
    for round in 0..4 {
        let mut child = replicate_cmd(&s.sender, proxy.port, &["--window", "256KiB"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.range(100, 1500)));
        if round % 2 == 0 {
            receiver.kill9();
            let _ = child.wait();
            let shown = assert_prefix_of_complete_versions(&s.sender, &s.receiver, &VOLUMES);
            if round == 0 {
                // At 8 MiB/s, 1.5 s is less than half the transfer: the kill was mid-way.
                assert!(shown.iter().sum::<usize>() < 4, "seed {seed}: {shown:?}");
            }
            receiver = Receiver::start(&s.receiver, port, &log);
        } else {
            let _ = child.kill();
            let _ = child.wait();
            assert_prefix_of_complete_versions(&s.sender, &s.receiver, &VOLUMES);
        }
    }
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs <= 5, "seed {seed}: no success after the kills");
        let run = run_replicate(&s.sender, proxy.port, &["--window", "256KiB"]);
        assert_prefix_of_complete_versions(&s.sender, &s.receiver, &VOLUMES);
        if run.code == 0 {
            break;
        }
    }
    s.assert_all_replicated();
    let wire = proxy.forwarded.load(std::sync::atomic::Ordering::Relaxed);
    let connections = 4 + runs;
    let in_flight = 2 * (window + 9 * (64 << 10)) + 2 * window;
    let allowance = connections * (index_bytes(&s.sender) + 1024) + in_flight;
    eprintln!("seed {seed}: {wire} bytes crossed for {missing} missing (+{allowance} allowed)");
    assert!(
        wire as f64 <= 1.05 * missing as f64 + allowance as f64,
        "seed {seed}: {wire} bytes crossed for {missing} missing"
    );
}

/// Flip one byte of a chunk object.
fn damage(store: &Path, hash: &rehydrate_backup::ChunkHash) -> (PathBuf, Vec<u8>) {
    let file = store.join(hash.path().as_ref());
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    std::fs::write(&file, bad).unwrap();
    (file, good)
}

/// A new version of `beta` names a chunk the sender can no longer read: `alpha` and
/// `gamma` get their new versions, `beta` stays at its previous one; the exit status is
/// the partial one and the last line says failed=1. Once the chunk is repaired, the next
/// run completes.
#[test]
fn a_volume_with_unreadable_chunks_stays_while_the_others_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, receiver_store) = (dir.path().join("sender"), dir.path().join("receiver"));
    let image = dir.path().join("image");
    let mut images = Vec::new();
    for (i, v) in VOLUMES.iter().enumerate() {
        let data = noise((3 * MIB) as usize, 40 + i as u64);
        std::fs::write(&image, &data).unwrap();
        backup(&image, &sender, v);
        images.push(data);
    }
    let receiver = Receiver::start(&receiver_store, free_port(), &dir.path().join("r.log"));
    let first = run_replicate(&sender, receiver.port, &[]);
    assert_eq!(first.code, 0, "{first:?}");
    // Second versions; beta's has one fresh chunk, which is then damaged at the sender.
    for (i, v) in VOLUMES.iter().enumerate() {
        change_chunks(&mut images[i], 10, 50 + i as u64);
        images[i][..65536].copy_from_slice(&noise(65536, 60 + i as u64));
        std::fs::write(&image, &images[i]).unwrap();
        backup(&image, &sender, v);
    }
    let beta2 = std::fs::read(sender.join("volumes/beta/versions/00000002.idx")).unwrap();
    let rehydrate_backup::ChunkRef::Data(fresh) =
        rehydrate_backup::Index::decode(&beta2).unwrap().chunks[0]
    else {
        panic!("beta's first chunk is data");
    };
    let (file, good) = damage(&sender, &fresh);

    let run = run_replicate(&sender, receiver.port, &[]);
    assert_eq!(run.code, 3, "the partial-success status: {run:?}");
    assert_eq!(
        run.last_line,
        format!(
            "replicate: committed=2 pending=0 failed=1 bytes_sent={}",
            run.bytes_sent
        )
    );
    assert!(run.stderr.contains("volume beta failed"), "{}", run.stderr);
    assert_eq!(versions(&receiver_store, "alpha"), vec![1, 2]);
    assert_eq!(
        versions(&receiver_store, "beta"),
        vec![1],
        "beta stays at its previous version"
    );
    assert_eq!(versions(&receiver_store, "gamma"), vec![1, 2]);
    assert_prefix_of_complete_versions(&sender, &receiver_store, &VOLUMES);
    let json = run_replicate(&sender, receiver.port, &["--json"]);
    assert_eq!(json.code, 3);
    let v: serde_json::Value = serde_json::from_str(&json.last_line).unwrap();
    assert_eq!(
        (v["committed"].as_u64(), v["failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(v["failed_volumes"][0]["volume"], "beta");

    std::fs::write(&file, good).unwrap();
    let run = run_replicate(&sender, receiver.port, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    for (i, v) in VOLUMES.iter().enumerate() {
        assert!(
            read_export(&receiver_store, &format!("{v}@2")) == images[i],
            "{v}@2"
        );
    }
}

/// The proxy flips one bit in the middle of the stream, almost surely inside a chunk: the
/// receiver finds the chunk does not match its name, asks for it again, and the run still
/// completes with every version intact. (Should the bit land in a frame header instead,
/// the session ends with a clear error and the next run completes.)
#[test]
fn a_chunk_damaged_in_flight_is_asked_for_again() {
    let s = Scenario::new(4, Rng::seed());
    let log = s.path("receiver.log");
    let receiver = Receiver::start(&s.receiver, free_port(), &log);
    let proxy = Proxy::flipping(receiver.port, 3 * MIB + 12345);
    let first = run_replicate(&s.sender, proxy.port, &[]);
    assert_prefix_of_complete_versions(&s.sender, &s.receiver, &VOLUMES);
    if first.code == 0 {
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains("asking again"),
            "no re-request logged:\n{logged}"
        );
    } else {
        assert_eq!(first.code, 1, "{first:?}");
        let again = run_replicate(&s.sender, proxy.port, &[]);
        assert_eq!(again.code, 0, "{again:?}");
    }
    s.assert_all_replicated();
}
