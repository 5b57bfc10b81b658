//! Domain types and math that wattwise's agent and scheduler must compute identically.
//!
//! - [`curve`]: [`PowerCurve`] (node watts over utilisation) and [`MarginalWatts`], the price of a
//!   pod on a node.
//! - [`energy`]: [`EnergyLevel`] tiers of renewable/battery-powered nodes, with hysteresis.
//! - [`report`]: [`validate`], the single set of rules a `NodeReport` must pass on both sides.
pub mod curve;
pub mod energy;
pub mod report;

pub use curve::{Marginal, MarginalWatts, PowerCurve};
pub use energy::EnergyLevel;
pub use report::{validate, ReportError, ValidatedReport};
