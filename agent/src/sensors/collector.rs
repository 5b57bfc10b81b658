//! The BMC collector: a dedicated thread (IPMI is blocking) that keeps a session, caches the SDR
//! and re-reads it when it changes, maps roles, and reads every role each interval. A BMC that is
//! down, slow or rejects the credentials never stops the agent: values go stale, `ipmi_up` drops
//! to 0, and the session is re-established with backoff when the BMC returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;
use tracing::{info, warn};
use wattwise_daemon::health::{Heartbeat, Liveness};
use wattwise_ipmi::{
    Bmc, IpmiError, SdrRepositoryInfo, Secret, SensorReading, SensorRecord, Target,
};
use wattwise_proto::v1 as pb;

use super::bmc::{BmcReadings, PowerPath, RoleReading};
use super::roles::{assign_roles, Assignment, Role, RoleMap, SdrSensor};
use crate::api::metrics::AgentMetrics;
use crate::config::{BmcConfig, BmcMode};
use crate::health::silence_limit;
use crate::stream::Backoff;

#[derive(Debug, Error)]
pub enum CollectorError {
    #[error("config key `bmc.password_file`: cannot read {path}: {source}")]
    PasswordFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("config key `bmc.password_env`: environment variable {0} is not set")]
    PasswordEnv(String),
    #[error("config key `bmc.mode`: {0}")]
    Mode(String),
}

/// Handle to the collector thread's latest readings.
pub struct BmcCollector {
    readings: Arc<Mutex<BmcReadings>>,
    max_age: Duration,
}

/// Requests one read cycle makes at most when the SDR is not re-read (session, SDR info, each
/// role, DCMI), each bounded by `bmc.timeout`.
const CYCLE_REQUESTS: u32 = 8;

/// Retry delays after a failed cycle (doubling, jittered).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

impl BmcCollector {
    /// Resolves the target (reading the password now, so a missing secret is a startup error) and
    /// starts the collector thread.
    pub fn spawn(
        config: &BmcConfig,
        interval: Duration,
        metrics: Arc<AgentMetrics>,
        liveness: &Liveness,
    ) -> Result<Self, CollectorError> {
        let target = target(config)?;
        let cycle_work = config.timeout * CYCLE_REQUESTS;
        let readings = Arc::new(Mutex::new(BmcReadings::none()));
        let mut collector = Collector {
            target,
            timeout: config.timeout,
            interval,
            sdr_check_interval: config.sdr_check_interval,
            configured: configured_roles(&config.sensors),
            session: None,
            sdr: None,
            dcmi: None,
            state: BmcReadings::none(),
            published: readings.clone(),
            metrics,
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            last_error: None,
            // A cycle reads, then waits an interval, or up to RETRY_MAX after a failure.
            heartbeat: liveness.register(
                "BMC collector",
                silence_limit(interval.max(RETRY_MAX) + cycle_work),
            ),
        };
        std::thread::Builder::new()
            .name("bmc-collector".into())
            .spawn(move || collector.run())
            .expect("spawning the BMC collector thread");
        Ok(Self {
            readings,
            max_age: silence_limit(interval + cycle_work),
        })
    }

    /// The latest readings; values the collector has not re-read for longer than a healthy
    /// cycle allows are marked stale.
    pub fn snapshot(&self) -> BmcReadings {
        let mut readings = self
            .readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        readings.expire(SystemTime::now(), self.max_age);
        readings
    }
}

fn target(config: &BmcConfig) -> Result<Target, CollectorError> {
    match config.mode {
        BmcMode::InBand => Ok(Target::InBand {
            device: config.device.clone(),
        }),
        BmcMode::Lan => {
            let password = match &config.password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|source| CollectorError::PasswordFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
                None => std::env::var(&config.password_env)
                    .map_err(|_| CollectorError::PasswordEnv(config.password_env.clone()))?,
            };
            Ok(Target::Lan {
                host: config.host.clone().unwrap_or_default(),
                port: config.port,
                username: config.username.clone().unwrap_or_default(),
                password: Secret::new(password),
            })
        }
        BmcMode::None => Err(CollectorError::Mode("none has no collector".into())),
    }
}

fn configured_roles(sensors: &BTreeMap<String, String>) -> BTreeMap<Role, String> {
    // Config validation already rejected unknown role names.
    sensors
        .iter()
        .filter_map(|(role, name)| Some((Role::parse(role)?, name.clone())))
        .collect()
}

/// The SDR as last read, and what it means.
struct Sdr {
    info: SdrRepositoryInfo,
    records: Vec<SensorRecord>,
    roles: RoleMap,
    checked: Instant,
}

struct Collector {
    target: Target,
    timeout: Duration,
    interval: Duration,
    sdr_check_interval: Duration,
    configured: BTreeMap<Role, String>,
    session: Option<Bmc>,
    sdr: Option<Sdr>,
    /// Whether the BMC supports DCMI power readings; `None` until asked.
    dcmi: Option<bool>,
    state: BmcReadings,
    published: Arc<Mutex<BmcReadings>>,
    metrics: Arc<AgentMetrics>,
    backoff: Backoff,
    last_error: Option<String>,
    heartbeat: Heartbeat,
}

impl Collector {
    fn run(&mut self) {
        loop {
            // Once per cycle, before the reads: a BMC call that never returns silences it.
            self.heartbeat.beat();
            let started = Instant::now();
            let wait = match self.cycle() {
                Ok(()) => {
                    if self.last_error.take().is_some() {
                        info!("BMC reachable again; readings are fresh");
                    }
                    self.backoff.reset();
                    self.interval.saturating_sub(started.elapsed())
                }
                Err(e) => {
                    let message = e.to_string();
                    if self.last_error.as_deref() != Some(&message) {
                        warn!(error = %message, "BMC read failed; reporting stale values and retrying");
                    }
                    self.state.fail_all(&message);
                    self.last_error = Some(message);
                    // A broken session is rebuilt from scratch.
                    self.session = None;
                    self.backoff.next_delay().max(self.interval)
                }
            };
            self.metrics
                .observe_read_duration("ipmi", started.elapsed().as_secs_f64());
            self.publish();
            std::thread::sleep(wait);
        }
    }

    fn cycle(&mut self) -> Result<(), IpmiError> {
        let mut session = match self.session.take() {
            Some(s) => s,
            None => Bmc::connect(&self.target, self.timeout)?,
        };
        let result = self.read_all(&mut session);
        if result.is_ok() {
            self.session = Some(session);
        }
        result
    }

    fn read_all(&mut self, bmc: &mut Bmc) -> Result<(), IpmiError> {
        self.refresh_sdr(bmc)?;
        if self.dcmi.is_none() {
            let supported = bmc.dcmi_capabilities()?.is_some();
            info!(dcmi = supported, "BMC DCMI power reading support");
            self.dcmi = Some(supported);
            if supported {
                self.use_dcmi_for_power();
            }
        }
        let sdr = self.sdr.as_ref().expect("refresh_sdr sets the SDR");
        let now = SystemTime::now();
        for (role, assignment) in &sdr.roles.roles {
            let Assignment::Found { sensor, .. } = assignment else {
                continue;
            };
            if *role == Role::Power && self.dcmi == Some(true) {
                continue;
            }
            let record = &sdr.records[*sensor];
            let reading = self
                .state
                .roles
                .get_mut(role)
                .expect("roles follow the SDR");
            match bmc.read_sensor(record) {
                Ok(SensorReading::Value { value, .. }) => reading.record(value, now),
                Ok(SensorReading::Unavailable) => {
                    reading.fail(format!("sensor {:?} reports no reading", record.name))
                }
                Ok(SensorReading::Discrete { .. }) => reading.fail(format!(
                    "sensor {:?} is discrete, not a measurement; name another in bmc.sensors",
                    record.name
                )),
                Err(e) if e.is_unreachable() => return Err(e),
                Err(e) => reading.fail(e.to_string()),
            }
        }
        self.state.sensors_up = true;
        if self.dcmi == Some(true) {
            let power = self
                .state
                .roles
                .get_mut(&Role::Power)
                .expect("use_dcmi_for_power inserted the role");
            match bmc.dcmi_power_reading() {
                Ok(r) if r.active => {
                    power.record(f64::from(r.current_watts), now);
                    self.state.dcmi_up = true;
                }
                // The BMC answers, but its numbers mean nothing (often 0 W): not a reading.
                Ok(_) => {
                    power.fail("DCMI power measurement is not active".into());
                    self.state.dcmi_up = false;
                }
                Err(e) if e.is_unreachable() => return Err(e),
                Err(e) => {
                    power.fail(e.to_string());
                    self.state.dcmi_up = false;
                }
            }
        }
        Ok(())
    }

    /// Re-reads the SDR when it has never been read or its repository info changed.
    fn refresh_sdr(&mut self, bmc: &mut Bmc) -> Result<(), IpmiError> {
        let due = self
            .sdr
            .as_ref()
            .is_none_or(|s| s.checked.elapsed() >= self.sdr_check_interval);
        if !due {
            return Ok(());
        }
        let info = bmc.sdr_repository_info()?;
        if let Some(sdr) = self.sdr.as_mut() {
            if sdr.info == info {
                sdr.checked = Instant::now();
                return Ok(());
            }
            info!("SDR repository changed; re-reading it");
        }
        let records = bmc.read_sdr()?;
        let sensors: Vec<SdrSensor> = records.iter().map(sdr_sensor).collect();
        let roles = assign_roles(&sensors, &self.configured);
        self.apply_roles(&records, &roles);
        self.sdr = Some(Sdr {
            info,
            records,
            roles,
            checked: Instant::now(),
        });
        Ok(())
    }

    /// New role readings for a (re-)read SDR, keeping last values of roles whose sensor stayed.
    fn apply_roles(&mut self, records: &[SensorRecord], roles: &RoleMap) {
        let mut next = BTreeMap::new();
        for (role, assignment) in &roles.roles {
            let reading = match assignment {
                Assignment::Found { sensor, by } => {
                    let record = &records[*sensor];
                    info!(%role, sensor = %record.name, number = record.number, evidence = ?by, "sensor role assigned");
                    let mut reading = self
                        .state
                        .roles
                        .remove(role)
                        .filter(|r| r.sensor_name == record.name)
                        .unwrap_or_else(|| {
                            RoleReading::unfilled(pb::SensorStatus::Error, "not read yet".into())
                        });
                    reading.sensor_name = record.name.clone();
                    reading.sensor_number = Some(record.number);
                    reading.source = pb::ReadingSource::SdrSensor;
                    reading
                }
                Assignment::Missing => {
                    warn!(%role, "no BMC sensor fills this role; set bmc.sensors.{role} to name one");
                    RoleReading::unfilled(pb::SensorStatus::Missing, "no sensor found".into())
                }
                Assignment::Ambiguous { candidates } => {
                    warn!(%role, ?candidates, "several BMC sensors could fill this role; set bmc.sensors.{role} to pick one");
                    RoleReading::unfilled(
                        pb::SensorStatus::Ambiguous,
                        format!("candidates: {}", candidates.join(", ")),
                    )
                }
                Assignment::ConfiguredAbsent { name } => {
                    warn!(%role, sensor = %name, "configured sensor is not in the BMC's SDR");
                    RoleReading::unfilled(
                        pb::SensorStatus::Error,
                        format!("configured sensor {name:?} is not in the SDR"),
                    )
                }
            };
            next.insert(*role, reading);
        }
        self.state.roles = next;
        self.state.power_path = match roles.sensor(Role::Power) {
            Some(_) => PowerPath::SdrSensor,
            None => PowerPath::None,
        };
        // The DCMI capability is asked again with the next cycle.
        self.dcmi = None;
    }

    /// DCMI measures the whole node, so it fills the power role over any SDR power sensor.
    fn use_dcmi_for_power(&mut self) {
        self.state.power_path = PowerPath::Dcmi;
        let mut power = RoleReading::unfilled(pb::SensorStatus::Error, "not read yet".into());
        power.source = pb::ReadingSource::Dcmi;
        power.sensor_name = "DCMI power reading".into();
        self.state.roles.insert(Role::Power, power);
    }

    fn publish(&self) {
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = self.state.clone();
    }
}

fn sdr_sensor(record: &SensorRecord) -> SdrSensor {
    SdrSensor {
        name: record.name.clone(),
        entity_id: record.entity_id,
        entity_instance: record.entity_instance,
        sensor_type: record.sensor_type,
        base_unit: record.unit.base,
    }
}
