//! `rehydrate-sim demo` end to end, through the real binary: image, backup, NBD server,
//! the simulated stack in real time and the real service, on a small volume so a debug
//! build finishes in seconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn demo(args: &[&str], status_file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rehydrate-sim"))
        .arg("demo")
        .args(["--size", "16MiB", "--status-file"])
        .arg(status_file)
        .args(args)
        .output()
        .expect("rehydrate-sim runs")
}

fn last_line(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout.lines().last().unwrap_or_default().to_string()
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
}

#[test]
fn the_demo_restores_a_volume_under_load_and_says_ok() {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let out = demo(&["--seed", "3"], &status);
    let line = last_line(&out);
    assert!(line.starts_with("demo: ok "), "{line}");
    assert_eq!(field(&line, "size"), 16 << 20);
    assert_eq!(field(&line, "restored_bytes"), 16 << 20);
    let fetched = field(&line, "fetched_bytes");
    assert!(
        fetched > 0 && fetched < 16 << 20,
        "zero regions are not transferred: {line}"
    );
    // The status file `rehydrate status` reads says the restore completed.
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    assert_eq!(snapshot["phase"], "complete", "{snapshot}");
    assert_eq!(snapshot["bytes_restored"], 16u64 << 20, "{snapshot}");
}

#[test]
fn a_kept_demo_leaves_a_disk_equal_to_the_expected_content() {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let out = demo(&["--keep", "--json"], &status);
    let line = last_line(&out);
    let summary: serde_json::Value = serde_json::from_str(&line).expect("--json prints JSON");
    let kept = PathBuf::from(summary["kept"].as_str().expect("a kept directory"));
    let read = |name: &str| std::fs::read(kept.join(name)).unwrap();
    let (disk, expected, image) = (read("disk.img"), read("expected.img"), read("volume.img"));
    assert_eq!(disk.len(), 16 << 20);
    assert!(
        disk == expected,
        "the restored disk differs from the expected content"
    );
    // Sectors the workload left alone are the image's bytes; it did write some.
    let same = disk
        .chunks(512)
        .zip(image.chunks(512))
        .filter(|(a, b)| a == b)
        .count();
    let rewritten = summary["final_rewritten"].as_u64().unwrap() as usize;
    assert!(rewritten > 0, "the workload wrote nothing: {line}");
    assert!(
        same >= 32768 - rewritten,
        "{same} sectors equal to the image"
    );
    assert!(kept.join("store").is_dir());
    let timeline = String::from_utf8(read("timeline.svg")).expect("an SVG is text");
    assert!(
        timeline.contains("<svg") && timeline.contains("restored"),
        "the kept directory holds the restore's timeline"
    );
    std::fs::remove_dir_all(&kept).unwrap();
}
