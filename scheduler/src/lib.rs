//! wattwise-scheduler: binds pods that opt in (`spec.schedulerName: wattwise`) to the node with the
//! best energy level and the lowest predicted power increase.
//!
//! - [`policy`]: pure filter and score units over plain structs (no I/O).
//! - [`cluster`]: Kubernetes at the edges: conversion, the cache, watches, leader election,
//!   events.
//! - [`queue`]: pending pods, priority then FIFO, with backoff.
//! - [`scheduling`]: the decision loop and binds.
//! - [`api`]: the `PowerReports` gRPC server and Prometheus metrics.
//! - [`health`]: whether the caches are in sync, for `/readyz`.
pub mod api;
pub mod cluster;
pub mod config;
pub mod health;
pub mod policy;
pub mod queue;
pub mod run;
pub mod scheduling;
