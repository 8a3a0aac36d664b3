//! [`ChannelLink`]: the driver link over tokio channels, for a filter in the same
//! process.

use std::task::{Context, Poll};

use rehydrate_driver::abi::{
    AbiError, Attach, BitmapPage, BitmapQuery, Control, ControlCommand, FetchFailed, Hydrate,
    HydrateFlags, Ioctl, MissingBatch, MissingRange, StatusCounters,
};
use rehydrate_driver::Status;
use tokio::sync::{mpsc, oneshot};

use super::{BitmapWords, DriverLink, LinkError};

/// Requests queued for the driver side and not yet taken. A bound, so a driver side that
/// stalls makes the service wait instead of growing the queue.
pub const LINK_QUEUE_MAX: usize = 64;

/// A new link: the service's end and the driver's end.
pub fn channel() -> (ChannelLink, LinkRequests) {
    let (tx, rx) = mpsc::channel(LINK_QUEUE_MAX);
    (ChannelLink { tx }, LinkRequests { rx })
}

/// The service's end of an in-process driver link. Clones share the driver side.
#[derive(Clone, Debug)]
pub struct ChannelLink {
    tx: mpsc::Sender<LinkRequest>,
}

/// One control-device request on its way to the driver: what `DeviceIoControl` would
/// pass, plus where its completion goes.
#[derive(Debug)]
pub struct LinkRequest {
    /// The IOCTL (its code is [`Ioctl::code`]).
    pub ioctl: Ioctl,
    /// The input buffer: one encoded ABI message, or empty for calls without input.
    pub input: Vec<u8>,
    /// Size of the output buffer the service offers ([`Ioctl::output_max_bytes`]; 0 for
    /// calls without output). The reply must not be longer.
    pub output_len: usize,
    reply: oneshot::Sender<LinkReply>,
}

/// How the driver completed a request: the status and the bytes written to the output
/// buffer (the request's "information").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkReply {
    /// The completion status.
    pub status: Status,
    /// The output bytes; empty for calls without output or on failure.
    pub output: Vec<u8>,
}

impl LinkRequest {
    /// True once the caller stopped waiting (its future was dropped): the request is
    /// cancelled, and whatever it would carry must stay with the driver.
    pub fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }

    /// Completes the request. Returns false if the caller had stopped waiting, so the
    /// reply was not delivered (the driver must treat it as cancelled).
    /// Output longer than [`output_len`](Self::output_len) reaches the caller as
    /// [`LinkError::OutputOverrun`]: the I/O manager never copies more than the buffer.
    pub fn complete(self, status: Status, output: Vec<u8>) -> bool {
        self.reply.send(LinkReply { status, output }).is_ok()
    }
}

/// The driver's end: the requests, in the order they were made.
#[derive(Debug)]
pub struct LinkRequests {
    rx: mpsc::Receiver<LinkRequest>,
}

impl LinkRequests {
    /// The next request; `None` once every [`ChannelLink`] is dropped and the queue is
    /// empty.
    pub async fn recv(&mut self) -> Option<LinkRequest> {
        self.rx.recv().await
    }

    /// The next request if one is queued now (a deterministic simulator polls without
    /// awaiting).
    pub fn try_recv(&mut self) -> Option<LinkRequest> {
        self.rx.try_recv().ok()
    }

    /// Polls for the next request (for a hand-written future or stream).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<LinkRequest>> {
        self.rx.poll_recv(cx)
    }
}

/// Encodes a message into a fresh buffer of `len` bytes with `encode`.
fn encode(
    ioctl: Ioctl,
    len: usize,
    encode: impl FnOnce(&mut [u8]) -> Result<usize, AbiError>,
) -> Result<Vec<u8>, LinkError> {
    let mut bytes = vec![0u8; len];
    let written = encode(&mut bytes).map_err(|source| LinkError::Encode { ioctl, source })?;
    bytes.truncate(written);
    Ok(bytes)
}

impl ChannelLink {
    /// Sends one request and waits for its completion, whatever its status.
    async fn exchange(&self, ioctl: Ioctl, input: Vec<u8>) -> Result<LinkReply, LinkError> {
        let output_len = ioctl.output_max_bytes();
        let (reply, completion) = oneshot::channel();
        let request = LinkRequest {
            ioctl,
            input,
            output_len,
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| LinkError::Closed { ioctl })?;
        let reply = completion.await.map_err(|_| LinkError::Closed { ioctl })?;
        if reply.output.len() > output_len {
            return Err(LinkError::OutputOverrun {
                ioctl,
                got: reply.output.len(),
                max: output_len,
            });
        }
        Ok(reply)
    }

    /// [`exchange`](Self::exchange) for calls whose failure status is an error: returns
    /// the output bytes.
    async fn call(&self, ioctl: Ioctl, input: Vec<u8>) -> Result<Vec<u8>, LinkError> {
        let reply = self.exchange(ioctl, input).await?;
        if !reply.status.is_success() {
            return Err(LinkError::Refused {
                ioctl,
                status: reply.status,
            });
        }
        Ok(reply.output)
    }
}

impl DriverLink for ChannelLink {
    async fn attach(&self, attach: Attach) -> Result<(), LinkError> {
        let input = encode(Ioctl::Attach, attach.encoded_len(), |b| attach.encode(b))?;
        self.call(Ioctl::Attach, input).await.map(drop)
    }

    async fn control(&self, command: ControlCommand) -> Result<(), LinkError> {
        let control = Control { command };
        let input = encode(Ioctl::Control, control.encoded_len(), |b| control.encode(b))?;
        self.call(Ioctl::Control, input).await.map(drop)
    }

    async fn get_missing(&self) -> Result<Vec<MissingRange>, LinkError> {
        let ioctl = Ioctl::GetMissing;
        let output = self.call(ioctl, Vec::new()).await?;
        let batch =
            MissingBatch::decode(&output).map_err(|source| LinkError::Decode { ioctl, source })?;
        Ok(batch.iter().collect())
    }

    async fn hydrate(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        payload: &[u8],
    ) -> Result<Status, LinkError> {
        let flags = if zero {
            HydrateFlags::ZERO
        } else {
            HydrateFlags::empty()
        };
        let hydrate = Hydrate {
            offset,
            len,
            flags,
            payload,
        };
        // One copy of the payload: the channel carries owned bytes, exactly the message
        // DeviceIoControl would pass (prefix then payload).
        let input = encode(Ioctl::Hydrate, hydrate.encoded_len(), |b| hydrate.encode(b))?;
        let reply = self.exchange(Ioctl::Hydrate, input).await?;
        Ok(reply.status)
    }

    async fn fetch_failed(&self, failed: FetchFailed) -> Result<(), LinkError> {
        let input = encode(Ioctl::FetchFailed, failed.encoded_len(), |b| {
            failed.encode(b)
        })?;
        self.call(Ioctl::FetchFailed, input).await.map(drop)
    }

    async fn query_bitmap(&self, query: BitmapQuery) -> Result<BitmapWords, LinkError> {
        let ioctl = Ioctl::QueryBitmap;
        let input = encode(ioctl, query.encoded_len(), |b| query.encode(b))?;
        let output = self.call(ioctl, input).await?;
        let page =
            BitmapPage::decode(&output).map_err(|source| LinkError::Decode { ioctl, source })?;
        Ok(BitmapWords::from_page(&page))
    }

    async fn get_status(&self) -> Result<StatusCounters, LinkError> {
        let ioctl = Ioctl::GetStatus;
        let output = self.call(ioctl, Vec::new()).await?;
        StatusCounters::decode(&output).map_err(|source| LinkError::Decode { ioctl, source })
    }
}
