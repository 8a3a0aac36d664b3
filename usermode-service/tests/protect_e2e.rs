//! The point-in-time journal with real processes: `rehydrate protect` serving a volume
//! that `qemu-io` writes and flushes, `rehydrate mark`, `rehydrate serve` exporting each
//! point, `qemu-img compare` against a qcow2 reference replayed over the snapshot
//! (`qemu-img create -b base.img -F raw`), in-place recovery to X, then Y, then X again
//! (with new writes between), kill -9 of the protecting process and of the server, and
//! the refusals: an unknown point, a point inside a gap, a damaged segment.
#![cfg(unix)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rehydrate_backup::journal::map::{PointMap, Source};
use rehydrate_backup::journal::Journal;
use rehydrate_backup::VolumeName;
use rehydrate_nbd::PositionalIo;
use support::*;

const SIZE: usize = 16 << 20;

/// One test's files: the image, its untouched copy, the store, the control socket.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        for (tool, package) in [
            ("qemu-io", "qemu-utils"),
            ("qemu-img", "qemu-utils"),
            ("nbdinfo", "libnbd-bin"),
        ] {
            require(tool, package);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let data = make_image(&dir.path().join("disk.img"), SIZE);
        std::fs::write(dir.path().join("base.img"), data).expect("base copy");
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    fn control(&self) -> PathBuf {
        self.path("ctl.sock")
    }

    /// `rehydrate protect` on disk.img, listening.
    fn protect(&self, extra: &[&str]) -> Proc {
        let port = free_port();
        let target = self.path("disk.img");
        let store = self.store();
        let control = self.control();
        let export = format!("127.0.0.1:{port}");
        let mut child = rehydrate(
            &[
                &[
                    "protect",
                    "--target",
                    s(&target),
                    "--store",
                    s(&store),
                    "--volume",
                    "v",
                    "--export",
                    &export,
                    "--control",
                    s(&control),
                ][..],
                extra,
            ]
            .concat(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rehydrate protect");
        wait_listening(port, &mut child);
        Proc { child, port }
    }

    fn mark(&self, label: &str) -> (u64, String) {
        let out = run(&["mark", "--label", label, "--control", s(&self.control())]);
        assert_ok(&out, "mark");
        let line = text(&out.stdout);
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line}"))
                .to_owned()
        };
        (field("seq=").parse().expect("a sequence"), field("time="))
    }

    /// A qcow2 over base.img with `commands` replayed: the reference of a point.
    fn reference(&self, name: &str, commands: &[&str]) -> PathBuf {
        let file = self.path(name);
        let created = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b"])
            .arg(self.path("base.img"))
            .args(["-F", "raw"])
            .arg(&file)
            .output()
            .expect("qemu-img create");
        assert_ok(&created, "qemu-img create");
        qemu_io(&["-f", "qcow2", s(&file)], commands);
        file
    }

    fn points(&self) -> String {
        let out = run(&["points", "--store", s(&self.store()), "--volume", "v"]);
        assert_ok(&out, "points");
        text(&out.stdout)
    }
}

/// SIGTERM, then the process's last stdout line (it must exit 0).
fn stop(mut p: Proc) -> String {
    use std::io::Read;
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut o) = p.child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = p.child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = p.child.wait().expect("wait for protect");
    assert!(status.success(), "protect: {status}: {stderr}");
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("protect: stopped volume=v "), "{stdout}");
    last
}

/// qemu-io with `args` (image options) running `commands`, which must all succeed.
fn qemu_io(args: &[&str], commands: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(args);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.output().expect("qemu-io runs");
    assert_ok(&out, "qemu-io");
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("failed") && !stdout.contains("error"),
        "qemu-io {commands:?}: {stdout}"
    );
    stdout
}

fn nbd(port: u16, export: &str) -> String {
    format!("nbd://127.0.0.1:{port}/{export}")
}

/// Writes `commands` through the protect export.
fn write(p: &Proc, commands: &[&str]) {
    qemu_io(&["-f", "raw", &nbd(p.port, "v")], commands);
}

fn compare(reference: &Path, url: &str) -> Output {
    Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(reference)
        .arg(url)
        .output()
        .expect("qemu-img compare")
}

fn identical(reference: &Path, url: &str) {
    let out = compare(reference, url);
    assert_ok(
        &out,
        &format!("qemu-img compare {} {url}", reference.display()),
    );
}

fn identical_files(reference: &Path, raw: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(reference)
        .arg(raw)
        .output()
        .expect("qemu-img compare");
    assert_ok(&out, "qemu-img compare with the target");
}

/// In-place recovery of disk.img to `export`: returns the bytes it fetched.
fn recover(setup: &Setup, server: &Proc, export: &str) -> u64 {
    let out = restore(&nbd(server.port, export), &setup.path("disk.img"), &[]);
    summary(&out)["fetched_bytes"]
}

// The writes of each mark, cumulative.
const A: &[&str] = &["write -P 0x11 0 64k", "write -P 0x12 3M 200k", "flush"];
const B: &[&str] = &["write -P 0x21 32k 64k", "write -z 1M 1M", "flush"];
const C: &[&str] = &["write -P 0x31 5M 512k", "discard 6M 64k", "flush"];
/// What C leaves: a trim reads as zeros on the protected volume.
const C_REF: &[&str] = &["write -P 0x31 5M 512k", "write -z 6M 64k"];
const D: &[&str] = &["write -P 0x41 9M 128k", "flush"];

#[test]
fn marks_match_qcow2_references_and_recovery_in_place_fetches_only_what_changed() {
    let setup = Setup::new();
    let protect = setup.protect(&[]);
    write(&protect, A);
    let (_, _) = setup.mark("a");
    write(&protect, B);
    let (_, time_b) = setup.mark("b");
    write(&protect, C);
    let (seq_c, _) = setup.mark("c");
    let listed = setup.points();
    assert!(
        listed.contains("v@mark:a") && listed.contains("v@mark:c"),
        "{listed}"
    );

    let ref_a = setup.reference("a.qcow2", A);
    let ref_b = setup.reference("b.qcow2", &[A, B].concat());
    let ref_c = setup.reference("c.qcow2", &[A, B, C_REF].concat());
    let server = serve(&setup.store());
    // Served at once while protect still runs, by mark, time and sequence.
    identical(&ref_a, &nbd(server.port, "v@mark:a"));
    identical(&ref_b, &nbd(server.port, &format!("v@time:{time_b}")));
    identical(&ref_c, &nbd(server.port, &format!("v@1+{seq_c}")));
    assert!(!compare(&ref_a, &nbd(server.port, "v@mark:b"))
        .status
        .success());

    let stopped = stop(protect);
    assert!(stopped.contains("clean=true"), "{stopped}");

    // Recover to a: only the regions written after a are fetched.
    let fetched = recover(&setup, &server, "v@mark:a");
    assert!(fetched > 0 && fetched <= 2 * (1 << 20), "fetched {fetched}");
    identical_files(&ref_a, &setup.path("disk.img"));

    // Protect again (it journals what the recovery changed), write, mark d, recover to b.
    let protect = setup.protect(&[]);
    write(&protect, D);
    setup.mark("d");
    let ref_d = setup.reference("d.qcow2", &[A, D].concat());
    identical(&ref_d, &nbd(server.port, "v@mark:d"));
    stop(protect);
    let fetched = recover(&setup, &server, "v@mark:b");
    assert!(fetched > 0 && fetched <= 2 * (1 << 20), "fetched {fetched}");
    identical_files(&ref_b, &setup.path("disk.img"));

    // And back to a, after protect ran once more over the recovered volume.
    let protect = setup.protect(&[]);
    stop(protect);
    let fetched = recover(&setup, &server, "v@mark:a");
    assert!(fetched <= 2 * (1 << 20), "fetched {fetched}");
    identical_files(&ref_a, &setup.path("disk.img"));
    // Every point served before is served the same after all this.
    identical(&ref_c, &nbd(server.port, "v@mark:c"));
    identical(&ref_d, &nbd(server.port, "v@mark:d"));
}

/// Writes of 64 KiB at distinct offsets from 8 MiB, pattern `i + 1`.
fn numbered_writes(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            format!(
                "write -P {} {} 64k",
                (i % 250) + 1,
                (8 << 20) + i * (64 << 10)
            )
        })
        .collect()
}

/// The journal's content at its head, for the bytes `[offset, offset + len)`, or `None`
/// where no record wrote them.
fn journaled(store: &Path, offset: u64, len: u64) -> Option<Vec<u8>> {
    let journal = Journal::open(store, &VolumeName::new("v").expect("name"), 1).expect("journal");
    let map = PointMap::build(&journal, journal.head());
    let files = journal.files();
    let mut out = vec![0u8; len as usize];
    for (range, source) in map.lookup(offset..offset + len) {
        let part = &mut out[(range.start - offset) as usize..(range.end - offset) as usize];
        match source? {
            Source::Zero => part.fill(0),
            Source::Data { segment, at } => files[segment as usize]
                .read_exact_at(part, at)
                .expect("read the journal"),
        }
    }
    Some(out)
}

#[test]
fn kill_9_mid_run_keeps_acknowledged_writes_and_points_and_bad_points_are_refused() {
    let setup = Setup::new();
    // Small segments, so a damaged one is not the last.
    let protect = setup.protect(&["--sync", "--segment-size", "256KiB"]);
    write(&protect, A);
    let (seq_a, _) = setup.mark("a");
    let ref_a = setup.reference("a.qcow2", A);

    // Sync mode: qemu-io writes; kill -9 protect once some writes were acknowledged.
    // Line-buffered, so each write's line arrives when the write is acknowledged.
    let mut qemu = Command::new("stdbuf");
    qemu.args(["-oL", "qemu-io", "-f", "raw", &nbd(protect.port, "v")]);
    for c in numbered_writes(120) {
        qemu.args(["-c", &c]);
    }
    let mut qemu = qemu
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io");
    let mut lines = BufReader::new(qemu.stdout.take().expect("stdout")).lines();
    let mut acknowledged = Vec::new();
    let mut protect = protect;
    // Bounded by qemu-io's output.
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("wrote 65536/65536 bytes at offset ") {
            acknowledged.push(rest.trim().parse::<u64>().expect("offset"));
            if acknowledged.len() == 20 {
                protect.child.kill().expect("kill -9 protect");
                let _ = protect.child.wait();
            }
        }
    }
    let _ = qemu.wait();
    assert!(acknowledged.len() >= 20, "{acknowledged:?}");
    // Every acknowledged write's record is in the journal.
    for &offset in &acknowledged {
        let i = ((offset - (8 << 20)) / (64 << 10)) as usize;
        let data = journaled(&setup.store(), offset, 64 << 10)
            .unwrap_or_else(|| panic!("acknowledged write at {offset} is not journaled"));
        assert!(
            data.iter().all(|&b| b == (i % 250) as u8 + 1),
            "write at {offset}"
        );
    }

    // Kill -9 the server mid-run too; a new one serves every point as before.
    let server = serve(&setup.store());
    identical(&ref_a, &nbd(server.port, "v@mark:a"));
    let mut server = server;
    server.child.kill().expect("kill -9 serve");
    let _ = server.child.wait();
    let server = serve(&setup.store());
    identical(&ref_a, &nbd(server.port, "v@mark:a"));

    // Protect again: what the kill left unjournaled is read back inside a gap.
    let protect = setup.protect(&["--sync", "--segment-size", "256KiB"]);
    write(&protect, &["write -P 0x55 12M 64k", "flush"]);
    let (seq_b, _) = setup.mark("b");
    let stopped = stop(protect);
    assert!(
        stopped.contains("gaps=1") && stopped.contains("clean=true"),
        "{stopped}"
    );
    let raw = setup.path("b.raw");
    std::fs::copy(setup.path("disk.img"), &raw).expect("copy");
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&raw)
        .arg(nbd(server.port, "v@mark:b"))
        .output()
        .expect("compare");
    assert_ok(&out, "mark b is the volume as protect left it");

    // Refusals, each one line: an unknown point, a point inside the gap.
    let listed = setup.points();
    let gap = listed
        .lines()
        .find_map(|l| l.strip_prefix("gap v@1: sequences "))
        .unwrap_or_else(|| panic!("no gap listed: {listed}"));
    let inside: u64 = gap
        .split(' ')
        .next()
        .expect("begin")
        .parse::<u64>()
        .expect("seq")
        + 1;
    let target = setup.path("other.img");
    for (export, says) in [
        ("v@mark:nope".to_owned(), "has no mark \"nope\""),
        (format!("v@1+{inside}"), "inside a gap"),
        (format!("v@1+{}", seq_b + 100), "past the end"),
    ] {
        let out = restore(&nbd(server.port, &export), &target, &[]);
        let line = one_line_error(&out);
        assert!(line.contains(says), "{export}: {line}");
    }

    // A damaged segment: points before it are served, those after refused, clearly.
    let journal_dir = setup.store().join("volumes/v/journal/00000001");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&journal_dir)
        .expect("journal dir")
        .map(|e| e.expect("entry").path())
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let first_seq = |p: &Path| -> u64 {
        p.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("seq")
    };
    let victim = segments
        .iter()
        .take(segments.len() - 1)
        .find(|p| first_seq(p) > seq_a)
        .expect("a sealed segment after mark a")
        .clone();
    let mut bytes = std::fs::read(&victim).expect("segment");
    bytes[96 + 56 + 5] ^= 0xFF;
    std::fs::write(&victim, bytes).expect("damage");
    drop(server);
    let server = serve(&setup.store());
    identical(&ref_a, &nbd(server.port, "v@mark:a"));
    let out = restore(&nbd(server.port, "v@mark:b"), &target, &[]);
    let line = one_line_error(&out);
    assert!(
        line.contains("damaged at sequence") && line.contains("points before it are still served"),
        "{line}"
    );
    assert!(
        setup.points().contains("damage: "),
        "points shows the damage"
    );
    // Protect refuses to continue a damaged journal, naming it.
    let export = format!("127.0.0.1:{}", free_port());
    let out = run(&[
        "protect",
        "--target",
        s(&setup.path("disk.img")),
        "--store",
        s(&setup.store()),
        "--volume",
        "v",
        "--export",
        &export,
        "--control",
        s(&setup.control()),
    ]);
    let line = one_line_error(&out);
    assert!(line.contains("damaged at sequence"), "{line}");
}
