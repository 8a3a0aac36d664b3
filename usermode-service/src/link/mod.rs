//! The driver link: how a service loop talks to the driver filter.
//!
//! [`DriverLink`] is the service's view: one async method per control-device IOCTL. Every
//! message crosses as the bytes `rehydrate_driver::abi` encodes, the bytes a
//! `DeviceIoControl` on the filter's control device would carry, and every reply is
//! decoded with the ABI's decoders, so a bad reply is a typed [`LinkError`], never a
//! panic (rule 7).
//!
//! Every transport implements [`Transport`] (one IOCTL exchange: bytes in, status and
//! bytes out) and gets [`DriverLink`] from it, so the messages are encoded and decoded
//! in one place (`messages.rs`). [`ChannelLink`] is the in-process transport (the simulator, and any service loop
//! that runs the filter in the same process): each call becomes one [`LinkRequest`] —
//! IOCTL, input bytes, output buffer size, and a oneshot for the completion — on a
//! bounded channel. The driver side ([`LinkRequests`]) hands each request to the filter
//! as a control-device request and completes it with the filter's status and output
//! bytes. `GET_MISSING` is the inverted call: the driver side keeps the request parked
//! until it has ranges, so [`DriverLink::get_missing`] resolves only then. A service
//! keeps a few of them outstanding (the link is `Clone`; each clone is one sender).
//!
//! Cancellation: dropping a call's future drops its reply receiver. The driver side sees
//! that through [`LinkRequest::is_cancelled`] (check it before parking or completing
//! `GET_MISSING`) and through [`LinkRequest::complete`] returning `false`, the channel's
//! counterpart of an IRP cancelled before completion: ranges it would have carried must
//! stay queued in the driver.

mod channel;
mod messages;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

use std::future::Future;

use rehydrate_driver::abi::{
    AbiError, Attach, BitmapPage, BitmapQuery, ControlCommand, FetchFailed, Ioctl, MissingRange,
    StatusCounters,
};
use rehydrate_driver::Status;

pub use channel::{channel, ChannelLink, LinkReply, LinkRequest, LinkRequests, LINK_QUEUE_MAX};
pub use messages::Transport;

/// The service's side of the driver link. Every method carries one IOCTL.
///
/// The futures are `Send` so a service can run calls from several tokio tasks (pended
/// `GET_MISSING`s next to hydrates in flight).
pub trait DriverLink {
    /// `ATTACH`: which restore this service drives. The driver refuses a volume size,
    /// region size or backup other than its own.
    fn attach(&self, attach: Attach) -> impl Future<Output = Result<(), LinkError>> + Send;

    /// `CONTROL`: start, pause, resume or detach.
    fn control(
        &self,
        command: ControlCommand,
    ) -> impl Future<Output = Result<(), LinkError>> + Send;

    /// `GET_MISSING`, the inverted call: resolves when the driver has ranges it wants.
    /// After a detach it fails with [`LinkError::Refused`] and `DEVICE_NOT_READY`.
    fn get_missing(&self) -> impl Future<Output = Result<Vec<MissingRange>, LinkError>> + Send;

    /// `HYDRATE`: data for `len` bytes at `offset` (`payload`, exactly `len` bytes), or
    /// with `zero` the news that the range is zeros (`payload` empty). Resolves when the
    /// driver is done with it: `Ok(SUCCESS)` when written or dropped as stale (rule 4),
    /// `Ok(error)` when the driver could not write it (the hydrator retries or reports).
    fn hydrate(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        payload: &[u8],
    ) -> impl Future<Output = Result<Status, LinkError>> + Send;

    /// `FETCH_FAILED`: the range cannot be had; the driver fails what waits on it.
    fn fetch_failed(
        &self,
        failed: FetchFailed,
    ) -> impl Future<Output = Result<(), LinkError>> + Send;

    /// `QUERY_BITMAP`: part of the region map.
    fn query_bitmap(
        &self,
        query: BitmapQuery,
    ) -> impl Future<Output = Result<BitmapWords, LinkError>> + Send;

    /// `GET_STATUS`: the driver's counters.
    fn get_status(&self) -> impl Future<Output = Result<StatusCounters, LinkError>> + Send;
}

/// A decoded `QUERY_BITMAP` answer that owns its words (a [`BitmapPage`] borrows from
/// the reply buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapWords {
    /// Index of the first word in the map.
    pub first_word: u64,
    /// Regions in the volume.
    pub region_count: u64,
    /// Regions restored in the whole map when the page was taken.
    pub restored_count: u64,
    /// The words: bit `b` of word `i` is region `64 * (first_word + i) + b`.
    pub words: Vec<u64>,
}

impl BitmapWords {
    /// Copies a decoded page.
    pub fn from_page(page: &BitmapPage<'_>) -> BitmapWords {
        BitmapWords {
            first_word: page.first_word,
            region_count: page.region_count,
            restored_count: page.restored_count,
            words: page.words().collect(),
        }
    }

    /// The page again, checked as the decoder checks it (for the hydrator's
    /// `Input::BitmapPage`).
    pub fn page(&self) -> Result<BitmapPage<'_>, AbiError> {
        BitmapPage::new(
            self.first_word,
            self.region_count,
            self.restored_count,
            &self.words,
        )
    }
}

/// Everything a call on the link can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The message could not be encoded (it breaks an ABI rule); nothing was sent.
    #[error("{ioctl:?}: message not sent: {source}")]
    Encode {
        /// The call.
        ioctl: Ioctl,
        /// The rule it breaks.
        source: AbiError,
    },
    /// The driver side is gone (its end dropped, or it dropped the request unanswered).
    #[error("{ioctl:?}: the driver link is closed")]
    Closed {
        /// The call.
        ioctl: Ioctl,
    },
    /// The driver completed the request with an error status.
    #[error("{ioctl:?}: the driver refused with status {:#010x}", status.0)]
    Refused {
        /// The call.
        ioctl: Ioctl,
        /// The completion status.
        status: Status,
    },
    /// The operating system refused the call before the driver saw it (Windows
    /// `DeviceIoControl` failing at once: a closed handle, no memory, ...).
    #[error("{ioctl:?}: the call did not reach the driver: {source}")]
    Os {
        /// The call.
        ioctl: Ioctl,
        /// Why.
        source: std::io::Error,
    },
    /// The driver's reply does not decode.
    #[error("{ioctl:?}: bad reply from the driver: {source}")]
    Decode {
        /// The call.
        ioctl: Ioctl,
        /// What is wrong with it.
        source: AbiError,
    },
    /// The driver returned more bytes than the output buffer the call offered, or bytes
    /// for a call that has no output.
    #[error("{ioctl:?}: the driver returned {got} bytes into a {max}-byte output buffer")]
    OutputOverrun {
        /// The call.
        ioctl: Ioctl,
        /// Bytes returned.
        got: usize,
        /// The output buffer's size.
        max: usize,
    },
}

impl LinkError {
    /// True when the driver has no service attached any more (after a detach, or before
    /// an attach), so pended `GET_MISSING`s come back with `DEVICE_NOT_READY`.
    pub fn is_detached(&self) -> bool {
        matches!(
            self,
            LinkError::Refused {
                status: Status::DEVICE_NOT_READY,
                ..
            }
        )
    }
}
