//! Where restore data comes from: any NBD server (ours, qemu-nbd, nbdkit), or anything
//! else that implements the small [`Source`] trait (tests, the simulator).
//!
//! [`fetch`] performs one hydrator fetch against a source: block status first when
//! asked, then reads of only the data parts, every length checked.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rehydrate_driver::Geometry;
use rehydrate_nbd::{Client, ClientOptions, NbdUrl, TransmissionFlags};
use tokio::sync::RwLock;

use crate::hydrator::{plan_segments, Allocation, FetchError, Segment};

/// Why a source operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The server could not be reached (or refused the export) before the deadline.
    #[error("source {url} unreachable after {attempts} attempts over {secs:.1}s: {last}")]
    Unreachable {
        /// The source.
        url: String,
        /// Dial attempts made.
        attempts: u32,
        /// Seconds spent.
        secs: f64,
        /// The last error.
        last: rehydrate_nbd::Error,
    },
    /// The connection broke or a request timed out; worth retrying.
    #[error("source connection failed: {0}")]
    Connection(rehydrate_nbd::Error),
    /// The server answered a request with an error.
    #[error("source refused the request: {0}")]
    Server(rehydrate_nbd::Error),
    /// The range lies outside the source.
    #[error("range {offset}+{len} is outside the source of {size_bytes} bytes")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Source size.
        size_bytes: u64,
    },
    /// The source returned a different number of bytes than asked for.
    #[error("source returned {got} bytes for a {expected}-byte read at {offset}")]
    ShortRead {
        /// Byte offset.
        offset: u64,
        /// Bytes asked for.
        expected: u64,
        /// Bytes returned.
        got: u64,
    },
    /// Data failed verification at the source.
    #[error("source data at {offset} failed verification")]
    Corrupt {
        /// Byte offset.
        offset: u64,
    },
    /// The server refused the export for good (unknown, damaged, a name too long):
    /// waiting will not change it.
    #[error("source {url} refused: {last}")]
    Refused {
        /// The source.
        url: String,
        /// The server's answer.
        last: rehydrate_nbd::Error,
    },
    /// A reconnect found another source than the one pinned: the restore must stop
    /// rather than mix two backups.
    #[error("source {url} changed: {reason}")]
    Changed {
        /// The source.
        url: String,
        /// What differs.
        reason: String,
    },
}

impl SourceError {
    /// How the hydrator should treat it.
    pub fn fetch_error(&self) -> FetchError {
        use rehydrate_nbd::consts::{EINVAL, EOVERFLOW, ESHUTDOWN};
        match self {
            SourceError::Unreachable { .. } | SourceError::Connection(_) => FetchError::Transient,
            SourceError::Refused { .. } | SourceError::Changed { .. } => FetchError::Corrupt,
            SourceError::OutOfRange { .. } => FetchError::OutOfRange,
            SourceError::ShortRead { .. } | SourceError::Corrupt { .. } => FetchError::Corrupt,
            SourceError::Server(rehydrate_nbd::Error::Server { errno, .. }) => match *errno {
                EINVAL | EOVERFLOW => FetchError::OutOfRange,
                ESHUTDOWN => FetchError::Transient,
                // Our backup server answers a chunk that fails verification with EIO.
                _ => FetchError::Corrupt,
            },
            SourceError::Server(e) if e.is_connection_error() => FetchError::Transient,
            SourceError::Server(_) => FetchError::Corrupt,
        }
    }
}

/// A read-only block source. Implementations must be cheap to share across tasks.
pub trait Source: Send + Sync + 'static {
    /// Size in bytes.
    fn size_bytes(&self) -> u64;
    /// Whether `block_status` says more than "all data".
    fn supports_block_status(&self) -> bool;
    /// Reads exactly `len` bytes at `offset`.
    fn read(
        &self,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = Result<Vec<u8>, SourceError>> + Send;
    /// Reads exactly `buf.len()` bytes at `offset` into `buf` (its contents do not
    /// matter), which comes back filled. Sources that can put the data straight into
    /// the buffer do (NBD); the default reads and copies.
    fn read_into(
        &self,
        offset: u64,
        mut buf: BytesMut,
    ) -> impl Future<Output = Result<BytesMut, SourceError>> + Send {
        async move {
            let data = self.read(offset, buf.len()).await?;
            if data.len() != buf.len() {
                return Err(SourceError::ShortRead {
                    offset,
                    expected: buf.len() as u64,
                    got: data.len() as u64,
                });
            }
            buf.copy_from_slice(&data);
            Ok(buf)
        }
    }
    /// The allocation map of `[offset, offset + len)`, as consecutive runs.
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<Allocation>, SourceError>> + Send;
}

/// A completed fetch: its pieces, and the bytes of its whole range (data pieces filled,
/// zero pieces left zero).
#[derive(Debug)]
pub struct Fetched {
    /// Region-aligned pieces covering the range, for `Input::Fetched`.
    pub segments: Vec<Segment>,
    /// `len` bytes.
    pub data: Vec<u8>,
}

/// Performs one hydrator fetch of `[offset, offset + len)`.
pub async fn fetch<S: Source>(
    source: &S,
    geometry: &Geometry,
    offset: u64,
    len: u64,
    block_status: bool,
) -> Result<Fetched, SourceError> {
    let size = source.size_bytes();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(SourceError::OutOfRange {
            offset,
            len,
            size_bytes: size,
        });
    }
    let len_usize = usize::try_from(len).map_err(|_| SourceError::OutOfRange {
        offset,
        len,
        size_bytes: size,
    })?;
    let map = if block_status && source.supports_block_status() {
        source.block_status(offset, len).await?
    } else {
        vec![Allocation { len, zero: false }]
    };
    tracing::trace!(offset, len, ?map, "source: allocation");
    let segments = plan_segments(geometry, offset, len, &map);
    let data_segments = segments.iter().filter(|s| !s.zero).count();
    let data = if data_segments == 1 && segments.len() == 1 {
        // All data: the read's buffer is the fetch's buffer, no copy.
        checked_read(source, offset, len_usize).await?
    } else {
        let mut data = vec![0u8; if data_segments == 0 { 0 } else { len_usize }];
        for s in segments.iter().filter(|s| !s.zero) {
            let part = checked_read(source, s.offset, s.len as usize).await?;
            let at = (s.offset - offset) as usize;
            data[at..at + part.len()].copy_from_slice(&part);
        }
        data
    };
    Ok(Fetched { segments, data })
}

async fn checked_read<S: Source>(
    source: &S,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, SourceError> {
    let data = source.read(offset, len).await?;
    if data.len() != len {
        return Err(SourceError::ShortRead {
            offset,
            expected: len as u64,
            got: data.len() as u64,
        });
    }
    Ok(data)
}

/// Checks that a new connection still reaches the source a restore is pinned to;
/// `Err(reason)` refuses it.
pub type RedialCheck =
    Arc<dyn Fn(Client) -> rehydrate_nbd::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Most connections one source opens to a server that allows several (multi-conn).
pub const CONNECTIONS_MAX: usize = 16;

/// How long an extra connection may take to open: a server that admits fewer clients
/// than it advertises (qemu-nbd without `--shared`) leaves it waiting, and the restore
/// goes on with the connections it has.
const EXTRA_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One connection of an [`NbdSource`]; `None` until opened.
type Slot = RwLock<Option<Client>>;

/// An NBD export as a source. Redials when the connection breaks (the hydrator's retry
/// policy paces the attempts), to the pinned export and through the pinned check when
/// [`NbdSource::pin`] set them.
///
/// Several connections when the server advertises multi-conn ([`NbdSource::widen`]):
/// reads go round-robin over the open ones, each connection redials on its own. The
/// export is read-only, so every connection sees the same data.
pub struct NbdSource {
    url: NbdUrl,
    options: ClientOptions,
    /// Slot 0 is the first connection; [`NbdSource::widen`] opens the next ones in order.
    slots: Arc<[Slot]>,
    /// Slots opened so far (a prefix of `slots`).
    open: Arc<AtomicUsize>,
    next: AtomicUsize,
    size_bytes: u64,
    block_status: bool,
    multi_conn: bool,
    request_timeout: Duration,
    check: Option<RedialCheck>,
    /// Set when a reconnect found another source: every later request fails with it.
    changed: Arc<std::sync::Mutex<Option<String>>>,
}

impl NbdSource {
    /// Connects, retrying with backoff until `deadline` has passed.
    pub async fn connect(
        url: &NbdUrl,
        max_in_flight: usize,
        deadline: Duration,
    ) -> Result<NbdSource, SourceError> {
        let options = ClientOptions {
            max_in_flight: max_in_flight.max(1),
            connect_timeout: deadline.max(Duration::from_millis(100)),
            // nbds:// always negotiates TLS (certificates from REHYDRATE_TLS_CA, _CERT,
            // _KEY) and never falls back to plain text, on every redial too.
            tls: rehydrate_nbd::ClientTls::for_url(url).map_err(SourceError::Server)?,
            ..ClientOptions::default()
        };
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut delay = Duration::from_millis(50);
        loop {
            attempts += 1;
            match Client::connect_with(url.address(), &url.export, options.clone()).await {
                Ok(client) => {
                    let slots: Vec<Slot> =
                        (0..CONNECTIONS_MAX).map(|_| RwLock::new(None)).collect();
                    let source = NbdSource {
                        url: url.clone(),
                        size_bytes: client.size_bytes(),
                        block_status: client.supports_block_status(),
                        multi_conn: client.flags().contains(TransmissionFlags::CAN_MULTI_CONN),
                        slots: slots.into(),
                        open: Arc::new(AtomicUsize::new(1)),
                        next: AtomicUsize::new(0),
                        options,
                        request_timeout: deadline.max(Duration::from_secs(1)),
                        check: None,
                        changed: Arc::new(std::sync::Mutex::new(None)),
                    };
                    *source.slots[0].write().await = Some(client);
                    return Ok(source);
                }
                Err(e) => {
                    let elapsed = started.elapsed();
                    // A refused export will not appear by waiting.
                    let permanent = matches!(
                        e,
                        rehydrate_nbd::Error::UnknownExport { .. }
                            | rehydrate_nbd::Error::NameTooLong { .. }
                            | rehydrate_nbd::Error::InvalidUrl { .. }
                    );
                    if permanent {
                        return Err(SourceError::Refused {
                            url: url.to_string(),
                            last: e,
                        });
                    }
                    if elapsed + delay > deadline {
                        return Err(SourceError::Unreachable {
                            url: url.to_string(),
                            attempts,
                            secs: elapsed.as_secs_f64(),
                            last: e,
                        });
                    }
                    tracing::info!(%e, attempts, "source: connect failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The export's URL (after [`NbdSource::pin`], the pinned export's).
    pub fn url(&self) -> &NbdUrl {
        &self.url
    }

    /// From now on, reconnect to `export` only, and only accept a connection that
    /// `check` passes.
    pub fn pin(&mut self, export: String, check: RedialCheck) {
        self.url.export = export;
        self.check = Some(check);
    }

    /// Whether the server said several connections see the same data (multi-conn).
    pub fn multi_conn(&self) -> bool {
        self.multi_conn
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Opens more connections, up to `connections` in all (at most [`CONNECTIONS_MAX`]),
    /// in the background, when the server advertises multi-conn; each must pass the
    /// pinned check. Reads use each as soon as it is open. One that cannot be opened
    /// ends the widening quietly: the restore goes on with what it has.
    pub fn widen(&self, connections: usize) {
        let wanted = connections.min(CONNECTIONS_MAX);
        if !self.multi_conn || wanted <= self.connections() {
            return;
        }
        let (url, check, slots, open) = (
            self.url.clone(),
            self.check.clone(),
            Arc::clone(&self.slots),
            Arc::clone(&self.open),
        );
        let options = ClientOptions {
            connect_timeout: self.options.connect_timeout.min(EXTRA_CONNECT_TIMEOUT),
            ..self.options.clone()
        };
        let size_bytes = self.size_bytes;
        tokio::spawn(async move {
            for i in open.load(Ordering::Acquire)..wanted {
                let client =
                    match Client::connect_with(url.address(), &url.export, options.clone()).await {
                        Ok(c) if c.size_bytes() == size_bytes => c,
                        Ok(_) => return,
                        Err(e) => {
                            tracing::info!(%e, connections = i, "source: no more connections");
                            return;
                        }
                    };
                if let Some(check) = &check {
                    if let Err(reason) = check(client.clone()).await {
                        tracing::warn!(%reason, "source: an extra connection reached another source");
                        return;
                    }
                }
                *slots[i].write().await = Some(client);
                open.store(i + 1, Ordering::Release);
            }
            tracing::debug!(connections = wanted, "source: connections open");
        });
    }

    /// The first connection (its handshake details say what the export is).
    pub async fn connection(&self) -> Client {
        let first = self.slots[0].read().await.clone();
        // `connect` opens slot 0 before it returns, and a redial only replaces it.
        first.expect("the first connection is open")
    }

    /// The slot the next request goes to: round-robin over the open ones.
    fn pick(&self) -> usize {
        let open = self.open.load(Ordering::Acquire).clamp(1, CONNECTIONS_MAX);
        self.next.fetch_add(1, Ordering::Relaxed) % open
    }

    /// The connection in `slot`: open, since [`NbdSource::pick`] picks among open ones.
    async fn client(&self, slot: usize) -> Result<Client, SourceError> {
        let client = self.slots[slot].read().await.clone();
        debug_assert!(client.is_some(), "slot {slot} is not open");
        client.ok_or(SourceError::Connection(rehydrate_nbd::Error::Disconnected))
    }

    /// The reason the source was found changed, if it was.
    fn changed(&self) -> Option<SourceError> {
        let reason = self.changed.lock().ok()?.clone()?;
        Some(SourceError::Changed {
            url: self.url.to_string(),
            reason,
        })
    }

    /// Replaces a broken connection once; errors are left for the next attempt.
    async fn redial(&self, slot: usize, broken: &Client) {
        let mut current = self.slots[slot].write().await;
        // Someone else already replaced it (or it recovered): nothing to do.
        match current.as_ref() {
            Some(c) if c.is_connected() || !std::ptr::eq(c.info(), broken.info()) => return,
            _ => {}
        }
        match Client::connect_with(self.url.address(), &self.url.export, self.options.clone()).await
        {
            Ok(c) if c.size_bytes() != self.size_bytes => self.refuse(format!(
                "the export now holds {} bytes, not {}",
                c.size_bytes(),
                self.size_bytes
            )),
            Ok(c) => match &self.check {
                Some(check) => match check(c.clone()).await {
                    Ok(()) => *current = Some(c),
                    Err(reason) => self.refuse(reason),
                },
                None => *current = Some(c),
            },
            Err(e) => tracing::warn!(%e, slot, "source: redial failed"),
        }
    }

    fn refuse(&self, reason: String) {
        tracing::warn!(url = %self.url, %reason, "source: reconnected to another source");
        if let Ok(mut changed) = self.changed.lock() {
            changed.get_or_insert(reason);
        }
    }

    async fn classify(&self, slot: usize, client: &Client, e: rehydrate_nbd::Error) -> SourceError {
        match e {
            rehydrate_nbd::Error::OutOfRange {
                offset,
                length,
                size_bytes,
            } => SourceError::OutOfRange {
                offset,
                len: length,
                size_bytes,
            },
            e if e.is_connection_error() => {
                self.redial(slot, client).await;
                self.changed().unwrap_or(SourceError::Connection(e))
            }
            e => SourceError::Server(e),
        }
    }

    async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, rehydrate_nbd::Error>>,
    ) -> Result<T, rehydrate_nbd::Error> {
        tokio::time::timeout(self.request_timeout, f)
            .await
            .unwrap_or_else(|_| {
                Err(rehydrate_nbd::Error::Io(
                    std::io::ErrorKind::TimedOut.into(),
                ))
            })
    }
}

impl Source for NbdSource {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn supports_block_status(&self) -> bool {
        self.block_status
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, SourceError> {
        Ok(self.read_into(offset, BytesMut::zeroed(len)).await?.into())
    }

    async fn read_into(&self, offset: u64, buf: BytesMut) -> Result<BytesMut, SourceError> {
        if let Some(e) = self.changed() {
            return Err(e);
        }
        let slot = self.pick();
        let client = self.client(slot).await?;
        match self.timed(client.read_into(offset, buf)).await {
            Ok(data) => Ok(data),
            Err(e) => Err(self.classify(slot, &client, e).await),
        }
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Allocation>, SourceError> {
        if let Some(e) = self.changed() {
            return Err(e);
        }
        let slot = self.pick();
        let client = self.client(slot).await?;
        match self.timed(client.block_status(offset, len)).await {
            Ok(extents) => Ok(extents
                .iter()
                .map(|e| Allocation {
                    len: e.length_bytes,
                    zero: e.zero,
                })
                .collect()),
            Err(e) => Err(self.classify(slot, &client, e).await),
        }
    }
}

/// An in-memory source (tests, the simulator, demos): zero runs of whole 4 KiB blocks
/// are reported as holes.
#[derive(Clone, Debug)]
pub struct MemSource {
    data: Arc<Vec<u8>>,
}

impl MemSource {
    /// A source holding `data`.
    pub fn new(data: Vec<u8>) -> MemSource {
        MemSource {
            data: Arc::new(data),
        }
    }
}

impl Source for MemSource {
    fn size_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    fn supports_block_status(&self) -> bool {
        true
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, SourceError> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        self.data
            .get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or(SourceError::OutOfRange {
                offset,
                len: len as u64,
                size_bytes: self.size_bytes(),
            })
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Allocation>, SourceError> {
        const BLOCK: u64 = 4096;
        let end = offset.saturating_add(len).min(self.size_bytes());
        let mut out: Vec<Allocation> = Vec::new();
        let mut at = offset;
        while at < end {
            let next = ((at / BLOCK + 1) * BLOCK).min(end);
            let zero = self.data[at as usize..next as usize]
                .iter()
                .all(|&b| b == 0);
            match out.last_mut() {
                Some(last) if last.zero == zero => last.len += next - at,
                _ => out.push(Allocation {
                    len: next - at,
                    zero,
                }),
            }
            at = next;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_fetch_reads_only_data_and_fills_it_in_place() {
        let mut bytes = vec![7u8; 16 * 4096];
        bytes[4096..3 * 4096].fill(0);
        let source = MemSource::new(bytes.clone());
        let g = Geometry::new(bytes.len() as u64, 4096).unwrap();
        let f = rt()
            .block_on(fetch(&source, &g, 0, 8 * 4096, true))
            .unwrap();
        assert_eq!(f.segments.len(), 3);
        assert!(f.segments[1].zero);
        assert_eq!(f.data, bytes[..8 * 4096]);
        let f = rt()
            .block_on(fetch(&source, &g, 4096, 2 * 4096, true))
            .unwrap();
        assert!(f.data.is_empty(), "nothing read for an all-zero fetch");
        let f = rt()
            .block_on(fetch(&source, &g, 4096, 2 * 4096, false))
            .unwrap();
        assert_eq!(f.data.len(), 2 * 4096);
    }

    #[test]
    fn out_of_range_and_short_reads_are_typed() {
        let source = MemSource::new(vec![1u8; 4096]);
        let g = Geometry::new(8192, 4096).unwrap();
        let e = rt()
            .block_on(fetch(&source, &g, 4096, 4096, false))
            .unwrap_err();
        assert_eq!(e.fetch_error(), FetchError::OutOfRange);
        let short = SourceError::ShortRead {
            offset: 0,
            expected: 2,
            got: 1,
        };
        assert_eq!(short.fetch_error(), FetchError::Corrupt);
    }

    /// An export that counts the reads each connection serves.
    struct Tally {
        inner: Arc<dyn rehydrate_nbd::Export>,
        reads: Arc<std::sync::atomic::AtomicU64>,
    }

    impl rehydrate_nbd::Export for Tally {
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn read_only(&self) -> bool {
            self.inner.read_only()
        }
        fn read(
            &self,
            offset: u64,
            length: u32,
        ) -> rehydrate_nbd::BoxFuture<'_, Result<bytes::Bytes, rehydrate_nbd::ExportError>>
        {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.inner.read(offset, length)
        }
    }

    /// One export; every connection gets its own tally.
    struct TallyCatalog {
        export: Arc<dyn rehydrate_nbd::Export>,
        tallies: std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicU64>>>,
    }

    impl rehydrate_nbd::Catalog for TallyCatalog {
        fn open(
            &self,
            _name: &str,
        ) -> rehydrate_nbd::BoxFuture<
            '_,
            Result<Option<Arc<dyn rehydrate_nbd::Export>>, rehydrate_nbd::ExportError>,
        > {
            let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
            self.tallies.lock().unwrap().push(Arc::clone(&reads));
            let export: Arc<dyn rehydrate_nbd::Export> = Arc::new(Tally {
                inner: Arc::clone(&self.export),
                reads,
            });
            Box::pin(async move { Ok(Some(export)) })
        }
        fn list(
            &self,
        ) -> rehydrate_nbd::BoxFuture<'_, Result<Vec<(String, String)>, rehydrate_nbd::ExportError>>
        {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    /// Connections that served reads, after reading all of `data` through `source`.
    async fn connections_used(read_only: bool, connections: usize) -> (usize, usize) {
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 / 3) as u8).collect();
        let catalog = Arc::new(TallyCatalog {
            export: Arc::new(rehydrate_nbd::MemExport::new(data.clone(), read_only)),
            tallies: std::sync::Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(rehydrate_nbd::serve(
            listener,
            Arc::clone(&catalog) as Arc<dyn rehydrate_nbd::Catalog>,
            rehydrate_nbd::ServerConfig::default(),
        ));
        let url = NbdUrl::parse(&format!("nbd://{addr}/x")).unwrap();
        let source = NbdSource::connect(&url, 8, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(source.multi_conn(), read_only);
        source.widen(connections);
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_only && source.connections() < connections && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let open = source.connections();
        for at in (0..data.len()).step_by(65536) {
            let got = source
                .read_into(at as u64, BytesMut::zeroed(65536))
                .await
                .unwrap();
            assert_eq!(&got[..], &data[at..at + 65536], "read at {at}");
        }
        let used = catalog
            .tallies
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) > 0)
            .count();
        server.abort();
        (open, used)
    }

    #[test]
    fn reads_spread_over_the_connections_a_multi_conn_server_allows() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Read-only: multi-conn is advertised; four connections, each serving reads.
        assert_eq!(rt.block_on(connections_used(true, 4)), (4, 4));
        // Writable without multi-conn: one connection, whatever is asked.
        assert_eq!(rt.block_on(connections_used(false, 4)), (1, 1));
    }
}
