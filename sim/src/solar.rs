//! Solar panels and batteries of edge nodes: a panel's output follows a site's hourly irradiance
//! (`data/solar/`, a typical meteorological year), a battery integrates the panel's output minus
//! the node's true watts. Pure: the engine decides when to step them and what an empty battery
//! does to the node.

use std::path::Path;
use std::sync::Arc;

use crate::workload::{read_column, TraceError};

/// Irradiance at which a panel gives its rated (peak) watts: the standard test condition.
const STANDARD_IRRADIANCE_W_M2: f64 = 1000.0;

/// A panel's output over the simulated time: hourly, constant within each hour.
#[derive(Debug, Clone, PartialEq)]
pub struct Sun {
    /// Panel watts for each hour of the site's year.
    hourly_watts: Vec<f64>,
    /// The site's hour of year at simulated time 0.
    shift_hours: f64,
}

impl Sun {
    /// A panel of `panel_watts_peak` at the site whose hourly irradiance is `ghi_w_m2`.
    pub fn new(ghi_w_m2: &[f64], panel_watts_peak: f64, shift_hours: f64) -> Self {
        Self {
            hourly_watts: ghi_w_m2
                .iter()
                .map(|g| g.max(0.0) / STANDARD_IRRADIANCE_W_M2 * panel_watts_peak)
                .collect(),
            shift_hours,
        }
    }

    /// The site file's `ghi_w_m2` column (see data/README.md).
    pub fn load(path: &Path, panel_watts_peak: f64, shift_hours: f64) -> Result<Self, TraceError> {
        let ghi = read_column(path, "ghi_w_m2")?;
        Ok(Self::new(&ghi, panel_watts_peak, shift_hours))
    }

    /// The hour of the site's year at simulated second `t` (wrapping around the year).
    fn hour(&self, t: f64) -> f64 {
        t / 3600.0 + self.shift_hours
    }

    fn at_hour(&self, hour: f64) -> f64 {
        let n = self.hourly_watts.len();
        if n == 0 {
            return 0.0;
        }
        self.hourly_watts[(hour as i64).rem_euclid(n as i64) as usize]
    }

    /// Energy the panel gives from `t0` to `t1`, joules (exact: hour by hour).
    pub fn joules(&self, t0: f64, t1: f64) -> f64 {
        let mut total = 0.0;
        let mut t = t0;
        while t < t1 {
            let hour = self.hour(t).floor();
            // The next hour boundary in simulated seconds; rounding must not stall the walk.
            let boundary = (hour + 1.0 - self.shift_hours) * 3600.0;
            let end = if boundary > t { boundary.min(t1) } else { t1 };
            total += self.at_hour(hour) * (end - t);
            t = end;
        }
        total
    }
}

/// A node's battery.
#[derive(Debug, Clone, PartialEq)]
pub struct Battery {
    pub capacity_wh: f64,
    pub charge_wh: f64,
    /// A browned-out node boots again once the charge is back at this percentage.
    pub restart_percent: f64,
}

impl Battery {
    pub fn percent(&self) -> f64 {
        100.0 * self.charge_wh / self.capacity_wh
    }

    /// `solar_joules` in and `used_joules` out over one step, the charge clamped to
    /// [0, capacity] (a full battery spills the surplus; an empty one cannot supply the rest).
    pub fn step(&mut self, solar_joules: f64, used_joules: f64) {
        let delta_wh = (solar_joules - used_joules) / 3600.0;
        self.charge_wh = (self.charge_wh + delta_wh).clamp(0.0, self.capacity_wh);
    }

    pub fn empty(&self) -> bool {
        self.charge_wh <= 0.0
    }

    /// Charged enough for a browned-out node to boot again.
    pub fn recovered(&self) -> bool {
        self.percent() >= self.restart_percent
    }
}

/// What powers a node that is not on the grid: a battery, charged by a panel if it has one.
#[derive(Debug, Clone)]
pub struct Storage {
    pub battery: Battery,
    /// Shared by the nodes of a group.
    pub sun: Option<Arc<Sun>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panel_output_scales_irradiance_and_shifts_by_hours() {
        // Hour 0: dark, hour 1: 500 W/m², hour 2: 1000 W/m²; a 200 W panel; t = 0 is hour 1.
        let sun = Sun::new(&[0.0, 500.0, 1000.0], 200.0, 1.0);
        assert_eq!(sun.joules(0.0, 3600.0), 100.0 * 3600.0);
        assert_eq!(sun.joules(3600.0, 7200.0), 200.0 * 3600.0);
        assert_eq!(sun.joules(7200.0, 10_800.0), 0.0, "wraps around the year");
        assert_eq!(sun.joules(10_800.0, 10_810.0), 1000.0, "and starts again");
        // Half an hour at 100 W, one hour at 200 W, a quarter hour at 0 W.
        let joules = sun.joules(1800.0, 2.0 * 3600.0 + 900.0);
        assert!((joules - (100.0 * 1800.0 + 200.0 * 3600.0)).abs() < 1e-6);
        // A fractional shift: boundaries fall mid simulated hour.
        let half = Sun::new(&[0.0, 1000.0], 100.0, 0.5);
        assert!((half.joules(0.0, 3600.0) - 100.0 * 1800.0).abs() < 1e-6);
    }

    #[test]
    fn battery_charges_drains_and_clamps() {
        let mut b = Battery {
            capacity_wh: 100.0,
            charge_wh: 50.0,
            restart_percent: 20.0,
        };
        // 60 s: 200 W in, 80 W out → +2 Wh.
        b.step(200.0 * 60.0, 80.0 * 60.0);
        assert!((b.charge_wh - 52.0).abs() < 1e-12);
        assert!((b.percent() - 52.0).abs() < 1e-12);
        // An hour of 100 W surplus: clamped at capacity, the rest spilled.
        b.step(150.0 * 3600.0, 50.0 * 3600.0);
        assert_eq!(b.charge_wh, 100.0);
        // Two hours of 60 W: empty, not negative.
        b.step(0.0, 60.0 * 7200.0);
        assert_eq!(b.charge_wh, 0.0);
        assert!(b.empty() && !b.recovered());
        // 20 Wh back: recovered at 20 %.
        b.step(20.0 * 3600.0, 0.0);
        assert!(!b.empty() && b.recovered());
    }
}
