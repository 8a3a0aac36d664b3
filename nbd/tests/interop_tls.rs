//! TLS interop: our client against `qemu-nbd --object tls-creds-x509` and against
//! `nbdkit --tls=require`, both requiring client certificates; and refused without one.
//! Certificates are made in the test; real processes on loopback.

mod common;

use std::path::Path;

use common::certs::{ca_file, cert_file, key_file, Ca};
use common::*;
use rehydrate_nbd::{Client, ClientOptions, ClientTls, Error};

const SIZE: usize = 6 * 1024 * 1024 + 512;

/// A CA, a server certificate directory and a client certificate directory.
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca = Ca::new("interop CA");
    let server = ca.write_dir(&dir.join("server"), "server", "localhost");
    let client = ca.write_dir(&dir.join("client"), "client", "restorer");
    (server, client)
}

fn client_options(client_dir: &Path, with_cert: bool) -> ClientOptions {
    let (cert, key) = (
        cert_file(client_dir, "client"),
        key_file(client_dir, "client"),
    );
    let tls = ClientTls::from_pem_files(
        &ca_file(client_dir),
        with_cert.then_some((cert.as_path(), key.as_path())),
    )
    .unwrap();
    ClientOptions {
        tls: Some(tls),
        ..ClientOptions::default()
    }
}

/// Read the whole export through TLS and compare; then check that no certificate and
/// no TLS at all are both refused.
async fn read_and_refusals(port: u16, export: &str, client_dir: &Path, contents: &[u8]) {
    let addr = ("127.0.0.1", port);
    let client = Client::connect_with(addr, export, client_options(client_dir, true))
        .await
        .unwrap();
    assert_eq!(client.size_bytes(), contents.len() as u64);
    let got = client.read(0, contents.len()).await.unwrap();
    assert_same(&got, contents, "export read over TLS");
    let extents = client.block_status(0, contents.len() as u64).await.unwrap();
    let covered: u64 = extents.iter().map(|e| e.length_bytes).sum();
    assert_eq!(covered, contents.len() as u64);
    client.disconnect().await.unwrap();

    let err = Client::connect_with(addr, export, client_options(client_dir, false))
        .await
        .unwrap_err();
    assert!(!matches!(err, Error::TlsConfig(_)), "{err}");
    let err = Client::connect(addr, export).await.unwrap_err();
    assert!(matches!(err, Error::TlsRequired), "plain client: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_reads_qemu_nbd_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (server_dir, client_dir) = certificates(dir.path());
    let image = dir.path().join("src.raw");
    let contents = make_image(&image, SIZE, 31);
    let port = free_port();
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=on",
        server_dir.display()
    );
    let port_s = port.to_string();
    let _qemu = spawn_peer(
        "qemu-nbd",
        "qemu-utils",
        &[
            "--object",
            &object,
            "--tls-creds",
            "tls0",
            "--persistent",
            "--shared=8",
            "--read-only",
            "-f",
            "raw",
            "-b",
            "127.0.0.1",
            "-p",
            &port_s,
            "-x",
            "disk",
            image.to_str().unwrap(),
        ],
        port,
    );
    read_and_refusals(port, "disk", &client_dir, &contents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_reads_nbdkit_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (server_dir, client_dir) = certificates(dir.path());
    let image = dir.path().join("src.raw");
    let contents = make_image(&image, SIZE, 32);
    let port = free_port();
    let port_s = port.to_string();
    let certs = format!("--tls-certificates={}", server_dir.display());
    let file = format!("file={}", image.display());
    let _kit = spawn_peer(
        "nbdkit",
        "nbdkit",
        &[
            "-f",
            "-r",
            "-i",
            "127.0.0.1",
            "-p",
            &port_s,
            "--tls=require",
            &certs,
            "--tls-verify-peer",
            "file",
            &file,
        ],
        port,
    );
    read_and_refusals(port, "", &client_dir, &contents).await;
}
