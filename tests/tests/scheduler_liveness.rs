//! Leader and loop liveness of wattwise-scheduler against a real kube-apiserver: a hung API server
//! (a frozen proxy: connections open, no bytes) in front of one replica.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use serde_json::json;
use wattwise_testenv::control_plane::{ControlPlane, FakeNode};
use wattwise_testenv::pods::{self, create_pod, pod_json, NS};
use wattwise_testenv::process::wait_until;
use wattwise_testenv::proxy::FaultProxy;
use wattwise_testenv::scheduler::SchedulerProcess;

const RENEW_DEADLINE: Duration = Duration::from_secs(3);

/// Short leases and call bounds, so that a hung API server shows within seconds.
const HA_CONFIG: &str = "\
reports: {interval: 1s}
binding: {backoff_initial: 200ms, backoff_max: 2s, unschedulable_retry: 5s}
leader_election: {lease_duration: 6s, renew_deadline: 3s, retry_period: 500ms, namespace: default}
api: {timeout: 2s, watch_timeout: 10s}
";

async fn wait_bound(client: &Client, pods: usize) -> Result<BTreeMap<String, String>> {
    pods::wait_bound(client, pods, Duration::from_secs(60)).await
}

async fn lease_holder(client: &Client) -> Result<Option<String>> {
    Ok(Api::<Lease>::namespaced(client.clone(), NS)
        .get_opt("wattwise-scheduler")
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

async fn scheduled(s: &SchedulerProcess) -> Result<f64> {
    Ok(
        s.metric("wattwise_scheduler_schedule_attempts_total{result=\"scheduled\"}")
            .await?
            .unwrap_or(0.0),
    )
}

/// A replica behind the frozen proxy and a standby connected directly.
struct Pair {
    plane: ControlPlane,
    client: Client,
    proxy: FaultProxy,
    behind_proxy: SchedulerProcess,
}

async fn replica_behind_proxy(config: &str, nodes: &[FakeNode]) -> Result<Pair> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    for node in nodes {
        plane.create_ready_node(node).await?;
    }
    let proxy = FaultProxy::start(plane.apiserver_addr()).await?;
    let kubeconfig = plane.kubeconfig_via(proxy.addr())?;
    let mut behind_proxy =
        SchedulerProcess::spawn_with_kubeconfig(&kubeconfig, "replica-a", config)?;
    behind_proxy.wait_ready(Duration::from_secs(30)).await?;
    Ok(Pair {
        plane,
        client,
        proxy,
        behind_proxy,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_apiserver_makes_the_leader_step_down_before_the_standby_leads() -> Result<()> {
    let nodes = [FakeNode::new("a").cpu(2000), FakeNode::new("b").cpu(2000)];
    let Pair {
        plane,
        client,
        proxy,
        behind_proxy: mut first,
    } = replica_behind_proxy(HA_CONFIG, &nodes).await?;
    wait_until("replica-a leads", Duration::from_secs(20), || async {
        first.is_leader().await
    })
    .await?;
    let mut second = SchedulerProcess::spawn(&plane, "replica-b", HA_CONFIG)?;
    second.wait_ready(Duration::from_secs(30)).await?;
    ensure!(!second.is_leader().await?, "two leaders before any fault");
    for i in 0..4 {
        create_pod(&client, pod_json(&format!("early-{i}"), "300m")).await?;
    }
    wait_bound(&client, 4).await?;
    assert_eq!(scheduled(&first).await?, 4.0);

    proxy.freeze();
    let frozen_at = Instant::now();
    let (mut stepped_down, mut taken_over) = (None, None);
    while stepped_down.is_none() || taken_over.is_none() {
        ensure!(
            frozen_at.elapsed() < Duration::from_secs(30),
            "after 30 s: stepped down {stepped_down:?}, standby leads {taken_over:?}\nreplica-a:\n{}",
            first.log_tail(30)
        );
        // Its metrics port is not behind the proxy: the gauge stays readable.
        if stepped_down.is_none() && !first.is_leader().await? {
            stepped_down = Some(frozen_at.elapsed());
        }
        if taken_over.is_none() && lease_holder(&client).await?.as_deref() == Some("replica-b") {
            taken_over = Some(frozen_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (stepped_down, taken_over) = (stepped_down.unwrap(), taken_over.unwrap());
    eprintln!("after the freeze: replica-a stepped down at {stepped_down:?}, replica-b held the Lease at {taken_over:?}");
    assert!(
        stepped_down < taken_over,
        "replica-a stepped down {stepped_down:?} after the freeze, but replica-b held the Lease at {taken_over:?}"
    );
    assert!(
        stepped_down <= RENEW_DEADLINE + Duration::from_secs(1),
        "replica-a stepped down {stepped_down:?} after the freeze (renew_deadline {RENEW_DEADLINE:?})"
    );

    for i in 0..6 {
        create_pod(&client, pod_json(&format!("late-{i}"), "300m")).await?;
    }
    let placed = wait_bound(&client, 10).await?;
    let mut per_node: BTreeMap<&str, u64> = BTreeMap::new();
    for node in placed.values() {
        *per_node.entry(node.as_str()).or_default() += 300;
    }
    assert!(
        per_node.values().all(|&m| m <= 2000),
        "overcommitted: {per_node:?}"
    );
    // Each late pod bound once, by the new leader; the old one bound nothing more.
    assert_eq!(scheduled(&second).await?, 6.0);
    assert_eq!(scheduled(&first).await?, 4.0);
    assert_eq!(
        second
            .metric("wattwise_scheduler_bind_errors_total{reason=\"conflict\"}")
            .await?,
        None
    );

    proxy.open();
    // Longer than a lease: the old leader sees the new holder and stays a standby.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let (a, b) = (first.is_leader().await?, second.is_leader().await?);
        assert!(
            !a && b,
            "after the thaw: replica-a leads {a}, replica-b leads {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lease_holder(&client).await?.as_deref(), Some("replica-b"));
    assert!(first.is_running(), "{}", first.log_tail(40));
    assert!(second.is_running(), "{}", second.log_tail(40));
    Ok(())
}

/// (status, body) of `path` on the replica's metrics port.
async fn probe(s: &SchedulerProcess, path: &str) -> Result<(u16, String)> {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!("http://{}{path}", s.metrics_addr()))
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// Polls `path` until it answers `status`; returns the body.
async fn wait_status(
    s: &SchedulerProcess,
    path: &str,
    status: u16,
    timeout: Duration,
) -> Result<String> {
    let started = Instant::now();
    loop {
        let (code, body) = probe(s, path).await?;
        if code == status {
            return Ok(body);
        }
        ensure!(
            started.elapsed() < timeout,
            "{path} answered {code} {body:?} for {timeout:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After the call bounds nothing in the scheduler waits forever, so the fault here is an operator's
/// choice: `api.timeout` far above `health.max_silence`. Binds through the hung API server then
/// hold the only bind slot while pods wait — the decision loop is blocked, and `/healthz` says so.
/// The watches behind the same frozen proxy are not wedged (their connections are bounded and
/// retried) but the caches fall out of sync, which `/readyz` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_names_a_blocked_decision_loop_and_readyz_a_lost_watch() -> Result<()> {
    use wattwise_proto::v1 as pb;
    use wattwise_testenv::reports::{NodePowerSpec, ReportStream};
    // The agent reports only twice: its Powerless level must stay fresh meanwhile (a stale level
    // is no level, the node would count as grid-powered and the energy adapter's removal of its
    // label would wake the pods).
    let config = "\
reports: {interval: 1s, stale_after: 60s}
binding: {concurrency: 1, backoff_initial: 200ms, backoff_max: 2s, unschedulable_retry: 60s}
leader_election: {enabled: false}
api: {timeout: 60s, watch_timeout: 2s}
health: {max_silence: 5s}
";
    let Pair {
        plane: _plane,
        client,
        proxy,
        behind_proxy: scheduler,
    } = replica_behind_proxy(config, &[FakeNode::new("a")]).await?;
    assert_eq!(probe(&scheduler, "/healthz").await?, (200, "ok".into()));
    assert_eq!(probe(&scheduler, "/readyz").await?, (200, "ready".into()));

    // Pods wait (the only node is powerless) while the API server still answers.
    let mut agent = ReportStream::connect(scheduler.grpc_addr()).await?;
    let node = NodePowerSpec::new(4000, 100.0, 300.0, 1.0);
    let ack = agent
        .send(
            node.clone()
                .energy(pb::EnergyLevel::Powerless, 5.0)
                .report("a", "x", 1),
        )
        .await?;
    assert!(ack.accepted, "{}", ack.reason);
    for i in 0..3 {
        create_pod(&client, pod_json(&format!("waiting-{i}"), "100m")).await?;
    }
    wait_until(
        "3 pods found unschedulable",
        Duration::from_secs(30),
        || async {
            Ok(scheduler
                .metric("wattwise_scheduler_schedule_attempts_total{result=\"unschedulable\"}")
                .await?
                .unwrap_or(0.0)
                >= 3.0)
        },
    )
    .await?;
    // Still healthy after more than max_silence of waiting: an idle loop beats.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let health = probe(&scheduler, "/healthz").await?;
    assert_eq!(health.0, 200, "{health:?}");

    proxy.freeze();
    // The node gets power (the agent reaches the scheduler directly): the pods become schedulable
    // and their binds hang.
    let ack = agent
        .send(
            node.clone()
                .energy(pb::EnergyLevel::WellPowered, 90.0)
                .report("a", "x", 2),
        )
        .await?;
    assert!(ack.accepted, "{}", ack.reason);
    let health = wait_status(&scheduler, "/healthz", 503, Duration::from_secs(20)).await?;
    assert!(health.contains("decisions silent for"), "{health:?}");
    assert!(
        !health.contains("watch"),
        "a bounded, retried watch is not wedged: {health:?}"
    );
    let ready = wait_status(&scheduler, "/readyz", 503, Duration::from_secs(60)).await?;
    assert!(ready.contains("watch down for"), "{ready:?}");

    proxy.open();
    // The held bind goes through, the slot frees, the loop moves again and binds the rest.
    let placed = wait_bound(&client, 3).await?;
    assert_eq!(placed.len(), 3);
    wait_until("/healthz ok again", Duration::from_secs(10), || async {
        Ok(probe(&scheduler, "/healthz").await? == (200, "ok".into()))
    })
    .await?;
    // A node event shows the node watch back in sync (binds show the pod watch); the watcher
    // may first sit out its backoff (up to 30 s) from the failures while frozen.
    let patch = json!({"metadata": {"labels": {"touched": "after-thaw"}}});
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch(
            "a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    wait_until("/readyz ready again", Duration::from_secs(90), || async {
        Ok(probe(&scheduler, "/readyz").await?.0 == 200)
    })
    .await?;
    Ok(())
}
