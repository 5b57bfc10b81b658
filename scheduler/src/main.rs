//! `wattwise-scheduler`: the central scheduler. Configuration comes from a YAML file (`--config`),
//! overridden by flags and their environment variables; the cluster from `--kubeconfig`,
//! `KUBECONFIG` or the in-cluster service account.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use wattwise_scheduler::cluster::clients::ApiClients;
use wattwise_scheduler::config::{ApiConfig, SchedulerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "wattwise-scheduler",
    version,
    about = "wattwise scheduler: binds pods to the best-powered node with the lowest predicted power increase"
)]
struct Cli {
    /// YAML configuration file.
    #[arg(long, env = "WATTWISE_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    /// kubeconfig file (default: KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Pods with this spec.schedulerName are scheduled (overrides `scheduler_name`).
    #[arg(long, env = "WATTWISE_SCHEDULER_NAME")]
    scheduler_name: Option<String>,
    /// This replica's identity in the Lease and in events (overrides `identity`).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Namespace of the leader Lease (overrides `leader_election.namespace`).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// gRPC listen address for agent reports (overrides `grpc.listen`).
    #[arg(long, env = "WATTWISE_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Metrics/health listen address (overrides `metrics.listen`).
    #[arg(long, env = "WATTWISE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the kube-scheduler extender API on this address (sets `extender.enabled` and
    /// `extender.listen`; deploy/overlays/extender passes it).
    #[arg(long, env = "WATTWISE_EXTENDER_LISTEN")]
    extender_listen: Option<SocketAddr>,
    /// Validate the configuration (and the kubeconfig, when one is given) and exit.
    #[arg(long)]
    check_config: bool,
    /// Log format.
    #[arg(long, env = "WATTWISE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

impl Cli {
    fn config(&self) -> Result<SchedulerConfig> {
        let mut config = match &self.config {
            Some(path) => SchedulerConfig::from_file(path)?,
            None => SchedulerConfig::default(),
        };
        if let Some(name) = &self.scheduler_name {
            config.scheduler_name = name.clone();
        }
        if self.identity.is_some() {
            config.identity = self.identity.clone();
        }
        if self.lease_namespace.is_some() {
            config.leader_election.namespace = self.lease_namespace.clone();
        }
        if let Some(addr) = self.grpc_listen {
            config.grpc.listen = addr;
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics.listen = addr;
        }
        if let Some(addr) = self.extender_listen {
            config.extender.enabled = true;
            config.extender.listen = addr;
        }
        config.validate()?;
        Ok(config)
    }
}

async fn kube_config(kubeconfig: Option<&PathBuf>) -> Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no cluster configuration (KUBECONFIG, ~/.kube/config or in-cluster)")?,
    })
}

/// `--check-config` goes as far as startup short of contacting the API server: a cluster
/// configuration given with `--kubeconfig` or `KUBECONFIG` is loaded into a client the way startup
/// loads it. Without one there is nothing to check before deployment (in a pod the service
/// account's is used).
async fn check_cluster_config(cli: &Cli, api: &ApiConfig) -> Result<()> {
    if cli.kubeconfig.is_some() || std::env::var_os("KUBECONFIG").is_some() {
        ApiClients::new(kube_config(cli.kubeconfig.as_ref()).await?, api)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    wattwise_daemon::logging::init(&cli.log_format);
    let config = cli.config().context("invalid configuration")?;
    if cli.check_config {
        check_cluster_config(&cli, &config.api).await?;
        println!("configuration is valid");
        return Ok(());
    }
    let clients = ApiClients::new(kube_config(cli.kubeconfig.as_ref()).await?, &config.api)?;
    wattwise_scheduler::run::run(config, clients, |_| {}, wattwise_daemon::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["wattwise-scheduler", "--check-config"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn extender_listen_turns_extender_mode_on_and_is_validated() {
        let config = cli(&["--extender-listen=127.0.0.1:9302"]).config().unwrap();
        assert!(config.extender.enabled);
        assert_eq!(config.extender.listen.to_string(), "127.0.0.1:9302");
        assert!(!cli(&[]).config().unwrap().extender.enabled);
        // The same address as the metrics server: refused by validation, naming the key.
        let err = cli(&[
            "--extender-listen=127.0.0.1:9300",
            "--metrics-listen=127.0.0.1:9300",
        ])
        .config()
        .unwrap_err();
        assert!(format!("{err:#}").contains("extender.listen"), "{err:#}");
    }

    /// A kubeconfig for an API server that does not exist: loading it must not contact one.
    const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: abc}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
";

    #[tokio::test]
    async fn check_config_loads_a_given_kubeconfig_as_startup_does() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.kubeconfig");
        std::fs::write(&good, KUBECONFIG).unwrap();
        check_cluster_config(
            &cli(&["--kubeconfig", good.to_str().unwrap()]),
            &ApiConfig::default(),
        )
        .await
        .unwrap();

        let missing = dir.path().join("missing.kubeconfig");
        let broken = dir.path().join("broken.kubeconfig");
        std::fs::write(&broken, "clusters: [this is not a kubeconfig\n").unwrap();
        let no_context = dir.path().join("no-context.kubeconfig");
        std::fs::write(
            &no_context,
            KUBECONFIG.replace("current-context: x", "current-context: y"),
        )
        .unwrap();
        for path in [&missing, &broken, &no_context] {
            let path = path.to_str().unwrap();
            let err = check_cluster_config(&cli(&["--kubeconfig", path]), &ApiConfig::default())
                .await
                .unwrap_err();
            assert!(format!("{err:#}").contains(path), "{path}: {err:#}");
        }
    }
}
