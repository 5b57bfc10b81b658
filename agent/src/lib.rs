//! wattwise-agent: the node agent (library part; `main.rs` wires it up).
pub mod api;
pub mod calibrator;
pub mod config;
pub mod health;
pub mod model;
pub mod report;
pub mod resident;
pub mod run;
pub mod sensors;
pub mod stream;
