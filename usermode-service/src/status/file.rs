//! Where the status file lives, writing it atomically, and reading it back with bounds.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{StatusError, StatusSnapshot, STATUS_FORMAT};

/// Largest status file a reader accepts: a snapshot is a few hundred bytes, so anything
/// this large is not one (rule 7: untrusted input is bounded before it is parsed).
pub const STATUS_FILE_MAX_BYTES: u64 = 64 * 1024;

const FILE_NAME: &str = "status.json";
/// Prefix of the default status file of one restore target: `restore-HASH.json`.
const TARGET_PREFIX: &str = "restore-";

/// The status file's path: `given` if any, else the default (module comment).
pub fn status_path(given: Option<&Path>) -> Result<PathBuf, StatusError> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    default_dir().map(|dir| dir.join(FILE_NAME))
}

/// The default status file of a restore into `target`: one per target, so two restores
/// never overwrite each other's status. `HASH` is 16 hex digits of BLAKE3 of the
/// target's absolute path.
pub fn target_status_path(target: &Path) -> Result<PathBuf, StatusError> {
    let absolute = std::path::absolute(target).unwrap_or_else(|_| target.to_owned());
    let hash = blake3::hash(absolute.as_os_str().as_encoded_bytes());
    let hex: String = hash.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    default_dir().map(|dir| dir.join(format!("{TARGET_PREFIX}{hex}.json")))
}

/// Every status file in the default directory (the demo's and one per restore
/// target), in no particular order; none when the directory does not exist.
pub fn default_status_files() -> Result<Vec<PathBuf>, StatusError> {
    let dir = default_dir()?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StatusError::Io {
                op: "list",
                path: dir,
                source,
            })
        }
    };
    Ok(entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n == FILE_NAME || (n.starts_with(TARGET_PREFIX) && n.ends_with(".json"))
            })
        })
        .collect())
}

pub(crate) fn default_dir() -> Result<PathBuf, StatusError> {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        // The spec says a relative value must be ignored.
        Some(dir) if Path::new(&dir).is_absolute() => Ok(PathBuf::from(dir).join("rehydrate")),
        _ => uid_dir(),
    }
}

#[cfg(unix)]
fn uid_dir() -> Result<PathBuf, StatusError> {
    let uid = rustix::process::getuid().as_raw();
    Ok(std::env::temp_dir().join(format!("rehydrate-{uid}")))
}

/// Windows: the user's own local application data.
#[cfg(not(unix))]
fn uid_dir() -> Result<PathBuf, StatusError> {
    std::env::var_os("LOCALAPPDATA")
        .map(|dir| PathBuf::from(dir).join("rehydrate"))
        .filter(|dir| dir.is_absolute())
        .ok_or(StatusError::NoDefaultPath)
}

/// A status file being written: each [`write`](Self::write) replaces it whole.
#[derive(Debug)]
pub struct StatusFile {
    path: PathBuf,
    temp: PathBuf,
}

impl StatusFile {
    /// Prepares to write the status file at `given`, or at the default location. Creates
    /// the directory (mode 0700) if missing; the default directory must then be a
    /// directory this user owns that nobody else can enter, because under `/tmp` another
    /// user could have created it first.
    pub fn create(given: Option<&Path>) -> Result<StatusFile, StatusError> {
        let path = status_path(given)?;
        Self::at(path, given.is_none())
    }

    /// Like [`StatusFile::create`], but the default is the file of restore target
    /// `target` ([`target_status_path`]).
    pub fn for_target(given: Option<&Path>, target: &Path) -> Result<StatusFile, StatusError> {
        let path = match given {
            Some(p) => p.to_owned(),
            None => target_status_path(target)?,
        };
        Self::at(path, given.is_none())
    }

    fn at(path: PathBuf, default: bool) -> Result<StatusFile, StatusError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir)?;
        if default {
            check_private_dir(&dir)?;
        }
        // Same directory as the file, so the rename is atomic; the pid keeps two writers
        // that share a path from renaming each other's half-written file.
        let mut temp_name = OsString::from(".");
        temp_name.push(path.file_name().unwrap_or(FILE_NAME.as_ref()));
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let temp = dir.join(temp_name);
        Ok(StatusFile { path, temp })
    }

    /// The status file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `snapshot`: a reader sees the old snapshot or this one.
    /// No fsync: the file describes a live process and means nothing after a crash.
    pub fn write(&self, snapshot: &StatusSnapshot) -> Result<(), StatusError> {
        debug_assert_eq!(snapshot.format, STATUS_FORMAT);
        let mut bytes = serde_json::to_vec_pretty(snapshot).map_err(|e| StatusError::Io {
            op: "encode status for",
            path: self.path.clone(),
            source: e.into(),
        })?;
        bytes.push(b'\n');
        debug_assert!(bytes.len() as u64 <= STATUS_FILE_MAX_BYTES);
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| StatusError::Io { op, path, source }
        };
        std::fs::write(&self.temp, &bytes).map_err(io("write", &self.temp))?;
        if let Err(e) = std::fs::rename(&self.temp, &self.path) {
            let _ = std::fs::remove_file(&self.temp);
            return Err(io("rename into", &self.path)(e));
        }
        Ok(())
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), StatusError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StatusError::Io {
            op: "create directory",
            path: dir.to_owned(),
            source,
        })
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), StatusError> {
    std::fs::create_dir_all(dir).map_err(|source| StatusError::Io {
        op: "create directory",
        path: dir.to_owned(),
        source,
    })
}

#[cfg(unix)]
fn check_private_dir(dir: &Path) -> Result<(), StatusError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|source| StatusError::Io {
        op: "inspect",
        path: dir.to_owned(),
        source,
    })?;
    let ours = meta.uid() == rustix::process::getuid().as_raw();
    if !meta.is_dir() || !ours || meta.mode() & 0o077 != 0 {
        return Err(StatusError::UnsafeDirectory {
            path: dir.to_owned(),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_dir(_dir: &Path) -> Result<(), StatusError> {
    Ok(())
}

/// Only the version, read first so a file of another format gets its own error rather
/// than a confusing missing-field one.
#[derive(serde::Deserialize)]
struct FormatOnly {
    format: u32,
}

/// Reads and checks the snapshot at `path`.
pub fn read_status(path: &Path) -> Result<StatusSnapshot, StatusError> {
    let file = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => StatusError::NotFound(path.to_owned()),
        _ => StatusError::Io {
            op: "open",
            path: path.to_owned(),
            source,
        },
    })?;
    let mut bytes = Vec::new();
    file.take(STATUS_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| StatusError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > STATUS_FILE_MAX_BYTES {
        return Err(StatusError::TooLarge {
            path: path.to_owned(),
            size_bytes: bytes.len() as u64,
            max_bytes: STATUS_FILE_MAX_BYTES,
        });
    }
    let parse = |source| StatusError::Parse {
        path: path.to_owned(),
        source,
    };
    let found = serde_json::from_slice::<FormatOnly>(&bytes)
        .map_err(parse)?
        .format;
    if found != STATUS_FORMAT {
        return Err(StatusError::Format {
            path: path.to_owned(),
            found,
            expected: STATUS_FORMAT,
        });
    }
    serde_json::from_slice(&bytes).map_err(parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Phase;

    #[test]
    fn a_written_snapshot_reads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/status.json");
        let file = StatusFile::create(Some(&path)).unwrap();
        let mut snap = StatusSnapshot::starting("nbd://h/x", "/dev/null");
        file.write(&snap).unwrap();
        snap.phase = Phase::Complete;
        snap.bytes_total = 10;
        snap.bytes_restored = 10;
        snap.eta_secs = Some(0);
        file.write(&snap).unwrap();
        assert_eq!(read_status(&path).unwrap(), snap);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("status.json")]);
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        assert!(matches!(read_status(&path), Err(StatusError::NotFound(_))));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(read_status(&path), Err(StatusError::Parse { .. })));
        std::fs::write(&path, br#"{"format": 99}"#).unwrap();
        assert!(matches!(
            read_status(&path),
            Err(StatusError::Format { found: 99, .. })
        ));
        std::fs::write(&path, br#"{"format": 1, "pid": 3}"#).unwrap();
        assert!(matches!(read_status(&path), Err(StatusError::Parse { .. })));
        std::fs::write(&path, vec![b' '; STATUS_FILE_MAX_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            read_status(&path),
            Err(StatusError::TooLarge { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn the_default_directory_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_private_dir(&shared),
            Err(StatusError::UnsafeDirectory { .. })
        ));
        let private = dir.path().join("private");
        create_private_dir(&private).unwrap();
        check_private_dir(&private).unwrap();
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_given_path_wins() {
        let p = Path::new("/x/y.json");
        assert_eq!(status_path(Some(p)).unwrap(), p);
        assert!(status_path(None)
            .unwrap()
            .ends_with(Path::new("status.json")));
    }
}
