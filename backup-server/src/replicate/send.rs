//! The sending shell: loads the volumes, connects, and runs a [`Sender`], performing its
//! actions (socket writes, chunk reads). It decides nothing.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::conn;
use super::error::ReplicateError;
use super::message::Message;
use super::sender::{Action, LocalVolume, Outcome, Sender, MIN_FRAME_WEIGHT_BYTES};
use crate::chunk::ChunkHash;
use crate::error::BackupError;
use crate::name::VolumeName;
use crate::store::ChunkStore;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Volume by volume.
    pub outcome: Outcome,
    /// Bytes put on the wire.
    pub bytes_sent: u64,
}

/// How to replicate.
#[derive(Clone, Debug)]
pub struct Options {
    /// The receiver's address.
    pub to: String,
    /// The volumes (empty: every volume of the store).
    pub volumes: Vec<VolumeName>,
    /// Bytes in flight beyond the receiver's acknowledgements.
    pub window_bytes: u64,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Speak TLS to the receiver, checking its certificate against the host of `to`.
    pub tls: Option<rehydrate_nbd::ClientTls>,
}

/// The host of `HOST:PORT` (`[v6]:PORT` too): what the receiver's certificate must name.
fn host_of(to: &str) -> &str {
    let host = to.rsplit_once(':').map_or(to, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Load every version index of the volumes to send.
pub async fn load_local(
    store: &ChunkStore,
    volumes: &[VolumeName],
) -> Result<Vec<LocalVolume>, BackupError> {
    let names = if volumes.is_empty() {
        store.volumes().await?
    } else {
        volumes.to_vec()
    };
    let mut out = Vec::with_capacity(names.len());
    for volume in names {
        let versions = store.versions(&volume).await?;
        if versions.is_empty() {
            if volumes.is_empty() {
                continue;
            }
            return Err(ReplicateError::NoSuchVolume(volume.to_string()).into());
        }
        let mut l = LocalVolume {
            volume,
            versions: Vec::with_capacity(versions.len()),
        };
        for v in versions {
            l.versions
                .push((v, store.read_index_bytes(&l.volume, v).await?));
        }
        out.push(l);
    }
    Ok(out)
}

/// Replicate `store` to the receiver at `options.to`.
pub async fn replicate(store: &ChunkStore, options: &Options) -> Result<Report, BackupError> {
    let store_id = store.identity().await?;
    let local = load_local(store, &options.volumes).await?;
    let connect_err = |source| ReplicateError::Connect {
        addr: options.to.clone(),
        source,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&options.to))
        .await
        .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect_err)?;
    // Enough room for every acknowledgement a full window can cause, so reading them
    // never waits for the writer (which may be waiting for the window to open).
    let buffer = (options.window_bytes / MIN_FRAME_WEIGHT_BYTES) as usize + 64;
    let (mut incoming, mut writer) = match &options.tls {
        None => conn::split(stream, buffer),
        Some(tls) => {
            let _ = stream.set_nodelay(true);
            let tls = tls
                .clone()
                .with_server_name(host_of(&options.to))
                .map_err(BackupError::Tls)?;
            let secure = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(stream, None))
                .await
                .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
                .map_err(BackupError::Tls)?;
            conn::split_duplex(secure, buffer)
        }
    };
    let mut core = Sender::new(store_id, local, options.window_bytes);
    let (read_tx, mut read_rx) = mpsc::unbounded_channel();
    let mut reading = 0usize;
    let mut peer_open = true;
    // A write that failed (the receiver closed or reset the connection): the receiver
    // usually said why in an Error frame just before, so read on until the connection
    // ends (a few seconds at most) and report that reason; the write error only if none
    // came.
    let mut write_failed: Option<(String, tokio::time::Instant)> = None;
    let bar = progress_bar(options.progress);
    let mut outcome = None;
    while outcome.is_none() {
        while let Some(action) = core.poll_action() {
            match action {
                Action::Send(m) => {
                    // Progress counts chunks at their full length (the manifest's), sent
                    // compressed or not, so the bar ends at its total.
                    let chunk_bytes = match &m {
                        Message::Chunk { hash, .. } | Message::Unavailable { hash, .. } => {
                            core.manifest().chunk_len(hash).unwrap_or_default() as u64
                        }
                        _ => 0,
                    };
                    if peer_open && write_failed.is_none() {
                        if let Err(e) = writer.send(&m).await {
                            let deadline = tokio::time::Instant::now() + WRITE_FAILED_READ_SECS;
                            write_failed = Some((e.to_string(), deadline));
                        }
                    }
                    bar.set_length(core.requested_bytes());
                    bar.inc(chunk_bytes);
                }
                Action::ReadChunk { hash, expected_len } => {
                    reading += 1;
                    let (store, tx) = (store.clone(), read_tx.clone());
                    tokio::spawn(async move {
                        let r = store.get_chunk_stored(&hash, expected_len).await;
                        let _ = tx.send((hash, r));
                    });
                }
                Action::Finish(o) => outcome = Some(o),
            }
        }
        if outcome.is_some() {
            break;
        }
        tokio::select! {
            Some((hash, read)) = read_rx.recv(), if reading > 0 => {
                reading -= 1;
                on_read(&mut core, hash, read);
            }
            next = incoming.recv(), if peer_open => match next {
                Some(Ok(m)) => core.frame(m),
                Some(Err(e)) => {
                    peer_open = false;
                    core.peer_gone(write_error_or(&write_failed, e.to_string()));
                }
                None => {
                    peer_open = false;
                    core.peer_gone(write_error_or(&write_failed, "the connection ended".into()));
                }
            },
            _ = sleep_until_or_never(write_failed.as_ref().map(|w| w.1)), if write_failed.is_some() => {
                peer_open = false;
                core.peer_gone(write_error_or(&write_failed, String::new()));
            }
            else => core.peer_gone(write_error_or(&write_failed, "the connection ended".into())),
        }
    }
    bar.finish_and_clear();
    writer.close().await;
    Ok(Report {
        outcome: outcome.unwrap_or_default(),
        bytes_sent: writer.bytes_sent(),
    })
}

/// How long the sender reads on after a write failed, for the receiver's reason.
const WRITE_FAILED_READ_SECS: std::time::Duration = std::time::Duration::from_secs(5);

/// The reason a session ended: the failed write's error if there was one (the reading
/// side then only ended as a consequence), else `other`.
fn write_error_or(write_failed: &Option<(String, tokio::time::Instant)>, other: String) -> String {
    write_failed.as_ref().map_or(other, |(e, _)| e.clone())
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn on_read(core: &mut Sender, hash: ChunkHash, read: Result<crate::chunk::Encoded, BackupError>) {
    match read {
        Ok(encoded) => core.chunk_read(hash, encoded.encoding, encoded.body),
        Err(e) => {
            tracing::error!(%hash, error = %e, "cannot read a chunk to send");
            core.chunk_unreadable(hash, e.to_string());
        }
    }
}

fn progress_bar(wanted: bool) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "replicate {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}
