//! The NBD front of either site: each client request goes to the site's core task on a
//! channel and waits for its answer. The primary's export is read-write (writes go
//! through the sender so they are streamed or kept local by its rules); the DR site's
//! is read-only until promotion. Requests are the live export's ([`Op`]); trims are
//! not passed on (doing nothing is a correct trim).

use std::sync::Arc;

use bytes::Bytes;
use rehydrate_nbd::{BoxFuture, Export, ExportError, MapCatalog, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub use crate::restore::live::io::Op;

/// A request and where its answer goes (read data; empty for the rest).
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub op: Op,
    /// The answer.
    pub reply: oneshot::Sender<Result<Bytes, ExportError>>,
}

/// The export.
pub struct SiteExport {
    size_bytes: u64,
    read_only: bool,
    description: String,
    requests: mpsc::UnboundedSender<Request>,
}

impl SiteExport {
    async fn ask(&self, op: Op) -> Result<Bytes, ExportError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { op, reply })
            .map_err(|_| ExportError::ShuttingDown)?;
        answer.await.map_err(|_| ExportError::ShuttingDown)?
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        rehydrate_nbd::range_end(offset, len, self.size_bytes).map(drop)
    }
}

impl Export for SiteExport {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn can_multi_conn(&self) -> bool {
        true // one core orders every request, whichever connection it came on
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn min_block_bytes(&self) -> u32 {
        512
    }

    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, Result<Bytes, ExportError>> {
        Box::pin(async move {
            self.check(offset, length.into())?;
            self.ask(Op::Read {
                offset,
                len: length.into(),
            })
            .await
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move {
            if self.read_only {
                return Err(ExportError::ReadOnly);
            }
            self.check(offset, data.len() as u64)?;
            self.ask(Op::Write { offset, data, fua }).await.map(drop)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move { self.ask(Op::Flush).await.map(drop) })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
    ) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move {
            if self.read_only {
                return Err(ExportError::ReadOnly);
            }
            self.check(offset, length.into())?;
            self.ask(Op::Zeroes {
                offset,
                len: length.into(),
                fua,
            })
            .await
            .map(drop)
        })
    }
}

/// Serves a site's volume of `size_bytes` as the default export on `listener`; its
/// requests arrive on the returned channel.
pub fn start(
    listener: TcpListener,
    size_bytes: u64,
    read_only: bool,
    description: String,
) -> mpsc::UnboundedReceiver<Request> {
    let (tx, rx) = mpsc::unbounded_channel();
    let export = Arc::new(SiteExport {
        size_bytes,
        read_only,
        description,
        requests: tx,
    });
    let catalog = Arc::new(MapCatalog::new().with("", export));
    tokio::spawn(rehydrate_nbd::serve(
        listener,
        catalog,
        ServerConfig::default(),
    ));
    rx
}

/// A reply for a request the core could not serve.
pub fn io_error(what: impl std::fmt::Display) -> ExportError {
    ExportError::Io(std::io::Error::other(what.to_string()))
}
