//! The driver/service ABI (being written).
