//! The tokio client: one connection, many requests in flight.
//!
//! A writer task owns the write half and sends whole requests from a bounded channel (so
//! a caller that drops its future mid-request can never leave half a request on the
//! wire); a reader task owns the read half, decodes replies and completes each request's
//! oneshot by cookie. A semaphore bounds requests in flight; its permit travels with the
//! pending request and is released when the reply arrives, not when the caller gives up.
//!
//! Read data is not copied through the reader's buffer: once the header of a reply that
//! carries data has been decoded, the reader reads the data from the socket straight
//! into the request's buffer ([`Client::read_into`] takes the caller's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::assemble::{Assembly, Expect, Outcome};
use crate::consts::{CommandFlags, TransmissionFlags, MAX_PAYLOAD_BYTES};
use crate::decode::Decoded;
use crate::error::{Error, ProtocolError};
use crate::export::Extent;
use crate::handshake::client::{ClientHandshake, ClientStep};
use crate::handshake::Negotiated;
use crate::tls::ClientTls;
use crate::transmission::{decode_data_header, DataHeader};
use crate::transmission::{decode_reply, Command, Reply, Request};
use crate::url::NbdUrl;

/// Tunables for a client connection.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Most requests in flight on the connection.
    pub max_in_flight: usize,
    /// Ask for structured replies and block status (turn off to test simple replies).
    pub structured_replies: bool,
    /// Give up dialling and negotiating after this long.
    pub connect_timeout: Duration,
    /// Negotiate TLS (`NBD_OPT_STARTTLS`) with these settings and refuse plain text;
    /// [`ClientTls::for_url`] gives what an `nbd://` or `nbds://` URL needs.
    pub tls: Option<ClientTls>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 32,
            structured_replies: true,
            connect_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Block status lengths we ask for at once: the largest 4 KiB multiple below 4 GiB.
const MAX_BLOCK_STATUS_REQUEST: u32 = !4095;

/// Largest handshake message (an option reply at its bound) plus slack.
const MAX_HANDSHAKE_BUFFER: usize = crate::consts::MAX_OPTION_REPLY_BYTES + 64;

struct Pending {
    assembly: Assembly,
    reply: oneshot::Sender<Result<Outcome, Error>>,
    _permit: OwnedSemaphorePermit,
}

/// State shared by the caller side and the reader task (not the writer's sender, so that
/// dropping every [`Client`] closes the connection).
struct Core {
    pending: Mutex<HashMap<u64, Pending>>,
    closed: AtomicBool,
}

impl Core {
    /// Fail every pending request and refuse new ones.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let drained: Vec<Pending> = match self.pending.lock() {
            Ok(mut map) => map.drain().map(|(_, p)| p).collect(),
            Err(_) => Vec::new(),
        };
        for p in drained {
            let _ = p.reply.send(Err(Error::Disconnected));
        }
    }
}

struct Outgoing {
    header: Vec<u8>,
    payload: Bytes,
    /// Shut the write half down after this message (NBD_CMD_DISC).
    last: bool,
}

/// Negotiates on `stream` until `machine` (made `with_starttls`) has had TLS accepted,
/// then runs the TLS handshake; `machine` goes on over the returned stream.
async fn start_tls<S>(
    mut stream: S,
    machine: &mut ClientHandshake,
    buf: &mut BytesMut,
    tls: &ClientTls,
    dialled: Option<std::net::IpAddr>,
) -> Result<tokio_rustls::client::TlsStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let ClientStep::StartTls = negotiate(&mut stream, machine, buf).await? else {
        return Err(ProtocolError::Unexpected("handshake ended before TLS").into());
    };
    if !buf.is_empty() {
        return Err(ProtocolError::Unexpected("plain text after the STARTTLS reply").into());
    }
    let secure = tls.connect(stream, dialled).await?;
    machine.tls_started()?;
    Ok(secure)
}

/// The names a listing handshake ended with.
fn listed(step: ClientStep) -> Result<Vec<(String, String)>, Error> {
    match step {
        ClientStep::Listed(names) => Ok(names),
        _ => Err(ProtocolError::Unexpected("listing ended without a list").into()),
    }
}

/// A connected NBD client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    core: Arc<Core>,
    tx: mpsc::Sender<Outgoing>,
    slots: Arc<Semaphore>,
    next_cookie: Arc<AtomicU64>,
    info: Arc<Negotiated>,
    options: ClientOptions,
    address: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("info", &self.info)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Dial `addr` over TCP and negotiate `export_name` with default options.
    pub async fn connect(addr: impl ToSocketAddrs, export_name: &str) -> Result<Self, Error> {
        Self::connect_with(addr, export_name, ClientOptions::default()).await
    }

    /// Dial the server and export named by an `nbd://` URL, or an `nbds://` URL with
    /// the TLS settings from the environment ([`ClientTls::from_env`]).
    pub async fn connect_url(url: &NbdUrl) -> Result<Self, Error> {
        let options = ClientOptions {
            tls: ClientTls::for_url(url)?,
            ..ClientOptions::default()
        };
        Self::connect_with(url.address(), &url.export, options).await
    }

    /// Dial `addr` over TCP and negotiate `export_name`.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        export_name: &str,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        // A name the protocol cannot carry is refused before dialling: no server could
        // ever accept it, so it must not look like a connection to retry.
        if export_name.len() > crate::consts::MAX_STRING_BYTES {
            return Err(Error::NameTooLong {
                len: export_name.len(),
            });
        }
        let timeout = options.connect_timeout;
        let dial = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let peer = stream.peer_addr()?;
            let mut client =
                Self::negotiate_on(stream, export_name, options, Some(peer.ip())).await?;
            client.address = Some(peer.to_string());
            Ok(client)
        };
        tokio::time::timeout(timeout, dial)
            .await
            .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))?
    }

    /// Dial the same server and export again, with the same options.
    pub async fn reconnect(&self) -> Result<Self, Error> {
        let address = self
            .address
            .as_deref()
            .ok_or(Error::Unsupported("client was not dialled by address"))?;
        Self::connect_with(address, &self.info.export_name, self.options.clone()).await
    }

    /// List the exports of the server at `addr` (`NBD_OPT_LIST`): (name, description).
    pub async fn list_exports(addr: impl ToSocketAddrs) -> Result<Vec<(String, String)>, Error> {
        Self::list_exports_with(addr, ClientOptions::default()).await
    }

    /// List the exports of the server at `addr` with `options`: over TLS when
    /// `options.tls` asks (a server that requires TLS lists only over it, and then only
    /// what the client's certificate may open).
    pub async fn list_exports_with(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<Vec<(String, String)>, Error> {
        let listed = async {
            let mut stream = TcpStream::connect(addr).await?;
            let dialled = stream.peer_addr()?.ip();
            let mut machine = ClientHandshake::list();
            let mut buf = BytesMut::new();
            let Some(tls) = options.tls else {
                let step = negotiate(&mut stream, &mut machine, &mut buf).await?;
                let _ = stream.shutdown().await;
                return listed(step);
            };
            machine = machine.with_starttls();
            let mut secure = start_tls(stream, &mut machine, &mut buf, &tls, Some(dialled)).await?;
            let step = negotiate(&mut secure, &mut machine, &mut buf).await?;
            let _ = secure.shutdown().await;
            listed(step)
        };
        tokio::time::timeout(options.connect_timeout, listed)
            .await
            .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))?
    }

    /// Negotiate over an already-open stream (TCP, Unix socket, or a TLS stream). With
    /// `options.tls`, the server name to check must have been set on it.
    pub async fn handshake<S>(
        stream: S,
        export_name: &str,
        options: ClientOptions,
    ) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::negotiate_on(stream, export_name, options, None).await
    }

    /// Negotiate, upgrading to TLS first when `options.tls` asks; `dialled` is the
    /// address the certificate is checked against when no server name was set.
    async fn negotiate_on<S>(
        mut stream: S,
        export_name: &str,
        options: ClientOptions,
        dialled: Option<std::net::IpAddr>,
    ) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut machine = ClientHandshake::go(export_name);
        if !options.structured_replies {
            machine = machine.simple_replies_only();
        }
        let Some(tls) = options.tls.clone() else {
            let mut buf = BytesMut::with_capacity(4096);
            let info = negotiated(negotiate(&mut stream, &mut machine, &mut buf).await?)?;
            return Ok(Self::start(stream, buf, info, options));
        };
        machine = machine.with_starttls();
        let mut buf = BytesMut::with_capacity(4096);
        let mut secure = start_tls(stream, &mut machine, &mut buf, &tls, dialled).await?;
        let info = negotiated(negotiate(&mut secure, &mut machine, &mut buf).await?)?;
        Ok(Self::start(secure, buf, info, options))
    }

    /// Start the reader and writer tasks on a negotiated stream.
    fn start<S>(stream: S, buf: BytesMut, info: Negotiated, options: ClientOptions) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        tracing::debug!(?info, "nbd client negotiated");
        let max_in_flight = options.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let core = Arc::new(Core {
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        let (read_half, write_half) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel(max_in_flight);
        tokio::spawn(writer_task(write_half, rx, Arc::clone(&core)));
        tokio::spawn(reader_task(read_half, buf, Arc::clone(&core)));
        Self {
            core,
            tx,
            slots: Arc::new(Semaphore::new(max_in_flight)),
            next_cookie: Arc::new(AtomicU64::new(1)),
            info: Arc::new(info),
            options: ClientOptions {
                max_in_flight,
                ..options
            },
            address: None,
        }
    }

    /// What was negotiated: export name, size, flags, structured replies, block status.
    pub fn info(&self) -> &Negotiated {
        &self.info
    }

    /// Export size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.info.size_bytes
    }

    /// Transmission flags the server sent.
    pub fn flags(&self) -> TransmissionFlags {
        self.info.flags
    }

    /// Whether the server refuses writes.
    pub fn read_only(&self) -> bool {
        self.info.flags.contains(TransmissionFlags::READ_ONLY)
    }

    /// Whether `base:allocation` block status was negotiated.
    pub fn supports_block_status(&self) -> bool {
        self.info.base_allocation.is_some()
    }

    /// Whether the connection is still usable.
    pub fn is_connected(&self) -> bool {
        !self.core.closed.load(Ordering::SeqCst)
    }

    /// Read `length` bytes at `offset`. Reads above the payload bound are split.
    pub async fn read(&self, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        self.check_range(offset, length as u64)?;
        Ok(self
            .read_into(offset, BytesMut::zeroed(length))
            .await?
            .into())
    }

    /// Read `buffer.len()` bytes at `offset` into `buffer`, whose contents do not matter;
    /// it comes back filled. The data goes from the socket straight into it. Reads
    /// above the payload bound are split into pieces of the one buffer, joined again
    /// without a copy.
    pub async fn read_into(&self, offset: u64, mut buffer: BytesMut) -> Result<BytesMut, Error> {
        let length = buffer.len();
        self.check_range(offset, length as u64)?;
        let step = self.info.max_payload_bytes.clamp(512, MAX_PAYLOAD_BYTES) as usize;
        if length <= step {
            return self.read_one(offset, buffer).await;
        }
        let mut out = BytesMut::new();
        while !buffer.is_empty() {
            let rest = buffer.split_off(buffer.len().min(step));
            let piece = self.read_one(offset + out.len() as u64, buffer).await?;
            // Neighbours in one allocation: `unsplit` joins them in O(1).
            out.unsplit(piece);
            buffer = rest;
        }
        debug_assert_eq!(out.len(), length);
        Ok(out)
    }

    async fn read_one(&self, offset: u64, buffer: BytesMut) -> Result<BytesMut, Error> {
        let length = u32::try_from(buffer.len())
            .map_err(|_| self.out_of_range(offset, buffer.len() as u64))?;
        let assembly = Assembly::with_buffer(offset, buffer)?;
        let outcome = self
            .submit(
                Command::Read,
                CommandFlags::empty(),
                offset,
                length,
                Bytes::new(),
                assembly,
            )
            .await?;
        match outcome {
            Outcome::Data(data) if data.len() == length as usize => Ok(data),
            _ => Err(ProtocolError::Malformed("read reply of the wrong length").into()),
        }
    }

    /// Write `data` at `offset`. Writes above the payload bound are split.
    pub async fn write(&self, offset: u64, data: impl Into<Bytes>) -> Result<(), Error> {
        let data = data.into();
        if self.read_only() {
            return Err(Error::Unsupported("export is read-only"));
        }
        self.check_range(offset, data.len() as u64)?;
        let step = self.info.max_payload_bytes.clamp(512, MAX_PAYLOAD_BYTES) as usize;
        let mut done = 0usize;
        loop {
            let n = (data.len() - done).min(step);
            let piece = data.slice(done..done + n);
            self.submit(
                Command::Write,
                CommandFlags::empty(),
                offset + done as u64,
                n as u32,
                piece,
                Assembly::new(Expect::Nothing),
            )
            .await?;
            done += n;
            if done >= data.len() {
                return Ok(());
            }
        }
    }

    /// Ask the server to persist completed writes.
    pub async fn flush(&self) -> Result<(), Error> {
        if !self.info.flags.contains(TransmissionFlags::SEND_FLUSH) {
            return Ok(());
        }
        self.submit(
            Command::Flush,
            CommandFlags::empty(),
            0,
            0,
            Bytes::new(),
            Assembly::new(Expect::Nothing),
        )
        .await
        .map(drop)
    }

    /// Tell the server a range is no longer needed (a hint).
    pub async fn trim(&self, offset: u64, length: u32) -> Result<(), Error> {
        if !self.info.flags.contains(TransmissionFlags::SEND_TRIM) {
            return Err(Error::Unsupported("server does not accept trim"));
        }
        self.check_range(offset, length.into())?;
        self.submit(
            Command::Trim,
            CommandFlags::empty(),
            offset,
            length,
            Bytes::new(),
            Assembly::new(Expect::Nothing),
        )
        .await
        .map(drop)
    }

    /// Make a range read as zeroes without sending the zeroes.
    pub async fn write_zeroes(&self, offset: u64, length: u32) -> Result<(), Error> {
        if !self
            .info
            .flags
            .contains(TransmissionFlags::SEND_WRITE_ZEROES)
        {
            return Err(Error::Unsupported("server does not accept write zeroes"));
        }
        self.check_range(offset, length.into())?;
        self.submit(
            Command::WriteZeroes,
            CommandFlags::empty(),
            offset,
            length,
            Bytes::new(),
            Assembly::new(Expect::Nothing),
        )
        .await
        .map(drop)
    }

    /// Allocation status of `[offset, offset + length)`, as consecutive extents covering
    /// exactly that range (asking again where the server answered short). Without
    /// negotiated `base:allocation`, one "data, contents unknown" extent: always correct.
    pub async fn block_status(&self, offset: u64, length: u64) -> Result<Vec<Extent>, Error> {
        self.check_range(offset, length)?;
        let Some(context_id) = self.info.base_allocation else {
            return Ok(if length == 0 {
                Vec::new()
            } else {
                vec![Extent::data(length)]
            });
        };
        let mut extents: Vec<Extent> = Vec::new();
        let mut at = offset;
        let end = offset + length;
        // Every successful reply covers at least one byte, so this loop ends.
        while at < end {
            let ask = u32::try_from(end - at)
                .unwrap_or(MAX_BLOCK_STATUS_REQUEST)
                .min(MAX_BLOCK_STATUS_REQUEST);
            let outcome = self
                .submit(
                    Command::BlockStatus,
                    CommandFlags::empty(),
                    at,
                    ask,
                    Bytes::new(),
                    Assembly::new(Expect::BlockStatus {
                        length: ask,
                        context_id,
                    }),
                )
                .await?;
            let Outcome::Extents(got) = outcome else {
                return Err(ProtocolError::Unexpected("block status reply without extents").into());
            };
            for e in got {
                at += e.length_bytes;
                match extents.last_mut() {
                    Some(last) if last.hole == e.hole && last.zero == e.zero => {
                        last.length_bytes += e.length_bytes
                    }
                    _ => extents.push(e),
                }
            }
        }
        Ok(extents)
    }

    /// Wait for requests in flight, send `NBD_CMD_DISC`, and close the connection.
    pub async fn disconnect(&self) -> Result<(), Error> {
        if !self.is_connected() {
            return Ok(());
        }
        // Holding every permit means nothing is in flight (the spec's SHOULD).
        let all = u32::try_from(self.options.max_in_flight).unwrap_or(u32::MAX);
        let _permits = self
            .slots
            .acquire_many(all)
            .await
            .map_err(|_| Error::Disconnected)?;
        let mut header = Vec::with_capacity(crate::consts::REQUEST_HEADER_BYTES);
        Request {
            flags: CommandFlags::empty(),
            command: Command::Disconnect,
            cookie: self.next_cookie.fetch_add(1, Ordering::Relaxed),
            offset: 0,
            length: 0,
        }
        .encode(&mut header);
        self.core.closed.store(true, Ordering::SeqCst);
        self.tx
            .send(Outgoing {
                header,
                payload: Bytes::new(),
                last: true,
            })
            .await
            .map_err(|_| Error::Disconnected)
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), Error> {
        match offset.checked_add(length) {
            Some(end) if end <= self.info.size_bytes => Ok(()),
            _ => Err(self.out_of_range(offset, length)),
        }
    }

    fn out_of_range(&self, offset: u64, length: u64) -> Error {
        Error::OutOfRange {
            offset,
            length,
            size_bytes: self.info.size_bytes,
        }
    }

    async fn submit(
        &self,
        command: Command,
        flags: CommandFlags,
        offset: u64,
        length: u32,
        payload: Bytes,
        assembly: Assembly,
    ) -> Result<Outcome, Error> {
        if !self.is_connected() {
            return Err(Error::Disconnected);
        }
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::Disconnected)?;
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = self.core.pending.lock().map_err(|_| Error::Disconnected)?;
            // Checked under the lock, so a concurrent `close` cannot miss this entry.
            if self.core.closed.load(Ordering::SeqCst) {
                return Err(Error::Disconnected);
            }
            pending.insert(
                cookie,
                Pending {
                    assembly,
                    reply: reply_tx,
                    _permit: permit,
                },
            );
        }
        let mut header = Vec::with_capacity(crate::consts::REQUEST_HEADER_BYTES);
        Request {
            flags,
            command,
            cookie,
            offset,
            length,
        }
        .encode(&mut header);
        let sent = self
            .tx
            .send(Outgoing {
                header,
                payload,
                last: false,
            })
            .await;
        if sent.is_err() {
            if let Ok(mut pending) = self.core.pending.lock() {
                pending.remove(&cookie);
            }
            return Err(Error::Disconnected);
        }
        reply_rx.await.map_err(|_| Error::Disconnected)?
    }
}

/// The negotiated export, from the step that ended a handshake.
fn negotiated(step: ClientStep) -> Result<Negotiated, Error> {
    match step {
        ClientStep::Done(info) => Ok(info),
        _ => Err(ProtocolError::Unexpected("handshake ended without an export").into()),
    }
}

/// Run a client handshake machine over a stream until it finishes or asks for TLS.
async fn negotiate<S>(
    stream: &mut S,
    machine: &mut ClientHandshake,
    buf: &mut BytesMut,
) -> Result<ClientStep, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let step = match machine.receive(buf) {
            Ok(step) => step,
            Err(e) => {
                if matches!(
                    e,
                    Error::UnknownExport { .. }
                        | Error::OptionRefused { .. }
                        | Error::NameTooLong { .. }
                        | Error::Forbidden { .. }
                        | Error::TlsRequired
                ) {
                    // The spec asks for a soft disconnect when we give up negotiating.
                    let mut abort = Vec::new();
                    crate::option::ClientOption::Abort.encode(&mut abort);
                    let _ = stream.write_all(&abort).await;
                    let _ = stream.flush().await;
                }
                return Err(e);
            }
        };
        let out = machine.take_output();
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
        match step {
            Decoded::Incomplete { needed } => {
                if needed > MAX_HANDSHAKE_BUFFER {
                    return Err(ProtocolError::Unexpected("handshake message too large").into());
                }
                buf.reserve(needed.saturating_sub(buf.len()));
                if stream.read_buf(buf).await? == 0 {
                    return Err(Error::Disconnected);
                }
            }
            Decoded::Complete { message, consumed } => {
                buf.advance(consumed);
                if message != ClientStep::Continue {
                    return Ok(message);
                }
            }
        }
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(
    write_half: W,
    mut rx: mpsc::Receiver<Outgoing>,
    core: Arc<Core>,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, write_half);
    let result: std::io::Result<()> = async {
        while let Some(msg) = rx.recv().await {
            w.write_all(&msg.header).await?;
            w.write_all(&msg.payload).await?;
            if msg.last {
                w.flush().await?;
                w.shutdown().await?;
                return Ok(());
            }
            // Batch back-to-back requests into one flush; flush as soon as none wait.
            if rx.is_empty() {
                w.flush().await?;
            }
        }
        // Every client handle is gone: close our side so the server lets go.
        w.flush().await?;
        w.shutdown().await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(%e, "nbd client: write failed, closing connection");
        core.close();
    }
}

async fn reader_task<R: AsyncRead + Unpin>(mut read_half: R, mut buf: BytesMut, core: Arc<Core>) {
    let result = read_loop(&mut read_half, &mut buf, &core).await;
    match result {
        Ok(()) => tracing::debug!("nbd client: server closed the connection"),
        Err(e) => tracing::warn!(%e, "nbd client: connection failed"),
    }
    core.close();
}

async fn read_loop<R: AsyncRead + Unpin>(
    read_half: &mut R,
    buf: &mut BytesMut,
    core: &Core,
) -> Result<(), Error> {
    loop {
        // Reads whose data can go straight into their buffer first; anything else whole.
        let needed = match claim_data(buf, core)? {
            Claimed::Data(claim) => {
                place_data(read_half, buf, core, claim).await?;
                continue;
            }
            Claimed::NeedBytes(needed) => Some(needed),
            Claimed::Other => decode_one(buf, core)?,
        };
        if let Some(needed) = needed {
            buf.reserve(needed.saturating_sub(buf.len()));
            if read_half.read_buf(buf).await? == 0 {
                return Ok(());
            }
        }
    }
}

/// A reply's data being read straight into its request's buffer.
struct DataClaim {
    cookie: u64,
    /// The request's buffer, out of its assembly while it is filled.
    buffer: BytesMut,
    /// Where in `buffer` the data goes, and how many bytes.
    at: usize,
    len: usize,
    /// The reply ends with this data: a simple reply, or a chunk with DONE.
    done: bool,
    simple: bool,
}

enum Claimed {
    Data(DataClaim),
    /// The next header is not whole yet.
    NeedBytes(usize),
    /// Not data for a known read: decode the message whole.
    Other,
}

/// Decodes the next reply's header and, when it carries data for a pending read, takes
/// that read's buffer (the header consumed). Every check [`Assembly::chunk`] makes of
/// data is made here before a byte is placed.
fn claim_data(buf: &mut BytesMut, core: &Core) -> Result<Claimed, Error> {
    let (header, consumed) = match decode_data_header(buf)? {
        Decoded::Incomplete { needed } => return Ok(Claimed::NeedBytes(needed)),
        Decoded::Complete {
            message: Some(header),
            consumed,
        } => (header, consumed),
        Decoded::Complete { message: None, .. } => return Ok(Claimed::Other),
    };
    let mut pending = core.pending.lock().map_err(|_| Error::Disconnected)?;
    let claim = match header {
        DataHeader::Simple { cookie } => {
            let Some(p) = pending.get_mut(&cookie).filter(|p| p.assembly.reads_data()) else {
                // A reply without data, or for an unknown cookie: the whole decoder says.
                return Ok(Claimed::Other);
            };
            let buffer = p.assembly.take_buffer();
            DataClaim {
                cookie,
                len: buffer.len(),
                buffer,
                at: 0,
                done: true,
                simple: true,
            }
        }
        DataHeader::OffsetData {
            cookie,
            done,
            offset,
            data_len,
        } => {
            let Some(p) = pending.get_mut(&cookie) else {
                return Ok(Claimed::Other);
            };
            let at = p.assembly.data_chunk(offset, data_len)?;
            DataClaim {
                cookie,
                buffer: p.assembly.take_buffer(),
                at,
                len: data_len as usize,
                done,
                simple: false,
            }
        }
    };
    debug_assert!(claim.at + claim.len <= claim.buffer.len());
    buf.advance(consumed);
    Ok(Claimed::Data(claim))
}

/// Fills a claim's bytes (those already buffered, then the rest from the socket), gives
/// the buffer back and completes the request if its reply is over.
async fn place_data<R: AsyncRead + Unpin>(
    read_half: &mut R,
    buf: &mut BytesMut,
    core: &Core,
    mut claim: DataClaim,
) -> Result<(), Error> {
    let dest = claim
        .buffer
        .get_mut(claim.at..claim.at + claim.len)
        .ok_or(ProtocolError::Malformed("data chunk outside the request"))?;
    let have = buf.len().min(dest.len());
    dest[..have].copy_from_slice(&buf[..have]);
    buf.advance(have);
    read_half.read_exact(&mut dest[have..]).await?;
    let mut pending = core.pending.lock().map_err(|_| Error::Disconnected)?;
    // Gone: the connection was closed meanwhile and the request already failed.
    let Some(p) = pending.get_mut(&claim.cookie) else {
        return Ok(());
    };
    p.assembly.put_buffer(claim.buffer);
    if !claim.done {
        return Ok(());
    }
    let Some(p) = pending.remove(&claim.cookie) else {
        return Ok(());
    };
    let result = if claim.simple {
        p.assembly.placed()
    } else {
        p.assembly.finish()
    };
    answer(p.reply, result)
}

/// Decodes and dispatches one whole message from `buf`; `Some(needed)` when it is not
/// all there yet.
fn decode_one(buf: &mut BytesMut, core: &Core) -> Result<Option<usize>, Error> {
    let mut pending = core.pending.lock().map_err(|_| Error::Disconnected)?;
    let decoded = decode_reply(buf, |cookie| {
        pending
            .get(&cookie)
            .map(|p| p.assembly.simple_data_len())
            .unwrap_or(0)
    })?;
    match decoded {
        Decoded::Incomplete { needed } => Ok(Some(needed)),
        Decoded::Complete { message, consumed } => {
            dispatch(&mut pending, message)?;
            buf.advance(consumed);
            Ok(None)
        }
    }
}

/// Answers a finished request. A malformed reply poisons the whole stream, not just
/// this request: the error is also returned, and the connection closes.
fn answer(
    reply: oneshot::Sender<Result<Outcome, Error>>,
    result: Result<Outcome, Error>,
) -> Result<(), Error> {
    if let Err(Error::Protocol(e)) = &result {
        let e = e.clone();
        let _ = reply.send(result);
        return Err(e.into());
    }
    let _ = reply.send(result);
    Ok(())
}

fn dispatch(pending: &mut HashMap<u64, Pending>, reply: Reply<'_>) -> Result<(), Error> {
    match reply {
        Reply::Simple {
            cookie,
            error,
            data,
        } => {
            let p = pending
                .remove(&cookie)
                .ok_or(ProtocolError::Unexpected("reply for an unknown cookie"))?;
            let _ = p.reply.send(p.assembly.simple(error, data));
        }
        Reply::Chunk(chunk) => {
            let p = pending
                .get_mut(&chunk.cookie)
                .ok_or(ProtocolError::Unexpected("chunk for an unknown cookie"))?;
            p.assembly.chunk(&chunk)?;
            if chunk.done {
                if let Some(p) = pending.remove(&chunk.cookie) {
                    return answer(p.reply, p.assembly.finish());
                }
            }
        }
    }
    Ok(())
}

/// A client that redials when the connection breaks, retrying each operation a bounded
/// number of times with exponential backoff. Errors the server reports about a request
/// (e.g. `NBD_EIO`) are returned at once: redialling would not change them.
#[derive(Debug)]
pub struct ReconnectingClient {
    address: String,
    export_name: String,
    options: ClientOptions,
    max_retries: u32,
    backoff: Duration,
    current: tokio::sync::Mutex<Option<Client>>,
}

impl ReconnectingClient {
    /// A client for `address` (`host:port`) and `export_name`; dials on first use.
    pub fn new(
        address: impl Into<String>,
        export_name: impl Into<String>,
        options: ClientOptions,
    ) -> Self {
        Self {
            address: address.into(),
            export_name: export_name.into(),
            options,
            max_retries: 5,
            backoff: Duration::from_millis(100),
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// A client for an `nbd://` URL.
    pub fn from_url(url: &NbdUrl, options: ClientOptions) -> Self {
        Self::new(url.address(), url.export.clone(), options)
    }

    /// Retry a failed operation at most `max_retries` times, waiting `backoff`, then
    /// twice that, and so on (capped at 64x) between tries.
    pub fn with_retries(mut self, max_retries: u32, backoff: Duration) -> Self {
        self.max_retries = max_retries;
        self.backoff = backoff;
        self
    }

    /// The live connection, dialling if there is none.
    pub async fn client(&self) -> Result<Client, Error> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref().filter(|c| c.is_connected()) {
            return Ok(c.clone());
        }
        let c = Client::connect_with(
            self.address.as_str(),
            &self.export_name,
            self.options.clone(),
        )
        .await?;
        *current = Some(c.clone());
        Ok(c)
    }

    async fn retry<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut attempt = 0u32;
        loop {
            let result = match self.client().await {
                Ok(c) => op(c).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e)
                    if attempt < self.max_retries
                        && (e.is_connection_error() || is_dial_error(&e)) =>
                {
                    tracing::warn!(%e, attempt, "nbd: connection lost, redialling");
                    if let Some(c) = self.current.lock().await.take() {
                        let _ = c.disconnect().await;
                    }
                    tokio::time::sleep(self.backoff * 2u32.pow(attempt.min(6))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// [`Client::read`] with redial.
    pub async fn read(&self, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        self.retry(|c| async move { c.read(offset, length).await })
            .await
    }

    /// [`Client::block_status`] with redial.
    pub async fn block_status(&self, offset: u64, length: u64) -> Result<Vec<Extent>, Error> {
        self.retry(|c| async move { c.block_status(offset, length).await })
            .await
    }

    /// [`Client::write`] with redial (NBD writes are idempotent, so a retry is safe).
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<(), Error> {
        self.retry(|c| {
            let data = data.clone();
            async move { c.write(offset, data).await }
        })
        .await
    }

    /// [`Client::flush`] with redial.
    pub async fn flush(&self) -> Result<(), Error> {
        self.retry(|c| async move { c.flush().await }).await
    }

    /// Disconnect the current connection, if any.
    pub async fn disconnect(&self) -> Result<(), Error> {
        match self.current.lock().await.take() {
            Some(c) => c.disconnect().await,
            None => Ok(()),
        }
    }
}

/// A refused dial (server restarting) is worth retrying; a refused export is not.
fn is_dial_error(e: &Error) -> bool {
    matches!(e, Error::Io(_))
}
