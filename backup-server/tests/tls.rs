//! `serve` over TLS as a real process: `qemu-img convert` and `nbdinfo` with
//! certificates read it byte for byte; clients without a certificate, with an untrusted
//! one, or asking for a volume their name is not allowed are refused and served
//! nothing; a plain server on a non-loopback address warns.

#[path = "../../nbd/tests/common/certs.rs"]
mod certs;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certs::Ca;
use common::*;

struct Served {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve --store STORE --listen ADDR EXTRA...`, waited for on loopback.
fn serve(store: &Path, listen_ip: &str, extra: &[&str], log: PathBuf) -> Served {
    let port = free_port();
    let child = bin()
        .args(["serve", "--store"])
        .arg(store)
        .args(["--listen", &format!("{listen_ip}:{port}")])
        .args(extra)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut served = Served { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = served.child.try_wait() {
            panic!(
                "serve exited ({status}): {}",
                std::fs::read_to_string(&served.log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    served
}

struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    server_dir: PathBuf,
    store: PathBuf,
    web: Vec<u8>,
    db: Vec<u8>,
}

/// A store with volumes `web-1` and `db`, and a CA with a server certificate.
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backup CA");
    let server_dir = ca.write_dir(&dir.path().join("server"), "server", "backup-server");
    let store = dir.path().join("store");
    let web = write_image(
        &dir.path().join("web.img"),
        &[(2 * MIB, true), (MIB, false)],
        3,
    );
    let db = write_image(&dir.path().join("db.img"), &[(MIB + 512, true)], 4);
    backup(&dir.path().join("web.img"), &store, "web-1");
    backup(&dir.path().join("db.img"), &store, "db");
    World {
        dir,
        ca,
        server_dir,
        store,
        web,
        db,
    }
}

impl World {
    /// `serve` requiring client certificates, with `--allow web-*=alice`.
    fn serve_tls(&self) -> Served {
        let s = &self.server_dir;
        let (cert, key, ca) = (
            certs::cert_file(s, "server"),
            certs::key_file(s, "server"),
            certs::ca_file(s),
        );
        serve(
            &self.store,
            "127.0.0.1",
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
                "--tls-client-ca",
                ca.to_str().unwrap(),
                "--allow",
                "web-*=alice",
            ],
            self.dir.path().join("serve.log"),
        )
    }

    /// A client certificate directory for `cn`, signed by `ca` (or by the world's CA).
    fn client(&self, cn: &str, ca: Option<&Ca>) -> PathBuf {
        let dir = self
            .dir
            .path()
            .join(format!("client-{cn}-{}", ca.is_some()));
        ca.unwrap_or(&self.ca).write_dir(&dir, "client", cn);
        if ca.is_some() {
            // Trust the real server, present a certificate from elsewhere.
            std::fs::write(dir.join("ca-cert.pem"), self.ca.pem()).unwrap();
        }
        dir
    }
}

fn nbdinfo(url: &str) -> std::process::Output {
    require_tool("nbdinfo", "libnbd-bin");
    Command::new("nbdinfo")
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn qemu_img_convert(port: u16, export: &str, certs: &Path, out: &Path) -> std::process::Output {
    require_tool("qemu-img", "qemu-utils");
    Command::new("qemu-img")
        .arg("convert")
        .args([
            "--object",
            &format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=client",
                certs.display()
            ),
            "--image-opts",
            &format!(
                "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export={export},tls-creds=tls0"
            ),
            "-O",
            "raw",
        ])
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn qemu_img_and_nbdinfo_read_through_tls_with_certificates() {
    let w = world();
    let server = w.serve_tls();
    let alice = w.client("alice", None);
    let out = w.dir.path().join("web.raw");
    let convert = qemu_img_convert(server.port, "web-1", &alice, &out);
    assert!(
        convert.status.success(),
        "{}",
        String::from_utf8_lossy(&convert.stderr)
    );
    assert!(
        std::fs::read(&out).unwrap() == w.web,
        "restored bytes differ"
    );

    let info = nbdinfo(&format!(
        "nbds://127.0.0.1:{}/web-1@1?tls-certificates={}",
        server.port,
        alice.display()
    ));
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains(&format!("size: {}", w.web.len())), "{text}");
}

#[test]
fn clients_without_a_trusted_allowed_certificate_get_nothing() {
    let w = world();
    let server = w.serve_tls();
    let port = server.port;
    let out = w.dir.path().join("x.raw");

    // No certificate: a directory with only the CA.
    let anonymous = w.dir.path().join("anonymous");
    std::fs::create_dir_all(&anonymous).unwrap();
    std::fs::write(anonymous.join("ca-cert.pem"), w.ca.pem()).unwrap();
    // A certificate with the right name from a CA the server does not trust.
    let rogue = w.client("alice", Some(&Ca::new("rogue CA")));
    // A trusted certificate whose name may read web-* only.
    let alice = w.client("alice", None);
    // A trusted certificate with no rule at all.
    let bob = w.client("bob", None);

    for (who, certs, export) in [
        ("no certificate", &anonymous, "web-1"),
        ("untrusted certificate", &rogue, "web-1"),
        ("alice asking for db", &alice, "db"),
        ("bob", &bob, "web-1"),
    ] {
        let convert = qemu_img_convert(port, export, certs, &out);
        assert!(
            !convert.status.success(),
            "{who}: qemu-img convert succeeded"
        );
        assert!(
            !out.exists() || std::fs::read(&out).unwrap().is_empty(),
            "{who}: data written"
        );
        let info = nbdinfo(&format!(
            "nbds://127.0.0.1:{port}/{export}?tls-certificates={}",
            certs.display()
        ));
        assert!(!info.status.success(), "{who}: nbdinfo succeeded");
        let stderr = String::from_utf8_lossy(&info.stderr).to_lowercase();
        assert!(!stderr.is_empty(), "{who}: no error printed");
    }
    // Refusals by policy say so, in our client's words too.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = rehydrate_nbd::ClientTls::from_pem_files(
            &certs::ca_file(&alice),
            Some((
                &certs::cert_file(&alice, "client"),
                &certs::key_file(&alice, "client"),
            )),
        )
        .unwrap();
        let options = rehydrate_nbd::ClientOptions {
            tls: Some(tls),
            ..Default::default()
        };
        let err = rehydrate_nbd::Client::connect_with(("127.0.0.1", port), "db", options.clone())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("may not open export \"db\""),
            "{err}"
        );
        let plain = rehydrate_nbd::Client::connect(("127.0.0.1", port), "web-1")
            .await
            .unwrap_err();
        assert!(
            matches!(plain, rehydrate_nbd::Error::TlsRequired),
            "{plain}"
        );
        // Alice sees only what she may read.
        let client = rehydrate_nbd::Client::connect_with(("127.0.0.1", port), "web-1", options)
            .await
            .unwrap();
        let got = client.read(0, w.web.len()).await.unwrap();
        assert!(got == w.web);
        client.disconnect().await.unwrap();
    });
    drop(server);
    let log = std::fs::read_to_string(w.dir.path().join("serve.log")).unwrap();
    assert!(log.contains("refused by the access policy"), "{log}");
    // Failed certificate checks are logged too, and nothing from the TLS library's own
    // chatter (qemu and libnbd send an IP address as the server name) buries them.
    assert!(log.contains("client refused"), "{log}");
    assert!(!log.contains("Illegal SNI"), "{log}");
    let _ = &w.db;
}

#[test]
fn a_plain_server_on_a_non_loopback_address_warns() {
    let w = world();
    let served = serve(&w.store, "0.0.0.0", &[], w.dir.path().join("open.log"));
    drop(served);
    let log = std::fs::read_to_string(w.dir.path().join("open.log")).unwrap();
    assert!(
        log.contains("without TLS on a non-loopback address"),
        "{log}"
    );
    let quiet = serve(&w.store, "127.0.0.1", &[], w.dir.path().join("quiet.log"));
    drop(quiet);
    let log = std::fs::read_to_string(w.dir.path().join("quiet.log")).unwrap();
    assert!(!log.contains("without TLS"), "{log}");
}
