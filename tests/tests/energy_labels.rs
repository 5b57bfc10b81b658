//! The energy adapter against a real kube-apiserver + etcd, with agent reports over real gRPC:
//! the leader publishes reported levels as the `energy-status` label and annotations, only on
//! change, never touches an operator's label, and removes its own when the reports stop.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::Client;
use wattwise_proto::v1 as pb;
use wattwise_testenv::control_plane::{ControlPlane, FakeNode};
use wattwise_testenv::pods::{create_pod, pod_json, wait_bound};
use wattwise_testenv::process::wait_until;
use wattwise_testenv::reports::{NodePowerSpec, ReportPump};
use wattwise_testenv::scheduler::SchedulerProcess;

const SOURCE: &str = "wattwise.io/energy-status-source";
const PERCENT: &str = "wattwise.io/energy-percent";
const PUBLISHED: &str = "wattwise_scheduler_energy_label_patches_total{result=\"published\"}";
const REMOVED: &str = "wattwise_scheduler_energy_label_patches_total{result=\"removed\"}";

/// What a node's metadata says: (energy-status label, source annotation, percent annotation).
type Published = (Option<String>, Option<String>, Option<String>);

async fn published(client: &Client, node: &str) -> Result<Published> {
    let node = Api::<Node>::all(client.clone()).get(node).await?;
    let labels = node.metadata.labels.unwrap_or_default();
    let annotations = node.metadata.annotations.unwrap_or_default();
    Ok((
        labels.get("energy-status").cloned(),
        annotations.get(SOURCE).cloned(),
        annotations.get(PERCENT).cloned(),
    ))
}

fn ours(level: &str, percent: &str) -> Published {
    (
        Some(level.into()),
        Some("wattwise".into()),
        Some(percent.into()),
    )
}

async fn wait_published(client: &Client, node: &str, want: Published) -> Result<()> {
    let last = std::sync::Mutex::new(None);
    wait_until(
        &format!("{node} labelled {want:?}"),
        Duration::from_secs(20),
        || async {
            let now = published(client, node).await?;
            let done = now == want;
            *last.lock().unwrap() = Some(now);
            Ok(done)
        },
    )
    .await
    .with_context(|| format!("{node} says {:?}", last.lock().unwrap()))
}

async fn count(scheduler: &SchedulerProcess, series: &str) -> Result<f64> {
    Ok(scheduler.metric(series).await?.unwrap_or(0.0))
}

fn battery(level: pb::EnergyLevel, percent: f64) -> NodePowerSpec {
    // The cheaper node: only its level can keep pods off it.
    NodePowerSpec::new(4000, 50.0, 100.0, 1.0).energy(level, percent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_are_published_follow_changes_and_go_with_their_reports() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    plane.create_ready_node(&FakeNode::new("battery")).await?;
    plane
        .create_ready_node(&FakeNode::new("operator").label("energy-status", "vulnerable"))
        .await?;
    // Unknown energy ranks below vulnerable, so a level that outlives its reports would show.
    let scheduler = SchedulerProcess::start(
        &plane,
        "replica-a",
        "policy: {unknown_energy_level: low-powered}\n",
    )
    .await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    use pb::EnergyLevel::*;
    pump.set("battery", battery(WellPowered, 90.0));
    // The operator's node has an agent without an energy source: its label is the level.
    pump.set("operator", NodePowerSpec::new(4000, 100.0, 300.0, 1.0));
    let operator_label = (Some("vulnerable".to_string()), None, None);

    wait_published(&client, "battery", ours("well-powered", "90")).await?;
    assert_eq!(published(&client, "operator").await?, operator_label);
    assert_eq!(count(&scheduler, PUBLISHED).await?, 1.0);

    // The level follows a change, and changes back.
    pump.set("battery", battery(LowPowered, 30.0));
    wait_published(&client, "battery", ours("low-powered", "30")).await?;
    pump.set("battery", battery(WellPowered, 80.0));
    wait_published(&client, "battery", ours("well-powered", "80")).await?;
    let patches = count(&scheduler, PUBLISHED).await?;
    assert_eq!(patches, 3.0, "one patch per change");

    // Unchanged reports for several rounds write nothing.
    let accepted = || scheduler.metric("wattwise_scheduler_reports_total{reason=\"accepted\"}");
    let before = accepted().await?.unwrap_or(0.0);
    wait_until("20 more reports", Duration::from_secs(20), || async {
        Ok(accepted().await?.unwrap_or(0.0) >= before + 20.0)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // two more adapter rounds
    assert_eq!(count(&scheduler, PUBLISHED).await?, patches);
    assert_eq!(published(&client, "operator").await?, operator_label);

    // A well-powered, cheaper node wins while its level is reported.
    create_pod(&client, pod_json("while-reported", "100m")).await?;
    let placed = wait_bound(&client, 1, Duration::from_secs(20)).await?;
    assert_eq!(placed["while-reported"], "battery");

    // The agents stop (stale_after is 3 s): wattwise's label and annotations go, the operator's
    // label stays and still counts; the old well-powered level is gone with the reports.
    drop(pump);
    wait_published(&client, "battery", (None, None, None)).await?;
    assert_eq!(count(&scheduler, REMOVED).await?, 1.0);
    assert_eq!(published(&client, "operator").await?, operator_label);
    create_pod(&client, pod_json("after-reports", "100m")).await?;
    let placed = wait_bound(&client, 2, Duration::from_secs(20)).await?;
    assert_eq!(
        placed["after-reports"], "operator",
        "the operator's vulnerable label beats a node whose level expired: {placed:?}"
    );
    // Nothing more to write: the removal is not repeated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&scheduler, REMOVED).await?, 1.0);
    assert_eq!(
        scheduler
            .metric("wattwise_scheduler_energy_labelled_nodes{level=\"well-powered\"}")
            .await?,
        Some(0.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_writes_nothing_and_a_new_leader_rewrites_nothing_unchanged() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    for name in ["edge-1", "edge-2"] {
        plane.create_ready_node(&FakeNode::new(name)).await?;
    }
    let mut first = SchedulerProcess::start(&plane, "replica-a", "").await?;
    wait_until("replica-a leads", Duration::from_secs(20), || async {
        first.is_leader().await
    })
    .await?;
    let second = SchedulerProcess::start(&plane, "replica-b", "").await?;
    // Agents report to every replica.
    use pb::EnergyLevel::*;
    let pumps = [first.grpc_addr(), second.grpc_addr()]
        .map(|addr| ReportPump::start(addr, Duration::from_millis(300)));
    for pump in &pumps {
        pump.set("edge-1", battery(Vulnerable, 55.0));
        pump.set("edge-2", battery(Powerless, 5.0));
    }
    wait_published(&client, "edge-1", ours("vulnerable", "55")).await?;
    wait_published(&client, "edge-2", ours("powerless", "5")).await?;
    assert_eq!(count(&first, PUBLISHED).await?, 2.0);

    // The standby knows the same levels and writes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!second.is_leader().await?);
    assert!(
        count(
            &second,
            "wattwise_scheduler_reports_total{reason=\"accepted\"}"
        )
        .await?
            > 0.0
    );
    assert_eq!(
        second
            .metric("wattwise_scheduler_energy_label_patches_total{result=\"published\"}")
            .await?,
        None,
        "a standby must not patch nodes"
    );

    // The leader goes; the new one finds every label right and writes nothing.
    first.kill();
    wait_until("replica-b leads", Duration::from_secs(20), || async {
        second.is_leader().await
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&second, PUBLISHED).await?, 0.0);
    assert_eq!(count(&second, REMOVED).await?, 0.0);
    assert_eq!(
        second
            .metric("wattwise_scheduler_energy_labelled_nodes{level=\"powerless\"}")
            .await?,
        Some(1.0)
    );
    // … and writes what changes.
    pumps[1].set("edge-2", battery(LowPowered, 20.0));
    wait_published(&client, "edge-2", ours("low-powered", "20")).await?;
    assert_eq!(count(&second, PUBLISHED).await?, 1.0);
    assert_eq!(
        published(&client, "edge-1").await?,
        ours("vulnerable", "55")
    );
    Ok(())
}
