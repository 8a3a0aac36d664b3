//! Test certificates made with rcgen: a CA, a server certificate for `localhost` and
//! 127.0.0.1, and client certificates with a chosen common name, written under the file
//! names qemu, nbdkit and libnbd look for in a certificate directory (`ca-cert.pem`,
//! `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate authority that signs test certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf certificate and its key (PEM) for `cn`; `server` adds the loopback names.
    pub fn issue(&self, cn: &str, server: bool) -> (String, String) {
        let names = if server {
            vec!["localhost".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A directory with `ca-cert.pem` and this CA's certificate and key for `role`
    /// (`server`, or `client` with common name `cn`).
    pub fn write_dir(&self, dir: &Path, role: &str, cn: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca-cert.pem"), self.pem()).unwrap();
        let (cert, key) = self.issue(cn, role == "server");
        std::fs::write(dir.join(format!("{role}-cert.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("{role}-key.pem")), key).unwrap();
        dir.to_owned()
    }
}

/// The paths inside a directory [`Ca::write_dir`] made.
pub fn ca_file(dir: &Path) -> PathBuf {
    dir.join("ca-cert.pem")
}
pub fn cert_file(dir: &Path, role: &str) -> PathBuf {
    dir.join(format!("{role}-cert.pem"))
}
pub fn key_file(dir: &Path, role: &str) -> PathBuf {
    dir.join(format!("{role}-key.pem"))
}
