//! What the agent serves: gRPC `NodePower` (with reflection and health) and Prometheus metrics.
pub mod grpc;
pub mod metrics;
