//! What the shell drives on a volume it started on: the restoring [`Filter`], or the
//! [`Refused`] one when the volume is not the one the restore writes ([`super::start`]).
//! The shell calls these callbacks exactly as it would the filter's, so choosing between
//! the two is not the shell's business either.
//!
//! Cost: one more predictable branch per request (the variant) before the filter's own
//! pass-through branch.

use crate::abi::Refusal;
use crate::engine::LowerId;
use crate::framework::Framework;
use crate::meta::MetaStore;
use crate::status::Status;

use super::{Filter, Refused};

/// The filter of one volume, restoring it or staying out of its way.
// One per volume, kept in place: boxing the filter would add a pointer chase to every
// request for the sake of the rare refused volume.
#[allow(clippy::large_enum_variant)]
pub enum Volume<F: Framework> {
    /// The volume the restore writes.
    Restoring(Filter<F>),
    /// Another volume: its I/O goes down untouched, the service is refused.
    Refused(Refused),
}

impl<F: Framework> Volume<F> {
    /// Why the volume was refused, if it was.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Volume::Restoring(_) => None,
            Volume::Refused(r) => Some(r.refusal()),
        }
    }

    /// The restoring filter, if this is the restore's volume.
    pub fn filter(&self) -> Option<&Filter<F>> {
        match self {
            Volume::Restoring(f) => Some(f),
            Volume::Refused(_) => None,
        }
    }

    /// [`Filter::on_io`].
    #[inline]
    pub fn on_io(&mut self, fw: &mut F, request: F::Request) {
        match self {
            Volume::Restoring(f) => f.on_io(fw, request),
            Volume::Refused(r) => r.on_io(fw, request),
        }
    }

    /// [`Filter::on_control`].
    pub fn on_control(&mut self, fw: &mut F, request: F::Request) {
        match self {
            Volume::Restoring(f) => f.on_control(fw, request),
            Volume::Refused(r) => r.on_control(fw, request),
        }
    }

    /// [`Filter::on_lower_complete`]. A refused volume sends nothing with a completion.
    pub fn on_lower_complete(&mut self, fw: &mut F, lower: LowerId, status: Status) {
        match self {
            Volume::Restoring(f) => f.on_lower_complete(fw, lower, status),
            Volume::Refused(_) => debug_assert!(false, "lower completion on a refused volume"),
        }
    }

    /// [`Filter::on_remove`]. A refused volume holds nothing.
    pub fn on_remove(&mut self, fw: &mut F) {
        if let Volume::Restoring(f) = self {
            f.on_remove(fw);
        }
    }

    /// [`Filter::on_cancel`]. A refused volume marks nothing cancelable, so no cancel
    /// callback can come; were one to, the request is completed rather than lost.
    pub fn on_cancel(&mut self, fw: &mut F, request: F::Request) {
        match self {
            Volume::Restoring(f) => f.on_cancel(fw, request),
            Volume::Refused(_) => {
                debug_assert!(false, "cancel callback on a refused volume");
                fw.complete(request, Status::CANCELLED, 0);
            }
        }
    }

    /// [`Filter::on_timer`]. A refused volume starts no timer.
    pub fn on_timer(&mut self, fw: &mut F) {
        if let Volume::Restoring(f) = self {
            f.on_timer(fw);
        }
    }

    /// [`Filter::on_commit_work`]. A refused volume has no metadata to commit.
    pub fn on_commit_work<S: MetaStore + ?Sized>(
        &mut self,
        fw: &mut F,
        commit: u64,
        store: &mut S,
    ) {
        if let Volume::Restoring(f) = self {
            f.on_commit_work(fw, commit, store);
        }
    }
}
