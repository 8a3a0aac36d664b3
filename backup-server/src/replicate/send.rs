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
    let (mut incoming, mut writer) = conn::split(stream, buffer);
    let mut core = Sender::new(store_id, local, options.window_bytes);
    let (read_tx, mut read_rx) = mpsc::unbounded_channel();
    let mut reading = 0usize;
    let mut peer_open = true;
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
                    if peer_open {
                        if let Err(e) = writer.send(&m).await {
                            peer_open = false;
                            core.peer_gone(e.to_string());
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
                    core.peer_gone(e.to_string());
                }
                None => {
                    peer_open = false;
                    core.peer_gone("the connection ended".into());
                }
            },
            else => core.peer_gone("the connection ended".into()),
        }
    }
    bar.finish_and_clear();
    writer.close().await;
    Ok(Report {
        outcome: outcome.unwrap_or_default(),
        bytes_sent: writer.bytes_sent(),
    })
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
