//! Interop with nbdkit and libnbd's tools: our client against `nbdkit` (memory and file
//! plugins, with and without structured replies and fixed newstyle), and `nbdinfo` and
//! `nbdcopy` against our server. Real processes on loopback; nothing is mocked.

mod common;

use std::sync::Arc;

use common::*;
use rehydrate_nbd::{Client, Error, Export, FileExport, MapCatalog, MemExport};

/// Not a multiple of 4 KiB, to catch rounding in either peer.
const SIZE: usize = 12 * 1024 * 1024 + 1000;

fn nbdkit(port: u16, extra: &[&str], plugin: &[&str]) -> Peer {
    let port_s = port.to_string();
    let mut args = vec!["-f", "-i", "127.0.0.1", "-p", &port_s];
    args.extend_from_slice(extra);
    args.extend_from_slice(plugin);
    spawn_peer("nbdkit", "nbdkit", &args, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_nbdkit_memory() {
    let port = free_port();
    let _kit = nbdkit(port, &[], &["memory", "size=8M"]);
    let client = Client::connect(("127.0.0.1", port), "").await.unwrap();
    assert_eq!(client.size_bytes(), 8 * 1024 * 1024);
    assert!(client.info().structured_replies);
    assert!(client.supports_block_status());

    // A fresh memory disk is one hole.
    let extents = client.block_status(0, client.size_bytes()).await.unwrap();
    assert!(extents.iter().all(|e| e.hole && e.zero), "{extents:?}");

    let mut rng = Rng::new(5);
    let mut data = vec![0u8; 1024 * 1024 + 777];
    rng.fill(&mut data);
    client
        .write(3 * 1024 * 1024 + 5, data.clone())
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_same(
        &client.read(3 * 1024 * 1024 + 5, data.len()).await.unwrap(),
        &data,
        "nbdkit read back",
    );
    let extents = client.block_status(0, client.size_bytes()).await.unwrap();
    assert!(
        extents.iter().any(|e| !e.hole),
        "written data shows up as allocated: {extents:?}"
    );
    assert_eq!(
        extents.iter().map(|e| e.length_bytes).sum::<u64>(),
        client.size_bytes()
    );

    client.trim(3 * 1024 * 1024, 1024 * 1024).await.unwrap();
    client.write_zeroes(4 * 1024 * 1024, 4096).await.unwrap();
    let back = client.read(4 * 1024 * 1024, 4096).await.unwrap();
    assert!(back.iter().all(|&b| b == 0));
    // Past the end: refused by the client without a round trip.
    assert!(matches!(
        client.read(8 * 1024 * 1024, 1).await,
        Err(Error::OutOfRange { .. })
    ));
    client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_nbdkit_file_and_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img.raw");
    let contents = make_image(&image, SIZE, 11);
    let image_s = image.to_str().unwrap();
    let file_arg = format!("file={image_s}");

    // Structured replies and block status.
    let port = free_port();
    let kit = nbdkit(port, &["-r"], &["file", &file_arg]);
    let client = Client::connect(("127.0.0.1", port), "").await.unwrap();
    assert_eq!(client.size_bytes(), SIZE as u64);
    assert!(client.read_only());
    assert_same(
        &client.read(0, SIZE).await.unwrap(),
        &contents,
        "nbdkit file read",
    );
    let extents = client.block_status(0, SIZE as u64).await.unwrap();
    assert_eq!(
        extents.iter().map(|e| e.length_bytes).sum::<u64>(),
        SIZE as u64
    );
    assert!(
        extents.iter().any(|e| e.hole),
        "nbdkit file reports holes: {extents:?}"
    );
    client.disconnect().await.unwrap();
    drop(kit);

    // No structured replies: simple replies, no block status.
    let port = free_port();
    let kit = nbdkit(port, &["-r", "--no-sr"], &["file", &file_arg]);
    let client = Client::connect(("127.0.0.1", port), "").await.unwrap();
    assert!(!client.info().structured_replies);
    assert!(!client.supports_block_status());
    assert_same(
        &client.read(0, SIZE).await.unwrap(),
        &contents,
        "nbdkit simple-reply read",
    );
    client.disconnect().await.unwrap();
    drop(kit);

    // No fixed newstyle: NBD_OPT_EXPORT_NAME is all there is.
    let port = free_port();
    let _kit = nbdkit(port, &["-r", "--mask-handshake=0"], &["file", &file_arg]);
    let client = Client::connect(("127.0.0.1", port), "").await.unwrap();
    assert_eq!(client.size_bytes(), SIZE as u64);
    assert!(!client.info().structured_replies);
    assert_same(
        &client.read(0, SIZE).await.unwrap(),
        &contents,
        "nbdkit export-name read",
    );
    client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_and_nbdcopy_against_our_server() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("src.raw");
    let contents = make_image(&image, SIZE, 21);
    let file: Arc<dyn Export> = Arc::new(FileExport::open(&image, true).unwrap());
    let mem: Arc<dyn Export> = Arc::new(MemExport::new(vec![0u8; 1024 * 1024], false));
    let catalog = MapCatalog::new().with("vol", file).with("scratch", mem);
    let (addr, server) = start_server(Arc::new(catalog)).await;
    let base = format!("nbd://127.0.0.1:{}", addr.port());

    let b = base.clone();
    let list = tokio::task::spawn_blocking(move || run("nbdinfo", "libnbd-bin", &["--list", &b]))
        .await
        .unwrap();
    assert!(
        list.contains("vol") && list.contains("scratch"),
        "nbdinfo --list output:\n{list}"
    );

    let url = format!("{base}/vol");
    let u = url.clone();
    let info = tokio::task::spawn_blocking(move || run("nbdinfo", "libnbd-bin", &["--json", &u]))
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).expect("nbdinfo --json prints JSON");
    let export = &info["exports"][0];
    assert_eq!(export["export-size"].as_u64(), Some(SIZE as u64), "{info}");
    assert_eq!(export["is_read_only"].as_bool(), Some(true), "{info}");
    assert_eq!(export["can_multi_conn"].as_bool(), Some(true), "{info}");
    assert_eq!(info["protocol"].as_str(), Some("newstyle-fixed"), "{info}");
    assert_eq!(export["can_df"].as_bool(), Some(true), "{info}");

    // --map: lines of "offset length type description"; holes must match the image.
    let u = url.clone();
    let map = tokio::task::spawn_blocking(move || run("nbdinfo", "libnbd-bin", &["--map", &u]))
        .await
        .unwrap();
    let mut covered = 0u64;
    let mut hole_bytes = 0u64;
    for line in map.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let offset: u64 = fields[0].parse().unwrap();
        let length: u64 = fields[1].parse().unwrap();
        let kind: u32 = fields[2].parse().unwrap();
        assert_eq!(offset, covered, "map is contiguous:\n{map}");
        if kind & 2 != 0 {
            let r = offset as usize..(offset + length) as usize;
            assert!(
                contents[r.clone()].iter().all(|&b| b == 0),
                "zero extent {r:?} has data"
            );
        }
        if kind & 1 != 0 {
            hole_bytes += length;
        }
        covered += length;
    }
    assert_eq!(covered, SIZE as u64, "map covers the export:\n{map}");
    let holes = (0..SIZE / BLOCK)
        .filter(|&i| kind_of(i) == Kind::Hole)
        .count()
        * BLOCK;
    assert_eq!(hole_bytes, holes as u64, "holes in map:\n{map}");

    // nbdcopy with several connections (we advertise multi-conn for read-only exports).
    let out = dir.path().join("copy.raw");
    let out_s = out.to_str().unwrap().to_owned();
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        run("nbdcopy", "libnbd-bin", &["--connections=4", &u, &out_s])
    })
    .await
    .unwrap();
    assert_same(&std::fs::read(&out).unwrap(), &contents, "nbdcopy output");

    // Unknown export: nbdinfo fails (the server said NBD_REP_ERR_UNKNOWN).
    let nope = format!("{base}/missing");
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(require_tool("nbdinfo", "libnbd-bin"))
            .arg(&nope)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!status.success(), "nbdinfo succeeded on a missing export");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_writes_into_our_server() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("src.raw");
    let contents = make_image(&image, 3 * 1024 * 1024 + 4096, 31);
    let mem = Arc::new(MemExport::new(vec![0x55u8; contents.len()], false));
    let export: Arc<dyn Export> = mem.clone();
    let (addr, server) = start_server(Arc::new(MapCatalog::new().with("dst", export))).await;
    let url = format!("nbd://127.0.0.1:{}/dst", addr.port());
    let image_s = image.to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || run("nbdcopy", "libnbd-bin", &[&image_s, &url]))
        .await
        .unwrap();
    assert_same(&mem.snapshot(), &contents, "export after nbdcopy");
    server.abort();
}
