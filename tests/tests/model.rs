//! The agent's power model against real ONNX files written by `wattwise_testenv::onnx`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use wattwise_agent::model::{
    Conditions, Feature, ModelError, ModelOverrides, ModelWarning, NodeScale, OutputKind,
    PowerModel,
};
use wattwise_testenv::onnx::{write_garbage, write_linear_model, Formula, ModelSpec};

fn write(dir: &TempDir, name: &str, spec: &ModelSpec) -> PathBuf {
    let path = dir.path().join(name);
    spec.write(&path).unwrap();
    path
}

fn load(path: &Path) -> Result<PowerModel, ModelError> {
    PowerModel::load(path, &ModelOverrides::default(), NodeScale::default())
}

fn at(utilisation: f64, inlet: Option<f64>) -> Conditions {
    Conditions {
        utilisation,
        inlet_celsius: inlet,
        cpu_celsius: Vec::new(),
    }
}

fn assert_close(got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
        "got {got}, want {want}"
    );
}

/// Inputs with ranges on the temperatures and a concave utilisation term, like a fitted model.
fn concave_spec() -> ModelSpec {
    ModelSpec {
        name: "generic".into(),
        version: "2026.11".into(),
        training_data: Some("https://example.org/specpower".into()),
        features: vec![
            "inlet_celsius".into(),
            "cpu_utilisation".into(),
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
            power_column: 1,
            exponent: 0.8,
            linear: vec![12.0, 0.0, 6.0, 6.0],
        },
        omit_keys: Vec::new(),
        rank1_output: false,
    }
}

#[test]
fn loads_and_reports_metadata() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "generic.onnx", &concave_spec());
    let model = load(&path).unwrap();
    let info = model.info();
    assert_eq!(info.name, "generic");
    assert_eq!(info.version, "2026.11");
    assert_eq!(
        info.training_data.as_deref(),
        Some("https://example.org/specpower")
    );
    assert_eq!(
        info.features,
        [
            Feature::InletCelsius,
            Feature::CpuUtilisation,
            Feature::CpuCelsius(0),
            Feature::CpuCelsius(1)
        ]
    );
    assert_eq!(info.output, OutputKind::Watts);
    assert!(model.warnings().is_empty(), "{:?}", model.warnings());
}

#[test]
fn predict_is_the_closed_form() {
    let dir = TempDir::new().unwrap();
    let spec = concave_spec();
    let model = load(&write(&dir, "generic.onnx", &spec)).unwrap();
    for (u, inlet, cpu0, cpu1) in [
        (0.0, 18.0, 35.0, 40.0),
        (0.37, 27.5, 61.0, 58.0),
        (1.0, 35.0, 90.0, 88.0),
    ] {
        let c = Conditions {
            utilisation: u,
            inlet_celsius: Some(inlet),
            cpu_celsius: vec![Some(cpu0), Some(cpu1)],
        };
        assert_close(
            model.predict(&c).unwrap(),
            spec.expected(&[inlet, u, cpu0, cpu1]),
        );
    }
}

#[test]
fn curve_has_the_requested_points_each_equal_to_predict() {
    let dir = TempDir::new().unwrap();
    let spec = concave_spec();
    let model = load(&write(&dir, "generic.onnx", &spec)).unwrap();
    let mut c = Conditions {
        utilisation: 0.9, // ignored by curve()
        inlet_celsius: Some(30.0),
        cpu_celsius: vec![Some(70.0), Some(65.0)],
    };
    let curve = model.curve(&c, 101).unwrap();
    assert_eq!(curve.points().len(), 101);
    for (i, &w) in curve.points().iter().enumerate() {
        c.utilisation = i as f64 / 100.0;
        assert_close(w, model.predict(&c).unwrap());
        assert_close(w, spec.expected(&[30.0, c.utilisation, 70.0, 65.0]));
    }
    // Other sizes run on the same plan, before and after the default one.
    assert_eq!(model.curve(&c, 2).unwrap().points().len(), 2);
    assert_eq!(model.curve(&c, 1001).unwrap().points().len(), 1001);
    assert_close(
        model.curve(&c, 101).unwrap().idle_watts(),
        curve.idle_watts(),
    );
}

#[test]
fn a_rank1_output_works_too() {
    let dir = TempDir::new().unwrap();
    let spec = ModelSpec {
        rank1_output: true,
        ..ModelSpec::linear(100.0, 300.0, 2.0)
    };
    let model = load(&write(&dir, "rank1.onnx", &spec)).unwrap();
    assert_close(
        model.predict(&at(0.5, Some(30.0))).unwrap(),
        100.0 + 100.0 + 10.0,
    );
    assert_eq!(
        model
            .curve(&at(0.0, Some(30.0)), 101)
            .unwrap()
            .points()
            .len(),
        101
    );
}

#[test]
fn linear_helper_and_defaults_for_missing_sensors() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("linear.onnx");
    write_linear_model(&path, 100.0, 300.0, 2.0).unwrap();
    let model = load(&path).unwrap();
    assert_close(model.predict(&at(0.0, Some(25.0))).unwrap(), 100.0);
    assert_close(model.predict(&at(1.0, Some(35.0))).unwrap(), 320.0);
    // No inlet reading (or a non-finite one): the metadata default of 25 °C.
    assert_close(model.predict(&at(0.5, None)).unwrap(), 200.0);
    assert_close(model.predict(&at(0.5, Some(f64::NAN))).unwrap(), 200.0);
    // Utilisation is clamped to the curve's domain.
    assert_close(model.predict(&at(1.2, Some(25.0))).unwrap(), 300.0);
}

#[test]
fn fraction_of_peak_is_scaled_by_the_configured_peak() {
    let dir = TempDir::new().unwrap();
    let spec = ModelSpec {
        output: "fraction_of_peak".into(),
        features: vec!["cpu_utilisation".into(), "idle_over_peak".into()],
        defaults: Vec::new(),
        // P / P_peak = r + (1 − r) · u, r = idle / peak.
        formula: Formula {
            bias: 0.0,
            power_coeff: 0.0,
            power_column: 0,
            exponent: 1.0,
            linear: vec![1.0, 1.0],
        },
        ..ModelSpec::linear(0.0, 0.0, 0.0)
    };
    // (u + r is not the physical formula, but it makes the scaling easy to read.)
    let path = write(&dir, "fraction.onnx", &spec);
    let scale = NodeScale {
        idle_watts: Some(100.0),
        peak_watts: Some(400.0),
    };
    let model = PowerModel::load(&path, &ModelOverrides::default(), scale).unwrap();
    assert_eq!(model.info().output, OutputKind::FractionOfPeak);
    assert_close(model.predict(&at(0.5, None)).unwrap(), (0.5 + 0.25) * 400.0);
    let curve = model.curve(&at(0.0, None), 101).unwrap();
    assert_close(curve.idle_watts(), 100.0);
    assert_close(curve.peak_watts(), 500.0);

    let err = load(&path).unwrap_err();
    assert!(matches!(err, ModelError::Scale { .. }), "{err:?}");
    assert!(err.to_string().contains("peak_watts"), "{err}");
    assert!(err.to_string().contains("fraction.onnx"), "{err}");
}

#[test]
fn a_temperature_without_reading_or_default_is_an_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let model = load(&write(&dir, "generic.onnx", &concave_spec())).unwrap();
    let c = Conditions {
        utilisation: 0.5,
        inlet_celsius: None,
        cpu_celsius: vec![Some(60.0)],
    };
    for result in [model.predict(&c).map(drop), model.curve(&c, 101).map(drop)] {
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Input {
                    feature: Feature::CpuCelsius(1),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("cpu1_celsius"), "{err}");
        assert!(err.to_string().contains("generic.onnx"), "{err}");
    }
}

#[test]
fn overrides_replace_inputs_ranges_and_defaults() {
    let dir = TempDir::new().unwrap();
    // The file says its second column is the inlet (fed raw), but this site wires it to CPU 0,
    // normalised over 30..90 °C, defaulting to 60 °C.
    let mut spec = ModelSpec::linear(100.0, 300.0, 0.0);
    spec.formula.linear[1] = 20.0;
    let path = write(&dir, "linear.onnx", &spec);
    let overrides = ModelOverrides {
        inputs: Some(vec!["cpu_utilisation".into(), "cpu0_celsius".into()]),
        input_ranges: Some(BTreeMap::from([("cpu0_celsius".into(), [30.0, 90.0])])),
        input_defaults: Some(BTreeMap::from([("cpu0_celsius".into(), 60.0)])),
    };
    let model = PowerModel::load(&path, &overrides, NodeScale::default()).unwrap();
    assert_eq!(
        model.info().features,
        [Feature::CpuUtilisation, Feature::CpuCelsius(0)]
    );
    let c = Conditions {
        utilisation: 0.5,
        inlet_celsius: Some(99.0),
        cpu_celsius: vec![Some(75.0)],
    };
    // x = (75 − 30) / 60 = 0.75 in the inlet's column.
    let want = f64::from(spec.formula.bias) + 200.0 * 0.5 + 20.0 * 0.75;
    assert_close(model.predict(&c).unwrap(), want);
    let c = Conditions {
        cpu_celsius: vec![None],
        ..c
    };
    assert_close(
        model.predict(&c).unwrap(),
        f64::from(spec.formula.bias) + 200.0 * 0.5 + 20.0 * 0.5,
    );

    let bad = ModelOverrides {
        inputs: Some(vec!["cpu_utilisation".into(), "gpu_celsius".into()]),
        ..ModelOverrides::default()
    };
    let err = PowerModel::load(&path, &bad, NodeScale::default()).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnknownFeature { name, .. } if name == "gpu_celsius"),
        "{err:?}"
    );
    assert!(err.to_string().contains("model.overrides.inputs"), "{err}");
}

/// Loads `path` expecting an error; checks it names the file and contains `needle`.
fn load_error(path: &Path, needle: &str) -> ModelError {
    let err = load(path).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(needle), "{needle:?} not in {text}");
    err
}

#[test]
fn missing_file_and_garbage_are_read_and_format_errors() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("absent.onnx");
    assert!(matches!(
        load_error(&missing, "cannot read"),
        ModelError::Read { .. }
    ));
    let garbage = dir.path().join("garbage.onnx");
    write_garbage(&garbage).unwrap();
    assert!(matches!(
        load_error(&garbage, "not an ONNX model"),
        ModelError::NotOnnx { .. }
    ));
}

#[test]
fn missing_or_invalid_metadata_names_the_key() {
    let dir = TempDir::new().unwrap();
    for key in [
        "wattwise.name",
        "wattwise.version",
        "wattwise.inputs",
        "wattwise.output",
    ] {
        let spec = ModelSpec {
            omit_keys: vec![key.into()],
            ..ModelSpec::linear(100.0, 300.0, 0.0)
        };
        let err = load_error(&write(&dir, "m.onnx", &spec), key);
        assert!(matches!(err, ModelError::MissingMetadata { .. }), "{err:?}");
    }
    let spec = ModelSpec {
        output: "kilowatts".into(),
        ..ModelSpec::linear(100.0, 300.0, 0.0)
    };
    let err = load_error(&write(&dir, "m.onnx", &spec), "wattwise.output");
    assert!(matches!(err, ModelError::InvalidMetadata { .. }), "{err:?}");
    let spec = ModelSpec {
        features: vec!["cpu_utilisation".into(), "outlet_celsius".into()],
        defaults: Vec::new(),
        ..ModelSpec::linear(100.0, 300.0, 0.0)
    };
    let err = load_error(&write(&dir, "m.onnx", &spec), "outlet_celsius");
    assert!(matches!(err, ModelError::UnknownFeature { .. }), "{err:?}");
}

#[test]
fn a_wrong_input_width_is_a_shape_mismatch() {
    let dir = TempDir::new().unwrap();
    let mut spec = ModelSpec::linear(100.0, 300.0, 0.0);
    spec.formula.linear.push(1.0); // three columns in the graph, two features in metadata
    let err = load_error(&write(&dir, "wide.onnx", &spec), "[N, 2]");
    match err {
        ModelError::Shape { found, .. } => assert_eq!(found, "[N, 3]"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn nan_and_negative_outputs_are_refused_at_the_probe_point() {
    let dir = TempDir::new().unwrap();
    let mut nan = ModelSpec::linear(100.0, 300.0, 0.0);
    nan.formula.bias = f32::NAN;
    let err = load_error(&write(&dir, "nan.onnx", &nan), "not a finite number");
    assert!(matches!(err, ModelError::BadOutput { .. }), "{err:?}");
    assert!(err.to_string().contains("cpu_utilisation=0"), "{err}");

    // Negative below 20 % load only: the probe names the first bad point.
    let negative = ModelSpec::linear(-50.0, 200.0, 0.0);
    let err = load_error(&write(&dir, "negative.onnx", &negative), "negative");
    match &err {
        ModelError::BadOutput { watts, .. } => assert_close(*watts, -50.0),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("cpu_utilisation=0, inlet_celsius=25"),
        "{err}"
    );
}

#[test]
fn power_falling_with_load_loads_with_a_warning() {
    let dir = TempDir::new().unwrap();
    let spec = ModelSpec::linear(300.0, 100.0, 0.0);
    let model = load(&write(&dir, "falling.onnx", &spec)).unwrap();
    // The inlet has no range, so all probe levels are its default: one probe curve, one warning.
    assert_eq!(model.warnings().len(), 1, "{:?}", model.warnings());
    let ModelWarning::FallsWithLoad {
        previous_max,
        tolerance,
        ..
    } = &model.warnings()[0];
    assert_close(*previous_max, 300.0);
    assert_close(*tolerance, 3.0);
    // Predictions work; curves are refused exactly as the scheduler would refuse them.
    assert_close(model.predict(&at(1.0, None)).unwrap(), 100.0);
    let err = model.curve(&at(0.0, None), 101).unwrap_err();
    assert!(matches!(err, ModelError::Curve { .. }), "{err:?}");

    // A one-watt wobble is within tolerance: no warning.
    let wobble = ModelSpec::linear(100.0, 99.5, 0.0);
    assert!(load(&write(&dir, "flat.onnx", &wobble))
        .unwrap()
        .warnings()
        .is_empty());
}

#[test]
fn the_model_is_usable_from_several_threads() {
    let dir = TempDir::new().unwrap();
    let model = std::sync::Arc::new(load(&write(&dir, "generic.onnx", &concave_spec())).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let model = model.clone();
            std::thread::spawn(move || {
                let c = Conditions {
                    utilisation: 0.25 * t as f64,
                    inlet_celsius: Some(25.0),
                    cpu_celsius: vec![Some(60.0), Some(60.0)],
                };
                for _ in 0..50 {
                    let single = model.predict(&c).unwrap();
                    let curve = model.curve(&c, 101).unwrap();
                    assert_close(single, curve.points()[25 * t]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
