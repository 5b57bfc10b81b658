//! Scheduling policy: pure filter and score units over plain structs (no I/O).
pub mod types;

pub use types::*;
