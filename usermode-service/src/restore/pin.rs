//! Pinning what is restored: the restore records exactly which source it reads in the
//! metadata header, reconnects only to that, and refuses anything else.
//!
//! - `rehydrate serve` tells every client what an export is in its description
//!   (`rehydrate volume=sys version=3 size=… index=blake3:…`, see
//!   `rehydrate_backup::identity`). The pin is the version's export name `NAME@N`, its
//!   size and index checksum. Every connection after the first goes to `NAME@N`, never
//!   to `NAME` (which moves to the newest version), and must tell the same identity.
//!   The server's address is not part of the pin: the same version served from another
//!   address is the same data.
//! - A recovery point of the journal (`NAME@mark:LABEL`, `NAME@time:…`, `NAME@N+SEQ`)
//!   adds `point=SEQ journal=blake3:…` to that description. The pin is `NAME@N+SEQ`,
//!   its size and the journal's chain digest at the point, so a mark or time is pinned
//!   to the exact point it named when the restore began.
//! - Another NBD server (qemu-nbd, nbdkit) cannot say what it serves. The pin is the
//!   URL (address and export), the size, and a BLAKE3 checksum of [`SAMPLE_COUNT`]
//!   blocks spread over the export, checked again on every reconnect. That catches
//!   another file behind the same address, a resized export, and most changes of
//!   content; it cannot catch a change confined to blocks it does not sample.

use std::sync::Arc;

use rehydrate_backup::{ExportIdentity, IdentityError};
use rehydrate_driver::meta::{SourceKind, SourcePin};
use rehydrate_nbd::{BoxFuture, Client, NbdUrl};

use crate::error::ServiceError;
use crate::source::{NbdSource, RedialCheck, Source};

/// Blocks sampled from a foreign export.
pub const SAMPLE_COUNT: u64 = 8;
/// Size of one sampled block.
pub const SAMPLE_BYTES: u64 = 4096;

/// Names the backup a restore reads, for the metadata's `backup_id` (and the bitmap
/// slots' identity tag): BLAKE3 of every field of the pin.
pub fn backup_id_of(pin: &SourcePin) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"rehydrate source pin v2\0");
    h.update(&[pin.kind as u8]);
    h.update(&(pin.name().len() as u64).to_le_bytes());
    h.update(pin.name().as_bytes());
    h.update(&pin.size_bytes.to_le_bytes());
    h.update(&pin.version.to_le_bytes());
    h.update(&pin.digest);
    *h.finalize().as_bytes()
}

/// The export to connect to for a restore of `url` whose metadata pins `pinned`: the
/// pinned `NAME@N` for a backup version (the URL must name that volume), the URL's own
/// export otherwise.
pub fn export_to_dial(url: &NbdUrl, pinned: Option<&SourcePin>) -> Result<String, ServiceError> {
    let Some(pin) =
        pinned.filter(|p| matches!(p.kind, SourceKind::BackupVersion | SourceKind::JournalPoint))
    else {
        return Ok(url.export.clone());
    };
    let volume = pin.name().split('@').next().unwrap_or_default();
    if url.export == volume || url.export == pin.name() {
        return Ok(pin.name().to_owned());
    }
    // A mark or a time of the pinned volume may name the pinned point: it is dialled as
    // given and must then tell the very identity pinned.
    if pin.kind == SourceKind::JournalPoint
        && url.export.split_once('@').map(|(v, _)| v) == Some(volume)
    {
        return Ok(url.export.clone());
    }
    Err(ServiceError::SourceNotPinned {
        pinned: pin.name().to_owned(),
        given: url.export.clone(),
    })
}

/// What the connected `source` is, as a pin.
pub async fn identify(source: &NbdSource, url: &NbdUrl) -> Result<SourcePin, ServiceError> {
    let client = source.connection().await;
    let description = client.info().description.clone();
    let pin = match ExportIdentity::parse(&description) {
        Ok(id) => backup_pin(&id)?,
        Err(IdentityError::NotOurs) => foreign_pin(&client, url).await?,
        Err(e) => {
            return Err(ServiceError::SourceIdentity(format!(
                "{url} describes itself as {description:?}: {e}"
            )))
        }
    };
    if pin.size_bytes != source.size_bytes() {
        return Err(ServiceError::SourceIdentity(format!(
            "{url} says it holds {} bytes but serves {}",
            pin.size_bytes,
            source.size_bytes()
        )));
    }
    Ok(pin)
}

fn backup_pin(id: &ExportIdentity) -> Result<SourcePin, ServiceError> {
    let (kind, digest) = match id.point {
        None => (SourceKind::BackupVersion, id.index_checksum),
        // The chain digest covers the base's index checksum and every record up to it.
        Some(p) => (SourceKind::JournalPoint, p.digest),
    };
    SourcePin::new(
        kind,
        &id.pinned_name(),
        id.size_bytes,
        u64::from(id.version),
        digest,
    )
    .map_err(|e| ServiceError::SourceIdentity(e.to_string()))
}

async fn foreign_pin(client: &Client, url: &NbdUrl) -> Result<SourcePin, ServiceError> {
    let digest = sample_digest(client, &url.to_string())
        .await
        .map_err(|e| ServiceError::SourceIdentity(format!("sampling {url}: {e}")))?;
    // The name is for people and messages; the digest covers the whole URL, so a URL
    // too long for the header is still pinned exactly.
    let mut name = url.to_string();
    while name.len() > rehydrate_driver::meta::SOURCE_NAME_MAX_BYTES {
        name.pop();
    }
    SourcePin::new(
        SourceKind::ForeignNbd,
        &name,
        client.size_bytes(),
        0,
        digest,
    )
    .map_err(|e| ServiceError::SourceIdentity(e.to_string()))
}

/// Offsets of the sampled blocks of an export of `size_bytes`: spread evenly, aligned
/// to the block size, the last one ending at the end.
pub fn sample_offsets(size_bytes: u64) -> Vec<(u64, u64)> {
    if size_bytes == 0 {
        return Vec::new();
    }
    let mut out: Vec<(u64, u64)> = (0..SAMPLE_COUNT)
        .map(|k| {
            let at = (size_bytes / SAMPLE_COUNT * k) / SAMPLE_BYTES * SAMPLE_BYTES;
            (at, SAMPLE_BYTES.min(size_bytes - at))
        })
        .collect();
    let tail = size_bytes.saturating_sub(SAMPLE_BYTES);
    out.push((tail, size_bytes - tail));
    out.dedup();
    out
}

/// BLAKE3 of the URL, the size and the sampled blocks of the export behind `client`.
async fn sample_digest(client: &Client, url: &str) -> Result<[u8; 32], rehydrate_nbd::Error> {
    let size = client.size_bytes();
    let mut h = blake3::Hasher::new();
    h.update(b"rehydrate sampled source v1\0");
    h.update(&(url.len() as u64).to_le_bytes());
    h.update(url.as_bytes());
    h.update(&size.to_le_bytes());
    for (offset, len) in sample_offsets(size) {
        h.update(&offset.to_le_bytes());
        h.update(&client.read(offset, len as usize).await?);
    }
    Ok(*h.finalize().as_bytes())
}

/// Compares the connected source with the metadata's pin.
pub fn check(found: &SourcePin, pinned: &SourcePin) -> Result<(), ServiceError> {
    if found == pinned {
        return Ok(());
    }
    Err(ServiceError::SourceChanged {
        pinned: describe(pinned),
        found: describe(found),
    })
}

/// One line naming a pin, for messages.
pub fn describe(pin: &SourcePin) -> String {
    let hex = |d: &[u8; 32]| {
        d[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    match pin.kind {
        SourceKind::BackupVersion => format!(
            "{} ({} bytes, index blake3:{}…)",
            pin.name(),
            pin.size_bytes,
            hex(&pin.digest)
        ),
        SourceKind::JournalPoint => format!(
            "{} ({} bytes, journal blake3:{}…)",
            pin.name(),
            pin.size_bytes,
            hex(&pin.digest)
        ),
        SourceKind::ForeignNbd => format!(
            "{} ({} bytes, sampled blocks blake3:{}…)",
            pin.name(),
            pin.size_bytes,
            hex(&pin.digest)
        ),
        SourceKind::Unrecorded => "no recorded source".into(),
    }
}

/// The check every reconnect of the source runs: the new connection must be the very
/// source pinned, else it is refused and the restore stops with [`describe`]'s words.
pub fn redial_check(pin: SourcePin, url: &NbdUrl) -> RedialCheck {
    let url = url.to_string();
    Arc::new(
        move |client: Client| -> BoxFuture<'static, Result<(), String>> {
            let url = url.clone();
            Box::pin(async move {
                let found = match pin.kind {
                    SourceKind::BackupVersion | SourceKind::JournalPoint => {
                        let description = &client.info().description;
                        let id = ExportIdentity::parse(description).map_err(|e| {
                            format!("the server no longer says which version it serves ({e})")
                        })?;
                        backup_pin(&id).map_err(|e| e.to_string())?
                    }
                    _ => {
                        let digest = sample_digest(&client, &url)
                            .await
                            .map_err(|e| format!("sampling the reconnected source failed: {e}"))?;
                        SourcePin::new(pin.kind, pin.name(), client.size_bytes(), 0, digest)
                            .map_err(|e| e.to_string())?
                    }
                };
                if found == pin {
                    Ok(())
                } else {
                    Err(format!(
                        "pinned to {}, the server now serves {}",
                        describe(&pin),
                        describe(&found)
                    ))
                }
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_the_export_and_stay_inside() {
        assert!(sample_offsets(0).is_empty());
        assert_eq!(sample_offsets(1), vec![(0, 1)]);
        for size in [4096u64, 4097, 65536 + 1, 1 << 30] {
            let s = sample_offsets(size);
            assert!(s.iter().all(|&(o, l)| l > 0 && o + l <= size), "{size}");
            assert_eq!(s.last().map(|&(o, l)| o + l), Some(size));
            assert_eq!(s[0].0, 0);
        }
    }

    #[test]
    fn the_dialled_export_is_the_pinned_version_of_the_named_volume() {
        let url = NbdUrl::parse("nbd://h:1/sys").unwrap();
        assert_eq!(export_to_dial(&url, None).unwrap(), "sys");
        let pin = SourcePin::new(SourceKind::BackupVersion, "sys@3", 1, 3, [0; 32]).unwrap();
        assert_eq!(export_to_dial(&url, Some(&pin)).unwrap(), "sys@3");
        let at3 = NbdUrl::parse("nbd://h:1/sys@3").unwrap();
        assert_eq!(export_to_dial(&at3, Some(&pin)).unwrap(), "sys@3");
        for other in ["nbd://h:1/sys@4", "nbd://h:1/data", "nbd://h:1/"] {
            let url = NbdUrl::parse(other).unwrap();
            assert!(matches!(
                export_to_dial(&url, Some(&pin)),
                Err(ServiceError::SourceNotPinned { .. })
            ));
        }
        let foreign = SourcePin::new(SourceKind::ForeignNbd, "nbd://h:1/x", 1, 0, [0; 32]).unwrap();
        assert_eq!(export_to_dial(&url, Some(&foreign)).unwrap(), "sys");
    }

    #[test]
    fn a_point_is_dialled_by_its_pinned_name_or_as_given_for_its_volume() {
        let pin = SourcePin::new(SourceKind::JournalPoint, "sys@1+42", 1, 1, [0; 32]).unwrap();
        for (given, dialled) in [
            ("nbd://h:1/sys", "sys@1+42"),
            ("nbd://h:1/sys@1+42", "sys@1+42"),
            ("nbd://h:1/sys@mark:pre", "sys@mark:pre"),
            (
                "nbd://h:1/sys@time:2024-05-01T10:41:07Z",
                "sys@time:2024-05-01T10:41:07Z",
            ),
        ] {
            let url = NbdUrl::parse(given).unwrap();
            assert_eq!(
                export_to_dial(&url, Some(&pin)).unwrap(),
                dialled,
                "{given}"
            );
        }
        let other = NbdUrl::parse("nbd://h:1/data@mark:pre").unwrap();
        assert!(matches!(
            export_to_dial(&other, Some(&pin)),
            Err(ServiceError::SourceNotPinned { .. })
        ));
        assert!(describe(&pin).starts_with("sys@1+42 (1 bytes, journal blake3:"));
    }

    #[test]
    fn backup_ids_differ_by_every_field() {
        let base = SourcePin::new(SourceKind::BackupVersion, "sys@3", 10, 3, [1; 32]).unwrap();
        let id = backup_id_of(&base);
        assert_eq!(id, backup_id_of(&base));
        for other in [
            SourcePin::new(SourceKind::BackupVersion, "sys@4", 10, 3, [1; 32]),
            SourcePin::new(SourceKind::BackupVersion, "sys@3", 11, 3, [1; 32]),
            SourcePin::new(SourceKind::BackupVersion, "sys@3", 10, 4, [1; 32]),
            SourcePin::new(SourceKind::BackupVersion, "sys@3", 10, 3, [2; 32]),
            SourcePin::new(SourceKind::ForeignNbd, "sys@3", 10, 3, [1; 32]),
        ] {
            assert_ne!(backup_id_of(&other.unwrap()), id);
        }
    }
}
