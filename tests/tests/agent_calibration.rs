//! The agent's online calibration end to end: the real agent runs the shipped generic model
//! (models/generic.onnx, nothing configured about the node) against a real ipmi_sim BMC whose
//! DCMI power follows a SPECpower server the model was not trained on (models/held_out.csv), while
//! the test drives utilisation through the agent's CPU file. Reports are read over gRPC
//! (`NodePower/GetReport`) and /metrics.
//!
//! Also here, in process: the `wattwise.default_peak_watts` scale the generic model starts from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use tract_onnx::pb as onnx;
use wattwise_agent::calibrator::store::StateFile;
use wattwise_agent::model::calibration::DEFAULT_MEMORY_SAMPLES;
use wattwise_agent::model::{
    Conditions, ModelError, ModelOverrides, NodeScale, PeakSource, PowerModel,
};
use wattwise_proto::v1 as pb;
use wattwise_proto::v1::node_power_client::NodePowerClient;
use wattwise_testenv::agent::AgentProcess;
use wattwise_testenv::bmc::{Bmc, BmcSpec};
use wattwise_testenv::drive::{set_dcmi_power, set_utilisation};
use wattwise_testenv::onnx::{Formula, ModelSpec};
use wattwise_testenv::process::wait_until;
use wattwise_testenv::specpower::{self, HeldOutServer};

/// Apple Xserve3,1 (2009, 2 sockets): 173 W idle, 334 W at full load. The generic model with
/// nothing configured (260 W peak, idle/peak 0.272) is 22–59 % off it. Not every held-out
/// server can be followed within 5 % by an affine correction of the generic model's shape (the
/// accuracy report in models/README.md has the spread over all of them); this one can, and it is
/// the one of those the uncalibrated model misses most.
const SERVER: &str = "power_ssj2008-20090316-00130";
/// The agent's shortest interval: one calibration sample per 100 ms.
const INTERVAL: &str = "100ms";
/// Samples taken at each observed level: a level counts as known from 30 (the accuracy report
/// takes 60 noise-free ones; the agent also gets a step sample now and then, so a few more).
const SAMPLES_PER_LEVEL: f64 = 40.0;
const OBSERVED: [usize; 3] = [0, 4, 8];
const UNOBSERVED: [usize; 8] = [1, 2, 3, 5, 6, 7, 9, 10];
/// The BMC's temperatures (Dell-like layout): inlet 22 °C is below the model's 23 °C reference
/// and it ignores CPU temperatures, so its curve is the same with these readings or its
/// defaults (what an agent without a BMC reading uses).
const INLET: f64 = 22.0;
const CPU: [f64; 2] = [48.0, 51.0];

fn generic_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/generic.onnx")
}

/// The generic model's own curve at the BMC's temperatures, computed in this process.
fn uncalibrated_curve() -> Vec<f64> {
    let model = PowerModel::load(
        &generic_model(),
        &ModelOverrides::default(),
        NodeScale::default(),
    )
    .unwrap();
    let conditions = Conditions {
        utilisation: 0.0,
        inlet_celsius: Some(INLET),
        cpu_celsius: CPU.iter().copied().map(Some).collect(),
    };
    model.curve(&conditions, 101).unwrap().into_points()
}

/// A fake node: a Dell-like BMC with DCMI, the agent's CPU file, and a directory for the agent's
/// calibration state that outlives agent processes.
struct Node {
    bmc: Bmc,
    server: HeldOutServer,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start(spec: BmcSpec) -> Node {
        let server = specpower::held_out(SERVER).unwrap();
        let bmc = Bmc::start(spec).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node { bmc, server, dir };
        node.drive(0.0);
        node
    }

    fn cpu_file(&self) -> PathBuf {
        self.dir.path().join("cpu")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("state/calibration.json")
    }

    /// Utilisation first, then the meter: a report never pairs the new meter reading with the
    /// old utilisation as if it were steady.
    fn drive(&mut self, utilisation: f64) {
        set_utilisation(&self.cpu_file(), utilisation).unwrap();
        if self.bmc.spec().dcmi_watts.is_some() {
            set_dcmi_power(&mut self.bmc, self.server.watts_at(utilisation)).unwrap();
        }
    }

    async fn agent(&self) -> AgentProcess {
        self.agent_with("").await
    }

    /// [`Node::agent`] with `extra` YAML appended to its configuration.
    async fn agent_with(&self, extra: &str) -> AgentProcess {
        let yaml = format!(
            "node_name: node-cal\ninterval: {INTERVAL}\n\
             model: {{path: \"{model}\"}}\n\
             cpu: {{source: file, file: \"{cpu}\", capacity_millicores: 16000}}\n\
             bmc: {{mode: lan, host: 127.0.0.1, port: {port}, username: {user}, \
             password_env: BMC_PASSWORD, timeout: 500ms}}\n{extra}",
            model = generic_model().display(),
            cpu = self.cpu_file().display(),
            port = self.bmc.port(),
            user = self.bmc.username(),
        );
        let state = self.state_path();
        AgentProcess::start(
            &yaml,
            &[
                ("BMC_PASSWORD", self.bmc.password()),
                ("WATTWISE_CALIBRATION_STATE", state.to_str().unwrap()),
            ],
        )
        .await
        .unwrap()
    }
}

/// The Dell-like layout with its temperatures at [`INLET`] and [`CPU`] (its defaults already).
fn dell_like() -> BmcSpec {
    let spec = BmcSpec::dell_like();
    assert_eq!(spec.sensor("Inlet Temp").unwrap().value, INLET);
    spec
}

async fn report(agent: &AgentProcess) -> pb::NodeReport {
    let mut client = NodePowerClient::connect(format!("http://{}", agent.grpc_addr()))
        .await
        .unwrap();
    client
        .get_report(pb::GetReportRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn calibration(report: &pb::NodeReport) -> pb::CalibrationState {
    pb::CalibrationState::try_from(report.model.as_ref().unwrap().calibration).unwrap()
}

fn curve(report: &pb::NodeReport) -> Vec<f64> {
    report.curve.as_ref().unwrap().watts.clone()
}

async fn metric(agent: &AgentProcess, series: &str) -> Option<f64> {
    agent.metric(series).await.unwrap()
}

/// Holds `utilisation` until the agent has fed `samples` more measurements to its calibration.
async fn hold(node: &mut Node, agent: &AgentProcess, utilisation: f64, samples: f64) {
    node.drive(utilisation);
    let series = "wattwise_calibration_samples_total";
    let start = metric(agent, series).await.unwrap_or(0.0);
    wait_until(
        &format!("{samples} calibration samples at {utilisation}"),
        Duration::from_secs(60),
        || async { Ok(metric(agent, series).await.unwrap_or(0.0) >= start + samples) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_tail(40)));
}

/// |predicted − published| / published at load level `level` (0..=10), percent.
fn error_percent(curve: &[f64], server: &HeldOutServer, level: usize) -> f64 {
    let published = server.watts[level];
    (curve[level * 10] - published).abs() / published * 100.0
}

#[tokio::test]
async fn calibration_learns_a_held_out_server_and_survives_a_restart() {
    let mut node = Node::start(dell_like()).await;
    let uncalibrated = uncalibrated_curve();
    let agent = node.agent().await;
    let log = agent.log_tail(200);
    assert!(
        log.contains("uncalibrated scale; calibration will learn it"),
        "the default peak is flagged:\n{log}"
    );
    assert_eq!(
        metric(
            &agent,
            "wattwise_model_info{name=\"generic\",version=\"2026.11.0\",output=\"fraction_of_peak\",peak_source=\"model_default\"}"
        )
        .await,
        Some(1.0)
    );
    let first = report(&agent).await;
    assert_ne!(calibration(&first), pb::CalibrationState::Calibrated);

    for level in OBSERVED {
        hold(&mut node, &agent, level as f64 / 10.0, SAMPLES_PER_LEVEL).await;
    }
    let calibrated = report(&agent).await;
    assert_eq!(
        calibration(&calibrated),
        pb::CalibrationState::Calibrated,
        "{}",
        agent.log_tail(20)
    );
    let watts = curve(&calibrated);

    let gain = metric(&agent, "wattwise_calibration_gain").await.unwrap();
    let offset = metric(&agent, "wattwise_calibration_offset_watts")
        .await
        .unwrap();
    // The server draws 100 W more than the model at idle and 74 W more at full load.
    assert!(offset > 50.0, "a = {gain}, b = {offset} W");
    assert_eq!(
        metric(&agent, "wattwise_calibration_state{state=\"calibrated\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&agent, "wattwise_calibration_state{state=\"uncalibrated\"}").await,
        Some(0.0)
    );
    assert!(metric(&agent, "wattwise_calibration_mape_percent")
        .await
        .is_some());
    // At 80 % the model alone predicts 213 W against the meter's 293 W; the error the agent
    // exports is the calibrated prediction's.
    let error = metric(&agent, "wattwise_model_error_watts").await.unwrap();
    let uncalibrated_error = metric(&agent, "wattwise_model_uncalibrated_error_watts")
        .await
        .unwrap();
    assert!(
        (uncalibrated_error - (uncalibrated[80] - 293.0)).abs() < 1.0,
        "{uncalibrated_error}"
    );
    assert!(
        error.abs() < 0.1 * uncalibrated_error.abs(),
        "{error} vs {uncalibrated_error}"
    );
    let mape = calibrated.model.as_ref().unwrap().calibration_mape_percent;
    assert!(mape.is_some_and(|m| m < 5.0), "{mape:?}");

    println!(
        "{} ({}): a = {gain:.4}, b = {offset:.2} W, MAPE {:.2} %",
        node.server.name,
        node.server.result_id,
        mape.unwrap()
    );
    println!("level  published  model     err     calibrated  err");
    let (mut worst_model, mut worst_calibrated) = (0.0f64, 0.0f64);
    for level in 0..=10 {
        let (m, c) = (
            error_percent(&uncalibrated, &node.server, level),
            error_percent(&watts, &node.server, level),
        );
        println!(
            "{:>4}%  {:>8.1}  {:>7.1}  {:>5.1} %  {:>9.1}  {:>4.1} %{}",
            level * 10,
            node.server.watts[level],
            uncalibrated[level * 10],
            m,
            watts[level * 10],
            c,
            if OBSERVED.contains(&level) {
                "  (observed)"
            } else {
                ""
            }
        );
        if UNOBSERVED.contains(&level) {
            worst_model = worst_model.max(m);
            worst_calibrated = worst_calibrated.max(c);
        }
    }
    assert!(
        worst_calibrated < 5.0,
        "unobserved levels within 5 % of the published watts: worst {worst_calibrated:.2} %"
    );
    assert!(
        worst_model > 3.0 * worst_calibrated && worst_model > 5.0,
        "the model alone was worse: {worst_model:.1} % vs {worst_calibrated:.2} %"
    );

    // The meter goes away (the BMC dies), so nothing more is learnt; the fit stays applied.
    node.bmc.kill();
    wait_until(
        "the power reading goes stale",
        Duration::from_secs(10),
        || {
            let agent = &agent;
            async move {
                let r = report(agent).await;
                Ok(r.sensors
                    .iter()
                    .any(|s| s.role == "power" && s.status == pb::SensorStatus::Stale as i32))
            }
        },
    )
    .await
    .unwrap();
    let before_restart = report(&agent).await;
    let samples = metric(&agent, "wattwise_calibration_samples_total")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = report(&agent).await;
    assert_eq!(
        metric(&agent, "wattwise_calibration_samples_total").await,
        Some(samples),
        "no samples without a meter"
    );
    assert_eq!(calibration(&kept), pb::CalibrationState::Calibrated);
    assert_eq!(curve(&kept), curve(&before_restart));
    // The fit is frozen now: the report's curve is exactly the exported correction applied to
    // the model's own curve.
    let gain = metric(&agent, "wattwise_calibration_gain").await.unwrap();
    let offset = metric(&agent, "wattwise_calibration_offset_watts")
        .await
        .unwrap();
    for (i, (w, m)) in curve(&kept).iter().zip(&uncalibrated).enumerate() {
        let expected = gain * m + offset;
        assert!(
            (w - expected).abs() <= 1e-9 * expected,
            "{i}: {w} vs {expected}"
        );
    }

    // Restart: SIGTERM saves the fit; the new process restores it before its first report,
    // and without a meter it learns nothing new.
    let mut agent = agent;
    agent.stop();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.state_path()).unwrap()).unwrap();
    assert_eq!(saved["node_name"], "node-cal");
    assert_eq!(saved["model_name"], "generic");
    assert_eq!(saved["samples"].as_f64(), Some(samples));
    // The file holds the load levels; the fit they give is the one the agent exported.
    let file: StateFile = serde_json::from_value(saved.clone()).unwrap();
    let stored = file.estimator(DEFAULT_MEMORY_SAMPLES).unwrap();
    assert_eq!(stored.gain(), gain);
    assert_eq!(stored.offset_watts(), offset);
    for level in OBSERVED {
        let n = saved["bins"][level * 2]["n"].as_u64().unwrap();
        assert!(n >= 30, "{} % holds {n} samples", level * 10);
    }
    let restarted = node.agent().await;
    let first = report(&restarted).await;
    assert_eq!(
        calibration(&first),
        pb::CalibrationState::Calibrated,
        "{}",
        restarted.log_tail(30)
    );
    for (i, (a, b)) in curve(&first).iter().zip(curve(&kept).iter()).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * b,
            "point {i}: {a} after the restart, {b} before"
        );
    }
    assert_eq!(
        metric(&restarted, "wattwise_calibration_gain").await,
        Some(gain)
    );
    assert_eq!(
        metric(&restarted, "wattwise_calibration_samples_total").await,
        Some(0.0)
    );
    assert!(restarted.log_tail(200).contains("calibration restored"));
}

#[tokio::test]
async fn without_a_power_reading_predictions_stay_uncalibrated() {
    // Neither DCMI nor a power sensor in the SDR: nothing measures the node's watts.
    let mut spec = dell_like();
    spec.dcmi_watts = None;
    spec.sensors.retain(|s| s.name != "Pwr Consumption");
    let mut node = Node::start(spec).await;
    node.drive(0.4);
    let agent = node.agent().await;
    wait_until("the BMC's sensors read", Duration::from_secs(10), || {
        let agent = &agent;
        async move {
            let r = report(agent).await;
            let power_missing = r
                .sensors
                .iter()
                .any(|s| s.role == "power" && s.status == pb::SensorStatus::Missing as i32);
            Ok(power_missing && r.temperatures.len() == 3)
        }
    })
    .await
    .unwrap();
    // Several intervals with readings: still nothing to calibrate against.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = report(&agent).await;
    assert_eq!(calibration(&r), pb::CalibrationState::Uncalibrated);
    assert_eq!(r.model.as_ref().unwrap().calibration_mape_percent, None);
    assert_eq!(
        r.measured.as_ref().unwrap().source,
        pb::ReadingSource::None as i32
    );
    assert_eq!(
        curve(&r),
        uncalibrated_curve(),
        "the model's own predictions"
    );
    assert_eq!(
        metric(&agent, "wattwise_calibration_state{state=\"uncalibrated\"}").await,
        Some(1.0)
    );
    assert_eq!(metric(&agent, "wattwise_calibration_gain").await, Some(1.0));
    assert_eq!(
        metric(&agent, "wattwise_calibration_offset_watts").await,
        Some(0.0)
    );
    assert_eq!(
        metric(&agent, "wattwise_calibration_samples_total").await,
        Some(0.0)
    );
    assert_eq!(
        metric(&agent, "wattwise_calibration_mape_percent").await,
        None
    );
    let log = agent.log_tail(300);
    assert_eq!(
        log.matches("no measured watts: reporting uncalibrated predictions")
            .count(),
        1,
        "said once:\n{log}"
    );
    let mut agent = agent;
    agent.stop();
    assert!(
        !node.state_path().exists(),
        "nothing learnt, nothing written"
    );
}

#[tokio::test]
async fn a_corrupt_state_file_is_kept_aside_and_calibration_starts_fresh() {
    let mut node = Node::start(dell_like()).await;
    let state = node.state_path();
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let garbage = "{\"format\": \"wattwise.calibration/v2\", \"bins\": [{\"n\": 1, \"model\": 0.";
    std::fs::write(&state, garbage).unwrap();
    node.drive(0.5);
    let agent = node.agent().await;

    let log = agent.log_tail(200);
    let warning = log
        .lines()
        .find(|l| l.contains("calibration state file is unusable"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(state.to_str().unwrap()),
        "names the file: {warning}"
    );
    assert!(warning.contains("EOF"), "and the problem: {warning}");
    let aside = state.with_file_name("calibration.json.rejected");
    assert_eq!(
        std::fs::read_to_string(&aside).unwrap(),
        garbage,
        "kept aside"
    );

    // A fresh fit: it learns from the meter from its first samples on.
    hold(&mut node, &agent, 0.5, 10.0).await;
    let r = report(&agent).await;
    assert_eq!(calibration(&r), pb::CalibrationState::Calibrating);
    let gain = metric(&agent, "wattwise_calibration_gain").await.unwrap();
    assert!(gain > 1.0, "moving toward the meter: {gain}");
    let mut agent = agent;
    agent.stop();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(saved["samples"].as_u64().unwrap() >= 10, "{saved}");
    assert_eq!(saved["format"], "wattwise.calibration/v2");
}

#[tokio::test]
async fn an_unwritable_state_directory_keeps_the_agent_reporting_and_says_why() {
    let mut node = Node::start(dell_like()).await;
    let state = node.state_path();
    // The state directory's place is taken by a file: every write fails, even as root.
    let blocker = state.parent().unwrap().to_path_buf();
    std::fs::write(&blocker, "").unwrap();
    let agent = node.agent_with("calibration: {save_interval: 1s}\n").await;
    let saves = |result: &'static str| {
        let agent = &agent;
        async move {
            metric(
                agent,
                &format!("wattwise_calibration_saves_total{{result=\"{result}\"}}"),
            )
            .await
            .unwrap_or(0.0)
        }
    };

    hold(&mut node, &agent, 0.5, 10.0).await;
    wait_until("a failed save", Duration::from_secs(30), || async {
        Ok(saves("failed").await >= 1.0)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_tail(40)));
    let log = agent.log_tail(200);
    let warning = log
        .lines()
        .find(|l| l.contains("cannot save the calibration state"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(state.to_str().unwrap()),
        "names the file: {warning}"
    );
    assert!(
        warning.contains("(os error "),
        "and the OS error: {warning}"
    );
    assert_eq!(saves("ok").await, 0.0);
    // Still reporting, with what it learnt kept in memory.
    let before = metric(&agent, "wattwise_reports_total").await.unwrap();
    let r = report(&agent).await;
    assert_eq!(calibration(&r), pb::CalibrationState::Calibrating);
    wait_until("more reports", Duration::from_secs(10), || async {
        Ok(metric(&agent, "wattwise_reports_total").await.unwrap() > before + 2.0)
    })
    .await
    .unwrap();

    // The directory becomes writable: the next retry saves what was learnt, without new samples.
    std::fs::remove_file(&blocker).unwrap();
    wait_until(
        "a save once the directory is back",
        Duration::from_secs(30),
        || async { Ok(saves("ok").await >= 1.0) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_tail(40)));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(saved["samples"].as_u64().unwrap() >= 10, "{saved}");
    assert!(agent
        .log_tail(200)
        .contains("calibration state saved again"));
}

/// A generated `fraction_of_peak` model (P / P_peak = 0.3 + 0.7 u at any inlet) with
/// `wattwise.default_peak_watts` set to `default_peak`, written to `dir`.
fn fraction_model(dir: &Path, default_peak: Option<&str>) -> PathBuf {
    let spec = ModelSpec {
        output: "fraction_of_peak".into(),
        formula: Formula {
            bias: 0.3,
            power_coeff: 0.0,
            power_column: 0,
            exponent: 1.0,
            linear: vec![0.7, 0.0],
        },
        ..ModelSpec::linear(0.0, 0.0, 0.0)
    };
    let mut proto = spec.to_proto();
    if let Some(value) = default_peak {
        proto.metadata_props.push(onnx::StringStringEntryProto {
            key: "wattwise.default_peak_watts".into(),
            value: value.into(),
        });
    }
    let path = dir.join("fraction.onnx");
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    path
}

#[test]
fn a_fraction_of_peak_model_falls_back_to_its_default_peak() {
    let dir = tempfile::tempdir().unwrap();
    let none = ModelOverrides::default();
    let path = fraction_model(dir.path(), Some("250"));
    let model = PowerModel::load(&path, &none, NodeScale::default()).unwrap();
    assert_eq!(
        model.info().peak_watts,
        Some((250.0, PeakSource::ModelDefault))
    );
    let at = |u: f64| Conditions {
        utilisation: u,
        ..Conditions::default()
    };
    assert!((model.predict(&at(0.0)).unwrap() - 75.0).abs() < 1e-3);
    // S: full load at the input defaults.
    assert!(
        (model.scale_watts() - 250.0).abs() < 1e-3,
        "{}",
        model.scale_watts()
    );

    // A configured peak wins over the default.
    let configured = NodeScale {
        idle_watts: None,
        peak_watts: Some(400.0),
    };
    let model = PowerModel::load(&path, &none, configured).unwrap();
    assert_eq!(model.info().peak_watts, Some((400.0, PeakSource::Config)));
    assert!((model.scale_watts() - 400.0).abs() < 1e-3);

    // Neither: the error names both ways to give one.
    let bare = fraction_model(dir.path(), None);
    let err = PowerModel::load(&bare, &none, NodeScale::default()).unwrap_err();
    assert!(matches!(err, ModelError::Scale { .. }), "{err:?}");
    for needle in [
        "model.peak_watts",
        "wattwise.default_peak_watts",
        "fraction.onnx",
    ] {
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }

    // A bad value is a metadata error naming the key and the value.
    for bad in ["-250", "lots", "NaN"] {
        let path = fraction_model(dir.path(), Some(bad));
        match PowerModel::load(&path, &none, NodeScale::default()) {
            Err(ModelError::InvalidMetadata { key, problem, .. }) => {
                assert_eq!(key, "wattwise.default_peak_watts");
                assert!(problem.contains(bad), "{problem}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }

    // The shipped generic model starts from its default: S = 260 W.
    let generic = PowerModel::load(&generic_model(), &none, NodeScale::default()).unwrap();
    assert_eq!(
        generic.info().peak_watts,
        Some((260.0, PeakSource::ModelDefault))
    );
    assert!(
        (generic.scale_watts() - 260.0).abs() < 1e-3,
        "{}",
        generic.scale_watts()
    );
}
