//! The I/O a client request turns into on the target: performed for a `Forward` of the
//! engine, or directly once the engine is a pass-through. [`perform`] may block
//! (positioned reads and writes, `fdatasync`): callers run it on tokio's blocking pool,
//! after [`perform_now`] found it cannot be done without waiting.

use std::sync::Arc;

use bytes::Bytes;

use super::super::target::Target;
use rehydrate_driver::geometry::SECTOR_SIZE_BYTES;

/// A client request.
#[derive(Clone, Debug)]
pub enum Op {
    /// Read `len` bytes.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Write `data`; with `fua`, durable before it completes.
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
        /// Force unit access.
        fua: bool,
    },
    /// Make a range read as zeros (NBD `WRITE_ZEROES`).
    Zeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Force unit access.
        fua: bool,
    },
    /// The range is no longer needed (NBD `TRIM`); it reads as zeros afterwards here.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Make every completed write durable.
    Flush,
}

impl Op {
    /// The byte range the request covers, as the client sent it.
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            Op::Read { offset, len }
            | Op::Zeroes { offset, len, .. }
            | Op::Trim { offset, len } => Some((*offset, *len)),
            Op::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            Op::Flush => None,
        }
    }

    /// The range a write, write-zeroes or trim changes; `None` for reads and flushes.
    pub fn written(&self) -> Option<(u64, u64)> {
        match self {
            Op::Write { .. } | Op::Zeroes { .. } | Op::Trim { .. } => self.range(),
            Op::Read { .. } | Op::Flush => None,
        }
    }

    /// The range in whole sectors, as the engine takes it: an unaligned end (only at the
    /// end of an export of odd size) is rounded up to the padded last sector.
    pub fn sector_range(&self) -> Option<(u64, u64)> {
        self.range()
            .map(|(offset, len)| (offset, len.div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES))
    }
}

/// Performs `op` on `target` if that needs no waiting (a read of cached data, a plain
/// write the file system takes without blocking); `None`: it would block (or is a
/// flush, a FUA write, zeroes or a trim, which always may), so run [`perform`] on a
/// thread that may block. Saves a hop to the blocking pool per request, which is most
/// of a 4 KiB request's cost.
pub fn perform_now(target: &Target, op: &Op) -> Option<std::io::Result<Bytes>> {
    match op {
        Op::Read { offset, len } => {
            let mut buf = vec![0u8; *len as usize];
            match target.read_at_now(*offset, &mut buf) {
                Ok(true) => Some(Ok(Bytes::from(buf))),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            }
        }
        Op::Write {
            offset,
            data,
            fua: false,
        } => match target.write_at_now(*offset, data) {
            Ok(true) => Some(Ok(Bytes::new())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        },
        _ => None,
    }
}

/// Performs `op` on `target` at once when that needs no waiting ([`perform_now`]), else
/// on a thread that may block ([`perform`]); a read returns its bytes.
pub async fn perform_soon(target: &Arc<Target>, op: Op) -> std::io::Result<Bytes> {
    if let Some(done) = perform_now(target, &op) {
        return done;
    }
    let target = Arc::clone(target);
    tokio::task::spawn_blocking(move || perform(&target, &op))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Performs `op` on `target`; a read returns its bytes.
pub fn perform(target: &Target, op: &Op) -> std::io::Result<Bytes> {
    match op {
        Op::Read { offset, len } => {
            let mut buf = vec![0u8; *len as usize];
            target.read_at(*offset, &mut buf)?;
            return Ok(Bytes::from(buf));
        }
        Op::Write { offset, data, fua } => {
            target.write_at(*offset, data)?;
            if *fua {
                target.flush()?;
            }
        }
        Op::Zeroes { offset, len, fua } => {
            target.zero(*offset, *len)?;
            if *fua {
                target.flush()?;
            }
        }
        Op::Trim { offset, len } => target.zero(*offset, *len)?,
        Op::Flush => target.flush()?,
    }
    Ok(Bytes::new())
}
