//! Real ONNX power models for tests, written with tract-onnx's own protobuf types so the agent
//! loads exactly what a training pipeline would ship.
//!
//! The graph is a closed form over the normalised input row x (see [`Formula`]), so a test can
//! compute the expected prediction in Rust ([`ModelSpec::expected`]) and compare. Broken
//! variants (garbage bytes, a missing metadata key, a wrong input width, NaN or negative output,
//! power that falls with load) are the same builder with one field changed.

use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;
use tract_onnx::pb::{
    self, tensor_proto::DataType, tensor_shape_proto::dimension, tensor_shape_proto::Dimension,
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Opset whose Slice and Squeeze take their parameters as inputs; within what tract is tested on.
const OPSET: i64 = 13;

/// The graph's arithmetic: `y = bias + power_coeff · x[power_column]^exponent + Σ linear[j] · x[j]`
/// over the normalised input row x.
#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    pub bias: f32,
    pub power_coeff: f32,
    pub power_column: usize,
    pub exponent: f32,
    /// One weight per input column (the graph's input width is `linear.len()`).
    pub linear: Vec<f32>,
}

impl Formula {
    /// `y` for a normalised row, computed in f64 (the graph runs in f32).
    pub fn eval(&self, x: &[f64]) -> f64 {
        let linear: f64 = self
            .linear
            .iter()
            .zip(x)
            .map(|(&w, &v)| f64::from(w) * v)
            .sum();
        f64::from(self.bias)
            + f64::from(self.power_coeff) * x[self.power_column].powf(f64::from(self.exponent))
            + linear
    }
}

/// An ONNX power model: metadata and formula. Fields are public so tests can break one thing.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub training_data: Option<String>,
    /// `wattwise.inputs`, in column order.
    pub features: Vec<String>,
    /// `wattwise.input_ranges`; empty = key omitted.
    pub ranges: Vec<(String, [f64; 2])>,
    /// `wattwise.input_defaults`; empty = key omitted.
    pub defaults: Vec<(String, f64)>,
    /// `wattwise.output`: `watts` or `fraction_of_peak`.
    pub output: String,
    pub formula: Formula,
    /// Metadata keys to leave out of the file (to test their absence).
    pub omit_keys: Vec<String>,
    /// Output `[N]` (squeezed) instead of `[N, 1]`.
    pub rank1_output: bool,
}

impl ModelSpec {
    /// `idle + (peak − idle) · u + inlet_coeff · (inlet − 25)` watts over inputs
    /// `cpu_utilisation, inlet_celsius` (inlet fed raw, default 25 °C).
    pub fn linear(idle: f32, peak: f32, inlet_coeff: f32) -> Self {
        Self {
            name: "linear-test".into(),
            version: "1".into(),
            training_data: Some("closed form, wattwise-testenv".into()),
            features: vec!["cpu_utilisation".into(), "inlet_celsius".into()],
            ranges: Vec::new(),
            defaults: vec![("inlet_celsius".into(), 25.0)],
            output: "watts".into(),
            formula: Formula {
                bias: idle - 25.0 * inlet_coeff,
                power_coeff: 0.0,
                power_column: 0,
                exponent: 1.0,
                linear: vec![peak - idle, inlet_coeff],
            },
            omit_keys: Vec::new(),
            rank1_output: false,
        }
    }

    /// The model output (before any `fraction_of_peak` scaling) for raw inputs in column order,
    /// normalised with `ranges` exactly as the agent does.
    pub fn expected(&self, raw: &[f64]) -> f64 {
        let x: Vec<f64> = self
            .features
            .iter()
            .zip(raw)
            .map(
                |(name, &v)| match self.ranges.iter().find(|(n, _)| n == name) {
                    Some((_, [min, max])) => (v - min) / (max - min),
                    None => v,
                },
            )
            .collect();
        self.formula.eval(&x)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_proto().encode_to_vec())
            .with_context(|| format!("writing ONNX model {}", path.display()))
    }

    pub fn to_proto(&self) -> ModelProto {
        let mut metadata = vec![
            ("wattwise.name", self.name.clone()),
            ("wattwise.version", self.version.clone()),
            ("wattwise.inputs", self.features.join(",")),
            ("wattwise.output", self.output.clone()),
        ];
        if let Some(t) = &self.training_data {
            metadata.push(("wattwise.training_data", t.clone()));
        }
        if !self.ranges.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> = self
                .ranges
                .iter()
                .map(|(k, r)| (k.clone(), serde_json::json!(r)))
                .collect();
            metadata.push((
                "wattwise.input_ranges",
                serde_json::Value::Object(map).to_string(),
            ));
        }
        if !self.defaults.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> = self
                .defaults
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                .collect();
            metadata.push((
                "wattwise.input_defaults",
                serde_json::Value::Object(map).to_string(),
            ));
        }
        let metadata_props = metadata
            .into_iter()
            .filter(|(k, _)| !self.omit_keys.iter().any(|o| o == k))
            .map(|(key, value)| StringStringEntryProto {
                key: key.into(),
                value,
            })
            .collect();
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "wattwise-testenv".into(),
            graph: Some(self.graph()),
            metadata_props,
            ..ModelProto::default()
        }
    }

    fn graph(&self) -> GraphProto {
        let f = &self.formula;
        let width = f.linear.len() as i64;
        let col = f.power_column as i64;
        let initializer = vec![
            floats("w", &[width, 1], &f.linear),
            floats("power_coeff", &[], &[f.power_coeff]),
            floats("exponent", &[], &[f.exponent]),
            floats("bias", &[], &[f.bias]),
            ints("col_start", &[col]),
            ints("col_end", &[col + 1]),
            ints("axis1", &[1]),
        ];
        let mut node = vec![
            op("Slice", &["x", "col_start", "col_end", "axis1"], "u"),
            op("Pow", &["u", "exponent"], "u_pow"),
            op("Mul", &["u_pow", "power_coeff"], "curve"),
            op("MatMul", &["x", "w"], "lin"),
            op("Add", &["curve", "lin"], "sum"),
        ];
        let output_dims = if self.rank1_output {
            node.push(op("Add", &["sum", "bias"], "y2"));
            node.push(op("Squeeze", &["y2", "axis1"], "y"));
            vec![dim_param("N")]
        } else {
            node.push(op("Add", &["sum", "bias"], "y"));
            vec![dim_param("N"), dim_value(1)]
        };
        GraphProto {
            name: "wattwise-test-power".into(),
            node,
            initializer,
            input: vec![value_info("x", vec![dim_param("N"), dim_value(width)])],
            output: vec![value_info("y", output_dims)],
            ..GraphProto::default()
        }
    }
}

/// [`ModelSpec::linear`] written to `path`.
pub fn write_linear_model(path: &Path, idle: f32, peak: f32, inlet_coeff: f32) -> Result<()> {
    ModelSpec::linear(idle, peak, inlet_coeff).write(path)
}

/// Bytes that are not a protobuf message: an invalid varint wire type (7) right away.
pub fn write_garbage(path: &Path) -> Result<()> {
    std::fs::write(
        path,
        [0xffu8, 0xff, 0xff, 0xff, 0x0f, 0x07, 0x42, 0x00, 0xde, 0xad],
    )
    .with_context(|| format!("writing {}", path.display()))
}

fn op(op_type: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: output.into(),
        op_type: op_type.into(),
        input: inputs.iter().map(|&i| i.into()).collect(),
        output: vec![output.into()],
        ..NodeProto::default()
    }
}

fn floats(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: data.to_vec(),
        ..TensorProto::default()
    }
}

fn ints(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: DataType::Int64 as i32,
        int64_data: data.to_vec(),
        ..TensorProto::default()
    }
}

fn dim_param(name: &str) -> Dimension {
    Dimension {
        value: Some(dimension::Value::DimParam(name.into())),
        ..Dimension::default()
    }
}

fn dim_value(v: i64) -> Dimension {
    Dimension {
        value: Some(dimension::Value::DimValue(v)),
        ..Dimension::default()
    }
}

fn value_info(name: &str, dims: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}
