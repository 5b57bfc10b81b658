//! A real Prometheus (Debian's 2.42) scraping given targets on loopback, with a query helper.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::process::{free_tcp_port, require_program, wait_until, ManagedProcess};

/// A running Prometheus; stopped on drop.
pub struct Prometheus {
    process: ManagedProcess,
    port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// One sample of an instant-query result.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every `scrape_interval`,
    /// and waits until it is ready.
    pub async fn start(targets: &[String], scrape_interval: Duration) -> Result<Self> {
        let binary = require_program("prometheus")?;
        let dir = tempfile::Builder::new()
            .prefix("wattwise-prometheus-")
            .tempdir()?;
        let port = free_tcp_port()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets, scrape_interval))
            .context("writing prometheus.yml")?;
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Console templates are not installed with Debian's package at the default paths.
            .arg(format!("--web.console.templates={}", dir.path().display()))
            .arg(format!("--web.console.libraries={}", dir.path().display()));
        let process = ManagedProcess::spawn("prometheus", cmd, dir.path())?;
        let mut prometheus = Self {
            process,
            port,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            _dir: dir,
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("{}/-/ready", self.url());
        let http = self.http.clone();
        let result = wait_until("prometheus /-/ready", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move { Ok(http.get(&url).send().await?.status().is_success()) }
        })
        .await;
        if let Err(e) = result {
            self.process.ensure_running()?;
            return Err(e.context(format!("prometheus log:\n{}", self.process.log_tail(20))));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Runs an instant query and returns its vector result.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let response: QueryResponse = self
            .http
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await
            .with_context(|| format!("querying prometheus for {promql}"))?
            .json()
            .await
            .with_context(|| format!("decoding prometheus answer to {promql}"))?;
        if response.status != "success" {
            bail!(
                "prometheus query {promql} failed: {}",
                response.error.unwrap_or_default()
            );
        }
        let data = response.data.context("success without data")?;
        if data.result_type != "vector" {
            bail!(
                "query {promql} returned a {}, not a vector",
                data.result_type
            );
        }
        data.result
            .into_iter()
            .map(|s| {
                let value =
                    s.value.1.parse::<f64>().with_context(|| {
                        format!("prometheus value {:?} is not a number", s.value.1)
                    })?;
                Ok(Sample {
                    labels: s.metric,
                    value,
                })
            })
            .collect()
    }

    /// Waits until `promql` returns at least one sample and returns the first.
    pub async fn wait_for_sample(&self, promql: &str, timeout: Duration) -> Result<Sample> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self.query(promql).await {
                Ok(samples) if !samples.is_empty() => return Ok(samples[0].clone()),
                Ok(_) => "no samples yet".to_string(),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("no sample of {promql} within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn scrape_config(targets: &[String], interval: Duration) -> String {
    let targets = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let interval_ms = interval.as_millis().max(1);
    format!(
        "global:\n  scrape_interval: {interval_ms}ms\n  scrape_timeout: {interval_ms}ms\n\
         scrape_configs:\n  - job_name: wattwise\n    static_configs:\n      - targets: [{targets}]\n"
    )
}

#[derive(Deserialize)]
struct QueryResponse {
    status: String,
    error: Option<String>,
    data: Option<QueryData>,
}

#[derive(Deserialize)]
struct QueryData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<VectorSample>,
}

#[derive(Deserialize)]
struct VectorSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}
