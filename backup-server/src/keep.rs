//! Keep rules for `forget`, sans-IO: which versions of a volume to keep, and why.
//!
//! The rules are restic's: `last N` keeps the N newest versions; `hourly`, `daily`,
//! `weekly`, `monthly`, `yearly N` keep the newest version in each of the N most recent
//! hours, days, ISO weeks (Monday to Sunday), months, years that have a version (UTC,
//! by the index's creation time). A version is kept if any rule keeps it; the rest are
//! removed. A policy with no rule is refused by the caller: it would remove everything.
//! Any non-empty policy keeps the newest version.

/// How many versions each rule keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The newest N versions.
    pub last: u32,
    /// The newest version of each of the N most recent hours with one.
    pub hourly: u32,
    /// ... days.
    pub daily: u32,
    /// ... ISO weeks.
    pub weekly: u32,
    /// ... months.
    pub monthly: u32,
    /// ... years.
    pub yearly: u32,
}

/// A version as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dated {
    /// Its number.
    pub version: u32,
    /// Its creation time, seconds since the Unix epoch.
    pub created_unix_secs: u64,
}

/// What the rules decided for one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The version.
    pub version: u32,
    /// The rules that keep it (empty: it is removed).
    pub kept_by: Vec<&'static str>,
}

impl Decision {
    /// Whether any rule keeps it.
    pub fn keep(&self) -> bool {
        !self.kept_by.is_empty()
    }
}

/// A rule: its name, how many it keeps, and its time bucket of a creation time.
type Rule = (&'static str, u32, fn(u64) -> u64);

/// The rules with their names and time buckets (`last` is counted per version).
fn rules(policy: &KeepPolicy) -> [Rule; 6] {
    [
        ("last", policy.last, |_| u64::MAX),
        ("hourly", policy.hourly, |t| t / 3600),
        ("daily", policy.daily, |t| t / 86_400),
        // ISO weeks start on Monday; 1970-01-01 was a Thursday, three days after one.
        ("weekly", policy.weekly, |t| (t / 86_400 + 3) / 7),
        ("monthly", policy.monthly, |t| {
            let (y, m, _) = civil_from_days(t / 86_400);
            y * 12 + u64::from(m)
        }),
        ("yearly", policy.yearly, |t| civil_from_days(t / 86_400).0),
    ]
}

impl KeepPolicy {
    /// Whether the policy keeps anything at all.
    pub fn is_empty(&self) -> bool {
        rules(self).iter().all(|(_, n, _)| *n == 0)
    }
}

/// Decide for every version (in any order); decisions come newest first.
pub fn decide(policy: &KeepPolicy, versions: &[Dated]) -> Vec<Decision> {
    let mut newest_first = versions.to_vec();
    // Newest by creation time; equal times by version number (later published = newer).
    newest_first.sort_by_key(|v| std::cmp::Reverse((v.created_unix_secs, v.version)));
    let mut decisions: Vec<Decision> = newest_first
        .iter()
        .map(|v| Decision {
            version: v.version,
            kept_by: Vec::new(),
        })
        .collect();
    for (name, count, bucket) in rules(policy) {
        let mut last_bucket = None;
        let mut kept = 0u32;
        for (v, decision) in newest_first.iter().zip(decisions.iter_mut()) {
            if kept == count {
                break;
            }
            // `last` counts every version; the others the first (newest) of each bucket.
            let b = bucket(v.created_unix_secs);
            if name == "last" || last_bucket != Some(b) {
                last_bucket = Some(b);
                decision.kept_by.push(name);
                kept += 1;
            }
        }
    }
    decisions
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for non-negative days).
pub fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
pub fn rfc3339(unix_secs: u64) -> String {
    let (y, mo, d) = civil_from_days(unix_secs / 86_400);
    let s = unix_secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const DAY: u64 = 86_400;

    fn dated(list: &[(u32, u64)]) -> Vec<Dated> {
        list.iter()
            .map(|&(version, created_unix_secs)| Dated {
                version,
                created_unix_secs,
            })
            .collect()
    }

    fn kept(policy: &KeepPolicy, versions: &[Dated]) -> BTreeSet<u32> {
        decide(policy, versions)
            .into_iter()
            .filter(Decision::keep)
            .map(|d| d.version)
            .collect()
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(rfc3339(1_704_067_200 + 3661), "2024-01-01T01:01:01Z");
        // 2024-01-01 was a Monday: it starts a week, the Sunday before ends one.
        let week = |t: u64| (t / DAY + 3) / 7;
        assert_eq!(week(1_704_067_200), week(1_704_067_200 + 6 * DAY));
        assert_ne!(week(1_704_067_200), week(1_704_067_200 - 1));
    }

    #[test]
    fn last_and_daily() {
        let base = 1_704_067_200; // 2024-01-01T00:00:00Z
                                  // Versions 1..=6: two on day 0, one on day 1, three on day 3.
        let versions = dated(&[
            (1, base + 100),
            (2, base + 200),
            (3, base + DAY),
            (4, base + 3 * DAY),
            (5, base + 3 * DAY + 10),
            (6, base + 3 * DAY + 20),
        ]);
        let last2 = KeepPolicy {
            last: 2,
            ..Default::default()
        };
        assert_eq!(kept(&last2, &versions), BTreeSet::from([5, 6]));
        let daily2 = KeepPolicy {
            daily: 2,
            ..Default::default()
        };
        assert_eq!(kept(&daily2, &versions), BTreeSet::from([3, 6]));
        let both = KeepPolicy {
            last: 1,
            daily: 3,
            ..Default::default()
        };
        let decisions = decide(&both, &versions);
        assert_eq!(decisions[0].version, 6);
        assert_eq!(decisions[0].kept_by, vec!["last", "daily"]);
        assert_eq!(kept(&both, &versions), BTreeSet::from([2, 3, 6]));
        assert!(KeepPolicy::default().is_empty());
        assert!(!both.is_empty());
    }

    /// The reference: each rule on its own, by grouping into buckets and taking the N
    /// most recent buckets' newest versions; kept = the union.
    fn reference(policy: &KeepPolicy, versions: &[Dated]) -> BTreeSet<u32> {
        let key = |v: &Dated| (v.created_unix_secs, v.version);
        let mut out = BTreeSet::new();
        let mut by_age: Vec<&Dated> = versions.iter().collect();
        by_age.sort_by_key(|v| std::cmp::Reverse(key(v)));
        out.extend(by_age.iter().take(policy.last as usize).map(|v| v.version));
        for (name, n, bucket) in rules(policy) {
            if name == "last" {
                continue;
            }
            let mut newest: BTreeMap<u64, &Dated> = BTreeMap::new();
            for v in versions {
                let slot = newest.entry(bucket(v.created_unix_secs)).or_insert(v);
                if key(v) > key(slot) {
                    *slot = v;
                }
            }
            out.extend(newest.values().rev().take(n as usize).map(|v| v.version));
        }
        out
    }

    fn arb_versions() -> impl Strategy<Value = Vec<Dated>> {
        // Up to 60 versions over about three years, with clumps (same second, same day).
        proptest::collection::vec((0u64..1100, 0u64..4, 0u64..86_400), 0..60).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (day, clump, secs))| Dated {
                    version: i as u32 + 1,
                    created_unix_secs: 1_600_000_000
                        + day * DAY
                        + if clump == 0 { 0 } else { secs },
                })
                .collect()
        })
    }

    fn arb_policy() -> impl Strategy<Value = KeepPolicy> {
        (0u32..5, 0u32..5, 0u32..8, 0u32..5, 0u32..6, 0u32..3).prop_map(
            |(last, hourly, daily, weekly, monthly, yearly)| KeepPolicy {
                last,
                hourly,
                daily,
                weekly,
                monthly,
                yearly,
            },
        )
    }

    proptest! {
        #[test]
        fn matches_the_reference(policy in arb_policy(), versions in arb_versions()) {
            prop_assert_eq!(kept(&policy, &versions), reference(&policy, &versions));
        }

        #[test]
        fn decides_every_version_once_and_keeps_the_newest(policy in arb_policy(), versions in arb_versions()) {
            let decisions = decide(&policy, &versions);
            let mut seen: Vec<u32> = decisions.iter().map(|d| d.version).collect();
            seen.sort_unstable();
            let mut all: Vec<u32> = versions.iter().map(|v| v.version).collect();
            all.sort_unstable();
            prop_assert_eq!(seen, all);
            let total = policy.last + policy.hourly + policy.daily + policy.weekly + policy.monthly + policy.yearly;
            let kept_count = decisions.iter().filter(|d| d.keep()).count();
            prop_assert!(kept_count <= total as usize);
            if let Some(first) = decisions.first() {
                prop_assert_eq!(first.keep(), !policy.is_empty());
            }
            // keep-last N keeps exactly the N newest (by time, then number).
            let newest: Vec<u32> = decisions.iter().take(policy.last as usize).map(|d| d.version).collect();
            for v in newest {
                prop_assert!(kept(&policy, &versions).contains(&v));
            }
        }

        #[test]
        fn asking_for_more_never_keeps_less(policy in arb_policy(), versions in arb_versions(), which in 0usize..6) {
            let mut more = policy;
            match which {
                0 => more.last += 1,
                1 => more.hourly += 1,
                2 => more.daily += 1,
                3 => more.weekly += 1,
                4 => more.monthly += 1,
                _ => more.yearly += 1,
            }
            prop_assert!(kept(&policy, &versions).is_subset(&kept(&more, &versions)));
        }
    }
}
