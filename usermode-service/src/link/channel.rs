//! [`ChannelLink`]: the driver link over tokio channels, for a filter in the same
//! process.

use std::task::{Context, Poll};

use rehydrate_driver::abi::Ioctl;
use rehydrate_driver::Status;
use tokio::sync::{mpsc, oneshot};

use super::{LinkError, Transport};

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

impl Transport for ChannelLink {
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
}
