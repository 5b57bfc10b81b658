//! wattwise-scheduler against a real kube-apiserver + etcd, with agent reports over real gRPC.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use wattwise_proto::v1 as pb;
use wattwise_testenv::control_plane::{ControlPlane, FakeNode};
use wattwise_testenv::pods::{create_pod, events_of, placements, pod_json, wait_bound, NS};
use wattwise_testenv::process::wait_until;
use wattwise_testenv::reports::{NodePowerSpec, ReportPump, ReportStream};
use wattwise_testenv::scheduler::SchedulerProcess;

async fn nodes(plane: &ControlPlane, specs: &[FakeNode]) -> Result<()> {
    for spec in specs {
        plane.create_ready_node(spec).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_go_to_the_lowest_marginal_watts_node_in_the_best_energy_tier() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(
        &plane,
        &[
            FakeNode::new("efficient"),
            FakeNode::new("hungry"),
            FakeNode::new("frugal-but-vulnerable"),
            FakeNode::new("powerless"),
        ],
    )
    .await?;
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    use pb::EnergyLevel::*;
    pump.set(
        "efficient",
        NodePowerSpec::new(4000, 100.0, 200.0, 1.0).energy(WellPowered, 90.0),
    );
    pump.set(
        "hungry",
        NodePowerSpec::new(4000, 100.0, 400.0, 1.0).energy(WellPowered, 95.0),
    );
    pump.set(
        "frugal-but-vulnerable",
        NodePowerSpec::new(4000, 50.0, 60.0, 1.0).energy(Vulnerable, 60.0),
    );
    pump.set(
        "powerless",
        NodePowerSpec::new(4000, 10.0, 11.0, 1.0).energy(Powerless, 5.0),
    );
    wait_until("four nodes reporting", Duration::from_secs(20), || async {
        Ok(scheduler
            .metric("wattwise_scheduler_reports_total{reason=\"accepted\"}")
            .await?
            .unwrap_or(0.0)
            >= 8.0)
    })
    .await
    .with_context(|| scheduler.log_tail(30))?;

    create_pod(&client, pod_json("first", "1")).await?;
    let placed = wait_bound(&client, 1, Duration::from_secs(20)).await?;
    assert_eq!(placed["first"], "efficient", "lowest ΔW in the best tier");
    // +1 core of 4 on a 100→200 W line: +25 W.
    wait_until("Scheduled event", Duration::from_secs(10), || async {
        Ok(!events_of(&client, "first").await?.is_empty())
    })
    .await?;
    let events = events_of(&client, "first").await?;
    assert!(
        events.iter().any(|(reason, note)| reason == "Scheduled"
            && note
                == "assigned default/first to efficient: +25.0 W predicted, energy well-powered"),
        "{events:?}"
    );

    // The efficient node fills up (4 CPUs); then the best tier's other node, never powerless.
    for i in 0..6 {
        create_pod(&client, pod_json(&format!("more-{i}"), "1")).await?;
    }
    let placed = wait_bound(&client, 7, Duration::from_secs(30)).await?;
    let on = |node: &str| placed.values().filter(|n| *n == node).count();
    assert_eq!(on("efficient"), 4, "{placed:?}");
    assert_eq!(on("hungry"), 3, "{placed:?}");
    assert_eq!(on("powerless"), 0);
    assert_eq!(
        on("frugal-but-vulnerable"),
        0,
        "well-powered first: {placed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pods_get_an_event_and_are_bound_when_a_node_fits() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(
        &plane,
        &[
            FakeNode::new("small-a"),
            FakeNode::new("small-b"),
            FakeNode::new("drained").label("energy-status", "powerless"),
        ],
    )
    .await?;
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    create_pod(&client, pod_json("big", "6")).await?;
    wait_until(
        "FailedScheduling event",
        Duration::from_secs(20),
        || async {
            Ok(events_of(&client, "big")
                .await?
                .iter()
                .any(|(r, _)| r == "FailedScheduling"))
        },
    )
    .await?;
    let events = events_of(&client, "big").await?;
    let note = &events
        .iter()
        .find(|(r, _)| r == "FailedScheduling")
        .unwrap()
        .1;
    assert_eq!(
        note, "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) were powerless.",
        "{events:?}"
    );
    assert!(scheduler
        .metric("wattwise_scheduler_schedule_attempts_total{result=\"unschedulable\"}")
        .await?
        .is_some_and(|v| v >= 1.0));

    plane
        .create_ready_node(&FakeNode::new("large").cpu(8000))
        .await?;
    let placed = wait_bound(&client, 1, Duration::from_secs(20)).await?;
    assert_eq!(placed["big"], "large", "re-queued by the node event");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_agent_pods_are_still_bound_on_the_default_curve() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(&plane, &[FakeNode::new("a"), FakeNode::new("b")]).await?;
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    for i in 0..4 {
        create_pod(&client, pod_json(&format!("p{i}"), "500m")).await?;
    }
    let placed = wait_bound(&client, 4, Duration::from_secs(30)).await?;
    assert_eq!(placed.len(), 4);
    assert_eq!(
        scheduler.metric("wattwise_scheduler_stale_nodes").await?,
        Some(2.0)
    );
    wait_until("Scheduled event", Duration::from_secs(10), || async {
        Ok(!events_of(&client, "p0").await?.is_empty())
    })
    .await?;
    let events = events_of(&client, "p0").await?;
    assert!(
        events[0].1.contains("(no fresh report: default curve)"),
        "{events:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reports_are_rejected_with_a_reason_and_change_nothing() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(&plane, &[FakeNode::new("cheap"), FakeNode::new("dear")]).await?;
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    let mut stream = ReportStream::connect(scheduler.grpc_addr()).await?;
    let good = |node: &str, idle: f64, peak: f64, seq: u64| {
        NodePowerSpec::new(4000, idle, peak, 1.0).report(node, "agent-1", seq)
    };
    assert!(stream.send(good("cheap", 100.0, 150.0, 1)).await?.accepted);
    assert!(stream.send(good("dear", 100.0, 500.0, 1)).await?.accepted);

    let mut nan = good("cheap", 100.0, 150.0, 2);
    nan.measured = Some(pb::PowerMeasurement {
        source: pb::ReadingSource::Dcmi as i32,
        watts: f64::NAN,
        sensor_name: "x".into(),
    });
    let mut negative = good("cheap", 100.0, 150.0, 3);
    negative.curve.as_mut().unwrap().watts[0] = -5.0;
    let mut falling = good("cheap", 100.0, 150.0, 4);
    falling.curve = Some(pb::PowerCurve {
        watts: NodePowerSpec::curve(500.0, 10.0, 1.0),
    });
    let mut absurd = good("cheap", 100.0, 150.0, 5);
    absurd.curve = Some(pb::PowerCurve {
        watts: NodePowerSpec::curve(100.0, 1e9, 1.0),
    });
    let unknown = good("ghost", 100.0, 150.0, 6);
    let old = good("cheap", 100.0, 150.0, 1);
    for (what, report, field) in [
        ("NaN watts", nan, "measured.watts"),
        ("negative watts", negative, "curve"),
        ("falling curve", falling, "curve"),
        ("absurd watts", absurd, "curve"),
        ("unknown node", unknown, "node_name"),
        ("replayed sequence", old, "sequence"),
    ] {
        let ack = stream.send(report).await?;
        assert!(!ack.accepted, "{what} accepted");
        assert!(ack.reason.starts_with(field), "{what}: {:?}", ack.reason);
    }
    assert!(scheduler
        .metric("wattwise_scheduler_reports_total{reason=\"invalid\"}")
        .await?
        .is_some_and(|v| v >= 4.0));
    assert_eq!(
        scheduler
            .metric("wattwise_scheduler_reports_total{reason=\"unknown_node\"}")
            .await?,
        Some(1.0)
    );
    // The stream survives rejections and the good curves still decide.
    assert!(stream.send(good("cheap", 100.0, 150.0, 7)).await?.accepted);
    assert!(stream.send(good("dear", 100.0, 500.0, 8)).await?.accepted);
    create_pod(&client, pod_json("p", "1")).await?;
    let placed = wait_bound(&client, 1, Duration::from_secs(20)).await?;
    assert_eq!(placed["p"], "cheap");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_selector_taints_and_affinity_are_honoured() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(
        &plane,
        &[
            FakeNode::new("zone-a").label("zone", "a"),
            FakeNode::new("zone-b").label("zone", "b"),
            FakeNode::new("gpu")
                .label("zone", "a")
                .taint("dedicated", "gpu", "NoSchedule"),
        ],
    )
    .await?;
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    // The tainted node is by far the cheapest: only tolerating pods may go there.
    pump.set("zone-a", NodePowerSpec::new(4000, 100.0, 300.0, 1.0));
    pump.set("zone-b", NodePowerSpec::new(4000, 100.0, 200.0, 1.0));
    pump.set("gpu", NodePowerSpec::new(4000, 100.0, 101.0, 1.0));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut selector = pod_json("selector", "100m");
    selector["spec"]["nodeSelector"] = json!({"zone": "a"});
    let mut affinity = pod_json("affinity", "100m");
    affinity["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}]
    }}});
    let mut tolerating = pod_json("tolerating", "100m");
    tolerating["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
    let plain = pod_json("plain", "100m");
    for pod in [selector, affinity, tolerating, plain] {
        create_pod(&client, pod).await?;
    }
    let placed = wait_bound(&client, 4, Duration::from_secs(30)).await?;
    assert_eq!(placed["selector"], "zone-a");
    assert_eq!(placed["affinity"], "zone-a");
    assert_eq!(placed["tolerating"], "gpu");
    assert_eq!(placed["plain"], "zone-b");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100_pods_on_10_nodes_respects_allocatable_and_spreads() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    let names: Vec<String> = (0..10).map(|i| format!("node-{i}")).collect();
    for name in &names {
        plane.create_ready_node(&FakeNode::new(name)).await?;
    }
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(500));
    for (i, name) in names.iter().enumerate() {
        // Convex curves: every pod makes the next one dearer on the same node.
        pump.set(
            name,
            NodePowerSpec::new(4000, 80.0 + i as f64, 300.0 + 10.0 * i as f64, 2.0),
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 100 × 300m = 30 CPUs of the 40 there are; each node fits 13 of them.
    for i in 0..100 {
        create_pod(&client, pod_json(&format!("burst-{i:03}"), "300m")).await?;
    }
    let placed = wait_bound(&client, 100, Duration::from_secs(90)).await?;
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for node in placed.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    for (node, count) in &per_node {
        assert!(
            *count * 300 <= 4000,
            "{node} got {count} pods: over allocatable"
        );
    }
    assert_eq!(
        per_node.len(),
        10,
        "rising prices spread the burst: {per_node:?}"
    );
    // Cheaper curves take more of the burst, but rising prices stop any node from taking it all.
    assert!(
        per_node["node-0"] > per_node["node-9"],
        "the cheapest node takes more than the dearest: {per_node:?}"
    );
    assert!(per_node.values().all(|&n| n >= 5), "{per_node:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_restart_mid_burst_loses_no_pod() -> Result<()> {
    let mut plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(
        &plane,
        &[FakeNode::new("a"), FakeNode::new("b"), FakeNode::new("c")],
    )
    .await?;
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    for i in 0..30 {
        create_pod(&client, pod_json(&format!("before-{i}"), "100m")).await?;
    }
    plane.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(2)).await;
    plane.start_apiserver().await?;
    let client = plane.client().await?;
    for i in 0..30 {
        create_pod(&client, pod_json(&format!("after-{i}"), "100m")).await?;
    }
    let placed = wait_bound(&client, 60, Duration::from_secs(90)).await?;
    assert_eq!(placed.len(), 60);
    let mut scheduler = scheduler;
    assert!(scheduler.is_running(), "{}", scheduler.log_tail(40));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_finishes_the_work_when_the_leader_is_killed() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(
        &plane,
        &[FakeNode::new("a").cpu(64000), FakeNode::new("b").cpu(64000)],
    )
    .await?;
    let mut first = SchedulerProcess::start(&plane, "replica-a", "").await?;
    wait_until("replica-a leads", Duration::from_secs(20), || async {
        first.is_leader().await
    })
    .await?;
    let second = SchedulerProcess::start(&plane, "replica-b", "").await?;
    // The standby ingests reports too (warm), but does not bind.
    let mut stream = ReportStream::connect(second.grpc_addr()).await?;
    let ack = stream
        .send(NodePowerSpec::new(64000, 100.0, 300.0, 1.0).report("a", "x", 1))
        .await?;
    assert!(ack.accepted, "{}", ack.reason);
    assert!(!second.is_leader().await?);

    for i in 0..10 {
        create_pod(&client, pod_json(&format!("early-{i}"), "100m")).await?;
    }
    wait_bound(&client, 10, Duration::from_secs(30)).await?;
    first.kill();
    for i in 0..20 {
        create_pod(&client, pod_json(&format!("late-{i}"), "100m")).await?;
    }
    let placed = wait_bound(&client, 30, Duration::from_secs(60)).await?;
    assert_eq!(placed.len(), 30);
    wait_until("replica-b leads", Duration::from_secs(5), || async {
        second.is_leader().await
    })
    .await?;
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), NS)
        .get("wattwise-scheduler")
        .await
        .context("lease")?;
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert!(spec.lease_transitions.unwrap_or(0) >= 1);
    // Every pod bound once: one Scheduled event each, none refused as already bound.
    assert_eq!(
        second
            .metric("wattwise_scheduler_bind_errors_total{reason=\"conflict\"}")
            .await?,
        None
    );
    Ok(())
}

/// Reports the scheduler has accepted so far.
async fn accepted_reports(scheduler: &SchedulerProcess) -> Result<f64> {
    Ok(scheduler
        .metric("wattwise_scheduler_reports_total{reason=\"accepted\"}")
        .await?
        .unwrap_or(0.0))
}

/// Waits until `count` more reports than `since` were accepted (e.g. two rounds of a pump, so
/// the latest report of every node carries what the test just set).
async fn wait_reports(scheduler: &SchedulerProcess, since: f64, count: f64) -> Result<()> {
    wait_until(
        &format!("{count} more accepted reports"),
        Duration::from_secs(20),
        || async { Ok(accepted_reports(scheduler).await? >= since + count) },
    )
    .await
    .with_context(|| scheduler.log_tail(30))
}

/// The note of `pod`'s first event with `reason`, once there is one.
async fn wait_event(client: &Client, pod: &str, reason: &str) -> Result<String> {
    wait_until(
        &format!("{reason} event for {pod}"),
        Duration::from_secs(20),
        || async {
            Ok(events_of(client, pod)
                .await?
                .iter()
                .any(|(r, _)| r == reason))
        },
    )
    .await?;
    let events = events_of(client, pod).await?;
    Ok(events
        .into_iter()
        .find(|(r, _)| r == reason)
        .map(|(_, note)| note)
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_node_is_not_chosen_while_another_has_room() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(
        &plane,
        &[
            FakeNode::new("saturated-cheapest"),
            FakeNode::new("nearly-full"),
            FakeNode::new("room-but-dear"),
        ],
    )
    .await?;
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    // Load the requests do not show (BestEffort pods, work outside Kubernetes): measured
    // utilisation only. Clamped at full load, the first two priced a 500m pod at 0 W and +4 W.
    let spec = |peak: f64, utilisation: f64| NodePowerSpec {
        utilisation,
        ..NodePowerSpec::new(4000, 100.0, peak, 1.0)
    };
    pump.set("saturated-cheapest", spec(150.0, 1.0));
    pump.set("nearly-full", spec(300.0, 0.98));
    pump.set("room-but-dear", spec(400.0, 0.3));
    wait_reports(&scheduler, 0.0, 6.0).await?;

    create_pod(&client, pod_json("first", "500m")).await?;
    let placed = wait_bound(&client, 1, Duration::from_secs(20)).await?;
    assert_eq!(
        placed["first"], "room-but-dear",
        "an unsaturated node exists"
    );
    let note = wait_event(&client, "first", "Scheduled").await?;
    // 12.5 % of a 100→400 W line.
    assert_eq!(
        note,
        "assigned default/first to room-but-dear: +37.5 W predicted, energy unknown"
    );

    // Now every node is past full load: the pod still binds, to the cheapest overflow
    // (12.5 % at the peak watts: 18.75 W, against 50 W and 4 + 31.5 W).
    let before = accepted_reports(&scheduler).await?;
    pump.set("room-but-dear", spec(400.0, 1.0));
    wait_reports(&scheduler, before, 6.0).await?;
    create_pod(&client, pod_json("second", "500m")).await?;
    let placed = wait_bound(&client, 2, Duration::from_secs(20)).await?;
    assert_eq!(placed["second"], "saturated-cheapest", "{placed:?}");
    let note = wait_event(&client, "second", "Scheduled").await?;
    assert_eq!(
        note,
        "assigned default/second to saturated-cheapest: +18.8 W predicted (past full load), \
         energy unknown"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_with_constraints_standalone_mode_does_not_evaluate_are_refused_by_name() -> Result<()>
{
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use k8s_openapi::api::storage::v1::StorageClass;
    use kube::api::{Patch, PatchParams};

    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(&plane, &[FakeNode::new("a"), FakeNode::new("b")]).await?;
    let classes = Api::<StorageClass>::all(client.clone());
    for (name, mode) in [("local", "WaitForFirstConsumer"), ("network", "Immediate")] {
        let class = serde_json::from_value(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": "example.com/none",
            "volumeBindingMode": mode,
        }))?;
        classes.create(&PostParams::default(), &class).await?;
    }
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS);
    for (name, class) in [("local-data", "local"), ("network-data", "network")] {
        let claim = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "storageClassName": class,
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }))?;
        claims.create(&PostParams::default(), &claim).await?;
    }
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;

    let with_claim = |name: &str, claim: &str| {
        let mut pod = pod_json(name, "100m");
        pod["spec"]["volumes"] =
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
        pod
    };
    let mut anti = pod_json("anti-affinity", "100m");
    anti["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}
    ]}});
    let mut spread = pod_json("spread", "100m");
    spread["spec"]["topologySpreadConstraints"] = json!([{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}},
    }]);
    // Preferences are ignored, not refused: any node satisfies them.
    let mut soft = pod_json("soft", "100m");
    soft["spec"]["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
    ]}});
    soft["spec"]["topologySpreadConstraints"] = json!([{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
    }]);
    for pod in [
        anti,
        spread,
        with_claim("first-consumer", "local-data"),
        with_claim("immediate", "network-data"),
        soft,
        pod_json("ordinary", "100m"),
    ] {
        create_pod(&client, pod).await?;
    }

    let placed = wait_bound(&client, 2, Duration::from_secs(20)).await?;
    assert!(
        placed.contains_key("ordinary") && placed.contains_key("soft"),
        "{placed:?}"
    );
    let not_evaluated =
        "which wattwise's standalone mode does not evaluate (use extender mode or the default scheduler)";
    for (pod, expected) in [
        (
            "anti-affinity",
            format!("pod has required pod anti-affinity, {not_evaluated}"),
        ),
        (
            "spread",
            format!("pod has topology spread constraints, {not_evaluated}"),
        ),
        (
            "first-consumer",
            format!(
                "pod has PersistentVolumeClaim \"local-data\" of StorageClass \"local\" with \
                 volumeBindingMode WaitForFirstConsumer, {not_evaluated}"
            ),
        ),
        (
            "immediate",
            "pod has unbound immediate PersistentVolumeClaims (\"network-data\")".to_string(),
        ),
    ] {
        wait_until(
            &format!("{pod}: FailedScheduling naming the constraint"),
            Duration::from_secs(20),
            || async {
                Ok(events_of(&client, pod)
                    .await?
                    .iter()
                    .any(|(r, note)| r == "FailedScheduling" && *note == expected))
            },
        )
        .await
        .with_context(|| format!("{:?}", scheduler.log_tail(20)))?;
    }
    let unschedulable = || async {
        Ok::<_, anyhow::Error>(
            scheduler
                .metric("wattwise_scheduler_schedule_attempts_total{result=\"unschedulable\"}")
                .await?
                .unwrap_or(0.0),
        )
    };
    let refusals = unschedulable().await?;
    assert!(refusals >= 4.0, "counted as unschedulable: {refusals}");

    // The volume controller binds the immediate claim (played here by a status update): the
    // claim event retries the pod, which is bound; the others never are.
    claims
        .patch_status(
            "network-data",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await?;
    let placed = wait_bound(&client, 3, Duration::from_secs(20)).await?;
    assert!(placed.contains_key("immediate"), "{placed:?}");
    // The claim event retried the other three as well, and they were refused again.
    wait_until(
        "the others refused again",
        Duration::from_secs(20),
        || async { Ok(unschedulable().await? >= refusals + 3.0) },
    )
    .await?;
    let placed = placements(&client).await?;
    for refused in ["anti-affinity", "spread", "first-consumer"] {
        assert!(
            !placed.contains_key(refused),
            "{refused} was bound: {placed:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_energy_level_expires_with_its_report() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(
        &plane,
        &[
            FakeNode::new("battery"),
            FakeNode::new("labelled").label("energy-status", "vulnerable"),
        ],
    )
    .await?;
    // Unknown energy ranks below vulnerable here, so a level that stops counting shows.
    let scheduler = SchedulerProcess::start(
        &plane,
        "replica-a",
        "policy: {unknown_energy_level: low-powered}\n",
    )
    .await?;
    let stale_nodes = || scheduler.metric("wattwise_scheduler_stale_nodes");
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    // The battery node is the dearer one: only its level can make it win.
    let battery =
        NodePowerSpec::new(4000, 100.0, 400.0, 1.0).energy(pb::EnergyLevel::WellPowered, 90.0);
    pump.set("battery", battery.clone());
    pump.set("labelled", NodePowerSpec::new(4000, 100.0, 150.0, 1.0));
    wait_until("both nodes fresh", Duration::from_secs(20), || async {
        Ok(stale_nodes().await? == Some(0.0))
    })
    .await
    .with_context(|| scheduler.log_tail(30))?;
    create_pod(&client, pod_json("while-reported", "100m")).await?;
    let placed = wait_bound(&client, 1, Duration::from_secs(20)).await?;
    assert_eq!(placed["while-reported"], "battery", "well-powered first");

    // The agents stop (stale_after is 3 s here): the battery's level goes with its report,
    // the label stays.
    drop(pump);
    wait_until("both nodes stale", Duration::from_secs(20), || async {
        Ok(stale_nodes().await? == Some(2.0))
    })
    .await?;
    create_pod(&client, pod_json("after-reports", "100m")).await?;
    let placed = wait_bound(&client, 2, Duration::from_secs(20)).await?;
    assert_eq!(
        placed["after-reports"], "labelled",
        "an expired level must not count: {placed:?}"
    );

    // A report the agent buffered for a minute arrives: accepted, but as old as its readings.
    let mut stream = ReportStream::connect(scheduler.grpc_addr()).await?;
    let mut buffered = battery.report("battery", "late-agent", 1);
    buffered.observed_at = Some((std::time::SystemTime::now() - Duration::from_secs(60)).into());
    assert!(stream.send(buffered).await?.accepted);
    create_pod(&client, pod_json("after-buffered", "100m")).await?;
    let placed = wait_bound(&client, 3, Duration::from_secs(20)).await?;
    assert_eq!(
        placed["after-buffered"], "labelled",
        "a report observed past stale_after is not fresh: {placed:?}"
    );
    assert_eq!(stale_nodes().await?, Some(2.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_onto_slowly_starting_pods_spreads_as_the_prices_imply() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    // Convex curves: every pod on a node makes the next one there dearer.
    let specs = [
        ("a", NodePowerSpec::new(4000, 80.0, 300.0, 2.0)),
        ("b", NodePowerSpec::new(4000, 90.0, 330.0, 2.0)),
        ("c", NodePowerSpec::new(4000, 100.0, 360.0, 2.0)),
    ];
    for (name, _) in &specs {
        plane.create_ready_node(&FakeNode::new(name)).await?;
    }
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    // The agents report several times during the burst, and always the utilisation before it:
    // no kubelet starts the pods, as no pod has started yet shortly after its bind.
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(200));
    for (name, spec) in &specs {
        pump.set(name, spec.clone());
    }
    wait_until("three nodes reporting", Duration::from_secs(20), || async {
        Ok(scheduler.metric("wattwise_scheduler_stale_nodes").await? == Some(0.0))
    })
    .await
    .with_context(|| scheduler.log_tail(30))?;

    // The spread the prices imply: each pod where it adds the fewest watts, counting the pods
    // placed before it (the scheduler's tie tolerance is 0.05 W; no two prices come that close).
    const PODS: usize = 12;
    const POD_CPU: u64 = 500;
    let curves: Vec<_> = specs
        .iter()
        .map(|(_, s)| wattwise_core::PowerCurve::new(s.curve.clone()))
        .collect::<Result<_, _>>()?;
    let mut implied = BTreeMap::<String, usize>::new();
    for _ in 0..PODS {
        let mut prices: Vec<(f64, &str)> = (specs.iter().zip(&curves))
            .map(|((name, spec), curve)| {
                let placed = implied.get(*name).copied().unwrap_or(0) as u64 * POD_CPU;
                let u = placed as f64 / spec.capacity_millicores as f64;
                let watts = curve.marginal(u, spec.capacity_millicores, POD_CPU).watts.0;
                (watts, *name)
            })
            .collect();
        prices.sort_by(|x, y| x.0.total_cmp(&y.0));
        assert!(prices[1].0 - prices[0].0 > 0.05, "{prices:?}");
        *implied.entry(prices[0].1.to_string()).or_default() += 1;
    }

    // One by one, spanning several reports.
    for i in 0..PODS {
        create_pod(&client, pod_json(&format!("slow-{i:02}"), "500m")).await?;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let placed = wait_bound(&client, PODS, Duration::from_secs(30)).await?;
    let mut per_node = BTreeMap::<String, usize>::new();
    for node in placed.values() {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    assert_eq!(per_node, implied, "bound pods must count until measured");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namesake_recreated_while_a_bind_is_on_its_way_is_scheduled() -> Result<()> {
    use kube::api::{DeleteParams, Preconditions};
    use wattwise_testenv::proxy::FaultProxy;

    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(&plane, &[FakeNode::new("a"), FakeNode::new("b")]).await?;
    // The scheduler reaches the apiserver through a proxy that can hold its requests and their
    // answers while the watches keep delivering; without leader election no Lease renewal needs
    // to get through. One bind at a time, so the namesake waits its turn in the queue.
    let proxy = FaultProxy::start(plane.apiserver_addr()).await?;
    let kubeconfig = plane.kubeconfig_via(proxy.addr())?;
    let config = "\
reports: {interval: 1s}
binding: {concurrency: 1, backoff_initial: 200ms, backoff_max: 2s, unschedulable_retry: 60s}
leader_election: {enabled: false}
";
    let mut scheduler = SchedulerProcess::spawn_with_kubeconfig(&kubeconfig, "replica-a", config)?;
    scheduler.wait_ready(Duration::from_secs(30)).await?;
    create_pod(&client, pod_json("warm-up", "100m")).await?;
    wait_bound(&client, 1, Duration::from_secs(20)).await?;
    wait_until(
        "the warm-up's event written",
        Duration::from_secs(10),
        || async { Ok(!events_of(&client, "warm-up").await?.is_empty()) },
    )
    .await?;

    // A StatefulSet's pod is created, and the scheduler's bind for it is held.
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    proxy.hold_requests();
    create_pod(&client, pod_json("web-0", "100m")).await?;
    let first = pods.get("web-0").await?.metadata.uid.context("uid")?;
    wait_until(
        "the bind is on its way",
        Duration::from_secs(20),
        || async { Ok(proxy.held_requests() > 0) },
    )
    .await
    .with_context(|| scheduler.log_tail(30))?;
    // Meanwhile the pod is deleted; the bind arrives and is refused (no such pod), and the
    // refusal is held until a namesake (another UID) is waiting in the scheduler's queue.
    let delete = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(first.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    pods.delete("web-0", &delete).await?;
    wait_until("web-0 deleted", Duration::from_secs(10), || async {
        Ok(pods.get_opt("web-0").await?.is_none())
    })
    .await?;
    proxy.hold_answers();
    wait_until("the refusal is held", Duration::from_secs(20), || async {
        Ok(proxy.held_requests() == 0 && proxy.held_answers() > 0)
    })
    .await?;
    // A connection opened while held may first have held the end of its TLS handshake: give the
    // apiserver time to answer the bind itself (it takes milliseconds).
    tokio::time::sleep(Duration::from_millis(500)).await;
    create_pod(&client, pod_json("web-0", "100m")).await?;
    let second = pods.get("web-0").await?.metadata.uid.context("uid")?;
    assert_ne!(first, second);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.open();
    let placed = wait_bound(&client, 2, Duration::from_secs(20))
        .await
        .with_context(|| scheduler.log_tail(40))?;
    assert!(placed.contains_key("web-0"), "{placed:?}");
    let bound = pods.get("web-0").await?;
    assert_eq!(bound.metadata.uid.as_deref(), Some(second.as_str()));
    assert!(scheduler.is_running(), "{}", scheduler.log_tail(40));
    Ok(())
}

/// Policy `slot_pricing`: an efficient node with a pod limit of 4 keeps its last free slots for
/// pods that use its CPU; the same state without slot pricing fills them with whatever comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_pod_slots_of_an_efficient_node_go_to_pods_that_use_its_cpu() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(
        &plane,
        &[
            FakeNode::new("efficient").cpu(16_000).pods(4),
            FakeNode::new("dear").cpu(16_000),
        ],
    )
    .await?;
    // 6.25 W per core against 18.75.
    let report = |pump: &ReportPump| {
        pump.set("efficient", NodePowerSpec::new(16_000, 100.0, 200.0, 1.0));
        pump.set("dear", NodePowerSpec::new(16_000, 100.0, 400.0, 1.0));
    };
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    report(&pump);
    wait_reports(&scheduler, 0.0, 4.0).await?;
    let place = |name: &'static str, cpu: &'static str, bound: usize| {
        let client = client.clone();
        async move {
            create_pod(&client, pod_json(name, cpu)).await?;
            let placed = wait_bound(&client, bound, Duration::from_secs(20)).await?;
            Ok::<_, anyhow::Error>(placed[name].clone())
        }
    };
    assert_eq!(place("big-0", "4", 1).await?, "efficient");
    assert_eq!(place("big-1", "4", 2).await?, "efficient");
    // Two slots and 8 cores left at a mean of 4 cores a pod: a 250 m pod would strand 3.75
    // cores that only the dear node could then take.
    assert_eq!(place("small-1", "250m", 3).await?, "dear");
    // The event states the pod's own marginal watts (0.25 of 16 cores × 300 W), not the charge.
    assert_eq!(
        wait_event(&client, "small-1", "Scheduled").await?,
        "assigned default/small-1 to dear: +4.7 W predicted, energy unknown"
    );
    assert_eq!(place("big-2", "4", 4).await?, "efficient");

    // One slot left: without slot pricing the small pod takes it.
    drop(pump);
    drop(scheduler);
    let scheduler =
        SchedulerProcess::start(&plane, "replica-b", "policy: {slot_pricing: false}\n").await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    report(&pump);
    wait_reports(&scheduler, 0.0, 4.0).await?;
    assert_eq!(place("small-2", "250m", 5).await?, "efficient");
    Ok(())
}

/// `reports.stream_rate` / `stream_burst`: a stream flooding reports is cut after its burst,
/// while another agent's reports keep being accepted and pods keep being bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_report_stream_is_cut_and_nothing_else_notices() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    nodes(&plane, &[FakeNode::new("calm"), FakeNode::new("flooded")]).await?;
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    pump.set("calm", NodePowerSpec::new(4000, 100.0, 200.0, 1.0));
    wait_reports(&scheduler, 0.0, 2.0).await?;

    // As fast as acks come back (thousands a second on loopback), one report at a time.
    let mut flood = ReportStream::connect(scheduler.grpc_addr()).await?;
    let spec = NodePowerSpec::new(4000, 10.0, 11.0, 1.0);
    let started = std::time::Instant::now();
    let mut accepted = 0u64;
    let cut = loop {
        match flood
            .send(spec.report("flooded", "flood", accepted + 1))
            .await
        {
            Ok(ack) => {
                assert!(ack.accepted, "{ack:?}");
                accepted += 1;
                anyhow::ensure!(accepted < 100_000, "the flood was never cut");
            }
            Err(e) => break format!("{e:#}"),
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "flood: {accepted} reports accepted in {seconds:.3} s ({:.0}/s) before the cut",
        accepted as f64 / seconds
    );
    assert!(cut.contains("stream cut"), "{cut}");
    // The burst (100) and the rate (20/s) over the flood's duration, no more.
    assert!(
        accepted as f64 <= 100.0 + 20.0 * seconds + 1.0,
        "{accepted} accepted in {seconds:.3} s"
    );
    assert!(accepted >= 100, "the burst is granted: {accepted}");
    assert_eq!(
        scheduler
            .metric("wattwise_scheduler_reports_total{reason=\"throttled\"}")
            .await?,
        Some(1.0)
    );

    // The calm agent goes on, a pod is bound, and the flooder may come back (a new stream).
    let before = accepted_reports(&scheduler).await?;
    wait_reports(&scheduler, before, 3.0).await?;
    create_pod(&client, pod_json("after-the-flood", "1")).await?;
    let placed = wait_bound(&client, 1, Duration::from_secs(20)).await?;
    assert!(placed.contains_key("after-the-flood"));
    let mut again = ReportStream::connect(scheduler.grpc_addr()).await?;
    let ack = again
        .send(spec.report("flooded", "flood", accepted + 1))
        .await?;
    assert!(ack.accepted, "{ack:?}");
    Ok(())
}
