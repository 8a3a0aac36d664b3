//! Starting the live export: the listener (bound before anything else, so a taken
//! address fails at once), the NBD server over [`LiveCatalog`], and the stop signal.

use std::path::Path;
use std::sync::Arc;

use rehydrate_nbd::ServerTls;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::front::Front;
use super::{LiveCatalog, LiveExport, Shared};
use crate::error::ServiceError;
use crate::restore::shell::Live;
use crate::source::Source;

/// Binds the export's address.
pub(crate) async fn bind(addr: &str) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::ExportListen {
            addr: addr.to_owned(),
            source,
        })
}

/// The live export's TLS settings from the command line: `None` without a certificate.
pub(crate) fn tls(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> Result<Option<ServerTls>, ServiceError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    ServerTls::from_pem_files(cert, key, client_ca)
        .map(Some)
        .map_err(|e| ServiceError::ExportTls(e.to_string()))
}

/// Serves `shared`'s volume as export `name` on `listener` from now on (over TLS only
/// when `tls` is set); returns the shell's side of it.
pub(crate) fn start<S: Source>(
    listener: TcpListener,
    name: String,
    description: String,
    tls: Option<ServerTls>,
    shared: Arc<Shared>,
    source: Arc<S>,
) -> Live {
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let export = Arc::new(LiveExport::new(
        Arc::clone(&shared),
        source,
        requests_tx,
        description,
    ));
    let catalog = Arc::new(LiveCatalog::new(name, export));
    if let Ok(addr) = listener.local_addr() {
        if tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "serving the live export without TLS on a non-loopback address: anyone who \
                 can reach it can read and write the volume (use --export-tls-cert and \
                 --export-tls-key)"
            );
        }
        tracing::info!(%addr, tls = tls.is_some(), "restore: serving the live export");
    }
    let config = rehydrate_nbd::ServerConfig {
        tls,
        ..rehydrate_nbd::ServerConfig::default()
    };
    tokio::spawn(rehydrate_nbd::serve(listener, catalog, config));
    Live {
        front: Front::new(Arc::clone(&shared.target), done_tx),
        requests,
        done_rx,
        shared,
        stop: Box::pin(stop_requested()),
    }
}

/// Completes on SIGINT or SIGTERM.
#[cfg(unix)]
pub(crate) async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
pub(crate) async fn stop_requested() {
    let _ = tokio::signal::ctrl_c().await;
}
