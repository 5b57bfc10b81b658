//! The real `wattwise-agent` binary as a process, configured by a YAML document, on free loopback
//! ports. [`Launch`] picks another build of the binary (the benchmark runs the release one) or gives
//! the agent its own `/etc/hosts` (a private mount namespace), so a test can make a host name
//! resolve to several loopback addresses without touching the machine's.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::process::{require_program, ManagedProcess};
use crate::served::{workspace_binary, ServedProcess};

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

/// A running agent; stopped on drop. Everything a served process offers (addresses, metrics,
/// logs, stop) comes through [`ServedProcess`].
pub struct AgentProcess {
    served: ServedProcess,
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
        let mut agent = Self::spawn_with(config_yaml, env, launch)?;
        agent.served.wait_ready(Duration::from_secs(30)).await?;
        Ok(agent)
    }

    /// Starts the agent without waiting: for tests of startup failures and slow peers.
    pub fn spawn(config_yaml: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_with(config_yaml, env, &Launch::default())
    }

    /// [`AgentProcess::spawn`] with launch options.
    pub fn spawn_with(config_yaml: &str, env: &[(&str, &str)], launch: &Launch) -> Result<Self> {
        let binary = match &launch.binary {
            Some(path) => path.clone(),
            None => workspace_binary("wattwise-agent")?,
        };
        let served = ServedProcess::spawn("wattwise-agent", config_yaml, |ports, config| {
            let mut cmd = match &launch.hosts {
                None => Command::new(&binary),
                Some(hosts) => {
                    let hosts_file = ports.dir.join("hosts");
                    std::fs::write(&hosts_file, hosts)?;
                    check_private_hosts(&hosts_file, hosts, &ports.dir)?;
                    private_hosts_command(&hosts_file, &binary)?
                }
            };
            cmd.arg("--config")
                .arg(config)
                .env("RUST_LOG", "info,wattwise_agent=debug")
                // The calibration state stays in the agent's own directory, never in the
                // machine's /var/lib/wattwise; pass WATTWISE_CALIBRATION_STATE in `env` to choose
                // the file (e.g. to keep it across a restart).
                .env(
                    "WATTWISE_CALIBRATION_STATE",
                    ports.dir.join("calibration.json"),
                );
            for (k, v) in env {
                cmd.env(k, v);
            }
            Ok(cmd)
        })?;
        Ok(Self { served })
    }
}

impl Deref for AgentProcess {
    type Target = ServedProcess;
    fn deref(&self) -> &ServedProcess {
        &self.served
    }
}

impl DerefMut for AgentProcess {
    fn deref_mut(&mut self) -> &mut ServedProcess {
        &mut self.served
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
