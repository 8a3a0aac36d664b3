//! The faults a run may inject, by name (`--faults torn,media,...`).
//!
//! Every fault is drawn from the run's one RNG; this set only says which kinds may be
//! drawn at all. With no faults the run still has random latencies and scheduling.

use std::fmt;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The data device has a volatile write cache (writes are lost on power loss unless
    /// flushed or FUA).
    Cache,
    /// A multi-sector write caught by power loss may keep any subset of its sectors.
    Torn,
    /// Media errors on data-device reads and writes, and on metadata-store I/O.
    Media,
    /// Power loss at a random step, then reboot.
    PowerLoss,
    /// Replies from the backup are dropped.
    LinkDrop,
    /// Replies from the backup carry corrupt data (the service's checksum must catch it).
    LinkCorrupt,
    /// Replies are delayed enough to come back out of order.
    LinkReorder,
    /// The connection to the backup breaks; fetches in flight fail.
    LinkDisconnect,
    /// The backup is unreachable for longer than the fetch deadline.
    Outage,
    /// The service is killed while requests are held, and restarted.
    ServiceKill,
    /// The file system cancels requests it has in flight.
    Cancel,
}

/// Every fault, in the order `--help` lists them.
pub const ALL: [Fault; 11] = [
    Fault::Cache,
    Fault::Torn,
    Fault::Media,
    Fault::PowerLoss,
    Fault::LinkDrop,
    Fault::LinkCorrupt,
    Fault::LinkReorder,
    Fault::LinkDisconnect,
    Fault::Outage,
    Fault::ServiceKill,
    Fault::Cancel,
];

impl Fault {
    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Fault::Cache => "cache",
            Fault::Torn => "torn",
            Fault::Media => "media",
            Fault::PowerLoss => "power-loss",
            Fault::LinkDrop => "link-drop",
            Fault::LinkCorrupt => "link-corrupt",
            Fault::LinkReorder => "link-reorder",
            Fault::LinkDisconnect => "link-disconnect",
            Fault::Outage => "outage",
            Fault::ServiceKill => "service-kill",
            Fault::Cancel => "cancel",
        }
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A set of faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults(u32);

/// Why a fault list does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault {0:?} (known: all, none, {names})", names = names())]
pub struct FaultsError(pub String);

fn names() -> String {
    ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

impl Faults {
    /// No faults.
    pub const NONE: Faults = Faults(0);

    /// Every fault.
    pub fn all() -> Faults {
        ALL.iter().fold(Faults::NONE, |s, &f| s.with(f))
    }

    /// This set plus `f`.
    pub const fn with(self, f: Fault) -> Faults {
        Faults(self.0 | f.bit())
    }

    /// True when `f` may be injected.
    #[inline]
    pub const fn has(self, f: Fault) -> bool {
        self.0 & f.bit() != 0
    }

    /// Parses `all`, `none`, or a comma-separated list of names. `torn` implies `cache`
    /// (only cached writes can tear), `power-loss` alone crashes a cache-less device.
    pub fn parse(list: &str) -> Result<Faults, FaultsError> {
        let mut set = Faults::NONE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            set = match name {
                "all" => Faults::all(),
                "none" => set,
                _ => match ALL.iter().find(|f| f.name() == name) {
                    Some(&f) => set.with(f),
                    None => return Err(FaultsError(name.to_string())),
                },
            };
        }
        if set.has(Fault::Torn) {
            set = set.with(Fault::Cache);
        }
        Ok(set)
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Faults::all() {
            return f.write_str("all");
        }
        let names: Vec<&str> = ALL
            .iter()
            .filter(|x| self.has(**x))
            .map(|x| x.name())
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print_back() {
        assert_eq!(Faults::parse("all").unwrap(), Faults::all());
        assert_eq!(Faults::parse("none").unwrap(), Faults::NONE);
        let f = Faults::parse("media, link-drop").unwrap();
        assert!(f.has(Fault::Media) && f.has(Fault::LinkDrop) && !f.has(Fault::Outage));
        assert_eq!(f.to_string(), "media,link-drop");
        assert_eq!(
            Faults::parse(&Faults::all().to_string()).unwrap(),
            Faults::all()
        );
        assert!(Faults::parse("torn").unwrap().has(Fault::Cache));
        let err = Faults::parse("media,bogus").unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }
}
