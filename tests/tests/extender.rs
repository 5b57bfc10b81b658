//! Extender mode against a real kube-apiserver + etcd, kube-controller-manager and the stock
//! kube-scheduler v1.20.2, configured through its `KubeSchedulerConfiguration` to call the real
//! wattwise-scheduler binary (agent reports over real gRPC): placement follows marginal watts and
//! energy level while kube-scheduler enforces what standalone mode refuses (required pod
//! anti-affinity, a topology spread constraint); pods it binds are accounted by wattwise like any
//! other; with wattwise down, pods are still bound (the extender is ignorable).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use wattwise_proto::v1 as pb;
use wattwise_testenv::control_plane::{ControlPlane, FakeNode, KubeScheduler, SchedulerExtender};
use wattwise_testenv::pods::{
    create_deployment, create_pod, events_by_reason, events_of, pod_json, pods_labelled,
    wait_live_bound, PodView, NS,
};
use wattwise_testenv::process::{free_tcp_port, wait_until};
use wattwise_testenv::reports::{NodePowerSpec, ReportPump};
use wattwise_testenv::scheduler::SchedulerProcess;

use pb::EnergyLevel::*;

const ZONE: &str = "topology.kubernetes.io/zone";

/// Extender scores (0..=10) count `weight` × 10 against kube's plugins (0..=100 each): enough
/// for wattwise to decide between nodes kube's plugins score alike.
const WEIGHT: i64 = 5;

fn calls(verb: &str, result: &str) -> String {
    format!("wattwise_scheduler_extender_calls_total{{verb=\"{verb}\",result=\"{result}\"}}")
}

/// wattwise-scheduler replica `identity` serving the extender API on `extender`, with reports
/// pumped for `nodes` (all fresh before it returns).
async fn start_wattwise(
    plane: &ControlPlane,
    identity: &str,
    extender: SocketAddr,
    nodes: &[(&str, NodePowerSpec)],
) -> Result<(SchedulerProcess, ReportPump)> {
    let scheduler = SchedulerProcess::start_with_reports(
        plane,
        identity,
        // Reports stay fresh through a loaded machine's stalls of the pump.
        "interval: 1s, stale_after: 30s",
        &format!("extender: {{enabled: true, listen: \"{extender}\"}}\n"),
    )
    .await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    for (name, spec) in nodes {
        pump.set(name, spec.clone());
    }
    wait_until("every node reporting", Duration::from_secs(20), || async {
        Ok(scheduler.metric("wattwise_scheduler_stale_nodes").await? == Some(0.0))
    })
    .await?;
    Ok((scheduler, pump))
}

/// The stock kube-scheduler calling wattwise at `extender` as the shipped configuration does.
async fn kube_scheduler_with_extender(
    plane: &mut ControlPlane,
    extender: SocketAddr,
) -> Result<()> {
    plane
        .start_kube_scheduler_with(&KubeScheduler {
            extenders: vec![SchedulerExtender::wattwise(extender, WEIGHT)],
            ..KubeScheduler::default()
        })
        .await
}

/// A Deployment `web` for the stock scheduler: `replicas` pods of 2500m (one fits a 4-CPU node),
/// at most one per node (required anti-affinity on the hostname), spread over zones with a skew
/// of at most one (`DoNotSchedule`). Standalone wattwise refuses such pods.
fn spread_web(replicas: u32) -> serde_json::Value {
    let selector = json!({"matchLabels": {"app": "web"}});
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": selector,
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "web", "image": "busybox",
                        "resources": {"requests": {"cpu": "2500m", "memory": "64Mi"}}
                    }],
                    "affinity": {"podAntiAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": [{
                            "labelSelector": selector,
                            "topologyKey": "kubernetes.io/hostname"
                        }]
                    }},
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": ZONE,
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": selector
                    }]
                }
            }
        }
    })
}

async fn scale(client: &Client, replicas: u32) -> Result<()> {
    Api::<Deployment>::namespaced(client.clone(), NS)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(())
}

fn nodes_of(pods: &[PodView]) -> Vec<String> {
    let mut nodes: Vec<String> = pods.iter().filter_map(|p| p.node.clone()).collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_scheduler_places_by_watts_and_energy_while_enforcing_anti_affinity_and_spread(
) -> Result<()> {
    let mut plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    // Two zones. The cheapest nodes are the worst powered: energy ranks before watts.
    let nodes = [
        (
            "a-cheap",
            "a",
            NodePowerSpec::new(4000, 50.0, 100.0, 1.0).energy(WellPowered, 90.0),
        ),
        (
            "a-vulnerable",
            "a",
            NodePowerSpec::new(4000, 40.0, 60.0, 1.0).energy(Vulnerable, 60.0),
        ),
        (
            "a-dear",
            "a",
            NodePowerSpec::new(4000, 100.0, 400.0, 1.0).energy(WellPowered, 95.0),
        ),
        (
            "b-mid",
            "b",
            NodePowerSpec::new(4000, 100.0, 200.0, 1.0).energy(WellPowered, 90.0),
        ),
        (
            "b-dear",
            "b",
            NodePowerSpec::new(4000, 100.0, 300.0, 1.0).energy(WellPowered, 90.0),
        ),
        (
            "b-powerless",
            "b",
            NodePowerSpec::new(4000, 30.0, 40.0, 1.0).energy(Powerless, 5.0),
        ),
    ];
    for (name, zone, _) in &nodes {
        plane
            .create_ready_node(&FakeNode::new(name).label(ZONE, zone))
            .await?;
    }
    let extender: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
    let reports: Vec<_> = nodes.iter().map(|(n, _, s)| (*n, s.clone())).collect();
    let (wattwise, _pump) = start_wattwise(&plane, "replica-a", extender, &reports).await?;
    let _controllers = plane.start_controller_manager().await?;
    kube_scheduler_with_extender(&mut plane, extender).await?;

    // One replica more at a time, so each choice shows:
    let steps = [
        // the cheapest of the best-powered nodes (not the cheaper vulnerable or powerless ones);
        "a-cheap",
        // the spread sends the second to zone b: its cheaper well-powered node;
        "b-mid",
        // one per node keeps the third off a-cheap, still the cheapest: the next cheapest
        // well-powered node;
        "b-dear",
        // the spread wants zone a again: well-powered a-dear before the cheaper vulnerable one;
        "a-dear",
        // the last node allowed.
        "a-vulnerable",
    ];
    create_deployment(&client, NS, spread_web(1)).await?;
    for (i, expected) in steps.iter().enumerate() {
        let replicas = i + 1;
        if replicas > 1 {
            scale(&client, replicas as u32).await?;
        }
        let pods = wait_live_bound(&client, NS, "app=web", replicas)
            .await
            .with_context(|| wattwise.log_tail(20))?;
        let mut want: Vec<String> = steps[..replicas].iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(
            nodes_of(&pods),
            want,
            "replica {replicas} should be on {expected}"
        );
    }

    // The sixth may only go to zone b, where only the powerless node is left: wattwise filters
    // it, with its reason in the stock scheduler's message, and the pod waits.
    scale(&client, 6).await?;
    wait_until(
        "the sixth replica refused for the powerless node",
        Duration::from_secs(30),
        || async {
            Ok(events_by_reason(&client, NS, "FailedScheduling")
                .await?
                .iter()
                .any(|(_, note)| note.contains("1 node(s) were powerless")))
        },
    )
    .await?;
    let pods = pods_labelled(&client, NS, "app=web").await?;
    assert_eq!(pods.len(), 6);
    assert_eq!(
        pods.iter().filter(|p| p.node.is_none()).count(),
        1,
        "{pods:?}"
    );
    assert!(!nodes_of(&pods).contains(&"b-powerless".to_string()));

    // The stock scheduler asked wattwise at every step (filter each time; prioritize whenever
    // it had more than one node left: steps 1–4).
    assert!(
        wattwise
            .metric(&calls("filter", "ok"))
            .await?
            .unwrap_or(0.0)
            >= 6.0
    );
    assert!(
        wattwise
            .metric(&calls("prioritize", "ok"))
            .await?
            .unwrap_or(0.0)
            >= 4.0
    );

    // Pods the stock scheduler bound count in wattwise's cache like its own: a standalone pod
    // of 2 CPUs fits none of the five nodes holding a 2500m replica.
    create_pod(&client, pod_json("standalone", "2")).await?;
    wait_until(
        "wattwise refusing the standalone pod",
        Duration::from_secs(30),
        || async {
            Ok(events_of(&client, "standalone").await?.iter().any(|(r, note)| {
                r == "FailedScheduling"
                    && note == "0/6 nodes are available: 5 Insufficient cpu, 1 node(s) were powerless."
            }))
        },
    )
    .await
    .with_context(|| format!("{:?}", wattwise.log_tail(20)))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_bound_pods_raise_their_node_s_price_and_pods_are_bound_while_wattwise_is_down(
) -> Result<()> {
    let mut plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    // Twins on a convex curve: a node with more load prices the next pod dearer.
    let twin = || NodePowerSpec::new(4000, 100.0, 300.0, 2.0).energy(WellPowered, 90.0);
    let nodes = [
        ("twin-1", twin()),
        ("twin-2", twin()),
        (
            "powerless",
            NodePowerSpec::new(4000, 30.0, 40.0, 1.0).energy(Powerless, 5.0),
        ),
    ];
    for (name, _) in &nodes {
        plane.create_ready_node(&FakeNode::new(name)).await?;
    }
    let extender: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
    let (mut wattwise, pump) = start_wattwise(&plane, "replica-a", extender, &nodes).await?;
    wait_until("replica-a leads", Duration::from_secs(20), || async {
        wattwise.is_leader().await
    })
    .await?;
    // A standby answers too, from its own cache.
    let standby_extender: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
    let (standby, _standby_pump) =
        start_wattwise(&plane, "replica-b", standby_extender, &nodes).await?;
    assert!(!standby.is_leader().await?);
    kube_scheduler_with_extender(&mut plane, extender).await?;
    let stock = |name: &str| {
        let mut pod = pod_json(name, "1");
        pod["spec"]["schedulerName"] = json!("default-scheduler");
        pod
    };
    let http = reqwest::Client::new();
    let prioritize = || priorities(&http, extender);
    let scored = |twin_1: i64, twin_2: i64| {
        json!([
            {"Host": "powerless", "Score": 4},
            {"Host": "twin-1", "Score": twin_1},
            {"Host": "twin-2", "Score": twin_2},
            {"Host": "unknown", "Score": 0}
        ])
    };
    assert_eq!(
        prioritize().await?,
        scored(10, 10),
        "the twins tie while idle"
    );

    // The stock scheduler binds a pod to one twin (the tie is kube's to break); it starts
    // there, and every replica prices that twin dearer until the twin's agent measures it.
    create_pod(&client, stock("up-0")).await?;
    let first = wait_bound_named(&client, "up-", 1).await?[0].clone();
    let expected = if first == "twin-1" {
        scored(5, 10)
    } else {
        scored(10, 5)
    };
    wait_until(
        "the loaded twin priced dearer by both replicas",
        Duration::from_secs(10),
        || async {
            Ok(prioritize().await? == expected
                && priorities(&http, standby_extender).await? == expected)
        },
    )
    .await
    .with_context(|| format!("up-0 on {first}"))?;
    for i in 1..3 {
        create_pod(&client, stock(&format!("up-{i}"))).await?;
    }
    let bound = wait_bound_named(&client, "up-", 3).await?;
    assert!(!bound.contains(&"powerless".to_string()), "{bound:?}");
    assert!(
        wattwise
            .metric(&calls("filter", "ok"))
            .await?
            .unwrap_or(0.0)
            >= 3.0
    );

    // A broken request is refused naming the problem, and the extender goes on serving.
    let response = http
        .post(format!("http://{extender}/filter"))
        .body("{\"Pod\": {\"metadata\": ")
        .send()
        .await?;
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    let message = response.text().await?;
    assert!(
        message.starts_with("invalid ExtenderArgs JSON: "),
        "{message}"
    );
    assert_eq!(
        wattwise.metric(&calls("filter", "bad_request")).await?,
        Some(1.0)
    );
    prioritize().await?;

    // Down: kube-scheduler cannot reach it and, the extender being ignorable, binds anyway.
    drop(pump);
    wattwise.stop();
    assert!(!wattwise.is_running());
    for i in 0..3 {
        create_pod(&client, stock(&format!("down-{i}"))).await?;
    }
    wait_bound_named(&client, "down-", 3).await?;
    Ok(())
}

/// What the extender at `at` answers to `prioritize` for a pod no cache holds (the answer comes
/// from the request alone) over the nodes of the twins test and one nobody knows.
async fn priorities(http: &reqwest::Client, at: SocketAddr) -> Result<serde_json::Value> {
    let mut pod = pod_json("asked", "1");
    pod["spec"]["schedulerName"] = json!("default-scheduler");
    let response = http
        .post(format!("http://{at}/prioritize"))
        .json(&json!({"Pod": pod, "NodeNames": ["powerless", "twin-1", "twin-2", "unknown"]}))
        .send()
        .await?;
    anyhow::ensure!(response.status() == reqwest::StatusCode::OK, "{response:?}");
    Ok(response.json().await?)
}

/// Waits until the `n` pods named `prefix…` are bound; returns their nodes.
async fn wait_bound_named(client: &Client, prefix: &str, n: usize) -> Result<Vec<String>> {
    let bound = || async {
        let placed = wattwise_testenv::pods::placements(client).await?;
        anyhow::Ok(
            placed
                .into_iter()
                .filter(|(pod, _)| pod.starts_with(prefix))
                .map(|(_, node)| node)
                .collect::<Vec<_>>(),
        )
    };
    wait_until(
        &format!("{n} {prefix}* pods bound"),
        Duration::from_secs(30),
        || async { Ok(bound().await?.len() == n) },
    )
    .await?;
    bound().await
}
