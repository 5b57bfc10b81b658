//! Scheduler configuration: one YAML file, overridden by flags and environment (see `main.rs`).
//! Unknown keys and invalid values are errors that name the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use wattwise_core::curve::MAX_NODE_WATTS;
use wattwise_core::EnergyLevel;

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
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            stale_after: None,
            pod_start_window: Duration::from_secs(30),
            default_idle_watts: 100.0,
            default_peak_watts: 300.0,
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

    #[test]
    fn api_and_health_bounds_are_validated_by_name() {
        for (yaml, key) in [
            ("api: {timeout: 0s}\n", "api.timeout"),
            ("api: {watch_timeout: 1500ms}\n", "api.watch_timeout"),
            ("api: {watch_timeout: 2h}\n", "api.watch_timeout"),
            ("health: {max_silence: 1s}\n", "health.max_silence"),
            ("health: {max_silence: 5s}\n", "health.max_silence"),
        ] {
            let c = SchedulerConfig::from_yaml(yaml).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
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
        for (yaml, key) in [
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
        ] {
            let err = SchedulerConfig::from_yaml(yaml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
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
}
