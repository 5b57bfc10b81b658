//! What the scheduler serves: `PowerReports` over gRPC, metrics and health over HTTP, and the
//! kube-scheduler extender API over HTTP (extender mode).
pub mod extender;
pub mod metrics;
pub mod reports;
