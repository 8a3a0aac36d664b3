//! The Windows build on this Linux machine: whether the `x86_64-pc-windows-gnu` target,
//! its mingw-w64 toolchain and wine are there, a nested cargo with its own persistent
//! target directory, and the one loud line a test prints when it has to skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Windows target built here (mingw-w64; MSVC needs Windows).
pub const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";
/// The mingw-w64 C compiler the target's build scripts and linker use.
pub const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// The workspace root (this crate is `tests/` in it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where the nested Windows builds keep their artifacts: under the workspace's
/// `target/`, apart from the host build (whose lock the running `cargo test` may hold),
/// and kept between runs so a rerun is incremental.
pub fn cross_target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("windows-cross")
}

/// Prints the reason a test skips, on the real stderr, so `cargo test` shows it even
/// for a passing test (libtest captures only the print macros).
pub fn skip(test: &str, reason: &str) {
    let line = format!("\n*** {test}: SKIPPED: {reason} (.ci/run installs it) ***\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// The cargo running this test (`CARGO`), else the one on PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why the Windows target cannot be built here, if it cannot.
pub fn missing_windows_toolchain() -> Option<String> {
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let std_lib = sysroot.map(|s| s.join("lib").join("rustlib").join(WINDOWS_TARGET));
    if !std_lib.is_some_and(|p| p.is_dir()) {
        return Some(format!(
            "the Rust target {WINDOWS_TARGET} is not installed (rustup target add {WINDOWS_TARGET})"
        ));
    }
    if !runs(MINGW_GCC, "--version") {
        return Some(format!(
            "{MINGW_GCC} is not installed (apt-get install gcc-mingw-w64-x86-64)"
        ));
    }
    None
}

/// Debian's wine64 loader: not on PATH, in the package's library directory.
pub fn wine64() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("WINE64").map(PathBuf::from),
        Some(PathBuf::from("/usr/lib/wine/wine64")),
        Some(PathBuf::from("wine64")),
        Some(PathBuf::from("wine")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| runs(&p.to_string_lossy(), "--version"))
}

/// Runs `cargo SUBCOMMAND --target x86_64-pc-windows-gnu --target-dir ... ARGS` in the
/// workspace; the output, for the caller to judge.
pub fn cross_cargo(subcommand: &str, args: &[&str]) -> Output {
    cargo()
        .current_dir(workspace_root())
        .arg(subcommand)
        .arg("--target")
        .arg(WINDOWS_TARGET)
        .arg("--target-dir")
        .arg(cross_target_dir())
        .args(args)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo runs")
}

/// Panics with cargo's output unless it succeeded.
pub fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
