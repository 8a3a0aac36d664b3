//! A connected peer of either site, read and written by the site's core task itself.
//!
//! Why not a reader task and a writer task with channels between (the replication
//! layer's `conn`): a copy-on-read miss is a round trip (the DR site's fetch, the
//! primary's region data) that a client read waits for, and every hand-over between
//! tasks is a wake-up of another thread. Here the core task parses frames straight out
//! of its receive buffer and writes its frames into the socket as soon as it made them
//! (non-blocking, vectored: region data goes out from its own buffer; what the socket
//! does not take waits here until it is writable), so a fetch and its answer cross no
//! task boundary at either end.
//!
//! Both waits are cancel safe (readiness only; the bytes live in the buffers here), so
//! the core task can `select!` on them beside everything else.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rehydrate_backup::replicate::conn::ConnError;
use rehydrate_backup::replicate::frame::FrameDecoder;
use rehydrate_backup::replicate::session::Wire;
use tokio::net::TcpStream;

use rehydrate_driver::dr::wire::Message;

use super::link::Frame;

/// Bytes of frames waiting for the socket before the site stops making more (the
/// primary stops taking items from its sender until the socket drains; its own bound
/// then ends the session).
pub const OUTBOX_BYTES: usize = 4 << 20;
/// How long the peer may stay silent before the session is given up.
pub const IDLE_TIMEOUT: Duration = rehydrate_backup::replicate::conn::IDLE_TIMEOUT;
/// Bytes asked of the socket at least per read (a region's frame fits twice).
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Most pieces given to one vectored write.
const WRITE_PIECES_MAX: usize = 64;

/// A connected peer.
pub struct Peer {
    stream: TcpStream,
    /// Received bytes not yet taken as frames.
    inbox: FrameDecoder,
    /// Encoded frames waiting for the socket, in order: buffers of frame heads and small
    /// frames, and the data of region and write messages in their own buffers, sent from
    /// there (no copy behind their heads).
    outbox: VecDeque<Bytes>,
    /// Bytes of the front piece already on the wire.
    front_sent: usize,
    /// Heads and small frames gathered for the next piece.
    tail: Vec<u8>,
    /// Bytes waiting for the socket: the outbox past `front_sent`, and the tail.
    queued: usize,
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
            outbox: VecDeque::new(),
            front_sent: 0,
            tail: Vec::new(),
            queued: 0,
            ended: None,
            last_heard: Instant::now(),
        }
    }

    /// Queues `f`; [`Peer::flush_now`] or [`Peer::flush`] writes it.
    pub fn queue(&mut self, f: Frame) {
        let before = self.tail.len();
        let data = f.encode_split(&mut self.tail);
        self.queued += self.tail.len() - before;
        if let Some(data) = data {
            self.seal_tail();
            self.queued += data.len();
            self.outbox.push_back(Bytes::from(data));
        }
    }

    /// Moves the gathered heads into the outbox, behind what is there.
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.outbox
                .push_back(Bytes::from(std::mem::take(&mut self.tail)));
        }
    }

    /// True while queued bytes stay below [`OUTBOX_BYTES`].
    pub fn has_room(&self) -> bool {
        self.queued < OUTBOX_BYTES
    }

    /// True while queued bytes wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.queued > 0
    }

    /// Completes when the socket may take more (cancel safe); then [`Peer::flush_now`].
    pub async fn writable(&self) {
        let _ = self.stream.writable().await;
    }

    /// Writes what the socket takes without waiting.
    pub fn flush_now(&mut self) -> Result<(), ConnError> {
        self.seal_tail();
        while let Some(front) = self.outbox.front() {
            let mut pieces = [IoSlice::new(&[]); WRITE_PIECES_MAX];
            pieces[0] = IoSlice::new(&front[self.front_sent..]);
            let mut n = 1;
            for (slot, piece) in pieces[1..].iter_mut().zip(self.outbox.iter().skip(1)) {
                *slot = IoSlice::new(piece);
                n += 1;
            }
            let mut written = match self.stream.try_write_vectored(&pieces[..n]) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(written) => written,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            };
            debug_assert!(written <= self.queued);
            self.queued -= written;
            // Bounded: each turn takes a whole piece or ends with the rest inside one.
            while written > 0 {
                let left = self.outbox[0].len() - self.front_sent;
                if written < left {
                    self.front_sent += written;
                    break;
                }
                written -= left;
                self.outbox.pop_front();
                self.front_sent = 0;
            }
        }
        debug_assert_eq!(self.outbox.is_empty(), self.queued == 0);
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

/// A frame received during a session: its DR message, or why the session ends (`peer`
/// names the other site in that reason).
pub fn dr_message(f: Result<Frame, ConnError>, peer: &str) -> Result<Message, String> {
    match f {
        Ok(Frame::Dr(m)) => Ok(m),
        Ok(Frame::Error(reason)) => Err(format!("{peer} ended the session: {reason}")),
        Ok(Frame::Hello(_)) => Err("a second hello".into()),
        Err(e) => Err(e.to_string()),
    }
}
