//! Replication over TLS between real processes: a receiver that requires TLS and a
//! client certificate from the senders' CA takes versions only from a sender that
//! presents one, and a sender that asked for TLS refuses a receiver that cannot speak
//! it. A refused sender leaves nothing behind at the receiver.

#[path = "../../nbd/tests/common/certs.rs"]
mod certs;
mod common;
mod replicate_support;

use std::path::{Path, PathBuf};

use certs::{ca_file, cert_file, key_file, Ca};
use common::{noise, MIB};
use replicate_support::*;

struct Sites {
    dir: tempfile::TempDir,
    sender: PathBuf,
    receiver: PathBuf,
    /// The receiver's certificate and the CA of both sites.
    receiver_certs: PathBuf,
    /// Site A's client certificate, from the same CA.
    site_a: PathBuf,
}

fn sites() -> Sites {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("sites CA");
    let receiver_certs = ca.write_dir(&dir.path().join("receiver-certs"), "server", "copyhost");
    let site_a = ca.write_dir(&dir.path().join("site-a"), "client", "site-a");
    let sender = dir.path().join("sender");
    let image = dir.path().join("image");
    for (volume, seed) in [("alpha", 1), ("beta", 2)] {
        std::fs::write(&image, noise((3 * MIB) as usize, seed)).unwrap();
        backup(&image, &sender, volume);
    }
    Sites {
        receiver: dir.path().join("receiver"),
        dir,
        sender,
        receiver_certs,
        site_a,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Sites {
    /// A receiver requiring TLS and a certificate the sites' CA signed.
    fn tls_receiver(&self, port: u16) -> Receiver {
        let c = &self.receiver_certs;
        Receiver::start_with(
            &self.receiver,
            port,
            &self.dir.path().join("receive.log"),
            &[
                "--tls-cert",
                s(&cert_file(c, "server")),
                "--tls-key",
                s(&key_file(c, "server")),
                "--tls-client-ca",
                s(&ca_file(c)),
            ],
        )
    }

    /// `--tls-ca` trusting the receiver, and `client`'s certificate if given.
    fn tls_args(&self, client: Option<&Path>) -> Vec<String> {
        let mut args = vec![
            "--tls-ca".to_owned(),
            s(&ca_file(&self.receiver_certs)).to_owned(),
        ];
        if let Some(c) = client {
            args.extend([
                "--tls-cert".to_owned(),
                s(&cert_file(c, "client")).to_owned(),
                "--tls-key".to_owned(),
                s(&key_file(c, "client")).to_owned(),
            ]);
        }
        args
    }

    fn nothing_received(&self) {
        for volume in ["alpha", "beta"] {
            assert!(
                versions(&self.receiver, volume).is_empty(),
                "{volume} reached the receiver"
            );
        }
    }
}

fn replicate(sites: &Sites, port: u16, args: &[String]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_replicate(&sites.sender, port, &args)
}

#[test]
fn only_a_sender_with_a_certificate_of_the_sites_ca_replicates_over_tls() {
    let sites = sites();
    let port = free_port();
    let receiver = sites.tls_receiver(port);

    // In clear text: refused.
    let plain = replicate(&sites, port, &[]);
    assert_ne!(plain.code, 0, "{plain:?}");
    sites.nothing_received();
    // TLS without a client certificate: refused by the handshake.
    let anonymous = replicate(&sites, port, &sites.tls_args(None));
    assert_ne!(anonymous.code, 0, "{anonymous:?}");
    assert!(
        anonymous.stderr.to_lowercase().contains("tls")
            || anonymous.stderr.to_lowercase().contains("certificate"),
        "{anonymous:?}"
    );
    sites.nothing_received();
    // A certificate from another CA: refused.
    let rogue_dir = sites.dir.path().join("rogue");
    Ca::new("rogue CA").write_dir(&rogue_dir, "client", "site-a");
    let rogue = replicate(&sites, port, &sites.tls_args(Some(&rogue_dir)));
    assert_ne!(rogue.code, 0, "{rogue:?}");
    sites.nothing_received();

    // Site A's certificate: every version arrives, complete.
    let ok = replicate(&sites, port, &sites.tls_args(Some(&sites.site_a)));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.last_line.contains("committed=2"), "{ok:?}");
    drop(receiver);
    let shown =
        assert_prefix_of_complete_versions(&sites.sender, &sites.receiver, &["alpha", "beta"]);
    assert_eq!(shown, vec![1, 1], "every version was published");
    let log = std::fs::read_to_string(sites.dir.path().join("receive.log")).unwrap();
    assert!(log.contains("TLS handshake failed"), "{log}");
}

#[test]
fn a_sender_that_asked_for_tls_refuses_a_plain_receiver() {
    let sites = sites();
    let port = free_port();
    let _receiver = Receiver::start(&sites.receiver, port, &sites.dir.path().join("receive.log"));
    let run = replicate(&sites, port, &sites.tls_args(Some(&sites.site_a)));
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.to_lowercase().contains("tls"), "{run:?}");
    sites.nothing_received();
}
