//! Why a power model cannot be loaded or run. Every error names the model file, because an agent
//! fleet may run several models and the operator reads these in a log.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;
use wattwise_core::curve::CurveError;

use super::metadata::Feature;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("power model {}: cannot read the file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("power model {}: not an ONNX model: {reason}", path.display())]
    NotOnnx { path: PathBuf, reason: String },
    #[error("power model {}: metadata key `{key}` is missing", path.display())]
    MissingMetadata { path: PathBuf, key: String },
    #[error("power model {}: metadata key `{key}` is invalid: {problem}", path.display())]
    InvalidMetadata {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("power model {}: `{key}` names unknown feature `{name}` (known: cpu_utilisation, inlet_celsius, cpuN_celsius, idle_over_peak)", path.display())]
    UnknownFeature {
        path: PathBuf,
        key: String,
        name: String,
    },
    #[error("power model {}: {what}: expected {expected}, found {found}", path.display())]
    Shape {
        path: PathBuf,
        what: String,
        expected: String,
        found: String,
    },
    /// The configured idle/peak watts do not fit what the model needs.
    #[error("power model {}: {problem}", path.display())]
    Scale { path: PathBuf, problem: String },
    /// tract could not analyse, optimise or run the graph (unsupported operator, bad wiring).
    #[error("power model {}: {stage}: {reason}", path.display())]
    Tract {
        path: PathBuf,
        stage: &'static str,
        reason: String,
    },
    #[error("power model {}: predicts {watts} W at {at}: {problem}", path.display())]
    BadOutput {
        path: PathBuf,
        at: ProbePoint,
        watts: f64,
        problem: &'static str,
    },
    #[error("power model {}: input {feature}: {problem}", path.display())]
    Input {
        path: PathBuf,
        feature: Feature,
        problem: String,
    },
    #[error("power model {}: curve rejected: {source}", path.display())]
    Curve { path: PathBuf, source: CurveError },
}

/// The raw (un-normalised) feature values of one prediction, for error messages and warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbePoint(pub Vec<(Feature, f64)>);

impl fmt::Display for ProbePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (feature, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{feature}={value}")?;
        }
        Ok(())
    }
}

/// Something wrong enough to report but not to refuse the model for.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ModelWarning {
    /// The probe curve at these temperatures falls with load beyond the tolerance a
    /// [`wattwise_core::PowerCurve`] accepts: curves at such temperatures will be rejected.
    #[error(
        "power falls with load at {at}: {watts} W after {previous_max} W (tolerance {tolerance} W)"
    )]
    FallsWithLoad {
        at: ProbePoint,
        watts: f64,
        previous_max: f64,
        tolerance: f64,
    },
}
