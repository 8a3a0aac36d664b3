//! Volume names and export names (`NAME`, `NAME@VERSION`, and the journal's recovery
//! points `NAME@VERSION+SEQ`, `NAME@mark:LABEL`, `NAME@time:RFC3339`).
//!
//! A volume name becomes one path segment in the store (`volumes/NAME/…`), so it is
//! checked before it is used anywhere: only `[A-Za-z0-9._-]`, not starting with `.`,
//! at most [`MAX_VOLUME_NAME_BYTES`]. That rules out `/`, `\`, `..`, `@` (the version
//! separator) and anything an object store would escape.

use std::fmt;
use std::str::FromStr;

use crate::error::BackupError;

/// Longest volume name, in bytes.
pub const MAX_VOLUME_NAME_BYTES: usize = 128;
/// Most decimal digits in a version number (the layout's file names have eight).
pub const VERSION_DIGITS: usize = 8;
/// Largest version number.
pub const MAX_VERSION: u32 = 99_999_999;
const _: () = assert!(MAX_VERSION as u64 == 10u64.pow(VERSION_DIGITS as u32) - 1);

/// A checked volume name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

impl VolumeName {
    /// Check `name`.
    pub fn new(name: &str) -> Result<Self, BackupError> {
        let bad = |reason| BackupError::InvalidVolumeName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > MAX_VOLUME_NAME_BYTES {
            return Err(bad("longer than 128 bytes"));
        }
        if name.contains(['/', '\\']) {
            return Err(bad("path characters are not allowed"));
        }
        if name.contains('@') {
            return Err(bad("'@' separates a version and cannot be part of a name"));
        }
        if name.starts_with('.') {
            return Err(bad("cannot start with '.'"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad("only letters, digits, '.', '_' and '-' are allowed"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VolumeName {
    type Err = BackupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Most decimal digits in a journal sequence number.
pub const SEQ_DIGITS_MAX: usize = 20;

/// A recovery point of the journal, as an export name asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PointSpec {
    /// `NAME@VERSION+SEQ`: the point with sequence `SEQ` of base version `VERSION`.
    Seq(u64),
    /// `NAME@mark:LABEL`: the mark named `LABEL`.
    Mark(String),
    /// `NAME@time:RFC3339`: the newest point at or before this time (nanoseconds since
    /// the Unix epoch).
    Time(u64),
}

/// What an NBD export name asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportName {
    /// The volume.
    pub volume: VolumeName,
    /// `None`: the newest version (or, with a mark or time, whichever base holds the
    /// point); `Some(n)`: version `n` (at least 1).
    pub version: Option<u32>,
    /// A recovery point of the journal, if one is asked for.
    pub point: Option<PointSpec>,
}

impl ExportName {
    /// Parse `NAME`, `NAME@N`, `NAME@N+SEQ`, `NAME@mark:LABEL` or `NAME@time:RFC3339`;
    /// `None` for anything else (an unknown export).
    pub fn parse(text: &str) -> Option<Self> {
        let (name, version, point) = match text.split_once('@') {
            None => (text, None, None),
            Some((name, rest)) => {
                if let Some(label) = rest.strip_prefix("mark:") {
                    if !crate::journal::format::is_label(label.as_bytes()) {
                        return None;
                    }
                    (name, None, Some(PointSpec::Mark(label.to_owned())))
                } else if let Some(time) = rest.strip_prefix("time:") {
                    (name, None, Some(PointSpec::Time(parse_rfc3339(time)?)))
                } else {
                    match rest.split_once('+') {
                        None => (name, Some(parse_version(rest)?), None),
                        Some((version, seq)) => {
                            let seq = digits(seq, SEQ_DIGITS_MAX)?;
                            if seq == 0 {
                                return None;
                            }
                            (
                                name,
                                Some(parse_version(version)?),
                                Some(PointSpec::Seq(seq)),
                            )
                        }
                    }
                }
            }
        };
        Some(Self {
            volume: VolumeName::new(name).ok()?,
            version,
            point,
        })
    }
}

/// A version number: 1 to [`VERSION_DIGITS`] decimal digits, not zero.
fn parse_version(text: &str) -> Option<u32> {
    u32::try_from(digits(text, VERSION_DIGITS)?)
        .ok()
        .filter(|&n| n != 0)
}

/// 1 to `max` decimal digits.
fn digits(text: &str, max: usize) -> Option<u64> {
    if text.is_empty() || text.len() > max || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An RFC 3339 time (`2024-05-01T10:41:07Z`, `2024-05-01T12:41:07.5+02:00`) as
/// nanoseconds since the Unix epoch; `None` before the epoch or past 2554.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos()).ok()
}

/// Nanoseconds since the Unix epoch as RFC 3339 in UTC, with the fraction only when
/// there is one (`2024-05-01T10:41:07Z`, `2024-05-01T10:41:07.25Z`).
pub fn format_rfc3339(unix_ns: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| unix_ns.to_string())
}

impl fmt::Display for ExportName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.volume)?;
        match (&self.version, &self.point) {
            (None, None) => Ok(()),
            (Some(v), None) => write!(f, "@{v}"),
            (Some(v), Some(PointSpec::Seq(seq))) => write!(f, "@{v}+{seq}"),
            (_, Some(PointSpec::Mark(label))) => write!(f, "@mark:{label}"),
            (_, Some(PointSpec::Time(ns))) => write!(f, "@time:{}", format_rfc3339(*ns)),
            (None, Some(PointSpec::Seq(seq))) => write!(f, "@?+{seq}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for ok in ["disk0", "C-drive", "vol_1.img", "a", &"x".repeat(128)] {
            assert_eq!(VolumeName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn bad_names_say_why() {
        let err = VolumeName::new("../etc").unwrap_err().to_string();
        assert!(err.contains("path characters"), "{err}");
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a@1",
            "a b",
            "é",
            &"x".repeat(129),
            "a\0",
        ] {
            assert!(VolumeName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn point_names() {
        let p = ExportName::parse("sys@3+42").unwrap();
        assert_eq!(
            (p.version, p.point.clone()),
            (Some(3), Some(PointSpec::Seq(42)))
        );
        assert_eq!(p.to_string(), "sys@3+42");
        let m = ExportName::parse("sys@mark:pre-upgrade").unwrap();
        assert_eq!(m.point, Some(PointSpec::Mark("pre-upgrade".into())));
        assert_eq!(m.version, None);
        assert_eq!(m.to_string(), "sys@mark:pre-upgrade");
        let t = ExportName::parse("sys@time:2024-05-01T10:41:07Z").unwrap();
        assert_eq!(t.point, Some(PointSpec::Time(1_714_560_067_000_000_000)));
        assert_eq!(t.to_string(), "sys@time:2024-05-01T10:41:07Z");
        let offset = ExportName::parse("sys@time:2024-05-01T12:41:07.5+02:00").unwrap();
        assert_eq!(
            offset.point,
            Some(PointSpec::Time(1_714_560_067_500_000_000))
        );
        for bad in [
            "sys@3+",
            "sys@3+0",
            "sys@+5",
            "sys@0+5",
            "sys@3+x",
            "sys@3+123456789012345678901",
            "sys@mark:",
            "sys@mark:.x",
            "sys@mark:a b",
            "sys@mark:a/b",
            "sys@time:yesterday",
            "sys@time:1969-12-31T23:59:59Z",
            "sys@time:2024-05-01 10:41:07",
            "sys@3+4+5",
        ] {
            assert!(ExportName::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(
            format_rfc3339(1_714_560_067_250_000_000),
            "2024-05-01T10:41:07.25Z"
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T10:41:07.25Z"),
            Some(1_714_560_067_250_000_000)
        );
    }

    #[test]
    fn export_names() {
        let newest = ExportName::parse("disk").unwrap();
        assert_eq!(newest.version, None);
        assert_eq!(ExportName::parse("disk@7").unwrap().version, Some(7));
        assert_eq!(
            ExportName::parse("disk@00000007").unwrap().to_string(),
            "disk@7"
        );
        for bad in [
            "",
            "disk@",
            "disk@0",
            "disk@x",
            "disk@1@2",
            "disk@123456789",
            "../disk",
            "disk@-1",
            "/etc/passwd",
        ] {
            assert!(ExportName::parse(bad).is_none(), "{bad:?}");
        }
    }
}
