//! `wattwise.v1.PowerReports`: agents stream reports in; each gets exactly one ack, in order.
//! Every report passes the shared validation (`wattwise_core::validate`) and the cache's checks
//! (known node, ordered sequence) before it can influence a decision; a rejected report changes
//! nothing and its reason goes back in the ack and into a metric. Only a report that changes a
//! node's energy level (the one thing from reports the filters read) wakes unschedulable pods:
//! with every agent reporting every few seconds, anything more would retry each of them at its
//! backoff, over all nodes and under the cache lock, instead of on a helpful event.
//!
//! Each stream has a budget (`reports.stream_rate` per second, `reports.stream_burst` at once):
//! a stream beyond it is cut with RESOURCE_EXHAUSTED before its excess reaches validation or the
//! cache lock, so a runaway or hostile sender costs the other agents and the decision loop
//! nothing but the decoding of what it sent before the cut.

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
use crate::cluster::rate::TokenBucket;
use crate::config::ReportsConfig;
use crate::queue::SchedulingQueue;

pub struct ReportsService {
    cache: Arc<Mutex<ClusterCache>>,
    queue: Arc<SchedulingQueue>,
    metrics: Arc<SchedulerMetrics>,
    interval: Duration,
    stream_rate: f64,
    stream_burst: u32,
}

impl ReportsService {
    pub fn new(
        cache: Arc<Mutex<ClusterCache>>,
        queue: Arc<SchedulingQueue>,
        metrics: Arc<SchedulerMetrics>,
        config: &ReportsConfig,
    ) -> Self {
        Self {
            cache,
            queue,
            metrics,
            interval: config.interval,
            stream_rate: config.stream_rate,
            stream_burst: config.stream_burst,
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
    /// One token per report.
    budget: TokenBucket,
    /// An error ended the call: the stream yields nothing more.
    cut: bool,
}

impl Ingest {
    fn ack(&self, report: pb::NodeReport) -> pb::ReportAck {
        let sequence = report.sequence;
        let node = report.node_name.clone();
        let outcome = wattwise_core::validate(report)
            .map_err(|e| ("invalid", e.to_string()))
            .and_then(|valid| {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                cache
                    .ingest_report(&valid, Instant::now())
                    .map(|ingested| ingested.energy_changed)
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
            budget: TokenBucket::full(self.stream_rate, self.stream_burst, Instant::now()),
            cut: false,
        };
        let (rate, burst) = (self.stream_rate, self.stream_burst);
        // An error item ends the call with its status: nothing after the cut is read.
        let acks = request.into_inner().scan(ingest, move |ingest, item| {
            let ack = item.and_then(|report| {
                if ingest.budget.take(Instant::now()) {
                    return Ok(ingest.ack(report));
                }
                ingest.metrics.report("throttled");
                warn!(peer = %ingest.peer, node = %report.node_name, rate, burst,
                    "report stream cut: over its budget (reports.stream_rate, reports.stream_burst)");
                Err(Status::resource_exhausted(format!(
                    "more than {burst} reports at once or {rate} a second on this stream \
                     (reports.stream_rate, reports.stream_burst): stream cut; reconnect later"
                )))
            });
            let last = ack.is_err();
            futures::future::ready((!ingest.cut).then(|| {
                ingest.cut = last;
                ack
            }))
        });
        Ok(Response::new(Box::pin(acks)))
    }
}
