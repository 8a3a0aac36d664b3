//! What an export of `rehydrate serve` *is*, told to every client in the export's
//! description (`NBD_INFO_DESCRIPTION`, sent in reply to `NBD_OPT_INFO`/`GO`):
//!
//! ```text
//! rehydrate volume=NAME version=N size=BYTES index=blake3:HEX
//! ```
//!
//! `NAME` is the volume, `N` the version the export resolved to (for export `NAME`, the
//! newest when the client connected), `BYTES` its size, `HEX` the 64 lowercase hex
//! digits of the version's index checksum (bytes 40..72 of the index file: BLAKE3 of
//! the index header and every chunk hash). The fields come in this order, separated by
//! one space; nothing else follows.
//!
//! A recovery point of the journal (`NAME@N+SEQ`, `NAME@mark:LABEL`,
//! `NAME@time:RFC3339`) is version `N` plus the journal up to sequence `SEQ`, and says
//! so with two more fields:
//!
//! ```text
//! rehydrate volume=NAME version=N size=BYTES index=blake3:HEX point=SEQ journal=blake3:HEX
//! ```
//!
//! `journal` is the point's chain digest (the base's identity and every record's
//! checksum up to `SEQ`, see `crate::journal`), so the pair names the point's contents
//! exactly; `NAME@N+SEQ` is the name that always means it.
//!
//! Why the description and not a metadata context of our own: a client reads it during
//! the handshake without negotiating structured replies or block status, `nbdinfo`
//! shows it as is, and it needs no new protocol surface in any client. A restore pins
//! `NAME@N` from it and checks `index` on every reconnect, so it never continues
//! against another version or another store's volume of the same name.

use std::fmt;

use crate::name::{VolumeName, MAX_VERSION};

/// The prefix that marks a description as ours.
pub const PREFIX: &str = "rehydrate ";
/// Longest description we render or parse: the fields at their bounds fit well within.
pub const MAX_DESCRIPTION_BYTES: usize = 512;

/// The identity of one served version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportIdentity {
    /// The volume.
    pub volume: VolumeName,
    /// The version number (1..=99,999,999).
    pub version: u32,
    /// Size of the version in bytes.
    pub size_bytes: u64,
    /// The index checksum.
    pub index_checksum: [u8; 32],
    /// For a recovery point of the journal: its sequence and chain digest.
    pub point: Option<PointIdentity>,
}

/// What makes a recovery point exact: its sequence and the journal's chain digest there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointIdentity {
    /// The point's sequence (at least 1).
    pub seq: u64,
    /// The chain digest up to it.
    pub digest: [u8; 32],
}

/// Why a description is not an export identity of ours.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// It does not start with `rehydrate ` (another server, or none given).
    #[error("the description does not say which backup version this is")]
    NotOurs,
    /// It is longer than [`MAX_DESCRIPTION_BYTES`].
    #[error("description of {0} bytes is too long")]
    TooLong(usize),
    /// A field is missing, out of order, or malformed; the text names it.
    #[error("description field {0} is missing or malformed")]
    Field(&'static str),
}

impl ExportIdentity {
    /// The export name that always means this version, `NAME@N`, or this point,
    /// `NAME@N+SEQ`.
    pub fn pinned_name(&self) -> String {
        match self.point {
            None => format!("{}@{}", self.volume, self.version),
            Some(p) => format!("{}@{}+{}", self.volume, self.version, p.seq),
        }
    }

    /// The description text (see the module comment).
    pub fn render(&self) -> String {
        self.to_string()
    }

    /// Parses a description. Any string is accepted as input; every failure is typed.
    pub fn parse(text: &str) -> Result<ExportIdentity, IdentityError> {
        if text.len() > MAX_DESCRIPTION_BYTES {
            return Err(IdentityError::TooLong(text.len()));
        }
        let rest = text.strip_prefix(PREFIX).ok_or(IdentityError::NotOurs)?;
        let mut fields = rest.split(' ');
        let mut field = |key: &'static str| {
            fields
                .next()
                .and_then(|f| f.strip_prefix(key))
                .and_then(|f| f.strip_prefix('='))
                .ok_or(IdentityError::Field(key))
        };
        let volume =
            VolumeName::new(field("volume")?).map_err(|_| IdentityError::Field("volume"))?;
        let version = decimal(field("version")?)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| (1..=MAX_VERSION).contains(v))
            .ok_or(IdentityError::Field("version"))?;
        let size_bytes = decimal(field("size")?).ok_or(IdentityError::Field("size"))?;
        let index_checksum = field("index")?
            .strip_prefix("blake3:")
            .and_then(hex32)
            .ok_or(IdentityError::Field("index"))?;
        let point = match fields.next() {
            None => None,
            Some(f) => {
                // Anything but the point's fields after the index is trailing garbage.
                let seq = f
                    .strip_prefix("point=")
                    .ok_or(IdentityError::Field("end"))?;
                let seq = decimal(seq)
                    .filter(|&s| s >= 1)
                    .ok_or(IdentityError::Field("point"))?;
                let digest = fields
                    .next()
                    .and_then(|f| f.strip_prefix("journal=blake3:"))
                    .and_then(hex32)
                    .ok_or(IdentityError::Field("journal"))?;
                Some(PointIdentity { seq, digest })
            }
        };
        if fields.next().is_some() {
            return Err(IdentityError::Field("end"));
        }
        Ok(ExportIdentity {
            volume,
            version,
            size_bytes,
            index_checksum,
            point,
        })
    }
}

impl fmt::Display for ExportIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}volume={} version={} size={} index=blake3:",
            self.volume, self.version, self.size_bytes
        )?;
        hex(f, &self.index_checksum)?;
        if let Some(p) = &self.point {
            write!(f, " point={} journal=blake3:", p.seq)?;
            hex(f, &p.digest)?;
        }
        Ok(())
    }
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8; 32]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// A canonical decimal: digits only, no sign, no leading zero (one encoding per value).
fn decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.len() <= 20
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// 64 lowercase hex digits.
fn hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ExportIdentity {
        ExportIdentity {
            volume: VolumeName::new("sys").unwrap(),
            version: 3,
            size_bytes: 67_108_865,
            index_checksum: [0xab; 32],
            point: None,
        }
    }

    #[test]
    fn points_render_and_parse_back_and_pin_their_sequence() {
        let id = ExportIdentity {
            point: Some(PointIdentity {
                seq: 42,
                digest: [0x0f; 32],
            }),
            ..sample()
        };
        let text = id.render();
        assert!(
            text.ends_with(&format!(" point=42 journal=blake3:{}", "0f".repeat(32))),
            "{text}"
        );
        assert_eq!(ExportIdentity::parse(&text), Ok(id.clone()));
        assert_eq!(id.pinned_name(), "sys@3+42");
        let base = sample().render();
        for (bad, field) in [
            (
                format!("{base} point=0 journal=blake3:{}", "0f".repeat(32)),
                "point",
            ),
            (
                format!("{base} point=042 journal=blake3:{}", "0f".repeat(32)),
                "point",
            ),
            (format!("{base} point=42"), "journal"),
            (format!("{base} point=42 journal=blake3:0f"), "journal"),
            (format!("{text} x=1"), "end"),
        ] {
            assert_eq!(
                ExportIdentity::parse(&bad),
                Err(IdentityError::Field(field)),
                "{bad}"
            );
        }
    }

    #[test]
    fn renders_and_parses_back() {
        let id = sample();
        let text = id.render();
        assert_eq!(
            text,
            format!(
                "rehydrate volume=sys version=3 size=67108865 index=blake3:{}",
                "ab".repeat(32)
            )
        );
        assert_eq!(ExportIdentity::parse(&text), Ok(id.clone()));
        assert_eq!(id.pinned_name(), "sys@3");
    }

    #[test]
    fn anything_else_is_a_typed_error() {
        let good = sample().render();
        assert_eq!(ExportIdentity::parse(""), Err(IdentityError::NotOurs));
        assert_eq!(ExportIdentity::parse("sys@3"), Err(IdentityError::NotOurs));
        for (bad, field) in [
            (good.replace("version=3", "version=03"), "version"),
            (good.replace("version=3", "version=0"), "version"),
            (good.replace("size=67108865", "size=-1"), "size"),
            (good.replace("volume=sys", "volume=../x"), "volume"),
            (good.replace("index=blake3:ab", "index=blake3:AB"), "index"),
            (good.replace("index=blake3:ab", "index=sha256:ab"), "index"),
            (format!("{good} extra=1"), "end"),
            (good.replace(" size=67108865", ""), "size"),
        ] {
            assert_eq!(
                ExportIdentity::parse(&bad),
                Err(IdentityError::Field(field)),
                "{bad}"
            );
        }
        assert_eq!(
            ExportIdentity::parse(&"x".repeat(600)),
            Err(IdentityError::TooLong(600))
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(text in ".{0,200}") {
            if let Ok(id) = ExportIdentity::parse(&text) {
                prop_assert_eq!(id.render(), text);
            }
        }

        #[test]
        fn every_identity_round_trips(
            version in 1u32..=MAX_VERSION,
            size in any::<u64>(),
            sum in any::<[u8; 32]>(),
            point in proptest::option::of((1u64.., any::<[u8; 32]>())),
        ) {
            let point = point.map(|(seq, digest)| PointIdentity { seq, digest });
            let id = ExportIdentity { version, size_bytes: size, index_checksum: sum, point, ..sample() };
            prop_assert_eq!(ExportIdentity::parse(&id.render()), Ok(id));
        }
    }
}
