//! Regression tests for the integrity holes of issue 10 that live in the service and the
//! backup server, each with real processes (`rehydrate backup/serve/restore`, qemu-nbd,
//! qemu-img): what is restored is pinned, the metadata is never the target nor another
//! restore's, one restore per target, any backed-up size restores, a larger target needs
//! `--force`, the target's identity is recorded, a closed stdout is a normal end, and
//! the small command-line items.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

const IMAGE_BYTES: usize = 32 * MIB as usize;
/// Paced so a restore is still running when a test kills it or its server.
const SLOW: [&str; 2] = ["--rate-limit", "4MiB"];

fn url(port: u16, export: &str) -> String {
    format!("nbd://127.0.0.1:{port}/{export}")
}

/// `DIR/IMG` (random, a zero quarter) backed up as `sys` into `store`; its bytes.
fn backed_up(dir: &Path, img: &str, store: &Path) -> Vec<u8> {
    let data = make_image(&dir.join(img), IMAGE_BYTES);
    backup(&dir.join(img), store, "sys");
    data
}

/// `DIR/a.img` backed up as `sys` into `DIR/store`, served.
fn served_image(dir: &Path) -> (Vec<u8>, Proc) {
    let data = backed_up(dir, "a.img", &dir.join("store"));
    (data, serve(&dir.join("store")))
}

/// A restore of `export` at `port` into `target`, killed once it committed progress.
fn start_and_kill(port: u16, export: &str, target: &Path, status: &Path) {
    let child = spawn_restore(
        &url(port, export),
        target,
        &[&SLOW[..], &["--status-file", s(status)]].concat(),
    );
    kill_after(status, 4 * MIB, child);
}

#[test]
fn item1_a_resume_after_a_new_backup_finishes_the_pinned_version() {
    let dir = tempfile::tempdir().unwrap();
    let (store, target, status) = (
        dir.path().join("store"),
        dir.path().join("t"),
        dir.path().join("st"),
    );
    let v1 = backed_up(dir.path(), "v1.img", &store);
    let server = serve(&store);
    start_and_kill(server.port, "sys", &target, &status);

    // A new version appears behind the name while the restore is stopped.
    make_image(&dir.path().join("v2.img"), IMAGE_BYTES);
    assert!(backup(&dir.path().join("v2.img"), &store, "sys").contains("version=2"));
    let s = summary(&restore(&url(server.port, "sys"), &target, &[]));
    assert!(s["resumed_bytes"] > 0, "{s:?}");
    assert!(
        std::fs::read(&target).unwrap() == v1,
        "the restore mixed two versions"
    );
}

#[test]
fn item1_a_server_restarted_mid_restore_with_a_new_version_does_not_change_what_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (store, target, status) = (
        dir.path().join("store"),
        dir.path().join("t"),
        dir.path().join("st"),
    );
    let v1 = backed_up(dir.path(), "v1.img", &store);
    let port = free_port();
    let server = serve_on(&store, port);
    // The outage lasts as long as a backup takes: on a loaded machine that can pass the
    // default 30 s deadline, which is not what this test is about.
    let mut child = spawn_restore(
        &url(port, "sys"),
        &target,
        &[
            &SLOW[..],
            &["--status-file", s(&status), "--deadline", "300"],
        ]
        .concat(),
    );
    wait_restored(&status, 4 * MIB, &mut child);
    drop(server);
    backed_up(dir.path(), "v2.img", &store);
    let _server = serve_on(&store, port);
    let out = child.wait_with_output().unwrap();
    summary(&out);
    assert!(
        std::fs::read(&target).unwrap() == v1,
        "the restore mixed two versions"
    );
}

#[test]
fn item1_another_server_with_a_volume_of_the_same_name_and_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (target, status) = (dir.path().join("t"), dir.path().join("st"));
    let (_, server) = served_image(dir.path());
    start_and_kill(server.port, "sys", &target, &status);
    drop(server);

    let other = dir.path().join("other");
    backed_up(dir.path(), "b.img", &other);
    let server = serve(&other);
    let meta = dir.path().join("t.rehydrate-meta");
    let before = std::fs::read(&meta).unwrap();
    let line = one_line_error(&restore(&url(server.port, "sys"), &target, &[]));
    assert!(line.contains("pinned to sys@1"), "{line}");
    assert_eq!(std::fs::read(&meta).unwrap(), before, "metadata untouched");
}

#[test]
fn item1_a_reconnect_to_another_source_mid_restore_stops_the_restore() {
    let dir = tempfile::tempdir().unwrap();
    let (store, target, status) = (
        dir.path().join("store"),
        dir.path().join("t"),
        dir.path().join("st"),
    );
    backed_up(dir.path(), "a.img", &store);
    let other = dir.path().join("other");
    backed_up(dir.path(), "b.img", &other);
    let port = free_port();
    let server = serve_on(&store, port);
    let mut child = spawn_restore(
        &url(port, "sys"),
        &target,
        &[&SLOW[..], &["--status-file", s(&status)]].concat(),
    );
    wait_restored(&status, 4 * MIB, &mut child);
    drop(server);
    let _other = serve_on(&other, port);
    let line = one_line_error(&child.wait_with_output().unwrap());
    assert!(line.contains("changed") && line.contains("sys@1"), "{line}");
}

#[test]
fn item1_a_foreign_server_is_pinned_by_address_size_and_sampled_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (target, status) = (dir.path().join("t"), dir.path().join("st"));
    let a = make_image(&dir.path().join("a.img"), IMAGE_BYTES);
    make_image(&dir.path().join("b.img"), IMAGE_BYTES);
    let port = free_port();
    let server = qemu_nbd_on(&dir.path().join("a.img"), "disk", port, false);
    start_and_kill(port, "disk", &target, &status);
    drop(server);

    // Another file of the same size behind the same address and name: refused.
    let server = qemu_nbd_on(&dir.path().join("b.img"), "disk", port, false);
    let line = one_line_error(&restore(&url(port, "disk"), &target, &[]));
    assert!(
        line.contains("pinned to") && line.contains("sampled blocks"),
        "{line}"
    );
    drop(server);

    // The same file again: the restore resumes and finishes.
    let _server = qemu_nbd_on(&dir.path().join("a.img"), "disk", port, false);
    let s = summary(&restore(&url(port, "disk"), &target, &[]));
    assert!(s["resumed_bytes"] > 0, "{s:?}");
    assert!(std::fs::read(&target).unwrap() == a);
}

#[test]
fn item2_the_metadata_can_be_neither_the_target_nor_another_restores() {
    let dir = tempfile::tempdir().unwrap();
    let (_, server) = served_image(dir.path());
    let u = url(server.port, "sys");

    let x = dir.path().join("x");
    let line = one_line_error(&restore(&u, &x, &["--metadata", s(&x)]));
    assert!(line.contains("is the target"), "{line}");
    assert!(!x.exists(), "nothing created");
    std::fs::write(&x, vec![5u8; IMAGE_BYTES]).unwrap();
    let spelled = dir.path().join(".").join("x");
    let line = one_line_error(&restore(&u, &x, &["--metadata", s(&spelled)]));
    assert!(line.contains("is the target"), "{line}");
    let link = dir.path().join("hard-link");
    std::fs::hard_link(&x, &link).unwrap();
    let line = one_line_error(&restore(&u, &x, &["--metadata", s(&link)]));
    assert!(line.contains("is the target"), "{line}");
    assert!(
        std::fs::read(&x).unwrap().iter().all(|&b| b == 5),
        "target untouched"
    );

    // Another restore's metadata, named for a target that does not exist yet.
    let (t1, status) = (dir.path().join("t1"), dir.path().join("st"));
    start_and_kill(server.port, "sys", &t1, &status);
    let m1 = dir.path().join("t1.rehydrate-meta");
    let before = std::fs::read(&m1).unwrap();
    let t2 = dir.path().join("t2");
    let line = one_line_error(&restore(&u, &t2, &["--metadata", s(&m1)]));
    assert!(line.contains("belongs to another restore"), "{line}");
    assert_eq!(std::fs::read(&m1).unwrap(), before, "never overwritten");
    assert!(!t2.exists());
}

#[test]
fn item3_a_second_restore_of_one_target_is_refused_naming_the_first_pid() {
    let dir = tempfile::tempdir().unwrap();
    let (target, status) = (dir.path().join("t"), dir.path().join("st"));
    let (_, server) = served_image(dir.path());
    let mut first = spawn_restore(
        &url(server.port, "sys"),
        &target,
        &[&SLOW[..], &["--status-file", s(&status)]].concat(),
    );
    wait_restored(&status, MIB, &mut first);
    let line = one_line_error(&restore(
        &url(server.port, "sys"),
        &target,
        &["--status-file", s(&dir.path().join("st2"))],
    ));
    assert!(line.contains(&format!("pid {}", first.id())), "{line}");
    // The metadata is locked too: another target naming it is refused the same way.
    let other = dir.path().join("other");
    std::fs::write(&other, vec![0u8; IMAGE_BYTES]).unwrap();
    let meta = dir.path().join("t.rehydrate-meta");
    let line = one_line_error(&restore(
        &url(server.port, "sys"),
        &other,
        &["--metadata", s(&meta)],
    ));
    assert!(line.contains(&format!("pid {}", first.id())), "{line}");
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn item4_any_size_the_backup_accepted_restores_to_the_exact_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let sizes = [0usize, 1, 4097, 64 * MIB as usize + 1];
    for (i, &size) in sizes.iter().enumerate() {
        let image = dir.path().join(format!("{i}.img"));
        std::fs::write(&image, random(size)).unwrap();
        backup(&image, &store, &format!("v{i}"));
    }
    let server = serve(&store);
    for (i, &size) in sizes.iter().enumerate() {
        let target = dir.path().join(format!("{i}.restored"));
        let s = summary(&restore(&url(server.port, &format!("v{i}")), &target, &[]));
        assert_eq!(s["bytes"], size as u64);
        let got = std::fs::read(&target).unwrap();
        assert_eq!(got.len(), size, "the file ends at the exact size");
        assert!(
            got == std::fs::read(dir.path().join(format!("{i}.img"))).unwrap(),
            "size {size}"
        );
    }
}

#[test]
fn item5_a_target_larger_than_the_source_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let (a, server) = served_image(dir.path());
    let target = dir.path().join("big");
    std::fs::write(&target, vec![9u8; IMAGE_BYTES + MIB as usize]).unwrap();
    let line = one_line_error(&restore(&url(server.port, "sys"), &target, &[]));
    assert!(line.contains("--force"), "{line}");
    assert!(
        std::fs::read(&target).unwrap().iter().all(|&b| b == 9),
        "untouched"
    );
    summary(&restore(&url(server.port, "sys"), &target, &["--force"]));
    let got = std::fs::read(&target).unwrap();
    assert!(got[..IMAGE_BYTES] == a[..]);
    assert!(
        got[IMAGE_BYTES..].iter().all(|&b| b == 9),
        "the rest is left as it was"
    );
}

#[test]
fn item9_metadata_of_another_or_a_recreated_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, status) = (dir.path().join("t1"), dir.path().join("st"));
    let (_, server) = served_image(dir.path());
    start_and_kill(server.port, "sys", &t1, &status);
    let m1 = dir.path().join("t1.rehydrate-meta");

    // Another file of the same size, handed the first restore's metadata.
    let t2 = dir.path().join("t2");
    std::fs::copy(&t1, &t2).unwrap();
    let line = one_line_error(&restore(
        &url(server.port, "sys"),
        &t2,
        &["--metadata", s(&m1)],
    ));
    assert!(line.contains("belongs to another target"), "{line}");

    // The target removed and created again under the same name.
    std::fs::remove_file(&t1).unwrap();
    std::fs::write(&t1, vec![0u8; IMAGE_BYTES]).unwrap();
    let line = one_line_error(&restore(&url(server.port, "sys"), &t1, &[]));
    assert!(line.contains("belongs to another target"), "{line}");
}

#[test]
fn item13_a_closed_stdout_is_a_normal_end_and_a_published_backup_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let image = dir.path().join("a.img");
    std::fs::write(&image, random(MIB as usize)).unwrap();
    let closed = |args: &[&str]| {
        let mut child = rehydrate(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    };
    let out = closed(&["backup", s(&image), "--store", s(&store), "--volume", "v"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert!(
        store.join("volumes/v/versions/00000001.idx").exists(),
        "published"
    );

    let status = dir.path().join("status.json");
    let server = serve(&store);
    summary(&restore(
        &url(server.port, "v"),
        &dir.path().join("t"),
        &["--status-file", s(&status)],
    ));
    let out = closed(&["status", "--status-file", s(&status)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn item14_a_damaged_index_is_named_to_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::write(dir.path().join("a.img"), random(MIB as usize)).unwrap();
    backup(&dir.path().join("a.img"), &store, "sys");
    let index = store.join("volumes/sys/versions/00000001.idx");
    let mut bytes = std::fs::read(&index).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&index, bytes).unwrap();
    let server = serve(&store);
    let line = one_line_error(&restore(
        &url(server.port, "sys@1"),
        &dir.path().join("t"),
        &[],
    ));
    assert!(line.contains("checksum mismatch"), "{line}");
    // A real client shows the server's reason too.
    require("qemu-img", "qemu-utils");
    let out = std::process::Command::new("qemu-img")
        .args(["info", &url(server.port, "sys@1")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("checksum mismatch"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn item14_a_name_longer_than_nbd_allows_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let long = "x".repeat(5000);
    let line = one_line_error(&restore(
        &url(free_port(), &long),
        &dir.path().join("t"),
        &[],
    ));
    assert!(line.contains("4096"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(10), "not retried");
}

#[test]
fn item14_a_region_size_out_of_range_is_echoed_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let out = restore(
        "nbd://127.0.0.1:1/x",
        &dir.path().join("t"),
        &["--region-size", "1TiB"],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("region size 1TiB"), "{stderr}");
    assert!(!stderr.contains("4294967295"), "{stderr}");
}

#[test]
fn item14_a_source_outage_prints_one_line_only() {
    let dir = tempfile::tempdir().unwrap();
    let (target, status) = (dir.path().join("t"), dir.path().join("st"));
    let (_, server) = served_image(dir.path());
    let mut child = spawn_restore(
        &url(server.port, "sys"),
        &target,
        &[&SLOW[..], &["--status-file", s(&status), "--deadline", "2"]].concat(),
    );
    wait_restored(&status, MIB, &mut child);
    drop(server);
    let line = one_line_error(&child.wait_with_output().unwrap());
    assert!(line.contains("could not be restored"), "{line}");
}

#[test]
fn item14_two_restores_keep_two_status_files_and_status_shows_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::write(dir.path().join("a.img"), random(MIB as usize)).unwrap();
    backup(&dir.path().join("a.img"), &store, "sys");
    let server = serve(&store);
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    for t in ["t1", "t2"] {
        let out = rehydrate(&[
            "restore",
            "--source",
            &url(server.port, "sys"),
            "--target",
            s(&dir.path().join(t)),
        ])
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
        summary(&out);
    }
    let out = rehydrate(&["status", "--json"])
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    assert_ok(&out, "status");
    let targets: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["target"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(
        targets.iter().any(|t| t.ends_with("/t1")) && targets.iter().any(|t| t.ends_with("/t2"))
    );
}

#[test]
fn item14_a_rebackup_replaces_a_damaged_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let image = dir.path().join("a.img");
    let data = random(4 * MIB as usize);
    std::fs::write(&image, &data).unwrap();
    backup(&image, &store, "sys");
    let mut chunks: Vec<_> = walk(&store.join("chunks"));
    chunks.sort();
    assert_eq!(chunks.len(), 4);

    // Truncated: the cheap size check sees it.
    let bytes = std::fs::read(&chunks[0]).unwrap();
    std::fs::write(&chunks[0], &bytes[..bytes.len() / 2]).unwrap();
    let line = backup(&image, &store, "sys");
    assert!(line.contains("repaired_chunks=1"), "{line}");
    assert_eq!(std::fs::read(&chunks[0]).unwrap(), bytes);

    // Same size, one bit flipped: only --verify reads it back.
    let mut flipped = std::fs::read(&chunks[1]).unwrap();
    flipped[100] ^= 1;
    std::fs::write(&chunks[1], &flipped).unwrap();
    assert!(!backup(&image, &store, "sys").contains("repaired"));
    let out = run(&[
        "backup",
        s(&image),
        "--store",
        s(&store),
        "--volume",
        "sys",
        "--verify",
    ]);
    assert_ok(&out, "backup --verify");
    assert!(
        text(&out.stdout).contains("repaired_chunks=1"),
        "{}",
        text(&out.stdout)
    );
    let server = serve(&store);
    let target = dir.path().join("t");
    summary(&restore(&url(server.port, "sys@1"), &target, &[]));
    assert!(std::fs::read(&target).unwrap() == data);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
