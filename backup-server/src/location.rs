//! Turning `--store STORE` into an object store.
//!
//! - a directory path (`/srv/backups`, `./store`): the local file system
//!   (`object_store::local::LocalFileSystem`), created on backup if missing;
//! - `file:///srv/backups`: the same;
//! - `s3://bucket/prefix`: any S3-compatible store (always built in), configured from
//!   the usual `AWS_*` environment variables (see README.md).

use std::path::PathBuf;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

use crate::error::BackupError;

/// Where a store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory.
    Local(PathBuf),
    /// An object store URL (`s3://bucket/prefix`).
    Url(String),
}

impl StoreLocation {
    /// Parse a `--store` argument.
    pub fn parse(text: &str) -> Result<Self, BackupError> {
        if text.is_empty() {
            return Err(invalid(text, "empty"));
        }
        match text.split_once("://") {
            None => Ok(Self::Local(PathBuf::from(text))),
            Some(("file", path)) if path.starts_with('/') => Ok(Self::Local(PathBuf::from(path))),
            Some(("file", _)) => Err(invalid(text, "a file:// URL needs an absolute path")),
            Some((scheme, _)) if scheme.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                Ok(Self::Url(text.to_owned()))
            }
            Some(_) => Err(invalid(text, "not a directory path or an object store URL")),
        }
    }

    /// Open the store; `create` makes a missing local directory.
    pub(crate) fn open(
        &self,
        create: bool,
    ) -> Result<(Arc<dyn ObjectStore>, Option<PathBuf>), BackupError> {
        match self {
            Self::Local(dir) => {
                let shown = dir.display().to_string();
                if create {
                    std::fs::create_dir_all(dir).map_err(|e| invalid(&shown, &e.to_string()))?;
                }
                let root = dir
                    .canonicalize()
                    .map_err(|e| invalid(&shown, &e.to_string()))?;
                if !root.is_dir() {
                    return Err(invalid(&shown, "not a directory"));
                }
                let fs = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| invalid(&shown, &e.to_string()))?;
                Ok((Arc::new(fs), Some(root)))
            }
            Self::Url(url) => Ok((open_url(url)?, None)),
        }
    }
}

fn open_url(text: &str) -> Result<Arc<dyn ObjectStore>, BackupError> {
    use object_store::aws::AmazonS3Builder;
    use object_store::prefix::PrefixStore;

    let parsed = url::Url::parse(text).map_err(|e| invalid(text, &e.to_string()))?;
    if parsed.scheme() != "s3" {
        return Err(invalid(
            text,
            "unsupported URL scheme (use a directory path, file:// or s3://)",
        ));
    }
    let bucket = parsed
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| invalid(text, "no bucket"))?;
    // Publishing relies on put-if-not-exists (`PutMode::Create`), which the builder
    // does with `If-None-Match` by default (`AWS_CONDITIONAL_PUT=etag`).
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| invalid(text, &e.to_string()))?;
    let prefix = parsed.path().trim_matches('/');
    if prefix.is_empty() {
        return Ok(Arc::new(store));
    }
    let prefix =
        object_store::path::Path::parse(prefix).map_err(|e| invalid(text, &e.to_string()))?;
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

fn invalid(store: &str, reason: &str) -> BackupError {
    BackupError::InvalidStore {
        store: store.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_urls() {
        assert_eq!(
            StoreLocation::parse("/srv/b").unwrap(),
            StoreLocation::Local("/srv/b".into())
        );
        assert_eq!(
            StoreLocation::parse("rel/dir").unwrap(),
            StoreLocation::Local("rel/dir".into())
        );
        assert_eq!(
            StoreLocation::parse("file:///srv/b").unwrap(),
            StoreLocation::Local("/srv/b".into())
        );
        assert_eq!(
            StoreLocation::parse("s3://bkt/pre").unwrap(),
            StoreLocation::Url("s3://bkt/pre".into())
        );
        assert!(StoreLocation::parse("").is_err());
        assert!(StoreLocation::parse("file://rel").is_err());
    }

    #[test]
    fn other_schemes_say_what_is_supported() {
        let err = StoreLocation::parse("gs://bkt/pre")
            .unwrap()
            .open(false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3://"), "{err}");
    }

    #[test]
    fn s3_urls_open_without_a_network_round_trip() {
        // Building the client checks the URL and settings only; nothing is sent.
        let loc = StoreLocation::parse("s3://bkt/some/prefix").unwrap();
        assert!(loc.open(false).is_ok());
        let err = StoreLocation::parse("s3:///nobucket")
            .unwrap()
            .open(false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no bucket"), "{err}");
    }
}
