//! The real `wattwise-agent` binary as a process, configured by a YAML document, on free loopback
//! ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{free_tcp_port, ManagedProcess};

/// A binary of this workspace, next to the running test's own `deps/` directory (the test command
/// builds every workspace target before running tests).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target/<profile> directory")?;
    let binary = profile_dir.join(name);
    if !binary.is_file() {
        bail!(
            "{} is not built: run `cargo build --workspace --all-targets` (scripts/test does)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A running agent; stopped on drop.
pub struct AgentProcess {
    process: ManagedProcess,
    grpc: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl AgentProcess {
    /// Starts the agent with `config_yaml` (grpc/metrics listen addresses are added) and `env`,
    /// and waits until it serves a first report (`/readyz`).
    pub async fn start(config_yaml: &str, env: &[(&str, &str)]) -> Result<Self> {
        let agent = Self::spawn(config_yaml, env)?;
        agent.wait_ready(Duration::from_secs(30)).await?;
        Ok(agent)
    }

    /// Starts the agent without waiting: for tests of startup failures and slow peers.
    pub fn spawn(config_yaml: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wattwise-agent-")
            .tempdir()?;
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let config = dir.path().join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "{config_yaml}\ngrpc: {{listen: \"{grpc}\"}}\nmetrics: {{listen: \"{metrics}\"}}\n"
            ),
        )?;
        let mut cmd = Command::new(workspace_binary("wattwise-agent")?);
        cmd.arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,wattwise_agent=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = ManagedProcess::spawn("wattwise-agent", cmd, dir.path())?;
        Ok(Self {
            process,
            grpc,
            metrics,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let url = format!("http://{}/readyz", self.metrics);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "agent not ready within {timeout:?}; log:\n{}",
                    self.log_tail(40)
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
                    "agent still running after {timeout:?}; log:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((self.process.exit_code().unwrap_or(-1), self.log_tail(200)))
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
        Ok(self
            .http
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}
