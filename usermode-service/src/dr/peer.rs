//! A connected peer of either site, read and written by the site's core task itself.
//!
//! Why not a reader task and a writer task with channels between (the replication
//! layer's `conn`): a copy-on-read miss is a round trip (the DR site's fetch, the
//! primary's region data) that a client read waits for, and every hand-over between
//! tasks is a wake-up of another thread. Here the core task parses frames straight out
//! of its receive buffer and writes its frames into the socket as soon as it made them
//! (non-blocking; what the socket does not take waits in the send buffer until it is
//! writable), so a fetch and its answer cross no task boundary at either end.
//!
//! Both waits are cancel safe (readiness only; the bytes live in the buffers here), so
//! the core task can `select!` on them beside everything else.

use std::time::{Duration, Instant};

use rehydrate_backup::replicate::conn::ConnError;
use rehydrate_backup::replicate::frame::FrameDecoder;
use rehydrate_backup::replicate::session::Wire;
use tokio::net::TcpStream;

use super::link::Frame;

/// Bytes of frames waiting for the socket before the site stops making more (the
/// primary stops taking items from its sender until the socket drains; its own bound
/// then ends the session).
pub const OUTBOX_BYTES: usize = 4 << 20;
/// How long the peer may stay silent before the session is given up.
pub const IDLE_TIMEOUT: Duration = rehydrate_backup::replicate::conn::IDLE_TIMEOUT;
/// Bytes asked of the socket at least per read (a region's frame fits twice).
const READ_CHUNK_BYTES: usize = 256 << 10;

/// A connected peer.
pub struct Peer {
    stream: TcpStream,
    /// Received bytes not yet taken as frames.
    inbox: FrameDecoder,
    /// Encoded frames; the first `sent` bytes are on the wire already.
    outbox: Vec<u8>,
    sent: usize,
    /// The socket said end of stream or failed: what is buffered is all there is.
    ended: Option<ConnError>,
    last_heard: Instant,
}

impl Peer {
    /// The peer on `stream` (with Nagle's delay off: a fetch must leave at once).
    pub fn new(stream: TcpStream) -> Peer {
        let _ = stream.set_nodelay(true);
        Peer {
            stream,
            inbox: FrameDecoder::new(),
            outbox: Vec::new(),
            sent: 0,
            ended: None,
            last_heard: Instant::now(),
        }
    }

    /// Queues `f`; [`Peer::flush_now`] or [`Peer::flush`] writes it.
    pub fn queue(&mut self, f: &Frame) {
        f.encode_into(&mut self.outbox);
    }

    /// True while queued bytes stay below [`OUTBOX_BYTES`].
    pub fn has_room(&self) -> bool {
        self.outbox.len() - self.sent < OUTBOX_BYTES
    }

    /// True while queued bytes wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.sent < self.outbox.len()
    }

    /// Completes when the socket may take more (cancel safe); then [`Peer::flush_now`].
    pub async fn writable(&self) {
        let _ = self.stream.writable().await;
    }

    /// Writes what the socket takes without waiting.
    pub fn flush_now(&mut self) -> Result<(), ConnError> {
        while self.sent < self.outbox.len() {
            match self.stream.try_write(&self.outbox[self.sent..]) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        if self.sent == self.outbox.len() {
            self.outbox.clear();
            self.sent = 0;
        } else if self.sent >= OUTBOX_BYTES {
            self.outbox.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }

    /// Writes everything queued, waiting for the socket as needed.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        while self.wants_write() {
            self.writable().await;
            self.flush_now()?;
        }
        Ok(())
    }

    /// Completes when a frame may be taken (cancel safe); then [`Peer::try_recv`].
    pub async fn readable(&self) {
        if self.ended.is_some() || self.inbox.is_ready() {
            return;
        }
        let _ = self.stream.readable().await;
    }

    /// The next frame without waiting: `None` when no whole frame has arrived yet.
    pub fn try_recv(&mut self) -> Option<Result<Frame, ConnError>> {
        if !self.inbox.is_ready() && self.ended.is_none() {
            self.fill();
        }
        match self.inbox.next_frame() {
            Ok(Some(f)) => Some(Frame::decode(f.kind, f.payload).map_err(ConnError::from)),
            Err(e) => Some(Err(e.into())),
            Ok(None) => self.ended.take().map(|e| {
                Err(match e {
                    ConnError::Closed => match self.inbox.finish() {
                        Ok(()) => ConnError::Closed,
                        Err(truncated) => truncated.into(),
                    },
                    e => e,
                })
            }),
        }
    }

    /// The next frame, waiting for it (outside a `select!`: handshakes).
    pub async fn recv(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(f) = self.try_recv() {
                return f;
            }
            self.readable().await;
        }
    }

    /// True when the peer said nothing for [`IDLE_TIMEOUT`].
    pub fn is_silent(&self) -> bool {
        self.last_heard.elapsed() > IDLE_TIMEOUT
    }

    /// Reads what the socket holds now into the inbox, until a frame is whole.
    fn fill(&mut self) {
        loop {
            let buf = self.inbox.read_buffer(READ_CHUNK_BYTES);
            match self.stream.try_read_buf(buf) {
                Ok(0) => {
                    self.ended = Some(ConnError::Closed);
                    return;
                }
                Ok(_) => {
                    self.last_heard = Instant::now();
                    if self.inbox.is_ready() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.ended = Some(e.into());
                    return;
                }
            }
        }
    }
}
