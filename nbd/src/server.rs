//! The tokio server: accepts connections, runs the handshake machine against a
//! [`Catalog`], then serves pipelined requests against the chosen [`Export`].
//!
//! Per connection, this task reads requests and runs one handler per request (bounded
//! by a semaphore, so a client cannot queue unbounded work): at once when the export
//! answers without waiting, else as a task of its own. Handlers send finished reply
//! frames to a writer task, so replies go out in completion order, each frame whole.
//!
//! With [`ServerConfig::tls`] set, TLS is required (FORCEDTLS): the handshake machine
//! refuses everything before `NBD_OPT_STARTTLS`, this shell then runs the TLS handshake
//! and carries on negotiating, and transmission, inside TLS. The client's certificate
//! name decides which exports it may open and see listed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use crate::consts::*;
use crate::decode::Decoded;
use crate::error::{Error, ProtocolError};
use crate::export::{Catalog, Export};
use crate::handshake::server::{ExportInfo, Lookup, Need, ServerHandshake, ServerOutcome};
use crate::handshake::Negotiated;
use crate::rules::{block_descriptors, check_request};
use crate::tls::{PeerIdentity, ServerTls};
use crate::transmission::{
    encode_offset_data_prefix, encode_simple_reply, Chunk, ChunkBody, Command, Request,
};

/// Tunables for a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most connections served at once; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Most requests being handled at once on one connection.
    pub max_in_flight_per_connection: usize,
    /// A client that has not finished the handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Require TLS with these settings (`None`: plain TCP, `STARTTLS` unsupported).
    pub tls: Option<ServerTls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_in_flight_per_connection: 32,
            handshake_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Serve `catalog` on `listener` until `shutdown` completes. Connections already open
/// keep running until their clients leave.
pub async fn serve_until(
    listener: TcpListener,
    catalog: Arc<dyn Catalog>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(
        config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%e, "nbd server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let catalog = Arc::clone(&catalog);
        let config = config.clone();
        tokio::spawn(async move {
            tracing::debug!(%peer, "nbd server: connection");
            match serve_connection(stream, catalog, &config).await {
                Ok(()) => tracing::debug!(%peer, "nbd server: connection closed"),
                // A refused certificate is the operator's business, not just a dropped line.
                Err(e @ Error::TlsHandshake(_)) => {
                    tracing::warn!(%peer, %e, "nbd server: client refused")
                }
                Err(e) => tracing::info!(%peer, %e, "nbd server: connection ended with error"),
            }
            drop(permit);
        });
    }
}

/// Serve `catalog` on `listener` forever.
pub async fn serve(listener: TcpListener, catalog: Arc<dyn Catalog>, config: ServerConfig) {
    serve_until(listener, catalog, config, std::future::pending()).await;
}

/// Serve one connection: handshake, then transmission until the client disconnects.
pub async fn serve_connection<S>(
    stream: S,
    catalog: Arc<dyn Catalog>,
    config: &ServerConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(4096);
    let mut machine = match &config.tls {
        Some(_) => ServerHandshake::requiring_tls(),
        None => ServerHandshake::new(),
    };
    let timeout = tokio::time::sleep(config.handshake_timeout);
    tokio::pin!(timeout);
    let timed_out = || Error::Io(std::io::ErrorKind::TimedOut.into());
    let plain = tokio::select! {
        _ = &mut timeout => return Err(timed_out()),
        ended = handshake(&mut stream, &mut machine, &*catalog, None, &mut buf) => ended?,
    };
    let (session, export) = match plain {
        Ended::Closed => return Ok(()),
        Ended::Transmission(session, export) => (session, export),
        Ended::StartTls => {
            let tls = config
                .tls
                .as_ref()
                .ok_or(ProtocolError::Unexpected("STARTTLS without TLS settings"))?;
            // Bytes sent after STARTTLS but before the TLS handshake would be plain text
            // injected into the secure session: refuse them.
            if !buf.is_empty() {
                return Err(ProtocolError::Unexpected("plain text after NBD_OPT_STARTTLS").into());
            }
            let (mut secure, peer) = tokio::select! {
                _ = &mut timeout => return Err(timed_out()),
                accepted = tls.accept(stream) => accepted?,
            };
            tracing::debug!(client = ?peer.common_name, "nbd server: TLS established");
            let access = Some((tls, &peer));
            let ended = tokio::select! {
                _ = &mut timeout => return Err(timed_out()),
                ended = handshake(&mut secure, &mut machine, &*catalog, access, &mut buf) => ended?,
            };
            let Ended::Transmission(session, export) = ended else {
                return Ok(());
            };
            tracing::debug!(export = %session.export_name, client = ?peer.common_name, "nbd server: transmission over TLS");
            return transmission(secure, buf, session, export, config).await;
        }
    };
    tracing::debug!(export = %session.export_name, structured = session.structured_replies, "nbd server: transmission");
    transmission(stream, buf, session, export, config).await
}

/// How a run of the handshake machine ended.
enum Ended {
    /// The client left or aborted.
    Closed,
    /// `STARTTLS` was acknowledged: run the TLS handshake, then the machine again.
    StartTls,
    /// Transmission begins on this export.
    Transmission(Negotiated, Arc<dyn Export>),
}

/// Run the handshake machine until it closes, starts TLS or enters transmission.
/// `access`: the TLS settings and the client's identity, once TLS runs.
async fn handshake<S>(
    stream: &mut S,
    machine: &mut ServerHandshake,
    catalog: &dyn Catalog,
    access: Option<(&ServerTls, &PeerIdentity)>,
    buf: &mut BytesMut,
) -> Result<Ended, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let out = machine.take_output();
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
        let (option, consumed) = match machine.decode(buf)? {
            Decoded::Incomplete { needed } => {
                // `needed` is bounded by the option size cap the decoder enforces.
                buf.reserve(needed.saturating_sub(buf.len()));
                if stream.read_buf(buf).await? == 0 {
                    return Ok(Ended::Closed);
                }
                continue;
            }
            Decoded::Complete { message, consumed } => (message, consumed),
        };
        buf.advance(consumed);
        let Some(option) = option else { continue };
        let mut chosen: Option<Arc<dyn Export>> = None;
        let lookup = match machine.needs(&option) {
            Need::Nothing => Lookup::Nothing,
            Need::List => match catalog.list().await {
                Ok(mut names) => {
                    if let Some((tls, peer)) = access {
                        names.retain(|(name, _)| tls.allows(peer, name));
                    }
                    Lookup::List(names)
                }
                Err(e) => {
                    tracing::warn!(%e, "nbd server: listing exports failed");
                    Lookup::Nothing
                }
            },
            Need::Export(name) if access.is_some_and(|(tls, peer)| !tls.allows(peer, name)) => {
                let client = access.and_then(|(_, peer)| peer.common_name.as_deref());
                tracing::warn!(
                    name,
                    ?client,
                    "nbd server: export refused by the access policy"
                );
                Lookup::Refused(format!(
                    "client {:?} may not open export {name:?}",
                    client.unwrap_or("(no certificate)")
                ))
            }
            Need::Export(name) => match catalog.open(name).await {
                Ok(found) => {
                    chosen = found;
                    Lookup::Export(chosen.as_ref().map(|e| export_info(e.as_ref())))
                }
                Err(e) => {
                    tracing::warn!(%e, name, "nbd server: opening export failed");
                    // The client learns why, not just that the name is unknown.
                    Lookup::Unavailable(format!("export {name:?} cannot be opened: {e}"))
                }
            },
        };
        match machine.respond(option, lookup) {
            ServerOutcome::Continue => {}
            ServerOutcome::Close => {
                stream.write_all(&machine.take_output()).await?;
                stream.flush().await?;
                return Ok(Ended::Closed);
            }
            ServerOutcome::StartTls => {
                stream.write_all(&machine.take_output()).await?;
                stream.flush().await?;
                return Ok(Ended::StartTls);
            }
            ServerOutcome::Transmission(session) => {
                stream.write_all(&machine.take_output()).await?;
                stream.flush().await?;
                let export =
                    chosen.ok_or(ProtocolError::Unexpected("transmission without an export"))?;
                return Ok(Ended::Transmission(session, export));
            }
        }
    }
}

fn export_info(export: &dyn Export) -> ExportInfo {
    ExportInfo {
        size_bytes: export.size_bytes(),
        read_only: export.read_only(),
        can_multi_conn: export.can_multi_conn(),
        description: export.description(),
        min_block_bytes: export.min_block_bytes(),
    }
}

/// One reply, ready to write: a header (and small payload) plus optional bulk data.
struct Frame {
    head: Vec<u8>,
    data: Bytes,
}

async fn transmission<S>(
    stream: S,
    leftover: BytesMut,
    session: Negotiated,
    export: Arc<dyn Export>,
    config: &ServerConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    // Bytes the client pipelined behind its last option are requests: read them first.
    let mut reader = BufReader::with_capacity(
        64 * 1024,
        AsyncReadExt::chain(std::io::Cursor::new(leftover), read_half),
    );
    let max_in_flight = config
        .max_in_flight_per_connection
        .clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let (tx, rx) = mpsc::channel::<Frame>(max_in_flight);
    let writer = tokio::spawn(write_frames(write_half, rx));
    let session = Arc::new(session);
    let result = read_requests(&mut reader, &session, &export, &slots, &tx).await;
    // Handlers still running hold senders; the writer drains them, then ends.
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    result.and(written.map_err(Error::Io))
}

async fn read_requests<R: AsyncRead + Unpin>(
    reader: &mut R,
    session: &Arc<Negotiated>,
    export: &Arc<dyn Export>,
    slots: &Arc<Semaphore>,
    tx: &mpsc::Sender<Frame>,
) -> Result<(), Error> {
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    loop {
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            // The client hung up between requests: a hard disconnect, not our error.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let request = match Request::decode_header(&header)? {
            Decoded::Complete { message, .. } => message,
            Decoded::Incomplete { .. } => {
                return Err(ProtocolError::Malformed("short request header").into())
            }
        };
        if request.command == Command::Disconnect {
            tracing::debug!("nbd server: client disconnected");
            return Ok(());
        }
        let checked = check_request(&request, session);
        let payload = match request.payload_len() {
            0 => Bytes::new(),
            n if checked.is_err() || n > session.max_payload_bytes => {
                // Refused writes still send their data; skip it in bounded memory.
                let skipped =
                    tokio::io::copy(&mut (&mut *reader).take(n.into()), &mut tokio::io::sink())
                        .await?;
                if skipped != u64::from(n) {
                    return Ok(());
                }
                Bytes::new()
            }
            n => {
                let mut data = vec![0u8; n as usize];
                reader.read_exact(&mut data).await?;
                Bytes::from(data)
            }
        };
        if let Err(errno) = checked {
            tracing::debug!(?request, errno, "nbd server: request refused");
            let frame = error_frame(&request, session, errno, "request refused by the server");
            if tx.send(frame).await.is_err() {
                return Ok(());
            }
            continue;
        }
        let permit = Arc::clone(slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::Disconnected)?;
        let (session, export, tx) = (Arc::clone(session), Arc::clone(export), tx.clone());
        let mut work = Box::pin(async move {
            let frame = handle(&request, payload, &session, export.as_ref()).await;
            let _ = tx.send(frame).await;
            drop(permit);
        });
        // An export that can answer at once (cached data) is answered here: a task per
        // such request would cost more than the request. Anything that waits becomes a
        // task of its own, polled again there with a real waker.
        let mut now = std::task::Context::from_waker(std::task::Waker::noop());
        if work.as_mut().poll(&mut now).is_pending() {
            tokio::spawn(work);
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    write_half: W,
    mut rx: mpsc::Receiver<Frame>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, write_half);
    while let Some(frame) = rx.recv().await {
        w.write_all(&frame.head).await?;
        w.write_all(&frame.data).await?;
        if rx.is_empty() {
            w.flush().await?;
        }
    }
    w.flush().await?;
    w.shutdown().await
}

/// Carry out one checked request and build its reply.
async fn handle(
    request: &Request,
    payload: Bytes,
    session: &Negotiated,
    export: &dyn Export,
) -> Frame {
    let fua = request.flags.contains(CommandFlags::FUA);
    let result = match request.command {
        Command::Read => return read_frame(request, session, export).await,
        Command::BlockStatus => return block_status_frame(request, session, export).await,
        Command::Write => export.write(request.offset, payload, fua).await,
        Command::Flush => export.flush().await,
        Command::Trim => match export.trim(request.offset, request.length).await {
            Ok(()) if fua => export.flush().await,
            other => other,
        },
        Command::WriteZeroes => {
            export
                .write_zeroes(request.offset, request.length, fua)
                .await
        }
        // `check_request` refuses everything else before we get here.
        Command::Disconnect | Command::Cache | Command::Unknown(_) => {
            return error_frame(request, session, EINVAL, "unsupported command")
        }
    };
    match result {
        Ok(()) => {
            let mut head = Vec::with_capacity(SIMPLE_REPLY_HEADER_BYTES);
            encode_simple_reply(&mut head, request.cookie, 0);
            Frame {
                head,
                data: Bytes::new(),
            }
        }
        Err(e) => {
            tracing::warn!(?request, %e, "nbd server: request failed");
            error_frame(request, session, e.errno(), &e.to_string())
        }
    }
}

async fn read_frame(request: &Request, session: &Negotiated, export: &dyn Export) -> Frame {
    let data = if request.length == 0 {
        Bytes::new()
    } else {
        match export.read(request.offset, request.length).await {
            Ok(data) if data.len() == request.length as usize => data,
            Ok(_) => return error_frame(request, session, EIO, "export returned a short read"),
            Err(e) => {
                tracing::warn!(?request, %e, "nbd server: read failed");
                return error_frame(request, session, e.errno(), &e.to_string());
            }
        }
    };
    let mut head = Vec::with_capacity(CHUNK_HEADER_BYTES + 12);
    if !session.structured_replies {
        encode_simple_reply(&mut head, request.cookie, 0);
        return Frame { head, data };
    }
    if data.is_empty() {
        Chunk {
            done: true,
            cookie: request.cookie,
            body: ChunkBody::None,
        }
        .encode(&mut head);
        return Frame { head, data };
    }
    if data.iter().all(|&b| b == 0) {
        // An all-zero read costs 32 bytes on the wire instead of its length.
        Chunk {
            done: true,
            cookie: request.cookie,
            body: ChunkBody::OffsetHole {
                offset: request.offset,
                length: request.length,
            },
        }
        .encode(&mut head);
        return Frame {
            head,
            data: Bytes::new(),
        };
    }
    // One content chunk per read, which is also what NBD_CMD_FLAG_DF asks for.
    encode_offset_data_prefix(
        &mut head,
        true,
        request.cookie,
        request.offset,
        request.length,
    );
    Frame { head, data }
}

async fn block_status_frame(request: &Request, session: &Negotiated, export: &dyn Export) -> Frame {
    let Some(context_id) = session.base_allocation else {
        return error_frame(request, session, EINVAL, "no metadata context selected");
    };
    let extents = match export.block_status(request.offset, request.length).await {
        Ok(extents) => extents,
        Err(e) => return error_frame(request, session, e.errno(), &e.to_string()),
    };
    let descriptors = block_descriptors(
        &extents,
        request.length,
        request.flags.contains(CommandFlags::REQ_ONE),
    );
    if descriptors.is_empty() {
        return error_frame(request, session, EIO, "export reported no extents");
    }
    let mut head = Vec::with_capacity(CHUNK_HEADER_BYTES + 4 + 8 * descriptors.len());
    Chunk {
        done: true,
        cookie: request.cookie,
        body: ChunkBody::BlockStatus {
            context_id,
            descriptors,
        },
    }
    .encode(&mut head);
    Frame {
        head,
        data: Bytes::new(),
    }
}

/// An error reply: a structured ERROR chunk when negotiated (it carries a message, and a
/// read may not get a simple reply then), otherwise a simple reply.
fn error_frame(request: &Request, session: &Negotiated, errno: u32, message: &str) -> Frame {
    debug_assert!(errno != 0);
    let mut head = Vec::new();
    if session.structured_replies {
        Chunk {
            done: true,
            cookie: request.cookie,
            body: ChunkBody::Error {
                error: errno,
                message: message.to_owned(),
            },
        }
        .encode(&mut head);
    } else {
        encode_simple_reply(&mut head, request.cookie, errno);
    }
    Frame {
        head,
        data: Bytes::new(),
    }
}
