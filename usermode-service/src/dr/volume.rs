//! Positioned I/O on a site's volume (an image file or block device) for the core
//! tasks, and the pieces both sites' links share.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rehydrate_backup::replicate::conn::{self, ConnError, Incoming};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::link::Frame;
use super::DrRunError;

/// Largest zero buffer written at once.
const ZERO_STEP_BYTES: u64 = 1 << 20;

/// The volume.
pub struct Volume {
    file: File,
    /// Its size.
    pub size_bytes: u64,
}

impl Volume {
    /// Opens `path` read-write.
    pub fn open(path: &Path) -> Result<Volume, DrRunError> {
        let io = |source| DrRunError::Io {
            what: format!("open {}", path.display()),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let size_bytes = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(io)?;
        Ok(Volume { file, size_bytes })
    }

    /// Creates (or extends) `path` to `size_bytes` and opens it.
    pub fn create(path: &Path, size_bytes: u64) -> Result<Volume, DrRunError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .and_then(|f| f.set_len(size_bytes).map(|()| f))
            .map_err(|source| DrRunError::Io {
                what: format!("create {}", path.display()),
                source,
            })?;
        Ok(Volume { file, size_bytes })
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Writes `len` zero bytes at `offset`.
    pub fn zero(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let zeroes = vec![0u8; len.min(ZERO_STEP_BYTES) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_STEP_BYTES);
            self.file
                .write_all_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// Frames waiting for the socket at most; past it the core stops taking items from its
/// sender until the socket drains (the sender's own bound then ends the session).
pub const OUTBOX_FRAMES: usize = 64;

/// A connected peer: its frames, and a channel to the task that writes ours.
pub struct Peer {
    /// Frames from the peer (or the error that ended them).
    pub incoming: Incoming<Frame>,
    /// Frames to the peer.
    pub outgoing: mpsc::Sender<Frame>,
}

/// Splits `stream` into a [`Peer`]; a task writes the outgoing frames until the channel
/// closes or the socket fails.
pub fn peer(stream: TcpStream) -> Peer {
    let (incoming, mut writer) = conn::split::<Frame>(stream, OUTBOX_FRAMES);
    let (outgoing, mut rx) = mpsc::channel::<Frame>(OUTBOX_FRAMES);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if writer.send(&f).await.is_err() {
                break;
            }
        }
        writer.close().await;
    });
    Peer { incoming, outgoing }
}

/// The next frame from `incoming`, or why there is none.
pub async fn next_frame(incoming: &mut Incoming<Frame>) -> Result<Frame, ConnError> {
    incoming.recv().await.unwrap_or(Err(ConnError::Closed))
}
