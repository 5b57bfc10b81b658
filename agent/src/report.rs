//! Turns the latest readings into a validated `NodeReport`: the model's power curve at current
//! temperatures, measured watts, energy state and sensor health.

use std::sync::Arc;
use std::time::SystemTime;

use thiserror::Error;
use wattwise_core::curve::DEFAULT_CURVE_POINTS;
use wattwise_core::{validate, EnergyLevel, ReportError, ValidatedReport};
use wattwise_proto::v1 as pb;

use crate::model::{Conditions, ModelError, PowerModel};
use crate::sensors::bmc::BmcReadings;
use crate::sensors::cpu::CpuSample;

/// The latest energy reading, after hysteresis.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyReading {
    pub level: EnergyLevel,
    pub percent: f64,
    pub source: String,
}

/// Everything a report is made of, as last read.
#[derive(Debug, Clone)]
pub struct Readings {
    pub cpu: CpuSample,
    pub bmc: BmcReadings,
    pub energy: Option<EnergyReading>,
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("power model: {0}")]
    Model(#[from] ModelError),
    /// The agent produced something its own scheduler would reject: a bug, not bad input.
    #[error("report failed validation: {0}")]
    Invalid(#[from] ReportError),
}

/// Builds successive reports of one agent instance.
pub struct ReportBuilder {
    node_name: String,
    agent_instance: String,
    sequence: u64,
    model: Arc<PowerModel>,
}

impl ReportBuilder {
    pub fn new(node_name: String, model: Arc<PowerModel>) -> Self {
        Self {
            node_name,
            agent_instance: format!("{:016x}", rand::random::<u64>()),
            sequence: 0,
            model,
        }
    }

    pub fn agent_instance(&self) -> &str {
        &self.agent_instance
    }

    /// The next report; the sequence advances only when a report is produced.
    pub fn build(
        &mut self,
        readings: &Readings,
        observed_at: SystemTime,
    ) -> Result<ValidatedReport, BuildError> {
        let conditions = Conditions {
            utilisation: readings.cpu.utilisation,
            inlet_celsius: readings.bmc.inlet_celsius(),
            cpu_celsius: readings.bmc.cpu_celsius(),
        };
        let curve = self.model.curve(&conditions, DEFAULT_CURVE_POINTS)?;
        let info = self.model.info();
        let report = pb::NodeReport {
            node_name: self.node_name.clone(),
            agent_instance: self.agent_instance.clone(),
            sequence: self.sequence + 1,
            observed_at: Some(observed_at.into()),
            cpu: Some(pb::CpuState {
                capacity_millicores: readings.cpu.capacity_millicores,
                utilisation: readings.cpu.utilisation,
            }),
            temperatures: readings.bmc.temperatures(),
            measured: Some(readings.bmc.measured()),
            curve: Some(pb::PowerCurve {
                watts: curve.into_points(),
            }),
            model: Some(pb::ModelInfo {
                name: info.name.clone(),
                version: info.version.clone(),
                calibration: pb::CalibrationState::Uncalibrated as i32,
                calibration_mape_percent: None,
            }),
            energy: readings.energy.as_ref().map(|e| pb::EnergyState {
                level: e.level.to_proto() as i32,
                percent: e.percent,
                source: e.source.clone(),
            }),
            sensors: readings.bmc.health(),
        };
        let validated = validate(report)?;
        self.sequence += 1;
        Ok(validated)
    }
}

/// Thresholds past which a new report is worth sending before the report interval is up.
const UTILISATION_STEP: f64 = 0.02;
const CELSIUS_STEP: f64 = 1.0;
const WATTS_RELATIVE_STEP: f64 = 0.02;

/// Whether `next` differs from `sent` enough that the scheduler should see it now: utilisation
/// by 2 points, any temperature by 1 °C, predicted or measured watts by 2 %, or any change in
/// energy level, sensor health, calibration or model.
pub fn meaningful_change(sent: &ValidatedReport, next: &ValidatedReport) -> bool {
    let (a, b) = (sent.report(), next.report());
    let watts_moved = |x: f64, y: f64| (x - y).abs() > WATTS_RELATIVE_STEP * x.abs().max(1.0);
    (sent.utilisation() - next.utilisation()).abs() >= UTILISATION_STEP
        || sent.capacity_millicores() != next.capacity_millicores()
        || watts_moved(sent.predicted_watts(), next.predicted_watts())
        || watts_moved(
            a.measured.as_ref().map_or(0.0, |m| m.watts),
            b.measured.as_ref().map_or(0.0, |m| m.watts),
        )
        || a.temperatures.len() != b.temperatures.len()
        || a.temperatures.iter().zip(&b.temperatures).any(|(x, y)| {
            x.role != y.role || x.index != y.index || (x.celsius - y.celsius).abs() >= CELSIUS_STEP
        })
        || sent.energy_level() != next.energy_level()
        || a.model != b.model
        || a.sensors
            .iter()
            .map(|s| (&s.role, s.status))
            .ne(b.sensors.iter().map(|s| (&s.role, s.status)))
}
