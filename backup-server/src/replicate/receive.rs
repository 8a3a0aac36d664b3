//! The receiving shell: accepts connections and runs one [`Receiver`] per session,
//! performing its actions against the store and the session record. It decides nothing.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use rehydrate_nbd::ServerTls;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::error::ReplicateError;
use super::message::VolumeChain;
use super::receiver::{Action, LocalState, PriorSession, Receiver};
use super::session_dir::{hex_id, RecordFile, SessionDir};
use super::{conn, platform};
use crate::chunk::{self, ChunkHash};
use crate::error::BackupError;
use crate::index::{ChunkRef, Index};
use crate::name::VolumeName;
use crate::store::{ChunkStore, PublishVersionOutcome};

/// Chunks being verified and written at once; the socket is not read while this many
/// wait, so memory stays bounded and the sender slows down.
pub const STORING_IN_FLIGHT: usize = 8;
/// How long a session waits for an earlier one of the same sender: tries x step.
const LOCK_WAIT_TRIES: u32 = 200;
const LOCK_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(50);
/// Chunks checked at once when looking for chunks already in the store.
const CHECK_IN_FLIGHT: usize = 8;

/// How long a sender may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Accept sessions on `listener` into `store` until `shutdown` completes; over TLS when
/// `tls` is given (and then only from senders whose certificate its client CA signed,
/// when it has one).
pub async fn receive_on(
    listener: TcpListener,
    store: ChunkStore,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BackupError> {
    if store.local_root().is_none() {
        return Err(ReplicateError::NotLocal.into());
    }
    let store_id = store.identity().await?;
    tracing::info!(store = store.name(), id = %hex_id(&store_id), "receiving");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let store = store.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        let ended = match tls {
                            None if speaks_tls(&stream).await => {
                                tracing::warn!(
                                    %peer,
                                    "refused: the sender speaks TLS and this receiver has no --tls-cert"
                                );
                                return;
                            }
                            None => session(stream, store, store_id).await,
                            Some(tls) => {
                                let secure =
                                    tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await;
                                match secure {
                                    Ok(Ok((stream, who))) => {
                                        tracing::info!(%peer, client = ?who.common_name, "TLS session");
                                        session(stream, store, store_id).await
                                    }
                                    Ok(Err(e)) => {
                                        tracing::warn!(%peer, error = %e, "refused: TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::warn!(%peer, "refused: no TLS handshake in time");
                                        return;
                                    }
                                }
                            }
                        };
                        match ended {
                            Ok(()) => tracing::info!(%peer, "session ended"),
                            Err(e) => tracing::warn!(%peer, error = %e, "session ended with an error"),
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
        }
    }
}

/// Whether the first bytes `stream` sent are a TLS handshake record (type 22, version
/// 3.x). A frame cannot start so: its first four bytes are a little-endian length, and
/// a hello of 0x??0316 bytes (200 KiB and more) would be far past what a hello holds.
/// Answering such a sender by closing at once spares it a wait for a server hello that
/// never comes.
async fn speaks_tls(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 2];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    matches!(peeked, Ok(Ok(2))) && first == [0x16, 0x03]
}

/// What a chunk-storing task found.
enum Stored {
    Written(ChunkHash, u64),
    Rejected(ChunkHash, String),
    Failed(String),
}

/// Run one session to its end.
pub async fn session(
    stream: impl conn::Duplex,
    store: ChunkStore,
    store_id: [u8; 16],
) -> Result<(), ReplicateError> {
    let root = store
        .local_root()
        .ok_or(ReplicateError::NotLocal)?
        .to_owned();
    let (mut incoming, mut writer) = conn::split_duplex(stream, 4);
    let mut core = Receiver::new(store_id);
    let (stored_tx, mut stored_rx) = mpsc::unbounded_channel();
    let mut storing = 0usize;
    let (synced_tx, mut synced_rx) = mpsc::unbounded_channel();
    let mut syncing = false;
    let mut peer_open = true;
    let mut dir: Option<SessionDir> = None;
    let mut record: Option<RecordFile> = None;
    let mut _lock = None;
    let mut ended_with: Option<String> = None;
    let mut stalled = false;
    let mut heard = false;
    loop {
        while let Some(action) = core.poll_action() {
            match action {
                Action::Send(m) => {
                    if peer_open {
                        if let Err(e) = writer.send(&m).await {
                            peer_open = false;
                            core.peer_gone(Some(e.to_string()));
                        }
                    }
                }
                Action::Load { sender_id, volumes } => {
                    let d = SessionDir::new(&root, &sender_id);
                    let loaded = match lock_waiting(&d).await {
                        Ok(Some(lock)) => {
                            _lock = Some(lock);
                            load(&store, &d, &volumes).await
                        }
                        Ok(None) => {
                            Err("a session from this sending store is already running".into())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    match loaded {
                        Ok((state, rec)) => {
                            record = rec;
                            core.loaded(state);
                        }
                        Err(reason) => {
                            core.store_failed(reason);
                            core.loaded(LocalState::default());
                        }
                    }
                    dir = Some(d);
                }
                Action::SaveRecord {
                    sender_id,
                    manifest,
                } => {
                    let d = dir.clone().expect("Load comes before SaveRecord");
                    let created =
                        tokio::task::spawn_blocking(move || d.create(sender_id, &manifest)).await;
                    match created {
                        Ok(Ok(r)) => record = Some(r),
                        Ok(Err(e)) => core.store_failed(e.to_string()),
                        Err(e) => core.store_failed(e.to_string()),
                    }
                    core.record_saved();
                }
                Action::CheckPresent(wanted) => {
                    let found = check_present(&store, wanted).await;
                    core.checked(found);
                }
                Action::StoreChunk {
                    hash,
                    expected_len,
                    encoding,
                    body,
                } => {
                    storing += 1;
                    let (store, tx) = (store.clone(), stored_tx.clone());
                    tokio::spawn(async move {
                        let _ =
                            tx.send(store_chunk(&store, hash, expected_len, encoding, body).await);
                    });
                }
                Action::SyncAndRecord(hashes) => {
                    // In the background: chunks keep arriving while the batch is synced.
                    let (root, rec, tx) = (root.clone(), record.take(), synced_tx.clone());
                    let (store, runtime) = (store.clone(), tokio::runtime::Handle::current());
                    syncing = true;
                    tokio::task::spawn_blocking(move || {
                        let durable =
                            |h: &[ChunkHash]| platform::make_durable(&root, &store, h, &runtime);
                        let _ = tx.send((sync_and_record(durable, rec, &hashes), hashes));
                    });
                }
                Action::Publish {
                    volume,
                    version,
                    index,
                } => match store.publish_version(&volume, version, index).await {
                    Ok(outcome) => {
                        if outcome == PublishVersionOutcome::AlreadyPresent {
                            tracing::info!(%volume, version, "version was already published");
                        }
                        tracing::info!(%volume, version, "committed");
                        core.published(volume, version, Ok(()));
                    }
                    Err(e @ BackupError::VersionConflict { .. }) => {
                        core.published(volume, version, Err(e.to_string()))
                    }
                    Err(e) => core.publish_io_failed(e.to_string()),
                },
                Action::Finish { complete, error } => {
                    if complete {
                        if let Some(d) = &dir {
                            if let Err(e) = d.remove() {
                                tracing::warn!(error = %e, "cannot remove a finished session record");
                            }
                        }
                    }
                    ended_with = error;
                }
            }
        }
        if core.is_finished() {
            break;
        }
        tokio::select! {
            Some((result, hashes)) = synced_rx.recv(), if syncing => {
                syncing = false;
                match result {
                    Ok(r) => {
                        record = Some(r);
                        core.synced(hashes);
                    }
                    Err((r, e)) => {
                        record = r;
                        core.sync_failed(e);
                    }
                }
            }
            Some(done) = stored_rx.recv(), if storing > 0 => {
                storing -= 1;
                match done {
                    Stored::Written(h, n) => core.chunk_written(h, n),
                    Stored::Rejected(h, reason) => core.chunk_rejected(h, reason),
                    Stored::Failed(reason) => core.store_failed(reason),
                }
            }
            next = incoming.recv(), if peer_open && storing < STORING_IN_FLIGHT && core.accepts_frames() => {
                match next {
                    Some(Ok(m)) => {
                        heard = true;
                        core.frame(m);
                    }
                    Some(Err(e)) => {
                        peer_open = false;
                        core.peer_gone(Some(e.to_string()));
                    }
                    None => {
                        peer_open = false;
                        core.peer_gone(Some("the connection ended".into()));
                    }
                }
            }
            else => {
                // Nothing can arrive any more: the core finishes once it is quiet. If it
                // does not, stop rather than spin (a bug; the record keeps what arrived).
                if stalled {
                    ended_with.get_or_insert_with(|| "the session stalled".into());
                    break;
                }
                stalled = true;
                peer_open = false;
                core.peer_gone(Some("the connection ended".into()));
                continue;
            }
        }
        stalled = false;
    }
    writer.close().await;
    // Let chunk writes still under way end before the session (and its lock) goes.
    while storing > 0 {
        if stored_rx.recv().await.is_none() {
            break;
        }
        storing -= 1;
    }
    match ended_with {
        // A connection that closed before saying anything (a port probe) is no session.
        Some(reason) if heard => Err(ReplicateError::SessionEnded(reason)),
        _ => Ok(()),
    }
}

/// Take the sender's lock, waiting a while for an earlier session of the same sender to
/// finish (a sender that reconnects after a cut may find the old session still draining).
async fn lock_waiting(dir: &SessionDir) -> Result<Option<std::fs::File>, ReplicateError> {
    for _ in 0..LOCK_WAIT_TRIES {
        if let Some(lock) = dir.lock()? {
            return Ok(Some(lock));
        }
        tokio::time::sleep(LOCK_WAIT_STEP).await;
    }
    dir.lock()
}

/// The receiver's state of `volumes`, and this sender's record (opened for appending).
async fn load(
    store: &ChunkStore,
    dir: &SessionDir,
    volumes: &[VolumeName],
) -> Result<(LocalState, Option<RecordFile>), String> {
    let mut state = LocalState::default();
    for volume in volumes {
        let mut chain = VolumeChain {
            volume: volume.clone(),
            versions: Vec::new(),
        };
        let versions = store.versions(volume).await.map_err(|e| e.to_string())?;
        let mut newest = None;
        for v in versions {
            let bytes = store
                .read_index_bytes(volume, v)
                .await
                .map_err(|e| e.to_string())?;
            chain.versions.push((v, *blake3::hash(&bytes).as_bytes()));
            newest = Some(bytes);
        }
        if let Some(bytes) = newest {
            let index = Index::decode(&bytes).map_err(|e| format!("our newest {volume}: {e}"))?;
            state
                .held
                .extend(index.chunks.iter().filter_map(|c| match c {
                    ChunkRef::Data(h) => Some(*h),
                    ChunkRef::Zero => None,
                }));
        }
        state.chains.push(chain);
    }
    let d = dir.clone();
    let rec = tokio::task::spawn_blocking(move || {
        let rec = d.read()?;
        let file = rec.as_ref().map(|r| d.resume(r)).transpose()?;
        Ok::<_, ReplicateError>(rec.zip(file))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let file = rec.map(|(r, f)| {
        state.record = Some(PriorSession {
            session_id: r.session_id,
            sender_id: r.sender_id,
            arrived: r.arrived,
        });
        f
    });
    Ok((state, file))
}

/// Which of `wanted` the store already holds intact.
async fn check_present(store: &ChunkStore, wanted: Vec<(ChunkHash, usize)>) -> Vec<ChunkHash> {
    let found: Vec<Option<ChunkHash>> = futures::stream::iter(wanted)
        .map(|(h, len)| {
            let store = store.clone();
            async move {
                // Existence is not enough: a chunk left by a killed session may be
                // damaged by a crash; reading verifies it.
                match store.has_chunk(&h).await {
                    Ok(true) => store.get_chunk(&h, len).await.ok().map(|_| h),
                    _ => None,
                }
            }
        })
        .buffer_unordered(CHECK_IN_FLIGHT)
        .collect()
        .await;
    found.into_iter().flatten().collect()
}

async fn store_chunk(
    store: &ChunkStore,
    hash: ChunkHash,
    expected_len: usize,
    encoding: u8,
    body: Bytes,
) -> Stored {
    let mut stored = BytesMut::with_capacity(1 + body.len());
    stored.put_u8(encoding);
    stored.put_slice(&body);
    let stored = stored.freeze();
    let checked = crate::cpu::run(move || chunk::decode_bytes(&hash, stored, expected_len)).await;
    match checked {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Stored::Rejected(hash, e.to_string()),
        Err(e) => return Stored::Failed(e.to_string()),
    }
    let encoded = chunk::Encoded { encoding, body };
    let len = encoded.stored_len();
    match store.put_chunk(&hash, encoded).await {
        Ok(_) => Stored::Written(hash, len),
        Err(e) => Stored::Failed(e.to_string()),
    }
}

type SyncFailure = (Option<RecordFile>, String);

/// Make the written chunks durable, then record them as arrived (durably). Blocking.
fn sync_and_record(
    durable: impl FnOnce(&[ChunkHash]) -> Result<(), String>,
    record: Option<RecordFile>,
    hashes: &[ChunkHash],
) -> Result<RecordFile, SyncFailure> {
    let Some(mut record) = record else {
        return Err((None, "no session record to append to".into()));
    };
    if let Err(e) = durable(hashes) {
        return Err((Some(record), e));
    }
    let mut seen = HashSet::new();
    let unique: Vec<ChunkHash> = hashes.iter().copied().filter(|h| seen.insert(*h)).collect();
    match record.append(&unique) {
        Ok(()) => Ok(record),
        Err(e) => Err((Some(record), e.to_string())),
    }
}

/// Accept sessions on `listen` into the store at `store` until Ctrl-C or SIGTERM.
pub async fn run_receive(
    store: &str,
    listen: &str,
    tls: Option<ServerTls>,
) -> Result<(), BackupError> {
    let store = ChunkStore::open(store, true)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| BackupError::Listen {
            addr: listen.to_owned(),
            source,
        })?;
    if let Ok(addr) = listener.local_addr() {
        if tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "receiving without TLS on a non-loopback address: anyone who can reach it \
                 can send versions into this store, in clear text (use --tls-cert, --tls-key \
                 and --tls-client-ca)"
            );
        }
        tracing::info!(%addr, tls = tls.is_some(), "listening for replication");
    }
    receive_on(
        listener,
        store,
        tls.map(Arc::new),
        crate::cli::shutdown_signal(),
    )
    .await
}
