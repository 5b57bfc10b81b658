//! Real peers for wattwise's integration tests. Each fixture starts real servers on free loopback
//! ports and stops everything it started when dropped (also when a test panics).
//!
//! - [`control_plane`]: etcd + kube-apiserver (+ the stock kube-scheduler), built once from
//!   Debian's `kubernetes` source package and cached.
//! - [`bmc`]: OpenIPMI `ipmi_sim` BMCs with generated sensor layouts, poll files, optional DCMI.
//! - [`prometheus`]: Debian's Prometheus with a generated scrape config, and a query helper.
//! - [`grpcurl`]: the real grpcurl binary as an external gRPC client.
//! - [`receiver`]: a real PowerReports server standing in for a scheduler replica.
//! - [`proxy`]: a TCP proxy that can hold what a client sends to a real server.
//! - [`reports`]: real gRPC clients streaming node reports to the scheduler.
//! - [`scheduler`]: the real `wattwise-scheduler` binary against a control plane.
//! - [`specpower`]: the SPECpower results in data/specpower/ and models/held_out.csv (owned by
//!   the simulator crate, whose nodes draw the same watts).
//! - [`drive`]: a fake node's utilisation file and BMC power, as the demo drives them.
//! - [`proxy`]: a TCP proxy a test can freeze (a hung peer: connections open, no bytes).
//! - [`served`]: a wattwise binary with generated config on free ports (agent and scheduler).
//! - [`bench`]: what the scheduler benchmarks share (release binary, many nodes, /proc figures).
//! - [`inband`]: the agent in a qemu guest (Debian's kernel, TCG) reading an ipmi_sim BMC in-band
//!   through the guest's KCS interface and `/dev/ipmi0`.
//! - [`images`]: the container images of both Dockerfiles, built offline with podman, and running them.
pub mod agent;
pub mod bench;
pub mod bmc;
pub mod control_plane;
pub mod drive;
pub mod grpcurl;
pub mod images;
pub mod inband;
pub mod manifests;
pub mod node_power;
pub mod onnx;
pub mod pods;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod receiver;
pub mod reports;
pub mod scheduler;
pub mod served;
pub use wattwise_sim::specpower;
