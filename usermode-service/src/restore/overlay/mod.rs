//! The overlay restore on Linux (`rehydrate restore ... --overlay PATH --export ADDR`,
//! technique T2): the live export serves a *pseudo-volume* whose writes go to the
//! overlay file, while the restore fills the target (the destination) with nothing but
//! backup data; `rehydrate cutover` ([`cutover`]) merges the overlay into the target
//! once it is complete. The engine is the driver's overlay mode; this module
//! sets it up: the mode check against the metadata, the overlay file and its pin, the
//! overlay map and its record.
//!
//! The overlay is a sparse file of the volume's size, at the same offsets. It is pinned
//! in the metadata (its identity and size, in the overlay map's record), so a resumed
//! restore refuses an overlay of another restore, one of the wrong size, a missing one,
//! and any overlay for metadata of an in-place restore (and the other way round).

pub mod control;
pub mod cutover;
pub mod error;

use std::path::Path;
use std::sync::Arc;

use rehydrate_driver::engine::either::Core;
use rehydrate_driver::engine::overlay::{
    OverlayConfig, OverlayEngine, OverlayPin, Record, State, OVERLAY_MAP,
};
use rehydrate_driver::meta::{Header, MetaStore, Metadata, NamedMap};
use rehydrate_driver::{Geometry, RegionMap};

pub use error::OverlayError;

use super::target::Target;
use crate::error::ServiceError;

/// Refuses `--overlay` for an in-place restore's metadata and its absence for an
/// overlay restore's.
pub fn check_mode(
    overlay: Option<&Path>,
    header: Option<&Header>,
    metadata: &Path,
) -> Result<(), OverlayError> {
    let Some(header) = header else {
        return Ok(());
    };
    match (overlay.is_some(), header.maps.find(&OVERLAY_MAP).is_some()) {
        (true, false) => Err(OverlayError::InPlaceMetadata(metadata.to_owned())),
        (false, true) => Err(OverlayError::OverlayMetadata(metadata.to_owned())),
        _ => Ok(()),
    }
}

/// Opens (and locks) the overlay of a restore: a new, sparse one of `size_bytes` for a
/// new restore (`fresh`), else the existing one, which must have exactly that size.
/// It must be neither the target nor the metadata.
pub fn open_file(
    path: &Path,
    size_bytes: u64,
    fresh: bool,
    target: &Target,
    metadata: &Path,
) -> Result<Target, ServiceError> {
    let same = |other: &Path| OverlayError::SameFile {
        overlay: path.to_owned(),
        other: other.to_owned(),
    };
    if super::paths::check_distinct(path, metadata).is_err() {
        return Err(same(metadata).into());
    }
    // Before opening (and locking) it: the target is locked by this run already.
    let is_target = std::fs::File::open(path)
        .and_then(|f| super::target_id::same_file(&f, target.file()))
        .unwrap_or(false);
    if is_target || super::paths::check_distinct(path, target.path()).is_err() {
        return Err(same(target.path()).into());
    }
    let file = match (Target::open_existing(path)?, fresh) {
        (Some(file), true) if file_len(&file) > 0 => {
            return Err(OverlayError::Exists(path.to_owned()).into())
        }
        (Some(file), _) => file,
        (None, true) => Target::create(path, size_bytes)?,
        (None, false) => return Err(OverlayError::Missing(path.to_owned()).into()),
    };
    let len = file_len(&file);
    if fresh && len == 0 {
        // An empty file given for a new restore becomes the overlay.
        file.file()
            .set_len(size_bytes)
            .map_err(|source| ServiceError::TargetIo {
                op: "size",
                path: path.to_owned(),
                source,
            })?;
    } else if len != size_bytes {
        return Err(OverlayError::WrongSize {
            path: path.to_owned(),
            size_bytes: len,
            expected_bytes: size_bytes,
        }
        .into());
    }
    Ok(file)
}

fn file_len(file: &Target) -> u64 {
    file.file().metadata().map_or(0, |m| m.len())
}

/// What the metadata records to know the overlay again.
pub fn pin_of(file: &Target, size_bytes: u64) -> Result<OverlayPin, ServiceError> {
    let pin = file.pin()?;
    Ok(OverlayPin {
        kind: pin.kind as u8,
        size_bytes,
        id: pin.id,
    })
}

/// A new overlay restore's metadata: the overlay map's record, durable before the
/// first write can be taken.
pub fn start<S: MetaStore>(
    meta: &mut Metadata,
    store: &mut S,
    pin: OverlayPin,
    path: &Path,
) -> Result<(), ServiceError> {
    let meta_err = |source| ServiceError::Metadata {
        path: path.to_owned(),
        source,
    };
    let index = meta
        .maps()
        .find(&OVERLAY_MAP)
        .ok_or(OverlayError::InPlaceMetadata(path.to_owned()))?;
    meta.set_record(index, Record::new(pin).encode())
        .map_err(meta_err)?;
    meta.commit(store, |_| 0).map_err(meta_err)?;
    Ok(())
}

/// The overlay mode's engine over the restore map `d`: the overlay map loaded from the
/// metadata and attached to it, the record checked against the overlay (`pin`).
/// Returns the engine and O in memory (for block status).
pub fn engine<S: MetaStore>(
    meta: &mut Metadata,
    store: &mut S,
    d: &Arc<RegionMap>,
    pin: OverlayPin,
    overlay: &Path,
    metadata: &Path,
) -> Result<(Core, Arc<RegionMap>), ServiceError> {
    let meta_err = |source| ServiceError::Metadata {
        path: metadata.to_owned(),
        source,
    };
    let geometry: Geometry = *d.geometry();
    let index = meta
        .maps()
        .find(&OVERLAY_MAP)
        .ok_or(OverlayError::InPlaceMetadata(metadata.to_owned()))?;
    let record = Record::decode(&meta.maps().entries()[index].record).map_err(|source| {
        OverlayError::Record {
            path: metadata.to_owned(),
            source,
        }
    })?;
    if record.overlay.size_bytes != pin.size_bytes {
        return Err(OverlayError::WrongSize {
            path: overlay.to_owned(),
            size_bytes: pin.size_bytes,
            expected_bytes: record.overlay.size_bytes,
        }
        .into());
    }
    if record.overlay != pin {
        return Err(OverlayError::AnotherRestore(overlay.to_owned()).into());
    }
    let o = Arc::new(NamedMap::new(geometry).map_err(meta_err)?);
    let load = meta.load_map(store, index, &o).map_err(meta_err)?;
    if !load.intact && record.state != State::Merged {
        // A page of O with no valid slot: its regions would read the destination's
        // backup data over the application's writes. Never guess.
        return Err(ServiceError::Metadata {
            path: metadata.to_owned(),
            source: rehydrate_driver::meta::MetaError::MapTable(
                "the overlay map is damaged, the application's writes cannot be found",
            ),
        });
    }
    meta.attach(index, Arc::clone(&o)).map_err(meta_err)?;
    let engine = OverlayEngine::new(Arc::clone(d), o, record, OverlayConfig::default())?;
    let in_memory = Arc::clone(engine.overlay_map());
    tracing::info!(
        state = record.state.name(),
        overlay_regions = in_memory.restored_count(),
        "restore: overlay mode"
    );
    Ok((Core::Overlay { engine, map: index }, in_memory))
}

/// An overlay restore ready to run: its engine, O, the overlay file and the control
/// socket's commands.
pub struct Opened {
    /// The overlay mode's engine.
    pub core: Core,
    /// O in memory (block status reads it).
    pub map: Arc<RegionMap>,
    /// The overlay file.
    pub file: Arc<Target>,
    /// Cutovers asked for on the control socket.
    pub commands: control::Receiver,
    /// The control socket, removed when dropped.
    pub listening: control::Listening,
}

/// Opens the overlay at `path` for the restore whose metadata `meta` was just opened
/// (`fresh`: created by this run): the file checked against its pin (or created and
/// pinned, durably, before any write is taken), the engine over `d`, the control
/// socket beside the metadata.
#[allow(clippy::too_many_arguments)]
pub fn open<S: MetaStore>(
    path: &Path,
    size_bytes: u64,
    fresh: bool,
    target: &Target,
    meta: &mut Metadata,
    store: &mut S,
    d: &Arc<RegionMap>,
    metadata: &Path,
) -> Result<Opened, ServiceError> {
    let file = open_file(path, size_bytes, fresh, target, metadata)?;
    let pin = pin_of(&file, size_bytes)?;
    if fresh {
        start(meta, store, pin, metadata)?;
    }
    let (core, map) = engine(meta, store, d, pin, path, metadata)?;
    let (commands, listening) =
        control::listen(metadata).map_err(|source| OverlayError::Control {
            path: control::socket_path(metadata),
            source,
        })?;
    Ok(Opened {
        core,
        map,
        file: Arc::new(file),
        commands,
        listening,
    })
}
