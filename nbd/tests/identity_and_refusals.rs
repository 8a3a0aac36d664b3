//! What the server tells a client about an export beyond its bytes, over real loopback
//! sockets: the description (`NBD_INFO_DESCRIPTION`, where `rehydrate serve` pins a
//! version), the reason an export that exists cannot be opened, the minimum block
//! size, and names too long for the protocol refused before dialling.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rehydrate_nbd::{
    BoxFuture, Catalog, Client, Error, Export, ExportError, MapCatalog, MemExport, NbdUrl,
};

/// An export with a description and a 512-byte minimum block.
struct Described(MemExport);

impl Export for Described {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn description(&self) -> String {
        "rehydrate volume=v version=2".into()
    }
    fn min_block_bytes(&self) -> u32 {
        512
    }
    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<bytes::Bytes, ExportError>> {
        self.0.read(offset, length)
    }
}

/// A catalog whose export `broken` exists but cannot be opened.
struct Damaged(MapCatalog);

impl Catalog for Damaged {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Option<Arc<dyn Export>>, ExportError>> {
        if name == "broken" {
            return Box::pin(async {
                Err(ExportError::Corrupt(
                    "index of broken: checksum mismatch".into(),
                ))
            });
        }
        self.0.open(name)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ExportError>> {
        self.0.list()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_reaches_the_client_and_an_unopenable_export_says_why() {
    let export: Arc<dyn Export> = Arc::new(Described(MemExport::new(vec![1; 8192], true)));
    let catalog = Damaged(MapCatalog::new().with("v", export));
    let (addr, server) = start_server(Arc::new(catalog)).await;

    let client = Client::connect(addr, "v").await.unwrap();
    assert_eq!(client.info().description, "rehydrate volume=v version=2");
    client.disconnect().await.unwrap();

    match Client::connect(addr, "broken").await {
        Err(e @ Error::UnknownExport { .. }) => {
            let text = e.to_string();
            assert!(text.contains("checksum mismatch"), "{text}");
        }
        other => panic!("expected the server's reason, got {other:?}"),
    }
    match Client::connect(addr, "absent").await {
        Err(Error::UnknownExport { name, .. }) => assert_eq!(name, "absent"),
        other => panic!("expected unknown export, got {other:?}"),
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_longer_than_the_protocol_allows_is_refused_at_once() {
    let long = "x".repeat(4097);
    let started = Instant::now();
    // Nothing listens on this port: the refusal must come before any dial.
    let port = free_port();
    match Client::connect(("127.0.0.1", port), &long).await {
        Err(Error::NameTooLong { len }) => assert_eq!(len, 4097),
        other => panic!("expected NameTooLong, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let url = format!("nbd://127.0.0.1:{port}/{long}");
    assert!(matches!(NbdUrl::parse(&url), Err(Error::InvalidUrl { .. })));
    assert!(NbdUrl::parse(&format!("nbd://127.0.0.1:{port}/{}", "x".repeat(4096))).is_ok());
}

#[test]
fn nbdinfo_sees_the_description_and_minimum_block_size() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let export: Arc<dyn Export> = Arc::new(Described(MemExport::new(vec![1; 8192], true)));
    let (addr, server) = rt.block_on(start_server(Arc::new(MapCatalog::new().with("v", export))));
    let out = run(
        "nbdinfo",
        "libnbd-bin",
        &["--json", &format!("nbd://{addr}/v")],
    );
    let info: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --json");
    let export = &info["exports"][0];
    assert_eq!(export["description"], "rehydrate volume=v version=2");
    assert_eq!(export["block_size_minimum"], 512);
    rt.block_on(async { server.abort() });
}
