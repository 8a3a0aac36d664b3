//! Copy a whole NBD export into a file with this crate's client, holes skipped through
//! block status: `read-export URL OUT [IN_FLIGHT]`. `nbds://` URLs take their
//! certificates from REHYDRATE_TLS_CA (and REHYDRATE_TLS_CERT, REHYDRATE_TLS_KEY).
//! The TLS benchmark (`benches/restore-tls.sh`) times it plain and through TLS. Like
//! `qemu-img convert`, it leaves the copy in the page cache (no fsync): it measures the
//! transfer.

use std::os::unix::fs::FileExt;
use std::time::Instant;

use rehydrate_nbd::{Client, ClientOptions, ClientTls, NbdUrl};

/// Bytes per read request (the whole copy keeps IN_FLIGHT of them going).
const PIECE_BYTES: u64 = 1 << 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(out)) = (args.get(1), args.get(2)) else {
        return Err("usage: read-export URL OUT [IN_FLIGHT]".into());
    };
    let in_flight: usize = args.get(3).map_or(Ok(8), |n| n.parse())?;
    let url = NbdUrl::parse(url)?;
    let options = ClientOptions {
        tls: ClientTls::for_url(&url)?,
        max_in_flight: in_flight,
        ..ClientOptions::default()
    };
    let started = Instant::now();
    let client = Client::connect_with(url.address(), &url.export, options).await?;
    let size = client.size_bytes();
    let file = std::sync::Arc::new(std::fs::File::create(out)?);
    file.set_len(size)?;
    let mut data_bytes = 0u64;
    let mut pieces = Vec::new();
    let mut at = 0;
    for extent in client.block_status(0, size).await? {
        let end = at + extent.length_bytes;
        if !extent.hole {
            let mut p = at;
            while p < end {
                pieces.push((p, (end - p).min(PIECE_BYTES)));
                p += PIECE_BYTES;
            }
        }
        at = end;
    }
    // One task per piece, at most IN_FLIGHT at once (the client bounds them too).
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (offset, len) in pieces {
        let permit = std::sync::Arc::clone(&slots).acquire_owned().await?;
        let (client, file) = (client.clone(), std::sync::Arc::clone(&file));
        tasks.spawn(async move {
            let data = client.read(offset, len as usize).await?;
            file.write_all_at(&data, offset)?;
            drop(permit);
            Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(len)
        });
    }
    while let Some(done) = tasks.join_next().await {
        data_bytes += done?.map_err(|e| e.to_string())?;
    }
    client.disconnect().await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "read-export: bytes={size} data_bytes={data_bytes} secs={secs:.3} mib_per_sec={:.1} tls={}",
        size as f64 / secs / 1048576.0,
        url.tls
    );
    Ok(())
}
