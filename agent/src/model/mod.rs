//! The node's power model: an ONNX file run locally with tract, turned into a
//! [`PowerCurve`] (node watts over utilisation 0..=100 % at the current temperatures) from which
//! the scheduler prices a pod's marginal watts.
//!
//! # Model contract
//!
//! The training pipeline emits exactly this; anything else is refused at startup with a
//! [`ModelError`] naming the file and the problem.
//!
//! - **Graph**: one float32 input of shape `[N, F]` (N = batch, may be symbolic or fixed; the
//!   agent runs it with a symbolic batch), one float32 output of shape `[N, 1]` or `[N]`.
//!   F must equal the number of features in `wattwise.inputs`.
//! - **Metadata** (`metadata_props`, all values strings):
//!   - `wattwise.name` (required, e.g. `generic`), `wattwise.version` (required),
//!     `wattwise.training_data` (optional free text or URL, provenance only).
//!   - `wattwise.inputs` (required): comma-separated feature names in input column order, from
//!     this vocabulary; must include `cpu_utilisation`, no duplicates:
//!     - `cpu_utilisation`: CPU utilisation as a fraction 0..1;
//!     - `inlet_celsius`: inlet air temperature (the ambient sensor when there is no inlet);
//!     - `cpu0_celsius`, `cpu1_celsius`, …: per-socket CPU temperature;
//!     - `idle_over_peak`: the node's idle / peak watts from config, so one generic model can
//!       follow each server's energy proportionality.
//!   - `wattwise.input_ranges` (optional): JSON object feature → `[min, max]` (finite,
//!     min < max). The agent feeds x' = (x − min) / (max − min); features without a range are
//!     fed raw. Values outside the range are not clamped.
//!   - `wattwise.input_defaults` (optional): JSON object feature → value used when the sensor
//!     has no (finite) reading, e.g. `{"inlet_celsius": 25}`. A temperature with neither reading
//!     nor default is an error at prediction time naming the feature. `cpu_utilisation` takes no
//!     default (it is always measured); a default for `idle_over_peak` is used when the config
//!     lacks idle or peak watts.
//!   - `wattwise.output` (required): `watts` (absolute node watts) or `fraction_of_peak`
//!     (P / P_peak; the agent multiplies by the configured `model.peak_watts`, else by
//!     `wattwise.default_peak_watts`, and refuses to start with neither).
//!   - `wattwise.default_peak_watts` (optional): decimal watts (e.g. `350`), finite, > 0 and at
//!     most [`MAX_NODE_WATTS`]: the peak of a typical node of the model's class, used by a
//!     `fraction_of_peak` model when the config has no `model.peak_watts`. Such a scale is a
//!     guess: the agent warns, exports it ([`PeakSource::ModelDefault`]) and online calibration
//!     learns the node's own scale from measured watts. Ignored by `watts` models.
//!   - Other `wattwise.*` keys are ignored, so newer pipelines can add keys without breaking
//!     older agents.
//! - Ranges and defaults must only name the model's inputs (anything else is a typo).
//! - [`ModelOverrides`] in the agent config replace `inputs`, `input_ranges` and
//!   `input_defaults` entry by entry (each as a whole).
//!
//! # Validation at load
//!
//! A probe grid — [`DEFAULT_CURVE_POINTS`] utilisations × three temperature levels (each
//! temperature at the low end, middle and high end of its range; at its default when it has no
//! range; else over [`FALLBACK_INLET_CELSIUS`] / [`FALLBACK_CPU_CELSIUS`]) — must give finite,
//! non-negative watts up to [`MAX_NODE_WATTS`]. A probe curve that falls with load by more than
//! [`wattwise_core::curve::fall_tolerance_watts`] loads with a [`ModelWarning`] (logged and kept
//! in [`PowerModel::warnings`]): the model may be fine elsewhere, but [`PowerModel::curve`] will
//! refuse such curves, since the scheduler would.
//!
//! # Scale
//!
//! [`PowerModel::scale_watts`] (S) is the uncalibrated prediction at full load (utilisation 1)
//! with every other input at its default (a temperature without default: the middle of its
//! range, else of the fallback probe temperatures; `idle_over_peak` as resolved from config or
//! default). The calibration ([`calibration`]) works in units of S.

pub mod calibration;
mod error;
mod metadata;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::Message;
use tracing::warn;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use wattwise_core::curve::{CurveError, DEFAULT_CURVE_POINTS, MAX_NODE_WATTS};
use wattwise_core::PowerCurve;

pub use error::{ModelError, ModelWarning, ProbePoint};
pub use metadata::{Feature, ModelOverrides, OutputKind};

use metadata::{InputSpec, Metadata, MetadataError};

/// Inlet temperatures (°C) probed for an inlet feature with neither range nor default: from a cold
/// aisle to the top of ASHRAE's allowable A2 class.
pub const FALLBACK_INLET_CELSIUS: [f64; 3] = [18.0, 26.0, 35.0];
/// CPU temperatures (°C) probed for a CPU feature with neither range nor default: idle to hot.
pub const FALLBACK_CPU_CELSIUS: [f64; 3] = [35.0, 60.0, 90.0];

/// The node's idle and peak watts from config.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeScale {
    pub idle_watts: Option<f64>,
    pub peak_watts: Option<f64>,
}

/// What the model is predicting for: the node's current readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// CPU utilisation, fraction 0..1 (clamped); ignored by [`PowerModel::curve`].
    pub utilisation: f64,
    /// Inlet (else ambient) temperature, °C.
    pub inlet_celsius: Option<f64>,
    /// CPU temperatures by socket index; `None` for a socket without a usable reading.
    pub cpu_celsius: Vec<Option<f64>>,
}

/// What is loaded, for reports and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub training_data: Option<String>,
    /// Input columns in order.
    pub features: Vec<Feature>,
    pub output: OutputKind,
    /// The peak watts a `fraction_of_peak` output is multiplied by, and where it came from.
    pub peak_watts: Option<PeakWatts>,
}

/// Peak watts and their source.
pub type PeakWatts = (f64, PeakSource);

/// Where a `fraction_of_peak` model's peak watts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakSource {
    /// `model.peak_watts` in the agent config: the operator's figure for this node.
    Config,
    /// The model's `wattwise.default_peak_watts`: a class-typical guess that calibration corrects.
    ModelDefault,
}

impl PeakSource {
    pub fn label(self) -> &'static str {
        match self {
            PeakSource::Config => "config",
            PeakSource::ModelDefault => "model_default",
        }
    }
}

/// A loaded, validated power model. Inference is synchronous and takes a few microseconds; calls
/// from several threads are serialised on one reusable tract session.
#[derive(Debug)]
pub struct PowerModel {
    path: PathBuf,
    info: ModelInfo,
    inputs: Vec<InputSpec>,
    /// Column of `cpu_utilisation` (the contract requires it).
    utilisation_column: usize,
    /// idle / peak for an `idle_over_peak` input, fixed at load.
    idle_over_peak: Option<f64>,
    /// Multiplier from model output to watts (1, or peak watts for `fraction_of_peak`).
    output_scale: f64,
    /// S: the prediction at full load and default inputs (see the module docs).
    scale_watts: f64,
    session: Mutex<Session>,
    warnings: Vec<ModelWarning>,
}

/// The mutable part of inference, reused across calls so the per-second curve allocates only
/// the returned points.
#[derive(Debug)]
struct Session {
    state: TypedSimpleState,
    /// Input tensors of the last single prediction and the last curve, handed back by tract after
    /// each run.
    single: Option<Tensor>,
    batch: Option<Tensor>,
    /// A run failed or panicked half-way: tract keeps resolved symbols (the batch size) until its
    /// turn is reset, and a stale batch size would break the next run of another size.
    dirty: bool,
}

impl PowerModel {
    /// Reads, checks and prepares the model at `path`, then validates it on a probe grid.
    pub fn load(
        path: &Path,
        overrides: &ModelOverrides,
        scale: NodeScale,
    ) -> Result<PowerModel, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.to_owned(),
            source,
        })?;
        let not_onnx = |reason: String| ModelError::NotOnnx {
            path: path.to_owned(),
            reason,
        };
        let proto = pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| not_onnx(format!("protobuf decoding failed: {e}")))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| not_onnx("the file holds no graph".into()))?;

        let metadata = Metadata::parse(
            proto
                .metadata_props
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str())),
            overrides,
        )
        .map_err(|e| metadata_error(path, e))?;
        let features: Vec<Feature> = metadata.inputs.iter().map(|s| s.feature).collect();
        let (idle_over_peak, peak_watts) = resolve_scale(path, &metadata, scale)?;
        let output_scale = peak_watts.map_or(1.0, |(watts, _)| watts);
        check_declared_interface(path, graph, features.len())?;

        let state = build_session(path, &proto, features.len())?;
        let utilisation_column = features
            .iter()
            .position(|&f| f == Feature::CpuUtilisation)
            .ok_or_else(|| ModelError::InvalidMetadata {
                path: path.to_owned(),
                key: metadata::KEY_INPUTS.into(),
                problem: "does not include cpu_utilisation".into(),
            })?;
        let mut model = PowerModel {
            path: path.to_owned(),
            info: ModelInfo {
                name: metadata.name,
                version: metadata.version,
                training_data: metadata.training_data,
                features,
                output: metadata.output,
                peak_watts,
            },
            inputs: metadata.inputs,
            utilisation_column,
            idle_over_peak,
            output_scale,
            scale_watts: 0.0,
            session: Mutex::new(Session {
                state,
                single: None,
                batch: None,
                dirty: false,
            }),
            warnings: Vec::new(),
        };
        model.warnings = model.probe()?;
        model.scale_watts = model.predict(&model.reference_conditions())?;
        if let Some((watts, PeakSource::ModelDefault)) = model.info.peak_watts {
            warn!(model = %path.display(), peak_watts = watts,
                "model.peak_watts is not configured: using the model's wattwise.default_peak_watts; uncalibrated scale; calibration will learn it");
        }
        for w in &model.warnings {
            let ModelWarning::FallsWithLoad {
                at,
                watts,
                previous_max,
                tolerance,
            } = w;
            warn!(model = %path.display(), at = %at, watts, previous_max, tolerance,
                "power model predicts less power under more load");
        }
        Ok(model)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The model file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// S: the uncalibrated prediction at full load and default inputs, in watts (see the module
    /// docs); the calibration's unit.
    pub fn scale_watts(&self) -> f64 {
        self.scale_watts
    }

    /// Problems found at load that did not stop the model from loading.
    pub fn warnings(&self) -> &[ModelWarning] {
        &self.warnings
    }

    /// Node watts at `conditions` (one inference).
    pub fn predict(&self, conditions: &Conditions) -> Result<f64, ModelError> {
        let u = self.clamped_utilisation(conditions.utilisation)?;
        let raw = self.raw_inputs(conditions)?;
        let mut watts = Vec::with_capacity(1);
        self.infer(&raw, &[u], &mut watts)?;
        let w = watts[0];
        self.check_output(w, &raw, u)?;
        Ok(w)
    }

    /// The power curve at `conditions`' temperatures over `points` evenly spaced utilisations
    /// (one batched inference; `conditions.utilisation` is ignored).
    pub fn curve(&self, conditions: &Conditions, points: usize) -> Result<PowerCurve, ModelError> {
        let raw = self.raw_inputs(conditions)?;
        let watts = self.curve_watts(&raw, points)?;
        PowerCurve::new(watts).map_err(|source| ModelError::Curve {
            path: self.path.clone(),
            source,
        })
    }

    fn curve_watts(&self, raw: &[f64], points: usize) -> Result<Vec<f64>, ModelError> {
        // Same spacing as `PowerCurve` (point i at i / (n − 1)); the point count itself is
        // validated by `PowerCurve::new`.
        let last = points.saturating_sub(1).max(1) as f64;
        let utilisations: Vec<f64> = (0..points).map(|i| i as f64 / last).collect();
        let mut watts = Vec::with_capacity(points);
        self.infer(raw, &utilisations, &mut watts)?;
        Ok(watts)
    }

    fn clamped_utilisation(&self, u: f64) -> Result<f64, ModelError> {
        if u.is_nan() {
            return Err(ModelError::Input {
                path: self.path.clone(),
                feature: Feature::CpuUtilisation,
                problem: "is NaN".into(),
            });
        }
        Ok(u.clamp(0.0, 1.0))
    }

    /// Raw (un-normalised) input values for `conditions`, utilisation included.
    fn raw_inputs(&self, conditions: &Conditions) -> Result<Vec<f64>, ModelError> {
        self.inputs
            .iter()
            .map(|spec| {
                let reading = match spec.feature {
                    Feature::CpuUtilisation => Some(conditions.utilisation),
                    Feature::InletCelsius => conditions.inlet_celsius,
                    Feature::CpuCelsius(socket) => conditions
                        .cpu_celsius
                        .get(usize::from(socket))
                        .copied()
                        .flatten(),
                    Feature::IdleOverPeak => self.idle_over_peak,
                };
                reading
                    .filter(|v| v.is_finite() || spec.feature == Feature::CpuUtilisation)
                    .or(spec.default)
                    .ok_or_else(|| ModelError::Input {
                        path: self.path.clone(),
                        feature: spec.feature,
                        problem: "no reading and no default (set one in wattwise.input_defaults or model.overrides.input_defaults)".into(),
                    })
            })
            .collect()
    }

    /// Runs the model on one row per utilisation (other columns from `raw`) and appends watts to
    /// `out`.
    fn infer(
        &self,
        raw: &[f64],
        utilisations: &[f64],
        out: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        let rows = utilisations.len();
        let width = self.inputs.len();
        let row: Vec<f32> = self
            .inputs
            .iter()
            .zip(raw)
            .map(|(spec, &x)| spec.normalise(x) as f32)
            .collect();
        let util_spec = &self.inputs[self.utilisation_column];

        // A panic inside tract while locked leaves the session dirty, which the next run repairs.
        let mut session = self.session.lock().unwrap_or_else(|poisoned| {
            self.session.clear_poison();
            poisoned.into_inner()
        });
        let session = &mut *session;
        if session.dirty {
            session
                .state
                .reset_turn()
                .map_err(|e| self.tract("resetting", e))?;
            session.dirty = false;
        }
        let slot = if rows == 1 {
            &mut session.single
        } else {
            &mut session.batch
        };
        let mut input = match slot.take() {
            Some(t) if t.shape() == [rows, width] => t,
            _ => Tensor::zero::<f32>(&[rows, width])
                .map_err(|e| self.tract("allocating input", e))?,
        };
        let mut view = input
            .try_as_plain_ram_mut()
            .map_err(|e| self.tract("filling input", e))?;
        let cells = view
            .as_slice_mut::<f32>()
            .map_err(|e| self.tract("filling input", e))?;
        for (cells, &u) in cells.chunks_exact_mut(width).zip(utilisations) {
            cells.copy_from_slice(&row);
            cells[self.utilisation_column] = util_spec.normalise(u) as f32;
        }

        let input = TValue::from(input);
        session.dirty = true;
        let outputs = session
            .state
            .run(tvec![input.clone()])
            .map_err(|e| self.tract("running", e))?;
        session.dirty = false;
        let produced = outputs
            .first()
            .ok_or_else(|| self.shape("outputs", "1".into(), "none".into()))?;
        let values = produced
            .try_as_plain_ram()
            .and_then(|view| view.as_slice::<f32>())
            .map_err(|e| self.tract("reading output", e))?;
        if values.len() != rows {
            return Err(self.shape(
                "output of one batch",
                format!("{rows} values"),
                format!("shape {:?}", produced.shape()),
            ));
        }
        out.extend(values.iter().map(|&v| f64::from(v) * self.output_scale));
        drop(outputs);
        // tract released its references at the end of the run, so this is the same allocation.
        *slot = Some(input.into_tensor());
        Ok(())
    }

    fn check_output(&self, watts: f64, raw: &[f64], utilisation: f64) -> Result<(), ModelError> {
        let problem = if !watts.is_finite() {
            "not a finite number"
        } else if watts < 0.0 {
            "negative"
        } else if watts > MAX_NODE_WATTS {
            "above the 100 kW plausibility limit"
        } else {
            return Ok(());
        };
        Err(ModelError::BadOutput {
            path: self.path.clone(),
            at: self.point(raw, utilisation),
            watts,
            problem,
        })
    }

    fn point(&self, raw: &[f64], utilisation: f64) -> ProbePoint {
        ProbePoint(
            self.inputs
                .iter()
                .zip(raw)
                .map(|(spec, &x)| match spec.feature {
                    Feature::CpuUtilisation => (spec.feature, utilisation),
                    f => (f, x),
                })
                .collect(),
        )
    }

    /// Runs the probe grid (see the module docs); errors on implausible output, returns warnings
    /// for curves that fall with load.
    fn probe(&self) -> Result<Vec<ModelWarning>, ModelError> {
        let mut warnings = Vec::new();
        let sockets = self.sockets();
        let mut levels = Vec::with_capacity(3);
        for level in 0..3 {
            let mut conditions = Conditions {
                utilisation: 0.0,
                inlet_celsius: None,
                cpu_celsius: vec![None; sockets],
            };
            for spec in &self.inputs {
                let value = match (spec.range, spec.default, spec.feature) {
                    (Some([min, max]), _, _) => [min, (min + max) / 2.0, max][level],
                    (None, Some(default), _) => default,
                    (None, None, Feature::InletCelsius) => FALLBACK_INLET_CELSIUS[level],
                    (None, None, Feature::CpuCelsius(_)) => FALLBACK_CPU_CELSIUS[level],
                    (None, None, _) => continue,
                };
                match spec.feature {
                    Feature::InletCelsius => conditions.inlet_celsius = Some(value),
                    Feature::CpuCelsius(n) => conditions.cpu_celsius[usize::from(n)] = Some(value),
                    Feature::CpuUtilisation | Feature::IdleOverPeak => {}
                }
            }
            levels.push(conditions);
        }
        // Temperatures without a range sit at their default on every level.
        levels.dedup();
        for conditions in &levels {
            let raw = self.raw_inputs(conditions)?;
            let watts = self.curve_watts(&raw, DEFAULT_CURVE_POINTS)?;
            let last = (DEFAULT_CURVE_POINTS - 1) as f64;
            for (i, &w) in watts.iter().enumerate() {
                self.check_output(w, &raw, i as f64 / last)?;
            }
            match PowerCurve::new(watts) {
                Ok(_) => {}
                Err(CurveError::FallsWithLoad {
                    index,
                    watts,
                    previous_max,
                    tolerance,
                }) => warnings.push(ModelWarning::FallsWithLoad {
                    at: self.point(&raw, index as f64 / last),
                    watts,
                    previous_max,
                    tolerance,
                }),
                Err(source) => {
                    return Err(ModelError::Curve {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(warnings)
    }

    /// Where S is predicted: full load, each temperature at its default, else the middle of its
    /// range, else the middle fallback temperature.
    fn reference_conditions(&self) -> Conditions {
        let mut conditions = Conditions {
            utilisation: 1.0,
            inlet_celsius: None,
            cpu_celsius: vec![None; self.sockets()],
        };
        for spec in &self.inputs {
            let value = match (spec.default, spec.range, spec.feature) {
                (Some(default), _, _) => default,
                (None, Some([min, max]), _) => (min + max) / 2.0,
                (None, None, Feature::InletCelsius) => FALLBACK_INLET_CELSIUS[1],
                (None, None, Feature::CpuCelsius(_)) => FALLBACK_CPU_CELSIUS[1],
                (None, None, _) => continue,
            };
            match spec.feature {
                Feature::InletCelsius => conditions.inlet_celsius = Some(value),
                Feature::CpuCelsius(n) => conditions.cpu_celsius[usize::from(n)] = Some(value),
                Feature::CpuUtilisation | Feature::IdleOverPeak => {}
            }
        }
        conditions
    }

    /// Sockets the model has temperature inputs for (highest CPU index + 1).
    fn sockets(&self) -> usize {
        self.inputs
            .iter()
            .filter_map(|s| match s.feature {
                Feature::CpuCelsius(n) => Some(usize::from(n) + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn tract(&self, stage: &'static str, e: TractError) -> ModelError {
        tract_error(&self.path, stage, e)
    }

    fn shape(&self, what: &str, expected: String, found: String) -> ModelError {
        ModelError::Shape {
            path: self.path.clone(),
            what: what.into(),
            expected,
            found,
        }
    }
}

fn tract_error(path: &Path, stage: &'static str, e: TractError) -> ModelError {
    ModelError::Tract {
        path: path.to_owned(),
        stage,
        reason: format!("{e:#}"),
    }
}

fn metadata_error(path: &Path, e: MetadataError) -> ModelError {
    let path = path.to_owned();
    match e {
        MetadataError::Missing { key } => ModelError::MissingMetadata {
            path,
            key: key.into(),
        },
        MetadataError::Invalid { key, problem } => ModelError::InvalidMetadata {
            path,
            key: key.into(),
            problem,
        },
        MetadataError::UnknownFeature { key, name } => ModelError::UnknownFeature {
            path,
            key: key.into(),
            name,
        },
    }
}

/// The `idle_over_peak` input value, and the peak watts a `fraction_of_peak` output is multiplied
/// by: from config, else the model's `wattwise.default_peak_watts`.
fn resolve_scale(
    path: &Path,
    metadata: &Metadata,
    scale: NodeScale,
) -> Result<(Option<f64>, Option<PeakWatts>), ModelError> {
    let problem = |problem: String| ModelError::Scale {
        path: path.to_owned(),
        problem,
    };
    let plausible = |w: f64| w.is_finite() && w > 0.0 && w <= MAX_NODE_WATTS;
    for (name, watts) in [("idle", scale.idle_watts), ("peak", scale.peak_watts)] {
        if let Some(w) = watts.filter(|&w| !plausible(w)) {
            return Err(problem(format!(
                "configured {name} watts {w} is not a plausible node wattage"
            )));
        }
    }
    let peak_watts = match metadata.output {
        OutputKind::Watts => None,
        OutputKind::FractionOfPeak => match (scale.peak_watts, metadata.default_peak_watts) {
            (Some(w), _) => Some((w, PeakSource::Config)),
            (None, Some(w)) => Some((w, PeakSource::ModelDefault)),
            (None, None) => {
                return Err(problem(format!(
                    "outputs fraction_of_peak but model.peak_watts is not configured and the model has no {}",
                    metadata::KEY_DEFAULT_PEAK_WATTS
                )))
            }
        },
    };
    let idle_over_peak = match metadata
        .inputs
        .iter()
        .find(|s| s.feature == Feature::IdleOverPeak)
    {
        None => None,
        Some(spec) => match (scale.idle_watts, scale.peak_watts, spec.default) {
            (Some(idle), Some(peak), _) => Some(idle / peak),
            (_, _, Some(default)) => Some(default),
            _ => {
                return Err(problem(
                    "takes idle_over_peak but model.idle_watts and model.peak_watts are not both configured and it has no default".into(),
                ))
            }
        },
    };
    Ok((idle_over_peak, peak_watts))
}

/// Checks the graph's declared interface against the contract before tract sees it, so the
/// error says what the model author got wrong rather than where tract's analysis tripped.
fn check_declared_interface(
    path: &Path,
    graph: &pb::GraphProto,
    width: usize,
) -> Result<(), ModelError> {
    let shape_error = |what: &str, expected: String, found: String| ModelError::Shape {
        path: path.to_owned(),
        what: what.into(),
        expected,
        found,
    };
    // Older exporters also list initializers (weights) as graph inputs.
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !graph.initializer.iter().any(|t| t.name == i.name))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(shape_error(
            "graph inputs",
            "1".into(),
            inputs.len().to_string(),
        ));
    };
    if graph.output.len() != 1 {
        return Err(shape_error(
            "graph outputs",
            "1".into(),
            graph.output.len().to_string(),
        ));
    }
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        // No declared type: tract's analysis with the [N, F] input fact decides.
        return Ok(());
    };
    let float = pb::tensor_proto::DataType::Float as i32;
    let undefined = pb::tensor_proto::DataType::Undefined as i32;
    if tensor.elem_type != float && tensor.elem_type != undefined {
        let found = pb::tensor_proto::DataType::try_from(tensor.elem_type).map_or_else(
            |_| format!("type {}", tensor.elem_type),
            |t| format!("{t:?}"),
        );
        return Err(shape_error(
            &format!("input `{}` element type", input.name),
            "float32".into(),
            found,
        ));
    }
    if let Some(shape) = &tensor.shape {
        let dims: Vec<String> = shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => v.to_string(),
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => p.clone(),
                None => "?".into(),
            })
            .collect();
        let declared_width = shape.dim.get(1).and_then(|d| match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
            _ => None,
        });
        let width_ok = declared_width.is_none_or(|v| usize::try_from(v) == Ok(width));
        if dims.len() != 2 || !width_ok {
            return Err(shape_error(
                &format!("input `{}` shape", input.name),
                format!("[N, {width}] (one column per wattwise.inputs feature)"),
                format!("[{}]", dims.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Types and optimises the graph for a `[N, width]` float32 input with symbolic N (one plan serves
/// single predictions and whole curves), and checks the output is `[N, 1]` or `[N]` float32.
fn build_session(
    path: &Path,
    proto: &pb::ModelProto,
    width: usize,
) -> Result<TypedSimpleState, ModelError> {
    let onnx = tract_onnx::onnx();
    let dir = path.parent().and_then(Path::to_str);
    let parsed = onnx
        .parse(proto, dir)
        .map_err(|e| tract_error(path, "parsing the graph", e))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(ModelError::Tract {
            path: path.to_owned(),
            stage: "parsing the graph",
            reason: format!("unresolved inputs {:?}", parsed.unresolved_inputs),
        });
    }
    let mut model = parsed.model;
    let batch = model.symbols.sym("N");
    model
        .set_input_fact(0, f32::fact([batch.to_dim(), width.to_dim()]).into())
        .map_err(|e| tract_error(path, "setting the input shape", e))?;
    let typed = model
        .into_typed()
        .map_err(|e| tract_error(path, "analysing the graph for a [N, F] float32 input", e))?;
    let output = typed
        .output_fact(0)
        .map_err(|e| tract_error(path, "reading the output", e))?;
    let dims: Vec<TDim> = output.shape.iter().cloned().collect();
    let n = batch.to_dim();
    let shape_ok = match dims.as_slice() {
        [b] => *b == n,
        [b, one] => *b == n && *one == 1.to_dim(),
        _ => false,
    };
    if !shape_ok || output.datum_type != f32::datum_type() {
        return Err(ModelError::Shape {
            path: path.to_owned(),
            what: "output".into(),
            expected: "[N, 1] or [N] float32 for an [N, F] input".into(),
            found: format!(
                "[{}] {:?}",
                dims.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                output.datum_type
            ),
        });
    }
    let plan = typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| tract_error(path, "optimising the graph", e))?;
    TypedSimpleState::new(&plan).map_err(|e| tract_error(path, "starting a session", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PowerModel>();
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_it() {
        let path = Path::new("/nonexistent/wattwise/model.onnx");
        let err =
            PowerModel::load(path, &ModelOverrides::default(), NodeScale::default()).unwrap_err();
        assert!(matches!(err, ModelError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/wattwise/model.onnx"),
            "{err}"
        );
    }

    #[test]
    fn probe_points_read_as_feature_assignments() {
        let p = ProbePoint(vec![
            (Feature::CpuUtilisation, 0.5),
            (Feature::CpuCelsius(1), 60.0),
        ]);
        assert_eq!(p.to_string(), "cpu_utilisation=0.5, cpu1_celsius=60");
    }
}
