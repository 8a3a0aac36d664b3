//! The server's journals: each loaded once and refreshed (only what was appended since
//! is scanned) whenever a point of its volume is opened or listed, and the interval
//! maps of recently opened points, so reconnects and parallel connections to a point
//! share one map.

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::map::PointMap;
use super::resolve::{resolve, Found, Journals};
use super::{Journal, JournalError};
use crate::name::{format_rfc3339, PointSpec, VolumeName};

/// Point maps kept (each is a few words per journal extent).
pub const MAPS_KEPT: usize = 16;

type Key = (VolumeName, u32);

/// A point ready to serve.
#[derive(Clone, Debug)]
pub struct OpenedPoint {
    /// Which point.
    pub found: Found,
    /// Its interval map.
    pub map: Arc<PointMap>,
    /// The journal's segment files, by index.
    pub files: Arc<Vec<Arc<File>>>,
    /// The base index checksum the journal was written over.
    pub base_index_checksum: Option<[u8; 32]>,
}

/// The journals of one local store.
pub struct JournalRegistry {
    root: Option<PathBuf>,
    shown: String,
    journals: Mutex<HashMap<Key, Arc<Mutex<Journal>>>>,
    maps: Mutex<LruCache<(VolumeName, u32, u64), Arc<PointMap>>>,
}

impl JournalRegistry {
    /// The journals under a local store's `root` (`None`: an object store, which has
    /// none; `shown` names it in errors).
    pub fn new(root: Option<PathBuf>, shown: &str) -> JournalRegistry {
        JournalRegistry {
            root,
            shown: shown.to_owned(),
            journals: Mutex::new(HashMap::new()),
            maps: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAPS_KEPT).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    fn root(&self) -> Result<&PathBuf, JournalError> {
        self.root
            .as_ref()
            .ok_or_else(|| JournalError::NeedsLocalStore(self.shown.clone()))
    }

    fn loaded(&self, volume: &VolumeName, base: u32) -> Result<Arc<Mutex<Journal>>, JournalError> {
        let root = self.root()?;
        let key = (volume.clone(), base);
        let existing = lock(&self.journals).get(&key).cloned();
        let journal = match existing {
            Some(j) => {
                lock(&j).refresh()?;
                j
            }
            None => {
                let j = Arc::new(Mutex::new(Journal::open(root, volume, base)?));
                lock(&self.journals).entry(key).or_insert(j).clone()
            }
        };
        Ok(journal)
    }

    /// Finds and prepares the point `spec` of `volume` (blocking: reads segments).
    pub fn open_point(
        &self,
        volume: &VolumeName,
        version: Option<u32>,
        spec: &PointSpec,
    ) -> Result<OpenedPoint, JournalError> {
        let root = self.root()?.clone();
        let found = resolve(
            &root,
            volume,
            version,
            spec,
            &Loader {
                registry: self,
                volume,
            },
        )?;
        let journal = self.loaded(volume, found.base)?;
        let key = (volume.clone(), found.base, found.point.seq);
        let cached = lock(&self.maps).get(&key).cloned();
        let journal = lock(&journal);
        let map = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(PointMap::build(&journal, found.point.seq));
                lock(&self.maps).put(key, Arc::clone(&m));
                m
            }
        };
        Ok(OpenedPoint {
            found,
            map,
            files: Arc::new(journal.files()),
            base_index_checksum: journal.header().map(|h| h.base_index_checksum),
        })
    }

    /// The export names of `volume`'s marks and of each journal's newest point, with a
    /// description each (blocking).
    pub fn list(&self, volume: &VolumeName) -> Result<Vec<(String, String)>, JournalError> {
        let Some(root) = &self.root else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for base in super::bases(root, volume)? {
            let journal = self.loaded(volume, base)?;
            let j = lock(&journal);
            for p in j.points().iter().filter(|p| p.label.is_some()) {
                let label = p.label.as_deref().unwrap_or_default();
                out.push((
                    format!("{volume}@mark:{label}"),
                    format!(
                        "mark {label} of {volume} ({volume}@{base}+{}, {})",
                        p.seq,
                        format_rfc3339(p.time_unix_ns)
                    ),
                ));
            }
            if let Some(p) = j.points().last() {
                out.push((
                    format!("{volume}@{base}+{}", p.seq),
                    format!(
                        "newest point of the journal of {volume}@{base} ({})",
                        format_rfc3339(p.time_unix_ns)
                    ),
                ));
            }
        }
        Ok(out)
    }
}

struct Loader<'a> {
    registry: &'a JournalRegistry,
    volume: &'a VolumeName,
}

impl Journals for Loader<'_> {
    fn journal(&self, base: u32, f: &mut dyn FnMut(&Journal)) -> Result<(), JournalError> {
        let j = self.registry.loaded(self.volume, base)?;
        f(&lock(&j));
        Ok(())
    }
}

/// A poisoned lock only means another request panicked mid-way; the data it guards is
/// rebuilt from the files on the next refresh, so carry on.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
