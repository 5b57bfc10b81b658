//! What each node's agent reports, made by the agent's own code: the shipped ONNX model loaded and
//! validated by `wattwise_agent::model::PowerModel`, its curve at the node's inlet temperature,
//! calibrated by `wattwise_agent::calibrator::Calibrator` against the node's true watts as a BMC
//! would read them (seeded noise, whole watts) at the utilisations the node visits. One agent
//! cycle per report; the sim never saves calibration state (the calibrator lives as long as the
//! run, across the node's power cycles, as its state file would on a real node).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::Rng;
use wattwise_agent::calibrator::{Calibrator, Identity, Outcome};
use wattwise_agent::config::{CalibrationConfig, EnergyConfig};
use wattwise_agent::model::{Conditions, ModelError, ModelOverrides, NodeScale, PowerModel};
use wattwise_agent::sensors::bmc::{BmcReadings, PowerPath, RoleReading};
use wattwise_agent::sensors::energy::EnergyTracker;
use wattwise_agent::sensors::roles::Role;
use wattwise_core::curve::DEFAULT_CURVE_POINTS;
use wattwise_core::{EnergyLevel, PowerCurve};
use wattwise_proto::v1 as pb;

use crate::specpower::SpecServer;

/// Loaded models, one per server type (the configured idle/peak watts are part of a load).
#[derive(Default)]
pub struct Models {
    loaded: HashMap<String, Arc<PowerModel>>,
}

impl Models {
    /// The model at `path` as an agent on `server` loads it; with `configure_idle_peak`, its
    /// published idle and peak watts are the agent's `model.idle_watts` / `model.peak_watts`.
    pub fn for_server(
        &mut self,
        path: &Path,
        server: &SpecServer,
        configure_idle_peak: bool,
    ) -> Result<Arc<PowerModel>, ModelError> {
        let key = if configure_idle_peak {
            server.result_id.clone()
        } else {
            String::new()
        };
        if let Some(model) = self.loaded.get(&key) {
            return Ok(model.clone());
        }
        let scale = if configure_idle_peak {
            NodeScale {
                idle_watts: Some(server.watts[0]),
                peak_watts: Some(server.watts[10]),
            }
        } else {
            NodeScale::default()
        };
        let model = Arc::new(PowerModel::load(path, &ModelOverrides::default(), scale)?);
        self.loaded.insert(key, model.clone());
        Ok(model)
    }
}

/// One node's agent.
pub struct Agent {
    model: Arc<PowerModel>,
    conditions: Conditions,
    /// The model's own curve at the node's temperatures (they do not change in the sim).
    raw_curve: PowerCurve,
    calibrator: Calibrator,
    /// The last curve reported: recomputed only when the fit learnt something.
    curve: PowerCurve,
    /// The last single prediction, so a node sitting at one load costs no inference per cycle.
    last_prediction: Option<(f64, f64)>,
    /// Readings' `last_ok`, one tick per cycle: each measurement is new to the calibrator.
    cycle: u64,
    /// The agent's own level tracker, with its default hysteresis band.
    energy: EnergyTracker,
}

/// A report's content as the scheduler prices it.
#[derive(Debug, Clone)]
pub struct Report {
    pub curve: PowerCurve,
    pub utilisation: f64,
    /// The node's energy level after the agent's hysteresis; `None` on the grid.
    pub energy: Option<EnergyLevel>,
}

impl Agent {
    pub fn new(
        node_name: &str,
        model: Arc<PowerModel>,
        inlet_celsius: f64,
    ) -> Result<Self, ModelError> {
        let conditions = Conditions {
            utilisation: 0.0,
            inlet_celsius: Some(inlet_celsius),
            cpu_celsius: Vec::new(),
        };
        let raw_curve = model.curve(&conditions, DEFAULT_CURVE_POINTS)?;
        let config = CalibrationConfig {
            // Never written (the sim does not call `due_save`) and absent: a fresh fit.
            state_path: Path::new("/nonexistent/wattwise-sim").join(node_name),
            ..CalibrationConfig::default()
        };
        let calibrator = Calibrator::start(&config, Identity::of(node_name, &model), true);
        Ok(Self {
            curve: raw_curve.clone(),
            model,
            conditions,
            raw_curve,
            calibrator,
            last_prediction: None,
            cycle: 0,
            energy: EnergyTracker::new(EnergyConfig::default().hysteresis_percent),
        })
    }

    /// One agent cycle at `utilisation` with the node drawing `true_watts` and its battery at
    /// `battery_percent` (`None`: no battery): the BMC's reading is offered to the calibrator,
    /// the report carries the (re)calibrated curve and the level the agent's tracker gives.
    pub fn cycle(
        &mut self,
        utilisation: f64,
        true_watts: f64,
        battery_percent: Option<f64>,
        noise: f64,
        rng: &mut StdRng,
    ) -> Report {
        self.cycle += 1;
        let measured = (true_watts * (1.0 + noise * gaussian(rng)))
            .round()
            .max(1.0);
        let readings = bmc_power(measured, self.cycle);
        let model = &self.model;
        let conditions = &mut self.conditions;
        let cached = &mut self.last_prediction;
        let predicted = self.calibrator.observe(utilisation, &readings, || {
            if let Some((u, w)) = *cached {
                if u == utilisation {
                    return Ok(w);
                }
            }
            conditions.utilisation = utilisation;
            let w = model.predict(conditions)?;
            *cached = Some((utilisation, w));
            Ok::<f64, ModelError>(w)
        });
        if predicted.is_ok() && self.calibrator.status().outcome == Outcome::Accepted {
            // A curve the fit cannot make valid stays the model's own, as the agent reports it.
            self.curve = self
                .calibrator
                .apply(self.raw_curve.clone())
                .unwrap_or_else(|_| self.raw_curve.clone());
        }
        Report {
            curve: self.curve.clone(),
            utilisation,
            energy: battery_percent.map(|p| self.energy.observe(p)),
        }
    }

    /// What a day of ordinary load would have taught the agent before the run: 40 cycles at
    /// each of 20, 50 and 80 % (the demo's warm-up).
    pub fn warm_up(&mut self, watts_at: impl Fn(f64) -> f64, noise: f64, rng: &mut StdRng) {
        for u in [0.2, 0.5, 0.8] {
            for _ in 0..40 {
                self.cycle(u, watts_at(u), None, noise, rng);
            }
        }
    }

    pub fn calibration(&self) -> wattwise_agent::calibrator::Status {
        self.calibrator.status()
    }
}

/// A BMC whose DCMI power reading is `watts`, read OK at cycle `cycle`.
fn bmc_power(watts: f64, cycle: u64) -> BmcReadings {
    let reading = RoleReading {
        sensor_name: "DCMI Power".into(),
        sensor_number: None,
        value: Some(watts),
        source: pb::ReadingSource::Dcmi,
        status: pb::SensorStatus::Ok,
        detail: String::new(),
        last_ok: Some(UNIX_EPOCH + Duration::from_secs(cycle)),
    };
    BmcReadings {
        roles: BTreeMap::from([(Role::Power, reading)]),
        power_path: PowerPath::Dcmi,
        sensors_up: true,
        dcmi_up: true,
    }
}

/// A standard normal draw (Box–Muller).
pub fn gaussian(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use wattwise_agent::calibrator::State;

    use super::*;
    use crate::specpower::by_result_id;

    fn model_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/generic.onnx")
    }

    #[test]
    fn the_agent_calibrates_the_shipped_model_against_true_watts() {
        let server = by_result_id("power_ssj2008-20130304-00599").unwrap();
        // Nothing configured: the generic model starts from its default scale, far from this
        // server's, and calibration must learn it.
        let model = Models::default()
            .for_server(&model_path(), &server, false)
            .unwrap();
        let mut agent = Agent::new("n1", model, 23.0).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let truth = |u: f64| server.watts_at_inlet(u, 23.0);
        let before = agent.cycle(0.5, truth(0.5), None, 0.0, &mut rng);
        let error = |r: &Report| (r.curve.watts_at(0.5) - truth(0.5)).abs() / truth(0.5);
        agent.warm_up(truth, 0.02, &mut rng);
        assert_eq!(agent.calibration().state, State::Calibrated);
        let after = agent.cycle(0.5, truth(0.5), None, 0.02, &mut rng);
        assert!(
            error(&after) < 0.05,
            "{} vs {}",
            after.curve.watts_at(0.5),
            truth(0.5)
        );
        assert!(
            error(&after) < error(&before),
            "calibration improved the curve"
        );
    }

    #[test]
    fn reports_carry_the_battery_level_through_the_agents_hysteresis() {
        let server = by_result_id("power_ssj2008-20181125-00869").unwrap();
        let model = Models::default()
            .for_server(&model_path(), &server, true)
            .unwrap();
        let mut agent = Agent::new("n1", model, 23.0).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let mut level = |percent: Option<f64>| {
            agent
                .cycle(
                    0.5,
                    server.watts_at_inlet(0.5, 23.0),
                    percent,
                    0.0,
                    &mut rng,
                )
                .energy
        };
        use EnergyLevel::*;
        // The default band is 2 points: a level changes only 2 points past its range.
        let seen: Vec<_> = [
            80.0, 74.0, 72.9, 76.0, 77.1, 39.0, 37.9, 14.0, 12.9, 16.5, 17.1,
        ]
        .into_iter()
        .map(|p| level(Some(p)))
        .collect();
        assert_eq!(
            seen,
            [
                WellPowered,
                WellPowered,
                Vulnerable,
                Vulnerable,
                WellPowered,
                LowPowered,
                LowPowered,
                LowPowered,
                Powerless,
                Powerless,
                LowPowered
            ]
            .map(Some)
        );
        assert_eq!(level(None), None, "no battery: no level");
    }
}
