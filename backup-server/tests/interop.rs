//! Back up a 256 MiB image and read it back through real NBD peers: qemu-img (convert,
//! map), nbdinfo (--list) and the nbd crate's client, several at once.

mod common;

use common::*;
use std::process::Command;

/// The image: random data, a 64 MiB zero run, a 1.5 MiB zero run that is not chunk
/// aligned, and a size that is not a multiple of the chunk size (nor of 512).
const RUNS: &[(u64, bool)] = &[
    (96 * MIB, true),
    (64 * MIB, false),
    (40 * MIB, true),
    (3 * MIB / 2, false),
    (109 * MIB / 2, true),
    (12345, true),
];

#[test]
fn backup_then_serve_to_qemu_nbdinfo_and_our_client() {
    require_tool("qemu-img", "qemu-utils");
    require_tool("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let (image, store) = (dir.path().join("disk.img"), dir.path().join("store"));
    let data = write_image(&image, RUNS, 1);
    let size = data.len() as u64;
    assert_eq!(size, 256 * MIB + 12345);

    let first = backup(&image, &store, "disk");
    assert_eq!(first["version"], 1);
    assert_eq!(first["bytes"], size);
    assert_eq!(
        first["zero_chunks"], 65,
        "64 MiB run + the one whole chunk of the 1.5 MiB run"
    );
    assert_eq!(first["new_chunks"], 257 - 65);
    assert_eq!(first["reused_chunks"], 0);
    let second = backup(&image, &store, "disk");
    assert_eq!(
        (
            second["version"],
            second["new_chunks"],
            second["reused_chunks"]
        ),
        (2, 0, 192)
    );

    let server = Server::start(&store);

    // qemu-img convert, for the newest version and an explicit one.
    for export in ["disk", "disk@1"] {
        let out = dir.path().join("out.raw");
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", &server.url(export)])
                .arg(&out),
        );
        let got = std::fs::read(&out).unwrap();
        // qemu sizes devices in 512-byte sectors: the tail past the export reads as zeroes.
        assert_eq!(got.len() as u64, size.next_multiple_of(512));
        assert!(
            got[..data.len()] == data[..],
            "{export}: qemu-img convert output differs"
        );
        assert!(got[data.len()..].iter().all(|&b| b == 0));
    }

    // qemu-img map: the zero runs are zero, not data.
    let map = run_ok(Command::new("qemu-img").args(["map", "--output=json", &server.url("disk")]));
    let extents: Vec<serde_json::Value> = serde_json::from_slice(&map.stdout).unwrap();
    let zero_ranges: Vec<(u64, u64)> = extents
        .iter()
        .filter(|e| e["zero"] == true && e["data"] == false)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .filter(|&(start, _)| start < size)
        .collect();
    assert_eq!(
        zero_ranges,
        vec![(96 * MIB, 64 * MIB), (200 * MIB, MIB)],
        "{extents:?}"
    );

    // nbdinfo --list: every volume and every version.
    let list = run_ok(Command::new("nbdinfo").args(["--list", &format!("nbd://{}", server.addr)]));
    let listed = String::from_utf8_lossy(&list.stdout);
    for name in ["export=\"disk\"", "export=\"disk@1\"", "export=\"disk@2\""] {
        assert!(listed.contains(name), "{name} missing from:\n{listed}");
    }

    // Read-only exports advertise multi-conn: nbdcopy and `rehydrate restore` then
    // read over several connections at once.
    let info = run_ok(Command::new("nbdinfo").args(["--json", &server.url("disk")]));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["exports"][0]["can_multi_conn"].as_bool(),
        Some(true),
        "{info}"
    );

    // Our client: four connections at once over both versions, and block status.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let reads: Vec<_> = ["disk", "disk@1", "disk@2", "disk"]
            .into_iter()
            .map(|export| tokio::spawn(read_all(server.addr, export)))
            .collect();
        for read in reads {
            assert!(read.await.unwrap() == data, "nbd client read differs");
        }
        let client = rehydrate_nbd::Client::connect(server.addr, "disk")
            .await
            .unwrap();
        assert!(client.read_only());
        let holes: Vec<(u64, u64)> = {
            let mut at = 0;
            let mut holes = Vec::new();
            for e in client.block_status(0, size).await.unwrap() {
                if e.hole {
                    assert!(e.zero, "holes read as zero");
                    holes.push((at, e.length_bytes));
                }
                at += e.length_bytes;
            }
            holes
        };
        assert_eq!(holes, vec![(96 * MIB, 64 * MIB), (200 * MIB, MIB)]);
        // Writes are refused by the read-only export.
        assert!(client.write(0, vec![1u8; 512]).await.is_err());
        client.disconnect().await.unwrap();
    });

    // nbdinfo with a path-like name: refused, nothing outside the store is opened.
    let bad = Command::new("nbdinfo")
        .arg(server.url("..%2F..%2Fetc%2Fpasswd"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn bad_export_names_are_unknown_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (image, store) = (dir.path().join("small.img"), dir.path().join("store"));
    write_image(&image, &[(3 * MIB, true)], 7);
    backup(&image, &store, "vol");
    // A file the server must never serve, beside the store.
    std::fs::write(dir.path().join("secret"), b"secret").unwrap();
    let server = Server::start(&store);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(
            rehydrate_nbd::Client::connect(server.addr, "vol@1")
                .await
                .unwrap()
                .size_bytes(),
            3 * MIB
        );
        for name in [
            "",
            "nope",
            "vol@2",
            "vol@0",
            "vol@",
            "vol@x",
            "vol@1@1",
            "../secret",
            "../../secret",
            "vol/../../secret",
            "/etc/passwd",
            "vol@1/../..",
            "chunks",
            "..",
            ".",
            "vol\\..\\x",
        ] {
            match rehydrate_nbd::Client::connect(server.addr, name).await {
                Err(rehydrate_nbd::Error::UnknownExport { name: n, .. }) => assert_eq!(n, name),
                other => panic!("export {name:?} was not refused as unknown: {other:?}"),
            }
        }
    });
}
