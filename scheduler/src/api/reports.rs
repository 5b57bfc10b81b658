//! `wattwise.v1.PowerReports`: agents stream reports in; each gets exactly one ack, in order.
//! Every report passes the shared validation (`wattwise_core::validate`) and the cache's checks
//! (known node, ordered sequence) before it can influence a decision; a rejected report changes
//! nothing and its reason goes back in the ack and into a metric.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use wattwise_proto::v1 as pb;
use wattwise_proto::v1::power_reports_server::PowerReports;

use crate::api::metrics::SchedulerMetrics;
use crate::cluster::cache::ClusterCache;
use crate::cluster::convert::energy_label;
use crate::queue::SchedulingQueue;

pub struct ReportsService {
    cache: Arc<Mutex<ClusterCache>>,
    queue: Arc<SchedulingQueue>,
    metrics: Arc<SchedulerMetrics>,
    interval: Duration,
}

impl ReportsService {
    pub fn new(
        cache: Arc<Mutex<ClusterCache>>,
        queue: Arc<SchedulingQueue>,
        metrics: Arc<SchedulerMetrics>,
        interval: Duration,
    ) -> Self {
        Self {
            cache,
            queue,
            metrics,
            interval,
        }
    }
}

/// Everything one stream needs, moved into its task.
struct Ingest {
    cache: Arc<Mutex<ClusterCache>>,
    queue: Arc<SchedulingQueue>,
    metrics: Arc<SchedulerMetrics>,
    interval: prost_types::Duration,
    peer: String,
}

impl Ingest {
    fn ack(&self, report: pb::NodeReport) -> pb::ReportAck {
        let sequence = report.sequence;
        let node = report.node_name.clone();
        let outcome = wattwise_core::validate(report)
            .map_err(|e| ("invalid", e.to_string()))
            .and_then(|valid| {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                let helps = may_change_feasibility(&cache, &valid);
                cache
                    .ingest_report(&valid, Instant::now())
                    .map(|()| helps)
                    .map_err(|e| (e.kind(), e.to_string()))
            });
        match outcome {
            Ok(helps) => {
                self.metrics.report("accepted");
                if helps {
                    self.queue.cluster_changed();
                }
                debug!(%node, sequence, "report accepted");
                pb::ReportAck {
                    sequence,
                    accepted: true,
                    reason: String::new(),
                    report_interval: Some(self.interval),
                }
            }
            Err((kind, reason)) => {
                self.metrics.report(kind);
                warn!(%node, sequence, peer = %self.peer, %reason, "report rejected");
                pb::ReportAck {
                    sequence,
                    accepted: false,
                    reason,
                    report_interval: Some(self.interval),
                }
            }
        }
    }
}

/// Whether `report` could make a pod fit that did not: the filters read one thing from reports,
/// the node's energy level (report, else label; `refresh_power` in the cache). A report that
/// leaves it as the last decision saw it does not wake unschedulable pods: with every agent
/// reporting every few seconds that would retry each of them at its backoff, over all nodes and
/// under the cache lock, instead of on a helpful event.
fn may_change_feasibility(cache: &ClusterCache, report: &wattwise_core::ValidatedReport) -> bool {
    let Some(node) = cache.node(report.node_name()) else {
        return true;
    };
    let label = energy_label(&node.labels, &cache.settings().energy_label).and_then(Result::ok);
    report.energy_level().or(label) != node.energy
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.metrics.agent_disconnected();
        info!(peer = %self.peer, "agent report stream closed");
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::ReportAck, Status>> + Send>>;

#[tonic::async_trait]
impl PowerReports for ReportsService {
    type StreamReportsStream = AckStream;

    async fn stream_reports(
        &self,
        request: Request<Streaming<pb::NodeReport>>,
    ) -> Result<Response<AckStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        info!(%peer, "agent report stream opened");
        self.metrics.agent_connected();
        let ingest = Ingest {
            cache: self.cache.clone(),
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
            interval: self
                .interval
                .try_into()
                .map_err(|_| Status::internal("report interval out of range"))?,
            peer,
        };
        let acks = request
            .into_inner()
            .map(move |item| item.map(|report| ingest.ack(report)));
        Ok(Response::new(Box::pin(acks)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;
    use wattwise_core::PowerCurve;

    use super::*;
    use crate::cluster::cache::CacheSettings;
    use crate::policy::fixtures::report;

    fn cache() -> ClusterCache {
        ClusterCache::new(CacheSettings {
            scheduler_name: "wattwise".into(),
            energy_label: "energy-status".into(),
            default_cpu_millicores: 100,
            stale_after: Duration::from_secs(30),
            default_curve: Arc::new(PowerCurve::linear(100.0, 300.0).unwrap()),
        })
    }

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn only_reports_that_change_a_nodes_energy_level_can_help_waiting_pods() {
        let mut c = cache();
        c.apply_node(&node("grid", json!({})));
        c.apply_node(&node("labelled", json!({"energy-status": "powerless"})));
        c.apply_node(&node("battery", json!({})));
        let now = Instant::now();
        c.refresh_power(now);

        // Grid power, no level before or after; the label already counts without a report.
        assert!(!may_change_feasibility(&c, &report("grid", 1, 0.2, None)));
        assert!(!may_change_feasibility(
            &c,
            &report("labelled", 1, 0.2, None)
        ));
        // A level that differs from what decisions last saw.
        let low = Some(pb::EnergyLevel::LowPowered);
        assert!(may_change_feasibility(&c, &report("labelled", 1, 0.2, low)));
        assert!(may_change_feasibility(&c, &report("battery", 1, 0.2, low)));
        // Unknown nodes are rejected anyway; saying yes is the safe answer.
        assert!(may_change_feasibility(&c, &report("ghost", 1, 0.2, low)));

        // Once the cache has the level, the same level again changes nothing …
        c.ingest_report(&report("battery", 1, 0.2, low), now)
            .unwrap();
        c.refresh_power(now);
        assert!(!may_change_feasibility(&c, &report("battery", 2, 0.2, low)));
        // … but a new one does, and so does losing it (the node falls back to no level).
        let powerless = Some(pb::EnergyLevel::Powerless);
        assert!(may_change_feasibility(
            &c,
            &report("battery", 2, 0.2, powerless)
        ));
        assert!(may_change_feasibility(&c, &report("battery", 2, 0.2, None)));
    }
}
