//! A framed connection over TCP (or TLS over TCP) for the tokio shells: a reader task
//! that turns the byte
//! stream into decoded messages (bounded channel, so a slow consumer slows the peer), and
//! a writer that counts the bytes it puts on the wire. Generic over the protocol's
//! message type ([`Wire`]): replication uses it with its `Message`, a later protocol
//! between sites with its own.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::frame::{self, FrameError};
use super::session::{MessageError, Wire};

/// How long a peer may stay silent before the session is given up. Generous: before it
/// answers a manifest, a receiver may read back many chunks it already holds.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Most bytes allocated for a frame before its bytes arrive: the largest chunk.
const PREALLOCATE_BYTES: usize = (8 << 20) + 64;

/// Why the stream of messages ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer said nothing for [`IDLE_TIMEOUT`].
    #[error("the peer was silent for {}s", IDLE_TIMEOUT.as_secs())]
    Idle,
    /// Bytes that are not a frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// A frame that is not a message.
    #[error("bad message: {0}")]
    Message(#[from] MessageError),
}

/// Read one message; [`ConnError::Closed`] at a clean end of stream between frames.
pub async fn read_message<M: Wire>(r: &mut (impl AsyncRead + Unpin)) -> Result<M, ConnError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                ConnError::Closed
            } else {
                FrameError::Truncated(got).into()
            });
        }
        got += n;
    }
    let len = frame::parse_length(prefix)?;
    // Up to a chunk's worth is allocated at once (no regrowing while a chunk arrives);
    // beyond that the buffer grows as bytes arrive, so a peer that claims a large frame
    // and sends nothing gets little allocated for it.
    let mut body = Vec::with_capacity(len.min(PREALLOCATE_BYTES));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(FrameError::Truncated(4 + body.len()).into());
    }
    let kind = body[0];
    let payload = bytes::Bytes::from(body).slice(1..);
    Ok(M::decode(kind, payload)?)
}

/// The receiving side of a connection: decoded messages, or the error that ended them.
pub type Incoming<M> = mpsc::Receiver<Result<M, ConnError>>;

/// A connection's bytes: TCP, or TLS over TCP.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

/// Split `stream`: a task reads messages into a channel of `buffer` entries; the returned
/// writer sends.
pub fn split<M: Wire>(stream: TcpStream, buffer: usize) -> (Incoming<M>, Writer) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    halves(read, Box::new(write), buffer)
}

/// [`split`] for any stream (a TLS session over a TCP stream whose `TCP_NODELAY` the
/// caller has set).
pub fn split_duplex<M: Wire>(stream: impl Duplex, buffer: usize) -> (Incoming<M>, Writer) {
    let (read, write) = tokio::io::split(stream);
    halves(read, Box::new(write), buffer)
}

fn halves<M: Wire>(
    mut read: impl AsyncRead + Send + Unpin + 'static,
    write: Box<dyn AsyncWrite + Send + Unpin>,
    buffer: usize,
) -> (Incoming<M>, Writer) {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    tokio::spawn(async move {
        loop {
            let next = match tokio::time::timeout(IDLE_TIMEOUT, read_message(&mut read)).await {
                Ok(r) => r,
                Err(_) => Err(ConnError::Idle),
            };
            let stop = next.is_err();
            if tx.send(next).await.is_err() || stop {
                break;
            }
        }
    });
    (
        rx,
        Writer {
            write,
            bytes_sent: 0,
            buf: Vec::new(),
        },
    )
}

/// The sending side of a connection.
pub struct Writer {
    write: Box<dyn AsyncWrite + Send + Unpin>,
    bytes_sent: u64,
    buf: Vec<u8>,
}

impl Writer {
    /// Send one message.
    pub async fn send(&mut self, message: &impl Wire) -> Result<(), ConnError> {
        self.buf.clear();
        message.encode_into(&mut self.buf);
        let mut off = 0;
        while off < self.buf.len() {
            let n = match tokio::time::timeout(IDLE_TIMEOUT, self.write.write(&self.buf[off..]))
                .await
            {
                Ok(Ok(0)) => return Err(ConnError::Closed),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ConnError::Idle),
            };
            // Counted as they leave, so a cut mid-frame still counts what went out.
            self.bytes_sent += n as u64;
            off += n;
        }
        Ok(())
    }

    /// Bytes handed to the socket so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Close the sending direction.
    pub async fn close(&mut self) {
        let _ = self.write.shutdown().await;
    }
}
