//! TLS for NBD (`NBD_OPT_STARTTLS`, the spec's "TLS support") with rustls.
//!
//! The server runs in the spec's FORCEDTLS mode once [`ServerTls`] is configured: before
//! TLS it answers every option but `STARTTLS` and `ABORT` with `NBD_REP_ERR_TLS_REQD`
//! (the handshake machine does that, see [`crate::handshake::server`]). With a client
//! CA, a client must present a certificate that CA signed; its subject's common name
//! (CN) is the client's identity, and an [`AccessPolicy`] decides which exports that
//! identity may open or list.
//!
//! The client ([`ClientTls`]) sends `STARTTLS` as its first option, as the spec advises
//! a client that only wants TLS, and gives up if the server refuses: no downgrade.
//!
//! Settings come from PEM files. [`ClientTls::from_env`] reads them from
//! `REHYDRATE_TLS_CA`, `REHYDRATE_TLS_CERT` and `REHYDRATE_TLS_KEY`, so every program
//! that dials `nbds://` URLs shares one way to be given certificates.
//!
//! Only rustls's `ring` provider is used, named explicitly, so that another crate in
//! the build enabling a second provider cannot make the choice ambiguous.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::Error;
use crate::url::NbdUrl;

/// Environment variable naming the PEM file of the CA that signs the server's certificate.
pub const ENV_CA: &str = "REHYDRATE_TLS_CA";
/// Environment variable naming the client certificate's PEM file (optional).
pub const ENV_CERT: &str = "REHYDRATE_TLS_CERT";
/// Environment variable naming the client key's PEM file (with [`ENV_CERT`]).
pub const ENV_KEY: &str = "REHYDRATE_TLS_KEY";

/// Who is on the other end of a TLS connection, from its verified certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name of the client certificate, if one was presented.
    pub common_name: Option<String>,
}

/// Which exports a client may open and see listed.
pub trait AccessPolicy: Send + Sync {
    /// Whether `peer` may open (and see) `export`.
    fn allows(&self, peer: &PeerIdentity, export: &str) -> bool;
}

/// The server side: certificate, key, optional client CA, optional access policy.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    policy: Option<Arc<dyn AccessPolicy>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("policy", &self.policy.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Serve with the certificate chain in `cert` and the key in `key` (PEM). With
    /// `client_ca`, clients must present a certificate that CA signed.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, Error> {
        let chain = read_certs(cert)?;
        let key = read_key(key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .build()
                        .map_err(config_error)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).map_err(config_error)?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            policy: None,
        })
    }

    /// Decide per client which exports it may open and see listed.
    pub fn with_policy(mut self, policy: Arc<dyn AccessPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Whether `peer` may open `export` (everyone may when no policy is set).
    pub fn allows(&self, peer: &PeerIdentity, export: &str) -> bool {
        self.policy.as_ref().is_none_or(|p| p.allows(peer, export))
    }

    /// Run the server side of the TLS handshake over `stream`.
    pub async fn accept<S>(
        &self,
        stream: S,
    ) -> Result<(tokio_rustls::server::TlsStream<S>, PeerIdentity), Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let secure = self
            .acceptor
            .accept(stream)
            .await
            .map_err(|e| Error::TlsHandshake(e.to_string()))?;
        let common_name = secure
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf));
        Ok((secure, PeerIdentity { common_name }))
    }
}

/// The client side: the CA to trust, an optional client certificate, the name to check.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trust servers whose certificate `ca` signed; present `client` (certificate and
    /// key PEM files) when given.
    pub fn from_pem_files(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Self, Error> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots(ca)?);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(config_error)?,
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: None,
        })
    }

    /// From [`ENV_CA`], and [`ENV_CERT`] with [`ENV_KEY`] when set.
    pub fn from_env() -> Result<Self, Error> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let ca = var(ENV_CA).ok_or_else(|| {
            Error::TlsConfig(format!(
                "{ENV_CA} must name the PEM file of the CA that signed the server's certificate"
            ))
        })?;
        let client = match (var(ENV_CERT), var(ENV_KEY)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::TlsConfig(format!(
                    "{ENV_CERT} and {ENV_KEY} go together: set both or neither"
                )))
            }
        };
        Self::from_pem_files(
            &ca,
            client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
    }

    /// What an `nbd://` or `nbds://` URL needs: `None` for `nbd://`; for `nbds://` the
    /// settings from the environment ([`ClientTls::from_env`]), checking the URL's host.
    pub fn for_url(url: &NbdUrl) -> Result<Option<Self>, Error> {
        if !url.tls {
            return Ok(None);
        }
        Self::from_env()?.with_server_name(&url.host).map(Some)
    }

    /// Check the server's certificate against `name` (a DNS name or an IP address).
    /// Without one, the address dialled is checked.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, Error> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| Error::TlsConfig(format!("{name:?} is not a valid server name")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// Run the client side of the TLS handshake over `stream`; `dialled` is the
    /// address connected to, checked when no server name was set.
    pub async fn connect<S>(
        &self,
        stream: S,
        dialled: Option<std::net::IpAddr>,
    ) -> Result<tokio_rustls::client::TlsStream<S>, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match (&self.server_name, dialled) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ServerName::IpAddress(ip.into()),
            (None, None) => {
                return Err(Error::TlsConfig(
                    "no server name to check the certificate against".into(),
                ))
            }
        };
        self.connector
            .connect(name, stream)
            .await
            .map_err(|e| Error::TlsHandshake(e.to_string()))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl std::fmt::Display) -> Error {
    Error::TlsConfig(e.to_string())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::TlsConfig(format!("cannot read {}: {e}", path.display())))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject;
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::TlsConfig(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::TlsConfig(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(&read_pem(path)?)
        .map_err(|e| Error::TlsConfig(format!("{}: no usable private key: {e}", path.display())))
}

fn roots(ca: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| Error::TlsConfig(format!("{}: {e}", ca.display())))?;
    }
    Ok(roots)
}

/// The first common name of a certificate's subject (its bytes were verified by rustls
/// before we parse them; a certificate we cannot parse has no name).
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_clear_errors() {
        let err = ServerTls::from_pem_files(Path::new("/nonexistent/c.pem"), Path::new("/k"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read /nonexistent/c.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = ClientTls::from_pem_files(&empty, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no certificate"), "{err}");
    }

    #[test]
    fn a_plain_url_needs_no_tls_and_names_are_checked() {
        let url = NbdUrl::parse("nbd://127.0.0.1/x").unwrap();
        assert!(ClientTls::for_url(&url).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        let tls = ClientTls::from_pem_files(&ca_file, None).unwrap();
        assert!(tls.clone().with_server_name("127.0.0.1").is_ok());
        assert!(tls.clone().with_server_name("backup.example").is_ok());
        assert!(tls.with_server_name("not a name!").is_err());
    }

    #[test]
    fn common_names_come_from_the_subject() {
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
        assert_eq!(common_name(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
