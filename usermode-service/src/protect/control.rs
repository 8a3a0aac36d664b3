//! The control socket: how `rehydrate mark` reaches a running `rehydrate protect`.
//!
//! A Unix stream socket, `protect-NAME.sock` in the same private directory as the
//! status files (`$XDG_RUNTIME_DIR/rehydrate/`, else `/tmp/rehydrate-$UID/`, mode
//! 0700), or `--control PATH`. One request per connection, one line each way, at most
//! [`LINE_MAX_BYTES`]:
//!
//! ```text
//! → mark LABEL
//! ← ok seq=SEQ time=RFC3339 point=NAME@BASE+SEQ
//! ← error WHAT WENT WRONG
//! ```
//!
//! The answer comes once the mark's record is durable in the journal. The socket's
//! permissions are the directory's: only the user running protect (and root) can mark.

use std::path::{Path, PathBuf};

use rehydrate_backup::VolumeName;

use super::error::ProtectError;

/// Longest request or answer line.
pub const LINE_MAX_BYTES: usize = 512;
/// How long `mark` waits for its answer (a mark waits for a gap to close, up to 30 s,
/// then for its record to be durable).
pub const MARK_TIMEOUT_SECS: u64 = 90;

/// The default control socket of `volume`.
pub fn default_socket(volume: &VolumeName) -> Result<PathBuf, ProtectError> {
    let dir = crate::status::default_dir()
        .map_err(|e| ProtectError::NoControl(format!("no default control socket: {e}")))?;
    Ok(dir.join(format!("protect-{volume}.sock")))
}

/// The control sockets in the default directory: (volume, path).
pub fn default_sockets() -> Vec<(String, PathBuf)> {
    let Ok(dir) = crate::status::default_dir() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let volume = name.strip_prefix("protect-")?.strip_suffix(".sock")?;
            Some((volume.to_owned(), p.clone()))
        })
        .collect();
    found.sort();
    found
}

/// Parses a request line: the label of a mark.
pub fn parse_request(line: &str) -> Result<&str, String> {
    match line.trim_end().split_once(' ') {
        Some(("mark", label)) if !label.is_empty() => Ok(label),
        _ => Err(format!(
            "unknown request {:?}; the one request is: mark LABEL",
            line.trim_end()
        )),
    }
}

#[cfg(unix)]
pub use unix::{bind, mark, serve};

#[cfg(unix)]
mod unix {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    use tokio::net::{UnixListener, UnixStream};

    use super::super::error::ProtectError;
    use super::super::shared::Protected;
    use super::{parse_request, LINE_MAX_BYTES, MARK_TIMEOUT_SECS};
    use rehydrate_backup::name::format_rfc3339;

    fn control_error(path: &Path, reason: impl std::fmt::Display) -> ProtectError {
        ProtectError::Control {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// Binds the control socket at `path` for `volume`. A socket nobody answers on is
    /// left over from a killed protect and is replaced; one that answers belongs to a
    /// protect still running.
    pub fn bind(path: &Path, volume: &str) -> Result<UnixListener, ProtectError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| control_error(dir, e))?;
            }
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ProtectError::AlreadyRunning {
                    volume: volume.to_owned(),
                    socket: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|e| control_error(path, e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| control_error(path, e))?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        Ok(listener)
    }

    /// Answers requests until the process ends.
    pub async fn serve(listener: UnixListener, shared: Arc<Protected>) {
        // One task per connection; each reads one bounded line.
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &shared).await {
                    tracing::warn!(%e, "protect: control request failed");
                }
            });
        }
    }

    async fn answer(stream: UnixStream, shared: &Protected) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(read).take(LINE_MAX_BYTES as u64);
        reader.read_line(&mut line).await?;
        let reply = match parse_request(&line) {
            Ok(label) => match shared.mark(label).await {
                Ok(p) => format!(
                    "ok seq={} time={} point={}+{}\n",
                    p.seq,
                    format_rfc3339(p.time_unix_ns),
                    shared.journal_name,
                    p.seq
                ),
                Err(e) => format!("error {e}\n"),
            },
            Err(e) => format!("error {e}\n"),
        };
        write.write_all(reply.as_bytes()).await?;
        write.flush().await
    }

    /// Asks the protect behind `path` for a mark named `label`; returns its answer's
    /// fields (`seq=… time=… point=…`).
    pub fn mark(path: &Path, label: &str) -> Result<String, ProtectError> {
        let mut stream = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| control_error(path, format!("{e} (is rehydrate protect running?)")))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(MARK_TIMEOUT_SECS)))
            .map_err(|e| control_error(path, e))?;
        writeln!(stream, "mark {label}").map_err(|e| control_error(path, e))?;
        let mut answer = String::new();
        BufReader::new(std::io::Read::take(&stream, LINE_MAX_BYTES as u64))
            .read_line(&mut answer)
            .map_err(|e| control_error(path, e))?;
        let answer = answer.trim_end();
        if let Some(fields) = answer.strip_prefix("ok ") {
            return Ok(fields.to_owned());
        }
        match answer.strip_prefix("error ") {
            Some(why) => Err(ProtectError::MarkRefused(why.to_owned())),
            None => Err(control_error(path, format!("unexpected answer {answer:?}"))),
        }
    }
}

/// Windows: no control socket yet (a named pipe would do); protect runs without marks.
#[cfg(not(unix))]
pub fn mark(path: &Path, _label: &str) -> Result<String, ProtectError> {
    Err(ProtectError::Control {
        path: path.to_owned(),
        reason: "marks need the Unix control socket; not available on Windows yet".into(),
    })
}

/// Removes the socket file when protect ends.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_mark_line() {
        assert_eq!(parse_request("mark pre-upgrade\n"), Ok("pre-upgrade"));
        for bad in ["", "mark", "mark \n", "unmark x", "status"] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }
}
