//! A wattwise binary (agent or scheduler) running as a process with a generated YAML config, a
//! gRPC port and a metrics/health port on free loopback ports; stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{free_tcp_port, ManagedProcess};

/// A binary of this workspace in the running executable's `target/<profile>` directory: next to
/// it (a binary such as the demo) or one up (a test in `deps/`). The test command builds every
/// workspace target before running tests.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().context("deps/ has no parent")?
    } else {
        dir
    };
    let binary = profile_dir.join(name);
    if !binary.is_file() {
        bail!(
            "{} is not built: run `cargo build --workspace --all-targets` (scripts/test does)",
            binary.display()
        );
    }
    Ok(binary)
}

/// Runs `binary --check-config --config <yaml written to dir/name> args…` as before deployment
/// (no downward-API variables, no overrides from this environment): (success, stdout + stderr).
pub fn check_config(
    binary: &Path,
    yaml: &str,
    dir: &Path,
    name: &str,
    args: &[&str],
) -> Result<(bool, String)> {
    let file = dir.join(name);
    std::fs::write(&file, yaml)?;
    let out = Command::new(binary)
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .args(args)
        .env_remove("NODE_NAME")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("KUBECONFIG")
        .env_remove("WATTWISE_AGENT_CONFIG")
        .env_remove("WATTWISE_SCHEDULER_CONFIG")
        .env_remove("WATTWISE_MODEL")
        .env_remove("WATTWISE_CALIBRATION_STATE")
        .env_remove("WATTWISE_BMC_HOST")
        .env_remove("WATTWISE_SCHEDULER_ENDPOINTS")
        .env_remove("WATTWISE_SCHEDULER_NAME")
        .env_remove("WATTWISE_GRPC_LISTEN")
        .env_remove("WATTWISE_METRICS_LISTEN")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The `/metrics` exposition served at `addr`.
pub async fn scrape(http: &reqwest::Client, addr: SocketAddr) -> Result<String> {
    Ok(http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Where a served process listens, chosen before it starts.
#[derive(Debug, Clone)]
pub struct Ports {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: PathBuf,
}

/// A running wattwise binary.
pub struct ServedProcess {
    name: &'static str,
    process: ManagedProcess,
    grpc: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl ServedProcess {
    /// Writes `config_yaml` plus the listen addresses to `<dir>/config.yaml` and runs the command
    /// `make_command` builds (given the ports and the config path) without waiting.
    pub fn spawn(
        name: &'static str,
        config_yaml: &str,
        make_command: impl FnOnce(&Ports, &Path) -> Result<Command>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()?;
        let ports = Ports {
            grpc: format!("127.0.0.1:{}", free_tcp_port()?).parse()?,
            metrics: format!("127.0.0.1:{}", free_tcp_port()?).parse()?,
            dir: dir.path().to_path_buf(),
        };
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "{config_yaml}\ngrpc: {{listen: \"{}\"}}\nmetrics: {{listen: \"{}\"}}\n",
                ports.grpc, ports.metrics
            ),
        )?;
        let cmd = make_command(&ports, &config)?;
        let process = ManagedProcess::spawn(name, cmd, dir.path())?;
        Ok(Self {
            name,
            process,
            grpc: ports.grpc,
            metrics: ports.metrics,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = format!("http://{}/readyz", self.metrics);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if !self.process.is_running() {
                bail!(
                    "{} exited before it was ready; log:\n{}",
                    self.name,
                    self.log_tail(60)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} not ready within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the process to exit and returns its exit code and log (for startup-error tests).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<(i32, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.process.is_running() {
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} still running after {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((self.process.exit_code().unwrap_or(-1), self.log_tail(200)))
    }

    /// The process id (of the program itself, also behind an exec-ing wrapper).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the process (SIGTERM, then SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// SIGKILL: no chance to clean up (a crashed replica).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The `/metrics` exposition.
    pub async fn metrics_text(&self) -> Result<String> {
        scrape(&self.http, self.metrics).await
    }

    /// The value of the first sample whose series (name plus labels, as exposed) starts with
    /// `series`, e.g. `wattwise_scheduler_leader` or
    /// `wattwise_scheduler_reports_total{reason="accepted"}`.
    pub async fn metric(&self, series: &str) -> Result<Option<f64>> {
        let text = self.metrics_text().await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok()))
    }
}
