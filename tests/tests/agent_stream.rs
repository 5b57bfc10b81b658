//! The agent's report streams, against real receivers and the real scheduler.
//!
//! A scheduler endpoint whose name resolves to several addresses (a headless Service lists every
//! replica) gets one report stream per address, and losing one replica does not stop the others.
//!
//! Two real PowerReports receivers listen on 127.0.0.2 and 127.0.0.3 with the same port, and the
//! agent runs with a private `/etc/hosts` (its own mount namespace, see `Launch::hosts`) in which
//! one name maps to both. The machine's own `/etc/hosts` is never touched. There is no skip: a
//! machine where the namespace or the extra loopback addresses do not work fails the test, saying
//! which.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wattwise_proto::v1 as pb;
use wattwise_testenv::agent::{AgentProcess, Launch};
use wattwise_testenv::control_plane::{ControlPlane, FakeNode};
use wattwise_testenv::onnx::write_linear_model;
use wattwise_testenv::receiver::{next_report, ReportReceiver};
use wattwise_testenv::scheduler::{SchedulerProcess, TEST_CONFIG};

const NAME: &str = "scheduler.wattwise.test";
const REPLICA_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const REPLICA_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Listeners on both replica addresses with one port, as a headless Service's pods would have.
async fn same_port_on_both() -> (TcpListener, TcpListener) {
    let mut last_error = None;
    for _ in 0..50 {
        let a = TcpListener::bind((REPLICA_A, 0)).await.unwrap_or_else(|e| {
            panic!("cannot listen on {REPLICA_A} (the loopback must answer all of 127/8): {e}")
        });
        let port = a.local_addr().unwrap().port();
        match TcpListener::bind((REPLICA_B, port)).await {
            Ok(b) => return (a, b),
            Err(e) => last_error = Some(e),
        }
    }
    panic!("no port free on both {REPLICA_A} and {REPLICA_B}: {last_error:?}");
}

fn endpoint_gauge(text: &str, addr: SocketAddr) -> Option<f64> {
    let prefix = format!("wattwise_scheduler_stream_connected{{endpoint=\"{addr}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

async fn wait_gauge(agent: &AgentProcess, addr: SocketAddr, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = agent.metrics_text().await.unwrap();
        if endpoint_gauge(&text, addr) == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream to {addr} not {want} within 15 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drains what arrived so far and returns the next `n` reports.
async fn next_reports(
    rx: &mut mpsc::UnboundedReceiver<pb::NodeReport>,
    n: usize,
) -> Vec<pb::NodeReport> {
    while rx.try_recv().is_ok() {}
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next_report(rx, Duration::from_secs(15)).await.unwrap());
    }
    out
}

/// Two real receivers (replicas A and B on one port) and an agent whose scheduler name resolves
/// to both, reporting as `node` with `scheduler_extra` added to its scheduler settings.
struct TwoReplicas {
    replica_a: ReportReceiver,
    _replica_b: ReportReceiver,
    rx_a: mpsc::UnboundedReceiver<pb::NodeReport>,
    rx_b: mpsc::UnboundedReceiver<pb::NodeReport>,
    addr_a: SocketAddr,
    addr_b: SocketAddr,
    agent: AgentProcess,
    _dir: tempfile::TempDir,
}

async fn agent_with_two_replicas(node: &str, scheduler_extra: &str) -> TwoReplicas {
    let (listener_a, listener_b) = same_port_on_both().await;
    let port = listener_a.local_addr().unwrap().port();
    let (tx_a, rx_a) = mpsc::unbounded_channel();
    let (tx_b, rx_b) = mpsc::unbounded_channel();
    let replica_a = ReportReceiver::serve(listener_a, true, tx_a).unwrap();
    let replica_b = ReportReceiver::serve(listener_b, true, tx_b).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    write_linear_model(&model, 80.0, 280.0, 0.0).unwrap();
    std::fs::write(dir.path().join("util"), "0.3").unwrap();
    let yaml = format!(
        "node_name: {node}\ninterval: 250ms\n\
         model: {{path: {model}}}\n\
         cpu: {{source: file, file: {util}, capacity_millicores: 8000}}\n\
         scheduler: {{endpoints: [\"{NAME}:{port}\"], {scheduler_extra}backoff_min: 100ms, backoff_max: 1s}}\n",
        model = model.display(),
        util = dir.path().join("util").display(),
    );
    // The agent's resolver reads files first (nsswitch `hosts: files dns`).
    let hosts = format!("127.0.0.1 localhost\n{REPLICA_A} {NAME}\n{REPLICA_B} {NAME}\n");
    let launch = Launch {
        hosts: Some(hosts),
        ..Launch::default()
    };
    let agent = AgentProcess::start_with(&yaml, &[], &launch).await.unwrap();
    TwoReplicas {
        replica_a,
        _replica_b: replica_b,
        rx_a,
        rx_b,
        addr_a: SocketAddr::new(IpAddr::V4(REPLICA_A), port),
        addr_b: SocketAddr::new(IpAddr::V4(REPLICA_B), port),
        agent,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_name_with_two_addresses_gets_a_stream_to_each_and_one_survives_the_other() {
    let TwoReplicas {
        replica_a,
        mut rx_a,
        mut rx_b,
        addr_a,
        addr_b,
        agent,
        _replica_b,
        _dir,
    } = agent_with_two_replicas("node-ha", "").await;

    // One stream per address: both replicas hear from the same agent process.
    let first_a = next_report(&mut rx_a, Duration::from_secs(15))
        .await
        .unwrap();
    let first_b = next_report(&mut rx_b, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(first_a.node_name, "node-ha");
    assert_eq!(first_b.node_name, "node-ha");
    assert_eq!(first_a.agent_instance, first_b.agent_instance);
    wait_gauge(&agent, addr_a, 1.0).await;
    wait_gauge(&agent, addr_b, 1.0).await;
    let log = agent.log_tail(200);
    for addr in [addr_a, addr_b] {
        assert!(
            log.lines()
                .any(|l| l.contains("streaming reports to scheduler")
                    && l.contains(&addr.to_string())),
            "{addr} not streamed to:\n{log}"
        );
    }
    // Both keep receiving (the ack asked for a report at least every second).
    let a = next_reports(&mut rx_a, 2).await;
    let b = next_reports(&mut rx_b, 2).await;
    assert!(a[1].sequence > a[0].sequence && b[1].sequence > b[0].sequence);

    // Replica A goes away: its streams end and its port closes.
    replica_a.stop().await.unwrap();
    wait_gauge(&agent, addr_a, 0.0).await;
    let before = next_reports(&mut rx_b, 1).await[0].sequence;
    // B keeps receiving newer reports while A is gone and the agent retries A with backoff.
    let after = next_reports(&mut rx_b, 3).await;
    assert!(
        after.iter().all(|r| r.sequence > before),
        "{before} then {:?}",
        after.iter().map(|r| r.sequence).collect::<Vec<_>>()
    );
    assert!(after.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert_eq!(after[0].agent_instance, first_b.agent_instance);
    let text = agent.metrics_text().await.unwrap();
    assert_eq!(endpoint_gauge(&text, addr_b), Some(1.0), "{text}");
    assert_eq!(endpoint_gauge(&text, addr_a), Some(0.0), "{text}");
    // Nothing reached A after it stopped (its channel closed with the server).
    while let Ok(r) = rx_a.try_recv() {
        assert!(
            r.sequence <= before,
            "report {} reached a stopped replica",
            r.sequence
        );
    }
}

/// A replica whose address the name no longer resolves to (a rescheduled scheduler pod gets a
/// new IP) loses its stream and every metric series of its address; the other keeps both.
#[tokio::test]
async fn an_address_the_name_drops_leaves_the_metrics() {
    // Both replicas stay up: only the name changes.
    let TwoReplicas {
        replica_a: _replica_a,
        _replica_b,
        mut rx_a,
        mut rx_b,
        addr_a,
        addr_b,
        agent,
        _dir,
    } = agent_with_two_replicas("node-moved", "resolve_interval: 300ms, ").await;
    next_report(&mut rx_a, Duration::from_secs(15))
        .await
        .unwrap();
    next_report(&mut rx_b, Duration::from_secs(15))
        .await
        .unwrap();
    wait_gauge(&agent, addr_a, 1.0).await;
    wait_gauge(&agent, addr_b, 1.0).await;
    let series_of = |text: &str, addr: SocketAddr| {
        let label = format!("endpoint=\"{addr}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let text = agent.metrics_text().await.unwrap();
    assert!(
        series_of(&text, addr_a)
            .iter()
            .any(|l| l.starts_with("wattwise_report_acks_total")),
        "acks from A are counted:\n{text}"
    );

    // The name now resolves to B only. The agent's /etc/hosts is a bind mount of this file, so
    // rewriting it in place is what the agent's resolver reads next.
    std::fs::write(
        agent.dir().join("hosts"),
        format!("127.0.0.1 localhost\n{REPLICA_B} {NAME}\n"),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = agent.metrics_text().await.unwrap();
        if series_of(&text, addr_a).is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "series of {addr_a} still exported:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = agent.log_tail(300);
    assert!(
        log.lines()
            .any(|l| l.contains("scheduler address gone") && l.contains(&addr_a.to_string())),
        "{log}"
    );
    // B keeps its stream and its series; A hears nothing more.
    let after = next_reports(&mut rx_b, 2).await;
    assert!(after[0].sequence < after[1].sequence);
    let text = agent.metrics_text().await.unwrap();
    assert_eq!(endpoint_gauge(&text, addr_b), Some(1.0), "{text}");
    assert!(series_of(&text, addr_a).is_empty(), "{text}");
    while rx_a.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(rx_a.try_recv().is_err(), "A still receives reports");
}

/// An agent whose readings do not change still sends the scheduler a report every interval the
/// ack asks for, each a new report (its own sequence, the newest observation): none is rejected
/// as out of order. The agent builds a report every 500 ms and the scheduler asks for one every
/// 200 ms, so each interval ends before a newer report exists — where a re-sent old one would be
/// rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_agent_sends_the_real_scheduler_only_new_reports() {
    let plane = ControlPlane::start().await.unwrap();
    plane
        .create_ready_node(&FakeNode::new("node-steady"))
        .await
        .unwrap();
    let config = TEST_CONFIG.replace("reports: {interval: 1s}", "reports: {interval: 200ms}");
    assert_ne!(config, TEST_CONFIG, "the test config sets reports.interval");
    let mut scheduler = SchedulerProcess::spawn(&plane, "replica-a", &config).unwrap();
    scheduler.wait_ready(Duration::from_secs(30)).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    write_linear_model(&model, 80.0, 280.0, 0.0).unwrap();
    std::fs::write(dir.path().join("util"), "0.3").unwrap();
    let yaml = format!(
        "node_name: node-steady\ninterval: 500ms\n\
         model: {{path: {model}}}\n\
         cpu: {{source: file, file: {util}, capacity_millicores: 8000}}\n\
         scheduler: {{endpoints: [\"{addr}\"], backoff_min: 100ms, backoff_max: 1s}}\n",
        model = model.display(),
        util = dir.path().join("util").display(),
        addr = scheduler.grpc_addr(),
    );
    let agent = AgentProcess::start(&yaml, &[]).await.unwrap();

    let accepted = r#"wattwise_scheduler_reports_total{reason="accepted"}"#;
    let out_of_order = r#"wattwise_scheduler_reports_total{reason="out_of_order"}"#;
    let count = |series: &'static str| {
        let scheduler = &scheduler;
        async move { scheduler.metric(series).await.unwrap().unwrap_or(0.0) }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while count(accepted).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no report accepted:\n{}",
            scheduler.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = count(accepted).await;
    // Nothing changes for 4 s: 20 report intervals, 8 reports built.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = count(accepted).await;
    assert!(
        later - first >= 5.0,
        "the steady agent kept reporting: {first} then {later} accepted"
    );
    assert_eq!(
        count(out_of_order).await,
        0.0,
        "scheduler log:\n{}",
        scheduler.log_tail(40)
    );
    let agent_log = agent.log_tail(300);
    assert!(
        !agent_log.contains("scheduler rejected a report"),
        "{agent_log}"
    );
    assert!(
        !scheduler.log_tail(300).contains("report rejected"),
        "{}",
        scheduler.log_tail(40)
    );
    let rejected = format!(
        "wattwise_report_acks_total{{endpoint=\"{}\",result=\"rejected\"}}",
        scheduler.grpc_addr()
    );
    assert_eq!(agent.metric(&rejected).await.unwrap(), None);
}
