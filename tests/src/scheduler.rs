//! The real `wattwise-scheduler` binary against a [`ControlPlane`], on free loopback ports.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::control_plane::ControlPlane;
use crate::served::{workspace_binary, ServedProcess};

/// The reports line of [`TEST_CONFIG`].
const REPORTS: &str = "reports: {interval: 1s}";

/// Settings for tests: short leases, fast retries, reports every second.
pub const TEST_CONFIG: &str = "\
reports: {interval: 1s}
binding: {backoff_initial: 200ms, backoff_max: 2s, unschedulable_retry: 5s}
leader_election: {lease_duration: 4s, renew_deadline: 3s, retry_period: 500ms, namespace: default}
";

/// A running scheduler replica; stopped on drop.
pub struct SchedulerProcess {
    served: ServedProcess,
    identity: String,
}

impl SchedulerProcess {
    /// Starts a replica named `identity` with [`TEST_CONFIG`] followed by `extra_yaml` (later
    /// keys must not repeat earlier top-level ones) and waits until its caches are synced.
    pub async fn start(plane: &ControlPlane, identity: &str, extra_yaml: &str) -> Result<Self> {
        Self::start_with_reports(plane, identity, "interval: 1s", extra_yaml).await
    }

    /// As [`Self::start`], with the `reports` section of [`TEST_CONFIG`] replaced by
    /// `{reports}` (e.g. `interval: 1s, stale_after: 30s`).
    pub async fn start_with_reports(
        plane: &ControlPlane,
        identity: &str,
        reports: &str,
        extra_yaml: &str,
    ) -> Result<Self> {
        let config = TEST_CONFIG.replace(REPORTS, &format!("reports: {{{reports}}}"));
        anyhow::ensure!(
            config.contains(reports),
            "TEST_CONFIG has no `{REPORTS}` line"
        );
        let mut s = Self::spawn(plane, identity, &format!("{config}{extra_yaml}"))?;
        s.served.wait_ready(Duration::from_secs(30)).await?;
        Ok(s)
    }

    /// Starts a replica with exactly `config_yaml` (plus listen addresses), without waiting.
    pub fn spawn(plane: &ControlPlane, identity: &str, config_yaml: &str) -> Result<Self> {
        Self::spawn_with_kubeconfig(plane.kubeconfig_path(), identity, config_yaml)
    }

    /// As [`Self::spawn`], reaching the API server through `kubeconfig` (e.g. via a proxy).
    pub fn spawn_with_kubeconfig(
        kubeconfig: &Path,
        identity: &str,
        config_yaml: &str,
    ) -> Result<Self> {
        let binary = workspace_binary("wattwise-scheduler")?;
        let kubeconfig = kubeconfig.to_path_buf();
        let served = ServedProcess::spawn("wattwise-scheduler", config_yaml, |_, config| {
            let mut cmd = Command::new(&binary);
            cmd.arg("--config")
                .arg(config)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg("--identity")
                .arg(identity)
                .env("RUST_LOG", "info,wattwise_scheduler=debug")
                .env_remove("POD_NAMESPACE")
                .env_remove("POD_NAME");
            Ok(cmd)
        })?;
        Ok(Self {
            served,
            identity: identity.to_string(),
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this replica currently holds the leader Lease (its `wattwise_scheduler_leader`).
    pub async fn is_leader(&self) -> Result<bool> {
        Ok(self.metric("wattwise_scheduler_leader").await? == Some(1.0))
    }
}

impl Deref for SchedulerProcess {
    type Target = ServedProcess;
    fn deref(&self) -> &ServedProcess {
        &self.served
    }
}

impl DerefMut for SchedulerProcess {
    fn deref_mut(&mut self) -> &mut ServedProcess {
        &mut self.served
    }
}
