//! wattwise-scheduler: binds pods that opt in (`spec.schedulerName: wattwise`) to the node with the
//! best energy level and the lowest predicted power increase.
//!
//! - [`policy`]: pure filter and score units over plain structs (no I/O).
pub mod policy;
