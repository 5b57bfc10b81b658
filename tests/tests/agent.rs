//! The real wattwise-agent binary, driven through its files (CPU utilisation, energy) and read
//! through its real interfaces: grpcurl, a Prometheus that scrapes it, and a gRPC PowerReports
//! receiver standing in for the scheduler.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use wattwise_proto::v1 as pb;
use wattwise_proto::v1::power_reports_server::{PowerReports, PowerReportsServer};
use wattwise_testenv::agent::AgentProcess;
use wattwise_testenv::grpcurl::Grpcurl;
use wattwise_testenv::onnx::write_linear_model;
use wattwise_testenv::prometheus::Prometheus;

const IDLE: f64 = 80.0;
const PEAK: f64 = 280.0;

/// Model, CPU and energy files in `dir`; returns the agent's YAML.
fn setup(dir: &Path, node: &str, utilisation: f64, extra: &str) -> String {
    let model = dir.join("model.onnx");
    write_linear_model(&model, IDLE as f32, PEAK as f32, 0.0).unwrap();
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

async fn get_report(grpcurl: &Grpcurl) -> Value {
    grpcurl
        .call("wattwise.v1.NodePower/GetReport", &json!({}))
        .await
        .unwrap()
}

/// Polls GetReport until `check` holds, for at most `timeout`.
async fn wait_report(
    grpcurl: &Grpcurl,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let report = get_report(grpcurl).await;
        if check(&report) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}; last report {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

    let report = get_report(&grpcurl).await;
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
    wait_report(&grpcurl, Duration::from_secs(2), |r| {
        r["energy"]["level"] == "ENERGY_LEVEL_WELL_POWERED"
    })
    .await;

    std::fs::write(dir.path().join("util"), "0.6").unwrap();
    let changed = tokio::time::Instant::now();
    wait_report(&grpcurl, Duration::from_millis(500), |r| {
        r["cpu"]["utilisation"].as_f64() == Some(0.6)
    })
    .await;
    assert!(changed.elapsed() <= Duration::from_millis(500));

    // 74 % is inside the hysteresis band below 75 %: the level holds; 70 % is past it.
    std::fs::write(&energy, "74").unwrap();
    let held = wait_report(&grpcurl, Duration::from_secs(2), |r| {
        r["energy"]["percent"].as_f64() == Some(74.0)
    })
    .await;
    assert_eq!(held["energy"]["level"], "ENERGY_LEVEL_WELL_POWERED");
    std::fs::write(&energy, "70").unwrap();
    wait_report(&grpcurl, Duration::from_millis(500), |r| {
        r["energy"]["level"] == "ENERGY_LEVEL_VULNERABLE"
    })
    .await;

    // A broken energy reading keeps the last level rather than dropping it.
    std::fs::write(&energy, "lots").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get_report(&grpcurl).await["energy"]["level"],
        "ENERGY_LEVEL_VULNERABLE"
    );
    assert!(
        agent.log_tail(50).contains("\"lots\""),
        "the failure is logged with the value"
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
            "bmc.mode".to_string(),
        ),
    ];
    for (yaml, expected) in cases {
        let mut agent = AgentProcess::spawn(&yaml, &[]).unwrap();
        let (code, log) = agent.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert_ne!(code, 0, "exit code for {expected}");
        assert!(log.contains(&expected), "{expected:?} not named in:\n{log}");
    }
}

/// A PowerReports receiver standing in for a scheduler replica: records reports, acks each, and
/// ends every open stream when told to stop.
struct Receiver {
    reports: mpsc::UnboundedSender<pb::NodeReport>,
    accept: bool,
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl PowerReports for Receiver {
    type StreamReportsStream = Pin<Box<dyn Stream<Item = Result<pb::ReportAck, Status>> + Send>>;

    async fn stream_reports(
        &self,
        request: Request<Streaming<pb::NodeReport>>,
    ) -> Result<Response<Self::StreamReportsStream>, Status> {
        let mut inbound = request.into_inner();
        let (acks, out) = mpsc::channel(4);
        let (reports, accept, mut stop) = (self.reports.clone(), self.accept, self.stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = inbound.message() => {
                        let Ok(Some(report)) = message else { return };
                        let ack = pb::ReportAck {
                            sequence: report.sequence,
                            accepted: accept,
                            reason: if accept { String::new() } else { "test rejects everything".into() },
                            report_interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                        };
                        let _ = reports.send(report);
                        if acks.send(Ok(ack)).await.is_err() { return }
                    }
                    _ = stop.changed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

struct RunningReceiver {
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

async fn start_receiver(
    addr: SocketAddr,
    accept: bool,
    reports: mpsc::UnboundedSender<pb::NodeReport>,
) -> (SocketAddr, RunningReceiver) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let service = PowerReportsServer::new(Receiver {
        reports,
        accept,
        stop: stop_rx.clone(),
    });
    let mut shutdown = stop_rx;
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = shutdown.changed().await;
            })
            .await
            .unwrap();
    });
    (addr, RunningReceiver { stop, server })
}

async fn next_report(
    rx: &mut mpsc::UnboundedReceiver<pb::NodeReport>,
    timeout: Duration,
) -> pb::NodeReport {
    tokio::time::timeout(timeout, rx.recv())
        .await
        .expect("no report in time")
        .expect("receiver alive")
}

#[tokio::test]
async fn the_report_stream_reconnects_after_the_scheduler_restarts() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, first) = start_receiver("127.0.0.1:0".parse().unwrap(), true, tx.clone()).await;
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
    first.stop.send(true).unwrap();
    first.server.await.unwrap();
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
    let (_, _second) = start_receiver(addr, true, tx).await;
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
    let (addr, _receiver) = start_receiver("127.0.0.1:0".parse().unwrap(), false, tx).await;
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
