//! Copy-on-read disaster recovery (technique T5) with real processes: `rehydrate dr
//! primary` serving the volume to fio and qemu-io over NBD, `rehydrate dr secondary`
//! serving its copy to nbdcopy while the initial sync runs, each side killed with
//! SIGKILL and restarted, and at quiet the two volumes compared byte for byte; a DR copy
//! refuses another primary, a site started on another volume than its metadata names is
//! refused with nothing changed, and promotion is refused while regions are missing.
#![cfg(target_os = "linux")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const VOLUME_BYTES: usize = 24 * MIB as usize;

struct Sites {
    dir: tempfile::TempDir,
    primary_img: PathBuf,
    dr_img: PathBuf,
    listen: u16,
    dr_export: u16,
    primary_export: u16,
    primary: Running,
    secondary: Running,
}

impl Sites {
    fn new() -> Sites {
        let dir = tempfile::tempdir().unwrap();
        let primary_img = dir.path().join("primary.img");
        let dr_img = dir.path().join("dr.img");
        make_image(&primary_img, VOLUME_BYTES);
        Sites {
            primary_img,
            dr_img,
            dir,
            listen: free_port(),
            dr_export: free_port(),
            primary_export: free_port(),
            primary: Running(None),
            secondary: Running(None),
        }
    }

    fn start_secondary(&mut self) {
        let child = rehydrate(&[
            "dr",
            "secondary",
            "--target",
            s(&self.dr_img),
            "--listen",
            &format!("127.0.0.1:{}", self.listen),
            "--export",
            &format!("127.0.0.1:{}", self.dr_export),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        self.secondary = Running(Some(child));
        wait_listening(self.listen, self.secondary.get());
    }

    fn start_primary(&mut self, sync_rate: Option<&str>) {
        let mut args = vec![
            "dr".to_string(),
            "primary".into(),
            "--target".into(),
            s(&self.primary_img).into(),
            "--export".into(),
            format!("127.0.0.1:{}", self.primary_export),
            "--peer".into(),
            format!("127.0.0.1:{}", self.listen),
        ];
        if let Some(rate) = sync_rate {
            args.extend(["--sync-rate".into(), rate.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = rehydrate(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.primary = Running(Some(child));
        wait_listening(self.primary_export, self.primary.get());
    }

    fn kill(running: &mut Running) {
        let mut c = running.take();
        c.kill().unwrap(); // SIGKILL
        let _ = c.wait();
    }

    fn status(&self, target: &Path) -> String {
        let out = run(&["dr", "status", "--target", s(target)]);
        assert_ok(&out, "dr status");
        text(&out.stdout).trim().to_owned()
    }

    /// Waits until the DR site holds a region; its status line then.
    /// Both sites with the sync slowed to 1 MiB/s (far from complete for the length of a
    /// test), once it began; and the DR site's status then.
    fn syncing_slowly() -> (Sites, String) {
        let mut sites = Sites::new();
        sites.start_secondary();
        sites.start_primary(Some("1MiB"));
        let status = sites.wait_sync_began();
        (sites, status)
    }

    fn wait_sync_began(&self) -> String {
        let start = Instant::now();
        loop {
            let st = self.try_status(&self.dr_img).unwrap_or_default();
            if present(&st) > 0 {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the sync never began: {st}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The status line, or `None` while the site has no metadata yet (a fresh DR site
    /// writes it once the first primary attached).
    fn try_status(&self, target: &Path) -> Option<String> {
        let out = run(&["dr", "status", "--target", s(target)]);
        out.status
            .success()
            .then(|| text(&out.stdout).trim().to_owned())
    }

    fn wait_complete(&mut self) {
        let start = Instant::now();
        loop {
            let p = self.status(&self.primary_img);
            let d = self.status(&self.dr_img);
            if p.contains("complete=true") && d.contains("complete=true") {
                return;
            }
            for r in [&mut self.primary, &mut self.secondary] {
                if let Some(Ok(Some(code))) = r.0.as_mut().map(|c| c.try_wait()) {
                    panic!("a site exited: {code}");
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never complete: {p} / {d}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn primary_url(&self) -> String {
        format!("nbd://127.0.0.1:{}", self.primary_export)
    }

    fn dr_url(&self) -> String {
        format!("nbd://127.0.0.1:{}", self.dr_export)
    }
}

fn qemu_io(url: &str, commands: &[&str]) {
    require("qemu-io", "qemu-utils");
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in commands {
        c.args(["-c", cmd]);
    }
    let out = c.arg(url).stdin(Stdio::null()).output().unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && !all.contains("error"),
        "qemu-io {commands:?}: {all}"
    );
}

fn nbdcopy(url: &str, to: &Path) {
    require("nbdcopy", "libnbd-bin");
    let out = Command::new("nbdcopy").arg(url).arg(to).output().unwrap();
    assert_ok(&out, "nbdcopy");
}

fn present(status: &str) -> u64 {
    status
        .split_whitespace()
        .find_map(|f| f.strip_prefix("present="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_dr_copy_is_readable_during_its_sync_and_equals_the_primary_after_kills() {
    require("fio", "fio");
    let mut sites = Sites::new();
    sites.start_secondary();
    // 24 MiB at 3 MiB/s: the initial sync takes about eight seconds.
    sites.start_primary(Some("3MiB"));
    wait_listening(sites.dr_export, sites.secondary.get());

    // fio writes (and verifies) 4 MiB of the primary while nbdcopy reads the whole DR
    // copy, once the initial sync began and long before it ended (the reads fetch
    // what they miss, so they end it sooner).
    let before = sites.wait_sync_began();
    assert!(before.contains("complete=false"), "{before}");
    let fio = Command::new("fio")
        .current_dir(sites.dir.path())
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", sites.primary_url()),
            "--rw=randwrite",
            "--bs=4k",
            "--size=4m",
            "--offset=8m",
            "--iodepth=4",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let early = sites.dir.path().join("early.img");
    nbdcopy(&sites.dr_url(), &early);
    let fio = fio.wait_with_output().unwrap();
    assert_ok(&fio, "fio with verify on the primary's export");
    // What fio did not touch reads back as the primary holds it (fetched on demand).
    let primary_now = std::fs::read(&sites.primary_img).unwrap();
    let early = std::fs::read(&early).unwrap();
    let (lo, hi) = (8 * MIB as usize, 12 * MIB as usize);
    assert!(
        early[..lo] == primary_now[..lo],
        "the DR read before fio's range"
    );
    assert!(
        early[hi..] == primary_now[hi..],
        "the DR read after fio's range"
    );

    // The DR site dies mid-sync and comes back; the primary keeps serving writes.
    Sites::kill(&mut sites.secondary);
    qemu_io(&sites.primary_url(), &["write -P 0x5a 1M 256k", "flush"]);
    sites.start_secondary();
    qemu_io(
        &sites.primary_url(),
        &["write -P 0x6b 2M 64k", "write -P 0x7c 20M 128k"],
    );

    // Then the primary dies (the last write unflushed) and comes back at full speed.
    std::thread::sleep(Duration::from_millis(500));
    Sites::kill(&mut sites.primary);
    sites.start_primary(None);
    qemu_io(&sites.primary_url(), &["write -P 0x11 3M 4k", "flush"]);

    sites.wait_complete();
    let p = std::fs::read(&sites.primary_img).unwrap();
    let d = std::fs::read(&sites.dr_img).unwrap();
    assert!(
        p == d,
        "at quiet the DR copy equals the primary byte for byte"
    );
    let late = sites.dir.path().join("late.img");
    nbdcopy(&sites.dr_url(), &late);
    assert!(
        std::fs::read(&late).unwrap() == p,
        "the DR export serves the primary's data"
    );
}

#[test]
fn a_dr_copy_refuses_another_primary_and_an_incomplete_copy_is_not_promoted() {
    // Slow: still far from complete when both stop.
    let (mut sites, _) = Sites::syncing_slowly();

    // Another primary (another volume of the same size) is refused by the DR site.
    let other = sites.dir.path().join("other.img");
    make_image(&other, VOLUME_BYTES);
    let line = primary_refused(&sites, &other);
    assert!(
        line.contains("refused") && line.contains("another primary"),
        "{line}"
    );

    Sites::kill(&mut sites.primary);
    Sites::kill(&mut sites.secondary);
    let status = sites.status(&sites.dr_img);
    assert!(status.contains("complete=false"), "{status}");
    let out = run(&["dr", "promote", "--target", s(&sites.dr_img)]);
    let line = one_line_error(&out);
    assert!(line.contains("refused to promote"), "{line}");
    assert!(sites.status(&sites.dr_img).contains("promoted=false"));

    let out = run(&["dr", "promote", "--target", s(&sites.dr_img), "--force"]);
    assert_ok(&out, "forced promotion");
    assert!(
        text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    assert!(sites.status(&sites.dr_img).contains("promoted=true"));
    // A promoted copy takes no more stream.
    assert!(secondary_refused(&sites).contains("promoted"));
}

#[test]
fn one_process_per_volume_a_second_site_and_a_promotion_under_a_running_secondary_are_refused() {
    let (sites, status) = Sites::syncing_slowly();
    let began = present(&status);
    // Each must end at once with the reason; one that runs on is stopped and reported.
    let in_use = |args: &[&str], what: &str| {
        let mut child = rehydrate(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} was not refused: it kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let line = one_line_error(&child.wait_with_output().unwrap());
        assert!(line.contains("in use by another process"), "{what}: {line}");
    };

    // A second DR site on the same volume, on ports of its own.
    in_use(&strs(&secondary_args(&sites)), "a second secondary");
    // A second primary on the primary's volume.
    in_use(
        &strs(&primary_args(&sites, &sites.primary_img)),
        "a second primary",
    );
    // A promotion, even forced, while the secondary runs: its next commit would undo it.
    in_use(
        &["dr", "promote", "--target", s(&sites.dr_img), "--force"],
        "a promotion under a running secondary",
    );
    assert!(sites.status(&sites.dr_img).contains("promoted=false"));

    // The running pair went on undisturbed.
    let start = Instant::now();
    while present(&sites.status(&sites.dr_img)) <= began {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the sync stopped after the refusals"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    qemu_io(&sites.primary_url(), &["write -P 0x3c 5M 64k", "flush"]);
    // The DR copy serves it once the stream brought it (or a read fetched it).
    let start = Instant::now();
    loop {
        let out = Command::new("qemu-io")
            .args(["-r", "-f", "raw", "-c", "read -P 0x3c 5M 64k"])
            .arg(sites.dr_url())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        if out.status.success() && !all.contains("Pattern verification failed") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the DR copy never served the primary's write: {all}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The DR copy, the primary's volume and both metadata files, to compare after refusals.
fn site_files(sites: &Sites) -> Vec<(PathBuf, Vec<u8>)> {
    [&sites.dr_img, &sites.primary_img]
        .into_iter()
        .flat_map(|img| {
            let mut meta = img.as_os_str().to_owned();
            meta.push(".dr-meta");
            [img.clone(), PathBuf::from(meta)]
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn assert_unchanged(before: &[(PathBuf, Vec<u8>)], what: &str) {
    for (path, bytes) in before {
        assert!(
            std::fs::read(path).unwrap() == *bytes,
            "{what}: {} changed",
            path.display()
        );
    }
}

/// `dr secondary` on the DR copy's volume, on ports of its own.
fn secondary_args(sites: &Sites) -> Vec<String> {
    vec![
        "dr".into(),
        "secondary".into(),
        "--target".into(),
        s(&sites.dr_img).into(),
        "--listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--export".into(),
        format!("127.0.0.1:{}", free_port()),
    ]
}

/// `dr primary` on `target` against the DR site, on an export port of its own.
fn primary_args(sites: &Sites, target: &Path) -> Vec<String> {
    vec![
        "dr".into(),
        "primary".into(),
        "--target".into(),
        s(target).into(),
        "--export".into(),
        format!("127.0.0.1:{}", free_port()),
        "--peer".into(),
        format!("127.0.0.1:{}", sites.listen),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `rehydrate dr secondary` on the DR copy's volume, run to its end (a refusal).
fn secondary_refused(sites: &Sites) -> String {
    one_line_error(&rehydrate(&strs(&secondary_args(sites))).output().unwrap())
}

/// `rehydrate dr primary` on `target` against the DR site, run to its end (a refusal).
fn primary_refused(sites: &Sites, target: &Path) -> String {
    one_line_error(
        &rehydrate(&strs(&primary_args(sites, target)))
            .output()
            .unwrap(),
    )
}

#[test]
fn a_site_started_on_another_volume_than_its_metadata_names_is_refused_and_nothing_changes() {
    let (mut sites, _) = Sites::syncing_slowly();
    Sites::kill(&mut sites.primary);
    Sites::kill(&mut sites.secondary);
    let dir = sites.dir.path().to_owned();
    let aside = |img: &Path| {
        let to = dir.join(format!(
            "{}.aside",
            img.file_name().unwrap().to_str().unwrap()
        ));
        std::fs::rename(img, &to).unwrap();
        to
    };

    // The DR copy replaced by another file of the same size (its metadata kept): its
    // present map says nothing about that file.
    let dr_aside = aside(&sites.dr_img);
    make_image(&sites.dr_img, VOLUME_BYTES);
    let before = site_files(&sites);
    let line = secondary_refused(&sites);
    assert!(line.contains("belongs to another volume"), "{line}");
    assert_unchanged(&before, "a DR site on another file of the same size");

    std::fs::rename(&dr_aside, &sites.dr_img).unwrap();

    // The DR copy itself grown (the same file, another size).
    let grow = |len: usize| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&sites.dr_img)
            .and_then(|f| f.set_len(len as u64))
            .unwrap()
    };
    grow(VOLUME_BYTES + MIB as usize);
    let before = site_files(&sites);
    let line = secondary_refused(&sites);
    assert!(line.contains("bytes but its DR metadata says"), "{line}");
    assert_unchanged(&before, "a DR site on its own file grown");
    grow(VOLUME_BYTES);

    // The primary's volume replaced by another of the same size (its metadata kept):
    // its durable sent map would skip regions the DR copy never got from that volume.
    sites.start_secondary();
    let primary_aside = aside(&sites.primary_img);
    make_image(&sites.primary_img, VOLUME_BYTES);
    let before = site_files(&sites);
    let line = primary_refused(&sites, &sites.primary_img);
    assert!(line.contains("belongs to another volume"), "{line}");
    assert_unchanged(&before, "a primary on another volume of the same size");
    std::fs::rename(&primary_aside, &sites.primary_img).unwrap();

    // A primary with a volume of its own of another size: the DR site refuses it.
    let smaller = dir.join("smaller.img");
    make_image(&smaller, VOLUME_BYTES / 2);
    let before = site_files(&sites);
    let line = primary_refused(&sites, &smaller);
    assert!(
        line.contains("refused") && line.contains("size differs"),
        "{line}"
    );
    assert_unchanged(&before, "a primary of another size");

    // The right pair still works from where it was.
    sites.start_primary(None);
    sites.wait_complete();
    assert!(
        std::fs::read(&sites.primary_img).unwrap() == std::fs::read(&sites.dr_img).unwrap(),
        "the DR copy equals the primary after the refusals"
    );
}

#[test]
fn a_new_dr_copy_on_a_file_that_holds_data_is_refused_unless_forced() {
    let sites = Sites::new();
    // Somebody's data where the DR copy is to go, and no DR metadata beside it.
    let held = make_image(&sites.dr_img, VOLUME_BYTES / 3 + 4096);
    let line = secondary_refused(&sites);
    assert!(
        line.contains("already holds") && line.contains("--force"),
        "{line}"
    );
    assert!(
        std::fs::read(&sites.dr_img).unwrap() == held,
        "the file is untouched"
    );
    let mut meta = sites.dr_img.as_os_str().to_owned();
    meta.push(".dr-meta");
    assert!(!Path::new(&meta).exists(), "no DR metadata was written");

    // Asked for, the file becomes the DR copy of the primary, at its size.
    let mut sites = sites;
    let mut args = secondary_args(&sites);
    args[5] = format!("127.0.0.1:{}", sites.listen);
    args[7] = format!("127.0.0.1:{}", sites.dr_export);
    args.push("--force".into());
    let child = rehydrate(&strs(&args))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sites.secondary = Running(Some(child));
    wait_listening(sites.listen, sites.secondary.get());
    sites.start_primary(None);
    sites.wait_complete();
    assert!(
        std::fs::read(&sites.dr_img).unwrap() == std::fs::read(&sites.primary_img).unwrap(),
        "the forced copy equals the primary"
    );
}
