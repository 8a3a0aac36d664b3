//! [`StoreCatalog`]: the NBD catalog over a store.
//!
//! Export `NAME` is the newest version of volume `NAME` (resolved when a client opens
//! it, so one connection always sees one version); `NAME@N` is version `N`; the
//! journal's recovery points are `NAME@N+SEQ`, `NAME@mark:LABEL` and `NAME@time:RFC3339`
//! (see [`crate::journal`]). `NBD_OPT_LIST` lists every `NAME`, every `NAME@N`, every
//! mark and each journal's newest point. Names are parsed and checked
//! before anything touches the store, so an unknown, malformed or path-like name is an
//! unknown export and never reaches a file outside the store.

use std::sync::Arc;

use rehydrate_nbd::{BoxFuture, Catalog, Export, ExportError};

use crate::cache::ChunkCache;
use crate::error::BackupError;
use crate::export::VersionExport;
use crate::identity::{ExportIdentity, PointIdentity};
use crate::journal::export::PointExport;
use crate::journal::registry::JournalRegistry;
use crate::name::{ExportName, PointSpec, VolumeName};
use crate::store::ChunkStore;

/// The exports of one store.
pub struct StoreCatalog {
    cache: Arc<ChunkCache>,
    journals: Arc<JournalRegistry>,
}

impl StoreCatalog {
    /// A catalog over `store` with a shared chunk cache of `cache_bytes`.
    pub fn new(store: ChunkStore, cache_bytes: u64) -> Self {
        let journals =
            JournalRegistry::new(store.local_root().map(ToOwned::to_owned), store.name());
        Self {
            cache: Arc::new(ChunkCache::new(store, cache_bytes)),
            journals: Arc::new(journals),
        }
    }

    fn store(&self) -> &ChunkStore {
        self.cache.store()
    }

    /// The export `name` names (a version or a recovery point), if it exists.
    pub async fn open_any(&self, name: &str) -> Result<Option<Arc<dyn Export>>, BackupError> {
        let Some(wanted) = ExportName::parse(name) else {
            tracing::info!(name, "refused export name");
            return Ok(None);
        };
        Ok(match wanted.point {
            Some(spec) => self
                .open_point(wanted.volume, wanted.version, spec)
                .await?
                .map(|e| Arc::new(e) as Arc<dyn Export>),
            None => self
                .open_export(name)
                .await?
                .map(|e| Arc::new(e) as Arc<dyn Export>),
        })
    }

    /// The recovery point `spec` of `volume`: the base version's chunks plus the
    /// journal's interval map. `None` for a volume the store does not have.
    pub async fn open_point(
        &self,
        volume: VolumeName,
        version: Option<u32>,
        spec: PointSpec,
    ) -> Result<Option<PointExport>, BackupError> {
        if self.store().versions(&volume).await?.is_empty() {
            return Ok(None);
        }
        let registry = Arc::clone(&self.journals);
        let v = volume.clone();
        let opened = tokio::task::spawn_blocking(move || registry.open_point(&v, version, &spec))
            .await
            .map_err(|e| BackupError::Internal(e.to_string()))??;
        let base = opened.found.base;
        let Some(base_export) = self.open_export(&format!("{volume}@{base}")).await? else {
            return Err(BackupError::VersionNotFound {
                volume: volume.to_string(),
                version: base,
            });
        };
        if opened.base_index_checksum != Some(base_export.identity().index_checksum) {
            return Err(crate::journal::JournalError::Misplaced {
                path: crate::journal::journal_dir(
                    self.store()
                        .local_root()
                        .unwrap_or(std::path::Path::new("")),
                    &volume,
                    base,
                ),
                reason: format!("it was not written over the index of {volume}@{base}"),
            }
            .into());
        }
        let identity = ExportIdentity {
            point: Some(PointIdentity {
                seq: opened.found.point.seq,
                digest: opened.found.point.digest,
            }),
            ..base_export.identity().clone()
        };
        Ok(Some(PointExport::new(
            base_export,
            opened.map,
            opened.files,
            identity,
        )))
    }

    /// The version `name` names (`NAME` or `NAME@N`), if it exists.
    pub async fn open_export(&self, name: &str) -> Result<Option<VersionExport>, BackupError> {
        let Some(wanted) = ExportName::parse(name).filter(|w| w.point.is_none()) else {
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
            let registry = Arc::clone(&self.journals);
            let v = volume.clone();
            let points = tokio::task::spawn_blocking(move || registry.list(&v))
                .await
                .map_err(|e| BackupError::Internal(e.to_string()))?;
            match points {
                Ok(points) => out.extend(points),
                // A damaged journal must not hide the versions; opening says why.
                Err(e) => tracing::warn!(%volume, %e, "journal not listed"),
            }
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
        Box::pin(async move { self.open_any(&name).await.map_err(to_export_error) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ExportError>> {
        Box::pin(async move { self.list_exports().await.map_err(to_export_error) })
    }
}
