//! What the scheduler serves: `PowerReports` over gRPC, metrics and health over HTTP.
pub mod metrics;
pub mod reports;
