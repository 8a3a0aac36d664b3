//! Names `rehydrate attach` turns into what the filter reads from its `Parameters` key:
//! the target volume (`\\?\Volume{GUID}\` or a drive letter), the metadata file as an
//! NT path on a volume GUID (stable across reboots, where drive letters are not), and
//! `REG_SZ` bytes. Plain string work, so it is tested on every platform.

/// What `--volume` or `--metadata` was wrong about.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// `--volume` is neither a volume GUID path nor a drive letter.
    #[error(r"--volume {0:?}: expected \\?\Volume{{GUID}}\ or a drive letter such as E:")]
    Volume(String),
    /// The metadata file is not under the mount point Windows reported for it.
    #[error("--metadata {path}: not under its volume's mount point {root}")]
    NotUnderRoot {
        /// The file.
        path: String,
        /// The mount point.
        root: String,
    },
    /// The metadata file would be on the volume being restored.
    #[error(
        "--metadata {0}: on the volume being restored; it must be on another persistent volume"
    )]
    OnTarget(String),
}

/// A volume as `--volume` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeName {
    /// `Volume{GUID}` (the name `QueryDosDevice` knows).
    Guid(String),
    /// A drive letter, upper case.
    Drive(char),
}

fn is_guid_braced(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return false;
    };
    let groups: Vec<&str> = inner.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl VolumeName {
    /// Parses `\\?\Volume{GUID}\`, `\\?\Volume{GUID}`, `Volume{GUID}`, `E:` or `E:\`.
    pub fn parse(text: &str) -> Result<VolumeName, NameError> {
        let bad = || NameError::Volume(text.to_string());
        let trimmed = text.strip_suffix('\\').unwrap_or(text);
        let bare = trimmed.strip_prefix(r"\\?\").unwrap_or(trimmed);
        if let Some(guid) = bare.strip_prefix("Volume") {
            return if is_guid_braced(guid) {
                Ok(VolumeName::Guid(format!("Volume{guid}")))
            } else {
                Err(bad())
            };
        }
        match bare.as_bytes() {
            [letter, b':'] if letter.is_ascii_alphabetic() => {
                Ok(VolumeName::Drive(char::from(letter.to_ascii_uppercase())))
            }
            _ => Err(bad()),
        }
    }
}

/// `\\?\Volume{GUID}\` → `Volume{GUID}`, as `QueryDosDevice` wants it.
pub fn guid_of_volume_path(path: &str) -> Result<String, NameError> {
    match VolumeName::parse(path)? {
        VolumeName::Guid(guid) => Ok(guid),
        VolumeName::Drive(_) => Err(NameError::Volume(path.to_string())),
    }
}

/// The NT path the driver opens for a file at `path` whose volume is mounted at `root`
/// (as `GetVolumePathName` reports it) and has the GUID path `volume_guid_path`
/// (`GetVolumeNameForVolumeMountPoint`): `\??\Volume{GUID}\` + the rest of the path.
/// Refused when that volume is `target_guid`, the volume being restored.
pub fn nt_metadata_path(
    path: &str,
    root: &str,
    volume_guid_path: &str,
    target_guid: &str,
) -> Result<String, NameError> {
    let guid = guid_of_volume_path(volume_guid_path)?;
    if guid.eq_ignore_ascii_case(target_guid) {
        return Err(NameError::OnTarget(path.to_string()));
    }
    let not_under = || NameError::NotUnderRoot {
        path: path.to_string(),
        root: root.to_string(),
    };
    let root = root.strip_suffix('\\').unwrap_or(root);
    let head = path.get(..root.len()).ok_or_else(not_under)?;
    let rest = path.get(root.len()..).ok_or_else(not_under)?;
    if !head.eq_ignore_ascii_case(root) || !rest.starts_with('\\') {
        return Err(not_under());
    }
    Ok(format!(r"\??\{guid}{rest}"))
}

/// A `REG_SZ` value's bytes: UTF-16LE with the terminating NUL.
pub fn reg_sz(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain(Some(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: &str = "{0b7d4cf1-2a3e-4c5f-9d8a-1f2e3d4c5b6a}";

    #[test]
    fn volumes_are_guid_paths_or_drive_letters() {
        let guid = VolumeName::Guid(format!("Volume{GUID}"));
        for text in [
            format!(r"\\?\Volume{GUID}\"),
            format!(r"\\?\Volume{GUID}"),
            format!("Volume{GUID}"),
        ] {
            assert_eq!(VolumeName::parse(&text).unwrap(), guid, "{text}");
        }
        assert_eq!(VolumeName::parse("e:").unwrap(), VolumeName::Drive('E'));
        assert_eq!(VolumeName::parse(r"E:\").unwrap(), VolumeName::Drive('E'));
        for bad in [
            "",
            "E",
            "EE:",
            r"\\?\Volume{xyz}\",
            r"\\?\Volume{0b7d4cf1-2a3e-4c5f-9d8a-1f2e3d4c5b6}\",
            r"\\.\PhysicalDrive0",
            "C:\\Windows",
        ] {
            assert!(VolumeName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_metadata_path_is_an_nt_path_on_another_volume() {
        let other = r"\\?\Volume{11111111-2222-3333-4444-555555555555}\";
        let target = format!("Volume{GUID}");
        assert_eq!(
            nt_metadata_path(r"D:\rehydrate\sys.meta", r"D:\", other, &target).unwrap(),
            r"\??\Volume{11111111-2222-3333-4444-555555555555}\rehydrate\sys.meta"
        );
        // A volume mounted in a folder.
        assert_eq!(
            nt_metadata_path(r"C:\mnt\data\m", r"C:\mnt\data\", other, &target).unwrap(),
            r"\??\Volume{11111111-2222-3333-4444-555555555555}\m"
        );
        assert!(matches!(
            nt_metadata_path(r"E:\m", r"E:\", &format!(r"\\?\Volume{GUID}\"), &target),
            Err(NameError::OnTarget(_))
        ));
        assert!(matches!(
            nt_metadata_path(r"D:\m", r"F:\", other, &target),
            Err(NameError::NotUnderRoot { .. })
        ));
        assert!(matches!(
            nt_metadata_path(r"C:\mntx\m", r"C:\mnt\", other, &target),
            Err(NameError::NotUnderRoot { .. })
        ));
    }

    #[test]
    fn reg_sz_is_utf16le_with_a_terminator() {
        assert_eq!(reg_sz("A:"), vec![b'A', 0, b':', 0, 0, 0]);
        assert_eq!(reg_sz(""), vec![0, 0]);
    }
}
