//! Interop with QEMU: our client against `qemu-nbd`, and `qemu-img`/`qemu-io` against
//! our server. Real processes on loopback; nothing is mocked.

mod common;

use std::sync::Arc;

use common::*;
use rehydrate_nbd::{
    Client, ClientOptions, Error, Export, FileExport, MapCatalog, MemExport, TransmissionFlags,
};

/// Not a multiple of 4 KiB (qemu's raw driver works in 512-byte sectors, so keep that).
const SIZE: usize = 20 * 1024 * 1024 + 3 * 512;

fn qemu_nbd(image: &std::path::Path, port: u16, name: &str, read_only: bool) -> Peer {
    let port_s = port.to_string();
    let mut args = vec![
        "--persistent",
        "--shared=8",
        "-f",
        "raw",
        "-b",
        "127.0.0.1",
        "-p",
        &port_s,
        "-x",
        name,
    ];
    if read_only {
        args.push("--read-only");
    }
    let image = image.to_str().expect("utf-8 path");
    args.push(image);
    spawn_peer("qemu-nbd", "qemu-utils", &args, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_reads_qemu_nbd_with_block_status() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("src.raw");
    let contents = make_image(&image, SIZE, 1);
    let port = free_port();
    let _qemu = qemu_nbd(&image, port, "disk", true);

    let client = Client::connect(("127.0.0.1", port), "disk").await.unwrap();
    assert_eq!(client.size_bytes(), SIZE as u64);
    assert!(client.read_only());
    assert!(
        client.info().structured_replies,
        "qemu-nbd offers structured replies"
    );
    assert!(
        client.supports_block_status(),
        "qemu-nbd offers base:allocation"
    );
    assert!(client.flags().contains(TransmissionFlags::CAN_MULTI_CONN));

    // Many reads in flight at once on one connection.
    let piece = 1024 * 1024 + 512;
    let mut tasks = Vec::new();
    for offset in (0..SIZE).step_by(piece) {
        let c = client.clone();
        let len = piece.min(SIZE - offset);
        tasks.push(tokio::spawn(async move {
            (offset, c.read(offset as u64, len).await)
        }));
    }
    let mut got = vec![0u8; SIZE];
    for t in tasks {
        let (offset, data) = t.await.unwrap();
        let data = data.unwrap();
        got[offset..offset + data.len()].copy_from_slice(&data);
    }
    assert_same(&got, &contents, "qemu-nbd read");

    // Block status: covers the export; every zero extent is zero; holes are found.
    let extents = client.block_status(0, SIZE as u64).await.unwrap();
    assert_eq!(
        extents.iter().map(|e| e.length_bytes).sum::<u64>(),
        SIZE as u64
    );
    let mut at = 0usize;
    let mut hole_bytes = 0u64;
    for e in &extents {
        let range = at..at + e.length_bytes as usize;
        if e.zero {
            assert!(
                contents[range.clone()].iter().all(|&b| b == 0),
                "zero extent {range:?} holds data"
            );
        }
        if e.hole {
            hole_bytes += e.length_bytes;
        }
        at = range.end;
    }
    let expected_holes = (0..SIZE / BLOCK)
        .filter(|&i| kind_of(i) == Kind::Hole)
        .count()
        * BLOCK;
    assert!(
        hole_bytes >= expected_holes as u64 / 2,
        "qemu-nbd reported {hole_bytes} hole bytes, image has {expected_holes}"
    );

    // Typed refusals, checked before anything is sent.
    assert!(matches!(
        client.read(SIZE as u64 - 1, 2).await,
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        client.write(0, vec![1u8; 512]).await,
        Err(Error::Unsupported(_))
    ));
    client.disconnect().await.unwrap();

    // Simple replies only: the same bytes, no block status (one "data" extent).
    let simple = Client::connect_with(
        ("127.0.0.1", port),
        "disk",
        ClientOptions {
            structured_replies: false,
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(!simple.info().structured_replies);
    let data = simple.read(0, SIZE).await.unwrap();
    assert_same(&data, &contents, "qemu-nbd simple-reply read");
    assert_eq!(simple.block_status(0, 4096).await.unwrap().len(), 1);

    // Unknown export: typed.
    let err = Client::connect(("127.0.0.1", port), "nope")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownExport { .. } | Error::OptionRefused { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_writes_to_qemu_nbd() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rw.raw");
    let mut contents = make_image(&image, 4 * 1024 * 1024, 2);
    let port = free_port();
    let _qemu = qemu_nbd(&image, port, "rw", false);
    let client = Client::connect(("127.0.0.1", port), "rw").await.unwrap();
    assert!(!client.read_only());

    let mut rng = Rng::new(9);
    let mut patch = vec![0u8; 300 * 1024];
    rng.fill(&mut patch);
    client.write(12345 * 8, patch.clone()).await.unwrap();
    contents[12345 * 8..12345 * 8 + patch.len()].copy_from_slice(&patch);
    client.write_zeroes(1024 * 1024, 64 * 1024).await.unwrap();
    contents[1024 * 1024..1024 * 1024 + 64 * 1024].fill(0);
    client.flush().await.unwrap();
    let back = client.read(0, contents.len()).await.unwrap();
    assert_same(&back, &contents, "read back after write");
    client.disconnect().await.unwrap();
    drop(_qemu);
    assert_same(
        &std::fs::read(&image).unwrap(),
        &contents,
        "image file after write",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_and_map_read_our_server() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("src.raw");
    let contents = make_image(&image, SIZE, 3);
    let export: Arc<dyn Export> = Arc::new(FileExport::open(&image, true).unwrap());
    let (addr, server) = start_server(Arc::new(MapCatalog::new().with("vol", export))).await;
    let url = format!("nbd://127.0.0.1:{}/vol", addr.port());

    let out = dir.path().join("out.raw");
    let out_s = out.to_str().unwrap().to_owned();
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || {
        run(
            "qemu-img",
            "qemu-utils",
            &["convert", "-f", "raw", "-O", "raw", &url2, &out_s],
        )
    })
    .await
    .unwrap();
    assert_same(
        &std::fs::read(&out).unwrap(),
        &contents,
        "qemu-img convert output",
    );

    let url2 = url.clone();
    let map = tokio::task::spawn_blocking(move || {
        run(
            "qemu-img",
            "qemu-utils",
            &["map", "--output=json", "-f", "raw", &url2],
        )
    })
    .await
    .unwrap();
    let map: serde_json::Value = serde_json::from_str(&map).expect("qemu-img map prints JSON");
    let entries = map.as_array().expect("a JSON array");
    let mut covered = 0u64;
    let mut zero_bytes = 0u64;
    for e in entries {
        let start = e["start"].as_u64().unwrap();
        let length = e["length"].as_u64().unwrap();
        assert_eq!(start, covered, "map entries are contiguous");
        if e["zero"].as_bool() == Some(true) {
            let r = start as usize..(start + length) as usize;
            assert!(
                contents[r.clone()].iter().all(|&b| b == 0),
                "qemu-img saw zero at {r:?} but data is there"
            );
            zero_bytes += length;
        }
        covered += length;
    }
    assert_eq!(covered, SIZE as u64);
    let holes = (0..SIZE / BLOCK)
        .filter(|&i| kind_of(i) == Kind::Hole)
        .count()
        * BLOCK;
    assert!(
        zero_bytes >= holes as u64,
        "qemu-img map found {zero_bytes} zero bytes; the image has {holes} in holes"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_to_our_server() {
    let mem = Arc::new(MemExport::new(vec![0u8; 2 * 1024 * 1024], false));
    let export: Arc<dyn Export> = mem.clone();
    let (addr, server) = start_server(Arc::new(MapCatalog::new().with("scratch", export))).await;
    let url = format!("nbd://127.0.0.1:{}/scratch", addr.port());
    tokio::task::spawn_blocking(move || {
        run(
            "qemu-io",
            "qemu-utils",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0xab 4096 65536",
                "-c",
                "write -z 8192 4096",
                "-c",
                "flush",
                "-c",
                "read -P 0xab 4096 4096",
                "-c",
                "discard 1048576 65536",
                &url,
            ],
        )
    })
    .await
    .unwrap();
    let snapshot = mem.snapshot();
    assert!(snapshot[4096..8192].iter().all(|&b| b == 0xab));
    assert!(snapshot[8192..12288].iter().all(|&b| b == 0));
    assert!(snapshot[12288..4096 + 65536].iter().all(|&b| b == 0xab));
    assert!(snapshot[..4096].iter().all(|&b| b == 0));
    server.abort();
}
