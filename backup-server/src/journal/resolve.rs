//! Finding the point an export name asks for, among the journals of a volume, with an
//! error that says why when there is none: past the journal's end, inside a gap, not a
//! flush or mark, behind damage, or no such mark or time.

use std::path::Path;

use super::{bases, Journal, JournalError, PointInfo};
use crate::name::{format_rfc3339, PointSpec, VolumeName};

/// A point found: its base version and the point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The base version.
    pub base: u32,
    /// The point.
    pub point: PointInfo,
}

/// Loads journals of one volume on demand (the server caches them; `points` loads
/// each once).
pub trait Journals {
    /// The journal of base version `base`, refreshed.
    fn journal(&self, base: u32, f: &mut dyn FnMut(&Journal)) -> Result<(), JournalError>;
}

/// Resolves `spec` for `volume` (base `version` for a sequence) in the store at `root`.
pub fn resolve(
    root: &Path,
    volume: &VolumeName,
    version: Option<u32>,
    spec: &PointSpec,
    journals: &dyn Journals,
) -> Result<Found, JournalError> {
    let point_err = |text: String| JournalError::Point(text);
    let mut all = bases(root, volume)?;
    if all.is_empty() {
        return Err(point_err(format!("volume {volume} has no journal")));
    }
    match spec {
        PointSpec::Seq(seq) => {
            let base = version.unwrap_or(0);
            if !all.contains(&base) {
                return Err(point_err(format!(
                    "volume {volume} has no journal from version {base} (journals start from {})",
                    list(&all)
                )));
            }
            let mut found = Err(point_err(String::new()));
            journals.journal(base, &mut |j| found = seq_point(j, *seq))?;
            found.map(|point| Found { base, point })
        }
        PointSpec::Mark(label) => {
            all.reverse();
            let mut damaged: Option<String> = None;
            for base in all {
                let mut hit = None;
                journals.journal(base, &mut |j| {
                    hit = j.mark(label).cloned();
                    if damaged.is_none() {
                        damaged = j.damage_error().map(|e| e.to_string());
                    }
                })?;
                if let Some(point) = hit {
                    return Ok(Found { base, point });
                }
            }
            Err(point_err(match damaged {
                Some(d) => {
                    format!("volume {volume} has no mark {label:?} in what can be read: {d}")
                }
                None => format!("volume {volume} has no mark {label:?}"),
            }))
        }
        PointSpec::Time(t) => {
            let mut best: Option<Found> = None;
            let mut first: Option<u64> = None;
            for base in all {
                journals.journal(base, &mut |j| {
                    let points = j.points();
                    if let Some(p) = points.first() {
                        first = Some(first.map_or(p.time_unix_ns, |f| f.min(p.time_unix_ns)));
                    }
                    let at = points.partition_point(|p| p.time_unix_ns <= *t);
                    if let Some(p) = at.checked_sub(1).map(|i| &points[i]) {
                        if best
                            .as_ref()
                            .is_none_or(|b| b.point.time_unix_ns <= p.time_unix_ns)
                        {
                            best = Some(Found {
                                base,
                                point: p.clone(),
                            });
                        }
                    }
                })?;
            }
            best.ok_or_else(|| {
                point_err(match first {
                    Some(f) => format!(
                        "volume {volume} has no point at or before {} (its first point is at {})",
                        format_rfc3339(*t),
                        format_rfc3339(f)
                    ),
                    None => format!("volume {volume} has no point yet"),
                })
            })
        }
    }
}

/// The point with sequence `seq` of `j`, or why there is none.
fn seq_point(j: &Journal, seq: u64) -> Result<PointInfo, JournalError> {
    if let Some(p) = j.point(seq) {
        return Ok(p.clone());
    }
    let name = format!("{}@{}+{seq}", j.volume(), j.base());
    if j.damage().is_some_and(|d| seq >= d.seq) {
        return Err(j.damage_error().unwrap_or(JournalError::Point(name)));
    }
    if seq > j.head() {
        return Err(JournalError::Point(format!(
            "{name} is past the end of the journal (its last sequence is {})",
            j.head()
        )));
    }
    if let Some(g) = j
        .gaps()
        .iter()
        .find(|g| g.begin <= seq && g.end.is_none_or(|e| seq <= e))
    {
        let end = g.end.map_or("the end".to_owned(), |e| e.to_string());
        return Err(JournalError::Point(format!(
            "{name} lies inside a gap (sequences {} to {end}): capture fell behind there and read the volume back, so no point inside it is recoverable",
            g.begin
        )));
    }
    let points = j.points();
    let at = points.partition_point(|p| p.seq < seq);
    let before = at.checked_sub(1).map(|i| points[i].seq);
    let after = points.get(at).map(|p| p.seq);
    let near = |s: Option<u64>| {
        s.map_or("none".to_owned(), |s| {
            format!("{}@{}+{s}", j.volume(), j.base())
        })
    };
    Err(JournalError::Point(format!(
        "{name} is not a recovery point (points are completed flushes and marks; nearest before: {}, after: {})",
        near(before),
        near(after)
    )))
}

fn list(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}
