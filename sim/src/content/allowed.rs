//! What a run of sectors may hold, independent of where the run lies: a *source* names
//! a value per sector (the backup's data, an application write's, or one constant), and
//! [`Allowed`] is one source, a set of them, or anything somebody wrote.
//!
//! Tags are functions of the sector (`data.rs`), so one source describes a whole run:
//! "write 17 landed here" is the same value for sectors 0..2048, each sector's tag
//! computed when it is compared. Sets of two or more sources (a failed write's "old or
//! new", what a crash may leave) are interned in [`Values`], so `Allowed` is `Copy` and
//! two runs with the same set compare equal and merge.

use std::collections::HashMap;

use crate::data::{app_tag, describe, is_garbage, Backup};

/// Where a sector's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Src {
    /// The backup's data of the sector.
    Backup,
    /// Application write `id`'s data of the sector.
    App(u64),
    /// This value, in every sector (what a read found after a trim).
    Const(u64),
}

/// What a sector may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Allowed {
    /// Exactly this source's value.
    One(Src),
    /// The value of any source of interned set `id` (two or more sources).
    Set(u32),
    /// Anything somebody wrote (after a trim): never garbage.
    Any,
}

/// What a sector may hold, as values: the per-sector form of [`Allowed`], for reports
/// and for comparing with the per-sector reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this.
    Exact(u64),
    /// Any of these (sorted, no duplicates, two or more).
    AnyOf(Box<[u64]>),
    /// Anything somebody wrote (after a trim): never garbage.
    Any,
}

impl Expect {
    /// True when `v` is allowed.
    #[inline]
    pub fn allows(&self, v: u64) -> bool {
        match self {
            Expect::Exact(e) => *e == v,
            Expect::AnyOf(set) => set.contains(&v),
            Expect::Any => !is_garbage(v),
        }
    }

    /// This set plus `more`.
    pub fn union(&self, more: &Expect) -> Expect {
        let mut out: Vec<u64> = match self {
            Expect::Any => return Expect::Any,
            Expect::Exact(v) => vec![*v],
            Expect::AnyOf(s) => s.to_vec(),
        };
        match more {
            Expect::Any => return Expect::Any,
            Expect::Exact(v) => out.push(*v),
            Expect::AnyOf(s) => out.extend_from_slice(s),
        }
        Expect::of_values(out)
    }

    /// The set of `values` (any order, duplicates allowed, at least one).
    pub fn of_values(mut values: Vec<u64>) -> Expect {
        debug_assert!(!values.is_empty());
        values.sort_unstable();
        values.dedup();
        if values.len() == 1 {
            Expect::Exact(values[0])
        } else {
            Expect::AnyOf(values.into_boxed_slice())
        }
    }

    /// A short description, for failure messages.
    pub fn describe(&self) -> String {
        match self {
            Expect::Exact(v) => describe(*v),
            Expect::Any => "anything written".to_string(),
            Expect::AnyOf(set) => {
                let items: Vec<String> = set.iter().map(|&v| describe(v)).collect();
                format!("one of [{}]", items.join(", "))
            }
        }
    }
}

/// Most sources in one interned set. A set grows by one source per write that failed
/// over it, or per write caught in flight by a power loss; far fewer pile up between
/// two reads that settle it.
pub const SET_MAX: usize = 4096;

/// The values sources stand for (the backup), and the interned sets.
#[derive(Clone, Debug)]
pub struct Values {
    backup: Backup,
    /// Interned sets: sorted, no duplicates, two or more sources each.
    sets: Vec<Box<[Src]>>,
    index: HashMap<Box<[Src]>, u32>,
    scratch: Vec<Src>,
}

impl Values {
    /// Sources over `backup`.
    pub fn new(backup: Backup) -> Values {
        Values {
            backup,
            sets: Vec::new(),
            index: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// The backup.
    pub fn backup(&self) -> &Backup {
        &self.backup
    }

    /// The value `src` stands for in sector `s`.
    #[inline]
    pub fn value(&self, src: Src, s: u64) -> u64 {
        match src {
            Src::Backup => self.backup.tag(s),
            Src::App(id) => app_tag(id, s),
            Src::Const(v) => v,
        }
    }

    /// The sources of interned set `id`.
    pub fn set(&self, id: u32) -> &[Src] {
        &self.sets[id as usize]
    }

    /// True when sector `s` may hold `v` under `a`.
    #[inline]
    pub fn allows(&self, a: Allowed, s: u64, v: u64) -> bool {
        match a {
            Allowed::One(src) => self.value(src, s) == v,
            Allowed::Set(id) => self.set(id).iter().any(|&src| self.value(src, s) == v),
            Allowed::Any => !is_garbage(v),
        }
    }

    /// True when every sector under `a` may hold the backup's data.
    pub fn allows_backup(&self, a: Allowed) -> bool {
        match a {
            Allowed::One(src) => src == Src::Backup,
            Allowed::Set(id) => self.set(id).contains(&Src::Backup),
            Allowed::Any => true,
        }
    }

    /// What sector `s` holds under `a` once a read found `v` there (which `a` allows):
    /// the one source giving `v`.
    pub fn settle(&self, a: Allowed, s: u64, v: u64) -> Allowed {
        match a {
            Allowed::One(_) => a,
            Allowed::Set(id) => {
                let src = self
                    .set(id)
                    .iter()
                    .copied()
                    .find(|&src| self.value(src, s) == v)
                    .unwrap_or(Src::Const(v));
                Allowed::One(src)
            }
            Allowed::Any if v == self.backup.tag(s) => Allowed::One(Src::Backup),
            Allowed::Any => Allowed::One(Src::Const(v)),
        }
    }

    /// Either of `a` and `b`.
    pub fn union(&mut self, a: Allowed, b: Allowed) -> Allowed {
        if a == b {
            return a;
        }
        let mut set = std::mem::take(&mut self.scratch);
        set.clear();
        for x in [a, b] {
            match x {
                Allowed::Any => {
                    self.scratch = set;
                    return Allowed::Any;
                }
                Allowed::One(src) => set.push(src),
                Allowed::Set(id) => set.extend_from_slice(&self.sets[id as usize]),
            }
        }
        set.sort_unstable();
        set.dedup();
        let out = self.intern(&set);
        self.scratch = set;
        out
    }

    /// `Allowed` for sorted, distinct `sources` (at least one).
    fn intern(&mut self, sources: &[Src]) -> Allowed {
        debug_assert!(!sources.is_empty());
        debug_assert!(sources.windows(2).all(|w| w[0] < w[1]));
        if let [one] = sources {
            return Allowed::One(*one);
        }
        assert!(
            sources.len() <= SET_MAX,
            "a sector may hold one of {} values: more than the bound of {SET_MAX}",
            sources.len()
        );
        if let Some(&id) = self.index.get(sources) {
            return Allowed::Set(id);
        }
        let id = u32::try_from(self.sets.len()).expect("fewer than 2^32 distinct sets");
        self.sets.push(sources.into());
        self.index.insert(sources.into(), id);
        Allowed::Set(id)
    }

    /// `a` in sector `s`, as values.
    pub fn expect(&self, a: Allowed, s: u64) -> Expect {
        match a {
            Allowed::Any => Expect::Any,
            Allowed::One(src) => Expect::Exact(self.value(src, s)),
            Allowed::Set(id) => {
                Expect::of_values(self.set(id).iter().map(|&src| self.value(src, s)).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::garbage_tag;

    #[test]
    fn sources_stand_for_their_tags_and_sets_are_interned_once() {
        let backup = Backup::new(1, 4096, 0);
        let mut v = Values::new(backup);
        let (b, w) = (Allowed::One(Src::Backup), Allowed::One(Src::App(7)));
        assert!(v.allows(b, 3, backup.tag(3)) && !v.allows(b, 3, app_tag(7, 3)));
        let either = v.union(b, w);
        assert_eq!(v.union(w, b), either, "one set, whatever the order");
        assert_eq!(v.union(either, w), either);
        assert!(v.allows(either, 3, backup.tag(3)) && v.allows(either, 3, app_tag(7, 3)));
        assert_eq!(v.settle(either, 3, app_tag(7, 3)), w);
        assert_eq!(
            v.expect(either, 3),
            Expect::Exact(backup.tag(3)).union(&Expect::Exact(app_tag(7, 3)))
        );
        assert_eq!(v.union(either, Allowed::Any), Allowed::Any);
        assert!(!v.allows(Allowed::Any, 3, garbage_tag(3)));
        assert_eq!(v.settle(Allowed::Any, 3, backup.tag(3)), b);
        assert_eq!(v.settle(Allowed::Any, 3, 0), Allowed::One(Src::Const(0)));
        assert!(v.allows_backup(either) && !v.allows_backup(w));
    }
}
