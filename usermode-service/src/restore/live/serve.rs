//! Starting the live export: the listener (bound before anything else, so a taken
//! address fails at once), the NBD server over [`LiveCatalog`], and the stop signal.

use std::sync::Arc;

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

/// Serves `shared`'s volume as export `name` on `listener` from now on; returns the
/// shell's side of it.
pub(crate) fn start<S: Source>(
    listener: TcpListener,
    name: String,
    description: String,
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
        tracing::info!(%addr, "restore: serving the live export");
    }
    tokio::spawn(rehydrate_nbd::serve(
        listener,
        catalog,
        rehydrate_nbd::ServerConfig::default(),
    ));
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
async fn stop_requested() {
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
async fn stop_requested() {
    let _ = tokio::signal::ctrl_c().await;
}
