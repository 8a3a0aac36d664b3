//! The Windows build, checked from Linux: the whole service (`rehydrate`: backup, serve,
//! restore, status and the driver link) with clippy, and the kernel crate
//! `rehydrate-driver`, for `x86_64-pc-windows-gnu`. The kernel crate is `no_std`, so
//! anything std-only that creeps into it fails here. Skips with one loud line when the
//! target or mingw-w64 is missing (`.ci/run` installs both).

use rehydrate_tests::windows::{assert_success, cross_cargo, missing_windows_toolchain, skip};

#[test]
fn the_service_and_the_kernel_crate_build_for_windows() {
    if let Some(reason) = missing_windows_toolchain() {
        skip("windows_cross", &reason);
        return;
    }
    let check = cross_cargo("check", &["-p", "rehydrate-driver"]);
    assert_success("cargo check -p rehydrate-driver (Windows)", &check);
    let check = cross_cargo("check", &["-p", "rehydrate-service", "--all-targets"]);
    assert_success("cargo check -p rehydrate-service (Windows)", &check);
    let clippy = cross_cargo(
        "clippy",
        &[
            "-p",
            "rehydrate-service",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    );
    assert_success("cargo clippy -p rehydrate-service (Windows)", &clippy);
}
