//! The one validation of a `NodeReport`, used by the agent before it sends and by the scheduler
//! when it receives: finite numbers, physical ranges, curve shape and names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use wattwise_proto::v1 as pb;

use crate::curve::{CurveError, PowerCurve, MAX_NODE_WATTS};
use crate::energy::{EnergyLevel, MAX_HYSTERESIS_PERCENT};

/// Coldest and hottest plausible sensor readings in °C: below -40 is a disconnected probe, above
/// 150 a unit or scaling error (CPUs throttle near 100 °C).
pub const MIN_CELSIUS: f64 = -40.0;
pub const MAX_CELSIUS: f64 = 150.0;
/// Largest CPU capacity accepted, in millicores (100,000 CPUs).
pub const MAX_CAPACITY_MILLICORES: u64 = 100_000_000;
/// Most entries in `temperatures` and in `sensors`.
pub const MAX_LIST_ENTRIES: usize = 64;
/// Longest free-text name (sensor names, model names, sources).
pub const MAX_NAME_LEN: usize = 128;

/// A report field and what is wrong with it; displays as `field: problem`.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field}: {problem}")]
pub struct ReportError {
    /// Path of the offending field, e.g. `measured.watts` or `temperatures[2].celsius`.
    pub field: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum Problem {
    #[error("is required")]
    Missing,
    #[error("{0} is not a finite number")]
    NotFinite(f64),
    #[error("{value} {unit} is outside {min}..={max} {unit}")]
    OutOfRange {
        value: f64,
        min: f64,
        max: f64,
        unit: &'static str,
    },
    #[error("curve {0}")]
    Curve(#[from] CurveError),
    #[error("{0}")]
    Invalid(String),
}

fn err(field: impl Into<String>, problem: Problem) -> ReportError {
    ReportError {
        field: field.into(),
        problem,
    }
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> ReportError {
    err(field, Problem::Invalid(why.into()))
}

/// A report that passed [`validate`], with its curve and times decoded once.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedReport {
    report: pb::NodeReport,
    curve: PowerCurve,
    observed_at: SystemTime,
    energy: Option<EnergyLevel>,
}

impl ValidatedReport {
    pub fn report(&self) -> &pb::NodeReport {
        &self.report
    }

    pub fn into_report(self) -> pb::NodeReport {
        self.report
    }

    pub fn node_name(&self) -> &str {
        &self.report.node_name
    }

    pub fn sequence(&self) -> u64 {
        self.report.sequence
    }

    pub fn curve(&self) -> &PowerCurve {
        &self.curve
    }

    pub fn observed_at(&self) -> SystemTime {
        self.observed_at
    }

    pub fn energy_level(&self) -> Option<EnergyLevel> {
        self.energy
    }

    pub fn capacity_millicores(&self) -> u64 {
        self.cpu().capacity_millicores
    }

    pub fn utilisation(&self) -> f64 {
        self.cpu().utilisation
    }

    /// Node watts at the reported utilisation, on the reported curve.
    pub fn predicted_watts(&self) -> f64 {
        self.curve.watts_at(self.utilisation())
    }

    /// Prices each CPU size on this report's curve from its measured utilisation: the answer of
    /// `NodePower.PredictMarginal`, identical to what the scheduler computes from the same report.
    pub fn predict_marginal(&self, cpu_millicores: &[u64]) -> pb::PredictMarginalResponse {
        let (base, capacity) = (self.utilisation(), self.capacity_millicores());
        let predictions = cpu_millicores
            .iter()
            .map(|&size| {
                let m = self.curve.marginal(base, capacity, size);
                pb::MarginalPrediction {
                    cpu_millicores: size,
                    marginal_watts: m.watts.0,
                    utilisation_after: m.utilisation_after,
                    exceeds_capacity: m.exceeds_capacity,
                }
            })
            .collect();
        pb::PredictMarginalResponse {
            report_sequence: self.sequence(),
            base_utilisation: base,
            base_watts: self.predicted_watts(),
            predictions,
        }
    }

    fn cpu(&self) -> &pb::CpuState {
        // validate() guarantees presence.
        self.report.cpu.as_ref().expect("validated report has cpu")
    }
}

/// Checks every rule on a report and returns it decoded, or the first problem found.
pub fn validate(report: pb::NodeReport) -> Result<ValidatedReport, ReportError> {
    check_dns_subdomain("node_name", &report.node_name)?;
    check_name("agent_instance", &report.agent_instance, true)?;
    if report.sequence == 0 {
        return Err(invalid("sequence", "must start at 1"));
    }
    let observed_at = timestamp("observed_at", report.observed_at.as_ref())?;
    check_cpu(report.cpu.as_ref())?;
    check_temperatures(&report.temperatures)?;
    check_measured(report.measured.as_ref())?;
    let curve = PowerCurve::new(
        report
            .curve
            .as_ref()
            .ok_or_else(|| err("curve", Problem::Missing))?
            .watts
            .clone(),
    )
    .map_err(|e| err("curve.watts", e.into()))?;
    check_model(report.model.as_ref())?;
    let energy = check_energy(report.energy.as_ref())?;
    check_sensors(&report.sensors)?;
    Ok(ValidatedReport {
        report,
        curve,
        observed_at,
        energy,
    })
}

fn check_finite_in(
    field: &str,
    value: f64,
    min: f64,
    max: f64,
    unit: &'static str,
) -> Result<(), ReportError> {
    if !value.is_finite() {
        return Err(err(field, Problem::NotFinite(value)));
    }
    if !(min..=max).contains(&value) {
        return Err(err(
            field,
            Problem::OutOfRange {
                value,
                min,
                max,
                unit,
            },
        ));
    }
    Ok(())
}

fn check_name(field: &str, name: &str, required: bool) -> Result<(), ReportError> {
    if required && name.is_empty() {
        return Err(err(field, Problem::Missing));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!("is {} bytes long; at most {MAX_NAME_LEN}", name.len()),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

/// Kubernetes object names: DNS-1123 subdomain (lowercase alphanumerics, '-' and '.', at most 253,
/// each label starting and ending alphanumeric).
fn check_dns_subdomain(field: &str, name: &str) -> Result<(), ReportError> {
    if name.is_empty() {
        return Err(err(field, Problem::Missing));
    }
    if name.len() > 253 {
        return Err(invalid(
            field,
            format!("is {} bytes; at most 253", name.len()),
        ));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(invalid(
            field,
            format!("{name:?} is not a Kubernetes node name (DNS-1123 subdomain)"),
        ));
    }
    Ok(())
}

fn timestamp(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<SystemTime, ReportError> {
    let ts = ts.ok_or_else(|| err(field, Problem::Missing))?;
    if ts.seconds < 0 || !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(invalid(
            field,
            format!("{}s {}ns is not a time after 1970", ts.seconds, ts.nanos),
        ));
    }
    Ok(UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32))
}

fn check_cpu(cpu: Option<&pb::CpuState>) -> Result<(), ReportError> {
    let cpu = cpu.ok_or_else(|| err("cpu", Problem::Missing))?;
    if cpu.capacity_millicores == 0 || cpu.capacity_millicores > MAX_CAPACITY_MILLICORES {
        return Err(invalid(
            "cpu.capacity_millicores",
            format!(
                "{} is outside 1..={MAX_CAPACITY_MILLICORES}",
                cpu.capacity_millicores
            ),
        ));
    }
    check_finite_in("cpu.utilisation", cpu.utilisation, 0.0, 1.0, "(fraction)")
}

fn check_temperatures(temperatures: &[pb::Temperature]) -> Result<(), ReportError> {
    check_len("temperatures", temperatures.len())?;
    for (i, t) in temperatures.iter().enumerate() {
        let field = |name: &str| format!("temperatures[{i}].{name}");
        match pb::TemperatureRole::try_from(t.role) {
            Ok(pb::TemperatureRole::Unspecified) => {
                return Err(err(field("role"), Problem::Missing))
            }
            Ok(_) => {}
            Err(_) => return Err(invalid(field("role"), format!("unknown role {}", t.role))),
        }
        check_finite_in(&field("celsius"), t.celsius, MIN_CELSIUS, MAX_CELSIUS, "°C")?;
        check_name(&field("sensor_name"), &t.sensor_name, false)?;
        check_source(&field("source"), t.source)?;
    }
    Ok(())
}

fn check_source(field: &str, source: i32) -> Result<pb::ReadingSource, ReportError> {
    match pb::ReadingSource::try_from(source) {
        Ok(pb::ReadingSource::Unspecified) => Err(err(field, Problem::Missing)),
        Ok(s) => Ok(s),
        Err(_) => Err(invalid(field, format!("unknown source {source}"))),
    }
}

fn check_measured(measured: Option<&pb::PowerMeasurement>) -> Result<(), ReportError> {
    let Some(m) = measured else {
        return Ok(());
    };
    let source = check_source("measured.source", m.source)?;
    if source == pb::ReadingSource::None {
        if m.watts != 0.0 {
            return Err(invalid(
                "measured.watts",
                format!("{} W given with source NONE; must be 0", m.watts),
            ));
        }
    } else {
        check_finite_in("measured.watts", m.watts, 0.0, MAX_NODE_WATTS, "W")?;
    }
    check_name("measured.sensor_name", &m.sensor_name, false)
}

fn check_model(model: Option<&pb::ModelInfo>) -> Result<(), ReportError> {
    let model = model.ok_or_else(|| err("model", Problem::Missing))?;
    check_name("model.name", &model.name, true)?;
    check_name("model.version", &model.version, false)?;
    if let Err(_) | Ok(pb::CalibrationState::Unspecified) =
        pb::CalibrationState::try_from(model.calibration)
    {
        return Err(invalid(
            "model.calibration",
            format!("{} is not a calibration state", model.calibration),
        ));
    }
    if let Some(mape) = model.calibration_mape_percent {
        check_finite_in("model.calibration_mape_percent", mape, 0.0, 1000.0, "%")?;
    }
    Ok(())
}

fn check_energy(energy: Option<&pb::EnergyState>) -> Result<Option<EnergyLevel>, ReportError> {
    let Some(e) = energy else {
        return Ok(None);
    };
    check_finite_in("energy.percent", e.percent, 0.0, 100.0, "%")?;
    check_name("energy.source", &e.source, true)?;
    let level = pb::EnergyLevel::try_from(e.level)
        .ok()
        .and_then(EnergyLevel::from_proto)
        .ok_or_else(|| {
            invalid(
                "energy.level",
                format!("{} is not an energy level", e.level),
            )
        })?;
    // Hysteresis may hold a level up to MAX_HYSTERESIS_PERCENT past its boundary, no further.
    let reachable = [
        e.percent - MAX_HYSTERESIS_PERCENT,
        e.percent,
        e.percent + MAX_HYSTERESIS_PERCENT,
    ]
    .map(EnergyLevel::from_percent);
    if !reachable.contains(&level) {
        return Err(invalid(
            "energy.level",
            format!("{level} contradicts {} %", e.percent),
        ));
    }
    Ok(Some(level))
}

fn check_sensors(sensors: &[pb::SensorHealth]) -> Result<(), ReportError> {
    check_len("sensors", sensors.len())?;
    for (i, s) in sensors.iter().enumerate() {
        check_name(&format!("sensors[{i}].role"), &s.role, true)?;
        check_name(&format!("sensors[{i}].detail"), &s.detail, false)?;
        if let Err(_) | Ok(pb::SensorStatus::Unspecified) = pb::SensorStatus::try_from(s.status) {
            return Err(invalid(
                format!("sensors[{i}].status"),
                format!("{} is not a sensor status", s.status),
            ));
        }
        if let Some(ts) = &s.last_ok {
            timestamp(&format!("sensors[{i}].last_ok"), Some(ts))?;
        }
    }
    Ok(())
}

fn check_len(field: &str, len: usize) -> Result<(), ReportError> {
    if len > MAX_LIST_ENTRIES {
        return Err(invalid(
            field,
            format!("has {len} entries; at most {MAX_LIST_ENTRIES}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::NodeReport {
        pb::NodeReport {
            node_name: "node-3.rack-a".into(),
            agent_instance: "7f3a".into(),
            sequence: 1,
            observed_at: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 5,
            }),
            cpu: Some(pb::CpuState {
                capacity_millicores: 16_000,
                utilisation: 0.25,
            }),
            temperatures: vec![pb::Temperature {
                role: pb::TemperatureRole::Inlet as i32,
                index: 0,
                celsius: 24.0,
                sensor_name: "Inlet Temp".into(),
                source: pb::ReadingSource::SdrSensor as i32,
            }],
            measured: Some(pb::PowerMeasurement {
                source: pb::ReadingSource::Dcmi as i32,
                watts: 180.0,
                sensor_name: String::new(),
            }),
            curve: Some(pb::PowerCurve {
                watts: (0..=100).map(|i| 100.0 + i as f64 * 1.5).collect(),
            }),
            model: Some(pb::ModelInfo {
                name: "generic".into(),
                version: "1".into(),
                calibration: pb::CalibrationState::Uncalibrated as i32,
                calibration_mape_percent: None,
            }),
            energy: Some(pb::EnergyState {
                level: pb::EnergyLevel::WellPowered as i32,
                percent: 80.0,
                source: "fixed".into(),
            }),
            sensors: vec![pb::SensorHealth {
                role: "inlet".into(),
                status: pb::SensorStatus::Ok as i32,
                detail: String::new(),
                last_ok: None,
            }],
        }
    }

    fn rejected(mutate: impl FnOnce(&mut pb::NodeReport)) -> String {
        let mut r = good();
        mutate(&mut r);
        validate(r).unwrap_err().to_string()
    }

    #[test]
    fn a_complete_report_passes_and_decodes() {
        let v = validate(good()).unwrap();
        assert_eq!(v.node_name(), "node-3.rack-a");
        assert_eq!(v.curve().points().len(), 101);
        assert_eq!(v.energy_level(), Some(EnergyLevel::WellPowered));
        assert_eq!(v.capacity_millicores(), 16_000);
        assert_eq!(
            v.observed_at(),
            UNIX_EPOCH + Duration::new(1_790_000_000, 5)
        );
    }

    #[test]
    fn marginal_predictions_price_each_size_from_the_reported_utilisation() {
        let v = validate(good()).unwrap(); // 16 CPUs at 25 %, 100 W + 150 W × u
        let answer = v.predict_marginal(&[1000, 4000, 16_000]);
        assert_eq!(answer.report_sequence, 1);
        assert!((answer.base_watts - 137.5).abs() < 1e-9);
        let watts: Vec<f64> = answer
            .predictions
            .iter()
            .map(|p| p.marginal_watts)
            .collect();
        assert!((watts[0] - 150.0 / 16.0).abs() < 1e-9, "{watts:?}");
        assert!((watts[1] - 37.5).abs() < 1e-9, "{watts:?}");
        // 16 CPUs from 25 %: 75 points up the curve (+112.5 W), 25 past it at 250 W per unit.
        assert!((watts[2] - (112.5 + 62.5)).abs() < 1e-9, "{watts:?}");
        assert!((answer.predictions[2].utilisation_after - 1.25).abs() < 1e-12);
        assert!(answer.predictions[2].exceeds_capacity);
        assert!(!answer.predictions[1].exceeds_capacity);
    }

    #[test]
    fn optional_parts_may_be_absent() {
        let mut r = good();
        r.measured = None;
        r.energy = None;
        r.temperatures.clear();
        r.sensors.clear();
        assert!(validate(r).is_ok());
    }

    #[test]
    fn every_rule_names_its_field() {
        type Mutation = Box<dyn FnOnce(&mut pb::NodeReport)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|r| r.node_name = "Node_3".into()),
                "node_name: \"Node_3\" is not",
            ),
            (Box::new(|r| r.node_name.clear()), "node_name: is required"),
            (
                Box::new(|r| r.agent_instance.clear()),
                "agent_instance: is required",
            ),
            (Box::new(|r| r.sequence = 0), "sequence: must start at 1"),
            (
                Box::new(|r| r.observed_at = None),
                "observed_at: is required",
            ),
            (Box::new(|r| r.cpu = None), "cpu: is required"),
            (
                Box::new(|r| r.cpu.as_mut().unwrap().capacity_millicores = 0),
                "cpu.capacity_millicores: 0 is outside",
            ),
            (
                Box::new(|r| r.cpu.as_mut().unwrap().utilisation = 1.5),
                "cpu.utilisation: 1.5 (fraction) is outside 0..=1",
            ),
            (
                Box::new(|r| r.measured.as_mut().unwrap().watts = f64::NAN),
                "measured.watts: NaN is not a finite number",
            ),
            (
                Box::new(|r| r.measured.as_mut().unwrap().watts = -5.0),
                "measured.watts: -5 W is outside 0..=100000 W",
            ),
            (
                Box::new(|r| r.measured.as_mut().unwrap().watts = 2e6),
                "measured.watts: 2000000 W is outside",
            ),
            (
                Box::new(|r| r.measured.as_mut().unwrap().source = 0),
                "measured.source: is required",
            ),
            (
                Box::new(|r| r.temperatures[0].celsius = 400.0),
                "temperatures[0].celsius: 400 °C is outside",
            ),
            (
                Box::new(|r| r.temperatures[0].role = 99),
                "temperatures[0].role: unknown role 99",
            ),
            (Box::new(|r| r.curve = None), "curve: is required"),
            (
                Box::new(|r| r.curve.as_mut().unwrap().watts[50] = 10.0),
                "curve.watts: curve falls with load: point 50",
            ),
            (
                Box::new(|r| r.curve.as_mut().unwrap().watts[3] = f64::INFINITY),
                "curve.watts: curve point 3 is inf",
            ),
            (Box::new(|r| r.model = None), "model: is required"),
            (
                Box::new(|r| r.model.as_mut().unwrap().calibration = 0),
                "model.calibration: 0 is not a calibration state",
            ),
            (
                Box::new(|r| r.energy.as_mut().unwrap().level = pb::EnergyLevel::Powerless as i32),
                "energy.level: powerless contradicts 80 %",
            ),
            (
                Box::new(|r| r.energy.as_mut().unwrap().percent = 101.0),
                "energy.percent: 101 % is outside 0..=100 %",
            ),
            (
                Box::new(|r| r.sensors[0].status = 0),
                "sensors[0].status: 0 is not a sensor status",
            ),
            (
                Box::new(|r| r.temperatures = vec![r.temperatures[0].clone(); 65]),
                "temperatures: has 65 entries",
            ),
        ];
        for (mutate, expected) in cases {
            let message = rejected(mutate);
            assert!(
                message.starts_with(expected),
                "expected {expected:?}, got {message:?}"
            );
        }
    }

    #[test]
    fn hysteresis_may_hold_a_level_just_past_its_boundary() {
        let mut r = good();
        r.energy = Some(pb::EnergyState {
            level: pb::EnergyLevel::Vulnerable as i32,
            percent: 77.0,
            source: "fixed".into(),
        });
        assert!(validate(r).is_ok());
    }
}
