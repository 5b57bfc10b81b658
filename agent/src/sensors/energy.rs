//! Stored energy of a renewable- or battery-powered node, turned into an [`EnergyLevel`] with
//! hysteresis so a battery hovering at a boundary does not flap between levels.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{info, warn};
use wattwise_core::EnergyLevel;

use crate::config::EnergySourceConfig;
use crate::report::EnergyReading;

/// A reading older than this many `energy.interval`s is no longer reported (the scheduler's
/// `reports.stale_after` uses the same factor of its interval).
pub const MAX_AGE_INTERVALS: u32 = 3;

#[derive(Debug, Error)]
pub enum EnergyError {
    #[error("energy source {source_name}: {problem}")]
    Read {
        source_name: String,
        problem: String,
    },
}

/// Where the percentage is read from. `None` in the config builds no source at all.
#[derive(Debug)]
pub enum EnergySource {
    /// `<sysfs>/class/power_supply/<name>/capacity`.
    PowerSupply {
        name: String,
        capacity_file: PathBuf,
    },
    File {
        path: PathBuf,
    },
    Http {
        url: String,
        client: reqwest::Client,
    },
    Fixed {
        percent: f64,
    },
}

impl EnergySource {
    /// The configured source, or `None` when the node has no energy source. `sys_root` is
    /// normally `/sys`.
    pub fn from_config(
        config: &EnergySourceConfig,
        sys_root: &Path,
        timeout: Duration,
    ) -> Result<Option<Self>, EnergyError> {
        Ok(Some(match config {
            EnergySourceConfig::None => return Ok(None),
            EnergySourceConfig::PowerSupply { name } => EnergySource::PowerSupply {
                name: name.clone(),
                capacity_file: sys_root
                    .join("class/power_supply")
                    .join(name)
                    .join("capacity"),
            },
            EnergySourceConfig::File { path } => EnergySource::File { path: path.clone() },
            EnergySourceConfig::Http { url } => EnergySource::Http {
                url: url.clone(),
                client: reqwest::Client::builder()
                    .timeout(timeout)
                    .build()
                    .map_err(|e| EnergyError::Read {
                        source_name: format!("http:{url}"),
                        problem: e.to_string(),
                    })?,
            },
            EnergySourceConfig::Fixed { percent } => EnergySource::Fixed { percent: *percent },
        }))
    }

    /// How reports name this source, e.g. `power_supply:BAT0`.
    pub fn name(&self) -> String {
        match self {
            EnergySource::PowerSupply { name, .. } => format!("power_supply:{name}"),
            EnergySource::File { path } => format!("file:{}", path.display()),
            EnergySource::Http { url, .. } => format!("http:{url}"),
            EnergySource::Fixed { .. } => "fixed".into(),
        }
    }

    /// The current percentage, checked to be a number in 0..=100.
    pub async fn read_percent(&self) -> Result<f64, EnergyError> {
        let text = match self {
            EnergySource::Fixed { percent } => return Ok(*percent),
            EnergySource::PowerSupply {
                capacity_file: path,
                ..
            }
            | EnergySource::File { path } => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| self.error(format!("{}: {e}", path.display())))?,
            EnergySource::Http { url, client } => {
                let response = client
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| self.error(e.to_string()))?;
                response
                    .text()
                    .await
                    .map_err(|e| self.error(e.to_string()))?
            }
        };
        let percent = parse_percent(&text).map_err(|problem| self.error(problem))?;
        Ok(percent)
    }

    fn error(&self, problem: String) -> EnergyError {
        EnergyError::Read {
            source_name: self.name(),
            problem,
        }
    }
}

/// A plain number, or JSON `{"percent": n}`.
fn parse_percent(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let value = match text.parse::<f64>() {
        Ok(v) => v,
        Err(_) => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|json| json.get("percent")?.as_f64())
            .ok_or_else(|| format!("{text:?} is neither a number nor {{\"percent\": n}}"))?,
    };
    if !value.is_finite() || !(0.0..=100.0).contains(&value) {
        return Err(format!("{value} is not a percentage in 0..=100"));
    }
    Ok(value)
}

/// The reported level of one node, with hysteresis across readings.
#[derive(Debug)]
pub struct EnergyTracker {
    band: f64,
    level: Option<EnergyLevel>,
}

impl EnergyTracker {
    pub fn new(band: f64) -> Self {
        Self { band, level: None }
    }

    /// Feeds one reading and returns the level to report.
    pub fn observe(&mut self, percent: f64) -> EnergyLevel {
        let level = EnergyLevel::with_hysteresis(self.level, percent, self.band);
        self.level = Some(level);
        level
    }
}

/// Whether the latest energy reading still counts. A source that stops answering (a removed
/// file, a dead meter) must not leave its last level in reports forever: once the reading is older
/// than [`MAX_AGE_INTERVALS`] intervals, reports carry no level, as for a node without a source.
#[derive(Debug)]
pub struct EnergyExpiry {
    max_age: Duration,
    expired: bool,
}

impl EnergyExpiry {
    pub fn new(interval: Duration) -> Self {
        Self {
            max_age: interval * MAX_AGE_INTERVALS,
            expired: false,
        }
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The reading to report at `now`: `None` once it is too old. Warns once when it expires
    /// and says when a fresh one is back.
    pub fn current(
        &mut self,
        reading: Option<EnergyReading>,
        now: Instant,
    ) -> Option<EnergyReading> {
        let reading = reading?;
        let age = now.saturating_duration_since(reading.read_at);
        if age > self.max_age {
            if !self.expired {
                warn!(source = %reading.source, age_seconds = age.as_secs_f64(),
                    max_age_seconds = self.max_age.as_secs_f64(),
                    "energy reading expired; reports carry no energy level until the source answers again");
                self.expired = true;
            }
            return None;
        }
        if self.expired {
            info!(source = %reading.source, "energy source answers again; reports carry its level");
            self.expired = false;
        }
        Some(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(config: EnergySourceConfig, sys: &Path) -> EnergySource {
        EnergySource::from_config(&config, sys, Duration::from_secs(1))
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn power_supply_capacity_is_read_from_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let dir = sys.path().join("class/power_supply/BAT0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("capacity"), "63\n").unwrap();
        let s = source(
            EnergySourceConfig::PowerSupply {
                name: "BAT0".into(),
            },
            sys.path(),
        );
        assert_eq!(s.read_percent().await.unwrap(), 63.0);
        assert_eq!(s.name(), "power_supply:BAT0");
        let missing = source(
            EnergySourceConfig::PowerSupply {
                name: "UPS1".into(),
            },
            sys.path(),
        );
        let err = missing.read_percent().await.unwrap_err().to_string();
        assert!(err.starts_with("energy source power_supply:UPS1:"), "{err}");
    }

    #[tokio::test]
    async fn file_and_fixed_sources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("energy");
        std::fs::write(&path, r#"{"percent": 12.5}"#).unwrap();
        let s = source(EnergySourceConfig::File { path: path.clone() }, dir.path());
        assert_eq!(s.read_percent().await.unwrap(), 12.5);
        std::fs::write(&path, "140").unwrap();
        let err = s.read_percent().await.unwrap_err().to_string();
        assert!(err.contains("140 is not a percentage"), "{err}");
        let fixed = source(EnergySourceConfig::Fixed { percent: 80.0 }, dir.path());
        assert_eq!(fixed.read_percent().await.unwrap(), 80.0);
        assert!(EnergySource::from_config(
            &EnergySourceConfig::None,
            dir.path(),
            Duration::from_secs(1)
        )
        .unwrap()
        .is_none());
    }

    #[tokio::test]
    async fn http_source_reads_a_real_endpoint() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/plain", axum::routing::get(|| async { "55.5" }))
            .route(
                "/json",
                axum::routing::get(|| async { r#"{"percent": 30}"# }),
            )
            .route("/broken", axum::routing::get(|| async { "full" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let read = |path: &str| {
            let s = source(
                EnergySourceConfig::Http {
                    url: format!("http://{addr}{path}"),
                },
                Path::new("/"),
            );
            async move { s.read_percent().await }
        };
        assert_eq!(read("/plain").await.unwrap(), 55.5);
        assert_eq!(read("/json").await.unwrap(), 30.0);
        assert!(read("/broken")
            .await
            .unwrap_err()
            .to_string()
            .contains("\"full\""));
        assert!(read("/absent")
            .await
            .unwrap_err()
            .to_string()
            .contains("404"));
    }

    #[test]
    fn a_reading_counts_until_it_is_three_intervals_old() {
        let start = Instant::now();
        let reading = EnergyReading {
            level: EnergyLevel::WellPowered,
            percent: 90.0,
            source: "file:/run/energy".into(),
            read_at: start,
        };
        let mut expiry = EnergyExpiry::new(Duration::from_secs(10));
        assert_eq!(expiry.max_age(), Duration::from_secs(30));
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(
            expiry.current(Some(reading.clone()), at(30)),
            Some(reading.clone())
        );
        assert_eq!(expiry.current(Some(reading.clone()), at(31)), None);
        assert_eq!(expiry.current(Some(reading.clone()), at(3600)), None);
        let fresh = EnergyReading {
            read_at: at(3600),
            ..reading
        };
        assert_eq!(expiry.current(Some(fresh.clone()), at(3601)), Some(fresh));
        assert_eq!(expiry.current(None, at(3601)), None, "no source, no level");
    }

    #[test]
    fn tracker_applies_hysteresis_across_readings() {
        let mut t = EnergyTracker::new(2.0);
        assert_eq!(t.observe(80.0), EnergyLevel::WellPowered);
        assert_eq!(t.observe(74.0), EnergyLevel::WellPowered, "within the band");
        assert_eq!(t.observe(72.0), EnergyLevel::Vulnerable);
        assert_eq!(t.observe(76.0), EnergyLevel::Vulnerable, "within the band");
    }
}
