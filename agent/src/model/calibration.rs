//! Online calibration of the power model against measured watts: a bounded affine correction
//! `P ≈ a·P_model + b`, fitted by least squares over per-load-level means.
//!
//! The algorithm is shared with the model accuracy report (Python), which must reproduce it
//! exactly (models/pipeline.py `Calibration`, same operations in the same order):
//!
//! - S ([`Estimator::scale_watts`]) is the model's uncalibrated prediction at full load and its
//!   input defaults, fixed at load; the fit runs in units of S so its bounds mean the same on a
//!   60 W edge box and a 1 kW server: x = P_model/S, y = P_measured/S, θ = [a, b/S].
//! - [`BINS`] load levels ("bins") at 0, 5, …, 100 % utilisation: a sample at utilisation u
//!   (clamped to 0..=1) goes to bin round(20·u). Each bin keeps a sample count n (capped at N)
//!   and the means x̄, ȳ: n ← min(n + 1, N); x̄ ← x̄ + (x − x̄)/n; ȳ likewise. So a bin is a
//!   plain mean until it has N samples, then an exponential average over about its last N, and
//!   it forgets only when its own load level is measured again: a node sitting at one load never
//!   erases what the other levels taught.
//! - N = `calibration.memory_samples` ([`DEFAULT_MEMORY_SAMPLES`]).
//! - Fit, with weights w = n/N and ρ = [`RIDGE`]: minimise
//!   Σ w·(ȳ − a·x̄ − b)² + ρ·((a − 1)² + b²). ρ pulls toward the model as it is: while a single
//!   level is known it picks, of all the lines through that level, the one closest to the model.
//!   Once levels are known it must not compete with them: it shrinks the gain's correction a − 1
//!   by about ρ / (ρ + Σw · variance of x̄), and x̄ spans little (the generic model's x̄ runs
//!   0.3..1 of S), so three levels of 60 of 300 samples give Σw · variance ≈ 0.03. ρ = 0.001
//!   keeps that shrinkage near 3 % (ρ = 0.01, the first choice, shrank it by a quarter;
//!   models/README.md, "Accuracy"). Closed form:
//!   [[Σw·x̄² + ρ, Σw·x̄], [Σw·x̄, Σw + ρ]]·[a, b] = [Σw·x̄·ȳ + ρ, Σw·ȳ].
//! - Bounds: a ∈ [0.1, 10], b/S ∈ [−1, 1] (a meter gone wrong can skew the curve, not invert
//!   it). A solution's a outside its bounds is clamped and b re-solved for it,
//!   b = (Σw·ȳ − a·Σw·x̄)/(Σw + ρ); then b is clamped.
//! - The fit is redone after every accepted sample (21 bins: a few hundred flops).
//! - The calibrated prediction is max(0, a·P_model + b) (still non-decreasing in load, as a > 0).
//!
//! This module is plain arithmetic: which samples are fed, when the fit counts as calibrated and
//! how it is kept across restarts is [`crate::calibrator`]'s business.

use thiserror::Error;

/// Load levels 0, 5, …, 100 %.
pub const BINS: usize = 21;
/// N when the configuration does not say otherwise: at one sample per reading interval (1 s by
/// default) a level's mean covers about its last 5 minutes at that level.
pub const DEFAULT_MEMORY_SAMPLES: u64 = 300;
/// The N the configuration may choose from.
pub const MEMORY_SAMPLES_RANGE: std::ops::RangeInclusive<u64> = 10..=100_000;
/// ρ: the pull toward a = 1, b = 0.
pub const RIDGE: f64 = 0.001;
/// Bounds of the gain a.
pub const GAIN_BOUNDS: (f64, f64) = (0.1, 10.0);
/// Bounds of the offset in units of S (b/S).
pub const OFFSET_BOUNDS: (f64, f64) = (-1.0, 1.0);
/// θ with nothing learnt: gain 1, offset 0 (the model as it is).
pub const INITIAL_THETA: [f64; 2] = [1.0, 0.0];

/// The bin of utilisation `u` (a fraction, clamped to 0..=1): round(20·u), halves up.
pub fn bin_of(utilisation: f64) -> usize {
    (utilisation.clamp(0.0, 1.0) * 20.0).round() as usize
}

/// Utilisation points (0..=100) at the centre of bin `k`.
pub fn bin_centre_percent(k: usize) -> usize {
    k * 100 / (BINS - 1)
}

/// One load level's memory: its sample count and mean model and measured watts, in units of S.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bin {
    /// Samples averaged (at most N).
    pub samples: u64,
    /// x̄: mean P_model/S.
    pub model: f64,
    /// ȳ: mean P_measured/S.
    pub measured: f64,
}

/// Why a sample was not fed to the estimator.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum SampleError {
    #[error("measured watts {0} is not a finite number")]
    MeasuredNotFinite(f64),
    #[error("measured watts {0} is not positive (a running node draws power; 0 W is a meter without a reading)")]
    MeasuredNotPositive(f64),
    #[error("model watts {0} is not a finite, non-negative number")]
    Model(f64),
    #[error("utilisation {0} is not a finite number")]
    Utilisation(f64),
}

/// Why a stored estimator state cannot be restored.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StateError {
    #[error("scale {0} W is not a positive, finite wattage")]
    Scale(f64),
    #[error("memory of {0} samples is outside {lo}..={hi}", lo = MEMORY_SAMPLES_RANGE.start(), hi = MEMORY_SAMPLES_RANGE.end())]
    Memory(u64),
    #[error("load level {percent} %: {problem}")]
    Bin { percent: usize, problem: String },
    #[error("the bins give no finite fit ({0:?})")]
    Fit([f64; 2]),
}

/// The calibration state: the bins and the fit they give.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimator {
    scale_watts: f64,
    memory_samples: u64,
    bins: [Bin; BINS],
    theta: [f64; 2],
}

impl Estimator {
    /// A fresh estimator (nothing learnt: θ = [1, 0]) for a model whose full-load prediction is
    /// `scale_watts`, with bins averaging over `memory_samples` samples.
    pub fn new(scale_watts: f64, memory_samples: u64) -> Result<Self, StateError> {
        Self::restore(scale_watts, memory_samples, [Bin::default(); BINS])
    }

    /// An estimator from stored bins, each checked: a state file is input like any other. A bin
    /// holding more samples than `memory_samples` (the setting was lowered since it was saved)
    /// is clamped to it, not rejected.
    pub fn restore(
        scale_watts: f64,
        memory_samples: u64,
        bins: [Bin; BINS],
    ) -> Result<Self, StateError> {
        if !(scale_watts.is_finite() && scale_watts > 0.0) {
            return Err(StateError::Scale(scale_watts));
        }
        if !MEMORY_SAMPLES_RANGE.contains(&memory_samples) {
            return Err(StateError::Memory(memory_samples));
        }
        let mut bins = bins;
        for (k, bin) in bins.iter_mut().enumerate() {
            let problem = if bin.samples == 0 {
                (bin.model != 0.0 || bin.measured != 0.0)
                    .then(|| format!("no samples but means {} and {}", bin.model, bin.measured))
            } else if !(bin.model.is_finite() && bin.model >= 0.0) {
                Some(format!(
                    "mean model {} is not finite and non-negative",
                    bin.model
                ))
            } else if !(bin.measured.is_finite() && bin.measured > 0.0) {
                Some(format!(
                    "mean measurement {} is not finite and positive",
                    bin.measured
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(StateError::Bin {
                    percent: bin_centre_percent(k),
                    problem,
                });
            }
            bin.samples = bin.samples.min(memory_samples);
        }
        let theta = fit(&bins, memory_samples);
        if !theta.iter().all(|v| v.is_finite()) {
            return Err(StateError::Fit(theta));
        }
        Ok(Self {
            scale_watts,
            memory_samples,
            bins,
            theta,
        })
    }

    /// Feeds one sample: the utilisation (0..=1) it was taken at, the model's uncalibrated
    /// prediction and the measured watts at the same utilisation and temperatures. A rejected
    /// sample changes nothing.
    pub fn update(
        &mut self,
        utilisation: f64,
        model_watts: f64,
        measured_watts: f64,
    ) -> Result<(), SampleError> {
        check_sample(utilisation, model_watts, measured_watts)?;
        let x = model_watts / self.scale_watts;
        let y = measured_watts / self.scale_watts;
        let bin = &mut self.bins[bin_of(utilisation)];
        bin.samples = (bin.samples + 1).min(self.memory_samples);
        let n = bin.samples as f64;
        bin.model += (x - bin.model) / n;
        bin.measured += (y - bin.measured) / n;
        self.theta = fit(&self.bins, self.memory_samples);
        Ok(())
    }

    /// The calibrated prediction for an uncalibrated one: max(0, a·P_model + b).
    pub fn calibrate(&self, model_watts: f64) -> f64 {
        (self.theta[0] * model_watts + self.theta[1] * self.scale_watts).max(0.0)
    }

    /// a.
    pub fn gain(&self) -> f64 {
        self.theta[0]
    }

    /// b in watts (b/S · S).
    pub fn offset_watts(&self) -> f64 {
        self.theta[1] * self.scale_watts
    }

    /// θ = [a, b/S].
    pub fn theta(&self) -> [f64; 2] {
        self.theta
    }

    /// The load levels 0, 5, …, 100 %, lowest first.
    pub fn bins(&self) -> &[Bin; BINS] {
        &self.bins
    }

    pub fn scale_watts(&self) -> f64 {
        self.scale_watts
    }

    /// N.
    pub fn memory_samples(&self) -> u64 {
        self.memory_samples
    }
}

/// θ = [a, b/S] for `bins` averaging over `memory_samples`: the weighted least-squares line
/// through the bins' means with the pull toward [1, 0], within the bounds (module docs).
pub fn fit(bins: &[Bin; BINS], memory_samples: u64) -> [f64; 2] {
    let (mut sw, mut swx, mut swy, mut swxx, mut swxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let memory = memory_samples as f64;
    for bin in bins.iter().filter(|b| b.samples > 0) {
        let w = bin.samples as f64 / memory;
        let (x, y) = (bin.model, bin.measured);
        sw += w;
        swx += w * x;
        swy += w * y;
        swxx += w * x * x;
        swxy += w * x * y;
    }
    let (a00, a01, a11) = (swxx + RIDGE, swx, sw + RIDGE);
    let (r0, r1) = (swxy + RIDGE, swy);
    // Positive: ρ > 0 and (Σw·x̄²)(Σw) ≥ (Σw·x̄)² (Cauchy–Schwarz).
    let det = a00 * a11 - a01 * a01;
    let mut a = (r0 * a11 - a01 * r1) / det;
    let mut b = (a00 * r1 - a01 * r0) / det;
    if !(GAIN_BOUNDS.0..=GAIN_BOUNDS.1).contains(&a) {
        a = a.clamp(GAIN_BOUNDS.0, GAIN_BOUNDS.1);
        b = (swy - a * swx) / (sw + RIDGE);
    }
    [a, b.clamp(OFFSET_BOUNDS.0, OFFSET_BOUNDS.1)]
}

/// Whether a sample may enter the estimator.
fn check_sample(
    utilisation: f64,
    model_watts: f64,
    measured_watts: f64,
) -> Result<(), SampleError> {
    if !measured_watts.is_finite() {
        return Err(SampleError::MeasuredNotFinite(measured_watts));
    }
    if measured_watts <= 0.0 {
        return Err(SampleError::MeasuredNotPositive(measured_watts));
    }
    if !(model_watts.is_finite() && model_watts >= 0.0) {
        return Err(SampleError::Model(model_watts));
    }
    if !utilisation.is_finite() {
        return Err(SampleError::Utilisation(utilisation));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: f64 = 300.0;

    /// A model curve (watts over utilisation) for the tests: 120 W idle, 300 W peak, concave.
    fn model_curve(u: f64) -> f64 {
        120.0 + 180.0 * u.powf(0.8)
    }

    fn fresh() -> Estimator {
        Estimator::new(S, DEFAULT_MEMORY_SAMPLES).unwrap()
    }

    fn feed(e: &mut Estimator, u: f64, n: usize, meter: impl Fn(f64) -> f64) {
        for _ in 0..n {
            let m = model_curve(u);
            e.update(u, m, meter(m)).unwrap();
        }
    }

    fn relative(x: f64, y: f64) -> f64 {
        (x - y).abs() / y.abs()
    }

    #[test]
    fn bins_are_five_points_wide_and_round_halves_up() {
        assert_eq!(bin_of(0.0), 0);
        assert_eq!(bin_of(0.024), 0);
        assert_eq!(bin_of(0.025), 1);
        assert_eq!(bin_of(0.4), 8);
        assert_eq!(bin_of(0.42), 8);
        assert_eq!(bin_of(0.43), 9);
        assert_eq!(bin_of(1.0), 20);
        assert_eq!((bin_of(-0.5), bin_of(7.0)), (0, 20), "clamped");
        assert_eq!(bin_centre_percent(8), 40);
        assert_eq!(bin_centre_percent(20), 100);
    }

    #[test]
    fn nothing_learnt_is_the_model_as_it_is() {
        let e = fresh();
        assert_eq!(e.theta(), INITIAL_THETA);
        assert_eq!(e.calibrate(200.0), 200.0);
    }

    #[test]
    fn recovers_a_known_gain_and_offset_from_two_or_more_levels() {
        // What the model already gets right is recovered exactly (ρ pulls toward it) …
        let mut exact = fresh();
        for u in [0.2, 0.7] {
            feed(&mut exact, u, 50, |m| m);
        }
        assert_eq!(exact.theta(), INITIAL_THETA);
        // … and any other affine meter (here 0.8 × model + 45 W) as the closed-form solution of
        // the regularised problem, to the last digits: the bins hold the levels' exact means.
        let (a, b) = (0.8, 45.0 / S);
        let meter = |m: f64| 0.8 * m + 45.0;
        let mut e = fresh();
        for u in [0.1, 0.9] {
            feed(&mut e, u, 300, meter);
        }
        let xs = [0.1, 0.9].map(|u| model_curve(u) / S);
        // w = 1 for both; y = a·x + b.
        let (sx, sxx) = (xs[0] + xs[1], xs[0] * xs[0] + xs[1] * xs[1]);
        let (sy, sxy) = (a * sx + 2.0 * b, a * sxx + b * sx);
        let det = (sxx + RIDGE) * (2.0 + RIDGE) - sx * sx;
        let expected_a = ((sxy + RIDGE) * (2.0 + RIDGE) - sx * sy) / det;
        let expected_b = ((sxx + RIDGE) * sy - sx * (sxy + RIDGE)) / det;
        assert!(relative(e.gain(), expected_a) < 1e-12, "{}", e.gain());
        assert!(
            relative(e.theta()[1], expected_b) < 1e-12,
            "{}",
            e.theta()[1]
        );
        // ρ's pull toward [1, 0] is the only bias: about ρ / (Σw·var(x̄)) in the gain. With full
        // bins at 10 % and 90 % a = 0.826, b = 39.2 W; at 0, 30, 55 and 100 % a = 0.815,
        // b = 41.8 W; every prediction within 2 % of the meter.
        for (levels, gain_bias) in [(&[0.1, 0.9][..], 0.03), (&[0.0, 0.3, 0.55, 1.0][..], 0.02)] {
            let mut e = fresh();
            for &u in levels {
                feed(&mut e, u, DEFAULT_MEMORY_SAMPLES as usize, meter);
            }
            let bias = e.gain() - 0.8;
            assert!(
                bias > 0.0 && bias < gain_bias,
                "{levels:?}: gain {}",
                e.gain()
            );
            assert!(
                e.offset_watts() < 45.0 && e.offset_watts() > 38.0,
                "{levels:?}: offset {}",
                e.offset_watts()
            );
            for u in [0.0, 0.25, 0.5, 0.75, 1.0] {
                let m = model_curve(u);
                assert!(
                    relative(e.calibrate(m), meter(m)) < 0.02,
                    "{levels:?} u={u}"
                );
            }
        }
    }

    #[test]
    fn one_level_is_matched_and_elsewhere_the_model_barely_moves() {
        // The meter reads 1.3 × model − 20 W; only 40 % is ever measured, for a long time.
        let meter = |m: f64| 1.3 * m - 20.0;
        let mut e = fresh();
        feed(&mut e, 0.4, 1000, meter);
        let at = model_curve(0.4);
        assert!(
            relative(e.calibrate(at), meter(at)) < 0.01,
            "the level is matched"
        );
        // Of all the lines through that point, ρ picks the one nearest [1, 0]: the correction
        // is split between gain and offset in proportion to x̄ and 1, never a wild rotation.
        let x = at / S;
        let y = meter(at) / S;
        let t = (y - x) / (x * x + 1.0);
        assert!((e.gain() - (1.0 + t * x)).abs() < 0.01, "{}", e.gain());
        assert!((e.theta()[1] - t).abs() < 0.01, "{}", e.theta()[1]);
        // Elsewhere the model's own shape, moved about as much as the measured level had to be
        // (at most (x·x_m + 1)/(x² + 1) times as much, 1.15 at full load here), not a line
        // rotated about the one point it knows.
        let correction = meter(at) - at;
        for i in 0..=20 {
            let m = model_curve(f64::from(i) / 20.0);
            let shift = e.calibrate(m) - m;
            let bound = (x * m / S + 1.0) / (x * x + 1.0);
            assert!(
                shift > 0.0 && shift <= correction * bound * 1.001,
                "{i}: {shift}"
            );
            assert!(shift < 1.15 * correction, "{i}: {shift}");
        }
        // With one sample the level (w = 1/300) weighs about 3 times ρ: the fit moves most of the
        // way, not all of it.
        let mut one = fresh();
        one.update(0.4, at, meter(at)).unwrap();
        let moved = (one.calibrate(at) - at) / (meter(at) - at);
        assert!(moved > 0.6 && moved < 0.95, "{moved}");
    }

    /// Problem 2 of the recursive least squares this replaced: a long stretch at one load level
    /// overwrote what the other levels had taught.
    #[test]
    fn holding_one_level_never_erases_the_others() {
        let meter = |m: f64| 60.0 + 0.7 * m + 0.0015 * m * m; // not affine in the model
        let mut e = fresh();
        for u in [0.0, 0.4, 0.8] {
            feed(&mut e, u, DEFAULT_MEMORY_SAMPLES as usize, meter);
        }
        let others = [0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0].map(model_curve);
        let before = others.map(|m| e.calibrate(m));
        let learnt = *e.bins();
        feed(&mut e, 0.4, 100_000, meter);
        for (m, b) in others.iter().zip(before) {
            assert!(relative(e.calibrate(*m), b) <= 1e-9, "{m} W");
        }
        // A new level held as long counts as one more level, not as everything there is.
        feed(&mut e, 0.3, 100_000, meter);
        for k in [0, 8, 16] {
            assert_eq!(e.bins()[k], learnt[k], "bin {k} untouched");
        }
        let mut four = fresh();
        for u in [0.0, 0.4, 0.8, 0.3] {
            feed(&mut four, u, DEFAULT_MEMORY_SAMPLES as usize, meter);
        }
        assert_eq!(e.theta(), four.theta());
        // Noisy measurements at the held level: the other levels' bins stay as they were and the
        // fit stays within the noise of where it was.
        let mut noisy = fresh();
        for u in [0.0, 0.4, 0.8] {
            feed(&mut noisy, u, DEFAULT_MEMORY_SAMPLES as usize, meter);
        }
        let before = noisy;
        let m = model_curve(0.4);
        for i in 0..100_000u64 {
            let noise = ((i * 7919) % 201) as f64 / 100.0 - 1.0; // ±1 W
            noisy.update(0.4, m, meter(m) + noise).unwrap();
        }
        assert_eq!(noisy.bins()[0], before.bins()[0]);
        assert_eq!(noisy.bins()[16], before.bins()[16]);
        for m in others {
            assert!(
                (noisy.calibrate(m) - before.calibrate(m)).abs() < 0.2,
                "{m} W"
            );
        }
    }

    #[test]
    fn a_bin_is_a_mean_until_full_then_an_exponential_average() {
        let mut e = Estimator::new(100.0, 10).unwrap();
        for w in [100.0, 110.0, 120.0, 130.0] {
            e.update(0.5, 100.0, w).unwrap();
        }
        let bin = e.bins()[10];
        assert_eq!(bin.samples, 4);
        assert!((bin.measured - 1.15).abs() < 1e-15 && bin.model == 1.0);
        for _ in 0..6 {
            e.update(0.5, 100.0, 115.0).unwrap();
        }
        assert_eq!(e.bins()[10].samples, 10);
        e.update(0.5, 100.0, 215.0).unwrap();
        let bin = e.bins()[10];
        assert_eq!(bin.samples, 10, "capped at N");
        assert!((bin.measured - 1.25).abs() < 1e-12, "one tenth of the way");
    }

    #[test]
    fn gain_and_offset_stay_within_their_bounds() {
        // A meter reading 11× the model − 0.6·S would need a = 11: a is clamped and b re-solved
        // for it.
        let mut high = fresh();
        for u in [0.0, 0.5, 1.0] {
            feed(&mut high, u, 300, |m| 11.0 * m - 0.6 * S);
        }
        assert_eq!(high.gain(), GAIN_BOUNDS.1);
        let bins = high.bins();
        let (mut sw, mut swx, mut swy) = (0.0, 0.0, 0.0);
        for b in bins.iter().filter(|b| b.samples > 0) {
            sw += 1.0;
            swx += b.model;
            swy += b.measured;
        }
        let resolved = (swy - 10.0 * swx) / (sw + RIDGE);
        assert!(resolved > 0.0 && resolved < OFFSET_BOUNDS.1);
        assert!(
            relative(high.theta()[1], resolved) < 1e-12,
            "b re-solved for a = 10"
        );
        // … and an offset beyond its bound after that is clamped too.
        let mut higher = fresh();
        for u in [0.0, 0.5, 1.0] {
            feed(&mut higher, u, 300, |m| 20.0 * m + 1000.0);
        }
        assert_eq!(higher.theta(), [GAIN_BOUNDS.1, OFFSET_BOUNDS.1]);
        // A meter reading a twentieth of the model.
        let mut low = fresh();
        for u in [0.0, 0.5, 1.0] {
            feed(&mut low, u, 300, |m| 0.05 * m);
        }
        assert_eq!(low.gain(), GAIN_BOUNDS.0);
        assert!(low.theta()[1] < 0.0, "b re-solved: {}", low.theta()[1]);
        // An offset alone out of bounds (a within): b clamped, a kept.
        let mut offset = fresh();
        for u in [0.0, 0.5, 1.0] {
            feed(&mut offset, u, 300, |m| m + 2.0 * S);
        }
        let [a, b] = offset.theta();
        assert!((a - 1.0).abs() < 0.1, "the unclamped solution's gain: {a}");
        assert_eq!(b, OFFSET_BOUNDS.1);
        // The calibrated prediction never goes negative, whatever the offset.
        let mut floor = fresh();
        for u in [0.0, 0.5, 1.0] {
            feed(&mut floor, u, 300, |m| (0.1 * m - 100.0).max(1.0));
        }
        assert_eq!(floor.calibrate(0.0), 0.0);
    }

    #[test]
    fn nan_negative_and_zero_measurements_are_rejected_and_change_nothing() {
        let mut e = fresh();
        e.update(0.5, 200.0, 210.0).unwrap();
        let before = e;
        for (u, model, measured) in [
            (0.5, 200.0, f64::NAN),
            (0.5, 200.0, f64::INFINITY),
            (0.5, 200.0, -5.0),
            (0.5, 200.0, 0.0),
            (0.5, f64::NAN, 200.0),
            (0.5, -1.0, 200.0),
            (f64::NAN, 200.0, 200.0),
        ] {
            assert!(
                e.update(u, model, measured).is_err(),
                "{u} {model} {measured}"
            );
            assert_eq!(e, before);
        }
        assert!(matches!(
            e.update(0.5, 200.0, f64::NAN),
            Err(SampleError::MeasuredNotFinite(w)) if w.is_nan()
        ));
        assert_eq!(
            e.update(0.5, 200.0, -5.0),
            Err(SampleError::MeasuredNotPositive(-5.0))
        );
    }

    /// The vector the accuracy report's Python implementation is checked against (tests/tests/
    /// models.rs runs models/pipeline.py `Calibration` on it and on more): S = 300 W, model
    /// 100 + 200·u W, meter 80 + 150·u + 50·u² W, 60 samples at u = 0, then 0.4, then 0.8, N = 300.
    #[test]
    fn golden_vector_idle_40_80() {
        let model = |u: f64| 100.0 + 200.0 * u;
        let meter = |u: f64| 80.0 + 150.0 * u + 50.0 * u * u;
        let mut e = Estimator::new(model(1.0), DEFAULT_MEMORY_SAMPLES).unwrap();
        for u in [0.0, 0.4, 0.8] {
            for _ in 0..60 {
                e.update(u, model(u), meter(u)).unwrap();
            }
        }
        let [a, b] = e.theta();
        println!("golden θ = [{a:?}, {b:?}], b = {:?} W", e.offset_watts());
        let expected = [0.950_494_079_114_688_5, -0.059_086_858_260_601_15];
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs();
        assert!(
            close(a, expected[0]) && close(b, expected[1]),
            "θ = [{a:?}, {b:?}]"
        );
        // In watts: a = 0.9505, b = −17.73 W (the unregularised least-squares line through the
        // three levels is a = 0.95, b = −17.67 W: ρ barely shows): 77.3 W at idle (meter 80),
        // 267.4 W at full load (meter 280).
        assert!((e.offset_watts() - (-17.726_057_478_180_344)).abs() < 1e-9);
        for k in [0, 8, 16] {
            assert_eq!(e.bins()[k].samples, 60);
        }
    }

    #[test]
    fn restoring_checks_every_part() {
        let mut good = fresh();
        for u in [0.0, 0.5, 1.0] {
            feed(&mut good, u, 40, |m| 0.9 * m + 10.0);
        }
        let back = Estimator::restore(S, 300, *good.bins()).unwrap();
        assert_eq!(back, good, "the fit is recomputed to the bit");
        // A lowered memory clamps the counts (and so reweighs the bins) rather than failing.
        let lowered = Estimator::restore(S, 20, *good.bins()).unwrap();
        assert!(lowered.bins().iter().all(|b| b.samples <= 20));
        assert_eq!(lowered.bins()[10].samples, 20);
        assert_eq!(lowered.bins()[10].measured, good.bins()[10].measured);

        let with = |k: usize, bin: Bin| {
            let mut bins = *good.bins();
            bins[k] = bin;
            bins
        };
        let ok = good.bins()[10];
        let cases = [
            Estimator::restore(0.0, 300, *good.bins()),
            Estimator::restore(f64::NAN, 300, *good.bins()),
            Estimator::restore(S, 5, *good.bins()),
            Estimator::restore(S, 1_000_000, *good.bins()),
            Estimator::restore(
                S,
                300,
                with(
                    10,
                    Bin {
                        measured: f64::NAN,
                        ..ok
                    },
                ),
            ),
            Estimator::restore(
                S,
                300,
                with(
                    10,
                    Bin {
                        measured: 0.0,
                        ..ok
                    },
                ),
            ),
            Estimator::restore(S, 300, with(10, Bin { model: -0.1, ..ok })),
            Estimator::restore(
                S,
                300,
                with(
                    10,
                    Bin {
                        model: f64::INFINITY,
                        ..ok
                    },
                ),
            ),
            Estimator::restore(
                S,
                300,
                with(
                    3,
                    Bin {
                        samples: 0,
                        model: 0.5,
                        measured: 0.0,
                    },
                ),
            ),
        ];
        for (i, case) in cases.into_iter().enumerate() {
            assert!(case.is_err(), "case {i}: {case:?}");
        }
        assert_eq!(
            Estimator::restore(
                S,
                300,
                with(
                    10,
                    Bin {
                        measured: -1.0,
                        ..ok
                    }
                )
            )
            .unwrap_err()
            .to_string(),
            "load level 50 %: mean measurement -1 is not finite and positive"
        );
    }
}
