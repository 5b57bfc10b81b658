//! Real peers for wattwise's integration tests. Each fixture starts real servers on free loopback
//! ports and stops everything it started when dropped (also when a test panics).
//!
//! - [`control_plane`]: etcd + kube-apiserver (+ the stock kube-scheduler), built once from
//!   Debian's `kubernetes` source package and cached.
//! - [`bmc`]: OpenIPMI `ipmi_sim` BMCs with generated sensor layouts, poll files, optional DCMI.
//! - [`prometheus`]: Debian's Prometheus with a generated scrape config, and a query helper.
//! - [`grpcurl`]: the real grpcurl binary as an external gRPC client.
pub mod agent;
pub mod bmc;
pub mod control_plane;
pub mod grpcurl;
pub mod onnx;
pub mod process;
pub mod prometheus;
