//! The real wattwise-agent binary, driven through its files (CPU utilisation, energy) and read
//! through its real interfaces: grpcurl, a Prometheus that scrapes it, and a gRPC PowerReports
//! receiver standing in for the scheduler.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use wattwise_proto::v1 as pb;
use wattwise_testenv::agent::AgentProcess;
use wattwise_testenv::bmc::{Bmc, BmcSpec};
use wattwise_testenv::grpcurl::Grpcurl;
use wattwise_testenv::node_power::{
    get_report, role_status, role_temperatures, temperature, wait_report,
};
use wattwise_testenv::onnx::{write_garbage, write_linear_model, ModelSpec};
use wattwise_testenv::prometheus::Prometheus;
use wattwise_testenv::receiver::{self, ReportReceiver};
use wattwise_testenv::served::{check_config, workspace_binary};

const IDLE: f64 = 80.0;
const PEAK: f64 = 280.0;

/// Model, CPU and energy files in `dir`; returns the agent's YAML.
fn setup(dir: &Path, node: &str, utilisation: f64, extra: &str) -> String {
    setup_with_inlet_coeff(dir, node, utilisation, 0.0, extra)
}

/// Like [`setup`], with a model that adds `inlet_coeff` W per °C of inlet above 25 °C.
fn setup_with_inlet_coeff(
    dir: &Path,
    node: &str,
    utilisation: f64,
    inlet_coeff: f32,
    extra: &str,
) -> String {
    let model = dir.join("model.onnx");
    write_linear_model(&model, IDLE as f32, PEAK as f32, inlet_coeff).unwrap();
    std::fs::write(dir.join("util"), utilisation.to_string()).unwrap();
    format!(
        "node_name: {node}\ninterval: 250ms\n\
         model: {{path: {model}}}\n\
         cpu: {{source: file, file: {util}, capacity_millicores: 8000}}\n{extra}",
        model = model.display(),
        util = dir.join("util").display(),
    )
}

fn expected_watts(u: f64) -> f64 {
    IDLE + (PEAK - IDLE) * u
}

#[tokio::test]
async fn grpcurl_lists_and_calls_get_predict_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&setup(dir.path(), "node-g", 0.25, ""), &[])
        .await
        .unwrap();
    let grpcurl = Grpcurl::new(agent.grpc_addr()).unwrap();

    let services = grpcurl.list_services().await.unwrap();
    for s in ["wattwise.v1.NodePower", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|x| x == s), "{s} not in {services:?}");
    }

    let report = get_report(&grpcurl).await.unwrap();
    assert_eq!(report["nodeName"], "node-g");
    assert_eq!(report["cpu"]["capacityMillicores"], "8000");
    let curve: Vec<f64> = report["curve"]["watts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(curve.len(), 101);
    for (i, w) in curve.iter().enumerate() {
        let u = i as f64 / 100.0;
        assert!(
            (w - expected_watts(u)).abs() < 1e-3,
            "curve[{i}] = {w}, expected {}",
            expected_watts(u)
        );
    }
    assert_eq!(
        report["measured"]["source"], "READING_SOURCE_NONE",
        "no BMC configured"
    );
    assert_eq!(report["model"]["name"], "linear-test");

    // 2 CPUs of 8 from 25 %: +25 % of the 200 W span.
    let predicted = grpcurl
        .call(
            "wattwise.v1.NodePower/PredictMarginal",
            &json!({"cpuMillicores": [2000, 8000]}),
        )
        .await
        .unwrap();
    let p = &predicted["predictions"];
    assert!(
        (p[0]["marginalWatts"].as_f64().unwrap() - 50.0).abs() < 1e-3,
        "{predicted}"
    );
    assert_eq!(p[1]["exceedsCapacity"], true, "{predicted}");

    let watched = grpcurl
        .call_stream(
            "wattwise.v1.NodePower/WatchReports",
            &json!({}),
            Duration::from_millis(1600),
        )
        .await
        .unwrap();
    let sequences: Vec<u64> = watched
        .iter()
        .map(|r| r["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        sequences.len() >= 3,
        "a report every 250 ms, got {sequences:?}"
    );
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");

    let too_many: Vec<u64> = vec![1; 1025];
    let err = grpcurl
        .call(
            "wattwise.v1.NodePower/PredictMarginal",
            &json!({"cpuMillicores": too_many}),
        )
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("at most 1024"), "{err:#}");
}

/// How long after `since` the agent observed the first report that satisfies `check`: its own
/// `observedAt`, so the figure is the agent's latency, not grpcurl's start-up under a loaded CI.
async fn observed_after(
    grpcurl: &Grpcurl,
    since: SystemTime,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let report = wait_report(grpcurl, Duration::from_secs(5), what, check).await;
    let observed = report["observedAt"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .unwrap_or_else(|| panic!("{what}: no observedAt in {report}"));
    observed.duration_since(since).unwrap_or_default()
}

#[tokio::test]
async fn utilisation_and_energy_changes_show_within_two_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let energy = dir.path().join("energy");
    std::fs::write(&energy, "80").unwrap();
    let extra = format!(
        "energy: {{source: {{type: file, path: {}}}, hysteresis_percent: 2, interval: 250ms}}\n",
        energy.display()
    );
    let agent = AgentProcess::start(&setup(dir.path(), "node-e", 0.25, &extra), &[])
        .await
        .unwrap();
    let grpcurl = Grpcurl::new(agent.grpc_addr()).unwrap();
    wait_report(
        &grpcurl,
        Duration::from_secs(2),
        "energy level from the file",
        |r| r["energy"]["level"] == "ENERGY_LEVEL_WELL_POWERED",
    )
    .await;

    let two_intervals = Duration::from_millis(500);
    let changed = SystemTime::now();
    std::fs::write(dir.path().join("util"), "0.6").unwrap();
    let lag = observed_after(&grpcurl, changed, "utilisation from the file", |r| {
        r["cpu"]["utilisation"].as_f64() == Some(0.6)
    })
    .await;
    assert!(
        lag <= two_intervals,
        "utilisation seen {lag:?} after the change"
    );

    // 74 % is inside the hysteresis band below 75 %: the level holds; 70 % is past it.
    std::fs::write(&energy, "74").unwrap();
    let held = wait_report(&grpcurl, Duration::from_secs(2), "energy percent 74", |r| {
        r["energy"]["percent"].as_f64() == Some(74.0)
    })
    .await;
    assert_eq!(held["energy"]["level"], "ENERGY_LEVEL_WELL_POWERED");
    let changed = SystemTime::now();
    std::fs::write(&energy, "70").unwrap();
    let lag = observed_after(&grpcurl, changed, "level past the hysteresis band", |r| {
        r["energy"]["level"] == "ENERGY_LEVEL_VULNERABLE"
    })
    .await;
    // The energy source is read on its own 250 ms interval, then reported within two intervals.
    assert!(
        lag <= Duration::from_millis(250) + two_intervals,
        "energy level seen {lag:?} after the change"
    );
}

#[tokio::test]
async fn an_energy_level_expires_when_its_source_stops_answering_and_returns_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let energy = dir.path().join("energy");
    std::fs::write(&energy, "80").unwrap();
    // Read every 2 s: a reading counts for 3 intervals, 6 s.
    let extra = format!(
        "energy: {{source: {{type: file, path: {}}}, interval: 2s}}\n",
        energy.display()
    );
    let agent = AgentProcess::start(&setup(dir.path(), "node-x", 0.25, &extra), &[])
        .await
        .unwrap();
    let grpcurl = Grpcurl::new(agent.grpc_addr()).unwrap();
    let level = |r: &Value| r["energy"]["level"].clone();
    wait_report(
        &grpcurl,
        Duration::from_secs(5),
        "a level from the file",
        |r| level(r) == "ENERGY_LEVEL_WELL_POWERED",
    )
    .await;

    // A broken reading keeps the last level while it is recent: a flaky meter must not flip
    // scheduling.
    std::fs::write(&energy, "lots").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        level(&get_report(&grpcurl).await.unwrap()),
        "ENERGY_LEVEL_WELL_POWERED"
    );
    assert!(
        agent.log_tail(50).contains("\"lots\""),
        "the failure is logged with the value"
    );

    // The source is gone for good: past the max age the reports carry no level.
    std::fs::remove_file(&energy).unwrap();
    let gone = wait_report(&grpcurl, Duration::from_secs(15), "no level", |r| {
        r["energy"].is_null()
    })
    .await;
    assert!(gone["cpu"]["utilisation"].as_f64().is_some(), "{gone}");
    let log = agent.log_tail(200);
    let warning = log
        .lines()
        .find(|l| l.contains("energy reading expired"))
        .unwrap_or_else(|| panic!("no expiry warning:\n{log}"));
    assert!(
        warning.contains(&format!("file:{}", energy.display())) && warning.contains("age_seconds"),
        "the warning names the source and the age: {warning}"
    );
    let age = agent
        .metric("wattwise_energy_reading_age_seconds")
        .await
        .unwrap()
        .expect("the age of the last reading is exported");
    assert!(age > 6.0, "expired at age {age}");
    for series in ["wattwise_energy_level", "wattwise_energy_percent"] {
        assert_eq!(
            agent.metric(series).await.unwrap(),
            None,
            "{series} is not exported while no reading counts"
        );
    }
    // Still expired a while later: the warning came once, the level stays away.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(get_report(&grpcurl).await.unwrap()["energy"].is_null());
    let warnings = agent
        .log_tail(400)
        .matches("energy reading expired")
        .count();
    assert_eq!(warnings, 1, "one warning per expiry");

    // The file comes back: so does the level.
    std::fs::write(&energy, "30").unwrap();
    wait_report(&grpcurl, Duration::from_secs(10), "the level back", |r| {
        level(r) == "ENERGY_LEVEL_LOW_POWERED"
    })
    .await;
    assert!(agent.log_tail(100).contains("energy source answers again"));
    let age = agent
        .metric("wattwise_energy_reading_age_seconds")
        .await
        .unwrap()
        .unwrap();
    assert!(age <= 6.0, "a fresh reading, {age} s old");
    assert_eq!(
        agent.metric("wattwise_energy_percent").await.unwrap(),
        Some(30.0)
    );
}

#[tokio::test]
async fn prometheus_scrapes_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&setup(dir.path(), "node-p", 0.5, ""), &[])
        .await
        .unwrap();
    let text = agent.metrics_text().await.unwrap();
    for name in [
        "wattwise_predicted_watts",
        "wattwise_marginal_watts_per_core",
        "wattwise_cpu_utilisation_ratio",
        "wattwise_build_info",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let prometheus = Prometheus::start(
        &[agent.metrics_addr().to_string()],
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let predicted = prometheus
        .wait_for_sample("wattwise_predicted_watts", Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        (predicted.value - expected_watts(0.5)).abs() < 1e-3,
        "{predicted:?}"
    );
    let per_core = prometheus
        .wait_for_sample("wattwise_marginal_watts_per_core", Duration::from_secs(5))
        .await
        .unwrap();
    assert!((per_core.value - 200.0 / 8.0).abs() < 1e-3, "{per_core:?}");
    let reports = prometheus
        .wait_for_sample("wattwise_reports_total", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(reports.value >= 1.0);
}

#[tokio::test]
async fn startup_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("broken.onnx");
    std::fs::write(&garbage, b"this is not an onnx model").unwrap();
    let base = setup(dir.path(), "node-x", 0.1, "");
    let cases = [
        (
            base.replace("model.onnx", "broken.onnx"),
            garbage.display().to_string(),
        ),
        (format!("{base}intervall: 1s\n"), "intervall".to_string()),
        (
            base.replace("node_name: node-x\n", ""),
            "node_name".to_string(),
        ),
        (
            format!("{base}bmc: {{mode: lan, host: 127.0.0.1, username: u}}\n"),
            "bmc.password_env".to_string(),
        ),
    ];
    for (yaml, expected) in cases {
        let mut agent = AgentProcess::spawn(&yaml, &[]).unwrap();
        let (code, log) = agent.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert_ne!(code, 0, "exit code for {expected}");
        assert!(log.contains(&expected), "{expected:?} not named in:\n{log}");
    }
}

/// `--check-config` loads the model the way startup does: a missing or broken model fails the
/// check, naming the file, exactly as it stops a starting agent; a good one passes, and so does
/// every model the agent image ships.
#[tokio::test]
async fn check_config_loads_the_model_as_startup_does() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("model.onnx");
    let base = setup(dir.path(), "node-x", 0.1, "");
    let agent = workspace_binary("wattwise-agent").unwrap();

    let (ok, out) = check_config(&agent, &base, dir.path(), "good.yaml", &[]).unwrap();
    assert!(ok && out.contains("configuration is valid"), "{out}");
    assert!(out.contains(&good.display().to_string()), "{out}");

    let missing = dir.path().join("absent.onnx");
    let garbage = dir.path().join("garbage.onnx");
    write_garbage(&garbage).unwrap();
    let no_inputs = dir.path().join("no-inputs.onnx");
    ModelSpec {
        omit_keys: vec!["wattwise.inputs".into()],
        ..ModelSpec::linear(80.0, 280.0, 0.0)
    }
    .write(&no_inputs)
    .unwrap();
    for (model, problem) in [
        (&missing, "cannot read the file"),
        (&garbage, "not an ONNX model"),
        (&no_inputs, "wattwise.inputs"),
    ] {
        let path = model.display().to_string();
        let yaml = base.replace(&good.display().to_string(), &path);
        let (ok, out) = check_config(&agent, &yaml, dir.path(), "broken.yaml", &[]).unwrap();
        assert!(!ok, "{path} passed the check: {out}");
        assert!(!out.contains("configuration is valid"), "{out}");
        assert!(
            out.contains(&path) && out.contains(problem),
            "{path}: {out}"
        );
        let mut started = AgentProcess::spawn(&yaml, &[]).unwrap();
        let (code, log) = started.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert_ne!(code, 0, "{path} started");
        assert!(
            log.contains(&path) && log.contains(problem),
            "{path}: {log}"
        );
    }

    let shipped: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "onnx"))
            .collect();
    assert!(shipped.len() >= 2, "{shipped:?}");
    for model in shipped {
        let path = model.to_str().unwrap();
        let (ok, out) = check_config(
            &agent,
            &base,
            dir.path(),
            "shipped.yaml",
            &["--model", path],
        )
        .unwrap();
        assert!(ok && out.contains(path), "{path}: {out}");
    }
}

async fn next_report(
    rx: &mut mpsc::UnboundedReceiver<pb::NodeReport>,
    timeout: Duration,
) -> pb::NodeReport {
    receiver::next_report(rx, timeout).await.unwrap()
}

#[tokio::test]
async fn the_report_stream_reconnects_after_the_scheduler_restarts() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = ReportReceiver::start("127.0.0.1:0".parse().unwrap(), true, tx.clone())
        .await
        .unwrap();
    let addr = first.addr();
    let dir = tempfile::tempdir().unwrap();
    let extra =
        format!("scheduler: {{endpoints: [\"{addr}\"], backoff_min: 100ms, backoff_max: 1s}}\n");
    let agent = AgentProcess::start(&setup(dir.path(), "node-s", 0.3, &extra), &[])
        .await
        .unwrap();

    let before = next_report(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(before.node_name, "node-s");
    assert!(
        wattwise_core::validate(before.clone()).is_ok(),
        "the agent sends valid reports"
    );

    // The scheduler goes away: streams end, the port closes.
    first.stop().await.unwrap();
    while rx.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_millis(800)).await;
    let metrics = agent.metrics_text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "wattwise_scheduler_stream_connected{{endpoint=\"{addr}\"}} 0"
        )),
        "{metrics}"
    );

    // It comes back on the same address: the agent reconnects on its own.
    let _second = ReportReceiver::start(addr, true, tx).await.unwrap();
    let after = next_report(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(
        after.agent_instance, before.agent_instance,
        "same agent process"
    );
    assert!(
        after.sequence > before.sequence,
        "{} then {}",
        before.sequence,
        after.sequence
    );

    // With the stream idle except for the 1 s interval the ack asked for, reports keep coming.
    let again = next_report(&mut rx, Duration::from_secs(3)).await;
    assert!(again.sequence >= after.sequence);
}

#[tokio::test]
async fn rejected_reports_are_counted() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let rejecting = ReportReceiver::start("127.0.0.1:0".parse().unwrap(), false, tx)
        .await
        .unwrap();
    let addr = rejecting.addr();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("scheduler: {{endpoints: [\"{addr}\"]}}\n");
    let agent = AgentProcess::start(&setup(dir.path(), "node-r", 0.3, &extra), &[])
        .await
        .unwrap();
    next_report(&mut rx, Duration::from_secs(10)).await;
    let needle = format!("wattwise_report_acks_total{{endpoint=\"{addr}\",result=\"rejected\"}} ");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = agent.metrics_text().await.unwrap();
        if text
            .lines()
            .any(|l| l.starts_with(&needle) && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rejected ack counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agent.log_tail(100).contains("test rejects everything"));
}

/// Agent YAML reading `bmc` over RMCP+, its password in the environment variable BMC_PASSWORD.
fn bmc_yaml(bmc: &Bmc) -> String {
    format!(
        "bmc: {{mode: lan, host: 127.0.0.1, port: {}, username: {}, password_env: BMC_PASSWORD, timeout: 500ms}}\n",
        bmc.port(),
        bmc.username()
    )
}

async fn agent_on(
    bmc: &Bmc,
    dir: &Path,
    node: &str,
    inlet_coeff: f32,
    password: &str,
) -> AgentProcess {
    let yaml = setup_with_inlet_coeff(dir, node, 0.5, inlet_coeff, &bmc_yaml(bmc));
    AgentProcess::start(&yaml, &[("BMC_PASSWORD", password)])
        .await
        .unwrap()
}

#[tokio::test]
async fn two_vendor_layouts_are_mapped_to_roles_with_dcmi_or_sdr_power() {
    let dell = Bmc::start(BmcSpec::dell_like()).await.unwrap();
    let lenovo = Bmc::start(BmcSpec::lenovo_like()).await.unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dell_agent = agent_on(&dell, d1.path(), "node-dell", 0.0, dell.password()).await;
    let lenovo_agent = agent_on(&lenovo, d2.path(), "node-lenovo", 0.0, lenovo.password()).await;

    let dell_grpc = Grpcurl::new(dell_agent.grpc_addr()).unwrap();
    let r = wait_report(
        &dell_grpc,
        Duration::from_secs(10),
        "Dell-like layout read with DCMI",
        |r| r["measured"]["source"] == "READING_SOURCE_DCMI",
    )
    .await;
    assert_eq!(
        role_temperatures(&r),
        [
            Some((22.0, "Inlet Temp".into())),
            Some((48.0, "Temp".into())),
            Some((51.0, "Temp".into())),
        ],
        "inlet, CPU 1, CPU 2: {r}"
    );
    assert_eq!(
        r["measured"]["watts"].as_f64(),
        Some(196.0),
        "DCMI, not the SDR sensor: {r}"
    );

    let lenovo_grpc = Grpcurl::new(lenovo_agent.grpc_addr()).unwrap();
    let r = wait_report(
        &lenovo_grpc,
        Duration::from_secs(10),
        "Lenovo-like layout read with its SDR power sensor",
        |r| r["measured"]["source"] == "READING_SOURCE_SDR_SENSOR",
    )
    .await;
    assert_eq!(
        role_temperatures(&r),
        [
            Some((24.0, "Ambient Temp".into())),
            Some((31.0, "CPU1 Temp".into())),
            Some((32.0, "CPU2 Temp".into())),
        ],
        "inlet, CPU 1, CPU 2: {r}"
    );
    assert_eq!(
        r["measured"]["sensorName"], "Sys Power",
        "the whole-node meter, not CPU or Mem Power: {r}"
    );
    assert_eq!(r["measured"]["watts"].as_f64(), Some(170.0), "{r}");
    let text = lenovo_agent.metrics_text().await.unwrap();
    assert!(
        text.contains("ipmi_power_watts{id=\"66\",name=\"Sys Power\"} 170"),
        "{text}"
    );
    assert!(
        text.contains("ipmi_up{collector=\"dcmi\"} 0"),
        "no DCMI on this BMC: {text}"
    );
}

#[tokio::test]
async fn a_changed_reading_reaches_grpc_metrics_and_the_model() {
    let mut bmc = Bmc::start(BmcSpec::lenovo_like()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 2 W per °C of inlet: the temperature visibly moves the curve. The model's own curve:
    // calibration would move it toward the BMC's measured watts (agent_calibration.rs tests that).
    let extra = format!("{}calibration: {{enabled: false}}\n", bmc_yaml(&bmc));
    let yaml = setup_with_inlet_coeff(dir.path(), "node-t", 0.5, 2.0, &extra)
        .replace("interval: 250ms", "interval: 500ms");
    let agent = AgentProcess::start(&yaml, &[("BMC_PASSWORD", bmc.password())])
        .await
        .unwrap();
    let grpc = Grpcurl::new(agent.grpc_addr()).unwrap();
    let before = wait_report(&grpc, Duration::from_secs(10), "first inlet reading", |r| {
        temperature(r, "TEMPERATURE_ROLE_INLET", 0).is_some()
    })
    .await;
    let watts_at = |r: &Value| r["curve"]["watts"][50].as_f64().unwrap();
    assert!(
        (watts_at(&before) - (expected_watts(0.5) + 2.0 * (24.0 - 25.0))).abs() < 1e-3,
        "{before}"
    );

    bmc.set_reading("Ambient Temp", 30.0).unwrap();
    bmc.set_reading("Sys Power", 250.0).unwrap();
    // Two report intervals, plus ipmi_sim's own 250 ms poll of its sensor files.
    let window = Duration::from_millis(2 * 500 + 250);
    let after = wait_report(&grpc, window, "changed inlet reading", |r| {
        temperature(r, "TEMPERATURE_ROLE_INLET", 0).map(|t| t.0) == Some(30.0)
    })
    .await;
    assert!(
        (watts_at(&after) - (expected_watts(0.5) + 2.0 * 5.0)).abs() < 1e-3,
        "model fed the new inlet: {after}"
    );
    let text = agent.metrics_text().await.unwrap();
    assert!(
        text.contains("ipmi_temperature_celsius{id=\"49\",name=\"Ambient Temp\"} 30"),
        "{text}"
    );

    let prometheus = Prometheus::start(
        &[agent.metrics_addr().to_string()],
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let sample = prometheus
        .wait_for_sample(
            "ipmi_temperature_celsius{name=\"Ambient Temp\"}",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(sample.value, 30.0);
    let power = prometheus
        .wait_for_sample("ipmi_power_watts", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(power.value, 250.0);
    let error = prometheus
        .wait_for_sample("wattwise_model_error_watts", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        (error.value - (watts_at(&after) - 250.0)).abs() < 1e-3,
        "{error:?}"
    );
}

#[tokio::test]
async fn a_wrong_password_keeps_the_agent_serving_with_ipmi_down() {
    let bmc = Bmc::start(BmcSpec::dell_like()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_on(&bmc, dir.path(), "node-w", 0.0, "not-the-password").await;
    let grpc = Grpcurl::new(agent.grpc_addr()).unwrap();
    let report = get_report(&grpc).await.unwrap();
    assert_eq!(
        report["measured"]["source"], "READING_SOURCE_NONE",
        "{report}"
    );
    assert!(
        report["curve"]["watts"].as_array().unwrap().len() == 101,
        "still predicting"
    );
    let text = agent.metrics_text().await.unwrap();
    assert!(text.contains("ipmi_up{collector=\"ipmi\"} 0"), "{text}");
    let log = agent.log_tail(100);
    assert!(
        log.to_lowercase().contains("password"),
        "the log names the cause:\n{log}"
    );
    assert!(
        !log.contains("not-the-password") && !log.contains(bmc.password()),
        "no secret in logs"
    );
    assert!(agent.is_running());
}

#[tokio::test]
async fn a_bmc_crash_makes_values_stale_and_its_return_recovers_them() {
    let mut bmc = Bmc::start(BmcSpec::dell_like()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_on(&bmc, dir.path(), "node-k", 0.0, bmc.password()).await;
    let grpc = Grpcurl::new(agent.grpc_addr()).unwrap();
    wait_report(&grpc, Duration::from_secs(10), "first BMC read", |r| {
        role_status(r, "inlet") == "SENSOR_STATUS_OK"
    })
    .await;

    bmc.kill();
    let stale = wait_report(
        &grpc,
        Duration::from_secs(10),
        "inlet stale after the BMC died",
        |r| role_status(r, "inlet") == "SENSOR_STATUS_STALE",
    )
    .await;
    assert_eq!(
        temperature(&stale, "TEMPERATURE_ROLE_INLET", 0).map(|t| t.0),
        Some(22.0),
        "last good value kept: {stale}"
    );
    assert!(agent
        .metrics_text()
        .await
        .unwrap()
        .contains("ipmi_up{collector=\"ipmi\"} 0"));

    bmc.set_reading("Inlet Temp", 26.0).unwrap();
    bmc.restart().await.unwrap();
    let back = wait_report(
        &grpc,
        Duration::from_secs(40),
        "inlet back after the BMC returned",
        |r| {
            role_status(r, "inlet") == "SENSOR_STATUS_OK"
                && temperature(r, "TEMPERATURE_ROLE_INLET", 0).map(|t| t.0) == Some(26.0)
        },
    )
    .await;
    assert_eq!(back["measured"]["source"], "READING_SOURCE_DCMI", "{back}");
    assert!(agent
        .metrics_text()
        .await
        .unwrap()
        .contains("ipmi_up{collector=\"ipmi\"} 1"));
}

/// `/healthz` and `/readyz` as the kubelet polls them: (status, body).
async fn probe(agent: &AgentProcess, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path}", agent.metrics_addr()))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn wait_probe(agent: &AgentProcess, path: &str, status: u16, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (got, body) = probe(agent, path).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} not {status} within {timeout:?}: {got} {body}\n{}",
            agent.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CPU read that hangs — the utilisation file turned into a FIFO nobody writes, as a wedged
/// sysfs read would — stops the report loop: `/readyz` reverts and `/healthz` names the loop,
/// while the agent keeps answering. A writer unblocks the read and both recover.
#[tokio::test]
async fn a_hung_cpu_read_fails_healthz_naming_the_loop_and_readiness_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let util = dir.path().join("util");
    // 250 ms interval: the report loop may be silent for 3 × 0.25 + 5 s.
    let agent = AgentProcess::start(&setup(dir.path(), "node-w", 0.3, ""), &[])
        .await
        .unwrap();
    assert_eq!(probe(&agent, "/healthz").await, (200, "ok".into()));
    assert_eq!(probe(&agent, "/readyz").await, (200, "ready".into()));

    std::fs::remove_file(&util).unwrap();
    let fifo = std::ffi::CString::new(util.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let hung_at = tokio::time::Instant::now();
    let not_ready = wait_probe(&agent, "/readyz", 503, Duration::from_secs(10)).await;
    assert!(
        not_ready.starts_with("no report for") && not_ready.contains("one is due every 250ms"),
        "{not_ready}"
    );
    let wedged = wait_probe(&agent, "/healthz", 503, Duration::from_secs(20)).await;
    assert!(
        wedged.contains("report loop silent for") && !wedged.contains("BMC"),
        "{wedged}"
    );
    assert!(
        hung_at.elapsed() >= Duration::from_secs(5),
        "healthz failed before the loop's limit: {wedged}"
    );
    // Still serving meanwhile: the hung read holds no runtime worker.
    let grpcurl = Grpcurl::new(agent.grpc_addr()).unwrap();
    assert_eq!(
        get_report(&grpcurl).await.unwrap()["cpu"]["utilisation"],
        0.3
    );
    agent.metrics_text().await.unwrap();

    // A writer comes: the blocked read returns 0.6, and later reads find a plain file again.
    let writer_path = util.clone();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .unwrap();
        let plain = writer_path.with_extension("new");
        std::fs::write(&plain, "0.6").unwrap();
        std::fs::rename(&plain, &writer_path).unwrap();
        fifo.write_all(b"0.6").unwrap();
    });
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the agent is blocked reading the FIFO, so opening it to write returns")
        .unwrap();
    wait_probe(&agent, "/healthz", 200, Duration::from_secs(10)).await;
    wait_probe(&agent, "/readyz", 200, Duration::from_secs(10)).await;
    wait_report(
        &grpcurl,
        Duration::from_secs(5),
        "utilisation after the hang",
        |r| r["cpu"]["utilisation"].as_f64() == Some(0.6),
    )
    .await;
}
