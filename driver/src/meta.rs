//! Persistent metadata (being written).
