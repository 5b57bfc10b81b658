//! The lower convex envelope of a power curve, the only shape the bounds price.

use wattwise_core::PowerCurve;

/// A stretch of a convex envelope: `length` millicores at `slope` watts per millicore.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub length: f64,
    pub slope: f64,
}

/// The greatest convex, non-decreasing function below a curve, scaled to a server's capacity:
/// `idle` watts at no load, then `segments` in order of increasing slope.
///
/// Why this shape bounds the truth: the curve's running minimum from the right,
/// `m(u) = min over v ≥ u of curve(v)`, is ≤ the curve and non-decreasing (a curve may dip by its
/// fall tolerance); its lower convex hull is ≤ `m`. So every placement's watts are ≥ the
/// envelope's at the same utilisation, and priced on the envelope more work never costs less.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub idle: f64,
    pub segments: Vec<Segment>,
}

impl Envelope {
    pub fn of(curve: &PowerCurve, capacity_millicores: f64) -> Self {
        let points = curve.points();
        let last = (points.len() - 1) as f64;
        let mut running_min = points.to_vec();
        for i in (0..running_min.len() - 1).rev() {
            running_min[i] = running_min[i].min(running_min[i + 1]);
        }
        // Andrew's monotone chain, lower hull only; x = utilisation.
        let mut hull: Vec<(f64, f64)> = Vec::with_capacity(points.len());
        for (i, &w) in running_min.iter().enumerate() {
            let p = (i as f64 / last, w);
            while hull.len() >= 2 {
                let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                // Drop b when it is on or above the chord a → p.
                if (b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0) <= 0.0 {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(p);
        }
        let segments = hull
            .windows(2)
            .map(|w| {
                let length = (w[1].0 - w[0].0) * capacity_millicores;
                Segment {
                    length,
                    slope: (w[1].1 - w[0].1) / length,
                }
            })
            .collect();
        Self {
            idle: hull[0].1,
            segments,
        }
    }

    /// Watts at `millicores` of load (0 ≤ millicores ≤ capacity): for tests and callers that
    /// price one server.
    pub fn watts_at(&self, millicores: f64) -> f64 {
        let mut left = millicores;
        let mut watts = self.idle;
        for s in &self.segments {
            let take = left.min(s.length);
            if take <= 0.0 {
                break;
            }
            watts += take * s.slope;
            left -= take;
        }
        watts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(points: &[f64]) -> PowerCurve {
        PowerCurve::new(points.to_vec()).unwrap()
    }

    #[test]
    fn a_convex_curve_is_its_own_envelope() {
        let c = curve(&[100.0, 110.0, 130.0, 160.0, 200.0]);
        let e = Envelope::of(&c, 1000.0);
        assert_eq!(e.idle, 100.0);
        assert_eq!(e.segments.len(), 4);
        for i in 0..=40 {
            let u = i as f64 / 40.0;
            assert!(
                (e.watts_at(u * 1000.0) - c.watts_at(u)).abs() < 1e-9,
                "u={u}"
            );
        }
    }

    #[test]
    fn a_concave_curve_becomes_its_chord_and_stays_below() {
        let c = curve(&[100.0, 150.0, 180.0, 195.0, 200.0]);
        let e = Envelope::of(&c, 400.0);
        assert_eq!(e.segments.len(), 1, "{e:?}");
        assert!((e.segments[0].slope - 100.0 / 400.0).abs() < 1e-12);
        for i in 0..=40 {
            let u = i as f64 / 40.0;
            assert!(e.watts_at(u * 400.0) <= c.watts_at(u) + 1e-9, "u={u}");
        }
    }

    #[test]
    fn a_dip_within_tolerance_leaves_the_envelope_non_decreasing() {
        // Falls by 1 W (the curve's tolerance) after idle.
        let c = curve(&[100.0, 99.0, 120.0, 150.0]);
        let e = Envelope::of(&c, 300.0);
        assert_eq!(e.idle, 99.0);
        assert!(e.segments.iter().all(|s| s.slope >= 0.0), "{e:?}");
        let slopes: Vec<f64> = e.segments.iter().map(|s| s.slope).collect();
        assert!(slopes.windows(2).all(|w| w[0] <= w[1]), "{slopes:?}");
        assert!((e.watts_at(300.0) - 150.0).abs() < 1e-9);
    }
}
