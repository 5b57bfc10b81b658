//! Online calibration of the power model against measured watts: a bounded affine correction
//! `P ≈ a·P_model + b`, fitted by recursive least squares with exponential forgetting.
//!
//! The algorithm is shared with the model accuracy report (Python), which must reproduce it
//! exactly:
//!
//! - S ([`Estimator::scale_watts`]) is the model's uncalibrated prediction at full load and its
//!   input defaults, fixed at load; the fit runs in units of S so its bounds and initial
//!   uncertainty mean the same on a 60 W edge box and a 1 kW server.
//! - Regressor φ = [P_model/S, 1], target y = P_measured/S, θ = [a, b/S].
//! - θ₀ = [1, 0] (the model as is), P₀ = diag(0.5², 0.3²).
//! - Per sample: k = Pφ / (λ + φᵀPφ); θ ← θ + k(y − φᵀθ); P ← (P − kφᵀP) / λ.
//! - Anti-windup: if trace(P) > trace(P₀), P is scaled by trace(P₀)/trace(P), so a long stretch of
//!   constant load cannot inflate the gain in the unexcited direction.
//! - Bounds: a ∈ [0.25, 4], b/S ∈ [−0.5, 0.5]: a meter gone wrong can skew the curve, not
//!   invert it or move it by more than half the model's peak.
//! - The calibrated prediction is max(0, a·P_model + b) (still non-decreasing in load, as a > 0).
//!
//! This module is plain arithmetic: which samples are fed, when the fit counts as calibrated and
//! how it is kept across restarts is [`crate::calibrator`]'s business.

use thiserror::Error;

/// λ when the configuration does not say otherwise: one sample per reading interval (1 s by
/// default) gives the newest ~500 samples (8 minutes) most of the weight.
pub const DEFAULT_FORGETTING: f64 = 0.998;
/// Forgetting factors the configuration may choose from.
pub const FORGETTING_RANGE: std::ops::RangeInclusive<f64> = 0.9..=1.0;
/// θ₀: gain 1, offset 0.
pub const INITIAL_THETA: [f64; 2] = [1.0, 0.0];
/// P₀ = diag(0.5², 0.3²).
pub const INITIAL_COVARIANCE: [[f64; 2]; 2] = [[0.25, 0.0], [0.0, 0.09]];
/// Bounds of the gain a.
pub const GAIN_BOUNDS: (f64, f64) = (0.25, 4.0);
/// Bounds of the offset in units of S (b/S).
pub const OFFSET_BOUNDS: (f64, f64) = (-0.5, 0.5);

/// trace(P₀), the anti-windup ceiling.
pub fn initial_trace() -> f64 {
    INITIAL_COVARIANCE[0][0] + INITIAL_COVARIANCE[1][1]
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
}

/// Why a stored estimator state cannot be restored.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StateError {
    #[error("scale {0} W is not a positive, finite wattage")]
    Scale(f64),
    #[error("gain {0} is outside {lo}..={hi}", lo = GAIN_BOUNDS.0, hi = GAIN_BOUNDS.1)]
    Gain(f64),
    #[error("offset {0} (in units of the scale) is outside {lo}..={hi}", lo = OFFSET_BOUNDS.0, hi = OFFSET_BOUNDS.1)]
    Offset(f64),
    #[error("covariance {0:?} is not a symmetric positive-definite matrix with trace <= {max}", max = initial_trace())]
    Covariance([[f64; 2]; 2]),
    #[error("forgetting factor {0} is outside {lo}..={hi}", lo = FORGETTING_RANGE.start(), hi = FORGETTING_RANGE.end())]
    Forgetting(f64),
}

/// The recursive least-squares state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimator {
    scale_watts: f64,
    forgetting: f64,
    theta: [f64; 2],
    covariance: [[f64; 2]; 2],
}

impl Estimator {
    /// A fresh estimator (θ₀, P₀) for a model whose full-load prediction is `scale_watts`.
    pub fn new(scale_watts: f64, forgetting: f64) -> Result<Self, StateError> {
        Self::restore(scale_watts, forgetting, INITIAL_THETA, INITIAL_COVARIANCE)
    }

    /// An estimator from stored parts, each checked: a state file is input like any other.
    pub fn restore(
        scale_watts: f64,
        forgetting: f64,
        theta: [f64; 2],
        covariance: [[f64; 2]; 2],
    ) -> Result<Self, StateError> {
        if !(scale_watts.is_finite() && scale_watts > 0.0) {
            return Err(StateError::Scale(scale_watts));
        }
        if !FORGETTING_RANGE.contains(&forgetting) {
            return Err(StateError::Forgetting(forgetting));
        }
        if !(GAIN_BOUNDS.0..=GAIN_BOUNDS.1).contains(&theta[0]) {
            return Err(StateError::Gain(theta[0]));
        }
        if !(OFFSET_BOUNDS.0..=OFFSET_BOUNDS.1).contains(&theta[1]) {
            return Err(StateError::Offset(theta[1]));
        }
        let [[p00, p01], [p10, p11]] = covariance;
        let finite = covariance.iter().flatten().all(|v| v.is_finite());
        // Scaling (not the arithmetic) may leave a trace a rounding error above the ceiling.
        let positive_definite = p00 > 0.0 && p11 > 0.0 && p00 * p11 - p01 * p10 > 0.0;
        let symmetric = (p01 - p10).abs() <= 1e-12 * (p00 + p11);
        if !(finite
            && positive_definite
            && symmetric
            && p00 + p11 <= initial_trace() * (1.0 + 1e-9))
        {
            return Err(StateError::Covariance(covariance));
        }
        Ok(Self {
            scale_watts,
            forgetting,
            theta,
            covariance,
        })
    }

    /// Feeds one sample: the model's uncalibrated prediction and the measured watts at the same
    /// utilisation and temperatures. A rejected sample changes nothing.
    pub fn update(&mut self, model_watts: f64, measured_watts: f64) -> Result<(), SampleError> {
        check_sample(model_watts, measured_watts)?;
        let phi = [model_watts / self.scale_watts, 1.0];
        let y = measured_watts / self.scale_watts;
        let p = self.covariance;
        let lambda = self.forgetting;
        let p_phi = [
            p[0][0] * phi[0] + p[0][1] * phi[1],
            p[1][0] * phi[0] + p[1][1] * phi[1],
        ];
        let denominator = lambda + phi[0] * p_phi[0] + phi[1] * p_phi[1];
        let k = [p_phi[0] / denominator, p_phi[1] / denominator];
        let error = y - (phi[0] * self.theta[0] + phi[1] * self.theta[1]);
        self.theta[0] += k[0] * error;
        self.theta[1] += k[1] * error;
        // φᵀP (a row vector).
        let phi_p = [
            phi[0] * p[0][0] + phi[1] * p[1][0],
            phi[0] * p[0][1] + phi[1] * p[1][1],
        ];
        let mut next = [[0.0; 2]; 2];
        for (i, row) in next.iter_mut().enumerate() {
            for (j, cell) in row.iter_mut().enumerate() {
                *cell = (p[i][j] - k[i] * phi_p[j]) / lambda;
            }
        }
        let trace = next[0][0] + next[1][1];
        if trace > initial_trace() {
            let shrink = initial_trace() / trace;
            next.iter_mut().flatten().for_each(|v| *v *= shrink);
        }
        self.covariance = next;
        self.theta[0] = self.theta[0].clamp(GAIN_BOUNDS.0, GAIN_BOUNDS.1);
        self.theta[1] = self.theta[1].clamp(OFFSET_BOUNDS.0, OFFSET_BOUNDS.1);
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

    pub fn covariance(&self) -> [[f64; 2]; 2] {
        self.covariance
    }

    /// trace(P): how uncertain the fit still is (trace(P₀) when nothing was learnt).
    pub fn uncertainty(&self) -> f64 {
        self.covariance[0][0] + self.covariance[1][1]
    }

    pub fn scale_watts(&self) -> f64 {
        self.scale_watts
    }
}

/// Whether a (model, measured) pair may enter the estimator.
fn check_sample(model_watts: f64, measured_watts: f64) -> Result<(), SampleError> {
    if !measured_watts.is_finite() {
        return Err(SampleError::MeasuredNotFinite(measured_watts));
    }
    if measured_watts <= 0.0 {
        return Err(SampleError::MeasuredNotPositive(measured_watts));
    }
    if !(model_watts.is_finite() && model_watts >= 0.0) {
        return Err(SampleError::Model(model_watts));
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
        Estimator::new(S, DEFAULT_FORGETTING).unwrap()
    }

    #[test]
    fn converges_to_a_known_gain_and_offset_from_two_levels() {
        // The meter reads 0.8 × model + 45 W.
        let (a, b) = (0.8, 45.0);
        let mut e = fresh();
        for _ in 0..150 {
            for u in [0.1, 0.9] {
                for _ in 0..10 {
                    let m = model_curve(u);
                    e.update(m, a * m + b).unwrap();
                }
            }
        }
        assert!((e.gain() - a).abs() < 1e-3, "gain {}", e.gain());
        assert!(
            (e.offset_watts() - b).abs() < 0.1,
            "offset {}",
            e.offset_watts()
        );
        // Levels never fed are predicted by the same line.
        for u in [0.0, 0.5, 1.0] {
            let m = model_curve(u);
            assert!((e.calibrate(m) - (a * m + b)).abs() < 0.2, "u={u}");
        }
        assert!(
            e.uncertainty() < 0.25 * initial_trace(),
            "{}",
            e.uncertainty()
        );
    }

    /// Feeds `meter(model)` over the 11 SPECpower levels in turn and returns the fit, checking
    /// the bounds after every sample and counting the samples that ended exactly on each bound
    /// (only a clamp puts them there).
    fn feed_to_bounds(meter: impl Fn(f64) -> f64) -> (Estimator, [usize; 4]) {
        let mut e = fresh();
        let mut on_bound = [0; 4];
        for i in 0..2000 {
            let m = model_curve(f64::from(i % 11) / 10.0);
            e.update(m, meter(m)).unwrap();
            let [a, b] = e.theta();
            assert!((GAIN_BOUNDS.0..=GAIN_BOUNDS.1).contains(&a), "gain {a}");
            assert!(
                (OFFSET_BOUNDS.0..=OFFSET_BOUNDS.1).contains(&b),
                "offset {b}"
            );
            for (n, hit) in on_bound.iter_mut().zip([
                a == GAIN_BOUNDS.0,
                a == GAIN_BOUNDS.1,
                b == OFFSET_BOUNDS.0,
                b == OFFSET_BOUNDS.1,
            ]) {
                *n += usize::from(hit);
            }
        }
        (e, on_bound)
    }

    #[test]
    fn gain_and_offset_stay_within_their_bounds() {
        // A meter reading 10× the model + 500 W would need a = 10, b = 500 W.
        let (high, hits) = feed_to_bounds(|m| 10.0 * m + 500.0);
        assert!(hits[1] > 0 && hits[3] > 0, "upper clamps engaged: {hits:?}");
        assert!(high.gain() > 3.5, "{}", high.gain());
        // A meter reading a fifth of the model would need a = 0.2.
        let (low, hits) = feed_to_bounds(|m| 0.2 * m);
        assert!(hits[0] > 0, "lower gain clamp engaged: {hits:?}");
        assert!(low.gain() < 0.26, "{}", low.gain());
        // The calibrated prediction never goes negative, whatever the offset.
        let floor =
            Estimator::restore(S, DEFAULT_FORGETTING, [0.25, -0.5], INITIAL_COVARIANCE).unwrap();
        assert_eq!(floor.calibrate(100.0), 0.0, "0.25·100 − 150 clamps to 0");
        assert_eq!(floor.calibrate(800.0), 50.0);
    }

    #[test]
    fn covariance_stays_bounded_under_constant_input() {
        let mut e = fresh();
        let meter = |u: f64| 0.9 * model_curve(u) + 20.0;
        // Excite first, then hold one level for a long time (a node stuck at one load).
        for u in [0.0, 0.5, 1.0] {
            for _ in 0..50 {
                e.update(model_curve(u), meter(u)).unwrap();
            }
        }
        let excited = e.uncertainty();
        let gain = e.gain();
        for _ in 0..100_000 {
            e.update(model_curve(0.3), meter(0.3)).unwrap();
            assert!(e.uncertainty() <= initial_trace() * (1.0 + 1e-12));
        }
        // Without the ceiling P would have grown by 0.998^-100000 (overflowing to infinity).
        assert!(e.uncertainty() > excited, "forgetting re-opens P");
        assert!(
            (e.uncertainty() - initial_trace()).abs() < 1e-9,
            "and the ceiling holds it at trace(P₀): {}",
            e.uncertainty()
        );
        assert!(e.covariance().iter().flatten().all(|v| v.is_finite()));
        // The held level is matched; the line turned only a little around it.
        assert!((e.calibrate(model_curve(0.3)) - meter(0.3)).abs() < 0.01);
        assert!((e.gain() - gain).abs() < 0.01, "{gain} → {}", e.gain());
    }

    #[test]
    fn nan_negative_and_zero_measurements_are_rejected_and_change_nothing() {
        let mut e = fresh();
        e.update(200.0, 210.0).unwrap();
        let before = e;
        for (model, measured) in [
            (200.0, f64::NAN),
            (200.0, f64::INFINITY),
            (200.0, -5.0),
            (200.0, 0.0),
            (f64::NAN, 200.0),
            (-1.0, 200.0),
        ] {
            assert!(e.update(model, measured).is_err(), "{model} {measured}");
            assert_eq!(e, before);
        }
        assert!(matches!(
            e.update(200.0, f64::NAN),
            Err(SampleError::MeasuredNotFinite(w)) if w.is_nan()
        ));
        assert_eq!(
            e.update(200.0, -5.0),
            Err(SampleError::MeasuredNotPositive(-5.0))
        );
    }

    /// The vector the accuracy report's Python implementation checks itself against: S = 300 W,
    /// model 100 + 200·u W, meter 80 + 150·u + 50·u² W, 60 samples at u = 0, then 0.4, then 0.8,
    /// λ = 0.998.
    #[test]
    fn golden_vector_idle_40_80() {
        let model = |u: f64| 100.0 + 200.0 * u;
        let meter = |u: f64| 80.0 + 150.0 * u + 50.0 * u * u;
        let mut e = Estimator::new(model(1.0), DEFAULT_FORGETTING).unwrap();
        for u in [0.0, 0.4, 0.8] {
            for _ in 0..60 {
                e.update(model(u), meter(u)).unwrap();
            }
        }
        // Pinned; the accuracy report's implementation (models/pipeline.py `Calibration`, NumPy)
        // gives the same values to the last digit.
        let expected_theta = [0.942_041_413_884_964_4, -0.051_275_203_786_980_74];
        let expected_p = [
            [0.078_394_850_830_598_58, -0.046_333_716_133_368_76],
            [-0.046_333_716_133_368_76, 0.033_672_476_329_713_62],
        ];
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs();
        let [a, b] = e.theta();
        assert!(
            close(a, expected_theta[0]) && close(b, expected_theta[1]),
            "θ = [{a:e}, {b:e}]"
        );
        let p = e.covariance();
        for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            assert!(close(p[i][j], expected_p[i][j]), "P = {p:?}");
        }
        // In watts: a = 0.942, b = −15.38 W; at full load 267.2 W against the meter's 280 W.
        assert!((e.offset_watts() - (-15.382_561_136_094_22)).abs() < 1e-9);
    }

    #[test]
    fn restoring_checks_every_part() {
        let good = fresh();
        let back = Estimator::restore(S, 0.998, good.theta(), good.covariance()).unwrap();
        assert_eq!(back, good);
        let p0 = INITIAL_COVARIANCE;
        let cases = [
            Estimator::restore(0.0, 0.998, INITIAL_THETA, p0),
            Estimator::restore(f64::NAN, 0.998, INITIAL_THETA, p0),
            Estimator::restore(S, 1.5, INITIAL_THETA, p0),
            Estimator::restore(S, 0.998, [5.0, 0.0], p0),
            Estimator::restore(S, 0.998, [1.0, -0.7], p0),
            Estimator::restore(S, 0.998, INITIAL_THETA, [[1.0, 0.0], [0.0, 1.0]]),
            Estimator::restore(S, 0.998, INITIAL_THETA, [[0.1, 0.2], [0.2, 0.1]]),
            Estimator::restore(S, 0.998, INITIAL_THETA, [[0.1, 0.01], [0.0, 0.1]]),
            Estimator::restore(S, 0.998, INITIAL_THETA, [[f64::NAN, 0.0], [0.0, 0.1]]),
        ];
        for (i, case) in cases.into_iter().enumerate() {
            assert!(case.is_err(), "case {i}: {case:?}");
        }
    }
}
