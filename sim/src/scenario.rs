//! Scenario files (YAML): which hardware, how many nodes, what workload, which power management,
//! how agents report, which policies and seeds. Unknown keys and bad values are errors naming the
//! file and the field. Paths inside a scenario are relative to the scenario file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::policy::PolicyName;

#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// Syntax, unknown keys and wrong types; serde_yaml names the field's path.
    #[error("{file}: {source}")]
    Parse {
        file: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{file}: {field}: {problem}")]
    Invalid {
        file: PathBuf,
        field: String,
        problem: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Simulated time, hours.
    pub duration_hours: f64,
    pub seeds: Vec<u64>,
    #[serde(default)]
    pub nodes: Vec<NodeGroup>,
    /// Nodes from a node list CSV (`sn,cpu_milli,memory_mib,gpu,model`) instead of or beside
    /// `nodes`.
    #[serde(default)]
    pub node_list: Option<NodeList>,
    pub workload: Workload,
    #[serde(default)]
    pub power_management: PowerManagement,
    #[serde(default)]
    pub reports: Reports,
    /// Seconds from a pod's bind until its CPU load shows (image pull, start-up).
    #[serde(default = "default_pod_start_seconds")]
    pub pod_start_seconds: f64,
    pub policies: Vec<PolicyName>,
    /// Where the file was read from (paths resolve against its directory).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn default_pod_start_seconds() -> f64 {
    5.0
}

/// `count` nodes of one published server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    /// A `result_id` of data/specpower/specpower_curated.csv.
    pub spec: String,
    pub count: usize,
    #[serde(default = "default_inlet")]
    pub inlet_celsius: f64,
    /// Default: the server's hardware threads × 1000.
    #[serde(default)]
    pub cpu_millicores: Option<u64>,
    /// Default: the server's installed memory.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// The kubelet's `maxPods` (default 110, the kubelet's own default).
    #[serde(default = "default_max_pods")]
    pub max_pods: u64,
    /// A panel charging the battery (needs `battery`).
    #[serde(default)]
    pub solar: Option<SolarPanel>,
    /// Without one the nodes are on the grid: their agents report no energy level.
    #[serde(default)]
    pub battery: Option<BatterySpec>,
}

/// A solar panel per node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SolarPanel {
    /// An hourly irradiance file (`hour_of_year,ghi_w_m2`, data/solar/).
    pub site: PathBuf,
    /// Rated watts at 1000 W/m².
    pub panel_watts_peak: f64,
    /// The site file's hour of year at simulated time 0 (day of year × 24 plus the hour, in
    /// the file's local standard time).
    #[serde(default)]
    pub shift_hours: f64,
}

/// A battery per node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatterySpec {
    pub capacity_wh: f64,
    #[serde(default = "hundred")]
    pub initial_percent: f64,
    /// A node whose battery ran empty (browned out) boots again at this charge.
    #[serde(default = "default_restart_percent")]
    pub restart_percent: f64,
}

fn hundred() -> f64 {
    100.0
}
fn default_restart_percent() -> f64 {
    20.0
}

fn default_inlet() -> f64 {
    23.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeList {
    pub path: PathBuf,
    /// Result ids assigned to the listed nodes in turn (the list names GPU models, not servers).
    pub hardware: Vec<String>,
    #[serde(default = "default_inlet")]
    pub inlet_celsius: f64,
    /// The kubelet's `maxPods` on every listed node (default 110).
    #[serde(default = "default_max_pods")]
    pub max_pods: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default)]
    pub trace: Option<TraceInput>,
    #[serde(default)]
    pub synthetic: Option<Synthetic>,
    /// Each pod's CPU use as a share of its request, drawn uniformly from [min, max] per pod.
    #[serde(default = "default_share")]
    pub utilisation_of_request: [f64; 2],
}

fn default_share() -> [f64; 2] {
    [0.4, 0.9]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceInput {
    /// Alibaba cluster-trace layout (see `workload::read_trace`).
    pub pods: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Synthetic {
    /// A published utilisation series, one row per `step_seconds`.
    pub utilisation_series: PathBuf,
    /// Its column holding utilisation in percent.
    pub column: String,
    /// The column is not in percent (e.g. Azure v2's total `cpu_usage`): use it as a percentage
    /// of its own peak over the whole file.
    #[serde(default)]
    pub percent_of_peak: bool,
    #[serde(default = "default_step")]
    pub step_seconds: f64,
    /// First row used (to start at another time of day).
    #[serde(default)]
    pub start_row: usize,
    /// Requested CPU the generator aims at, as a share of the cluster's CPU, per percent of the
    /// series: target = series / 100 × load_scale.
    #[serde(default = "one")]
    pub load_scale: f64,
    /// Share of the arriving CPU that comes as short jobs with Azure Functions durations.
    #[serde(default)]
    pub short_job_share: f64,
    /// The durations short jobs draw from (azure_functions_2021 excerpt layout).
    #[serde(default)]
    pub short_job_durations: Option<PathBuf>,
    /// Mean lifetime of the other (service) pods, exponentially distributed.
    #[serde(default = "default_service_seconds")]
    pub service_mean_seconds: f64,
    /// CPU requests drawn uniformly from this list.
    #[serde(default = "default_sizes")]
    pub cpu_millicores: Vec<u64>,
    #[serde(default = "default_memory_per_core")]
    pub memory_mib_per_core: u64,
}

fn default_step() -> f64 {
    300.0
}
fn one() -> f64 {
    1.0
}
fn default_service_seconds() -> f64 {
    3600.0
}
fn default_sizes() -> Vec<u64> {
    vec![250, 500, 1000, 2000]
}
fn default_memory_per_core() -> u64 {
    2048
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum PowerManagement {
    #[default]
    AlwaysOn,
    /// A node empty for `empty_minutes` powers off; one boots again when a pending pod fits on
    /// no running or booting node.
    Autoscaler {
        #[serde(default = "default_empty_minutes")]
        empty_minutes: f64,
        #[serde(default = "default_boot_seconds")]
        boot_seconds: f64,
        /// Watts while booting, as a share of the node's peak watts.
        #[serde(default = "one")]
        boot_power_of_peak: f64,
        #[serde(default)]
        off_watts: f64,
        /// How often the autoscaler looks (cluster-autoscaler's scan interval).
        #[serde(default = "default_scan_seconds")]
        scan_seconds: f64,
    },
}

fn default_empty_minutes() -> f64 {
    10.0
}
fn default_boot_seconds() -> f64 {
    120.0
}
fn default_scan_seconds() -> f64 {
    10.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reports {
    #[serde(default = "default_period")]
    pub period_seconds: f64,
    #[serde(default = "default_stale")]
    pub stale_after_seconds: f64,
    #[serde(default = "default_window")]
    pub start_window_seconds: f64,
    /// Standard deviation of the BMC's reading as a share of the true watts.
    #[serde(default = "default_noise")]
    pub sensor_noise: f64,
    /// The agent's power model.
    #[serde(default = "default_model")]
    pub model: PathBuf,
    /// Give each agent its server's published idle and peak watts (`model.idle_watts`,
    /// `model.peak_watts`), as the demo does.
    #[serde(default = "yes")]
    pub configure_idle_peak: bool,
    /// Before the run, each node passes through 20, 50 and 80 % load long enough to calibrate.
    #[serde(default = "yes")]
    pub warmup: bool,
}

impl Default for Reports {
    fn default() -> Self {
        Self {
            period_seconds: default_period(),
            stale_after_seconds: default_stale(),
            start_window_seconds: default_window(),
            sensor_noise: default_noise(),
            model: default_model(),
            configure_idle_peak: true,
            warmup: true,
        }
    }
}

fn default_period() -> f64 {
    10.0
}
fn default_stale() -> f64 {
    30.0
}
fn default_window() -> f64 {
    30.0
}
fn default_noise() -> f64 {
    0.02
}
fn default_model() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/generic.onnx"
    ))
}
fn default_max_pods() -> u64 {
    crate::cluster::KUBELET_MAX_PODS
}
fn yes() -> bool {
    true
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            file: path.into(),
            source,
        })?;
        let mut scenario: Scenario =
            serde_yaml::from_str(&text).map_err(|source| ScenarioError::Parse {
                file: path.into(),
                source,
            })?;
        scenario.dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        scenario.file_checks(path)?;
        Ok(scenario)
    }

    /// `path` as written in the scenario, resolved against its directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.dir.join(path)
    }

    fn file_checks(&self, file: &Path) -> Result<(), ScenarioError> {
        self.validate()
            .map_err(|(field, problem)| ScenarioError::Invalid {
                file: file.into(),
                field,
                problem,
            })
    }

    /// The first bad value: (field path, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, problem: &str| Err((field.to_string(), problem.to_string()));
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.duration_hours) {
            return bad("duration_hours", "must be a positive number of hours");
        }
        if self.seeds.is_empty() {
            return bad("seeds", "needs at least one seed");
        }
        if self.policies.is_empty() {
            return bad("policies", "needs at least one policy");
        }
        if self.nodes.is_empty() && self.node_list.is_none() {
            return bad("nodes", "needs at least one node group (or a node_list)");
        }
        for (i, group) in self.nodes.iter().enumerate() {
            if group.count == 0 {
                return bad(&format!("nodes[{i}].count"), "must be at least 1");
            }
            if !group.inlet_celsius.is_finite() || !(0.0..=60.0).contains(&group.inlet_celsius) {
                return bad(&format!("nodes[{i}].inlet_celsius"), "must be 0..=60 °C");
            }
            if group.cpu_millicores == Some(0) || group.memory_mib == Some(0) {
                return bad(&format!("nodes[{i}]"), "capacities must be positive");
            }
            if let Some(solar) = &group.solar {
                if group.battery.is_none() {
                    return bad(
                        &format!("nodes[{i}].solar"),
                        "needs a battery (a panel alone stores nothing)",
                    );
                }
                if !(solar.panel_watts_peak.is_finite() && solar.panel_watts_peak >= 0.0) {
                    return bad(
                        &format!("nodes[{i}].solar.panel_watts_peak"),
                        "must be >= 0",
                    );
                }
                if !solar.shift_hours.is_finite() {
                    return bad(&format!("nodes[{i}].solar.shift_hours"), "must be a number");
                }
            }
            if let Some(battery) = &group.battery {
                if !positive(battery.capacity_wh) {
                    return bad(
                        &format!("nodes[{i}].battery.capacity_wh"),
                        "must be positive",
                    );
                }
                if !(0.0..=100.0).contains(&battery.initial_percent) {
                    return bad(
                        &format!("nodes[{i}].battery.initial_percent"),
                        "must be 0..=100",
                    );
                }
                if !(battery.restart_percent > 0.0 && battery.restart_percent <= 100.0) {
                    return bad(
                        &format!("nodes[{i}].battery.restart_percent"),
                        "must be in (0, 100]",
                    );
                }
            }
        }
        if let Some(list) = &self.node_list {
            if list.hardware.is_empty() {
                return bad("node_list.hardware", "needs at least one result id");
            }
        }
        let w = &self.workload;
        match (&w.trace, &w.synthetic) {
            (None, None) | (Some(_), Some(_)) => {
                return bad("workload", "needs exactly one of `trace` and `synthetic`")
            }
            _ => {}
        }
        let [lo, hi] = w.utilisation_of_request;
        if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo > hi {
            return bad(
                "workload.utilisation_of_request",
                "must be [min, max] with 0 <= min <= max <= 1",
            );
        }
        if let Some(s) = &w.synthetic {
            if !positive(s.step_seconds) {
                return bad("workload.synthetic.step_seconds", "must be positive");
            }
            if !(s.load_scale.is_finite() && s.load_scale >= 0.0) {
                return bad("workload.synthetic.load_scale", "must be >= 0");
            }
            if !(0.0..=1.0).contains(&s.short_job_share) {
                return bad("workload.synthetic.short_job_share", "must be 0..=1");
            }
            if s.short_job_share > 0.0 && s.short_job_durations.is_none() {
                return bad(
                    "workload.synthetic.short_job_durations",
                    "is needed when short_job_share > 0",
                );
            }
            if !positive(s.service_mean_seconds) {
                return bad(
                    "workload.synthetic.service_mean_seconds",
                    "must be positive",
                );
            }
            if s.cpu_millicores.is_empty() || s.cpu_millicores.contains(&0) {
                return bad("workload.synthetic.cpu_millicores", "needs positive sizes");
            }
        }
        if let PowerManagement::Autoscaler {
            empty_minutes,
            boot_seconds,
            boot_power_of_peak,
            off_watts,
            scan_seconds,
        } = &self.power_management
        {
            if !(empty_minutes.is_finite() && *empty_minutes >= 0.0) {
                return bad("power_management.empty_minutes", "must be >= 0");
            }
            if !(boot_seconds.is_finite() && *boot_seconds >= 0.0) {
                return bad("power_management.boot_seconds", "must be >= 0");
            }
            if !(boot_power_of_peak.is_finite() && *boot_power_of_peak >= 0.0) {
                return bad("power_management.boot_power_of_peak", "must be >= 0");
            }
            if !(off_watts.is_finite() && *off_watts >= 0.0) {
                return bad("power_management.off_watts", "must be >= 0");
            }
            if !positive(*scan_seconds) {
                return bad("power_management.scan_seconds", "must be positive");
            }
        }
        let r = &self.reports;
        if !positive(r.period_seconds) {
            return bad("reports.period_seconds", "must be positive");
        }
        if !positive(r.stale_after_seconds) {
            return bad("reports.stale_after_seconds", "must be positive");
        }
        if !(r.start_window_seconds.is_finite() && r.start_window_seconds >= 0.0) {
            return bad("reports.start_window_seconds", "must be >= 0");
        }
        if !(0.0..=0.5).contains(&r.sensor_noise) {
            return bad("reports.sensor_noise", "must be 0..=0.5");
        }
        if !(self.pod_start_seconds.is_finite() && self.pod_start_seconds >= 0.0) {
            return bad("pod_start_seconds", "must be >= 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Scenario, ScenarioError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yaml");
        std::fs::write(&path, yaml).unwrap();
        Scenario::load(&path)
    }

    const GOOD: &str = "
name: t
duration_hours: 1
seeds: [1]
nodes: [{spec: power_ssj2008-20181125-00869, count: 2}]
workload: {trace: {pods: pods.csv}}
policies: [wattwise]
";

    #[test]
    fn a_minimal_scenario_loads_with_defaults() {
        let s = load(GOOD).unwrap();
        assert_eq!(s.nodes[0].inlet_celsius, 23.0);
        assert!(matches!(s.power_management, PowerManagement::AlwaysOn));
        assert_eq!(s.reports.period_seconds, 10.0);
        assert!(s.resolve(Path::new("pods.csv")).ends_with("pods.csv"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_field() {
        let err = load(&GOOD.replace("count: 2", "count: 2, cores: 4"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.yaml") && err.contains("unknown field `cores`"),
            "{err}"
        );
        assert!(err.contains("nodes[0]"), "{err}");

        let err = load(&GOOD.replace("count: 2", "count: 0"))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("s.yaml: nodes[0].count: must be at least 1"),
            "{err}"
        );

        let err = load(&format!(
            "{GOOD}power_management: {{kind: autoscaler, boot_seconds: -1}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("power_management.boot_seconds: must be >= 0"),
            "{err}"
        );

        // Battery and solar keys: unknown keys and bad values name their path.
        let solar = |group: &str| load(&GOOD.replace("count: 2}", &format!("count: 2, {group}}}")));
        let err = solar("battery: {capacity_wh: 500, initial_percnt: 50}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `initial_percnt`"), "{err}");
        assert!(err.contains("nodes[0].battery"), "{err}");
        let err = solar("battery: {capacity_wh: 0}").unwrap_err().to_string();
        assert!(
            err.ends_with("s.yaml: nodes[0].battery.capacity_wh: must be positive"),
            "{err}"
        );
        let err = solar("solar: {site: x.csv, panel_watts_peak: 100}")
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("nodes[0].solar: needs a battery (a panel alone stores nothing)"),
            "{err}"
        );
        let err = solar("solar: {site: x.csv, panel_watts_peak: -5}, battery: {capacity_wh: 500}")
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("nodes[0].solar.panel_watts_peak: must be >= 0"),
            "{err}"
        );
        let ok = solar("solar: {site: x.csv, panel_watts_peak: 100}, battery: {capacity_wh: 500}")
            .unwrap();
        let battery = ok.nodes[0].battery.as_ref().unwrap();
        assert_eq!(
            (battery.initial_percent, battery.restart_percent),
            (100.0, 20.0)
        );
        assert_eq!(ok.nodes[0].solar.as_ref().unwrap().shift_hours, 0.0);

        let err = load(&GOOD.replace("[wattwise]", "[wattwise, best]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("policies") && err.contains("best"), "{err}");
    }
}
