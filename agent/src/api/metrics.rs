//! Prometheus metrics: ipmi_exporter-compatible names where the meaning matches (so existing
//! dashboards keep working), `wattwise_*` for the rest; served with `/healthz` and `/readyz`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use wattwise_core::{EnergyLevel, ValidatedReport};
use wattwise_daemon::health::Liveness;
use wattwise_proto::v1 as pb;

use crate::calibrator::{self, Outcome, State};
use crate::health::Reporting;
use crate::model::ModelInfo;
use crate::sensors::bmc::{BmcReadings, PowerPath};
use crate::sensors::roles::Role;

type GaugeF = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectorLabel {
    collector: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SensorLabels {
    id: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleStatusLabels {
    role: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabel {
    level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AckLabels {
    endpoint: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SaveLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    name: String,
    version: String,
    output: String,
    /// `config`, `model_default` (a guessed peak that calibration corrects) or `none` (the model
    /// outputs watts).
    peak_source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric the agent exports.
pub struct AgentMetrics {
    registry: Registry,
    ipmi_up: Family<CollectorLabel, Gauge>,
    temperature: Family<SensorLabels, GaugeF>,
    dcmi_power: GaugeF,
    sensor_power: Family<SensorLabels, GaugeF>,
    predicted_watts: GaugeF,
    marginal_watts_per_core: GaugeF,
    /// Label-less family so the series can vanish when there is no measurement.
    model_error_watts: Family<Vec<(String, String)>, GaugeF>,
    model_uncalibrated_error_watts: Family<Vec<(String, String)>, GaugeF>,
    model_info: Family<ModelLabels, Gauge>,
    calibration_state: Family<StateLabel, Gauge>,
    calibration_gain: GaugeF,
    calibration_offset_watts: GaugeF,
    calibration_scale_watts: GaugeF,
    calibration_levels: Gauge,
    calibration_mape_percent: Family<Vec<(String, String)>, GaugeF>,
    calibration_samples: Counter,
    calibration_rejected: Family<ReasonLabel, Counter>,
    calibration_saves: Family<SaveLabel, Counter>,
    cpu_utilisation: GaugeF,
    cpu_capacity: Gauge,
    /// Label-less families so the series vanish while no energy reading counts.
    energy_percent: Family<Vec<(String, String)>, GaugeF>,
    energy_reading_age: Family<Vec<(String, String)>, GaugeF>,
    energy_level: Family<LevelLabel, Gauge>,
    role_status: Family<RoleStatusLabels, Gauge>,
    stream_connected: Family<EndpointLabel, Gauge>,
    acks: Family<AckLabels, Counter>,
    read_duration: Family<CollectorLabel, Histogram>,
    reports: Counter,
}

fn read_duration_histogram() -> Histogram {
    // 1 ms … ~16 s: an in-band read takes milliseconds, a LAN read against a slow BMC seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl AgentMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Self {
            registry: Registry::default(),
            ipmi_up: Family::default(),
            temperature: Family::default(),
            dcmi_power: GaugeF::default(),
            sensor_power: Family::default(),
            predicted_watts: GaugeF::default(),
            marginal_watts_per_core: GaugeF::default(),
            model_error_watts: Family::default(),
            model_uncalibrated_error_watts: Family::default(),
            model_info: Family::default(),
            calibration_state: Family::default(),
            calibration_gain: GaugeF::default(),
            calibration_offset_watts: GaugeF::default(),
            calibration_scale_watts: GaugeF::default(),
            calibration_levels: Gauge::default(),
            calibration_mape_percent: Family::default(),
            calibration_samples: Counter::default(),
            calibration_rejected: Family::default(),
            calibration_saves: Family::default(),
            cpu_utilisation: GaugeF::default(),
            cpu_capacity: Gauge::default(),
            energy_percent: Family::default(),
            energy_reading_age: Family::default(),
            energy_level: Family::default(),
            role_status: Family::default(),
            stream_connected: Family::default(),
            acks: Family::default(),
            read_duration: Family::new_with_constructor(read_duration_histogram),
            reports: Counter::default(),
        };
        registry.register(
            "ipmi_up",
            "1 if the last read of this IPMI collector reached the BMC, 0 if it failed",
            m.ipmi_up.clone(),
        );
        registry.register(
            "ipmi_temperature_celsius",
            "Temperature reading of the BMC sensor filling a wattwise role",
            m.temperature.clone(),
        );
        registry.register(
            "ipmi_dcmi_power_consumption_watts",
            "Current power consumption from DCMI Get Power Reading",
            m.dcmi_power.clone(),
        );
        registry.register(
            "ipmi_power_watts",
            "Power reading of the SDR power sensor used for node watts",
            m.sensor_power.clone(),
        );
        registry.register(
            "wattwise_predicted_watts",
            "Node watts the power model predicts at the current utilisation and temperatures",
            m.predicted_watts.clone(),
        );
        registry.register(
            "wattwise_marginal_watts_per_core",
            "Watts one more fully busy CPU core would add at the current utilisation",
            m.marginal_watts_per_core.clone(),
        );
        registry.register(
            "wattwise_model_error_watts",
            "Predicted (calibrated) minus measured node watts (absent without a measurement)",
            m.model_error_watts.clone(),
        );
        registry.register(
            "wattwise_model_uncalibrated_error_watts",
            "The model's own (uncalibrated) prediction minus measured node watts (absent without a measurement)",
            m.model_uncalibrated_error_watts.clone(),
        );
        registry.register(
            "wattwise_model_info",
            "1 for the loaded power model; peak_source says where a fraction_of_peak model's peak watts came from",
            m.model_info.clone(),
        );
        registry.register(
            "wattwise_calibration_state",
            "1 for the calibration's current state (uncalibrated, calibrating, calibrated), 0 for the others",
            m.calibration_state.clone(),
        );
        registry.register(
            "wattwise_calibration_gain",
            "Calibration gain a in measured = a * model + b (1 when uncalibrated)",
            m.calibration_gain.clone(),
        );
        registry.register(
            "wattwise_calibration_offset_watts",
            "Calibration offset b in measured = a * model + b, watts (0 when uncalibrated)",
            m.calibration_offset_watts.clone(),
        );
        registry.register(
            "wattwise_calibration_scale_watts",
            "The model's uncalibrated full-load prediction S the calibration works in units of (0 without calibration)",
            m.calibration_scale_watts.clone(),
        );
        registry.register(
            "wattwise_calibration_levels",
            "Load levels (0, 5, ..., 100 % utilisation) the calibration knows from at least 30 measurements (all calibration.memory_samples if fewer); calibrated takes 3 of them at least 10 points apart",
            m.calibration_levels.clone(),
        );
        registry.register(
            "wattwise_calibration_mape_percent",
            "Rolling mean absolute percentage error of the calibrated prediction against measured watts (absent until measured)",
            m.calibration_mape_percent.clone(),
        );
        registry.register(
            "wattwise_calibration_samples",
            "Measurements this agent process fed to the calibration",
            m.calibration_samples.clone(),
        );
        registry.register(
            "wattwise_calibration_rejected_samples",
            "Measurements not fed to the calibration because they were invalid, by reason",
            m.calibration_rejected.clone(),
        );
        registry.register(
            "wattwise_calibration_saves",
            "Writes of the calibration state file, by result (ok, failed: the fit stays in memory \
             and the write is retried)",
            m.calibration_saves.clone(),
        );
        registry.register(
            "wattwise_cpu_utilisation_ratio",
            "Measured CPU utilisation over the last interval, 0..1",
            m.cpu_utilisation.clone(),
        );
        registry.register(
            "wattwise_cpu_capacity_millicores",
            "CPU capacity of the node in millicores",
            m.cpu_capacity.clone(),
        );
        registry.register(
            "wattwise_energy_percent",
            "Stored energy of the node's battery or renewable source, 0..100 (absent while no reading counts)",
            m.energy_percent.clone(),
        );
        registry.register(
            "wattwise_energy_reading_age_seconds",
            "Age of the latest successful energy reading; past 3 energy intervals reports carry no level (absent without an energy source or before the first reading)",
            m.energy_reading_age.clone(),
        );
        registry.register(
            "wattwise_energy_level",
            "1 for the node's current energy level (after hysteresis), 0 for the others (absent while no reading counts)",
            m.energy_level.clone(),
        );
        registry.register(
            "wattwise_sensor_role_status",
            "1 for each sensor role's current status (ok, stale, missing, ambiguous, error)",
            m.role_status.clone(),
        );
        registry.register(
            "wattwise_scheduler_stream_connected",
            "1 while the report stream to this scheduler endpoint is open",
            m.stream_connected.clone(),
        );
        registry.register(
            "wattwise_report_acks",
            "Report acknowledgements from schedulers by result",
            m.acks.clone(),
        );
        registry.register(
            "wattwise_sensor_read_duration_seconds",
            "Duration of one read cycle per collector",
            m.read_duration.clone(),
        );
        registry.register("wattwise_reports", "Reports produced", m.reports.clone());
        registry.register(
            "wattwise_build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Arc::new(Self { registry, ..m })
    }

    /// Text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn observe_read_duration(&self, collector: &'static str, seconds: f64) {
        self.read_duration
            .get_or_create(&CollectorLabel { collector })
            .observe(seconds);
    }

    pub fn observe_bmc(&self, bmc: &BmcReadings, configured: bool) {
        if configured {
            self.ipmi_up
                .get_or_create(&CollectorLabel { collector: "ipmi" })
                .set(i64::from(bmc.sensors_up));
            self.ipmi_up
                .get_or_create(&CollectorLabel { collector: "dcmi" })
                .set(i64::from(bmc.dcmi_up));
        }
        self.temperature.clear();
        self.sensor_power.clear();
        self.role_status.clear();
        for (role, reading) in &bmc.roles {
            self.role_status
                .get_or_create(&RoleStatusLabels {
                    role: role.to_string(),
                    status: status_name(reading.status),
                })
                .set(1);
            let (Some(value), Some(number)) = (reading.usable(), reading.sensor_number) else {
                continue;
            };
            let labels = SensorLabels {
                id: number.to_string(),
                name: reading.sensor_name.clone(),
            };
            match role {
                Role::Inlet | Role::Cpu(_) => {
                    self.temperature.get_or_create(&labels).set(value);
                }
                Role::Power if bmc.power_path == PowerPath::SdrSensor => {
                    self.sensor_power.get_or_create(&labels).set(value);
                }
                Role::Power => {}
            }
        }
        if bmc.power_path == PowerPath::Dcmi {
            if let Some(w) = bmc.roles.get(&Role::Power).and_then(|r| r.usable()) {
                self.dcmi_power.set(w);
            }
        }
    }

    /// The loaded model (once, at startup).
    pub fn set_model(&self, info: &ModelInfo) {
        self.model_info
            .get_or_create(&ModelLabels {
                name: info.name.clone(),
                version: info.version.clone(),
                output: info.output.to_string(),
                peak_source: info.peak_watts.map_or("none", |(_, source)| source.label()),
            })
            .set(1);
    }

    /// The calibration after a report: `uncalibrated_watts` is the model's own prediction at the
    /// report's utilisation.
    pub fn observe_calibration(
        &self,
        report: &ValidatedReport,
        status: &calibrator::Status,
        uncalibrated_watts: Option<f64>,
    ) {
        for state in State::ALL {
            self.calibration_state
                .get_or_create(&StateLabel {
                    state: state.label(),
                })
                .set(i64::from(state == status.state));
        }
        self.calibration_gain.set(status.gain);
        self.calibration_offset_watts.set(status.offset_watts);
        self.calibration_scale_watts.set(status.scale_watts);
        self.calibration_levels
            .set(i64::try_from(status.levels).unwrap_or(i64::MAX));
        match status.mape_percent {
            Some(mape) => {
                self.calibration_mape_percent
                    .get_or_create(&Vec::new())
                    .set(mape);
            }
            None => self.calibration_mape_percent.clear(),
        }
        match status.outcome {
            Outcome::Accepted => {
                self.calibration_samples.inc();
            }
            Outcome::Rejected(e) => {
                self.calibration_rejected
                    .get_or_create(&ReasonLabel {
                        reason: calibrator::rejection_label(&e),
                    })
                    .inc();
            }
            Outcome::Skipped => {}
        }
        match (measured_watts(report), uncalibrated_watts) {
            (Some(measured), Some(predicted)) => {
                self.model_uncalibrated_error_watts
                    .get_or_create(&Vec::new())
                    .set(predicted - measured);
            }
            _ => self.model_uncalibrated_error_watts.clear(),
        }
    }

    /// A write of the calibration state file ended.
    pub fn calibration_saved(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.calibration_saves
            .get_or_create(&SaveLabel { result })
            .inc();
    }

    pub fn observe_report(&self, report: &ValidatedReport) {
        self.reports.inc();
        let predicted = report.predicted_watts();
        self.predicted_watts.set(predicted);
        let per_core = report.predict_marginal(&[1000]);
        self.marginal_watts_per_core
            .set(per_core.predictions[0].marginal_watts);
        self.cpu_utilisation.set(report.utilisation());
        self.cpu_capacity.set(report.capacity_millicores() as i64);
        match measured_watts(report) {
            Some(measured) => {
                self.model_error_watts
                    .get_or_create(&Vec::new())
                    .set(predicted - measured);
            }
            None => self.model_error_watts.clear(),
        }
        match &report.report().energy {
            Some(energy) => {
                self.energy_percent
                    .get_or_create(&Vec::new())
                    .set(energy.percent);
            }
            None => self.energy_percent.clear(),
        }
        match report.energy_level() {
            Some(level) => {
                for l in EnergyLevel::ALL {
                    self.energy_level
                        .get_or_create(&LevelLabel { level: l.label() })
                        .set(i64::from(l == level));
                }
            }
            None => self.energy_level.clear(),
        }
    }

    /// Age of the latest energy reading, `None` while there is none.
    pub fn set_energy_reading_age(&self, age: Option<std::time::Duration>) {
        match age {
            Some(age) => {
                self.energy_reading_age
                    .get_or_create(&Vec::new())
                    .set(age.as_secs_f64());
            }
            None => self.energy_reading_age.clear(),
        }
    }

    pub fn set_stream_connected(&self, endpoint: &str, connected: bool) {
        self.stream_connected
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_string(),
            })
            .set(i64::from(connected));
    }

    pub fn count_ack(&self, endpoint: &str, accepted: bool) {
        self.acks
            .get_or_create(&AckLabels {
                endpoint: endpoint.to_string(),
                result: ack_result(accepted),
            })
            .inc();
    }

    /// Drops the series of a scheduler address no longer streamed to: replicas come and go with
    /// new pod IPs, and their series must not pile up.
    pub fn forget_endpoint(&self, endpoint: &str) {
        self.stream_connected.remove(&EndpointLabel {
            endpoint: endpoint.to_string(),
        });
        for accepted in [true, false] {
            self.acks.remove(&AckLabels {
                endpoint: endpoint.to_string(),
                result: ack_result(accepted),
            });
        }
    }
}

fn ack_result(accepted: bool) -> &'static str {
    if accepted {
        "accepted"
    } else {
        "rejected"
    }
}

/// The report's measured watts, when it has a measurement.
fn measured_watts(report: &ValidatedReport) -> Option<f64> {
    report
        .report()
        .measured
        .as_ref()
        .filter(|m| m.source != pb::ReadingSource::None as i32)
        .map(|m| m.watts)
}

fn status_name(status: pb::SensorStatus) -> &'static str {
    match status {
        pb::SensorStatus::Ok => "ok",
        pb::SensorStatus::Stale => "stale",
        pb::SensorStatus::Missing => "missing",
        pb::SensorStatus::Ambiguous => "ambiguous",
        pb::SensorStatus::Error => "error",
        pb::SensorStatus::Unspecified => "unspecified",
    }
}

/// `/metrics`, `/healthz` (the agent's loops are beating) and `/readyz` (reports are being
/// produced).
pub fn router(
    metrics: Arc<AgentMetrics>,
    liveness: Liveness,
    reporting: Arc<Reporting>,
) -> axum::Router {
    wattwise_daemon::http::router(
        move || metrics.encode(),
        liveness,
        move || reporting.check(std::time::Instant::now()),
    )
}
