//! `rehydrate backup --changed-map` with real processes: the live export keeps the map
//! of changes, a backup reads only what it marks and restores byte-identical to a full
//! backup of the same image; a kill -9 mid-write (map updates lost) and a write without
//! the export both make the backup read everything, said in one line, and miss nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

const IMAGE_BYTES: usize = 32 * MIB as usize;

/// A backed-up, served image and its restore target.
struct Setup {
    dir: tempfile::TempDir,
    server: Proc,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        make_image(&dir.path().join("disk.img"), IMAGE_BYTES);
        backup(
            &dir.path().join("disk.img"),
            &dir.path().join("store"),
            "vol",
        );
        let server = serve(&dir.path().join("store"));
        Setup { dir, server }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn target(&self) -> PathBuf {
        self.path("target.img")
    }

    fn meta(&self) -> PathBuf {
        self.path("target.img.rehydrate-meta")
    }

    /// `rehydrate restore` of `export` with its live export on a fresh port.
    fn live(&self, export: &str) -> (Running, String) {
        let port = free_port();
        let mut child = spawn_restore(
            &format!("nbd://127.0.0.1:{}/{export}", self.server.port),
            &self.target(),
            &[
                "--export",
                &format!("127.0.0.1:{port}"),
                "--status-file",
                s(&self.path("status.json")),
            ],
        );
        wait_listening(port, &mut child);
        (Running(Some(child)), format!("nbd://127.0.0.1:{port}/vol"))
    }

    /// Waits until the restore is complete (the status file says so).
    fn wait_complete(&self, child: &mut Running) {
        wait_restored(&self.path("status.json"), IMAGE_BYTES as u64, child.get());
    }

    /// `rehydrate backup TARGET --store STORE --volume vol [--changed-map META]`.
    fn backup(&self, map: Option<&Path>) -> Output {
        let mut args = vec![
            "backup".to_owned(),
            s(&self.target()).to_owned(),
            "--store".into(),
            s(&self.path("store")).to_owned(),
            "--volume".into(),
            "vol".into(),
        ];
        if let Some(map) = map {
            args.extend(["--changed-map".into(), s(map).to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    }

    /// Restores version `version` into a fresh file and returns its bytes.
    fn restored(&self, version: u64) -> Vec<u8> {
        let out_path = self.path(&format!("v{version}.img"));
        let out = restore(
            &format!("nbd://127.0.0.1:{}/vol@{version}", self.server.port),
            &out_path,
            &[],
        );
        assert_ok(&out, "restore of a version");
        std::fs::read(out_path).unwrap()
    }
}

fn qemu_io(url: &str, commands: &[&str]) {
    require("qemu-io", "qemu-utils");
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(url);
    let out = Command::new("qemu-io").args(&args).output().unwrap();
    assert!(
        out.status.success() && !text(&out.stdout).contains("failed"),
        "qemu-io {commands:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// SIGTERM: the export flushes, commits the map clean, and exits 0.
fn stop(mut child: Running) {
    let child = child.take();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "live export stop");
}

/// The `key=value` fields of a backup's last line.
fn fields(out: &Output) -> std::collections::HashMap<String, String> {
    assert_ok(out, "backup");
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("backup: volume=vol"), "{last}");
    last.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn an_incremental_backup_reads_only_changes_and_restores_identical_to_a_full_one() {
    let setup = Setup::new();
    let (mut live, url) = setup.live("vol");
    setup.wait_complete(&mut live);
    // About 1% of the regions, some unaligned, one across a chunk boundary.
    qemu_io(
        &url,
        &[
            "write -P 0xa1 1000 5000",
            "write -P 0xb2 5242880 262144",
            "write -P 0xc3 16776704 1024",
            "write -z 30M 4k",
            "flush",
        ],
    );
    stop(live);

    let incremental = fields(&setup.backup(Some(&setup.meta())));
    assert_eq!(incremental["incremental_from"], "1");
    // Chunks 0, 5, 15 and 16 (the write across their boundary) and 30, of 1 MiB.
    assert_eq!(
        incremental["read_bytes"],
        (5 * MIB).to_string(),
        "only the chunks written were read"
    );
    let full = fields(&setup.backup(None));
    assert!(!full.contains_key("incremental_from"));
    let (inc_v, full_v) = (
        incremental["version"].parse().unwrap(),
        full["version"].parse().unwrap(),
    );
    let target = std::fs::read(setup.target()).unwrap();
    assert!(
        setup.restored(inc_v) == target,
        "the incremental version is the volume"
    );
    assert!(
        setup.restored(full_v) == target,
        "the full version is the volume"
    );
    // The map now counts from the incremental version: nothing changed since.
    let again = fields(&setup.backup(Some(&setup.meta())));
    assert_eq!(again["incremental_from"], incremental["version"]);
    assert_eq!(again["read_bytes"], "0");
}

#[test]
fn a_kill_9_mid_write_falls_back_to_a_full_read_and_misses_no_change() {
    let setup = Setup::new();
    let (mut live, url) = setup.live("vol");
    setup.wait_complete(&mut live);
    // Writes keep coming when the export is killed: map updates in memory are lost.
    let writer = Running(Some(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while true; do qemu-io -f raw -c \"write -P $((i % 200 + 1)) $((i * 65536 % 30000000)) 65536\" {url} >/dev/null 2>&1; i=$((i+1)); done"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()));
    std::thread::sleep(Duration::from_millis(1500));
    drop(live); // SIGKILL, mid-write
    drop(writer);

    let out = setup.backup(Some(&setup.meta()));
    let note = text(&out.stderr);
    assert_eq!(note.lines().count(), 1, "one line: {note}");
    assert!(
        note.contains("not using the map of changes") && note.contains("did not stop cleanly"),
        "{note}"
    );
    let full = fields(&out);
    assert!(!full.contains_key("incremental_from"), "a full read");
    let target = std::fs::read(setup.target()).unwrap();
    assert!(
        setup.restored(full["version"].parse().unwrap()) == target,
        "every change is in the backup"
    );

    // The full read made the map count from its version: the export resumes (complete
    // at once), takes more writes, stops cleanly, and the next backup is incremental.
    let (mut live, url) = setup.live("vol");
    setup.wait_complete(&mut live);
    qemu_io(&url, &["write -P 0x5a 7M 128k", "flush"]);
    stop(live);
    let next = fields(&setup.backup(Some(&setup.meta())));
    assert_eq!(next["incremental_from"], full["version"]);
    let target = std::fs::read(setup.target()).unwrap();
    assert!(setup.restored(next["version"].parse().unwrap()) == target);
}

#[test]
fn a_write_without_the_export_a_running_export_and_an_unfinished_restore() {
    let setup = Setup::new();
    // While the restore runs (slowly), its metadata is locked: the backup is refused.
    let mut slow = Running(Some(spawn_restore(
        &format!("nbd://127.0.0.1:{}/vol", setup.server.port),
        &setup.target(),
        &[
            "--rate-limit",
            "2MiB",
            "--status-file",
            s(&setup.path("status.json")),
        ],
    )));
    wait_restored(&setup.path("status.json"), MIB, slow.get());
    let err = one_line_error(&setup.backup(Some(&setup.meta())));
    assert!(err.contains("in use by another restore"), "{err}");
    drop(slow);
    // Not restored yet: refused, never a backup of a half-restored volume.
    let err = one_line_error(&setup.backup(Some(&setup.meta())));
    assert!(err.contains("let it finish"), "{err}");

    // Finished, stopped cleanly, then written by something else.
    let (mut live, _url) = setup.live("vol");
    setup.wait_complete(&mut live);
    stop(live);
    let start = Instant::now();
    let mut bytes = std::fs::read(setup.target()).unwrap();
    bytes[12345] ^= 0xFF;
    std::fs::write(setup.target(), &bytes).unwrap();
    assert!(start.elapsed() < Duration::from_secs(60));
    let out = setup.backup(Some(&setup.meta()));
    let note = text(&out.stderr);
    assert!(note.contains("written without the live export"), "{note}");
    let full = fields(&out);
    assert!(setup.restored(full["version"].parse().unwrap()) == bytes);
}
