//! `rehydrate restore` over TLS with real processes: `--source nbds://` reads a `rehydrate
//! serve` that requires client certificates, and the live export itself serves over TLS
//! only, read by `nbdinfo` and `qemu-img` with certificates and refused to a plain
//! client.

#[path = "../../nbd/tests/common/certs.rs"]
mod certs;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certs::Ca;
use support::*;

const MIB: usize = 1 << 20;

/// `rehydrate serve` over TLS requiring a client certificate from `dir`'s CA.
fn serve_tls(store: &Path, dir: &Path, port: u16) -> Proc {
    let mut child = rehydrate(&[
        "serve",
        "--store",
        s(store),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        s(&certs::cert_file(dir, "server")),
        "--tls-key",
        s(&certs::key_file(dir, "server")),
        "--tls-client-ca",
        s(&certs::ca_file(dir)),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start rehydrate serve");
    wait_listening(port, &mut child);
    Proc { child, port }
}

/// Waits until `port` accepts connections or `child` exits.
fn wait_export(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("restore exited before its export listened: {status}");
        }
        assert!(Instant::now() < deadline, "the live export never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn restore_reads_nbds_and_serves_the_live_export_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("restore test CA");
    let server = ca.write_dir(&dir.path().join("server"), "server", "backup-server");
    let client = ca.write_dir(&dir.path().join("client"), "client", "restorer");
    let image = dir.path().join("disk.img");
    let data = make_image(&image, 6 * MIB + 512);
    let store = dir.path().join("store");
    backup(&image, &store, "sys");
    let source = serve_tls(&store, &server, free_port());

    // Without certificates, an nbds:// source is refused rather than read in clear.
    let plain = restore(
        &format!("nbds://127.0.0.1:{}/sys", source.port),
        &dir.path().join("refused.img"),
        &["--deadline", "2"],
    );
    assert!(!plain.status.success(), "restore without certificates ran");
    assert!(
        one_line_error(&plain).contains("REHYDRATE_TLS_CA"),
        "{}",
        one_line_error(&plain)
    );

    let target = dir.path().join("restored.img");
    let export_port = free_port();
    let mut child = rehydrate(&[
        "restore",
        "--source",
        &format!("nbds://localhost:{}/sys", source.port),
        "--target",
        s(&target),
        "--export",
        &format!("127.0.0.1:{export_port}"),
        "--export-tls-cert",
        s(&certs::cert_file(&server, "server")),
        "--export-tls-key",
        s(&certs::key_file(&server, "server")),
        "--export-tls-client-ca",
        s(&certs::ca_file(&server)),
        "--status-file",
        s(&dir.path().join("status.json")),
    ])
    .env("REHYDRATE_TLS_CA", certs::ca_file(&client))
    .env("REHYDRATE_TLS_CERT", certs::cert_file(&client, "client"))
    .env("REHYDRATE_TLS_KEY", certs::key_file(&client, "client"))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_export(export_port, &mut child);

    // The live export with certificates: the whole volume, byte for byte.
    require("qemu-img", "qemu-utils");
    let copy = dir.path().join("copy.img");
    let convert = Command::new("qemu-img")
        .args([
            "convert",
            "--object",
            &format!("tls-creds-x509,id=tls0,dir={},endpoint=client", s(&client)),
            "--image-opts",
            &format!(
                "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={export_port},\
                 export=sys,tls-creds=tls0"
            ),
            "-O",
            "raw",
            s(&copy),
        ])
        .output()
        .unwrap();
    assert_ok(&convert, "qemu-img convert over TLS from the live export");
    assert!(
        std::fs::read(&copy).unwrap() == data,
        "live export bytes differ"
    );

    // Without TLS the live export serves nothing.
    require("nbdinfo", "libnbd-bin");
    let plain = Command::new("nbdinfo")
        .arg(format!("nbd://127.0.0.1:{export_port}/sys"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain client was served");
    let info = Command::new("nbdinfo")
        .arg(format!(
            "nbds://127.0.0.1:{export_port}/sys?tls-certificates={}",
            s(&client)
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&info, "nbdinfo over TLS");
    assert!(text(&info.stdout).contains(&format!("size: {}", data.len())));

    // The restore itself completes from the TLS source and stops cleanly.
    wait_restored(
        &dir.path().join("status.json"),
        data.len() as u64,
        &mut child,
    );
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "restore over TLS");
    assert!(
        std::fs::read(&target).unwrap() == data,
        "restored bytes differ"
    );
}

/// SIGTERM, the way a service manager stops the live export.
fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
