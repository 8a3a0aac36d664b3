//! The messages of the driver link: every [`DriverLink`] call encoded with the ABI,
//! carried by a [`Transport`], and its reply decoded. Shared by every transport (the
//! in-process channel, Windows `DeviceIoControl`), so they carry the same bytes.

use std::future::Future;

use rehydrate_driver::abi::{
    AbiError, Attach, BitmapPage, BitmapQuery, Control, ControlCommand, FetchFailed, Hydrate,
    HydrateFlags, Ioctl, MissingBatch, MissingRange, StatusCounters,
};
use rehydrate_driver::Status;

use super::{BitmapWords, DriverLink, LinkError, LinkReply};

/// How one IOCTL exchange travels to the driver and back. Implementations move bytes
/// and nothing else: `input` is one encoded ABI message (or empty), and the reply holds
/// the completion status and at most [`Ioctl::output_max_bytes`] output bytes.
pub trait Transport: Send + Sync {
    /// Sends one request and waits for its completion, whatever its status.
    fn exchange(
        &self,
        ioctl: Ioctl,
        input: Vec<u8>,
    ) -> impl Future<Output = Result<LinkReply, LinkError>> + Send;
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

/// An exchange whose failure status is an error: returns the output bytes.
async fn call<T: Transport>(
    transport: &T,
    ioctl: Ioctl,
    input: Vec<u8>,
) -> Result<Vec<u8>, LinkError> {
    let reply = transport.exchange(ioctl, input).await?;
    if !reply.status.is_success() {
        return Err(LinkError::Refused {
            ioctl,
            status: reply.status,
        });
    }
    Ok(reply.output)
}

impl<T: Transport> DriverLink for T {
    async fn attach(&self, attach: Attach) -> Result<(), LinkError> {
        let input = encode(Ioctl::Attach, attach.encoded_len(), |b| attach.encode(b))?;
        call(self, Ioctl::Attach, input).await.map(drop)
    }

    async fn control(&self, command: ControlCommand) -> Result<(), LinkError> {
        let control = Control { command };
        let input = encode(Ioctl::Control, control.encoded_len(), |b| control.encode(b))?;
        call(self, Ioctl::Control, input).await.map(drop)
    }

    async fn get_missing(&self) -> Result<Vec<MissingRange>, LinkError> {
        let ioctl = Ioctl::GetMissing;
        let output = call(self, ioctl, Vec::new()).await?;
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
        // One copy of the payload: the transport carries owned bytes, exactly the
        // message DeviceIoControl passes (prefix then payload).
        let input = encode(Ioctl::Hydrate, hydrate.encoded_len(), |b| hydrate.encode(b))?;
        let reply = self.exchange(Ioctl::Hydrate, input).await?;
        Ok(reply.status)
    }

    async fn fetch_failed(&self, failed: FetchFailed) -> Result<(), LinkError> {
        let input = encode(Ioctl::FetchFailed, failed.encoded_len(), |b| {
            failed.encode(b)
        })?;
        call(self, Ioctl::FetchFailed, input).await.map(drop)
    }

    async fn query_bitmap(&self, query: BitmapQuery) -> Result<BitmapWords, LinkError> {
        let ioctl = Ioctl::QueryBitmap;
        let input = encode(ioctl, query.encoded_len(), |b| query.encode(b))?;
        let output = call(self, ioctl, input).await?;
        let page =
            BitmapPage::decode(&output).map_err(|source| LinkError::Decode { ioctl, source })?;
        Ok(BitmapWords::from_page(&page))
    }

    async fn get_status(&self) -> Result<StatusCounters, LinkError> {
        let ioctl = Ioctl::GetStatus;
        let output = call(self, ioctl, Vec::new()).await?;
        StatusCounters::decode(&output).map_err(|source| LinkError::Decode { ioctl, source })
    }
}
