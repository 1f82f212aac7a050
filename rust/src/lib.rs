//! rumline's core: beacon parsing, sessionizing, Apdex and UX score.
//!
//! Pure Rust; the only file that knows `PyO3` is `python.rs`, behind the `python` feature, so
//! `cargo test` runs without libpython. The rules are written down in `docs/sessionizer.md`.
pub mod apdex;
pub mod error;
pub mod intern;
pub mod privacy;
pub mod settings;
pub mod useragent;
pub mod ux;
pub mod beacon;
pub mod checkpoint;
pub mod codec;
pub mod json;
pub mod record;
pub mod session;
pub mod sessionizer;
pub mod wire;

#[cfg(feature = "python")]
mod python;

pub use error::CoreError;
pub use sessionizer::{prepare, Output, Prepared, Request, Sessionizer};
pub use settings::Settings;

