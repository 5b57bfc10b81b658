//! Prometheus metrics (`wattwise_scheduler_*`), served with `/healthz` and `/readyz`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use wattwise_core::EnergyLevel;
use wattwise_daemon::health::Liveness;

use crate::queue::QueueDepth;

type CounterF = Counter<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabel {
    level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabel {
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    verb: &'static str,
    result: &'static str,
}

/// 10 µs … ~0.33 s: one extender call over every node sent.
fn extender_call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// How one scheduling attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Scheduled,
    Unschedulable,
    Error,
}

/// Every metric the scheduler exports.
pub struct SchedulerMetrics {
    registry: Registry,
    attempts: Family<ResultLabel, Counter>,
    pod_scheduling_duration: Histogram,
    decision_duration: Histogram,
    pending_pods: Family<QueueLabel, Gauge>,
    bind_errors: Family<ReasonLabel, Counter>,
    reports: Family<ReasonLabel, Counter>,
    connected_agents: Gauge,
    stale_nodes: Gauge,
    nodes: Gauge,
    bound_predicted_watts: CounterF,
    leader: Gauge,
    events_dropped: Counter,
    label_patches: Family<ResultLabel, Counter>,
    labelled_nodes: Family<LevelLabel, Gauge>,
    offload_evictions: Family<ResultLabel, Counter>,
    offload_reservations: Family<OutcomeLabel, Counter>,
    pods_on_low_energy_nodes: Gauge,
    offload_pass_duration: Histogram,
    extender_calls: Family<CallLabels, Counter>,
    extender_call_duration: Family<VerbLabel, Histogram, fn() -> Histogram>,
    synced: AtomicBool,
}

/// How an offloader's eviction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionResult {
    Evicted,
    /// A PodDisruptionBudget refused it (HTTP 429): tried again on a later pass.
    PdbRefused,
    Failed,
    /// `offload.dry_run`: planned, not carried out.
    DryRun,
}

/// How a reservation planned for an evicted pod's replacement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationOutcome {
    /// The replacement was placed on the reserved node (its bind under way).
    Honoured,
    /// No replacement came within `offload.reservation_ttl`.
    Expired,
    /// The replacement came, but the reserved node no longer passed every filter for it.
    Refiltered,
    /// The eviction did not happen.
    Released,
}

impl SchedulerMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Self {
            registry: Registry::default(),
            attempts: Family::default(),
            // 1 ms … ~65 s: from an immediate bind to a pod that waited through backoff.
            pod_scheduling_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 1 µs … ~33 ms: one filter + score pass over every node.
            decision_duration: Histogram::new(exponential_buckets(0.000_001, 2.0, 16)),
            pending_pods: Family::default(),
            bind_errors: Family::default(),
            reports: Family::default(),
            connected_agents: Gauge::default(),
            stale_nodes: Gauge::default(),
            nodes: Gauge::default(),
            bound_predicted_watts: CounterF::default(),
            leader: Gauge::default(),
            events_dropped: Counter::default(),
            label_patches: Family::default(),
            labelled_nodes: Family::default(),
            offload_evictions: Family::default(),
            offload_reservations: Family::default(),
            pods_on_low_energy_nodes: Gauge::default(),
            // 1 ms … ~65 s: a pass lists the pods of weak nodes and evicts within limits.
            offload_pass_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            extender_calls: Family::default(),
            extender_call_duration: Family::new_with_constructor(extender_call_buckets),
            synced: AtomicBool::new(false),
        };
        registry.register(
            "wattwise_scheduler_schedule_attempts",
            "Scheduling attempts by result (scheduled, unschedulable, error)",
            m.attempts.clone(),
        );
        registry.register(
            "wattwise_scheduler_pod_scheduling_duration_seconds",
            "From a pod first queued to its successful bind",
            m.pod_scheduling_duration.clone(),
        );
        registry.register(
            "wattwise_scheduler_decision_duration_seconds",
            "One filter + score pass over every node for one pod",
            m.decision_duration.clone(),
        );
        registry.register(
            "wattwise_scheduler_pending_pods",
            "Pods waiting for a node, by queue (active, backoff, unschedulable, in_flight)",
            m.pending_pods.clone(),
        );
        registry.register(
            "wattwise_scheduler_bind_errors",
            "Failed binds by reason (conflict, error)",
            m.bind_errors.clone(),
        );
        registry.register(
            "wattwise_scheduler_reports",
            "Agent reports by result (accepted, or the rejection reason)",
            m.reports.clone(),
        );
        registry.register(
            "wattwise_scheduler_connected_agents",
            "Open agent report streams",
            m.connected_agents.clone(),
        );
        registry.register(
            "wattwise_scheduler_stale_nodes",
            "Nodes without a fresh report (priced with the default curve)",
            m.stale_nodes.clone(),
        );
        registry.register(
            "wattwise_scheduler_nodes",
            "Nodes in the scheduler's cache",
            m.nodes.clone(),
        );
        registry.register(
            "wattwise_scheduler_bound_predicted_watts",
            "Sum of the predicted marginal watts of the pods this scheduler bound",
            m.bound_predicted_watts.clone(),
        );
        registry.register(
            "wattwise_scheduler_leader",
            "1 while this replica holds the leader Lease (only the leader binds)",
            m.leader.clone(),
        );
        registry.register(
            "wattwise_scheduler_events_dropped",
            "Events not written because of the events rate limit or an API error",
            m.events_dropped.clone(),
        );
        registry.register(
            "wattwise_scheduler_energy_label_patches",
            "Node energy label patches by result (published, removed, failed, rate_limited)",
            m.label_patches.clone(),
        );
        registry.register(
            "wattwise_scheduler_energy_labelled_nodes",
            "Nodes whose energy label wattwise published, by level (as the Node objects say)",
            m.labelled_nodes.clone(),
        );
        registry.register(
            "wattwise_scheduler_offload_evictions",
            "Offloader evictions by result (evicted, pdb_refused, failed, dry_run)",
            m.offload_evictions.clone(),
        );
        registry.register(
            "wattwise_scheduler_offload_reservations",
            "Nodes reserved for evicted pods' replacements, by outcome (honoured, expired, \
             refiltered, released)",
            m.offload_reservations.clone(),
        );
        registry.register(
            "wattwise_scheduler_pods_on_low_energy_nodes",
            "Pods bound to nodes at or below offload.at_or_below, at the last offloader pass",
            m.pods_on_low_energy_nodes.clone(),
        );
        registry.register(
            "wattwise_scheduler_offload_pass_duration_seconds",
            "One offloader pass: listing the weak nodes' pods, planning, evicting",
            m.offload_pass_duration.clone(),
        );
        registry.register(
            "wattwise_scheduler_extender_calls",
            "kube-scheduler extender calls by verb (filter, prioritize) and result (ok, \
             bad_request, not_synced)",
            m.extender_calls.clone(),
        );
        registry.register(
            "wattwise_scheduler_extender_call_duration_seconds",
            "One extender call, from its body read to its answer, by verb",
            m.extender_call_duration.clone(),
        );
        registry.register(
            "wattwise_scheduler_build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Arc::new(Self { registry, ..m })
    }

    pub fn attempt(&self, result: AttemptResult) {
        let result = match result {
            AttemptResult::Scheduled => "scheduled",
            AttemptResult::Unschedulable => "unschedulable",
            AttemptResult::Error => "error",
        };
        self.attempts.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn bound(&self, queued_seconds: f64, marginal_watts: f64) {
        self.pod_scheduling_duration.observe(queued_seconds);
        // A pod on a node without CPU capacity is priced at +∞; a counter must stay finite.
        if marginal_watts.is_finite() {
            self.bound_predicted_watts.inc_by(marginal_watts);
        }
    }

    pub fn decision(&self, seconds: f64) {
        self.decision_duration.observe(seconds);
    }

    pub fn bind_error(&self, reason: &'static str) {
        self.bind_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn report(&self, reason: &'static str) {
        self.reports.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn agent_connected(&self) {
        self.connected_agents.inc();
    }

    pub fn agent_disconnected(&self) {
        self.connected_agents.dec();
    }

    pub fn queue_depth(&self, d: QueueDepth) {
        for (queue, n) in [
            ("active", d.active),
            ("backoff", d.backoff),
            ("unschedulable", d.unschedulable),
            ("in_flight", d.in_flight),
        ] {
            self.pending_pods
                .get_or_create(&QueueLabel { queue })
                .set(n as i64);
        }
    }

    pub fn nodes(&self, nodes: usize, stale: usize) {
        self.nodes.set(nodes as i64);
        self.stale_nodes.set(stale as i64);
    }

    pub fn leader(&self, is_leader: bool) {
        self.leader.set(is_leader as i64);
    }

    pub fn label_patch(&self, result: &'static str) {
        self.label_patches
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Nodes labelled by wattwise per level, in [`EnergyLevel::ALL`] order.
    pub fn labelled_nodes(&self, counts: [usize; 4]) {
        for (level, n) in EnergyLevel::ALL.iter().zip(counts) {
            self.labelled_nodes
                .get_or_create(&LevelLabel {
                    level: level.label(),
                })
                .set(n as i64);
        }
    }

    pub fn eviction(&self, result: EvictionResult) {
        let result = match result {
            EvictionResult::Evicted => "evicted",
            EvictionResult::PdbRefused => "pdb_refused",
            EvictionResult::Failed => "failed",
            EvictionResult::DryRun => "dry_run",
        };
        self.offload_evictions
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn reservations(&self, outcome: ReservationOutcome, n: usize) {
        let outcome = match outcome {
            ReservationOutcome::Honoured => "honoured",
            ReservationOutcome::Expired => "expired",
            ReservationOutcome::Refiltered => "refiltered",
            ReservationOutcome::Released => "released",
        };
        self.offload_reservations
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(n as u64);
    }

    pub fn offload_pass(&self, seconds: f64, on_weak_nodes: usize) {
        self.offload_pass_duration.observe(seconds);
        self.pods_on_low_energy_nodes.set(on_weak_nodes as i64);
    }

    /// One extender call of `verb` ended with `result` after `seconds`.
    pub fn extender_call(&self, verb: &'static str, result: &'static str, seconds: f64) {
        self.extender_calls
            .get_or_create(&CallLabels { verb, result })
            .inc();
        self.extender_call_duration
            .get_or_create(&VerbLabel { verb })
            .observe(seconds);
    }

    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    /// The node and pod caches hold a full list: decisions may start.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// `/metrics`, `/healthz` (the scheduler's loops are beating) and `/readyz` (`ready`: the caches
/// are in sync).
pub fn router(
    metrics: Arc<SchedulerMetrics>,
    liveness: Liveness,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> axum::Router {
    wattwise_daemon::http::router(move || metrics.encode(), liveness, ready)
}
