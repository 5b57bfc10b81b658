//! Power curves and marginal watts: the one pricing rule shared by agent and scheduler.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// Highest node power we accept as physical: a dense 8-socket server with accelerators draws a few
/// kW; 100 kW catches unit mistakes (mW sent as W) without rejecting real hardware.
pub const MAX_NODE_WATTS: f64 = 100_000.0;

/// Fewest and most points a curve may carry (2 = idle and peak only; 1001 = 0.1 % steps).
pub const MIN_CURVE_POINTS: usize = 2;
pub const MAX_CURVE_POINTS: usize = 1001;

/// Points agents send: 0 %, 1 %, …, 100 %.
pub const DEFAULT_CURVE_POINTS: usize = 101;

/// How far a curve may fall with load before it is rejected: measured and fitted curves wobble by
/// a watt or so (fan steps, rounding), but a real server never draws clearly less when busier.
pub fn fall_tolerance_watts(peak_watts: f64) -> f64 {
    (0.01 * peak_watts).max(1.0)
}

/// Why a curve is not a usable power curve.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CurveError {
    #[error("has {points} points; a curve needs {MIN_CURVE_POINTS}..={MAX_CURVE_POINTS}")]
    PointCount { points: usize },
    #[error("point {index} is {watts}, not a finite number of watts")]
    NotFinite { index: usize, watts: f64 },
    #[error("point {index} is {watts} W, outside 0..={MAX_NODE_WATTS} W")]
    OutOfRange { index: usize, watts: f64 },
    #[error("falls with load: point {index} is {watts} W after {previous_max} W (tolerance {tolerance} W)")]
    FallsWithLoad {
        index: usize,
        watts: f64,
        previous_max: f64,
        tolerance: f64,
    },
}

/// Node watts over evenly spaced utilisations from 0 to 1 inclusive (point i is at i / (n - 1)).
///
/// Construction validates, so every `PowerCurve` is finite, non-negative, bounded and does not
/// fall with load beyond [`fall_tolerance_watts`]. The points are shared: cloning is a reference
/// count, and a clone reads its points with one pointer hop.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerCurve {
    watts: Arc<[f64]>,
}

impl PowerCurve {
    pub fn new(watts: Vec<f64>) -> Result<Self, CurveError> {
        if !(MIN_CURVE_POINTS..=MAX_CURVE_POINTS).contains(&watts.len()) {
            return Err(CurveError::PointCount {
                points: watts.len(),
            });
        }
        for (index, &w) in watts.iter().enumerate() {
            if !w.is_finite() {
                return Err(CurveError::NotFinite { index, watts: w });
            }
            if !(0.0..=MAX_NODE_WATTS).contains(&w) {
                return Err(CurveError::OutOfRange { index, watts: w });
            }
        }
        let tolerance = fall_tolerance_watts(watts.iter().cloned().fold(0.0, f64::max));
        let mut previous_max = watts[0];
        for (index, &w) in watts.iter().enumerate().skip(1) {
            if w < previous_max - tolerance {
                return Err(CurveError::FallsWithLoad {
                    index,
                    watts: w,
                    previous_max,
                    tolerance,
                });
            }
            previous_max = previous_max.max(w);
        }
        Ok(Self {
            watts: watts.into(),
        })
    }

    /// Samples `watts_at(utilisation)` at `points` evenly spaced utilisations.
    pub fn sample(points: usize, watts_at: impl Fn(f64) -> f64) -> Result<Self, CurveError> {
        let last = points.saturating_sub(1).max(1) as f64;
        Self::new((0..points).map(|i| watts_at(i as f64 / last)).collect())
    }

    /// A straight line from idle to peak: the price of a node nobody has measured.
    pub fn linear(idle_watts: f64, peak_watts: f64) -> Result<Self, CurveError> {
        Self::sample(DEFAULT_CURVE_POINTS, |u| {
            idle_watts + (peak_watts - idle_watts) * u
        })
    }

    pub fn points(&self) -> &[f64] {
        &self.watts
    }

    pub fn into_points(self) -> Vec<f64> {
        self.watts.to_vec()
    }

    pub fn idle_watts(&self) -> f64 {
        self.watts[0]
    }

    pub fn peak_watts(&self) -> f64 {
        self.watts[self.watts.len() - 1]
    }

    /// Watts at `utilisation`, linearly interpolated; utilisation is clamped to [0, 1] (NaN → 0).
    pub fn watts_at(&self, utilisation: f64) -> f64 {
        let u = if utilisation.is_nan() {
            0.0
        } else {
            utilisation.clamp(0.0, 1.0)
        };
        self.interpolate(u)
    }

    /// [`PowerCurve::watts_at`] for a `u` already in [0, 1].
    #[inline]
    fn interpolate(&self, u: f64) -> f64 {
        let steps = (self.watts.len() - 1) as f64;
        let x = u * steps;
        // x is in 0..=steps, so truncating is flooring (without the libm call).
        let i = (x as usize).min(self.watts.len() - 2);
        let frac = x - i as f64;
        self.watts[i] + (self.watts[i + 1] - self.watts[i]) * frac
    }

    /// What a pod of `pod_millicores` adds on a node of `capacity_millicores` already at
    /// `base_utilisation`.
    ///
    /// The base is not clamped to full load: measured load plus pods bound since may exceed it
    /// (NaN and negative bases count as 0). The part of `[base, base + pod / capacity]` within
    /// `[0, 1]` costs the curve difference over it; the part beyond full load costs the curve's
    /// peak watts per unit of utilisation (`overflow × curve(1)`): a saturated node cannot run
    /// the extra work faster, it runs at full power for longer, so that work costs the energy of
    /// full-load operation. A node thus never gets cheaper by being fuller than it can be; on a
    /// node with no CPU capacity a pod is all overflow and costs +∞.
    #[inline]
    pub fn marginal(
        &self,
        base_utilisation: f64,
        capacity_millicores: u64,
        pod_millicores: u64,
    ) -> Marginal {
        let base = base_utilisation_of(base_utilisation);
        let after = utilisation_after(base, capacity_millicores, pod_millicores);
        // Both in [0, 1]: base is ≥ 0 and not NaN, and after ≥ base.
        let within = self.interpolate(after.min(1.0)) - self.interpolate(base.min(1.0));
        let overflow = after - base.max(1.0);
        // The peak is read only for overflow (it is another cache line of the curve);
        // `peak > 0` keeps an unbounded overflow on a curve of zero watts from making NaN.
        let beyond = if overflow > 0.0 && self.peak_watts() > 0.0 {
            overflow * self.peak_watts()
        } else {
            0.0
        };
        Marginal {
            watts: MarginalWatts(within + beyond),
            utilisation_after: after,
            exceeds_capacity: after > 1.0,
        }
    }
}

/// The base a pod is priced from: NaN and negative count as idle; above 1 stays as it is.
fn base_utilisation_of(utilisation: f64) -> f64 {
    if utilisation > 0.0 {
        utilisation
    } else {
        0.0
    }
}

/// `base + pod / capacity`; a pod of nothing adds nothing, anything else on no capacity is +∞.
fn utilisation_after(base: f64, capacity_millicores: u64, pod_millicores: u64) -> f64 {
    if pod_millicores == 0 {
        base
    } else if capacity_millicores == 0 {
        f64::INFINITY
    } else {
        base + pod_millicores as f64 / capacity_millicores as f64
    }
}

/// Watts a node would add if a pod landed there.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct MarginalWatts(pub f64);

impl fmt::Display for MarginalWatts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:+.1} W", self.0)
    }
}

/// A priced pod: its marginal watts and where it leaves the node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Marginal {
    pub watts: MarginalWatts,
    /// Utilisation after the pod, not clamped: above 1 the node is past full load.
    pub utilisation_after: f64,
    /// The pod takes the node past full load (`utilisation_after > 1`); `watts` prices the
    /// part beyond it at the curve's peak watts.
    pub exceeds_capacity: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specpower_like() -> PowerCurve {
        // Idle 60 W, peak 250 W, concave like most SPECpower results.
        PowerCurve::sample(DEFAULT_CURVE_POINTS, |u| 60.0 + 190.0 * u.powf(0.8)).unwrap()
    }

    #[test]
    fn interpolates_between_points_and_hits_the_ends() {
        let c = PowerCurve::new(vec![100.0, 200.0, 400.0]).unwrap();
        assert_eq!(c.watts_at(0.0), 100.0);
        assert_eq!(c.watts_at(0.25), 150.0);
        assert_eq!(c.watts_at(0.75), 300.0);
        assert_eq!(c.watts_at(1.0), 400.0);
        assert_eq!(c.watts_at(1.7), 400.0, "clamped above full load");
        assert_eq!(c.watts_at(-0.3), 100.0, "clamped below idle");
        assert_eq!(c.watts_at(f64::NAN), 100.0);
    }

    #[test]
    fn marginal_is_the_curve_difference_over_the_pod_share() {
        let c = PowerCurve::linear(100.0, 300.0).unwrap();
        // 1 CPU of 8 from 50 %: +12.5 % of the 200 W span.
        let m = c.marginal(0.5, 8000, 1000);
        assert!((m.watts.0 - 25.0).abs() < 1e-9, "{:?}", m);
        assert!((m.utilisation_after - 0.625).abs() < 1e-12);
        assert!(!m.exceeds_capacity);
    }

    #[test]
    fn marginal_on_a_concave_curve_is_cheaper_on_a_busier_node() {
        let c = specpower_like();
        let idle_node = c.marginal(0.05, 16000, 2000).watts;
        let busy_node = c.marginal(0.70, 16000, 2000).watts;
        assert!(busy_node < idle_node, "{busy_node} vs {idle_node}");
    }

    #[test]
    fn work_beyond_full_load_costs_peak_watts_per_unit() {
        let c = PowerCurve::linear(100.0, 300.0).unwrap();
        // From 90 % of 4 CPUs, 1 CPU: 10 points on the curve (+20 W), 15 past it at 300 W.
        let m = c.marginal(0.9, 4000, 1000);
        assert!(m.exceeds_capacity);
        assert!((m.utilisation_after - 1.15).abs() < 1e-12);
        assert!((m.watts.0 - (20.0 + 45.0)).abs() < 1e-9, "{m:?}");
        // Already at or past full load (measured plus bound since): all of it at peak watts.
        for base in [1.0, 1.25] {
            let m = c.marginal(base, 4000, 1000);
            assert!(m.exceeds_capacity);
            assert!((m.utilisation_after - (base + 0.25)).abs() < 1e-12);
            assert!((m.watts.0 - 75.0).abs() < 1e-9, "{base}: {m:?}");
        }
        // Exactly filling the node stays within the curve.
        let full = c.marginal(0.75, 4000, 1000);
        assert!(!full.exceeds_capacity);
        assert!((full.watts.0 - 50.0).abs() < 1e-9);
    }

    #[test]
    fn a_fuller_node_never_gets_cheaper_once_the_pod_crosses_full_load() {
        let c = specpower_like();
        let price = |base: f64| c.marginal(base, 16000, 2000).watts.0;
        // The pod is 12.5 %: from 87.5 % on it crosses full load.
        let mut previous = price(0.875);
        for step in 1..=100 {
            let base = 0.875 + step as f64 * 0.005;
            let now = price(base);
            assert!(now >= previous - 1e-9, "{base}: {now} after {previous}");
            previous = now;
        }
        // More than the same pod where it still fits near the top of the curve …
        assert!(
            price(1.0) > price(0.85),
            "{} vs {}",
            price(1.0),
            price(0.85)
        );
        // … but not more than on an idle node, where a concave curve is steepest: price alone
        // cannot put saturated nodes last, so the scheduler ranks them last by class.
        assert!(price(1.0) < price(0.0), "{} vs {}", price(1.0), price(0.0));
    }

    #[test]
    fn odd_bases_and_capacities() {
        let c = PowerCurve::linear(100.0, 300.0).unwrap();
        for base in [f64::NAN, -0.5, f64::NEG_INFINITY] {
            assert_eq!(c.marginal(base, 8000, 1000), c.marginal(0.0, 8000, 1000));
        }
        let none = c.marginal(0.0, 0, 1);
        assert!(none.exceeds_capacity, "zero capacity never fits");
        assert_eq!(none.watts.0, f64::INFINITY);
        let nothing = c.marginal(0.5, 0, 0);
        assert!(!nothing.exceeds_capacity, "a pod of nothing adds nothing");
        assert_eq!(nothing.watts.0, 0.0);
        let zero_watts = PowerCurve::new(vec![0.0, 0.0]).unwrap();
        assert_eq!(zero_watts.marginal(0.5, 0, 1).watts.0, 0.0, "not NaN");
    }

    #[test]
    fn rejects_non_finite_negative_absurd_and_falling_curves() {
        assert_eq!(
            PowerCurve::new(vec![1.0]),
            Err(CurveError::PointCount { points: 1 })
        );
        assert!(matches!(
            PowerCurve::new(vec![1.0, f64::NAN]),
            Err(CurveError::NotFinite { index: 1, .. })
        ));
        assert!(matches!(
            PowerCurve::new(vec![-1.0, 5.0]),
            Err(CurveError::OutOfRange { index: 0, .. })
        ));
        assert!(matches!(
            PowerCurve::new(vec![1.0, 1e9]),
            Err(CurveError::OutOfRange { index: 1, .. })
        ));
        assert!(matches!(
            PowerCurve::new(vec![100.0, 200.0, 150.0]),
            Err(CurveError::FallsWithLoad { index: 2, .. })
        ));
        // A one-watt wobble on a 200 W curve is within tolerance.
        assert!(PowerCurve::new(vec![100.0, 200.0, 199.0, 201.0]).is_ok());
    }

    #[test]
    fn display_is_signed_watts() {
        assert_eq!(MarginalWatts(12.44).to_string(), "+12.4 W");
    }
}
