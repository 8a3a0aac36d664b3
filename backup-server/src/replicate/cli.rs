//! `replicate`, `replicate status` and `receive`: arguments (clap derive) and the
//! functions that run them, for the `rehydrate` and `rehydrate-backup` binaries.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::receive::run_receive;
use super::send::{replicate, Options, Report};
use super::sender::DEFAULT_WINDOW_BYTES;
use super::status::run_status;
use crate::error::BackupError;
use crate::name::VolumeName;
use crate::size::parse_size;
use crate::store::ChunkStore;

/// Exit status of a `replicate` whose session ran to its end with some volumes pending
/// or failed (the others committed). 1 is any error; 2 is clap's usage error.
pub const EXIT_PARTIAL: u8 = 3;

/// `rehydrate replicate --help`.
pub const REPLICATE_HELP: &str =
    "Send the versions a receiving store lacks to `rehydrate receive`, \
volume by volume, parent first: first the change manifest, then only the chunks the receiver \
is missing. A version becomes visible at the receiver only once all its chunks and its parent \
are there, so a cut link or a crash never leaves half a version; run the same command again \
to resume, and only what is still missing is sent.\n\nThe last line is `replicate: \
committed=K pending=P failed=F bytes_sent=B` (volumes). Exit status: 0 when every volume is \
committed; 3 when the session ended with some volumes pending or failed (the others are \
committed; stderr names each); 1 on an error (nothing answered, or the session broke off: \
run again to resume).\n\n`rehydrate replicate status --store STORE [--json]` shows a \
receiving store's pending sessions: the versions waiting, chunks arrived, chunks missing.\n\n\
Over an untrusted network, give the receiver a certificate (--tls-cert, --tls-key) and the CA \
of the senders it accepts (--tls-client-ca), and the sender the CA that signed the receiver's \
certificate (--tls-ca) and a certificate of its own (--tls-cert, --tls-key).\n\n\
Examples:\n  rehydrate receive --store /srv/copy --listen 0.0.0.0:10810\n  rehydrate replicate \
--from /var/backups --to copyhost:10810 --volume sys\n  rehydrate replicate --from \
/var/backups --to copyhost:10810 --tls-ca ca.pem --tls-cert site-a.pem --tls-key site-a.key\n  \
rehydrate replicate status --store /srv/copy";

/// `rehydrate receive --help`.
pub const RECEIVE_HELP: &str = "Receive versions that `rehydrate replicate` sends into a store (a \
local directory), until Ctrl-C or SIGTERM. The manifest is made durable before any data; each \
chunk is checked against its name before it is stored; arrivals are recorded durably \
(replication/SENDER/session in the store), and a version is published only when all its chunks \
and its parent are there.\n\nExample:\n  rehydrate receive --store /srv/copy --listen 0.0.0.0:10810";

/// Send the versions a receiving store lacks; or, with `status`, show a receiving store's
/// pending sessions.
#[derive(Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReplicateArgs {
    /// `status`: show pending sessions of a receiving store instead of replicating.
    #[command(subcommand)]
    pub command: Option<ReplicateCommand>,
    /// The sending store: a directory path or an object store URL.
    #[arg(long, value_name = "STORE", required = true)]
    pub from: Option<String>,
    /// The receiver (`rehydrate receive`), as HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", required = true)]
    pub to: Option<String>,
    /// A volume to replicate (repeat for several; default: every volume).
    #[arg(long = "volume", value_name = "NAME", value_parser = parse_volume)]
    pub volumes: Vec<VolumeName>,
    /// Bytes sent ahead of the receiver's acknowledgements: what a cut connection can
    /// waste at most. Larger helps on long, fast links.
    #[arg(long, value_name = "SIZE", default_value = "2MiB", value_parser = parse_window)]
    pub window: u64,
    /// Print the summary as one JSON object instead of the `replicate:` line.
    #[arg(long)]
    pub json: bool,
    /// Speak TLS to the receiver and trust the certificate this CA signed (PEM); the
    /// certificate must name the host of --to.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM) to a receiver that asks for one.
    #[arg(long, value_name = "PEM", requires = "tls_ca", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `replicate`'s subcommands.
#[derive(Subcommand, Clone, Debug)]
pub enum ReplicateCommand {
    /// Show a receiving store's pending sessions: what arrived, what is missing.
    Status(ReplicateStatusArgs),
}

/// `replicate status`.
#[derive(Args, Clone, Debug)]
pub struct ReplicateStatusArgs {
    /// The receiving store (a local directory).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Receive replicated versions into a store.
#[derive(Args, Clone, Debug)]
pub struct ReceiveArgs {
    /// The receiving store (a local directory; created if missing).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10810")]
    pub listen: String,
    /// TLS, required of every sender when given; with --tls-client-ca only senders
    /// presenting a certificate that CA signed may send versions into the store.
    #[command(flatten)]
    pub tls: crate::cli::TlsServerArgs,
}

fn parse_volume(s: &str) -> Result<VolumeName, String> {
    VolumeName::new(s).map_err(|e| e.to_string())
}

fn parse_window(s: &str) -> Result<u64, String> {
    match parse_size(s) {
        Ok(n) if n < 64 << 10 => Err("the window must be at least 64KiB".into()),
        Ok(n) if n > super::sender::MAX_WINDOW_BYTES => {
            Err("the window must be at most 1GiB".into())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

const _: () = assert!(DEFAULT_WINDOW_BYTES >= 64 << 10);

impl Report {
    /// The summary: `replicate: committed=K pending=P failed=F bytes_sent=B`, or JSON.
    pub fn render(&self, json: bool) -> String {
        let o = &self.outcome;
        if json {
            let failed: Vec<_> = o
                .failed
                .iter()
                .map(|(v, r)| serde_json::json!({"volume": v.as_str(), "reason": r}))
                .collect();
            serde_json::json!({
                "committed": o.committed.len(),
                "pending": o.pending.len(),
                "failed": o.failed.len(),
                "bytes_sent": self.bytes_sent,
                "versions_committed": o.versions_committed,
                "committed_volumes": o.committed.iter().map(VolumeName::as_str).collect::<Vec<_>>(),
                "pending_volumes": o.pending.iter().map(VolumeName::as_str).collect::<Vec<_>>(),
                "failed_volumes": failed,
            })
            .to_string()
        } else {
            format!(
                "replicate: committed={} pending={} failed={} bytes_sent={}",
                o.committed.len(),
                o.pending.len(),
                o.failed.len(),
                self.bytes_sent
            )
        }
    }

    /// The process exit status: 0 when every volume is committed, else [`EXIT_PARTIAL`].
    pub fn exit_status(&self) -> u8 {
        if self.outcome.pending.is_empty() && self.outcome.failed.is_empty() {
            0
        } else {
            EXIT_PARTIAL
        }
    }
}

impl ReplicateArgs {
    /// Run `replicate` (or `replicate status`), print its output, and return the exit
    /// status to end with (0, or [`EXIT_PARTIAL`]). A session that broke off is an error.
    pub async fn run(self) -> Result<u8, BackupError> {
        if let Some(ReplicateCommand::Status(args)) = self.command {
            println!("{}", run_status(&args.store, args.json).await?);
            return Ok(0);
        }
        let (Some(from), Some(to)) = (self.from, self.to) else {
            return Err(BackupError::Internal("--from and --to are required".into()));
        };
        let store = ChunkStore::open(&from, false)?;
        let tls = match &self.tls_ca {
            None => None,
            Some(ca) => Some(
                rehydrate_nbd::ClientTls::from_pem_files(
                    ca,
                    self.tls_cert.as_deref().zip(self.tls_key.as_deref()),
                )
                .map_err(BackupError::Tls)?,
            ),
        };
        let options = Options {
            to,
            volumes: self.volumes,
            window_bytes: self.window,
            progress: !self.json,
            tls,
        };
        let report = replicate(&store, &options).await?;
        let o = &report.outcome;
        if let Some(reason) = &o.error {
            return Err(super::ReplicateError::BrokeOff {
                reason: format!("{reason} (bytes_sent={})", report.bytes_sent),
                committed: o.committed.len(),
                pending: o.pending.len() + o.failed.len(),
            }
            .into());
        }
        for (volume, reason) in &o.failed {
            eprintln!("replicate: volume {volume} failed: {reason}");
        }
        for volume in &o.pending {
            eprintln!("replicate: volume {volume} is pending: run again to resume");
        }
        println!("{}", report.render(self.json));
        Ok(report.exit_status())
    }
}

impl ReceiveArgs {
    /// Run `receive` until Ctrl-C or SIGTERM.
    pub async fn run(self) -> Result<(), BackupError> {
        run_receive(&self.store, &self.listen, self.tls.server_tls()?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Top {
        Replicate(ReplicateArgs),
        Receive(ReceiveArgs),
    }

    fn parse(args: &[&str]) -> Result<Top, clap::Error> {
        Cli::try_parse_from(std::iter::once("rehydrate").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn replicate_and_its_status_subcommand_parse_unambiguously() {
        Cli::command().debug_assert();
        let base = ["replicate", "--from", "/s", "--to", "h:1"];
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        let Ok(Top::Replicate(a)) = parse(&with(&["--volume", "a", "--volume", "b"])) else {
            panic!("replicate did not parse");
        };
        assert_eq!(
            (a.from.as_deref(), a.to.as_deref()),
            (Some("/s"), Some("h:1"))
        );
        assert_eq!(a.volumes.len(), 2);
        assert_eq!(a.window, DEFAULT_WINDOW_BYTES);
        assert!(a.command.is_none());
        let Ok(Top::Replicate(a)) = parse(&["replicate", "status", "--store", "/d", "--json"])
        else {
            panic!("replicate status did not parse");
        };
        assert!(
            matches!(a.command, Some(ReplicateCommand::Status(s)) if s.json && s.store == "/d")
        );
        for bad in [
            vec!["replicate"],
            vec!["replicate", "--from", "/s"],
            vec!["replicate", "--to", "h:1"],
            vec!["replicate", "status"],
            with(&["status", "--store", "/d"]),
            with(&["--volume", "../x"]),
            with(&["--window", "1KiB"]),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
        let Ok(Top::Receive(r)) = parse(&["receive", "--store", "/d"]) else {
            panic!("receive did not parse");
        };
        assert_eq!(r.listen, "127.0.0.1:10810");
    }

    #[test]
    fn the_summary_line_and_exit_status() {
        let v = |s| VolumeName::new(s).unwrap();
        let mut r = Report {
            outcome: super::super::sender::Outcome {
                committed: vec![v("a"), v("b")],
                ..Default::default()
            },
            bytes_sent: 42,
        };
        assert_eq!(
            r.render(false),
            "replicate: committed=2 pending=0 failed=0 bytes_sent=42"
        );
        assert_eq!(r.exit_status(), 0);
        r.outcome.failed.push((v("c"), "unreadable".into()));
        assert_eq!(
            r.render(false),
            "replicate: committed=2 pending=0 failed=1 bytes_sent=42"
        );
        assert_eq!(r.exit_status(), EXIT_PARTIAL);
        let json: serde_json::Value = serde_json::from_str(&r.render(true)).unwrap();
        assert_eq!(json["failed"], 1);
        assert_eq!(json["failed_volumes"][0]["volume"], "c");
    }
}
