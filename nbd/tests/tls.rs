//! NBD over TLS between our own client and server on loopback: certificates made in the
//! test, the spec's FORCEDTLS rules, client certificates and per-export access.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::certs::{ca_file, cert_file, key_file, Ca};
use rehydrate_nbd::consts::*;
use rehydrate_nbd::option::{encode_client_flags, ClientOption, Greeting, OptionReply};
use rehydrate_nbd::{
    AccessPolicy, BoxFuture, Catalog, Client, ClientOptions, ClientTls, Decoded, Error, Export,
    ExportError, MapCatalog, MemExport, PeerIdentity, ServerConfig, ServerTls,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 3 * 1024 * 1024 + 512;

/// A catalog that counts how often anything was looked up: "nothing served" means 0.
struct Counting {
    inner: MapCatalog,
    lookups: AtomicUsize,
}

impl Catalog for Counting {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Option<Arc<dyn Export>>, ExportError>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.open(name)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ExportError>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.list()
    }
}

/// `alice` may open `a` only; anyone else nothing.
struct AliceGetsA;

impl AccessPolicy for AliceGetsA {
    fn allows(&self, peer: &PeerIdentity, export: &str) -> bool {
        peer.common_name.as_deref() == Some("alice") && export == "a"
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    ca: Ca,
    server_dir: std::path::PathBuf,
    alice_dir: std::path::PathBuf,
    data: Vec<u8>,
    catalog: Arc<Counting>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server_dir = ca.write_dir(&dir.path().join("server"), "server", "server");
    let alice_dir = ca.write_dir(&dir.path().join("alice"), "client", "alice");
    let mut data = vec![0u8; SIZE];
    common::Rng::new(9).fill(&mut data);
    let catalog = Arc::new(Counting {
        inner: MapCatalog::new()
            .with("a", Arc::new(MemExport::new(data.clone(), true)))
            .with("b", Arc::new(MemExport::new(vec![7; 4096], true))),
        lookups: AtomicUsize::new(0),
    });
    Setup {
        _dir: dir,
        ca,
        server_dir,
        alice_dir,
        data,
        catalog,
    }
}

fn server_tls(dir: &Path, client_ca: bool) -> ServerTls {
    let ca = ca_file(dir);
    ServerTls::from_pem_files(
        &cert_file(dir, "server"),
        &key_file(dir, "server"),
        client_ca.then_some(ca.as_path()),
    )
    .unwrap()
}

fn client_tls(ca_dir: &Path, client_dir: Option<&Path>) -> ClientTls {
    let (cert, key) = match client_dir {
        Some(d) => (cert_file(d, "client"), key_file(d, "client")),
        None => Default::default(),
    };
    ClientTls::from_pem_files(
        &ca_file(ca_dir),
        client_dir.map(|_| (cert.as_path(), key.as_path())),
    )
    .unwrap()
}

async fn start(catalog: Arc<Counting>, tls: Option<ServerTls>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        tls,
        ..ServerConfig::default()
    };
    tokio::spawn(rehydrate_nbd::serve(listener, catalog, config));
    addr
}

async fn connect(addr: SocketAddr, export: &str, tls: Option<ClientTls>) -> Result<Client, Error> {
    let options = ClientOptions {
        tls,
        ..ClientOptions::default()
    };
    Client::connect_with(addr, export, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_tls_with_a_client_certificate() {
    let s = setup();
    let addr = start(
        Arc::clone(&s.catalog),
        Some(server_tls(&s.server_dir, true)),
    )
    .await;
    let tls = client_tls(&s.server_dir, Some(&s.alice_dir));
    let client = connect(addr, "a", Some(tls)).await.unwrap();
    assert_eq!(client.size_bytes(), SIZE as u64);
    assert!(client.supports_block_status());
    let got = client.read(0, SIZE).await.unwrap();
    common::assert_same(&got, &s.data, "export a over TLS");
    client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_name_is_checked() {
    let s = setup();
    let addr = start(
        Arc::clone(&s.catalog),
        Some(server_tls(&s.server_dir, false)),
    )
    .await;
    // The certificate names localhost and 127.0.0.1, not this.
    let tls = client_tls(&s.server_dir, None)
        .with_server_name("backup.example")
        .unwrap();
    let err = connect(addr, "a", Some(tls)).await.unwrap_err();
    assert!(matches!(err, Error::TlsHandshake(_)), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    let tls = client_tls(&s.server_dir, None)
        .with_server_name("localhost")
        .unwrap();
    connect(addr, "a", Some(tls)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_is_told_tls_is_required_and_nothing_is_looked_up() {
    let s = setup();
    let addr = start(
        Arc::clone(&s.catalog),
        Some(server_tls(&s.server_dir, true)),
    )
    .await;
    let err = connect(addr, "a", None).await.unwrap_err();
    assert!(matches!(err, Error::TlsRequired), "{err}");
    assert!(err.to_string().contains("nbds://"), "{err}");
    assert!(Client::list_exports(addr).await.is_err());
    assert_eq!(s.catalog.lookups.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_trusted_certificate_are_refused() {
    let s = setup();
    let addr = start(
        Arc::clone(&s.catalog),
        Some(server_tls(&s.server_dir, true)),
    )
    .await;
    // No client certificate at all.
    let err = connect(addr, "a", Some(client_tls(&s.server_dir, None)))
        .await
        .unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(text.contains("certificate"), "{err}");
    // A certificate from a CA the server does not trust.
    let rogue = Ca::new("rogue CA");
    let dir = tempfile::tempdir().unwrap();
    let mallory = rogue.write_dir(dir.path(), "client", "alice");
    let err = connect(addr, "a", Some(client_tls(&s.server_dir, Some(&mallory))))
        .await
        .unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("unknownca") || text.contains("alert"),
        "{err}"
    );
    assert_eq!(s.catalog.lookups.load(Ordering::SeqCst), 0);
    let _ = s.ca.pem();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_policy_decides_per_client_name() {
    let s = setup();
    let tls = server_tls(&s.server_dir, true).with_policy(Arc::new(AliceGetsA));
    let addr = start(Arc::clone(&s.catalog), Some(tls)).await;
    let alice = client_tls(&s.server_dir, Some(&s.alice_dir));
    connect(addr, "a", Some(alice.clone())).await.unwrap();
    let err = connect(addr, "b", Some(alice)).await.unwrap_err();
    match &err {
        Error::Forbidden { export, message } => {
            assert_eq!(export, "b");
            assert!(message.contains("alice"), "{message}");
        }
        other => panic!("not refused by policy: {other}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let bob = s.ca.write_dir(dir.path(), "client", "bob");
    let err = connect(addr, "a", Some(client_tls(&s.server_dir, Some(&bob))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_gives_up_on_a_plain_server() {
    let s = setup();
    let addr = start(Arc::clone(&s.catalog), None).await;
    let err = connect(addr, "a", Some(client_tls(&s.server_dir, None)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TlsRefused(_)), "{err}");
    assert_eq!(s.catalog.lookups.load(Ordering::SeqCst), 0);
}

/// Raw bytes: plain-text options before STARTTLS get `NBD_REP_ERR_TLS_REQD`;
/// `NBD_OPT_EXPORT_NAME` (which cannot be refused) closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_options_before_starttls_are_refused() {
    let s = setup();
    let addr = start(
        Arc::clone(&s.catalog),
        Some(server_tls(&s.server_dir, true)),
    )
    .await;
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = vec![0u8; GREETING_BYTES];
    sock.read_exact(&mut buf).await.unwrap();
    let Decoded::Complete { message, .. } = Greeting::decode(&buf).unwrap() else {
        panic!("short greeting")
    };
    assert!(message.flags.contains(HandshakeFlags::FIXED_NEWSTYLE));
    let mut out = Vec::new();
    encode_client_flags(ClientFlags::FIXED_NEWSTYLE, &mut out);
    for option in [
        ClientOption::List,
        ClientOption::StructuredReply,
        ClientOption::Go(rehydrate_nbd::option::GoRequest {
            name: "a".into(),
            info_requests: vec![],
        }),
    ] {
        option.encode(&mut out);
    }
    sock.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut replies = Vec::new();
    while replies.len() < 3 {
        let mut chunk = [0u8; 1024];
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed early");
        got.extend_from_slice(&chunk[..n]);
        while let Decoded::Complete { message, consumed } = OptionReply::decode(&got).unwrap() {
            got.drain(..consumed);
            replies.push(message);
        }
    }
    for (reply, option) in replies.iter().zip([OPT_LIST, OPT_STRUCTURED_REPLY, OPT_GO]) {
        assert_eq!((reply.option, reply.code()), (option, REP_ERR_TLS_REQD));
    }
    let mut out = Vec::new();
    ClientOption::ExportName("a".into()).encode(&mut out);
    sock.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    sock.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "server answered EXPORT_NAME before TLS");
    assert_eq!(s.catalog.lookups.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_over_tls_names_only_what_the_certificate_may_open() {
    let s = setup();
    let addr = start(
        Arc::clone(&s.catalog),
        Some(server_tls(&s.server_dir, true).with_policy(Arc::new(AliceGetsA))),
    )
    .await;
    let as_alice = |tls| ClientOptions {
        tls: Some(tls),
        ..ClientOptions::default()
    };
    let listed = Client::list_exports_with(
        addr,
        as_alice(client_tls(&s.server_dir, Some(&s.alice_dir))),
    )
    .await
    .unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a"], "alice may open a only");
    // Without a client certificate the server refuses the TLS session itself.
    let err = Client::list_exports_with(addr, as_alice(client_tls(&s.server_dir, None)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}
