//! rumline's core: beacon parsing, sessionizing, Apdex and UX score.
//!
//! Pure Rust; the only file that knows PyO3 is `python.rs`, behind the `python` feature, so
//! `cargo test` runs without libpython.
pub fn placeholder() {}
