//! The energy adapter: publishes each node's reported energy level on its Node object (label and
//! annotations, see [`super::published`]) while this replica leads. Every round compares what the
//! agents report with what the watched Node objects already say, so only changes are written and
//! a new leader rewrites nothing that is already right. Writes are JSON merge patches of those
//! metadata keys alone, through the bounded call client, at most `energy_labels.patches_per_second`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use wattwise_daemon::health::Heartbeat;

use super::cache::ClusterCache;
use super::published::{decide, merge_patch, LabelChange};
use super::rate::TokenBucket;
use super::watch::Synced;
use crate::api::metrics::SchedulerMetrics;
use crate::config::EnergyLabelsConfig;

/// How often the adapter compares reports with the Node objects.
const ROUND: Duration = Duration::from_secs(1);

pub struct EnergyAdapter {
    pub client: Client,
    pub cache: Arc<Mutex<ClusterCache>>,
    pub metrics: Arc<SchedulerMetrics>,
    /// `policy.energy_label`: the label written is the label the filters read.
    pub label_key: String,
    /// A node that never reported counts as reporting no level once the process has run this
    /// long (`reports.stale_after`): before that its agent may simply not have reconnected yet.
    pub stale_after: Duration,
    /// `api.timeout`: a write the node watch has not shown after this is written again.
    pub settle: Duration,
    pub limits: EnergyLabelsConfig,
}

impl EnergyAdapter {
    /// Runs until the leader channel closes; writes only while `leader` says so and the caches
    /// are synced.
    pub async fn run(
        self,
        mut leader: watch::Receiver<bool>,
        synced: Arc<Synced>,
        heartbeat: Heartbeat,
    ) {
        let started = Instant::now();
        let mut bucket = TokenBucket::full(
            self.limits.patches_per_second,
            self.limits.burst,
            Instant::now(),
        );
        // Changes written and not yet seen in the node watch: not written twice.
        let mut written: HashMap<String, (LabelChange, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heartbeat.beat();
            tokio::select! {
                _ = tick.tick() => {}
                changed = leader.changed() => if changed.is_err() { return },
            }
            if !*leader.borrow_and_update() || !synced.all() {
                written.clear();
                continue;
            }
            let now = Instant::now();
            let expect_reports = now.saturating_duration_since(started) >= self.stale_after;
            let changes = self.plan(now, expect_reports);
            written.retain(|_, (_, at)| now.saturating_duration_since(*at) < self.settle);
            for (node, change) in changes {
                heartbeat.beat();
                if !*leader.borrow() {
                    break; // a standby writes nothing
                }
                if written.get(&node).is_some_and(|(c, _)| *c == change) {
                    continue;
                }
                if !bucket.take(Instant::now()) {
                    self.metrics.label_patch("rate_limited");
                    continue;
                }
                // The call is bounded by api.timeout: waiting on it is progress, not a wedge.
                let took = {
                    let write = self.write(&node, &change);
                    tokio::pin!(write);
                    let mut idle = tokio::time::interval(ROUND);
                    loop {
                        tokio::select! {
                            took = &mut write => break took,
                            _ = idle.tick() => heartbeat.beat(),
                        }
                    }
                };
                if took {
                    written.insert(node, (change, Instant::now()));
                }
            }
        }
    }

    /// The changes due now, and the published-level gauge. Under the rate limit, new levels and
    /// removals go before updates of the percentage alone.
    fn plan(&self, now: Instant, expect_reports: bool) -> Vec<(String, LabelChange)> {
        let (mut levels, mut percentages) = (Vec::new(), Vec::new());
        let mut labelled = [0usize; 4];
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.advance(now);
            cache.energy_publication(expect_reports, |name, published, reported| {
                if let Some(level) = published.managed_level() {
                    labelled[level.index()] += 1;
                }
                let Some(change) = decide(published, reported) else {
                    return;
                };
                if change.percent_only(published) {
                    &mut percentages
                } else {
                    &mut levels
                }
                .push((name.to_string(), change));
            });
        }
        self.metrics.labelled_nodes(labelled);
        levels.append(&mut percentages);
        levels
    }

    /// Patches one node; true when the API server took the change.
    async fn write(&self, node: &str, change: &LabelChange) -> bool {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = Patch::Merge(merge_patch(change, &self.label_key));
        match nodes.patch(node, &PatchParams::default(), &patch).await {
            Ok(_) => {
                match change {
                    LabelChange::Publish { label, percent } => {
                        self.metrics.label_patch("published");
                        info!(%node, level = %label, %percent, "published energy level");
                    }
                    LabelChange::Remove => {
                        self.metrics.label_patch("removed");
                        info!(%node, "removed energy label: no level reported");
                    }
                }
                true
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                debug!(%node, "node gone before its energy label was written");
                false
            }
            Err(e) => {
                self.metrics.label_patch("failed");
                warn!(%node, error = %e, "writing the energy label failed; retrying next round");
                false
            }
        }
    }
}
