//! Scheduler configuration: one YAML file, overridden by flags and environment (see `main.rs`).
//! Unknown keys and invalid values are errors that name the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use wattwise_core::curve::MAX_NODE_WATTS;
use wattwise_core::EnergyLevel;

use crate::policy::offload::OffloadConfig;
use crate::policy::{PolicyKind, ScoreConfig};

pub use wattwise_daemon::config::{invalid, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Pods with this `spec.schedulerName` are ours.
    pub scheduler_name: String,
    /// This replica's name in the Lease and in events; normally `POD_NAME` (downward API).
    pub identity: Option<String>,
    /// `PowerReports` gRPC server (agents connect here).
    pub grpc: ListenConfig,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: ListenConfig,
    pub reports: ReportsConfig,
    pub policy: PolicyConfig,
    pub binding: BindingConfig,
    pub leader_election: LeaderElectionConfig,
    pub events: EventsConfig,
    pub energy_labels: EnergyLabelsConfig,
    pub offload: OffloaderConfig,
    pub extender: ExtenderConfig,
    pub api: ApiConfig,
    pub health: HealthConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            scheduler_name: "wattwise".into(),
            identity: None,
            grpc: ListenConfig {
                listen: "0.0.0.0:9201".parse().expect("valid literal"),
            },
            metrics: ListenConfig {
                listen: "0.0.0.0:9200".parse().expect("valid literal"),
            },
            reports: ReportsConfig::default(),
            policy: PolicyConfig::default(),
            binding: BindingConfig::default(),
            leader_election: LeaderElectionConfig::default(),
            events: EventsConfig::default(),
            energy_labels: EnergyLabelsConfig::default(),
            offload: OffloaderConfig::default(),
            extender: ExtenderConfig::default(),
            api: ApiConfig::default(),
            health: HealthConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// How often agents must report even when nothing changed (sent to them in every ack).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A node whose latest report is older than this ranks after fresh nodes and is priced with
    /// the default curve. Default: 3 × `interval`.
    #[serde(with = "humantime_serde::option")]
    pub stale_after: Option<Duration>,
    /// A pod bound to a node counts on top of the node's measured utilisation until a report
    /// observed this long after the bind: the time a pod takes to start (image pull, init
    /// containers) and show in measurements.
    #[serde(with = "humantime_serde")]
    pub pod_start_window: Duration,
    /// Linear curve for nodes without a fresh report.
    pub default_idle_watts: f64,
    pub default_peak_watts: f64,
    /// Reports one stream may send per second, sustained, and in a burst; a stream beyond them
    /// is cut (RESOURCE_EXHAUSTED), so one runaway or hostile sender cannot starve the others.
    /// An agent sends at most one report per reading (`interval` ≥ 100ms on the agent).
    pub stream_rate: f64,
    pub stream_burst: u32,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            stale_after: None,
            pod_start_window: Duration::from_secs(30),
            default_idle_watts: 100.0,
            default_peak_watts: 300.0,
            stream_rate: 20.0,
            stream_burst: 100,
        }
    }
}

impl ReportsConfig {
    pub fn stale_after(&self) -> Duration {
        self.stale_after.unwrap_or(self.interval * 3)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// Best energy tier first, then the lowest marginal watts.
    Tiered,
    /// A weighted sum of energy and power scores.
    Weighted,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub kind: PolicyName,
    /// Weights for `kind: weighted`.
    pub energy_weight: f64,
    pub power_weight: f64,
    /// Nodes below this level get no new pods (default low-powered: powerless nodes are skipped).
    #[serde(with = "level_serde")]
    pub lowest_energy_level: EnergyLevel,
    /// Tier assumed for nodes with no known level (grid-powered).
    #[serde(with = "level_serde")]
    pub unknown_energy_level: EnergyLevel,
    /// Node label read when a node's agent reports no energy level.
    pub energy_label: String,
    /// CPU a pod without a CPU request is priced and counted with, in millicores.
    pub default_cpu_millicores: u64,
    /// Marginal watts closer than this count as a tie (broken by a per-pod hash).
    pub tie_watts: f64,
    /// Charge small pods for the CPU they strand on nodes whose pod limit fills first.
    pub slot_pricing: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            kind: PolicyName::Tiered,
            energy_weight: 0.5,
            power_weight: 0.5,
            lowest_energy_level: EnergyLevel::LowPowered,
            unknown_energy_level: EnergyLevel::WellPowered,
            energy_label: "energy-status".into(),
            default_cpu_millicores: 100,
            tie_watts: 0.05,
            slot_pricing: true,
        }
    }
}

impl PolicyConfig {
    pub fn score_config(&self) -> ScoreConfig {
        ScoreConfig {
            kind: match self.kind {
                PolicyName::Tiered => PolicyKind::Tiered,
                PolicyName::Weighted => PolicyKind::Weighted {
                    energy: self.energy_weight,
                    power: self.power_weight,
                },
            },
            unknown_energy: self.unknown_energy_level,
            tie_watts: self.tie_watts,
            slot_pricing: self.slot_pricing,
        }
    }
}

mod level_serde {
    use serde::{Deserialize, Deserializer};
    use wattwise_core::EnergyLevel;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EnergyLevel, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BindingConfig {
    /// Binds in flight at once.
    pub concurrency: usize,
    /// Backoff of a pod that could not be scheduled or bound: doubles from `backoff_initial`.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// An unschedulable pod is retried at least this often even without a helpful event.
    #[serde(with = "humantime_serde")]
    pub unschedulable_retry: Duration,
}

impl Default for BindingConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            unschedulable_retry: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderElectionConfig {
    pub enabled: bool,
    pub lease_name: String,
    /// Namespace of the Lease; normally `POD_NAMESPACE` (downward API).
    pub namespace: Option<String>,
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// The leader steps down if it could not renew for this long.
    #[serde(with = "humantime_serde")]
    pub renew_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_name: "wattwise-scheduler".into(),
            namespace: None,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events per second across the scheduler (bursts up to `burst`); the rest are dropped and
    /// counted.
    pub per_second: f64,
    pub burst: u32,
    /// The same FailedScheduling message for one pod is not repeated within this time.
    #[serde(with = "humantime_serde")]
    pub repeat_after: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            per_second: 50.0,
            burst: 200,
            repeat_after: Duration::from_secs(60),
        }
    }
}

/// Publishing each node's reported energy level on its Node object (the leader only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyLabelsConfig {
    /// Label nodes with `policy.energy_label` and annotate the percentage.
    pub publish: bool,
    /// Node patches per second at most (bursts up to `burst`); the rest wait for a later round.
    pub patches_per_second: f64,
    pub burst: u32,
}

impl Default for EnergyLabelsConfig {
    fn default() -> Self {
        Self {
            publish: true,
            patches_per_second: 10.0,
            burst: 100,
        }
    }
}

/// The offloader (the leader only): moves pods off weakly powered nodes to better-powered ones,
/// reserving each target for the evicted pod's replacement. On by default: it moves only pods a
/// controller recreates, only to a node that passes every filter and is better powered, within
/// PodDisruptionBudgets and the limits below — and without it a node whose battery runs down
/// keeps its pods until it is powerless.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffloaderConfig {
    pub enabled: bool,
    /// Time between passes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Pods on nodes at or below this level are candidates.
    #[serde(with = "level_serde")]
    pub at_or_below: EnergyLevel,
    /// A target must be at least this many levels better than the pod's node (1..=3).
    pub min_improvement: u8,
    /// Pods younger than this stay.
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
    pub max_per_pass: usize,
    pub max_per_node: usize,
    pub max_per_namespace: usize,
    pub excluded_namespaces: Vec<String>,
    /// Move pods with emptyDir or hostPath volumes (their data is lost).
    pub allow_local_storage: bool,
    /// After one of its pods was evicted, a workload (controller) is not moved again for this long.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// A target reserved for a replacement that has not come within this time is released.
    #[serde(with = "humantime_serde")]
    pub reservation_ttl: Duration,
    /// Evict and reserve nothing; log the plan and say in events what would happen.
    pub dry_run: bool,
}

impl Default for OffloaderConfig {
    fn default() -> Self {
        let planner = OffloadConfig::default();
        Self {
            enabled: true,
            interval: Duration::from_secs(30),
            at_or_below: planner.at_or_below,
            min_improvement: planner.min_improvement,
            min_age: planner.min_age,
            max_per_pass: planner.max_per_pass,
            max_per_node: planner.max_per_node,
            max_per_namespace: planner.max_per_namespace,
            excluded_namespaces: planner.excluded_namespaces.into_iter().collect(),
            allow_local_storage: planner.allow_local_storage,
            cooldown: Duration::from_secs(600),
            reservation_ttl: Duration::from_secs(120),
            dry_run: false,
        }
    }
}

impl OffloaderConfig {
    /// What the planner reads; `lowest_energy` is `policy.lowest_energy_level`.
    pub fn planner(&self, lowest_energy: EnergyLevel) -> OffloadConfig {
        OffloadConfig {
            at_or_below: self.at_or_below,
            min_improvement: self.min_improvement,
            lowest_energy,
            excluded_namespaces: self.excluded_namespaces.iter().cloned().collect(),
            min_age: self.min_age,
            allow_local_storage: self.allow_local_storage,
            max_per_pass: self.max_per_pass,
            max_per_node: self.max_per_node,
            max_per_namespace: self.max_per_namespace,
        }
    }
}

/// Extender mode: the kube-scheduler extender API (`/filter`, `/prioritize`), served by every
/// replica from its own cache. Off by default: standalone mode needs no extra port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtenderConfig {
    pub enabled: bool,
    /// Where kube-scheduler's `urlPrefix` points (plain HTTP).
    pub listen: SocketAddr,
    /// Larger request bodies are refused (HTTP 413). With `nodeCacheCapable: true` only node
    /// names travel; without it every candidate Node object does, a few KiB each.
    pub max_request_bytes: usize,
}

impl Default for ExtenderConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "0.0.0.0:9202".parse().expect("valid literal"),
            max_request_bytes: 64 << 20,
        }
    }
}

/// Bounds on every call to the Kubernetes API, so that a hung API server (or a connection that
/// silently died) can neither keep a replica leading nor hold bind slots forever.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Every request other than a watch: connecting, and the longest wait for response bytes. A
    /// bind or a Lease call still unanswered after this is abandoned.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Server-side timeout of each watch request (whole seconds). The watch connection may stay
    /// silent for at most this plus [`WATCH_SILENCE_MARGIN`]; then it is dropped and re-established.
    #[serde(with = "humantime_serde")]
    pub watch_timeout: Duration,
}

/// How much longer than `api.watch_timeout` a watch connection may stay silent: the server ends a
/// watch at its timeout, so a longer silence means the connection is dead.
pub const WATCH_SILENCE_MARGIN: Duration = Duration::from_secs(5);

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            watch_timeout: Duration::from_secs(60),
        }
    }
}

impl ApiConfig {
    /// Longest silence of a watch connection (the watch client's read timeout).
    pub fn watch_silence(&self) -> Duration {
        self.watch_timeout + WATCH_SILENCE_MARGIN
    }
}

/// What `/healthz` and `/readyz` hold the scheduler's loops to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The decision loop, leader election and the gauges must show progress (or idle) at least
    /// this often, else `/healthz` fails naming them.
    #[serde(with = "humantime_serde")]
    pub max_silence: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            max_silence: Duration::from_secs(60),
        }
    }
}

impl SchedulerConfig {
    /// Reads and parses a YAML file (no validation: call `validate` after overrides).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        wattwise_daemon::config::from_file(path)
    }

    /// Parses YAML; the error message names the offending key and its position.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        wattwise_daemon::config::from_yaml(text)
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.scheduler_name.is_empty() {
            return Err(invalid("scheduler_name", "is empty"));
        }
        if self.identity.as_deref() == Some("") {
            return Err(invalid("identity", "is empty"));
        }
        let r = &self.reports;
        if r.interval < Duration::from_millis(100) || r.interval > Duration::from_secs(600) {
            return Err(invalid("reports.interval", "must be between 100ms and 10m"));
        }
        if r.stale_after() < r.interval {
            return Err(invalid(
                "reports.stale_after",
                "must be at least reports.interval",
            ));
        }
        if r.pod_start_window > Duration::from_secs(600) {
            return Err(invalid("reports.pod_start_window", "must be at most 10m"));
        }
        for (key, w) in [
            ("reports.default_idle_watts", r.default_idle_watts),
            ("reports.default_peak_watts", r.default_peak_watts),
        ] {
            if !w.is_finite() || !(0.0..=MAX_NODE_WATTS).contains(&w) {
                return Err(invalid(key, format!("{w} is not a plausible node wattage")));
            }
        }
        if r.default_idle_watts > r.default_peak_watts {
            return Err(invalid(
                "reports.default_idle_watts",
                "must not exceed reports.default_peak_watts",
            ));
        }
        if !r.stream_rate.is_finite() || !(1.0..=100_000.0).contains(&r.stream_rate) {
            return Err(invalid(
                "reports.stream_rate",
                "must be between 1 and 100000 reports per second",
            ));
        }
        if !(1..=1_000_000).contains(&r.stream_burst) {
            return Err(invalid(
                "reports.stream_burst",
                "must be between 1 and 1000000",
            ));
        }
        let p = &self.policy;
        for (key, w) in [
            ("policy.energy_weight", p.energy_weight),
            ("policy.power_weight", p.power_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(invalid(key, format!("{w} must be a finite weight >= 0")));
            }
        }
        if p.kind == PolicyName::Weighted && p.energy_weight + p.power_weight == 0.0 {
            return Err(invalid(
                "policy.energy_weight",
                "energy_weight and power_weight are both 0",
            ));
        }
        if p.energy_label.is_empty() {
            return Err(invalid("policy.energy_label", "is empty"));
        }
        if !p.tie_watts.is_finite() || p.tie_watts < 0.0 {
            return Err(invalid("policy.tie_watts", "must be >= 0"));
        }
        let b = &self.binding;
        if b.concurrency == 0 || b.concurrency > 1024 {
            return Err(invalid("binding.concurrency", "must be between 1 and 1024"));
        }
        if b.backoff_initial.is_zero() || b.backoff_initial > b.backoff_max {
            return Err(invalid(
                "binding.backoff_initial",
                "must be > 0 and <= binding.backoff_max",
            ));
        }
        if b.unschedulable_retry < b.backoff_initial {
            return Err(invalid(
                "binding.unschedulable_retry",
                "must be >= binding.backoff_initial",
            ));
        }
        let l = &self.leader_election;
        if l.enabled {
            if l.lease_name.is_empty() {
                return Err(invalid("leader_election.lease_name", "is empty"));
            }
            if l.retry_period.is_zero() || l.retry_period >= l.renew_deadline {
                return Err(invalid(
                    "leader_election.retry_period",
                    "must be > 0 and < leader_election.renew_deadline",
                ));
            }
            if l.renew_deadline >= l.lease_duration {
                return Err(invalid(
                    "leader_election.renew_deadline",
                    "must be < leader_election.lease_duration",
                ));
            }
        }
        let a = &self.api;
        if a.timeout < Duration::from_millis(100) || a.timeout > Duration::from_secs(600) {
            return Err(invalid("api.timeout", "must be between 100ms and 10m"));
        }
        if a.watch_timeout < Duration::from_secs(1)
            || a.watch_timeout > Duration::from_secs(3600)
            || a.watch_timeout.subsec_nanos() != 0
        {
            return Err(invalid(
                "api.watch_timeout",
                "must be whole seconds between 1s and 1h",
            ));
        }
        let h = &self.health;
        // An election round (an attempt, bounded by renew_deadline, and the wait before the next)
        // must fit in the bound.
        let round = if l.enabled {
            l.retry_period + l.renew_deadline
        } else {
            Duration::ZERO
        };
        if h.max_silence < Duration::from_secs(2) || h.max_silence <= round {
            return Err(invalid(
                "health.max_silence",
                "must be at least 2s and longer than leader_election.retry_period plus \
                 leader_election.renew_deadline",
            ));
        }
        let e = &self.events;
        if !e.per_second.is_finite() || e.per_second <= 0.0 || e.burst == 0 {
            return Err(invalid(
                "events.per_second",
                "events.per_second and events.burst must be > 0",
            ));
        }
        let n = &self.energy_labels;
        if !n.patches_per_second.is_finite()
            || n.patches_per_second <= 0.0
            || n.patches_per_second > 1000.0
        {
            return Err(invalid(
                "energy_labels.patches_per_second",
                "must be > 0 and at most 1000",
            ));
        }
        if n.burst == 0 || n.burst > 10_000 {
            return Err(invalid(
                "energy_labels.burst",
                "must be between 1 and 10000",
            ));
        }
        self.validate_offload()?;
        self.validate_extender()
    }

    fn validate_extender(&self) -> Result<(), ConfigError> {
        let x = &self.extender;
        if !x.enabled {
            return Ok(());
        }
        // Port 0 (any free port) never clashes.
        for (key, other) in [
            ("grpc.listen", self.grpc.listen),
            ("metrics.listen", self.metrics.listen),
        ] {
            if x.listen.port() != 0 && x.listen == other {
                return Err(invalid(
                    "extender.listen",
                    format!("{} is also {key}", x.listen),
                ));
            }
        }
        if !(1 << 10..=1 << 30).contains(&x.max_request_bytes) {
            return Err(invalid(
                "extender.max_request_bytes",
                "must be between 1024 (1 KiB) and 1073741824 (1 GiB)",
            ));
        }
        Ok(())
    }

    fn validate_offload(&self) -> Result<(), ConfigError> {
        let o = &self.offload;
        if o.interval < Duration::from_secs(1) || o.interval > Duration::from_secs(3600) {
            return Err(invalid("offload.interval", "must be between 1s and 1h"));
        }
        if o.at_or_below == EnergyLevel::WellPowered {
            return Err(invalid(
                "offload.at_or_below",
                "well-powered leaves no better level to move pods to",
            ));
        }
        if !(1..=3).contains(&o.min_improvement) {
            return Err(invalid("offload.min_improvement", "must be 1, 2 or 3"));
        }
        let day = Duration::from_secs(86_400);
        if o.min_age > day {
            return Err(invalid("offload.min_age", "must be at most 24h"));
        }
        for (key, n) in [
            ("offload.max_per_pass", o.max_per_pass),
            ("offload.max_per_node", o.max_per_node),
            ("offload.max_per_namespace", o.max_per_namespace),
        ] {
            if n == 0 || n > 10_000 {
                return Err(invalid(key, "must be between 1 and 10000"));
            }
        }
        if let Some(bad) = o.excluded_namespaces.iter().find(|n| n.is_empty()) {
            return Err(invalid(
                "offload.excluded_namespaces",
                format!("{bad:?} is not a namespace"),
            ));
        }
        if o.cooldown > Duration::from_secs(7 * 86_400) {
            return Err(invalid("offload.cooldown", "must be at most 7 days"));
        }
        if o.reservation_ttl < Duration::from_secs(1)
            || o.reservation_ttl > Duration::from_secs(3600)
        {
            return Err(invalid(
                "offload.reservation_ttl",
                "must be between 1s and 1h",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_docs() {
        let c = SchedulerConfig::from_yaml("").unwrap();
        c.validate().unwrap();
        assert_eq!(c.scheduler_name, "wattwise");
        assert_eq!(c.reports.stale_after(), Duration::from_secs(30));
        assert_eq!(c.reports.pod_start_window, Duration::from_secs(30));
        assert_eq!(c.policy.lowest_energy_level, EnergyLevel::LowPowered);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = SchedulerConfig::from_yaml("policy:\n  kindd: tiered\n").unwrap_err();
        assert!(err.contains("kindd"), "{err}");
        let err = SchedulerConfig::from_yaml("schedulr_name: x\n").unwrap_err();
        assert!(err.contains("schedulr_name"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err =
            SchedulerConfig::from_yaml("policy:\n  lowest_energy_level: empty\n").unwrap_err();
        assert!(
            err.contains("lowest_energy_level") || err.contains("empty"),
            "{err}"
        );
        let err = SchedulerConfig::from_yaml("reports:\n  interval: soon\n").unwrap_err();
        assert!(err.contains("interval"), "{err}");
        let c = SchedulerConfig::from_yaml("leader_election:\n  renew_deadline: 20s\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("leader_election.renew_deadline"));
        let c = SchedulerConfig::from_yaml("reports:\n  pod_start_window: 1h\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reports.pod_start_window"));
        let err = SchedulerConfig::from_yaml("reports:\n  pod_start_window: -1s\n").unwrap_err();
        assert!(err.contains("pod_start_window"), "{err}");
        let c = SchedulerConfig::from_yaml("reports:\n  default_idle_watts: .nan\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reports.default_idle_watts"));
    }

    /// Each YAML parses but is refused by validation with an error naming its key.
    fn refused_by_name(cases: &[(&str, &str)]) {
        for (yaml, key) in cases {
            let err = SchedulerConfig::from_yaml(yaml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
    }

    #[test]
    fn api_and_health_bounds_are_validated_by_name() {
        refused_by_name(&[
            ("api: {timeout: 0s}\n", "api.timeout"),
            ("api: {watch_timeout: 1500ms}\n", "api.watch_timeout"),
            ("api: {watch_timeout: 2h}\n", "api.watch_timeout"),
            ("health: {max_silence: 1s}\n", "health.max_silence"),
            ("health: {max_silence: 5s}\n", "health.max_silence"),
        ]);
        let c = SchedulerConfig::from_yaml("api: {timeout: 2s, watch_timeout: 10s}\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.api.watch_silence(), Duration::from_secs(15));
    }

    #[test]
    fn energy_label_limits_are_checked_and_named() {
        let c = SchedulerConfig::from_yaml("").unwrap();
        assert!(c.energy_labels.publish);
        assert_eq!(c.energy_labels.patches_per_second, 10.0);
        assert_eq!(c.energy_labels.burst, 100);
        refused_by_name(&[
            (
                "energy_labels: {patches_per_second: 0}",
                "energy_labels.patches_per_second",
            ),
            (
                "energy_labels: {patches_per_second: .nan}",
                "energy_labels.patches_per_second",
            ),
            (
                "energy_labels: {patches_per_second: 5000}",
                "energy_labels.patches_per_second",
            ),
            ("energy_labels: {burst: 0}", "energy_labels.burst"),
        ]);
        let err = SchedulerConfig::from_yaml("energy_labels: {publsh: true}").unwrap_err();
        assert!(err.contains("publsh"), "{err}");
        SchedulerConfig::from_yaml(
            "energy_labels: {publish: false, patches_per_second: 0.5, burst: 1}",
        )
        .unwrap()
        .validate()
        .unwrap();
    }

    #[test]
    fn report_stream_limits_are_checked_and_named() {
        let c = SchedulerConfig::from_yaml("").unwrap();
        assert_eq!((c.reports.stream_rate, c.reports.stream_burst), (20.0, 100));
        refused_by_name(&[
            ("reports: {stream_rate: 0}", "reports.stream_rate"),
            ("reports: {stream_rate: .nan}", "reports.stream_rate"),
            ("reports: {stream_burst: 0}", "reports.stream_burst"),
        ]);
    }

    #[test]
    fn slot_pricing_is_on_by_default_and_can_be_turned_off() {
        let c = SchedulerConfig::from_yaml("").unwrap();
        assert!(c.policy.score_config().slot_pricing);
        let c = SchedulerConfig::from_yaml("policy: {slot_pricing: false}\n").unwrap();
        c.validate().unwrap();
        assert!(!c.policy.score_config().slot_pricing);
        let err = SchedulerConfig::from_yaml("policy: {slot_pricing: maybe}\n").unwrap_err();
        assert!(err.contains("slot_pricing"), "{err}");
    }

    #[test]
    fn extender_keys_are_checked_and_named() {
        let c = SchedulerConfig::from_yaml("").unwrap();
        assert!(
            !c.extender.enabled,
            "standalone mode needs no extender port"
        );
        assert_eq!(c.extender.listen, "0.0.0.0:9202".parse().unwrap());
        assert_eq!(c.extender.max_request_bytes, 64 << 20);
        refused_by_name(&[
            (
                "extender: {enabled: true, listen: \"0.0.0.0:9200\"}",
                "extender.listen",
            ),
            (
                "grpc: {listen: \"127.0.0.1:7000\"}\nextender: {enabled: true, listen: \"127.0.0.1:7000\"}",
                "extender.listen",
            ),
            (
                "extender: {enabled: true, max_request_bytes: 10}",
                "extender.max_request_bytes",
            ),
        ]);
        for (yaml, key) in [
            ("extender: {enabeld: true}", "enabeld"),
            ("extender: {listen: \"localhost\"}", "extender.listen"),
            ("extender: {max_request_bytes: -1}", "max_request_bytes"),
        ] {
            let err = SchedulerConfig::from_yaml(yaml).unwrap_err();
            assert!(err.contains(key), "{yaml}: {err}");
        }
        // Off, its keys are not held against the rest; on any free port, nothing clashes.
        for yaml in [
            "extender: {enabled: false, listen: \"0.0.0.0:9200\"}",
            "extender: {enabled: true, listen: \"127.0.0.1:0\"}\nmetrics: {listen: \"127.0.0.1:0\"}",
        ] {
            SchedulerConfig::from_yaml(yaml).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn weighted_policy_is_selectable() {
        let c = SchedulerConfig::from_yaml(
            "policy:\n  kind: weighted\n  energy_weight: 2\n  power_weight: 1\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.policy.score_config().kind,
            PolicyKind::Weighted {
                energy: 2.0,
                power: 1.0
            }
        );
    }

    #[test]
    fn offload_keys_are_checked_and_named() {
        let c = SchedulerConfig::from_yaml("").unwrap();
        let o = &c.offload;
        assert!(o.enabled && !o.dry_run);
        assert_eq!(o.interval, Duration::from_secs(30));
        assert_eq!(o.cooldown, Duration::from_secs(600));
        assert_eq!(o.reservation_ttl, Duration::from_secs(120));
        assert_eq!(
            o.planner(EnergyLevel::LowPowered),
            OffloadConfig::default(),
            "the planner's defaults are the documented ones"
        );
        refused_by_name(&[
            ("offload: {interval: 0s}", "offload.interval"),
            (
                "offload: {at_or_below: well-powered}",
                "offload.at_or_below",
            ),
            ("offload: {min_improvement: 0}", "offload.min_improvement"),
            ("offload: {min_improvement: 4}", "offload.min_improvement"),
            ("offload: {min_age: 2d}", "offload.min_age"),
            ("offload: {max_per_pass: 0}", "offload.max_per_pass"),
            ("offload: {max_per_node: 0}", "offload.max_per_node"),
            (
                "offload: {max_per_namespace: 0}",
                "offload.max_per_namespace",
            ),
            (
                "offload: {excluded_namespaces: ['']}",
                "offload.excluded_namespaces",
            ),
            ("offload: {cooldown: 30d}", "offload.cooldown"),
            ("offload: {reservation_ttl: 0s}", "offload.reservation_ttl"),
        ]);
        for (yaml, key) in [
            ("offload: {dry_runn: true}", "dry_runn"),
            // A level names its section and the value (as policy.lowest_energy_level does).
            ("offload:\n  at_or_below: empty\n", "\"empty\""),
            ("offload:\n  cooldown: soon\n", "offload.cooldown"),
            ("offload: {min_improvement: -1}", "min_improvement"),
        ] {
            let err = SchedulerConfig::from_yaml(yaml).unwrap_err();
            assert!(err.contains(key), "{yaml}: {err}");
        }
        let c = SchedulerConfig::from_yaml(
            "offload: {enabled: true, dry_run: true, at_or_below: vulnerable, min_improvement: 1, \
             interval: 2s, min_age: 0s, cooldown: 0s, reservation_ttl: 30s, \
             excluded_namespaces: [kube-system, batch], allow_local_storage: true}",
        )
        .unwrap();
        c.validate().unwrap();
        let planner = c.offload.planner(EnergyLevel::Powerless);
        assert_eq!(planner.at_or_below, EnergyLevel::Vulnerable);
        assert_eq!(planner.lowest_energy, EnergyLevel::Powerless);
        assert!(planner.excluded_namespaces.contains("batch"));
    }
}
