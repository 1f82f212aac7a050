//! The one error type of the core; `python.rs` maps it to `ValueError`.
use std::fmt;

/// Everything that can go wrong when the caller hands the core bad settings or state.
/// Bad beacons are not errors: they are data (rejections counted per reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A setting is unknown or out of range.
    Settings(String),
    /// A checkpoint could not be restored.
    Checkpoint(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Settings(m) => write!(f, "invalid settings: {m}"),
            CoreError::Checkpoint(m) => write!(f, "invalid checkpoint: {m}"),
        }
    }
}

impl std::error::Error for CoreError {}
