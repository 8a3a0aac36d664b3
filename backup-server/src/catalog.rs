//! [`StoreCatalog`]: the NBD catalog over a store.
//!
//! Export `NAME` is the newest version of volume `NAME` (resolved when a client opens
//! it, so one connection always sees one version); `NAME@N` is version `N`.
//! `NBD_OPT_LIST` lists every `NAME` and every `NAME@N`. Names are parsed and checked
//! before anything touches the store, so an unknown, malformed or path-like name is an
//! unknown export and never reaches a file outside the store.

use std::sync::Arc;

use rehydrate_nbd::{BoxFuture, Catalog, Export, ExportError};

use crate::cache::ChunkCache;
use crate::error::BackupError;
use crate::export::VersionExport;
use crate::name::ExportName;
use crate::store::ChunkStore;

/// The exports of one store.
pub struct StoreCatalog {
    cache: Arc<ChunkCache>,
}

impl StoreCatalog {
    /// A catalog over `store` with a shared chunk cache of `cache_bytes`.
    pub fn new(store: ChunkStore, cache_bytes: u64) -> Self {
        Self {
            cache: Arc::new(ChunkCache::new(store, cache_bytes)),
        }
    }

    fn store(&self) -> &ChunkStore {
        self.cache.store()
    }

    /// The export `name` names, if it exists.
    pub async fn open_export(&self, name: &str) -> Result<Option<VersionExport>, BackupError> {
        let Some(wanted) = ExportName::parse(name) else {
            tracing::info!(name, "refused export name");
            return Ok(None);
        };
        let version = match wanted.version {
            Some(v) => v,
            None => match self.store().latest_version(&wanted.volume).await? {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        let index = match self.store().read_index(&wanted.volume, version).await {
            Ok(index) => index,
            Err(BackupError::VersionNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let path = format!("{}@{version}", wanted.volume);
        let export = VersionExport::new(
            wanted.volume,
            version,
            Arc::new(index),
            Arc::clone(&self.cache),
        )
        .map_err(|source| BackupError::Index { path, source })?;
        Ok(Some(export))
    }

    /// Every export name with its description.
    pub async fn list_exports(&self) -> Result<Vec<(String, String)>, BackupError> {
        let mut out = Vec::new();
        for volume in self.store().volumes().await? {
            let versions = self.store().versions(&volume).await?;
            let Some(newest) = versions.last() else {
                continue;
            };
            out.push((
                volume.to_string(),
                format!("newest version of {volume} (version {newest})"),
            ));
            out.extend(
                versions
                    .iter()
                    .map(|v| (format!("{volume}@{v}"), format!("version {v} of {volume}"))),
            );
        }
        Ok(out)
    }
}

fn to_export_error(e: BackupError) -> ExportError {
    ExportError::Io(std::io::Error::other(e.to_string()))
}

impl Catalog for StoreCatalog {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Option<Arc<dyn Export>>, ExportError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let export = self.open_export(&name).await.map_err(to_export_error)?;
            Ok(export.map(|e| Arc::new(e) as Arc<dyn Export>))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ExportError>> {
        Box::pin(async move { self.list_exports().await.map_err(to_export_error) })
    }
}
