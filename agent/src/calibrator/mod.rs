//! Online calibration in the agent: picks (model, measured) samples from each report cycle, feeds
//! them to the estimator ([`crate::model::calibration`]), applies the fit to every reported
//! curve, decides the calibration state, and keeps the fit across restarts ([`store`]).
//!
//! # Samples
//!
//! One per report cycle at most, when all of these hold:
//! - the BMC's power reading (DCMI, else the SDR power sensor) is fresh: read OK since the last
//!   sample (a stale value is never fed twice);
//! - utilisation is steady: within [`STEADY_UTILISATION_STEP`] of the previous cycle's, so the
//!   measurement and the utilisation describe the same load (right after a step the meter may
//!   still show the old level);
//! - the measured watts are finite and positive, and the model's are finite and non-negative
//!   (anything else is counted as rejected and never enters the estimator).
//!
//! P_model is the uncalibrated prediction at the cycle's utilisation and temperatures; the sample
//! goes to the estimator's load level (bin) of that utilisation, 0, 5, …, 100 %.
//!
//! # States
//!
//! Derived from the estimator's bins alone, so a restored fit has the state it was saved with:
//!
//! - **uncalibrated**: calibration disabled, no usable scale, or no sample in any bin:
//!   predictions are the model's own (a = 1, b = 0). Without a measurement source the agent says
//!   so in its log once.
//! - **calibrating**: samples arrived but there are not yet [`LEVELS_NEEDED`] known levels (bins
//!   with [`SAMPLES_PER_LEVEL`] samples, or full when `calibration.memory_samples` is smaller)
//!   whose centres are at least [`LEVEL_SPACING`] points apart. Two levels already determine a
//!   line, but a third is what shows the correction holds between and beyond them.
//! - **calibrated**: there are. A bin never loses samples (its count stays at N once full), so
//!   a node that sits at one load for days stays calibrated, and its fit stays what the other
//!   levels taught: they are only revised when their own load is measured again.
//!
//! The number of known levels, however close together, is exported as
//! `wattwise_calibration_levels`.
//!
//! # Error
//!
//! The MAPE (`calibration_mape_percent`) is over the newest [`MAPE_WINDOW`] samples, each scored
//! a priori: the calibrated prediction before that sample updated the fit, against its
//! measurement. It is not kept across restarts (it describes recent measurements), and is capped
//! at [`MAX_MAPE_PERCENT`], the report's limit.
//!
//! The fit applies in both calibrating and calibrated states, also while the meter is away (a
//! restored fit is the best knowledge of this node).

pub mod store;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};
use wattwise_core::curve::{CurveError, MAX_NODE_WATTS};
use wattwise_core::PowerCurve;
use wattwise_proto::v1 as pb;

use crate::config::CalibrationConfig;
use crate::model::calibration::{bin_centre_percent, Estimator, SampleError};
use crate::sensors::bmc::{BmcReadings, PowerPath};
use crate::sensors::roles::Role;

pub use store::Identity;
use store::{Loaded, StateFile, StoredBin};

/// Largest utilisation change between two cycles for the second to give a sample (fraction).
pub const STEADY_UTILISATION_STEP: f64 = 0.05;
/// Load levels (estimator bins) a fit must know to count as calibrated.
pub const LEVELS_NEEDED: usize = 3;
/// Least distance between those levels' centres, in utilisation points.
pub const LEVEL_SPACING: usize = 10;
/// Samples a bin needs to count as a known level (30 s at the default 1 s interval).
pub const SAMPLES_PER_LEVEL: u64 = 30;
/// Samples the rolling MAPE is taken over (the newest ones).
pub const MAPE_WINDOW: usize = 60;
/// The report's limit for `calibration_mape_percent`.
pub const MAX_MAPE_PERCENT: f64 = 1000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Uncalibrated,
    Calibrating,
    Calibrated,
}

impl State {
    pub const ALL: [State; 3] = [State::Uncalibrated, State::Calibrating, State::Calibrated];

    pub fn label(self) -> &'static str {
        match self {
            State::Uncalibrated => "uncalibrated",
            State::Calibrating => "calibrating",
            State::Calibrated => "calibrated",
        }
    }

    pub fn to_proto(self) -> pb::CalibrationState {
        match self {
            State::Uncalibrated => pb::CalibrationState::Uncalibrated,
            State::Calibrating => pb::CalibrationState::Calibrating,
            State::Calibrated => pb::CalibrationState::Calibrated,
        }
    }
}

/// What happened to this cycle's measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// No fresh measurement, or utilisation not steady: nothing to learn from.
    Skipped,
    Accepted,
    Rejected(SampleError),
}

/// Label of a rejection, for metrics.
pub fn rejection_label(e: &SampleError) -> &'static str {
    match e {
        SampleError::MeasuredNotFinite(_) => "measured_not_finite",
        SampleError::MeasuredNotPositive(_) => "measured_not_positive",
        SampleError::Model(_) => "model_invalid",
        SampleError::Utilisation(_) => "utilisation_invalid",
    }
}

/// The calibration as reports and metrics show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    /// a (1 when uncalibrated).
    pub gain: f64,
    /// b in watts.
    pub offset_watts: f64,
    /// S (0 when the model has no usable scale).
    pub scale_watts: f64,
    /// Known load levels ([`level_threshold`] samples), however close together (0 when
    /// uncalibrated).
    pub levels: usize,
    /// Rolling MAPE of the calibrated prediction against measurement, percent.
    pub mape_percent: Option<f64>,
    /// This cycle's sample.
    pub outcome: Outcome,
}

/// A state file to write (on a blocking thread: it syncs to disk).
#[derive(Debug, Clone)]
pub struct PendingSave {
    pub path: PathBuf,
    pub file: StateFile,
}

impl PendingSave {
    /// Writes the file (atomically, synced). Hand the result to [`Calibrator::saved`].
    pub fn write(&self) -> std::io::Result<()> {
        let started = Instant::now();
        store::save(&self.path, &self.file)?;
        debug!(
            path = %self.path.display(),
            samples = self.file.samples,
            millis = started.elapsed().as_secs_f64() * 1e3,
            "calibration state saved"
        );
        Ok(())
    }
}

/// The per-agent calibration.
pub struct Calibrator {
    fit: Option<Fit>,
}

/// A live fit (calibration enabled and the model has a usable scale).
struct Fit {
    identity: Identity,
    estimator: Estimator,
    /// Samples the fit has taken in its life (the bins keep at most N each).
    samples: u64,
    /// |calibrated − measured| / measured of the newest samples, a priori (before each update).
    recent_errors: VecDeque<f64>,
    /// `last_ok` of the last measurement looked at, so each is used once.
    last_measurement: Option<SystemTime>,
    previous_utilisation: Option<f64>,
    outcome: Outcome,
    /// The last rejection's kind, so a meter stuck at a bad value warns once, not every cycle.
    last_rejection: Option<&'static str>,
    source: Source,
    path: PathBuf,
    save_interval: Duration,
    dirty: bool,
    last_saved: Instant,
    saved_state: State,
    /// The last failed save's error, so a read-only disk warns once, not every save_interval.
    save_error: Option<String>,
}

/// What the agent has said about its measurement source, so it says it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Unknown,
    Absent,
    Present,
}

impl Calibrator {
    /// A calibrator for the model and node in `identity`: restores the fit from
    /// `config.state_path` when it was learnt for the same node, model and scale; otherwise
    /// starts fresh, saying why. `bmc_configured` is whether any measurement can come at all.
    pub fn start(config: &CalibrationConfig, identity: Identity, bmc_configured: bool) -> Self {
        if !config.enabled {
            info!("calibration disabled (calibration.enabled: false): reporting uncalibrated predictions");
            return Self { fit: None };
        }
        let fresh = match Estimator::new(identity.scale_watts, config.memory_samples) {
            Ok(e) => e,
            Err(e) => {
                warn!(model = %identity.model_name, version = %identity.model_version, error = %e,
                    "cannot calibrate this model: its full-load prediction is no usable scale; reporting uncalibrated predictions");
                return Self { fit: None };
            }
        };
        let mut fit = Fit {
            identity,
            estimator: fresh,
            samples: 0,
            recent_errors: VecDeque::with_capacity(MAPE_WINDOW),
            last_measurement: None,
            previous_utilisation: None,
            outcome: Outcome::Skipped,
            last_rejection: None,
            source: Source::Unknown,
            path: config.state_path.clone(),
            save_interval: config.save_interval,
            dirty: false,
            last_saved: Instant::now(),
            saved_state: State::Uncalibrated,
            save_error: None,
        };
        fit.restore(config.memory_samples);
        fit.saved_state = fit.state();
        if !bmc_configured {
            fit.announce_absent("no BMC is configured (bmc.mode: none)");
        }
        Self { fit: Some(fit) }
    }

    /// Looks at this cycle's readings and learns from them if they make a sample; `model_watts`
    /// is asked only then (it costs an inference).
    pub fn observe<E>(
        &mut self,
        utilisation: f64,
        bmc: &BmcReadings,
        model_watts: impl FnOnce() -> Result<f64, E>,
    ) -> Result<(), E> {
        let Some(fit) = self.fit.as_mut() else {
            return Ok(());
        };
        fit.outcome = Outcome::Skipped;
        let steady = fit
            .previous_utilisation
            .is_some_and(|p| (p - utilisation).abs() <= STEADY_UTILISATION_STEP);
        fit.previous_utilisation = Some(utilisation);
        let Some(measured) = fit.fresh_measurement(bmc) else {
            return Ok(());
        };
        if !steady {
            debug!(
                utilisation,
                "utilisation is changing; this cycle's measurement is not a calibration sample"
            );
            return Ok(());
        }
        let model_watts = model_watts()?;
        fit.learn(utilisation, model_watts, measured);
        Ok(())
    }

    /// The calibrated curve: a·P + b·S at every point, clamped to 0..=100 kW. It stays
    /// non-decreasing (a > 0) but is checked again, like every curve.
    pub fn apply(&self, curve: PowerCurve) -> Result<PowerCurve, CurveError> {
        let Some(fit) = self
            .fit
            .as_ref()
            .filter(|f| f.state() != State::Uncalibrated)
        else {
            return Ok(curve);
        };
        let watts = curve
            .into_points()
            .into_iter()
            .map(|w| fit.estimator.calibrate(w).min(MAX_NODE_WATTS))
            .collect();
        PowerCurve::new(watts)
    }

    pub fn status(&self) -> Status {
        match &self.fit {
            None => Status {
                state: State::Uncalibrated,
                gain: 1.0,
                offset_watts: 0.0,
                scale_watts: 0.0,
                levels: 0,
                mape_percent: None,
                outcome: Outcome::Skipped,
            },
            Some(fit) => Status {
                state: fit.state(),
                gain: fit.estimator.gain(),
                offset_watts: fit.estimator.offset_watts(),
                scale_watts: fit.estimator.scale_watts(),
                levels: known_levels(&fit.estimator),
                mape_percent: fit.mape_percent(),
                outcome: fit.outcome,
            },
        }
    }

    /// The state file to write now, if the fit changed and `save_interval` has passed or the
    /// state changed since the last save.
    pub fn due_save(&mut self, now: Instant) -> Option<PendingSave> {
        let fit = self.fit.as_mut()?;
        let due = now.duration_since(fit.last_saved) >= fit.save_interval
            || fit.state() != fit.saved_state;
        if !(fit.dirty && due) {
            return None;
        }
        Some(fit.take_save(now))
    }

    /// The state file to write at shutdown, if anything changed since the last successful save.
    pub fn final_save(&mut self) -> Option<PendingSave> {
        let fit = self.fit.as_mut().filter(|f| f.dirty)?;
        Some(fit.take_save(Instant::now()))
    }

    /// The outcome of writing a [`PendingSave`]: a failed save is retried after `save_interval`
    /// (and at shutdown) even if nothing new is learnt, so nothing is lost to a passing error.
    pub fn saved(&mut self, result: std::io::Result<()>) {
        let Some(fit) = self.fit.as_mut() else {
            return;
        };
        match result {
            Ok(()) => {
                if fit.save_error.take().is_some() {
                    info!(path = %fit.path.display(), "calibration state saved again");
                }
            }
            Err(e) => {
                fit.dirty = true;
                let error = e.to_string();
                if fit.save_error.as_deref() != Some(error.as_str()) {
                    warn!(path = %fit.path.display(), error = %error,
                        "cannot save the calibration state; the fit is kept in memory and saving is retried");
                }
                fit.save_error = Some(error);
            }
        }
    }
}

impl Fit {
    fn state(&self) -> State {
        state_of(&self.estimator)
    }

    /// Restores the fit from the state file, or keeps the fresh one saying why.
    fn restore(&mut self, memory_samples: u64) {
        let path = self.path.clone();
        let problem = match store::load(&path, &self.identity) {
            Loaded::Absent => {
                info!(path = %path.display(), "no calibration state yet; starting a fresh fit");
                return;
            }
            Loaded::Found(file) => match self.adopt(&file, memory_samples) {
                Ok(()) => {
                    info!(path = %path.display(), state = self.state().label(),
                        gain = self.estimator.gain(), offset_watts = self.estimator.offset_watts(),
                        samples = self.samples, "calibration restored");
                    return;
                }
                Err(problem) => problem,
            },
            Loaded::Unusable(problem) => problem,
        };
        let aside = store::rejected_path(&path);
        match std::fs::rename(&path, &aside) {
            Ok(()) => warn!(path = %path.display(), problem = %problem, kept_as = %aside.display(),
                "calibration state file is unusable; starting a fresh fit (the old file is kept aside)"),
            Err(e) => warn!(path = %path.display(), problem = %problem, error = %e,
                "calibration state file is unusable and cannot be moved aside; starting a fresh fit, which will replace it"),
        }
    }

    /// Takes over a state file's fit after checking its values.
    fn adopt(&mut self, file: &StateFile, memory_samples: u64) -> Result<(), String> {
        self.estimator = file.estimator(memory_samples)?;
        self.samples = file.samples;
        Ok(())
    }

    /// The power reading, if it was read OK since the last one looked at.
    fn fresh_measurement(&mut self, bmc: &BmcReadings) -> Option<f64> {
        if bmc.power_path == PowerPath::None {
            if bmc.sensors_up {
                self.announce_absent(
                    "the BMC offers no power reading (no DCMI, no power sensor in its SDR)",
                );
            }
            return None;
        }
        let reading = bmc.roles.get(&Role::Power)?;
        if reading.status != pb::SensorStatus::Ok {
            return None;
        }
        let (value, at) = (reading.value?, reading.last_ok?);
        if self.last_measurement == Some(at) {
            return None;
        }
        self.last_measurement = Some(at);
        if self.source != Source::Present {
            info!(source = ?bmc.power_path, sensor = %reading.sensor_name,
                "measured watts available; calibrating the power model against them");
            self.source = Source::Present;
        }
        Some(value)
    }

    fn announce_absent(&mut self, why: &str) {
        if self.source == Source::Absent {
            return;
        }
        self.source = Source::Absent;
        match self.state() {
            State::Uncalibrated => {
                warn!(
                    reason = why,
                    "no measured watts: reporting uncalibrated predictions"
                )
            }
            state => warn!(
                reason = why,
                state = state.label(),
                "no measured watts: keeping the restored calibration without updating it"
            ),
        }
    }

    fn learn(&mut self, utilisation: f64, model_watts: f64, measured: f64) {
        let prior = self.estimator.calibrate(model_watts);
        let before = self.state();
        match self.estimator.update(utilisation, model_watts, measured) {
            Ok(()) => {
                self.samples += 1;
                if self.recent_errors.len() == MAPE_WINDOW {
                    self.recent_errors.pop_front();
                }
                self.recent_errors
                    .push_back((prior - measured).abs() / measured);
                self.outcome = Outcome::Accepted;
                self.last_rejection = None;
                self.dirty = true;
                let after = self.state();
                if after != before {
                    info!(
                        from = before.label(),
                        to = after.label(),
                        gain = self.estimator.gain(),
                        offset_watts = self.estimator.offset_watts(),
                        samples = self.samples,
                        levels = ?excited_levels(&self.estimator),
                        "calibration state changed"
                    );
                }
            }
            Err(e) => {
                let label = rejection_label(&e);
                if self.last_rejection != Some(label) {
                    warn!(error = %e, model_watts, "measured watts rejected; not used for calibration");
                    self.last_rejection = Some(label);
                }
                self.outcome = Outcome::Rejected(e);
            }
        }
    }

    fn mape_percent(&self) -> Option<f64> {
        if self.recent_errors.is_empty() {
            return None;
        }
        let mean = self.recent_errors.iter().sum::<f64>() / self.recent_errors.len() as f64;
        Some((mean * 100.0).min(MAX_MAPE_PERCENT))
    }

    fn take_save(&mut self, now: Instant) -> PendingSave {
        self.dirty = false;
        self.last_saved = now;
        self.saved_state = self.state();
        PendingSave {
            path: self.path.clone(),
            file: StateFile {
                format: store::FORMAT.to_string(),
                node_name: self.identity.node_name.clone(),
                model_name: self.identity.model_name.clone(),
                model_version: self.identity.model_version.clone(),
                scale_watts: self.identity.scale_watts,
                samples: self.samples,
                bins: self.estimator.bins().iter().map(StoredBin::from).collect(),
                saved_at_unix_seconds: store::unix_seconds(SystemTime::now()),
            },
        }
    }
}

/// The calibration state the estimator's bins stand for (module docs).
pub fn state_of(estimator: &Estimator) -> State {
    if estimator.bins().iter().all(|b| b.samples == 0) {
        State::Uncalibrated
    } else if excited_levels(estimator).len() >= LEVELS_NEEDED {
        State::Calibrated
    } else {
        State::Calibrating
    }
}

/// Samples that make a bin a known level: [`SAMPLES_PER_LEVEL`], or N if that is smaller (a full
/// bin always counts).
pub fn level_threshold(estimator: &Estimator) -> u64 {
    SAMPLES_PER_LEVEL.min(estimator.memory_samples())
}

/// Centres (utilisation points) of the known levels ([`level_threshold`]) at least
/// [`LEVEL_SPACING`] apart, lowest first. Greedy from the bottom, which finds the most such
/// levels there are.
pub fn excited_levels(estimator: &Estimator) -> Vec<usize> {
    let threshold = level_threshold(estimator);
    let mut found: Vec<usize> = Vec::new();
    for (k, bin) in estimator.bins().iter().enumerate() {
        let centre = bin_centre_percent(k);
        if bin.samples >= threshold && found.last().is_none_or(|&l| centre >= l + LEVEL_SPACING) {
            found.push(centre);
        }
    }
    found
}

/// Known levels ([`level_threshold`]), however close together: `wattwise_calibration_levels`.
pub fn known_levels(estimator: &Estimator) -> usize {
    let threshold = level_threshold(estimator);
    estimator
        .bins()
        .iter()
        .filter(|b| b.samples >= threshold)
        .count()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::model::calibration::{Bin, BINS};
    use crate::sensors::bmc::RoleReading;

    const S: f64 = 300.0;

    fn identity(node: &str) -> Identity {
        Identity {
            node_name: node.into(),
            model_name: "generic".into(),
            model_version: "3".into(),
            scale_watts: S,
        }
    }

    fn config(dir: &std::path::Path) -> CalibrationConfig {
        CalibrationConfig {
            state_path: dir.join("calibration.json"),
            ..CalibrationConfig::default()
        }
    }

    /// The model of these tests: 100 W idle, 300 W = S at full load.
    fn model(u: f64) -> f64 {
        100.0 + 200.0 * u
    }

    /// The node's meter: 80 + 150·u + 50·u² W.
    fn meter(u: f64) -> f64 {
        80.0 + 150.0 * u + 50.0 * u * u
    }

    /// BMC readings with a DCMI power value read OK at `at` seconds.
    fn bmc(watts: f64, at: u64) -> BmcReadings {
        let mut power = RoleReading::unfilled(pb::SensorStatus::Ok, String::new());
        power.source = pb::ReadingSource::Dcmi;
        power.record(watts, UNIX_EPOCH + Duration::from_secs(at));
        let mut b = BmcReadings::none();
        b.power_path = PowerPath::Dcmi;
        b.sensors_up = true;
        b.roles.insert(Role::Power, power);
        b
    }

    /// A cycle at utilisation `u` whose meter read `watts` at `at`.
    fn cycle(c: &mut Calibrator, u: f64, watts: f64, at: u64) -> Outcome {
        c.observe(u, &bmc(watts, at), || Ok::<_, ()>(model(u)))
            .unwrap();
        c.status().outcome
    }

    /// `n` steady cycles at `u` with fresh readings from the meter, starting at time `*t`.
    fn hold(c: &mut Calibrator, u: f64, n: usize, t: &mut u64) {
        for _ in 0..n {
            *t += 1;
            cycle(c, u, meter(u), *t);
        }
    }

    fn curve() -> PowerCurve {
        PowerCurve::sample(101, model).unwrap()
    }

    #[test]
    fn without_measurements_predictions_are_the_models_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Calibrator::start(&config(dir.path()), identity("n"), false);
        for t in 0..10 {
            c.observe(0.5, &BmcReadings::none(), || Ok::<_, ()>(model(0.5)))
                .unwrap();
            assert_eq!(c.status().outcome, Outcome::Skipped, "{t}");
        }
        let status = c.status();
        assert_eq!(status.state, State::Uncalibrated);
        assert_eq!((status.gain, status.offset_watts), (1.0, 0.0));
        assert_eq!(status.mape_percent, None);
        assert_eq!(c.apply(curve()).unwrap(), curve());
        assert!(c.final_save().is_none(), "nothing learnt, nothing written");

        let disabled = CalibrationConfig {
            enabled: false,
            ..config(dir.path())
        };
        let mut off = Calibrator::start(&disabled, identity("n"), true);
        for t in 0..3 {
            assert_eq!(cycle(&mut off, 0.5, 250.0, t), Outcome::Skipped);
        }
        assert_eq!(off.status().state, State::Uncalibrated);
        assert_eq!(off.apply(curve()).unwrap(), curve());
        assert!(off.final_save().is_none());
    }

    #[test]
    fn each_reading_is_used_once_and_only_at_steady_utilisation() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Calibrator::start(&config(dir.path()), identity("n"), true);
        let mut asked = 0;
        let mut observe = |c: &mut Calibrator, u: f64, at: u64| {
            c.observe(u, &bmc(meter(u), at), || {
                asked += 1;
                Ok::<_, ()>(model(u))
            })
            .unwrap();
            c.status().outcome
        };
        assert_eq!(
            observe(&mut c, 0.4, 1),
            Outcome::Skipped,
            "no previous cycle"
        );
        assert_eq!(observe(&mut c, 0.4, 2), Outcome::Accepted);
        assert_eq!(observe(&mut c, 0.4, 2), Outcome::Skipped, "same reading");
        assert_eq!(observe(&mut c, 0.8, 3), Outcome::Skipped, "a step");
        assert_eq!(
            observe(&mut c, 0.82, 4),
            Outcome::Accepted,
            "within 5 points"
        );
        assert_eq!(asked, 2, "the model is asked only for samples");
        let mut stale = bmc(250.0, 5);
        stale
            .roles
            .get_mut(&Role::Power)
            .unwrap()
            .fail("timeout".into());
        c.observe(0.82, &stale, || Ok::<_, ()>(model(0.82)))
            .unwrap();
        assert_eq!(
            c.status().outcome,
            Outcome::Skipped,
            "stale values are not fresh"
        );
        assert_eq!(c.status().state, State::Calibrating);
    }

    #[test]
    fn invalid_measurements_are_rejected_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Calibrator::start(&config(dir.path()), identity("n"), true);
        let mut t = 0;
        hold(&mut c, 0.4, 5, &mut t);
        let before = c.status();
        for (watts, label) in [
            (f64::NAN, "measured_not_finite"),
            (-3.0, "measured_not_positive"),
            (0.0, "measured_not_positive"),
        ] {
            t += 1;
            match cycle(&mut c, 0.4, watts, t) {
                Outcome::Rejected(e) => assert_eq!(rejection_label(&e), label),
                other => panic!("{watts}: {other:?}"),
            }
            let after = c.status();
            assert_eq!(
                (after.gain, after.offset_watts, after.mape_percent),
                (before.gain, before.offset_watts, before.mape_percent)
            );
        }
        // A model error is the caller's, not a sample.
        t += 1;
        let err = c.observe(0.4, &bmc(200.0, t), || Err::<f64, _>("no inlet default"));
        assert_eq!(err, Err("no inlet default"));
    }

    #[test]
    fn three_levels_make_it_calibrated_and_the_curve_follows_the_meter() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Calibrator::start(&config(dir.path()), identity("n"), true);
        let mut t = 0;
        assert_eq!(c.status().state, State::Uncalibrated);
        hold(&mut c, 0.0, 61, &mut t);
        assert_eq!(c.status().state, State::Calibrating);
        assert_eq!(c.status().levels, 1);
        hold(&mut c, 0.4, 61, &mut t);
        assert_eq!(c.status().state, State::Calibrating, "two levels");
        hold(&mut c, 0.8, 30, &mut t);
        assert_eq!(c.status().state, State::Calibrating, "29 samples at 80 %");
        hold(&mut c, 0.8, 1, &mut t);
        assert_eq!(c.status().state, State::Calibrated);
        assert_eq!(c.status().levels, 3);
        hold(&mut c, 0.8, 30, &mut t);
        let status = c.status();
        // The golden vector of model::calibration (60 samples at each level), fed through the
        // agent's sampling (one cycle per level gives no sample: the step).
        assert!(
            (status.gain - 0.950_494_079_114_688_5).abs() < 1e-12,
            "{status:?}"
        );
        assert!(
            (status.offset_watts - (-17.726_057_478_180_344)).abs() < 1e-9,
            "{status:?}"
        );
        let calibrated = c.apply(curve()).unwrap();
        for (i, w) in calibrated.points().iter().enumerate() {
            let u = i as f64 / 100.0;
            assert!(
                (w - (status.gain * model(u) + status.offset_watts)).abs() < 1e-9,
                "{i}"
            );
        }
        // Closer to the meter than the model was, where it was measured.
        for u in [0.0, 0.4, 0.8] {
            let i = (u * 100.0) as usize;
            let calibrated_error = (calibrated.points()[i] - meter(u)).abs();
            let model_error = (model(u) - meter(u)).abs();
            assert!(calibrated_error < model_error / 2.0, "u={u}");
        }
        // The a-priori MAPE over the last 60 samples, all at 80 %: each scored before it updated
        // the fit, so the first ones there carry the error of a fit that had not seen 80 % yet.
        let mape = status.mape_percent.unwrap();
        assert!(mape > 0.0 && mape < 3.0, "{mape}");
    }

    /// An estimator with `samples[k]` samples in bin k (N = 300 unless `memory` says).
    fn with_bins(samples: &[(usize, u64)], memory: u64) -> Estimator {
        let mut bins = [Bin::default(); BINS];
        for &(k, n) in samples {
            bins[k] = Bin {
                samples: n,
                model: 0.5,
                measured: 0.5,
            };
        }
        Estimator::restore(S, memory, bins).unwrap()
    }

    #[test]
    fn excited_levels_need_enough_samples_and_spacing() {
        let e = |samples: &[(usize, u64)]| with_bins(samples, 300);
        assert_eq!(state_of(&e(&[])), State::Uncalibrated);
        assert!(excited_levels(&e(&[(8, 29)])).is_empty());
        assert_eq!(state_of(&e(&[(8, 29)])), State::Calibrating);
        assert_eq!(excited_levels(&e(&[(8, 30)])), vec![40]);
        let two = e(&[(8, 30), (9, 300)]);
        assert_eq!(
            excited_levels(&two),
            vec![40],
            "5 points apart is one level"
        );
        assert_eq!(known_levels(&two), 2, "though both are known");
        let three = e(&[(0, 30), (8, 30), (9, 300), (10, 30)]);
        assert_eq!(excited_levels(&three), vec![0, 40, 50]);
        assert_eq!(state_of(&three), State::Calibrated);
        let four = e(&[(0, 30), (8, 30), (9, 300), (10, 30), (20, 30)]);
        assert_eq!(excited_levels(&four), vec![0, 40, 50, 100]);
        // Four neighbouring levels (45–60 %) hold no spaced triple; a fifth (65 %) does.
        let close = e(&[(9, 30), (10, 30), (11, 30), (12, 30)]);
        assert_eq!(excited_levels(&close), vec![45, 55]);
        assert_eq!(state_of(&close), State::Calibrating);
        let five = e(&[(9, 30), (10, 30), (11, 30), (12, 30), (13, 30)]);
        assert_eq!(excited_levels(&five), vec![45, 55, 65]);
        assert_eq!(state_of(&five), State::Calibrated);
        // With N below 30 a full bin is a known level.
        let short = with_bins(&[(0, 20), (8, 20), (16, 19)], 20);
        assert_eq!(excited_levels(&short), vec![0, 40]);
        let short = with_bins(&[(0, 20), (8, 20), (16, 20)], 20);
        assert_eq!(state_of(&short), State::Calibrated);
    }

    #[test]
    fn the_fit_survives_a_restart_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let mut c = Calibrator::start(&cfg, identity("n"), true);
        let mut t = 0;
        for u in [0.0, 0.4, 0.8] {
            hold(&mut c, u, 70, &mut t);
        }
        assert!(c.due_save(Instant::now()).is_some(), "the state changed");
        assert!(c.due_save(Instant::now()).is_none(), "nothing new");
        hold(&mut c, 0.8, 1, &mut t);
        assert!(c.due_save(Instant::now()).is_none(), "within save_interval");
        assert!(c.due_save(Instant::now() + cfg.save_interval).is_some());
        hold(&mut c, 0.8, 1, &mut t);
        let save = c.final_save().expect("changed since the last save");
        save.write().unwrap();
        assert!(c.final_save().is_none());

        let restored = Calibrator::start(&cfg, identity("n"), true);
        let (a, b) = (c.status(), restored.status());
        assert_eq!(b.state, State::Calibrated);
        assert_eq!(
            (a.gain, a.offset_watts, a.levels),
            (b.gain, b.offset_watts, b.levels)
        );
        assert_eq!(b.mape_percent, None, "no measurement yet in this life");
        assert_eq!(c.apply(curve()).unwrap(), restored.apply(curve()).unwrap());

        // A lowered calibration.memory_samples clamps the counts instead of rejecting the file.
        let lowered = CalibrationConfig {
            memory_samples: 50,
            ..cfg.clone()
        };
        let restored = Calibrator::start(&lowered, identity("n"), true);
        let status = restored.status();
        assert_eq!((status.state, status.levels), (State::Calibrated, 3));
        assert!(
            !store::rejected_path(&cfg.state_path).exists(),
            "not set aside"
        );
        assert!((status.gain - a.gain).abs() < 0.01, "{status:?} vs {a:?}");
    }

    #[test]
    fn a_foreign_or_broken_state_file_is_kept_aside_and_the_fit_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let aside = store::rejected_path(&cfg.state_path);
        let mut c = Calibrator::start(&cfg, identity("node-a"), true);
        let mut t = 0;
        hold(&mut c, 0.4, 10, &mut t);
        c.final_save().unwrap().write().unwrap();
        let written = std::fs::read_to_string(&cfg.state_path).unwrap();

        // Another node's file (a copied disk image, say).
        let other = Calibrator::start(&cfg, identity("node-b"), true);
        assert_eq!(other.status().state, State::Uncalibrated);
        assert!(!cfg.state_path.exists());
        assert_eq!(std::fs::read_to_string(&aside).unwrap(), written, "kept");

        // Not JSON at all, and JSON with values no fit can have.
        let mut broken: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(broken["bins"][8]["n"], 9, "10 cycles at 40 %: 9 samples");
        broken["bins"][8]["measured"] = serde_json::json!(-0.5);
        let mut miscounted: serde_json::Value = serde_json::from_str(&written).unwrap();
        miscounted["samples"] = 8.into();
        for text in [
            "\u{0}\u{1}garbage".to_string(),
            broken.to_string(),
            miscounted.to_string(),
        ] {
            std::fs::write(&cfg.state_path, &text).unwrap();
            let c = Calibrator::start(&cfg, identity("node-a"), true);
            assert_eq!(c.status().state, State::Uncalibrated, "{text}");
            assert_eq!(c.status().gain, 1.0);
            assert_eq!(std::fs::read_to_string(&aside).unwrap(), text);
        }
    }

    #[test]
    fn a_failed_save_is_retried_without_new_samples() {
        let dir = tempfile::tempdir().unwrap();
        // The state directory's place is taken by a file: every save fails.
        std::fs::write(dir.path().join("blocked"), "").unwrap();
        let cfg = CalibrationConfig {
            state_path: dir.path().join("blocked/calibration.json"),
            ..CalibrationConfig::default()
        };
        let mut c = Calibrator::start(&cfg, identity("n"), true);
        let mut t = 0;
        hold(&mut c, 0.4, 5, &mut t);
        let now = Instant::now() + cfg.save_interval;
        let save = c.due_save(now).expect("due");
        let result = save.write();
        assert!(result.is_err());
        c.saved(result);
        assert!(c.due_save(now).is_none(), "not again before save_interval");
        let retry = c
            .due_save(now + cfg.save_interval)
            .expect("retried although nothing new was learnt");
        c.saved(retry.write());
        assert!(c.final_save().is_some(), "and at shutdown");
    }
}
