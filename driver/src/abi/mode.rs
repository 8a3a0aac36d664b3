//! The restore's mode and the map selector: small enums on the wire (ABI version 2).

/// How a restore treats the application's writes. Crosses the ABI as a `u32`; zero is
/// never a mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RestoreMode {
    /// Instant restore in place (T1): the application writes the volume being restored.
    InPlace = 1,
    /// Overlay restore (T2): the application runs on a pseudo-volume whose writes go to
    /// an overlay until a guarded cutover merges them into the destination.
    Overlay = 2,
}

impl RestoreMode {
    /// Decodes the ABI value; unknown values are `None`.
    pub const fn from_u32(value: u32) -> Option<RestoreMode> {
        match value {
            1 => Some(RestoreMode::InPlace),
            2 => Some(RestoreMode::Overlay),
            _ => None,
        }
    }
}

/// Which region map a bitmap query reads. Crosses the ABI as a `u32`; zero is never a
/// map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MapSelector {
    /// The restore map (D in the overlay mode): regions restored.
    Restored = 1,
    /// The overlay map (O): regions whose current data is in the overlay.
    Overlay = 2,
}

impl MapSelector {
    /// Decodes the ABI value; unknown values are `None`.
    pub const fn from_u32(value: u32) -> Option<MapSelector> {
        match value {
            1 => Some(MapSelector::Restored),
            2 => Some(MapSelector::Overlay),
            _ => None,
        }
    }
}
