//! Energy levels of renewable- or battery-powered nodes, from the serverless-edge line of work.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use wattwise_proto::v1 as pb;

/// Widest hysteresis band an agent may use, in percentage points. The scheduler accepts a
/// reported level that differs from the raw percentage's level by at most this band.
pub const MAX_HYSTERESIS_PERCENT: f64 = 5.0;

/// Stored-energy tier of a node. Ordered: a higher level is better powered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EnergyLevel {
    /// 0–15 %: gets no new pods.
    Powerless,
    /// 15–40 %.
    LowPowered,
    /// 40–75 %.
    Vulnerable,
    /// 75–100 %.
    WellPowered,
}

impl EnergyLevel {
    pub const ALL: [EnergyLevel; 4] = [
        EnergyLevel::Powerless,
        EnergyLevel::LowPowered,
        EnergyLevel::Vulnerable,
        EnergyLevel::WellPowered,
    ];

    /// The level of a percentage (clamped to 0..=100); a boundary belongs to the level above it.
    pub fn from_percent(percent: f64) -> Self {
        match percent {
            p if p >= 75.0 => EnergyLevel::WellPowered,
            p if p >= 40.0 => EnergyLevel::Vulnerable,
            p if p >= 15.0 => EnergyLevel::LowPowered,
            _ => EnergyLevel::Powerless,
        }
    }

    /// The half-open percentage range [lower, upper) of this level (WellPowered includes 100).
    pub fn range(self) -> (f64, f64) {
        match self {
            EnergyLevel::Powerless => (0.0, 15.0),
            EnergyLevel::LowPowered => (15.0, 40.0),
            EnergyLevel::Vulnerable => (40.0, 75.0),
            EnergyLevel::WellPowered => (75.0, 100.0),
        }
    }

    /// The level after reading `percent` when the node was at `previous`: the level changes only
    /// once the percentage leaves the previous level's range by more than `band` points, so a
    /// battery hovering at a boundary does not flap between levels.
    pub fn with_hysteresis(previous: Option<EnergyLevel>, percent: f64, band: f64) -> Self {
        let raw = Self::from_percent(percent);
        let Some(previous) = previous else {
            return raw;
        };
        let (lower, upper) = previous.range();
        let inside = percent >= lower - band
            && (percent < upper + band || previous == EnergyLevel::WellPowered);
        if inside {
            previous
        } else {
            raw
        }
    }

    /// Position in [`EnergyLevel::ALL`] (powerless 0 .. well-powered 3).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The level `steps` above this one, if there is one.
    pub fn raised(self, steps: usize) -> Option<Self> {
        Self::ALL.get(self.index() + steps).copied()
    }

    /// The label value the original system put on nodes (`energy-status=well-powered`).
    pub fn label(self) -> &'static str {
        match self {
            EnergyLevel::Powerless => "powerless",
            EnergyLevel::LowPowered => "low-powered",
            EnergyLevel::Vulnerable => "vulnerable",
            EnergyLevel::WellPowered => "well-powered",
        }
    }

    pub fn to_proto(self) -> pb::EnergyLevel {
        match self {
            EnergyLevel::Powerless => pb::EnergyLevel::Powerless,
            EnergyLevel::LowPowered => pb::EnergyLevel::LowPowered,
            EnergyLevel::Vulnerable => pb::EnergyLevel::Vulnerable,
            EnergyLevel::WellPowered => pb::EnergyLevel::WellPowered,
        }
    }

    /// `None` for `ENERGY_LEVEL_UNSPECIFIED`.
    pub fn from_proto(level: pb::EnergyLevel) -> Option<Self> {
        match level {
            pb::EnergyLevel::Unspecified => None,
            pb::EnergyLevel::Powerless => Some(EnergyLevel::Powerless),
            pb::EnergyLevel::LowPowered => Some(EnergyLevel::LowPowered),
            pb::EnergyLevel::Vulnerable => Some(EnergyLevel::Vulnerable),
            pb::EnergyLevel::WellPowered => Some(EnergyLevel::WellPowered),
        }
    }
}

impl fmt::Display for EnergyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown energy level {0:?}: expected well-powered, vulnerable, low-powered or powerless")]
pub struct UnknownEnergyLevel(pub String);

impl FromStr for EnergyLevel {
    type Err = UnknownEnergyLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.label() == s)
            .ok_or_else(|| UnknownEnergyLevel(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_step_up_in_order() {
        for (i, level) in EnergyLevel::ALL.into_iter().enumerate() {
            assert_eq!(level.index(), i);
        }
        assert_eq!(
            EnergyLevel::Powerless.raised(2),
            Some(EnergyLevel::Vulnerable)
        );
        assert_eq!(
            EnergyLevel::Vulnerable.raised(1),
            Some(EnergyLevel::WellPowered)
        );
        assert_eq!(EnergyLevel::Vulnerable.raised(2), None);
    }

    #[test]
    fn percentages_map_to_the_published_tiers() {
        use EnergyLevel::*;
        for (p, level) in [
            (0.0, Powerless),
            (14.9, Powerless),
            (15.0, LowPowered),
            (39.9, LowPowered),
            (40.0, Vulnerable),
            (74.9, Vulnerable),
            (75.0, WellPowered),
            (100.0, WellPowered),
        ] {
            assert_eq!(EnergyLevel::from_percent(p), level, "{p} %");
        }
    }

    #[test]
    fn hysteresis_holds_a_level_near_its_boundary() {
        use EnergyLevel::*;
        let band = 2.0;
        // Vulnerable stays vulnerable at 76 % and 39 %; leaves past the band.
        assert_eq!(
            EnergyLevel::with_hysteresis(Some(Vulnerable), 76.0, band),
            Vulnerable
        );
        assert_eq!(
            EnergyLevel::with_hysteresis(Some(Vulnerable), 77.5, band),
            WellPowered
        );
        assert_eq!(
            EnergyLevel::with_hysteresis(Some(Vulnerable), 39.0, band),
            Vulnerable
        );
        assert_eq!(
            EnergyLevel::with_hysteresis(Some(Vulnerable), 37.0, band),
            LowPowered
        );
        // A large jump lands on the raw level, not a neighbour.
        assert_eq!(
            EnergyLevel::with_hysteresis(Some(WellPowered), 5.0, band),
            Powerless
        );
        assert_eq!(EnergyLevel::with_hysteresis(None, 76.0, band), WellPowered);
        assert_eq!(
            EnergyLevel::with_hysteresis(Some(WellPowered), 100.0, band),
            WellPowered
        );
    }

    #[test]
    fn a_signal_oscillating_at_a_boundary_does_not_flap() {
        let mut level = None;
        let mut changes = 0;
        for i in 0..100 {
            let percent = 40.0 + if i % 2 == 0 { 1.0 } else { -1.0 };
            let next = EnergyLevel::with_hysteresis(level, percent, 2.0);
            if level.is_some_and(|l| l != next) {
                changes += 1;
            }
            level = Some(next);
        }
        assert_eq!(changes, 0);
    }

    #[test]
    fn labels_round_trip_and_typos_are_named() {
        for level in EnergyLevel::ALL {
            assert_eq!(level.label().parse::<EnergyLevel>(), Ok(level));
            assert_eq!(EnergyLevel::from_proto(level.to_proto()), Some(level));
        }
        let err = "well_powered".parse::<EnergyLevel>().unwrap_err();
        assert!(err.to_string().contains("\"well_powered\""), "{err}");
        assert!(EnergyLevel::WellPowered > EnergyLevel::Vulnerable);
    }
}
