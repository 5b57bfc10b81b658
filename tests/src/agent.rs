//! The real `wattwise-agent` binary as a process, configured by a YAML document, on free loopback
//! ports. [`Launch`] picks another build of the binary (the benchmark runs the release one) or gives
//! the agent its own `/etc/hosts` (a private mount namespace), so a test can make a host name
//! resolve to several loopback addresses without touching the machine's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{free_tcp_port, require_program, ManagedProcess};

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

/// How to start the agent beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The agent binary; default: the one next to the running test ([`workspace_binary`]).
    pub binary: Option<PathBuf>,
    /// The contents of `/etc/hosts` as the agent sees it. The agent then runs in a private mount
    /// namespace (`unshare --mount`; as non-root with a user namespace too) in which a file with
    /// these contents is bind-mounted over `/etc/hosts`; the machine's own file is untouched.
    pub hosts: Option<String>,
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
        Self::start_with(config_yaml, env, &Launch::default()).await
    }

    /// [`AgentProcess::start`] with launch options.
    pub async fn start_with(
        config_yaml: &str,
        env: &[(&str, &str)],
        launch: &Launch,
    ) -> Result<Self> {
        let agent = Self::spawn_with(config_yaml, env, launch)?;
        agent.wait_ready(Duration::from_secs(30)).await?;
        Ok(agent)
    }

    /// Starts the agent without waiting: for tests of startup failures and slow peers.
    pub fn spawn(config_yaml: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_with(config_yaml, env, &Launch::default())
    }

    /// [`AgentProcess::spawn`] with launch options.
    pub fn spawn_with(config_yaml: &str, env: &[(&str, &str)], launch: &Launch) -> Result<Self> {
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
        let binary = match &launch.binary {
            Some(path) => path.clone(),
            None => workspace_binary("wattwise-agent")?,
        };
        let mut cmd = match &launch.hosts {
            None => Command::new(&binary),
            Some(hosts) => {
                let hosts_file = dir.path().join("hosts");
                std::fs::write(&hosts_file, hosts)?;
                check_private_hosts(&hosts_file, hosts, dir.path())?;
                private_hosts_command(&hosts_file, &binary)?
            }
        };
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

    /// The agent's process id (the agent itself, also when it runs in a private mount namespace:
    /// the wrapper execs it).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the agent (SIGTERM, then SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        self.process.stop();
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

/// `unshare --mount -- sh -c 'mount --bind HOSTS /etc/hosts && exec "$@"' HOSTS PROGRAM …`: the
/// program (same pid: unshare and sh exec) sees `hosts_file` as `/etc/hosts`. Mounts made in the
/// new namespace are private to it, so nothing changes outside. As non-root the namespace needs a
/// user namespace that maps the caller to root (`--map-root-user`).
fn private_hosts_command(hosts_file: &Path, program: &Path) -> Result<Command> {
    let mut cmd = Command::new(require_program("unshare")?);
    require_program("mount")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(hosts_file)
        .arg(program);
    Ok(cmd)
}

/// Runs the private-hosts wrapper around `cat /etc/hosts` and fails, saying why, unless it shows
/// `expected`: a machine without mount namespaces fails here, loudly, not as an agent that never
/// gets ready.
fn check_private_hosts(hosts_file: &Path, expected: &str, log_dir: &Path) -> Result<()> {
    let mut cmd = private_hosts_command(hosts_file, Path::new("cat"))?;
    cmd.arg("/etc/hosts");
    let mut probe = ManagedProcess::spawn("private-hosts-check", cmd, log_dir)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe.is_running() {
        if std::time::Instant::now() >= deadline {
            bail!("`unshare --mount` + bind mount of /etc/hosts did not finish within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = std::fs::read_to_string(probe.log_path()).unwrap_or_default();
    if probe.exit_code() != Some(0) || seen != expected {
        bail!(
            "cannot give the agent a private /etc/hosts (`unshare --mount` and `mount --bind`; \
             needs root or unprivileged user namespaces): exit code {:?}, output:\n{seen}",
            probe.exit_code()
        );
    }
    Ok(())
}
