//! The live export (`rehydrate restore --export`) against real clients while the restore
//! still runs (paced with `--rate-limit` so the overlap is real): qemu-io, qemu-img,
//! nbdcopy, nbdinfo, fio's nbd engine; kill -9 while clients write and flush; SIGTERM;
//! bad input. Slow: real processes and real data, grouped in this file.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const IMAGE_BYTES: usize = 64 * MIB as usize;

/// A backed-up, served image and a live restore of it.
struct Live {
    dir: tempfile::TempDir,
    image: Vec<u8>,
    _server: Proc,
    source_port: u16,
    export_port: u16,
    child: Option<Child>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Live {
    fn start(rate: &str) -> Live {
        let dir = tempfile::tempdir().unwrap();
        let image = make_image(&dir.path().join("disk.img"), IMAGE_BYTES);
        backup(
            &dir.path().join("disk.img"),
            &dir.path().join("store"),
            "sys",
        );
        let server = serve(&dir.path().join("store"));
        let mut live = Live {
            source_port: server.port,
            _server: server,
            export_port: free_port(),
            image,
            child: None,
            dir,
        };
        live.spawn(rate);
        live
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (or restarts) the restore with its live export.
    fn spawn(&mut self, rate: &str) {
        let child = spawn_restore(
            &format!("nbd://127.0.0.1:{}/sys", self.source_port),
            &self.path("target.img"),
            &[
                "--export",
                &format!("127.0.0.1:{}", self.export_port),
                "--rate-limit",
                rate,
                "--status-file",
                s(&self.path("status.json")),
                "--timeline",
                s(&self.path("timeline.svg")),
            ],
        );
        let mut child = child;
        wait_listening(self.export_port, &mut child);
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("nbd://127.0.0.1:{}/sys", self.export_port)
    }

    fn status(&self) -> serde_json::Value {
        read_status(&self.path("status.json"))
    }

    fn restoring(&self) -> bool {
        let v = self.status();
        v["phase"] == "restoring" && v["bytes_restored"].as_u64() < v["bytes_total"].as_u64()
    }

    /// SIGTERM, then the restore's output.
    fn stop(&mut self) -> std::process::Output {
        let child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait_with_output().unwrap()
    }

    /// Waits for the restore to finish on its own (it then serves until stopped).
    fn wait_complete(&self) {
        let start = Instant::now();
        while self.status()["bytes_restored"] != self.status()["bytes_total"]
            || self.status()["bytes_total"] == 0
        {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "never completed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tool(program: &str, package: &str, args: &[&str]) -> String {
    require(program, package);
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `qemu-io -f raw -c CMD... URL`.
fn qemu_io(url: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(url);
    tool("qemu-io", "qemu-utils", &args)
}

/// Writes of patterns at unaligned offsets and sizes (qemu aligns them to the 512-byte
/// minimum block itself), each also applied to `reference`.
const WRITES: [(u64, u64, u8); 6] = [
    (1000, 5000, 0xa1),
    (4096 * 300 + 7, 70_001, 0xb2),
    (17 * MIB + 511, 1, 0xc3),
    (40 * MIB - 3, 9000, 0xd4),
    (63 * MIB + 100, MIB - 100, 0xe5),
    (20 * MIB, 2 * MIB, 0x00),
];

#[test]
fn qemu_io_unaligned_writes_mid_restore_read_back_and_the_final_target_matches() {
    let mut live = Live::start("8MiB");
    let mut reference = live.image.clone();
    for (offset, len, pattern) in WRITES {
        let w = format!("write -P {pattern} {offset} {len}");
        let r = format!("read -P {pattern} {offset} {len}");
        qemu_io(&live.url(), &[&w, "flush", &r]);
        reference[offset as usize..(offset + len) as usize].fill(pattern);
    }
    assert!(live.restoring(), "the writes overlapped the restore");
    // Reads of the whole volume mid-restore see the writes over the backup.
    let copy = live.path("copy.img");
    tool("nbdcopy", "libnbd-bin", &[&live.url(), s(&copy)]);
    assert!(
        std::fs::read(&copy).unwrap() == reference,
        "nbdcopy mid-restore"
    );
    live.wait_complete();
    let out = live.stop();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("restore: complete "),
        "{}",
        text(&out.stdout)
    );
    std::fs::write(live.path("reference.img"), &reference).unwrap();
    tool(
        "qemu-img",
        "qemu-utils",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            s(&live.path("reference.img")),
            s(&live.path("target.img")),
        ],
    );
    let svg = std::fs::read_to_string(live.path("timeline.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("restored bytes"));
}

#[test]
fn qemu_img_convert_and_nbdinfo_map_mid_restore_see_the_backup() {
    let live = Live::start("4MiB");
    let copy = live.path("convert.img");
    tool(
        "qemu-img",
        "qemu-utils",
        &["convert", "-f", "raw", "-O", "raw", &live.url(), s(&copy)],
    );
    assert!(
        std::fs::read(&copy).unwrap() == live.image,
        "qemu-img convert mid-restore"
    );
    let map = tool("nbdinfo", "libnbd-bin", &["--map", "--json", &live.url()]);
    assert!(live.restoring(), "the map was taken mid-restore");
    let extents: serde_json::Value = serde_json::from_str(&map).unwrap();
    let mut covered = 0u64;
    let mut zero_bytes = 0u64;
    for e in extents.as_array().unwrap() {
        let (offset, len, ty) = (
            e["offset"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            e["type"].as_u64().unwrap(),
        );
        assert_eq!(offset, covered);
        covered += len;
        if ty & 2 != 0 {
            // Truthful: what is reported as zeros reads as zeros.
            assert!(live.image[offset as usize..(offset + len) as usize]
                .iter()
                .all(|&b| b == 0));
            zero_bytes += len;
        }
    }
    assert_eq!(covered, IMAGE_BYTES as u64);
    assert!(
        zero_bytes >= 8 * MIB,
        "the zero quarter is reported: {zero_bytes}"
    );
}

#[test]
fn fio_with_crc32c_verify_over_the_live_export_mid_restore() {
    let live = Live::start("8MiB");
    require("fio", "fio");
    // fio leaves its verify state file in its working directory: keep it in the test's.
    let out = Command::new("fio")
        .current_dir(live.dir.path())
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", live.url()),
            "--rw=randwrite",
            "--bs=4k",
            "--size=16m",
            "--offset=8m",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        !stdout.contains("verify:") || !stdout.contains("bad"),
        "{stdout}"
    );
    assert!(live.restoring(), "fio ran while the restore ran");
}

#[test]
fn kill_9_while_clients_write_and_flush_then_resume_keeps_every_flushed_write() {
    let mut live = Live::start("4MiB");
    // Flushed writes, spread over restored and missing regions.
    let flushed: Vec<(u64, u64, u8)> = (0..8)
        .map(|i| (i * 7 * MIB + 4096 * i, 64 * 1024, 0x10 + i as u8))
        .collect();
    for &(offset, len, p) in &flushed {
        qemu_io(
            &live.url(),
            &[&format!("write -P {p} {offset} {len}"), "flush"],
        );
    }
    // A write left unflushed when the kill comes: it may or may not survive.
    qemu_io(&live.url(), &[&format!("write -P 0x77 {} 4096", 50 * MIB)]);
    std::thread::sleep(Duration::from_millis(1500));
    let restored_before = live.status()["bytes_restored"].as_u64().unwrap();
    let mut child = live.child.take().unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(restored_before < IMAGE_BYTES as u64, "killed mid-restore");

    live.spawn("1GiB");
    live.wait_complete();
    let out = live.stop();
    let fields = text(&out.stdout);
    assert!(
        out.status.success() && fields.starts_with("restore: complete "),
        "{fields}\n{}",
        text(&out.stderr)
    );
    let num = |k: &str| -> u64 {
        fields
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    // Nothing durable was fetched twice: this run fetched at most what was not resumed.
    assert!(num("resumed_bytes") > 0);
    assert!(
        num("fetched_bytes") + num("zero_bytes") + num("resumed_bytes") <= IMAGE_BYTES as u64 + MIB,
        "{fields}"
    );
    let target = std::fs::read(live.path("target.img")).unwrap();
    for &(offset, len, p) in &flushed {
        assert!(
            target[offset as usize..(offset + len) as usize]
                .iter()
                .all(|&b| b == p),
            "flushed write at {offset} lost"
        );
    }
    let odd = &target[(50 * MIB) as usize..(50 * MIB + 4096) as usize];
    let backup = &live.image[(50 * MIB) as usize..(50 * MIB + 4096) as usize];
    assert!(
        odd.iter().all(|&b| b == 0x77) || odd == backup,
        "neither the write nor the backup"
    );
    // Everything else is the backup's data.
    let mut expected = live.image.clone();
    for &(offset, len, p) in &flushed {
        expected[offset as usize..(offset + len) as usize].fill(p);
    }
    expected[(50 * MIB) as usize..(50 * MIB + 4096) as usize].copy_from_slice(odd);
    assert!(target == expected, "data nobody wrote");
}

#[test]
fn bad_input_is_refused_and_the_volume_keeps_working() {
    let live = Live::start("4MiB");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = format!("127.0.0.1:{}", live.export_port);
        let c = rehydrate_nbd::Client::connect(addr.as_str(), "sys")
            .await
            .unwrap();
        assert!(c
            .info()
            .description
            .starts_with("rehydrate live restore of sys@1"));
        // Past the end: refused by the client before sending, and by the server when
        // sent raw (the nbd crate's own tests cover the raw form).
        assert!(c.write(IMAGE_BYTES as u64, vec![1u8; 512]).await.is_err());
        // Misaligned: served by read-modify-write of the partial sectors, even two
        // writes to different bytes of one sector at once.
        let (a, b) = tokio::join!(c.write(100, vec![1u8; 50]), c.write(300, vec![2u8; 700]));
        a.unwrap();
        b.unwrap();
        let mut want = live.image[..2048].to_vec();
        want[100..150].fill(1);
        want[300..1000].fill(2);
        assert_eq!(c.read(0, 2048).await.unwrap(), want);
        assert_eq!(c.read(101, 3).await.unwrap(), vec![1u8; 3]);
        c.write_zeroes(4090, 20).await.unwrap();
        assert_eq!(c.read(4090, 20).await.unwrap(), vec![0u8; 20]);
        assert_eq!(c.read(4080, 10).await.unwrap(), live.image[4080..4090]);
        assert_eq!(c.read(4110, 10).await.unwrap(), live.image[4110..4120]);
        // Aligned requests still work.
        assert_eq!(c.read(8192, 4096).await.unwrap(), live.image[8192..12288]);
        assert!(matches!(
            rehydrate_nbd::Client::connect(addr.as_str(), "nope").await,
            Err(rehydrate_nbd::Error::UnknownExport { .. })
        ));
    });
    // A second restore of the same target is refused, naming the first.
    let pid = live.child.as_ref().unwrap().id();
    let out = restore(
        &format!("nbd://127.0.0.1:{}/sys", live.source_port),
        &live.path("target.img"),
        &["--status-file", s(&live.path("st2"))],
    );
    let line = one_line_error(&out);
    assert!(line.contains(&format!("pid {pid}")), "{line}");
}

#[test]
fn status_shows_clients_held_reads_and_miss_latency() {
    let live = Live::start("1MiB");
    // Reads far ahead of the sweep are misses.
    for i in 0..8u64 {
        qemu_io(
            &live.url(),
            &[&format!("read {} 4k", 60 * MIB - i * 1000 * 4096)],
        );
    }
    std::thread::sleep(Duration::from_millis(700));
    let v = live.status();
    assert!(v["clients"].as_u64().is_some(), "{v}");
    assert!(v["miss_latency_ms_p50"].as_f64().is_some(), "{v}");
    let out = run(&["status", "--status-file", s(&live.path("status.json"))]);
    assert_ok(&out, "status");
    let human = text(&out.stdout);
    assert!(
        human.contains("clients:") && human.contains("miss latency:  p50"),
        "{human}"
    );
}
