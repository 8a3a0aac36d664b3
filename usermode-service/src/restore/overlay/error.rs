//! What the overlay mode and the cutover refuse, each a clear line.

use std::path::PathBuf;

use rehydrate_driver::engine::overlay::RecordError;

/// Why an overlay restore or a cutover cannot go on. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// `--overlay` for metadata of an in-place restore.
    #[error("metadata {0} belongs to an in-place restore, whose target takes the application's writes: run it without --overlay, or remove the metadata to start an overlay restore")]
    InPlaceMetadata(PathBuf),
    /// No `--overlay` for metadata of an overlay restore.
    #[error("metadata {0} belongs to an overlay restore: give --overlay with the overlay it was started with (without it the application's writes would be lost)")]
    OverlayMetadata(PathBuf),
    /// The overlay has another size than the volume.
    #[error("overlay {path} holds {size_bytes} bytes but the volume has {expected_bytes}: it belongs to another restore or was changed; give the overlay this restore was started with")]
    WrongSize {
        /// The overlay.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// The volume's size.
        expected_bytes: u64,
    },
    /// The overlay is not the file the restore was started with.
    #[error("overlay {0} is not the overlay this restore was started with (another file, or one created anew): give that overlay, or remove the metadata to start over")]
    AnotherRestore(PathBuf),
    /// The restore was started with an overlay that is gone.
    #[error("overlay {0} does not exist, but the restore was started with one holding the application's writes: give that overlay (or remove the metadata to start over, losing them)")]
    Missing(PathBuf),
    /// A new overlay restore names an overlay that exists.
    #[error("overlay {0} exists already: a new overlay restore starts with a new, empty overlay; remove it or give another path")]
    Exists(PathBuf),
    /// The overlay is the target or the metadata.
    #[error("overlay {overlay} is the same file as {other}; give the overlay a path of its own")]
    SameFile {
        /// The overlay.
        overlay: PathBuf,
        /// The target or the metadata.
        other: PathBuf,
    },
    /// The overlay map's record cannot be read.
    #[error("metadata {path}: the overlay record is damaged ({source}); remove the metadata to start over")]
    Record {
        /// The metadata file.
        path: PathBuf,
        /// Why.
        source: RecordError,
    },
    /// The cutover was refused by the engine.
    #[error("cutover refused: {0}; nothing was changed")]
    Refused(String),
    /// The cutover began and stopped on an error; running it again starts over.
    #[error(
        "cutover stopped: {0}; the volume is still served from the overlay, run the cutover again"
    )]
    Failed(String),
    /// The running restore's control socket could not be used.
    #[error("cannot reach the running restore at {path}: {source}")]
    Control {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
