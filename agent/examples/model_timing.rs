//! Prints what the power model costs: load, one prediction, one 101-point curve, each against the
//! same closed form computed directly in Rust (a floor no model runtime can beat).
//!
//! `cargo run --release -p wattwise-agent --example model_timing`

use std::hint::black_box;
use std::time::{Duration, Instant};

use wattwise_agent::model::{Conditions, ModelOverrides, NodeScale, PowerModel};
use wattwise_core::curve::DEFAULT_CURVE_POINTS;

// The agent cannot depend on wattwise-testenv (it depends on the agent), so the example compiles
// its ONNX builder directly; it needs only crates the agent already has.
#[allow(dead_code)]
#[path = "../../tests/src/onnx.rs"]
mod onnx;

use onnx::{Formula, ModelSpec};

fn per_call(iterations: u32, mut f: impl FnMut()) -> Duration {
    // Warm caches and tract's lazily initialised kernels first.
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed() / iterations
}

fn main() -> anyhow::Result<()> {
    let spec = ModelSpec {
        name: "timing".into(),
        version: "1".into(),
        training_data: None,
        features: vec![
            "cpu_utilisation".into(),
            "inlet_celsius".into(),
            "cpu0_celsius".into(),
            "cpu1_celsius".into(),
        ],
        ranges: vec![
            ("inlet_celsius".into(), [10.0, 40.0]),
            ("cpu0_celsius".into(), [20.0, 100.0]),
            ("cpu1_celsius".into(), [20.0, 100.0]),
        ],
        defaults: vec![("inlet_celsius".into(), 25.0)],
        output: "watts".into(),
        formula: Formula {
            bias: 80.0,
            power_coeff: 170.0,
            power_column: 0,
            exponent: 0.8,
            linear: vec![0.0, 12.0, 6.0, 6.0],
        },
        omit_keys: Vec::new(),
        rank1_output: false,
    };
    let dir = tempfile::TempDir::new()?;
    let path = dir.path().join("timing.onnx");
    spec.write(&path)?;

    let load = |_: ()| PowerModel::load(&path, &ModelOverrides::default(), NodeScale::default());
    let mut model = load(())?;
    let load_time = per_call(20, || model = load(()).expect("loaded once already"));

    let conditions = Conditions {
        utilisation: 0.42,
        inlet_celsius: Some(27.0),
        cpu_celsius: vec![Some(64.0), Some(61.0)],
    };
    let raw = |u: f64| [u, 27.0, 64.0, 61.0];

    let predict = per_call(100_000, || {
        black_box(model.predict(black_box(&conditions)).expect("valid model"));
    });
    let predict_baseline = per_call(100_000, || {
        black_box(spec.expected(black_box(&raw(0.42))));
    });
    let curve = per_call(20_000, || {
        black_box(
            model
                .curve(black_box(&conditions), DEFAULT_CURVE_POINTS)
                .expect("valid model"),
        );
    });
    let curve_baseline = per_call(20_000, || {
        let last = (DEFAULT_CURVE_POINTS - 1) as f64;
        let watts: Vec<f64> = (0..DEFAULT_CURVE_POINTS)
            .map(|i| spec.expected(&raw(i as f64 / last)))
            .collect();
        black_box(wattwise_core::PowerCurve::new(watts).expect("valid curve"));
    });

    println!("load (parse, optimise, probe 101 points): {load_time:?}");
    println!(
        "predict (1 row):    {predict:?} per call; closed form in Rust {predict_baseline:?} ({:.0}x)",
        predict.as_secs_f64() / predict_baseline.as_secs_f64()
    );
    println!(
        "curve ({DEFAULT_CURVE_POINTS} rows):   {curve:?} per call; closed form in Rust {curve_baseline:?} ({:.1}x)",
        curve.as_secs_f64() / curve_baseline.as_secs_f64()
    );
    Ok(())
}
