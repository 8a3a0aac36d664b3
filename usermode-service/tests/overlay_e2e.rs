//! The overlay restore (`rehydrate restore --overlay`, technique T2) with real
//! processes: qemu-nbd serves the backup image, qemu-io writes to the pseudo-volume on
//! the live export while the restore runs, kill -9 mid-restore and mid-merge, resume,
//! `rehydrate cutover`, then `qemu-img compare` of the target against the backup image
//! with the same writes applied to a copy. Bad input: a cutover while the target is
//! incomplete, overlays of the wrong size or of another restore, a missing --overlay.
//! Slow: real processes and real data, grouped in this file.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use support::*;

const IMAGE_BYTES: usize = 32 * MIB as usize;
const BLOCK_BYTES: usize = 4096;

/// The application's writes: (pattern, offset, length). One is not region-aligned (a
/// partial write whose region is filled from the backup first), one spans 12 MiB (the merge
/// takes long enough to be killed in the middle).
const WRITES: [(u8, u64, u64); 3] = [
    (0xab, MIB, 12 * MIB),
    (0xcd, 5000, 3000),
    (0xef, 20 * MIB + 512, 64 << 10),
];

/// The backup image served by qemu-nbd and an overlay restore of it.
struct Overlay {
    dir: tempfile::TempDir,
    image: Vec<u8>,
    _source: Proc,
    export_port: u16,
    child: Running,
}

impl Overlay {
    fn start() -> Overlay {
        require("qemu-io", "qemu-utils");
        let dir = tempfile::tempdir().unwrap();
        let image = make_image(&dir.path().join("backup.img"), IMAGE_BYTES);
        let source = qemu_nbd_on(&dir.path().join("backup.img"), "sys", free_port(), false);
        Overlay {
            dir,
            image,
            _source: source,
            export_port: free_port(),
            child: Running(None),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn restore_args(&self, rate: &str, overlay: Option<&Path>) -> Vec<String> {
        let mut args: Vec<String> = [
            "--export",
            &format!("127.0.0.1:{}", self.export_port),
            "--rate-limit",
            rate,
            "--status-file",
            s(&self.path("status.json")),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if let Some(o) = overlay {
            args.extend(["--overlay".to_owned(), s(o).to_owned()]);
        }
        args
    }

    fn source(&self) -> String {
        format!("nbd://127.0.0.1:{}/sys", self._source.port)
    }

    /// Starts (or restarts) the restore with the overlay `overlay.img`.
    fn spawn(&mut self, rate: &str) {
        let args = self.restore_args(rate, Some(&self.path("overlay.img")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = spawn_restore(&self.source(), &self.path("target.img"), &args);
        wait_listening(self.export_port, &mut child);
        self.child = Running(Some(child));
    }

    /// Runs a restore that must refuse to start; its one error line.
    fn refused(&self, overlay: Option<&Path>) -> String {
        let args = self.restore_args("64MiB", overlay);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        one_line_error(&restore(&self.source(), &self.path("target.img"), &args))
    }

    fn url(&self) -> String {
        format!("nbd://127.0.0.1:{}/sys", self.export_port)
    }

    fn status(&self) -> serde_json::Value {
        read_status(&self.path("status.json"))
    }

    fn overlay_state(&self) -> String {
        self.status()["overlay"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the status file (rewritten twice a second) says `what`.
    fn wait_for(&self, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        while !done(&self.status()) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "never {what}: {}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_complete(&self) {
        self.wait_for("completely restored", |v| {
            v["bytes_total"].as_u64() > Some(0) && v["bytes_restored"] == v["bytes_total"]
        });
    }

    /// Waits for a status file written by the running restore (not a dead one's).
    fn wait_running(&self) {
        let pid = u64::from(self.child.0.as_ref().expect("running").id());
        self.wait_for("written by the new run", |v| v["pid"].as_u64() == Some(pid));
    }

    fn kill9(&mut self) {
        let mut child = self.child.take();
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    fn cutover(&self, extra: &[&str]) -> Output {
        let meta = self.path("target.img.rehydrate-meta");
        run(&[&["cutover", "--metadata", s(&meta)][..], extra].concat())
    }

    fn spawn_cutover(&self) -> Child {
        let meta = self.path("target.img.rehydrate-meta");
        rehydrate(&["cutover", "--metadata", s(&meta)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start rehydrate cutover")
    }

    /// The backup image with the application's writes applied.
    fn expected(&self) -> Vec<u8> {
        let mut want = self.image.clone();
        for (pattern, offset, len) in WRITES {
            want[offset as usize..(offset + len) as usize].fill(pattern);
        }
        want
    }

    /// The target holds nothing but backup data: every block is the backup's, or
    /// still unwritten (zeros, which are backup data only in the image's zero run).
    fn target_holds_only_backup_data(&self, complete: bool) {
        let target = std::fs::read(self.path("target.img")).unwrap();
        assert_eq!(target.len(), self.image.len());
        for (i, (got, want)) in target
            .chunks(BLOCK_BYTES)
            .zip(self.image.chunks(BLOCK_BYTES))
            .enumerate()
        {
            let unwritten = !complete && got.iter().all(|&b| b == 0);
            assert!(
                got == want || unwritten,
                "block {i} of the target holds data that is not the backup's"
            );
        }
    }
}

fn qemu_io(url: &str, commands: &[String]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(url).output().expect("run qemu-io");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("fail") && !stdout.contains("error"),
        "qemu-io {commands:?}: {stdout}{}",
        text(&out.stderr)
    );
    stdout
}

/// `read -P` of every write: the pseudo-volume serves the newest acknowledged write.
fn check_writes(url: &str) {
    let reads: Vec<String> = WRITES
        .iter()
        .map(|(p, o, l)| format!("read -P {p:#x} {o} {l}"))
        .collect();
    qemu_io(url, &reads);
}

fn qemu_img_compare(a: &str, b: &str) {
    require("qemu-img", "qemu-utils");
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", a, b])
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img compare {a} {b}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn writes_go_to_the_overlay_survive_kill_9_and_a_guarded_cutover_merges_them() {
    let mut o = Overlay::start();
    o.spawn("4MiB");
    let mut writes: Vec<String> = WRITES
        .iter()
        .map(|(p, off, l)| format!("write -P {p:#x} {off} {l}"))
        .collect();
    writes.push("flush".into());
    qemu_io(&o.url(), &writes);
    check_writes(&o.url());

    // Refused while the target is incomplete: one line, nothing changed.
    o.wait_running();
    let before = std::fs::read(o.path("target.img")).unwrap();
    let refused = one_line_error(&o.cutover(&[]));
    assert!(refused.contains("not completely restored"), "{refused}");
    assert!(refused.contains("nothing was changed"), "{refused}");
    assert_eq!(o.overlay_state(), "pseudo-volume");

    // kill -9 mid-restore (after a commit interval): the writes are still there, the
    // target holds only backup data.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(o.status()["bytes_restored"].as_u64() < o.status()["bytes_total"].as_u64());
    o.kill9();
    drop(before);
    o.target_holds_only_backup_data(false);
    o.spawn("4MiB");
    check_writes(&o.url());
    o.wait_running();
    assert_eq!(
        o.status()["overlay"]["regions"].as_u64(),
        Some(3072 + 1 + 17)
    );
    o.kill9();

    // Resumed at full speed: complete, and still nothing but backup data in the target.
    o.spawn("256MiB");
    o.wait_complete();
    o.target_holds_only_backup_data(true);
    check_writes(&o.url());

    // kill -9 during the merge, at later and later moments, until one run finds the
    // merge over; each run resumes and serves the same pseudo-volume.
    let mut seen = Vec::new();
    for delay_ms in 0..400 {
        let mut cutover = o.spawn_cutover();
        std::thread::sleep(Duration::from_millis(delay_ms));
        o.kill9();
        let _ = cutover.wait();
        o.spawn("256MiB");
        o.wait_running();
        let state = o.overlay_state();
        check_writes(&o.url());
        if !seen.contains(&state) {
            seen.push(state.clone());
        }
        if state == "merged" {
            break;
        }
    }
    assert!(
        seen.contains(&"merging".to_owned()) && seen.contains(&"merged".to_owned()),
        "no kill landed mid-merge, or no cutover finished: {seen:?}"
    );
    // Run once more: a merged restore says so.
    let again = o.cutover(&[]);
    assert_ok(&again, "cutover");
    assert!(text(&again.stdout).starts_with("cutover: merged"));

    let mut want = o.expected();
    std::fs::write(o.path("expected.img"), &want).unwrap();
    qemu_img_compare(s(&o.path("expected.img")), &o.url());
    qemu_img_compare(s(&o.path("expected.img")), s(&o.path("target.img")));

    // After the cutover the volume is the target: a new write lands there directly.
    qemu_io(&o.url(), &[format!("write -P 0x5a {} 8192", 9 * MIB)]);
    want[9 * MIB as usize..9 * MIB as usize + 8192].fill(0x5a);
    std::fs::write(o.path("expected.img"), &want).unwrap();
    qemu_img_compare(s(&o.path("expected.img")), s(&o.path("target.img")));
    eprintln!("overlay states seen after kill -9 during the cutover: {seen:?}");
}

#[test]
fn bad_overlays_and_a_missing_overlay_are_refused_and_change_nothing() {
    let mut o = Overlay::start();
    // No restore running: the cutover cannot reach one.
    let line = one_line_error(&o.cutover(&[]));
    assert!(line.contains("cannot reach the running restore"), "{line}");

    o.spawn("2MiB");
    qemu_io(&o.url(), &["write -P 0x77 0 65536".into(), "flush".into()]);
    o.wait_running();
    std::thread::sleep(Duration::from_millis(1500));
    o.kill9();
    let target = std::fs::read(o.path("target.img")).unwrap();
    let overlay = std::fs::read(o.path("overlay.img")).unwrap();
    let meta = std::fs::read(o.path("target.img.rehydrate-meta")).unwrap();

    // Without --overlay the application's writes would be lost.
    let line = o.refused(None);
    assert!(line.contains("belongs to an overlay restore"), "{line}");
    // A copy of the overlay is another file (the pin names the file itself).
    let copy = o.path("copy.img");
    std::fs::write(&copy, &overlay).unwrap();
    let line = o.refused(Some(&copy));
    assert!(
        line.contains("is not the overlay this restore was started with"),
        "{line}"
    );
    // Of the wrong size.
    let short = o.path("short.img");
    std::fs::write(&short, &overlay[..overlay.len() / 2]).unwrap();
    let line = o.refused(Some(&short));
    assert!(
        line.contains("holds 16777216 bytes but the volume has 33554432"),
        "{line}"
    );
    // Missing.
    let line = o.refused(Some(&o.path("gone.img")));
    assert!(line.contains("does not exist"), "{line}");
    // The overlay is the target.
    let line = o.refused(Some(&o.path("target.img")));
    assert!(line.contains("same file"), "{line}");
    for (name, bytes) in [
        ("target.img", &target),
        ("overlay.img", &overlay),
        ("target.img.rehydrate-meta", &meta),
    ] {
        assert!(
            std::fs::read(o.path(name)).unwrap() == *bytes,
            "{name} changed"
        );
    }

    // An in-place restore's metadata refuses an overlay.
    let inplace = o.path("inplace.img");
    let mut child = spawn_restore(&o.source(), &inplace, &["--rate-limit", "2MiB"]);
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let _ = child.wait();
    let args = o.restore_args("64MiB", Some(&o.path("other-overlay.img")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let line = one_line_error(&restore(&o.source(), &inplace, &args));
    assert!(line.contains("belongs to an in-place restore"), "{line}");
    assert!(!o.path("other-overlay.img").exists());

    // The right overlay resumes and serves the write.
    o.spawn("256MiB");
    qemu_io(&o.url(), &["read -P 0x77 0 65536".into()]);
}
