//! Volume names and export names (`NAME`, `NAME@VERSION`).
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

/// What an NBD export name asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportName {
    /// The volume.
    pub volume: VolumeName,
    /// `None`: the newest version; `Some(n)`: version `n` (at least 1).
    pub version: Option<u32>,
}

impl ExportName {
    /// Parse `NAME` or `NAME@N`; `None` for anything else (an unknown export).
    pub fn parse(text: &str) -> Option<Self> {
        let (name, version) = match text.split_once('@') {
            None => (text, None),
            Some((name, digits)) => {
                if digits.is_empty()
                    || digits.len() > VERSION_DIGITS
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                let n: u32 = digits.parse().ok()?;
                if n == 0 {
                    return None;
                }
                (name, Some(n))
            }
        };
        Some(Self {
            volume: VolumeName::new(name).ok()?,
            version,
        })
    }
}

impl fmt::Display for ExportName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            None => write!(f, "{}", self.volume),
            Some(v) => write!(f, "{}@{v}", self.volume),
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
