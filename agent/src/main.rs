//! `wattwise-agent`: the node agent. Configuration comes from a YAML file (`--config`), overridden
//! by flags and their environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use wattwise_agent::config::AgentConfig;

#[derive(Debug, Parser)]
#[command(
    name = "wattwise-agent",
    version,
    about = "wattwise node agent: IPMI + CPU + power model → marginal-power reports"
)]
struct Cli {
    /// YAML configuration file.
    #[arg(long, env = "WATTWISE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Kubernetes Node name (downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// ONNX power model (overrides `model.path`).
    #[arg(long, env = "WATTWISE_MODEL")]
    model: Option<PathBuf>,
    /// BMC address for `bmc.mode: lan` (overrides `bmc.host`): one DaemonSet config serves every
    /// node when each node's BMC address comes from its environment.
    #[arg(long, env = "WATTWISE_BMC_HOST")]
    bmc_host: Option<String>,
    /// Calibration state file (overrides `calibration.state_path`).
    #[arg(long, env = "WATTWISE_CALIBRATION_STATE")]
    calibration_state: Option<PathBuf>,
    /// gRPC listen address (overrides `grpc.listen`).
    #[arg(long, env = "WATTWISE_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Metrics/health listen address (overrides `metrics.listen`).
    #[arg(long, env = "WATTWISE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Scheduler endpoints `host:port`, comma-separated (overrides `scheduler.endpoints`).
    #[arg(long, env = "WATTWISE_SCHEDULER_ENDPOINTS", value_delimiter = ',')]
    scheduler: Vec<String>,
    /// Validate the configuration and load the power model as startup does, print "configuration
    /// is valid" and exit (before deployment NODE_NAME may be unset: a placeholder stands in).
    #[arg(long)]
    check_config: bool,
    /// Log format.
    #[arg(long, env = "WATTWISE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// The node name `--check-config` validates with when none is configured.
const CHECK_NODE_NAME: &str = "check-config-placeholder";

impl Cli {
    fn into_config(self) -> Result<AgentConfig> {
        let mut config = match &self.config {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        if self.node_name.is_some() {
            config.node_name = self.node_name;
        }
        if self.model.is_some() {
            config.model.path = self.model;
        }
        if self.bmc_host.is_some() {
            config.bmc.host = self.bmc_host.clone();
        }
        if let Some(path) = self.calibration_state {
            config.calibration.state_path = path;
        }
        if let Some(addr) = self.grpc_listen {
            config.grpc.listen = addr;
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics.listen = addr;
        }
        if !self.scheduler.is_empty() {
            config.scheduler.endpoints = self.scheduler;
        }
        if self.check_config && config.node_name.is_none() {
            config.node_name = Some(CHECK_NODE_NAME.to_string());
        }
        config.validate()?;
        Ok(config)
    }
}

/// How long the exit waits for blocking reads still running (a sysfs or FIFO read hung in the
/// kernel never finishes; the runtime would otherwise wait for it forever).
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

fn main() -> Result<()> {
    let cli = Cli::parse();
    wattwise_daemon::logging::init(&cli.log_format);
    let check_only = cli.check_config;
    let config = cli.into_config().context("invalid configuration")?;
    if check_only {
        // What startup loads before it serves: a configuration that passes here can start.
        let model = wattwise_agent::run::load_model(&config).context("invalid configuration")?;
        println!(
            "configuration is valid (power model {}: {} {})",
            model.path().display(),
            model.info().name,
            model.info().version
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(wattwise_agent::run::run(
        config,
        std::path::Path::new("/sys"),
        |_| {},
        wattwise_daemon::shutdown_signal(),
    ));
    runtime.shutdown_timeout(BLOCKING_GRACE);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_file(yaml: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), yaml).unwrap();
        file
    }

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["wattwise-agent"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn check_config_fills_a_missing_node_name_only_when_checking() {
        let file = config_file("model: {path: /m.onnx}\n");
        let path = file.path().to_str().unwrap();
        let config = cli(&["--check-config", "--config", path])
            .into_config()
            .unwrap();
        assert_eq!(config.node_name.as_deref(), Some(CHECK_NODE_NAME));
        let err = cli(&["--config", path]).into_config().unwrap_err();
        assert!(format!("{err:#}").contains("node_name"), "{err:#}");
    }

    #[test]
    fn check_config_keeps_a_given_node_name_and_still_rejects_bad_configs() {
        let file = config_file("model: {path: /m.onnx}\n");
        let path = file.path().to_str().unwrap();
        let config = cli(&["--check-config", "--config", path, "--node-name", "n1"])
            .into_config()
            .unwrap();
        assert_eq!(config.node_name.as_deref(), Some("n1"));
        let typo = config_file("model: {path: /m.onnx}\nintervall: 1s\n");
        let err = cli(&["--check-config", "--config", typo.path().to_str().unwrap()])
            .into_config()
            .unwrap_err();
        assert!(format!("{err:#}").contains("intervall"), "{err:#}");
        let missing_model = config_file("interval: 1s\n");
        let err = cli(&[
            "--check-config",
            "--config",
            missing_model.path().to_str().unwrap(),
        ])
        .into_config()
        .unwrap_err();
        assert!(format!("{err:#}").contains("model.path"), "{err:#}");
    }

    #[test]
    fn the_bmc_host_comes_from_the_node_when_the_shared_config_has_none() {
        let file = config_file(
            "node_name: n1\nmodel: {path: /m.onnx}\nbmc: {mode: lan, username: root}\n",
        );
        let path = file.path().to_str().unwrap();
        let err = cli(&["--config", path]).into_config().unwrap_err();
        assert!(format!("{err:#}").contains("bmc.host"), "{err:#}");
        let config = cli(&["--config", path, "--bmc-host", "10.0.0.7"])
            .into_config()
            .unwrap();
        assert_eq!(config.bmc.host.as_deref(), Some("10.0.0.7"));
    }

    #[test]
    fn the_calibration_state_path_can_come_from_the_environment() {
        let file = config_file(
            "node_name: n1\nmodel: {path: /m.onnx}\ncalibration: {state_path: /var/lib/a.json}\n",
        );
        let path = file.path().to_str().unwrap();
        let config = cli(&["--config", path]).into_config().unwrap();
        assert_eq!(
            config.calibration.state_path,
            std::path::Path::new("/var/lib/a.json")
        );
        let config = cli(&["--config", path, "--calibration-state", "/tmp/b.json"])
            .into_config()
            .unwrap();
        assert_eq!(
            config.calibration.state_path,
            std::path::Path::new("/tmp/b.json")
        );
        let err = cli(&["--config", path, "--calibration-state", "relative.json"])
            .into_config()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("calibration.state_path"),
            "{err:#}"
        );
    }
}
