//! The link between the two sites: one ordered byte stream per session, as TCP under
//! the replication protocol's framing gives.
//!
//! A frame is due after a latency plus its size over the bandwidth, never before the
//! frame sent before it in the same direction: delay reorders nothing inside a session.
//! Loss is a cut: a frame may be lost (the receiver sees the gap and the session ends),
//! or the connection breaks and every frame in flight is gone. A new connection is a
//! new session, which resumes from what the DR acknowledged durable.

use std::collections::VecDeque;

use rehydrate_driver::dr::wire::Message;

/// Which way a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Primary to DR: stream items.
    ToDr,
    /// DR to primary: acknowledgements and fetches.
    ToPrimary,
}

/// Frames in flight in one direction.
#[derive(Debug, Default)]
struct Lane {
    /// (due time, kind, payload), due times non-decreasing.
    frames: VecDeque<(u64, u8, Vec<u8>)>,
    /// Due time of the last frame sent in this session.
    last_due_ns: u64,
}

/// Link tunables, drawn per seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkConfig {
    /// Typical one-way latency.
    pub(crate) latency_ns: u64,
    /// Bytes per microsecond.
    pub(crate) bytes_per_us: u64,
}

/// The connection between the sites.
#[derive(Debug)]
pub(crate) struct SiteLink {
    config: LinkConfig,
    up: bool,
    session: u64,
    to_dr: Lane,
    to_primary: Lane,
}

impl SiteLink {
    pub(crate) fn new(config: LinkConfig) -> SiteLink {
        assert!(config.bytes_per_us > 0);
        SiteLink {
            config,
            up: false,
            session: 0,
            to_dr: Lane::default(),
            to_primary: Lane::default(),
        }
    }

    /// True while a session's connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// The current (or last) session number.
    pub(crate) fn session(&self) -> u64 {
        self.session
    }

    /// True when no frame is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.to_dr.frames.is_empty() && self.to_primary.frames.is_empty()
    }

    fn lane(&mut self, dir: Dir) -> &mut Lane {
        match dir {
            Dir::ToDr => &mut self.to_dr,
            Dir::ToPrimary => &mut self.to_primary,
        }
    }

    /// A new connection: a new session number, nothing in flight.
    pub(crate) fn connect(&mut self, now_ns: u64) -> u64 {
        assert!(!self.up, "connect while connected");
        assert!(self.is_empty(), "frames survived a cut");
        self.up = true;
        self.session += 1;
        self.to_dr.last_due_ns = now_ns;
        self.to_primary.last_due_ns = now_ns;
        self.session
    }

    /// The connection breaks: every frame in flight is lost.
    pub(crate) fn cut(&mut self) {
        self.up = false;
        self.to_dr.frames.clear();
        self.to_primary.frames.clear();
    }

    /// Sends `m`, `extra_ns` later than the link alone would deliver it; returns its due
    /// time (the caller schedules the delivery then).
    pub(crate) fn send(&mut self, dir: Dir, m: &Message, now_ns: u64, extra_ns: u64) -> u64 {
        assert!(self.up, "send on a cut link");
        let mut payload = Vec::new();
        m.encode_payload(&mut payload);
        let wire_ns = (payload.len() as u64 + 16) * 1_000 / self.config.bytes_per_us;
        let latency_ns = self.config.latency_ns;
        let lane = self.lane(dir);
        let due = (now_ns + latency_ns + wire_ns + extra_ns).max(lane.last_due_ns);
        lane.last_due_ns = due;
        lane.frames.push_back((due, m.kind(), payload));
        due
    }

    /// Loses the frame at `index` of the frames in flight towards the DR (the DR's
    /// sequence check sees the gap); false when there is none.
    pub(crate) fn lose_to_dr(&mut self, index: usize) -> bool {
        self.to_dr.frames.remove(index).is_some()
    }

    /// Frames in flight towards the DR.
    pub(crate) fn in_flight_to_dr(&self) -> usize {
        self.to_dr.frames.len()
    }

    /// The frame due first in `dir`, if it is due at `now_ns`, decoded.
    pub(crate) fn take_due(&mut self, dir: Dir, now_ns: u64) -> Option<Message> {
        let lane = self.lane(dir);
        if lane.frames.front().is_none_or(|f| f.0 > now_ns) {
            return None;
        }
        let (_, kind, payload) = lane.frames.pop_front().expect("a frame");
        Some(Message::decode(kind, &payload).expect("a frame this link encoded"))
    }

    /// Puts back a frame the receiver had no room for, due again at `due_ns`.
    pub(crate) fn put_back(&mut self, dir: Dir, m: &Message, due_ns: u64) {
        let mut payload = Vec::new();
        m.encode_payload(&mut payload);
        let lane = self.lane(dir);
        lane.frames.push_front((due_ns, m.kind(), payload));
        for f in lane.frames.iter_mut() {
            f.0 = f.0.max(due_ns);
        }
        lane.last_due_ns = lane.last_due_ns.max(due_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_their_order_and_a_cut_loses_them() {
        let mut l = SiteLink::new(LinkConfig {
            latency_ns: 1_000,
            bytes_per_us: 100,
        });
        assert_eq!(l.connect(0), 1);
        let slow = l.send(Dir::ToDr, &Message::Fetch { region: 1 }, 0, 50_000);
        let fast = l.send(Dir::ToDr, &Message::Fetch { region: 2 }, 10, 0);
        assert!(fast >= slow, "a later frame never overtakes");
        assert_eq!(l.take_due(Dir::ToDr, slow - 1), None);
        assert_eq!(
            l.take_due(Dir::ToDr, fast),
            Some(Message::Fetch { region: 1 })
        );
        assert_eq!(
            l.take_due(Dir::ToDr, fast),
            Some(Message::Fetch { region: 2 })
        );
        l.send(Dir::ToPrimary, &Message::Ack { durable_seq: 3 }, 0, 0);
        l.cut();
        assert!(l.is_empty() && !l.is_up());
        assert_eq!(l.connect(5), 2);
    }
}
