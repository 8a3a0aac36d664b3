//! A recording framework for the filter's unit tests: every call the filter makes is
//! noted in `did`, and the few rules KMDF enforces that the filter could break
//! (completing a request still marked cancelable, marking twice) panic.

extern crate std;

use std::collections::VecDeque;
use std::vec::Vec;

use crate::engine::LowerId;
use crate::framework::{Framework, RequestParameters, WriteSource};
use crate::status::Status;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Did {
    Lower(u32, LowerId),
    Forgot(u32),
    WroteLower(LowerId, u64, u64, WriteSource<u32>),
    FlushedLower(LowerId),
    Completed(u32, Status, usize),
    Parked(u32),
    Commit(u64),
    Marked(u32),
    Unmarked(u32),
}

#[derive(Default)]
pub(super) struct Fw {
    pub(super) params: std::collections::BTreeMap<u32, RequestParameters>,
    pub(super) input: std::collections::BTreeMap<u32, Vec<u8>>,
    pub(super) output: std::collections::BTreeMap<u32, Vec<u8>>,
    pub(super) parked: VecDeque<u32>,
    pub(super) did: Vec<Did>,
    pub(super) now_ns: u64,
    /// Requests marked cancelable.
    pub(super) cancelable: std::collections::BTreeSet<u32>,
    /// Requests the I/O manager cancelled (their cancel routine is taken).
    pub(super) cancelled: std::collections::BTreeSet<u32>,
}

impl Framework for Fw {
    type Request = u32;
    fn parameters(&self, r: u32) -> RequestParameters {
        self.params[&r]
    }
    fn input_buffer(&self, r: u32, min_len: usize) -> Result<&[u8], Status> {
        match self.input.get(&r) {
            Some(b) if b.len() >= min_len => Ok(b),
            _ => Err(Status::BUFFER_TOO_SMALL),
        }
    }
    fn output_buffer(&mut self, r: u32, min_len: usize) -> Result<&mut [u8], Status> {
        match self.output.get_mut(&r) {
            Some(b) if b.len() >= min_len => Ok(b),
            _ => Err(Status::BUFFER_TOO_SMALL),
        }
    }
    fn send_to_lower(&mut self, r: u32, lower: LowerId) -> Result<(), Status> {
        self.did.push(Did::Lower(r, lower));
        Ok(())
    }
    fn send_and_forget(&mut self, r: u32) -> Result<(), Status> {
        self.did.push(Did::Forgot(r));
        Ok(())
    }
    fn write_lower(
        &mut self,
        lower: LowerId,
        offset: u64,
        len: u64,
        source: WriteSource<u32>,
    ) -> Result<(), Status> {
        self.did.push(Did::WroteLower(lower, offset, len, source));
        Ok(())
    }
    fn flush_lower(&mut self, lower: LowerId) -> Result<(), Status> {
        self.did.push(Did::FlushedLower(lower));
        Ok(())
    }
    fn complete(&mut self, r: u32, status: Status, information: usize) {
        assert!(
            !self.cancelable.contains(&r) || self.cancelled.contains(&r),
            "request {r} completed while still marked cancelable"
        );
        self.did.push(Did::Completed(r, status, information));
    }
    fn park(&mut self, r: u32) -> Result<(), Status> {
        self.did.push(Did::Parked(r));
        self.parked.push_back(r);
        Ok(())
    }
    fn take_parked(&mut self) -> Option<u32> {
        self.parked.pop_front()
    }
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
    fn start_timer(&mut self, _due_ns: u64) {}
    fn queue_commit_work(&mut self, commit: u64) {
        self.did.push(Did::Commit(commit));
    }
    fn mark_cancelable(&mut self, r: u32) -> Result<(), Status> {
        assert!(self.cancelable.insert(r), "request {r} marked twice");
        if self.cancelled.contains(&r) {
            self.cancelable.remove(&r);
            return Err(Status::CANCELLED);
        }
        self.did.push(Did::Marked(r));
        Ok(())
    }
    fn unmark_cancelable(&mut self, r: u32) -> Result<(), Status> {
        assert!(
            self.cancelable.remove(&r),
            "request {r} unmarked but not marked"
        );
        if self.cancelled.contains(&r) {
            return Err(Status::CANCELLED);
        }
        self.did.push(Did::Unmarked(r));
        Ok(())
    }
}
