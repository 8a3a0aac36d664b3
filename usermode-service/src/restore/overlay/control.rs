//! The running overlay restore's cutover control: a Unix socket beside the metadata,
//! `METADATA.control` (mode 0600: only its owner may cut over), through which
//! `rehydrate cutover` asks the running restore to merge. The restore holds the
//! metadata's lock for its whole run, so a socket found when taking the lock is a dead
//! run's, and is replaced.
//!
//! # Protocol
//! One request per connection, one line each way, UTF-8, at most [`LINE_MAX_BYTES`]:
//!
//! ```text
//! client: "cutover online\n" | "cutover offline\n"
//! server: "merged <summary>\n" | "refused <why>\n" | "failed <why>\n"
//! ```
//!
//! The answer comes when the cutover is durable (or refused, or stopped): the client
//! waits for it.

use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

/// Longest line either side sends.
pub const LINE_MAX_BYTES: usize = 4096;

/// What the running restore answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The cutover is durable; a one-line summary.
    Merged(String),
    /// Refused before anything changed; why.
    Refused(String),
    /// Began and stopped; why.
    Failed(String),
}

impl Answer {
    /// The protocol line, without its newline.
    pub fn line(&self) -> String {
        let (word, text) = match self {
            Answer::Merged(t) => ("merged", t),
            Answer::Refused(t) => ("refused", t),
            Answer::Failed(t) => ("failed", t),
        };
        // One line: a newline inside would end the answer early.
        format!("{word} {}", text.replace('\n', " "))
    }

    /// Parses a protocol line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Answer> {
        let line = line.trim_end_matches('\n');
        let (word, text) = line.split_once(' ').unwrap_or((line, ""));
        let text = text.to_owned();
        match word {
            "merged" => Some(Answer::Merged(text)),
            "refused" => Some(Answer::Refused(text)),
            "failed" => Some(Answer::Failed(text)),
            _ => None,
        }
    }
}

/// A cutover asked of the running restore.
#[derive(Debug)]
pub struct Command {
    /// Merge while the volume is used (else with it held throughout).
    pub online: bool,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
}

/// The commands for the shell.
pub type Receiver = mpsc::UnboundedReceiver<Command>;

/// Parses a request line: `Some(online)`.
pub fn parse_request(line: &str) -> Option<bool> {
    match line.trim_end_matches('\n') {
        "cutover online" => Some(true),
        "cutover offline" => Some(false),
        _ => None,
    }
}

/// The request line for `online`, without its newline.
pub fn request_line(online: bool) -> &'static str {
    if online {
        "cutover online"
    } else {
        "cutover offline"
    }
}

/// The socket of the restore whose metadata is `metadata`.
pub fn socket_path(metadata: &Path) -> PathBuf {
    let mut p = metadata.as_os_str().to_owned();
    p.push(".control");
    PathBuf::from(p)
}

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{listen, request, Listening};

/// Without Unix sockets there is no control of a running restore: a cutover runs only
/// when the restore does not.
#[cfg(not(unix))]
mod other {
    use std::path::Path;

    use super::super::OverlayError;
    use super::{Answer, Receiver};

    /// No socket: the shell gets no commands.
    pub struct Listening;

    /// No socket here.
    pub fn listen(_metadata: &Path) -> std::io::Result<(Receiver, Listening)> {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Ok((rx, Listening))
    }

    /// No socket to reach.
    pub fn request(
        metadata: &Path,
        _online: bool,
        _timeout: std::time::Duration,
    ) -> Result<Answer, OverlayError> {
        Err(OverlayError::Control {
            path: super::socket_path(metadata),
            source: std::io::Error::other("no control of a running restore on this system"),
        })
    }
}
#[cfg(not(unix))]
pub use other::{listen, request, Listening};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_requests_round_trip_as_one_line() {
        for a in [
            Answer::Merged("copied=3".into()),
            Answer::Refused("the destination is not completely restored".into()),
            Answer::Failed("a\nb".into()),
        ] {
            let line = a.line();
            assert!(!line.contains('\n'));
            let back = Answer::parse(&format!("{line}\n")).unwrap();
            assert_eq!(back.line(), line);
        }
        assert_eq!(Answer::parse("garbage"), None);
        assert_eq!(parse_request("cutover online\n"), Some(true));
        assert_eq!(parse_request(request_line(false)), Some(false));
        assert_eq!(parse_request("cutover now"), None);
        assert_eq!(
            socket_path(Path::new("/a/t.rehydrate-meta")),
            PathBuf::from("/a/t.rehydrate-meta.control")
        );
    }
}
