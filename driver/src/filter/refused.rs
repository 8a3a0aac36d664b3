//! The filter on a volume it refused at start ([`super::start`]): the volume is not the
//! one the restore writes, so none of the restore may reach it.
//!
//! What is safe on such a volume: it is somebody else's, with its own data, so every
//! request of its own goes down untouched (the pass-through path: one send-and-forget,
//! nothing held, nothing marked, no metadata written). The service, which would bring
//! backup data, is refused: every control request but `GET_STATUS` completes with
//! `STATUS_WRONG_VOLUME`, and `GET_STATUS` says detached and why
//! ([`StatusCounters::refusal`]), so `rehydrate attach` can say it in one line.

use crate::abi::{Ioctl, Refusal, StatusCounters};
use crate::framework::{Framework, RequestParameters};
use crate::status::Status;

/// A refused volume's filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    refusal: Refusal,
    passthrough_requests: u64,
    service_requests_refused: u64,
}

impl Refused {
    /// The filter of a volume refused for `refusal`.
    pub fn new(refusal: Refusal) -> Refused {
        Refused {
            refusal,
            passthrough_requests: 0,
            service_requests_refused: 0,
        }
    }

    /// Why.
    pub fn refusal(&self) -> Refusal {
        self.refusal
    }

    /// Requests of the volume sent down untouched so far.
    pub fn passthrough_requests(&self) -> u64 {
        self.passthrough_requests
    }

    /// Service requests refused so far.
    pub fn service_requests_refused(&self) -> u64 {
        self.service_requests_refused
    }

    /// A request of the volume: down, untouched.
    pub fn on_io<F: Framework>(&mut self, fw: &mut F, request: F::Request) {
        self.passthrough_requests += 1;
        if let Err(status) = fw.send_and_forget(request) {
            fw.complete(request, status, 0);
        }
    }

    /// What `GET_STATUS` answers: detached, nothing to restore, and why.
    pub fn status_counters(&self) -> StatusCounters {
        StatusCounters::detached(0, Some(self.refusal))
    }

    /// A request from the service: `GET_STATUS` is answered, everything else refused.
    pub fn on_control<F: Framework>(&mut self, fw: &mut F, request: F::Request) {
        let ioctl = match fw.parameters(request) {
            RequestParameters::DeviceControl { ioctl, .. } => Ioctl::from_code(ioctl),
            _ => None,
        };
        if ioctl != Some(Ioctl::GetStatus) {
            self.service_requests_refused += 1;
            fw.complete(request, Status::WRONG_VOLUME, 0);
            return;
        }
        super::answer_counters(fw, request, &self.status_counters());
    }
}
