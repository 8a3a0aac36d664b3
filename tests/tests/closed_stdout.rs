//! A reader that goes away (`rehydrate-sim sweep ... | head -1`) ends the program
//! normally: exit 0, nothing on stderr, for both binaries.

use std::process::{Command, Stdio};

use rehydrate_tests::bin;

fn with_stdout_closed(program: &str, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(bin(program))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    drop(child.stdout.take());
    child.wait_with_output().expect("ends")
}

#[test]
fn item13_a_closed_stdout_is_a_normal_exit_for_both_binaries() {
    let out = with_stdout_closed(
        "rehydrate-sim",
        &["sweep", "--seeds", "0..3", "--ops", "50"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_stdout_closed("rehydrate", &["--help"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
