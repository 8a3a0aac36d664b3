//! The Windows build of `rehydrate` run for real, under wine, against the Linux build
//! over loopback: `rehydrate.exe backup` of an image whose store the Linux `rehydrate
//! serve` serves to `rehydrate.exe restore`, and `rehydrate.exe serve` of a store the
//! Linux build backed up, restored by the Linux `rehydrate restore`; both restores must
//! be byte-identical to the image. This runs the Windows file (positioned I/O, fsync,
//! the chunk store's directories) and socket paths of the service.
//!
//! A second test runs the service's own portable tests (unit tests, and the backup /
//! serve / status end-to-end test) as Windows executables under wine, as the GitHub
//! Windows job does natively.
//!
//! Wine 8 (Debian's) lacks `bcryptprimitives.dll`, whose `ProcessPrng` Rust's std
//! imports for random numbers: the test builds a tiny one with mingw-w64 that forwards
//! to `SystemFunction036` (RtlGenRandom) and puts it beside the .exe. The first run
//! creates the wine prefix (under the cross build's target directory, kept for later
//! runs). Skips with one loud line when the Windows target, mingw-w64 or wine is missing.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rehydrate_tests::windows::{
    assert_success, cross_cargo, cross_target_dir, missing_windows_toolchain, skip, wine64,
    MINGW_GCC, WINDOWS_TARGET,
};
use rehydrate_tests::{backup, bin, free_port, serve, Guard};

/// Long enough for a first run to create the wine prefix on a busy machine; only a
/// guard against a hang, never a measure of speed.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// `ProcessPrng` as Rust's std calls it (bcryptprimitives.dll), on top of RtlGenRandom.
const PROCESS_PRNG_C: &str = r#"
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
"#;

struct Wine {
    loader: PathBuf,
    prefix: PathBuf,
    exe: PathBuf,
}

/// The environment every wine run gets: the prefix kept with the cross build, no debug
/// chatter, no Mono or Gecko installer dialogs while the prefix is created, no display.
fn wine_env(command: &mut Command, prefix: &Path) {
    command
        .env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
        .env_remove("DISPLAY");
}

impl Wine {
    fn command(&self, dir: &Path) -> Command {
        let mut command = Command::new(&self.loader);
        command.arg(&self.exe).current_dir(dir);
        wine_env(&mut command, &self.prefix);
        command
    }

    /// Runs `rehydrate.exe ARGS` in `dir` to its end (or the hang guard).
    fn run(&self, dir: &Path, args: &[&str]) -> Output {
        let child = self
            .command(dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wine starts");
        wait_bounded(child, &format!("rehydrate.exe {}", args.join(" ")))
    }
}

fn wait_bounded(mut child: std::process::Child, what: &str) -> Output {
    let started = Instant::now();
    // Bounded by HANG_GUARD.
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > HANG_GUARD {
            let _ = child.kill();
            panic!("{what} did not finish within {HANG_GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Puts a `bcryptprimitives.dll` with `ProcessPrng` in `dir` (where the .exe files are).
fn provide_process_prng(dir: &Path) {
    let dll = dir.join("bcryptprimitives.dll");
    if dll.exists() {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let source = dir.join("process_prng.c");
    std::fs::write(&source, PROCESS_PRNG_C).unwrap();
    let out = Command::new(MINGW_GCC)
        .args(["-shared", "-O2", "-o"])
        .arg(&dll)
        .arg(&source)
        .arg("-ladvapi32")
        .output()
        .expect("mingw-w64 gcc runs");
    ok("building bcryptprimitives.dll", &out);
}

fn wine_prefix() -> PathBuf {
    cross_target_dir().join("wine-prefix")
}

/// Builds rehydrate.exe and the bcryptprimitives.dll beside it.
fn build(loader: PathBuf) -> Wine {
    let built = cross_cargo("build", &["-p", "rehydrate-service", "--bin", "rehydrate"]);
    assert_success("cargo build rehydrate.exe", &built);
    let exe_dir = cross_target_dir().join(WINDOWS_TARGET).join("debug");
    let exe = exe_dir.join("rehydrate.exe");
    assert!(exe.exists(), "{} was not built", exe.display());
    provide_process_prng(&exe_dir);
    Wine {
        loader,
        prefix: wine_prefix(),
        exe,
    }
}

/// The Windows toolchain and wine, or why the test skips.
fn wine_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(reason) = missing_windows_toolchain() {
        skip(test, &reason);
        return None;
    }
    let loader = wine64();
    if loader.is_none() {
        skip(test, "wine64 is not installed (apt-get install wine64)");
    }
    loader
}

/// Waits until something listens on `port` (a server just started).
fn wait_listening(port: u16, server: &mut Guard) {
    let started = Instant::now();
    // Bounded by HANG_GUARD.
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.0.try_wait().expect("wait") {
            panic!("the server on port {port} exited: {status}");
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "nothing listens on {port} after {HANG_GUARD:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 6 MiB of data, then zeros to 8 MiB, with a zero hole inside the data.
fn make_image(path: &Path) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..8u64 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    bytes[1 << 20..(1 << 20) + (256 << 10)].fill(0);
    bytes[6 << 20..].fill(0);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn restore_linux(dir: &Path, port: u16, target: &str) {
    let out = Command::new(bin("rehydrate"))
        .current_dir(dir)
        .args([
            "restore",
            "--source",
            &format!("nbd://127.0.0.1:{port}/sys"),
        ])
        .args(["--target", target, "--status-file", "status-linux.json"])
        .output()
        .expect("rehydrate restore runs");
    let stdout = ok("linux rehydrate restore", &out);
    assert!(stdout.contains("restore: complete"), "{stdout}");
}

#[test]
fn the_windows_build_backs_up_serves_and_restores_against_the_linux_build() {
    let Some(loader) = wine_or_skip("wine_roundtrip") else {
        return;
    };
    let wine = build(loader);
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(&dir.path().join("disk.img"));

    // Creates the prefix on a first run.
    let version = ok(
        "rehydrate.exe --version",
        &wine.run(dir.path(), &["--version"]),
    );
    assert!(version.starts_with("rehydrate "), "{version}");

    // Windows backs up; Linux serves that store; Windows restores from it.
    let summary = ok(
        "rehydrate.exe backup",
        &wine.run(
            dir.path(),
            &[
                "backup",
                "disk.img",
                "--store",
                "store-win",
                "--volume",
                "sys",
            ],
        ),
    );
    assert!(
        summary.contains("backup: volume=sys version=1"),
        "{summary}"
    );
    let port = free_port();
    let mut server = serve(&dir.path().join("store-win"), port);
    wait_listening(port, &mut server);
    let source = format!("nbd://127.0.0.1:{port}/sys");
    let restored = ok(
        "rehydrate.exe restore",
        &wine.run(
            dir.path(),
            &[
                "restore",
                "--source",
                &source,
                "--target",
                "restored-win.img",
                "--status-file",
                "status-win.json",
            ],
        ),
    );
    assert!(restored.contains("restore: complete"), "{restored}");
    drop(server);
    let got = std::fs::read(dir.path().join("restored-win.img")).unwrap();
    assert!(
        got == image,
        "rehydrate.exe restored a volume that differs from the image"
    );

    // Linux backs up; Windows serves that store; Linux restores from it.
    backup(
        &dir.path().join("disk.img"),
        &dir.path().join("store-linux"),
        "sys",
    );
    let port = free_port();
    let child = wine
        .command(dir.path())
        .args(["serve", "--store", "store-linux"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wine starts");
    let mut server = Guard(child);
    wait_listening(port, &mut server);
    restore_linux(dir.path(), port, "restored-linux.img");
    drop(server);
    let got = std::fs::read(dir.path().join("restored-linux.img")).unwrap();
    assert!(
        got == image,
        "the volume restored from rehydrate.exe serve differs from the image"
    );
}

#[test]
fn the_services_portable_tests_pass_as_windows_executables() {
    let Some(loader) = wine_or_skip("wine_roundtrip (service tests)") else {
        return;
    };
    // The test executables land in deps/; the DLL must be beside them.
    provide_process_prng(
        &cross_target_dir()
            .join(WINDOWS_TARGET)
            .join("debug")
            .join("deps"),
    );
    // restore_e2e is left out: it drives qemu-nbd, nbdkit and fallocate, Linux tools.
    let mut cargo = rehydrate_tests::windows::cargo();
    cargo
        .current_dir(rehydrate_tests::windows::workspace_root())
        .args(["test", "--target", WINDOWS_TARGET, "--target-dir"])
        .arg(cross_target_dir())
        .args(["-p", "rehydrate-service", "--lib", "--bins"])
        .args(["--test", "backup_serve_status_e2e"])
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER", &loader)
        .env_remove("CARGO_TARGET_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wine_env(&mut cargo, &wine_prefix());
    let out = wait_bounded(
        cargo.spawn().expect("cargo runs"),
        "the service's tests under wine",
    );
    let stdout = ok(
        "cargo test -p rehydrate-service (Windows, under wine)",
        &out,
    );
    assert!(stdout.contains("test result: ok"), "{stdout}");
}
