//! Agent configuration: one YAML file, overridden by flags and environment (see `cli.rs`).
//! Unknown keys and invalid values are errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::ModelOverrides;
use crate::sensors::roles::Role;

pub use wattwise_daemon::config::{invalid, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Kubernetes Node name; normally from `NODE_NAME` (downward API).
    pub node_name: Option<String>,
    /// How often readings are taken and a report is produced.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub bmc: BmcConfig,
    pub cpu: CpuConfig,
    pub model: ModelConfig,
    pub calibration: CalibrationConfig,
    pub energy: EnergyConfig,
    pub grpc: ListenConfig,
    pub metrics: ListenConfig,
    pub scheduler: SchedulerConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            interval: Duration::from_secs(1),
            bmc: BmcConfig::default(),
            cpu: CpuConfig::default(),
            model: ModelConfig::default(),
            calibration: CalibrationConfig::default(),
            energy: EnergyConfig::default(),
            grpc: ListenConfig {
                listen: "0.0.0.0:9101".parse().expect("valid literal"),
            },
            metrics: ListenConfig {
                listen: "0.0.0.0:9100".parse().expect("valid literal"),
            },
            scheduler: SchedulerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub listen: SocketAddr,
}

/// How the agent reaches the node's BMC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BmcConfig {
    pub mode: BmcMode,
    /// In-band device.
    pub device: PathBuf,
    /// LAN (RMCP+) address and user.
    pub host: Option<String>,
    pub port: u16,
    pub username: Option<String>,
    /// File holding the LAN password (e.g. a mounted Secret). Takes precedence over `password_env`.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the LAN password.
    pub password_env: String,
    /// Longest one IPMI request may take before the BMC counts as unreachable.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often the SDR repository info is checked for changes (the SDR is re-read on change).
    #[serde(with = "humantime_serde")]
    pub sdr_check_interval: Duration,
    /// Sensor names that fill roles, overriding discovery: `inlet`, `cpu0`, `cpu1`, …, `power`.
    pub sensors: std::collections::BTreeMap<String, String>,
}

impl Default for BmcConfig {
    fn default() -> Self {
        Self {
            mode: BmcMode::None,
            device: PathBuf::from("/dev/ipmi0"),
            host: None,
            port: 623,
            username: None,
            password_file: None,
            password_env: "IPMI_PASSWORD".into(),
            timeout: Duration::from_secs(2),
            sdr_check_interval: Duration::from_secs(60),
            sensors: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BmcMode {
    /// No BMC: temperatures come from model defaults, no measured watts.
    None,
    /// `/dev/ipmi0` through the kernel IPMI driver.
    InBand,
    /// RMCP+ over the network.
    Lan,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    pub source: CpuSource,
    /// For `source: file`: a file holding the utilisation as a fraction 0..1.
    pub file: Option<PathBuf>,
    /// Overrides the detected capacity (millicores), e.g. to match the Node's allocatable.
    pub capacity_millicores: Option<u64>,
}

impl Default for CpuConfig {
    fn default() -> Self {
        Self {
            source: CpuSource::Sysinfo,
            file: None,
            capacity_millicores: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuSource {
    /// Measured on this host (production).
    Sysinfo,
    /// Read from `cpu.file` (demos and tests that drive utilisation).
    File,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The ONNX power model.
    pub path: Option<PathBuf>,
    /// The node's idle and peak watts (for models that output a fraction of peak, and for
    /// `idle_over_peak` inputs).
    pub idle_watts: Option<f64>,
    pub peak_watts: Option<f64>,
    /// Replaces what the model's metadata says about its inputs.
    pub overrides: ModelOverrides,
}

/// Online calibration of the model against the BMC's measured watts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationConfig {
    /// Fit `a·P_model + b` to measured watts and report the corrected curve.
    pub enabled: bool,
    /// Node-local file the fit is kept in across agent restarts.
    pub state_path: PathBuf,
    /// N: samples each load level (0, 5, …, 100 % utilisation) averages over. A level is a plain
    /// mean until it has N samples, then an exponential average over about its last N; it only
    /// forgets when its own load is measured again (one sample per `interval` at most).
    pub memory_samples: u64,
    /// Longest time a changed fit waits before it is written to `state_path` (it is also written
    /// on shutdown and when the calibration state changes).
    #[serde(with = "humantime_serde")]
    pub save_interval: Duration,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            state_path: PathBuf::from("/var/lib/wattwise/calibration.json"),
            memory_samples: crate::model::calibration::DEFAULT_MEMORY_SAMPLES,
            save_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyConfig {
    pub source: EnergySourceConfig,
    /// Points past a level's boundary before the level changes (0..=5).
    pub hysteresis_percent: f64,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        Self {
            source: EnergySourceConfig::None,
            hysteresis_percent: 2.0,
            interval: Duration::from_secs(10),
        }
    }
}

/// Where the node's stored-energy percentage comes from, e.g.
/// `source: {type: power-supply, name: BAT0}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EnergySourceConfig {
    /// No energy source: no level is reported.
    None,
    /// `/sys/class/power_supply/<name>/capacity` (a battery or UPS the kernel knows).
    PowerSupply { name: String },
    /// A file holding a percentage.
    File { path: PathBuf },
    /// An HTTP endpoint answering a percentage (plain number or JSON `{"percent": n}`).
    Http { url: String },
    /// A constant percentage.
    Fixed { percent: f64 },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// `host:port` of each scheduler; a name resolving to several addresses (a headless Service)
    /// means one stream to each.
    pub endpoints: Vec<String>,
    /// How often endpoints are re-resolved, to follow scheduler replicas coming and going.
    #[serde(with = "humantime_serde")]
    pub resolve_interval: Duration,
    /// Reconnect backoff bounds (jittered, doubling).
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            resolve_interval: Duration::from_secs(30),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl AgentConfig {
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
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(300) {
            return Err(invalid("interval", "must be between 100ms and 5m"));
        }
        match &self.node_name {
            None => {
                return Err(invalid(
                    "node_name",
                    "not set: set NODE_NAME (downward API spec.nodeName) or --node-name",
                ))
            }
            Some(name) if name.is_empty() => return Err(invalid("node_name", "is empty")),
            Some(_) => {}
        }
        self.validate_bmc()?;
        if self.cpu.source == CpuSource::File && self.cpu.file.is_none() {
            return Err(invalid("cpu.file", "required when cpu.source is file"));
        }
        if self.cpu.capacity_millicores == Some(0) {
            return Err(invalid("cpu.capacity_millicores", "must be > 0"));
        }
        self.validate_model()?;
        self.validate_calibration()?;
        self.validate_energy()?;
        if self.scheduler.backoff_min.is_zero()
            || self.scheduler.backoff_min > self.scheduler.backoff_max
        {
            return Err(invalid(
                "scheduler.backoff_min",
                "must be > 0 and <= scheduler.backoff_max",
            ));
        }
        for endpoint in &self.scheduler.endpoints {
            match endpoint.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => {
                    return Err(invalid(
                        "scheduler.endpoints",
                        format!("{endpoint:?} is not host:port"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn validate_bmc(&self) -> Result<(), ConfigError> {
        let bmc = &self.bmc;
        if bmc.mode == BmcMode::Lan {
            if bmc.host.as_deref().unwrap_or("").is_empty() {
                return Err(invalid("bmc.host", "required when bmc.mode is lan"));
            }
            if bmc.username.as_deref().unwrap_or("").is_empty() {
                return Err(invalid("bmc.username", "required when bmc.mode is lan"));
            }
        }
        if bmc.timeout.is_zero() || bmc.timeout > Duration::from_secs(60) {
            return Err(invalid("bmc.timeout", "must be between 1ms and 60s"));
        }
        for role in bmc.sensors.keys() {
            if Role::parse(role).is_none() {
                return Err(invalid(
                    "bmc.sensors",
                    format!("unknown role {role:?}: expected inlet, cpu0, cpu1, …, or power"),
                ));
            }
        }
        Ok(())
    }

    fn validate_model(&self) -> Result<(), ConfigError> {
        let m = &self.model;
        if m.path.is_none() {
            return Err(invalid(
                "model.path",
                "required: the ONNX power model to run",
            ));
        }
        for (key, value) in [
            ("model.idle_watts", m.idle_watts),
            ("model.peak_watts", m.peak_watts),
        ] {
            if let Some(w) = value {
                if !w.is_finite() || w <= 0.0 || w > wattwise_core::curve::MAX_NODE_WATTS {
                    return Err(invalid(key, format!("{w} is not a plausible node wattage")));
                }
            }
        }
        if let (Some(idle), Some(peak)) = (m.idle_watts, m.peak_watts) {
            if idle >= peak {
                return Err(invalid(
                    "model.idle_watts",
                    format!("{idle} W must be below model.peak_watts ({peak} W)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_calibration(&self) -> Result<(), ConfigError> {
        let c = &self.calibration;
        let range = crate::model::calibration::MEMORY_SAMPLES_RANGE;
        if !range.contains(&c.memory_samples) {
            return Err(invalid(
                "calibration.memory_samples",
                format!(
                    "{} is outside {}..={} (samples each load level averages over; 300 = 5 minutes at a 1 s interval)",
                    c.memory_samples,
                    range.start(),
                    range.end()
                ),
            ));
        }
        if c.save_interval < Duration::from_secs(1) || c.save_interval > Duration::from_secs(3600) {
            return Err(invalid(
                "calibration.save_interval",
                "must be between 1s and 1h",
            ));
        }
        let path = &c.state_path;
        if path.as_os_str().is_empty() || path.file_name().is_none() || !path.is_absolute() {
            return Err(invalid(
                "calibration.state_path",
                format!("{} is not an absolute file path", path.display()),
            ));
        }
        Ok(())
    }

    fn validate_energy(&self) -> Result<(), ConfigError> {
        let e = &self.energy;
        let max = wattwise_core::energy::MAX_HYSTERESIS_PERCENT;
        if !(0.0..=max).contains(&e.hysteresis_percent) {
            return Err(invalid(
                "energy.hysteresis_percent",
                format!("{} is outside 0..={max}", e.hysteresis_percent),
            ));
        }
        if e.interval < Duration::from_millis(100) {
            return Err(invalid("energy.interval", "must be at least 100ms"));
        }
        match &e.source {
            EnergySourceConfig::Fixed { percent } if !(0.0..=100.0).contains(percent) => {
                Err(invalid(
                    "energy.source.fixed.percent",
                    format!("{percent} is outside 0..=100"),
                ))
            }
            EnergySourceConfig::PowerSupply { name }
                if name.is_empty() || name.contains('/') || name.starts_with('.') =>
            {
                Err(invalid(
                    "energy.source.power-supply.name",
                    format!("{name:?} is not a power_supply device name"),
                ))
            }
            EnergySourceConfig::Http { url }
                if !(url.starts_with("http://") || url.starts_with("https://")) =>
            {
                Err(invalid(
                    "energy.source.http.url",
                    format!("{url:?} is not an http(s) URL"),
                ))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AgentConfig, String> {
        AgentConfig::from_yaml(yaml)
    }

    fn valid_base() -> AgentConfig {
        parse("node_name: node-1\nmodel: {path: /models/generic.onnx}\n").unwrap()
    }

    #[test]
    fn a_full_config_parses() {
        let c = parse(
            r#"
node_name: node-1
interval: 2s
bmc:
  mode: lan
  host: 10.0.0.5
  username: admin
  password_file: /secrets/ipmi
  timeout: 500ms
  sensors: {inlet: "Inlet Temp", cpu0: "CPU1 Temp", power: "Sys Power"}
cpu: {source: file, file: /run/util, capacity_millicores: 8000}
model: {path: /m.onnx, idle_watts: 80, peak_watts: 300}
calibration: {enabled: true, state_path: /var/lib/wattwise/cal.json, memory_samples: 600, save_interval: 30s}
energy: {source: {type: power-supply, name: BAT0}, hysteresis_percent: 3, interval: 5s}
grpc: {listen: "127.0.0.1:9101"}
scheduler: {endpoints: ["wattwise-scheduler.kube-system.svc:9201"]}
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.bmc.mode, BmcMode::Lan);
        assert_eq!(c.bmc.timeout, Duration::from_millis(500));
        assert_eq!(c.bmc.sensors["cpu0"], "CPU1 Temp");
        assert_eq!(
            c.energy.source,
            EnergySourceConfig::PowerSupply {
                name: "BAT0".into()
            }
        );
        assert_eq!(c.metrics.listen.port(), 9100, "default kept");
        assert_eq!(c.calibration.memory_samples, 600);
        assert_eq!(c.calibration.save_interval, Duration::from_secs(30));
        assert_eq!(
            c.calibration.state_path,
            Path::new("/var/lib/wattwise/cal.json")
        );
    }

    #[test]
    fn calibration_defaults_are_on_and_node_local() {
        let c = valid_base();
        assert!(c.calibration.enabled);
        assert_eq!(
            c.calibration.state_path,
            Path::new("/var/lib/wattwise/calibration.json")
        );
        assert_eq!(c.calibration.memory_samples, 300);
        let err = parse("calibration: {enable: false}\n").unwrap_err();
        assert!(err.contains("enable"), "{err}");
        // The recursive least squares' setting is gone: a config still carrying it is told so.
        let err = parse("calibration: {forgetting: 0.998}\n").unwrap_err();
        assert!(err.contains("forgetting"), "{err}");
        let err = parse("calibration: {memory_samples: 0.5}\n").unwrap_err();
        assert!(
            err.contains("memory_samples") || err.contains("integer"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("node_name: n\nintervall: 1s\n").unwrap_err();
        assert!(err.contains("intervall"), "{err}");
        let err = parse("bmc: {mode: lan, hots: x}\n").unwrap_err();
        assert!(err.contains("hots"), "{err}");
        let err = parse("bmc: {mode: serial}\n").unwrap_err();
        assert!(err.contains("serial"), "{err}");
        let err = parse("energy: {source: {type: fixed, percnt: 3}}\n").unwrap_err();
        assert!(err.contains("percnt"), "{err}");
        let err = parse("interval: soon\n").unwrap_err();
        assert!(err.contains("interval"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        type Mutation = Box<dyn Fn(&mut AgentConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.node_name = None), "node_name"),
            (
                Box::new(|c| c.interval = Duration::from_millis(1)),
                "interval",
            ),
            (Box::new(|c| c.bmc.mode = BmcMode::Lan), "bmc.host"),
            (
                Box::new(|c| {
                    c.bmc.sensors.insert("gpu".into(), "x".into());
                }),
                "bmc.sensors",
            ),
            (Box::new(|c| c.cpu.source = CpuSource::File), "cpu.file"),
            (Box::new(|c| c.model.path = None), "model.path"),
            (
                Box::new(|c| c.model.peak_watts = Some(f64::NAN)),
                "model.peak_watts",
            ),
            (
                Box::new(|c| {
                    c.model.idle_watts = Some(300.0);
                    c.model.peak_watts = Some(200.0);
                }),
                "model.idle_watts",
            ),
            (
                Box::new(|c| c.calibration.memory_samples = 9),
                "calibration.memory_samples",
            ),
            (
                Box::new(|c| c.calibration.memory_samples = 100_001),
                "calibration.memory_samples",
            ),
            (
                Box::new(|c| c.calibration.save_interval = Duration::ZERO),
                "calibration.save_interval",
            ),
            (
                Box::new(|c| c.calibration.state_path = PathBuf::from("calibration.json")),
                "calibration.state_path",
            ),
            (
                Box::new(|c| c.calibration.state_path = PathBuf::from("/")),
                "calibration.state_path",
            ),
            (
                Box::new(|c| c.energy.hysteresis_percent = 9.0),
                "energy.hysteresis_percent",
            ),
            (
                Box::new(|c| c.energy.source = EnergySourceConfig::Fixed { percent: 120.0 }),
                "energy.source.fixed.percent",
            ),
            (
                Box::new(|c| c.scheduler.endpoints = vec!["no-port".into()]),
                "scheduler.endpoints",
            ),
        ];
        for (mutate, key) in cases {
            let mut c = valid_base();
            mutate(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("config key `{key}`")),
                "{key}: {err}"
            );
        }
    }
}
