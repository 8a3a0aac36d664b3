//! A real file system on the live volume, as a user would use it, without root devices:
//! an ext4 image made with `mkfs.ext4 -d`, backed up, restored with `--export`, and
//! while the restore still runs `nbdfuse` exposes the export as a file and `fuse2fs`
//! mounts the ext4 in it read-write. Every file's bytes are checked, files are written,
//! renamed and deleted, both are unmounted; the restore finishes; `e2fsck -fn` of the
//! target is clean and `debugfs` finds the changes. Needs FUSE (`/dev/fuse`).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// Unmounts what a failing check would leave mounted (lazily: it may be busy).
struct Unmount(Vec<(&'static str, std::path::PathBuf)>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for (tool, path) in &self.0 {
            let _ = Command::new(tool).args(["-u", "-z"]).arg(path).output();
        }
    }
}

fn wait_for(path: &Path, what: &str) -> bool {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > Duration::from_secs(20) {
            eprintln!("{what}: {} did not appear", path.display());
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn ext4_on_the_live_volume_through_nbdfuse_and_fuse2fs() {
    for (tool, package) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("nbdfuse", "libnbd-bin"),
        ("fuse2fs", "fuse2fs"),
        ("fusermount3", "fuse3"),
    ] {
        require(tool, package);
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED ext4_on_the_live_volume_through_nbdfuse_and_fuse2fs: /dev/fuse does not exist here, so nothing can be mounted with FUSE");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let mut originals = Vec::new();
    for (i, len) in [300_000usize, 1, 4096, 1_500_000, 77_777]
        .iter()
        .enumerate()
    {
        let data = random(*len);
        std::fs::write(files.join(format!("f{i}")), &data).unwrap();
        originals.push((format!("f{i}"), data));
    }
    let image = dir.path().join("fs.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let out = sh("mkfs.ext4", &["-q", "-d", s(&files), s(&image)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    backup(&image, &dir.path().join("store"), "fs");
    let server = serve(&dir.path().join("store"));
    let export_port = free_port();
    let target = dir.path().join("target.img");
    // Killed on drop, so a failing check leaves no restore running.
    let mut restore = Proc {
        child: spawn_restore(
            &format!("nbd://127.0.0.1:{}/fs", server.port),
            &target,
            &[
                "--export",
                &format!("127.0.0.1:{export_port}"),
                "--rate-limit",
                "2MiB",
                "--status-file",
                s(&dir.path().join("status.json")),
            ],
        ),
        port: export_port,
    };
    wait_listening(export_port, &mut restore.child);

    let (m1, m2) = (dir.path().join("m1"), dir.path().join("m2"));
    std::fs::create_dir(&m1).unwrap();
    std::fs::create_dir(&m2).unwrap();
    let _unmount = Unmount(vec![
        ("fusermount", m2.clone()),
        ("fusermount3", m1.clone()),
    ]);
    let mut nbdfuse = Proc {
        child: Command::new("nbdfuse")
            .arg(&m1)
            .arg(format!("nbd://127.0.0.1:{export_port}/fs"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        port: 0,
    };
    if !wait_for(&m1.join("nbd"), "nbdfuse") {
        let _ = nbdfuse.child.kill();
        let _ = nbdfuse.child.wait();
        let mut err = String::new();
        if let Some(mut e) = nbdfuse.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        eprintln!("SKIPPED ext4_on_the_live_volume_through_nbdfuse_and_fuse2fs: FUSE mounts do not work here: {err}");
        return;
    }
    let out = sh("fuse2fs", &[s(&m1.join("nbd")), s(&m2), "-o", "fakeroot"]);
    assert!(out.status.success(), "fuse2fs: {}", text(&out.stderr));
    assert!(wait_for(&m2.join("f0"), "fuse2fs"));
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("status.json")).unwrap())
            .unwrap();
    assert!(
        status["bytes_restored"].as_u64() < status["bytes_total"].as_u64(),
        "mounted while the restore runs"
    );

    for (name, data) in &originals {
        assert!(
            std::fs::read(m2.join(name)).unwrap() == *data,
            "{name} differs"
        );
    }
    let new = random(2_000_000);
    std::fs::write(m2.join("new"), &new).unwrap();
    std::fs::rename(m2.join("f0"), m2.join("renamed")).unwrap();
    std::fs::remove_file(m2.join("f3")).unwrap();
    assert!(std::fs::read(m2.join("new")).unwrap() == new);
    let out = sh("fusermount", &["-u", s(&m2)]);
    assert!(
        out.status.success(),
        "unmount fuse2fs: {}",
        text(&out.stderr)
    );
    // fuse2fs closes the nbdfuse file as it exits, a moment after its unmount returns.
    let start = Instant::now();
    loop {
        let out = sh("fusermount3", &["-u", s(&m1)]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "unmount nbdfuse: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nbdfuse.child.wait();

    // Let the restore finish, then stop it cleanly.
    let start = Instant::now();
    loop {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("status.json")).unwrap_or_default(),
        )
        .unwrap_or_default();
        if v["bytes_total"].as_u64() > Some(0) && v["bytes_restored"] == v["bytes_total"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "restore never finished"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = sh("kill", &["-TERM", &restore.child.id().to_string()]);
    let _ = restore.child.wait();
    let mut stdout = String::new();
    if let Some(mut o) = restore.child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut stdout);
    }
    let out = std::process::Output {
        status: restore.child.wait().unwrap(),
        stdout: stdout.into_bytes(),
        stderr: Vec::new(),
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("restore: complete "),
        "{}",
        text(&out.stdout)
    );

    let out = sh("e2fsck", &["-fn", s(&target)]);
    assert!(
        out.status.success(),
        "e2fsck: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ls = text(&sh("debugfs", &["-R", "ls", s(&target)]).stdout);
    assert!(ls.contains("renamed") && ls.contains("new"), "{ls}");
    assert!(!ls.contains(" f0 ") && !ls.contains("f3"), "{ls}");
    let dumped = dir.path().join("new.out");
    let _ = sh(
        "debugfs",
        &["-R", &format!("dump /new {}", s(&dumped)), s(&target)],
    );
    assert!(
        std::fs::read(&dumped).unwrap() == new,
        "the new file's bytes"
    );
    drop(server);
}
