//! Copy-on-read disaster recovery (technique T5): the two sans-IO cores that keep a DR
//! volume readable before its initial sync ends.
//!
//! * [`primary::Primary`] — the sender mode of the primary's engine. It keeps the sent
//!   map S and feeds **one ordered stream** to the DR site: region data, replicated
//!   writes and flushes, each with a sequence number.
//! * [`secondary::Secondary`] — the DR site's applier: it applies the stream in order,
//!   serves reads of regions it holds, fetches (with priority over the sync) the regions
//!   a read waits for, and trusts nothing it holds after a crash until the primary said
//!   which regions changed.
//!
//! # Why the stream order alone makes the DR right
//! * A region is marked in S **before** its read for sending is admitted to the
//!   [`gate::Gate`]; the gate starts that read after every write admitted before it and
//!   every later write after it. A write is decided (stream it or keep it local) when it
//!   is admitted: a write to an unsent region is inside the region's data, a write to a
//!   sent region is streamed at its local completion and so comes after the region data.
//! * The DR applies items through its own gate in stream order; a replicated write is
//!   never dropped (it may land on a region whose data is still being written: the gate
//!   orders them). A read enters the gate only when all its regions are present, so it
//!   sees exactly the items issued before it: one primary sequence point, never older
//!   than the last one served.
//!
//! # Durability
//! * The DR acknowledges `durable_seq` after it flushed its volume and committed its
//!   present map (two phases).
//! * The primary's **durable** sent map is committed after flushing its own volume and
//!   holds a region only when its data and every write to it were acknowledged durable;
//!   a write to a region whose durable mark is set waits until a commit cleared the mark.
//!   So a durable mark means the DR durably holds that region's current data.
//! * Each session starts from the durable sent map: every other region is invalidated at
//!   the DR (first items of the session, ended by `Ready`) and sent again. That covers a
//!   primary crash (written-but-unacknowledged regions), a DR crash (what the DR lost)
//!   and a cut link. The DR bumps its metadata generation when it drops regions and
//!   serves nothing it held before a crash until `Ready`.

pub mod bits;
pub mod gate;
pub mod primary;
pub mod secondary;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wire;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use crate::geometry::RangeError;

/// What ties a DR volume to one primary volume; a session with any other is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The primary site's identity.
    pub primary_id: [u8; 16],
    /// The replicated volume's identity.
    pub volume_id: [u8; 16],
    /// The volume's size.
    pub volume_size_bytes: u64,
    /// The region size both sites use.
    pub region_size_bytes: u32,
}

/// Everything either DR core refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrError {
    /// A request outside the volume or not sector-aligned.
    #[error("request out of range: {0}")]
    Range(#[from] RangeError),
    /// A region index past the volume's end.
    #[error("region {0} is past the volume's end")]
    BadRegion(u64),
    /// A stream item arrived out of order (a lost or repeated message): the session ends.
    #[error("stream item {got} arrived where {expected} was expected")]
    OutOfOrder {
        /// The next sequence the DR expected.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// A message that only the other side sends.
    #[error("unexpected DR message for this side")]
    UnexpectedMessage,
    /// An item whose range or length does not fit the volume.
    #[error("stream item {seq} does not fit the volume")]
    BadItem {
        /// Its sequence.
        seq: u64,
    },
    /// The DR's inbox is over its bound (the shell must read only while it has room).
    #[error("DR inbox over its bound")]
    InboxFull,
    /// Replicated writes piled up past the stream's bound: the session ends and the next
    /// one sends what was not acknowledged again (writes never wait for the DR).
    #[error("replication stream over its bound of {0} bytes")]
    StreamOverflow(u64),
    /// An acknowledgement of items never sent, or going backwards.
    #[error("DR acknowledged {acked}, but {sent} items were sent (previous ack {previous})")]
    BadAck {
        /// What the DR acknowledged.
        acked: u64,
        /// Items sent in this session.
        sent: u64,
        /// The previous acknowledgement.
        previous: u64,
    },
    /// The call needs a session and there is none.
    #[error("no DR session")]
    NoSession,
    /// The peer is a different primary than the one this DR volume replicates.
    #[error("refused: this DR volume replicates another primary")]
    WrongPrimary,
    /// The peer's volume is not the one this DR volume replicates.
    #[error("refused: this DR volume replicates another volume")]
    WrongVolume,
    /// The peer's volume size or region size differs.
    #[error("refused: volume or region size differs from the DR volume's")]
    GeometryMismatch,
    /// A local write at the DR failed: the session ends and the region is fetched again.
    #[error("local write at offset {offset} failed")]
    LocalWriteFailed {
        /// Its offset.
        offset: u64,
    },
    /// Promotion refused: regions are missing.
    #[error("refused: {missing} regions are not at the DR yet (force to promote anyway)")]
    Incomplete {
        /// Regions missing.
        missing: u64,
    },
    /// The DR volume was promoted: it takes no more stream.
    #[error("the DR volume was promoted")]
    Promoted,
    /// A DR volume takes no client writes before promotion.
    #[error("the DR volume is read-only until promoted")]
    ReadOnly,
}

/// Data of a local write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalData {
    /// These bytes.
    Bytes(alloc::vec::Vec<u8>),
    /// Zeroes, this many bytes.
    Zeroes(u64),
}

impl LocalData {
    /// Byte length.
    pub fn len(&self) -> u64 {
        match self {
            LocalData::Bytes(b) => b.len() as u64,
            LocalData::Zeroes(n) => *n,
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
