//! The `backup` and `serve` subcommands: their arguments (clap derive) and the functions
//! that run them. The `rehydrate` binary and `rehydrate-backup` both use these.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tokio::net::TcpListener;

use crate::access::{AllowRule, AllowRules};
use crate::backup::{backup, BackupOptions, BackupSummary};
use crate::cache::DEFAULT_CACHE_BYTES;
use crate::catalog::StoreCatalog;
use crate::error::BackupError;
use crate::name::VolumeName;
use crate::size::{parse_size, ChunkSize};
use crate::store::ChunkStore;

/// Back up an image file or block device as a new version of a volume.
#[derive(Args, Clone, Debug)]
pub struct BackupArgs {
    /// The image file or block device to back up.
    pub source: PathBuf,
    /// The store: a directory path or an object store URL (s3://bucket/prefix).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// The volume to add a version to ([A-Za-z0-9._-], at most 128 bytes).
    #[arg(long, value_name = "NAME", value_parser = parse_volume)]
    pub volume: VolumeName,
    /// Chunk size of the new version: a power of two from 64KiB to 8MiB.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_chunk_size)]
    pub chunk_size: ChunkSize,
    /// Read at most this many bytes per second from the source (e.g. 100MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_rate)]
    pub rate_limit: Option<u64>,
    /// Print the summary as one JSON object instead of the `backup:` line.
    #[arg(long)]
    pub json: bool,
}

/// `backup` as the command line takes it: [`BackupArgs`] plus the options that programs
/// embedding a backup (the demo) leave at their defaults.
#[derive(Args, Clone, Debug)]
pub struct BackupCommand {
    /// What to back up, and where.
    #[command(flatten)]
    pub args: BackupArgs,
    /// Read back every chunk the store already has and check it against its hash,
    /// replacing any that is damaged (without it, only a cheap size check is made).
    #[arg(long)]
    pub verify: bool,
}

/// The server side of TLS, as `serve` and `receive` take it.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsServerArgs {
    /// Use TLS with this certificate (chain, PEM); TLS is then required of every client.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept only clients presenting a certificate this CA signed (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsServerArgs {
    /// The TLS settings the flags ask for, if any.
    pub fn server_tls(&self) -> Result<Option<rehydrate_nbd::ServerTls>, BackupError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        rehydrate_nbd::ServerTls::from_pem_files(cert, key, self.tls_client_ca.as_deref())
            .map(Some)
            .map_err(BackupError::Tls)
    }
}

/// Serve every volume version in a store, read-only, over NBD.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// The store: a directory path or an object store URL (s3://bucket/prefix).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
    pub listen: String,
    /// Size of the decompressed-chunk cache shared by all connections.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size_arg)]
    pub cache_size: u64,
    /// TLS, required of every client when given (NBD_OPT_STARTTLS before anything else);
    /// a client certificate's common name (CN) is its identity for --allow.
    #[command(flatten)]
    pub tls: TlsServerArgs,
    /// Let clients whose certificate CN is CLIENT-CN (`*`: any) read the volumes matching
    /// NAME-GLOB (`*`, `?`). Repeatable; without any, every trusted client reads all.
    #[arg(
        long = "allow",
        value_name = "NAME-GLOB=CLIENT-CN",
        requires = "tls_client_ca"
    )]
    pub allow: Vec<AllowRule>,
}

fn parse_volume(s: &str) -> Result<VolumeName, String> {
    VolumeName::new(s).map_err(|e| e.to_string())
}

fn parse_chunk_size(s: &str) -> Result<ChunkSize, String> {
    s.parse().map_err(|e: BackupError| e.to_string())
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn parse_rate(s: &str) -> Result<u64, String> {
    match parse_size(s) {
        Ok(0) => Err("rate limit must be above zero".into()),
        other => other.map_err(|e| e.to_string()),
    }
}

impl BackupSummary {
    /// The summary as the last line of `backup`'s output: the `backup:` line, or JSON.
    pub fn render(&self, json: bool) -> String {
        if json {
            serde_json::to_string(self).unwrap_or_else(|_| self.to_string())
        } else {
            self.to_string()
        }
    }
}

/// Run `backup`: open (or create) the store, back up, publish. Printing the summary is
/// the caller's (see [`BackupSummary::render`] and `args.json`).
pub async fn run_backup(args: BackupArgs) -> Result<BackupSummary, BackupError> {
    run_backup_command(BackupCommand {
        args,
        verify: false,
    })
    .await
}

/// [`run_backup`] with every command-line option.
pub async fn run_backup_command(command: BackupCommand) -> Result<BackupSummary, BackupError> {
    let args = command.args;
    let store = ChunkStore::open(&args.store, true)?;
    store.check_conditional_put().await?;
    let options = BackupOptions {
        volume: args.volume,
        chunk_size: args.chunk_size,
        progress: !args.json,
        rate_limit_bytes_per_sec: args.rate_limit,
        verify: command.verify,
    };
    backup(&store, &args.source, &options).await
}

/// Run `serve`: listen on `args.listen` and serve until Ctrl-C or SIGTERM.
pub async fn run_serve(args: ServeArgs) -> Result<(), BackupError> {
    let store = ChunkStore::open(&args.store, false)?;
    let tls = server_tls(&args)?;
    let warn_plain = |addr: &str| {
        tracing::warn!(
            %addr,
            "serving without TLS on a non-loopback address: anyone who can reach it can \
             read every backup, in clear text (use --tls-cert and --tls-key)"
        );
    };
    // An address given as an IP is judged before the port opens, so the warning is out
    // before the first client can connect; a host name only once it is bound.
    let given: Option<std::net::SocketAddr> = args.listen.parse().ok();
    if tls.is_none() && given.is_some_and(|a| !a.ip().is_loopback()) {
        warn_plain(&args.listen);
    }
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|source| BackupError::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().ok();
    let addr = local.map_or(args.listen.clone(), |a| a.to_string());
    if tls.is_none() && given.is_none() && !local.is_some_and(|a| a.ip().is_loopback()) {
        warn_plain(&addr);
    }
    tracing::info!(%addr, store = store.name(), tls = tls.is_some(), "serving");
    let config = rehydrate_nbd::ServerConfig {
        tls,
        ..rehydrate_nbd::ServerConfig::default()
    };
    serve_catalog(
        listener,
        StoreCatalog::new(store, args.cache_size),
        config,
        shutdown_signal(),
    )
    .await
}

/// The TLS settings `serve`'s flags ask for, if any, with `--allow` deciding who reads
/// what when client certificates are required.
fn server_tls(args: &ServeArgs) -> Result<Option<rehydrate_nbd::ServerTls>, BackupError> {
    let Some(tls) = args.tls.server_tls()? else {
        return Ok(None);
    };
    Ok(Some(if args.tls.tls_client_ca.is_some() {
        tls.with_policy(Arc::new(AllowRules(args.allow.clone())))
    } else {
        tls
    }))
}

/// Serve `store` on an already-bound `listener` until `shutdown` completes (tests and
/// demos bind port 0 and read the port from the listener).
pub async fn serve_on(
    listener: TcpListener,
    store: ChunkStore,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BackupError> {
    serve_catalog(
        listener,
        StoreCatalog::new(store, DEFAULT_CACHE_BYTES),
        rehydrate_nbd::ServerConfig::default(),
        shutdown,
    )
    .await
}

async fn serve_catalog(
    listener: TcpListener,
    catalog: StoreCatalog,
    config: rehydrate_nbd::ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BackupError> {
    // Fail at start, with a clear line, if the store cannot even be listed.
    catalog.list_exports().await?;
    rehydrate_nbd::serve_until(listener, Arc::new(catalog), config, shutdown).await;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = crate::os::terminated() => {}
    }
}
