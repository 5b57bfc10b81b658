//! Turns the latest readings into a validated `NodeReport`: the model's power curve at current
//! temperatures (calibrated against measured watts when there are any), measured watts, energy
//! state and sensor health.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use thiserror::Error;
use wattwise_core::curve::{CurveError, DEFAULT_CURVE_POINTS};
use wattwise_core::{validate, EnergyLevel, ReportError, ValidatedReport};
use wattwise_proto::v1 as pb;

use crate::calibrator::Calibrator;
use crate::model::{Conditions, ModelError, PowerModel};
use crate::sensors::bmc::BmcReadings;
use crate::sensors::cpu::CpuSample;

/// The latest energy reading, after hysteresis.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyReading {
    pub level: EnergyLevel,
    pub percent: f64,
    pub source: String,
    /// When the source answered: a reading only counts while it is recent (see
    /// [`crate::sensors::energy::EnergyExpiry`]).
    pub read_at: Instant,
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
    /// The calibrated curve is no valid curve (the model's own falls with load close to the
    /// tolerance, and the correction shrank the tolerance).
    #[error("calibrated power curve rejected: {0}")]
    Calibrated(CurveError),
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
    calibrator: Calibrator,
    /// The uncalibrated prediction at the last report's utilisation.
    uncalibrated_watts: Option<f64>,
}

impl ReportBuilder {
    pub fn new(node_name: String, model: Arc<PowerModel>, calibrator: Calibrator) -> Self {
        Self {
            node_name,
            agent_instance: format!("{:016x}", rand::random::<u64>()),
            sequence: 0,
            model,
            calibrator,
            uncalibrated_watts: None,
        }
    }

    pub fn calibrator(&self) -> &Calibrator {
        &self.calibrator
    }

    pub fn calibrator_mut(&mut self) -> &mut Calibrator {
        &mut self.calibrator
    }

    /// The model's own (uncalibrated) prediction at the last report's utilisation and
    /// temperatures.
    pub fn uncalibrated_watts(&self) -> Option<f64> {
        self.uncalibrated_watts
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
        self.uncalibrated_watts = Some(curve.watts_at(conditions.utilisation));
        self.calibrator
            .observe(conditions.utilisation, &readings.bmc, || {
                self.model.predict(&conditions)
            })?;
        let curve = self
            .calibrator
            .apply(curve)
            .map_err(BuildError::Calibrated)?;
        let calibration = self.calibrator.status();
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
                calibration: calibration.state.to_proto() as i32,
                calibration_mape_percent: calibration.mape_percent,
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
const MAPE_STEP_PERCENT: f64 = 1.0;

/// Whether `next` differs from `sent` enough that the scheduler should see it now: utilisation
/// by 2 points, any temperature by 1 °C, predicted or measured watts by 2 %, the calibration's
/// MAPE by 1 point (or appearing or vanishing), or any change in energy level, sensor health,
/// calibration state or model.
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
        || model_changed(a.model.as_ref(), b.model.as_ref())
        || a.sensors
            .iter()
            .map(|s| (&s.role, s.status))
            .ne(b.sensors.iter().map(|s| (&s.role, s.status)))
}

/// Name, version or calibration state changed, or the MAPE moved by [`MAPE_STEP_PERCENT`] (it
/// moves a little with every sample; the scheduler need not hear of each).
fn model_changed(a: Option<&pb::ModelInfo>, b: Option<&pb::ModelInfo>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return a.is_some() != b.is_some();
    };
    let mape_moved = match (a.calibration_mape_percent, b.calibration_mape_percent) {
        (Some(x), Some(y)) => (x - y).abs() >= MAPE_STEP_PERCENT,
        (x, y) => x.is_some() != y.is_some(),
    };
    a.name != b.name || a.version != b.version || a.calibration != b.calibration || mape_moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(calibration: pb::CalibrationState, mape: Option<f64>) -> pb::ModelInfo {
        pb::ModelInfo {
            name: "generic".into(),
            version: "1".into(),
            calibration: calibration as i32,
            calibration_mape_percent: mape,
        }
    }

    #[test]
    fn the_mape_drifting_a_little_is_no_model_change() {
        let calibrating = pb::CalibrationState::Calibrating;
        let a = info(calibrating, Some(3.0));
        let changed = |b: pb::ModelInfo| model_changed(Some(&a), Some(&b));
        assert!(!changed(info(calibrating, Some(3.9))));
        assert!(!changed(info(calibrating, Some(2.1))));
        assert!(changed(info(calibrating, Some(4.0))));
        assert!(changed(info(calibrating, None)));
        assert!(changed(info(pb::CalibrationState::Calibrated, Some(3.0))));
        assert!(changed(pb::ModelInfo {
            version: "2".into(),
            ..a.clone()
        }));
        assert!(!model_changed(None, None));
        assert!(model_changed(Some(&a), None));
    }
}
