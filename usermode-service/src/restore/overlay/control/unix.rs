//! The control socket on Unix: a tokio listener in the restore, a blocking client in
//! `rehydrate cutover`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::super::OverlayError;
use super::{parse_request, request_line, socket_path, Answer, Command, Receiver, LINE_MAX_BYTES};

/// The socket while the restore runs; removed when dropped.
#[derive(Debug)]
pub struct Listening {
    path: PathBuf,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on the control socket of the restore whose (locked) metadata is `metadata`;
/// commands arrive on the receiver. Needs a tokio runtime.
pub fn listen(metadata: &Path) -> std::io::Result<(Receiver, Listening)> {
    let path = socket_path(metadata);
    // The metadata is locked by this run: a socket there is a dead run's.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Bounded by the connections made; each is served on its own task.
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, tx.clone()));
        }
    });
    Ok((rx, Listening { path }))
}

/// One connection: a request line, the shell's answer.
async fn serve(stream: UnixStream, tx: mpsc::UnboundedSender<Command>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = AsyncBufReader::new(read).take(LINE_MAX_BYTES as u64);
    let answer = match reader.read_line(&mut line).await {
        Ok(_) => match parse_request(&line) {
            Some(online) => {
                let (reply, answer) = oneshot::channel();
                if tx.send(Command { online, reply }).is_err() {
                    Answer::Failed("the restore is stopping".into())
                } else {
                    answer
                        .await
                        .unwrap_or_else(|_| Answer::Failed("the restore stopped".into()))
                }
            }
            None => Answer::Refused(format!("unknown request {:?}", line.trim_end())),
        },
        Err(e) => Answer::Refused(format!("unreadable request: {e}")),
    };
    let _ = write
        .write_all(format!("{}\n", answer.line()).as_bytes())
        .await;
}

/// Asks the running restore whose metadata is `metadata` to cut over, and waits for
/// the answer (`timeout` for each read, as long as the merge may take).
pub fn request(metadata: &Path, online: bool, timeout: Duration) -> Result<Answer, OverlayError> {
    let path = socket_path(metadata);
    let control = |source| OverlayError::Control {
        path: path.clone(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(control)?;
    stream.set_read_timeout(Some(timeout)).map_err(control)?;
    stream
        .write_all(format!("{}\n", request_line(online)).as_bytes())
        .map_err(control)?;
    let mut line = String::new();
    BufReader::new(stream.take(LINE_MAX_BYTES as u64))
        .read_line(&mut line)
        .map_err(control)?;
    Answer::parse(&line).ok_or_else(|| {
        control(std::io::Error::other(format!(
            "the restore answered {:?}",
            line.trim_end()
        )))
    })
}

use std::io::Read as _;
use tokio::io::AsyncReadExt as _;
