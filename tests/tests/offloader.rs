//! The offloader against a real kube-apiserver + etcd and kube-controller-manager (deployment,
//! replicaset, garbage collector, disruption controllers), with agent reports over real gRPC
//! whose energy levels the tests change: pods leave a node whose energy falls for the nodes
//! reserved for them, within PodDisruptionBudgets, never without a better node, never for pods
//! no controller recreates elsewhere, not at all in a dry run, and never twice across a leader
//! change; a reservation ends at its TTL, or when its node no longer fits the replacement.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use wattwise_proto::v1 as pb;
use wattwise_testenv::control_plane::{
    finish_graceful_deletions, mark_bound_pods_ready, ControlPlane, ControllerManager, FakeNode,
};
use wattwise_testenv::pods::{
    create_deployment, create_pod, deployment_json, events_by_reason, pod_json, pods_labelled,
    wait_live_bound, PodView, NS,
};
use wattwise_testenv::process::wait_until;
use wattwise_testenv::reports::{NodePowerSpec, ReportPump};
use wattwise_testenv::scheduler::SchedulerProcess;

use pb::EnergyLevel::*;

const EVICTED: &str = "wattwise_scheduler_offload_evictions_total{result=\"evicted\"}";
const PDB_REFUSED: &str = "wattwise_scheduler_offload_evictions_total{result=\"pdb_refused\"}";
const DRY_RUN: &str = "wattwise_scheduler_offload_evictions_total{result=\"dry_run\"}";
const HONOURED: &str = "wattwise_scheduler_offload_reservations_total{outcome=\"honoured\"}";
const EXPIRED: &str = "wattwise_scheduler_offload_reservations_total{outcome=\"expired\"}";
const RELEASED: &str = "wattwise_scheduler_offload_reservations_total{outcome=\"released\"}";

/// A pass a second, pods movable at once, a workload moved once per test.
const OFFLOAD: &str = "offload: {interval: 1s, min_age: 0s, cooldown: 1h, reservation_ttl: 60s}\n";

/// The cheap node every pod goes to first while it is well powered.
fn cheap(level: pb::EnergyLevel, percent: f64) -> NodePowerSpec {
    NodePowerSpec::new(4000, 50.0, 100.0, 1.0).energy(level, percent)
}

/// A dearer node.
fn dear(level: pb::EnergyLevel, percent: f64) -> NodePowerSpec {
    NodePowerSpec::new(4000, 100.0, 300.0, 1.0).energy(level, percent)
}

/// A control plane with controllers, fake nodes and one scheduler replica with reports pumped
/// to it.
struct Cluster {
    plane: ControlPlane,
    client: Client,
    scheduler: SchedulerProcess,
    /// `None` while a test holds the controllers back (no replacements are made).
    controllers: Option<ControllerManager>,
    pump: ReportPump,
}

/// Reports stay fresh through a loaded machine's stalls of the test's report pump: these tests
/// are about levels, and a node whose report went stale for a moment ranks after fresh ones
/// whatever its level (a CI run once bound a replacement to the weak node that way).
const STEADY_REPORTS: &str = "interval: 1s, stale_after: 30s";

impl Cluster {
    /// `nodes` reporting `spec`, the scheduler with [`TEST_CONFIG`] + `extra_yaml`; returns once
    /// every node has a fresh report.
    async fn start(nodes: Vec<(FakeNode, NodePowerSpec)>, extra_yaml: &str) -> Result<Self> {
        let plane = ControlPlane::start().await?;
        let client = plane.client().await?;
        for (node, _) in &nodes {
            plane.create_ready_node(node).await?;
        }
        let scheduler =
            SchedulerProcess::start_with_reports(&plane, "replica-a", STEADY_REPORTS, extra_yaml)
                .await?;
        let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
        for (node, spec) in nodes {
            pump.set(&node.name, spec);
        }
        let controllers = plane.start_controller_manager().await?;
        wait_fresh(&scheduler).await?;
        Ok(Self {
            plane,
            client,
            scheduler,
            controllers: Some(controllers),
            pump,
        })
    }

    async fn count(&self, series: &str) -> Result<f64> {
        count(&self.scheduler, series).await
    }
}

async fn count(scheduler: &SchedulerProcess, series: &str) -> Result<f64> {
    Ok(scheduler.metric(series).await?.unwrap_or(0.0))
}

/// Every node the scheduler knows has a fresh report.
async fn wait_fresh(scheduler: &SchedulerProcess) -> Result<()> {
    wait_until("every node reporting", Duration::from_secs(20), || async {
        Ok(scheduler.metric("wattwise_scheduler_stale_nodes").await? == Some(0.0))
    })
    .await
}

/// Waits until the scheduler's log shows `text` (the offloader's pass summaries).
async fn wait_logged(scheduler: &SchedulerProcess, text: &str) -> Result<()> {
    wait_until(
        &format!("log shows {text}"),
        Duration::from_secs(30),
        || async { Ok(scheduler.log_tail(3000).contains(text)) },
    )
    .await
    .with_context(|| offload_log(scheduler))
}

/// The offloader's and the decisions' lines of the scheduler's recent log (reports drowned out).
fn offload_log(scheduler: &SchedulerProcess) -> String {
    let tail = scheduler.log_tail(3000);
    let lines: Vec<&str> = tail
        .lines()
        .filter(|l| !l.contains("report accepted"))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn uids(pods: &[PodView]) -> BTreeSet<String> {
    pods.iter().map(|p| p.uid.clone()).collect()
}

fn on<'a>(pods: &'a [PodView], node: &str) -> Vec<&'a PodView> {
    pods.iter()
        .filter(|p| p.node.as_deref() == Some(node))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_leave_a_weakening_node_for_the_nodes_reserved_for_them_and_do_not_come_back(
) -> Result<()> {
    let nodes = vec![
        (FakeNode::new("edge-1").cpu(1000), dear(WellPowered, 95.0)),
        (FakeNode::new("edge-2").cpu(1000), dear(WellPowered, 95.0)),
        (FakeNode::new("edge-3").cpu(1000), dear(WellPowered, 95.0)),
        (FakeNode::new("edge-4").cpu(1000), cheap(WellPowered, 90.0)),
    ];
    let c = Cluster::start(nodes, OFFLOAD).await?;
    create_deployment(&c.client, NS, deployment_json("web", 6, "250m")).await?;
    let before = wait_live_bound(&c.client, NS, "app=web", 6).await?;
    let weak: Vec<PodView> = on(&before, "edge-4").into_iter().cloned().collect();
    assert!(weak.len() >= 2, "the cheap node fills first: {before:?}");
    assert_eq!(
        c.count(EVICTED).await?,
        0.0,
        "nothing moves while all are well powered"
    );

    // edge-4's battery runs low: its pods go, each replacement to the node reserved for it.
    c.pump.set("edge-4", cheap(LowPowered, 22.0));
    let after = {
        let weak = uids(&weak);
        wait_until("edge-4's pods evicted", Duration::from_secs(30), || async {
            let pods = pods_labelled(&c.client, NS, "app=web").await?;
            Ok(pods
                .iter()
                .filter(|p| weak.contains(&p.uid))
                .all(|p| p.terminating))
        })
        .await
        .with_context(|| offload_log(&c.scheduler))?;
        wait_live_bound(&c.client, NS, "app=web", 6).await?
    };
    assert!(
        on(&after, "edge-4").is_empty(),
        "none back on edge-4: {after:?}"
    );
    // The node says so too (the energy adapter's label, from the same reports).
    let edge4 = Api::<Node>::all(c.client.clone()).get("edge-4").await?;
    let labels = edge4.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("energy-status").map(String::as_str),
        Some("low-powered")
    );
    let replacements: Vec<&PodView> = after
        .iter()
        .filter(|p| !uids(&before).contains(&p.uid))
        .collect();
    assert_eq!(replacements.len(), weak.len());

    // Each eviction says where its replacement was reserved, and that is where the
    // replacements are.
    let offloaded = wait_events(&c.client, "Offloaded", weak.len()).await?;
    let mut reserved = BTreeMap::<String, usize>::new();
    for (pod, note) in &offloaded {
        assert!(weak.iter().any(|w| &w.name == pod), "{pod}: {note}");
        let prefix = "evicted from edge-4 (low-powered, 22 %); reserved ";
        let rest = note
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{note}"));
        assert!(
            rest.contains("(well-powered)") && rest.ends_with("W predicted"),
            "{note}"
        );
        *reserved
            .entry(rest.split(' ').next().unwrap().into())
            .or_default() += 1;
    }
    let mut landed = BTreeMap::<String, usize>::new();
    for p in &replacements {
        *landed.entry(p.node.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(landed, reserved, "replacements on their reserved nodes");
    assert_eq!(c.count(EVICTED).await?, weak.len() as f64);
    assert_eq!(c.count(HONOURED).await?, weak.len() as f64);
    let scheduled = events_by_reason(&c.client, NS, "Scheduled").await?;
    for p in &replacements {
        assert!(
            scheduled
                .iter()
                .any(|(pod, note)| pod == &p.name && note.contains("(reserved by the offloader)")),
            "{}: {scheduled:?}",
            p.name
        );
    }

    // The evicted pods finish; edge-4 recovers: nothing moves back.
    finish_graceful_deletions(&c.client, NS).await?;
    c.pump.set("edge-4", cheap(WellPowered, 80.0));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(wait_live_bound(&c.client, NS, "app=web", 6).await?, after);

    // Another node of the workload weakens within the cooldown: its pods stay.
    let second = after[0].node.clone().unwrap();
    c.pump.set(&second, dear(LowPowered, 25.0));
    wait_logged(&c.scheduler, "cooldown=").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.count(EVICTED).await?, weak.len() as f64);
    assert_eq!(wait_live_bound(&c.client, NS, "app=web", 6).await?, after);
    drop(c.plane);
    Ok(())
}

/// Waits for at least `n` events with `reason` in the default namespace.
async fn wait_events(client: &Client, reason: &str, n: usize) -> Result<Vec<(String, String)>> {
    wait_until(
        &format!("{n} {reason} events"),
        Duration::from_secs(20),
        || async { Ok(events_by_reason(client, NS, reason).await?.len() >= n) },
    )
    .await?;
    events_by_reason(client, NS, reason).await
}

fn pdb_resource() -> ApiResource {
    ApiResource {
        group: "policy".into(),
        version: "v1beta1".into(),
        api_version: "policy/v1beta1".into(),
        kind: "PodDisruptionBudget".into(),
        plural: "poddisruptionbudgets".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disruption_budget_lets_one_pod_go_at_a_time() -> Result<()> {
    let nodes = vec![
        (FakeNode::new("weak"), cheap(WellPowered, 90.0)),
        (FakeNode::new("strong-1"), dear(WellPowered, 95.0)),
        (FakeNode::new("strong-2"), dear(WellPowered, 95.0)),
    ];
    // No cooldown: the budget alone paces the workload.
    let c = Cluster::start(
        nodes,
        "offload: {interval: 1s, min_age: 0s, cooldown: 0s, reservation_ttl: 60s}\n",
    )
    .await?;
    create_deployment(&c.client, NS, deployment_json("web", 3, "250m")).await?;
    let before = wait_live_bound(&c.client, NS, "app=web", 3).await?;
    assert_eq!(on(&before, "weak").len(), 3, "{before:?}");
    let pdbs = Api::<DynamicObject>::namespaced_with(c.client.clone(), NS, &pdb_resource());
    let pdb: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "policy/v1beta1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
    }))?;
    pdbs.create(&PostParams::default(), &pdb).await?;
    mark_bound_pods_ready(&c.client, NS).await?;
    wait_until(
        "the budget allows one disruption",
        Duration::from_secs(30),
        || async {
            let pdb = pdbs.get("web").await?;
            Ok(pdb.data["status"]["disruptionsAllowed"] == 1)
        },
    )
    .await?;

    c.pump.set("weak", cheap(LowPowered, 20.0));
    // One goes; while its replacement is not Ready the budget refuses the others, pass after
    // pass, each refusal releasing its reservation.
    let originals = uids(&before);
    let gone = || async {
        let pods = pods_labelled(&c.client, NS, "app=web").await?;
        anyhow::Ok(
            pods.iter()
                .filter(|p| p.terminating && originals.contains(&p.uid))
                .count(),
        )
    };
    wait_until("two passes refused", Duration::from_secs(30), || async {
        Ok(c.count(PDB_REFUSED).await? >= 4.0)
    })
    .await
    .with_context(|| offload_log(&c.scheduler))?;
    assert_eq!(gone().await?, 1);
    assert_eq!(c.count(EVICTED).await?, 1.0);
    assert_eq!(c.count(RELEASED).await?, c.count(PDB_REFUSED).await?);

    // Playing the kubelet: replacements become Ready, which lets the budget allow the next one.
    // At no time are two of the three pods unavailable: an original goes only once the
    // replacement of the one before is Ready.
    let (ready, worst) = (std::sync::Mutex::new(0usize), std::sync::Mutex::new(0usize));
    wait_until(
        "every pod off the weak node",
        Duration::from_secs(60),
        || async {
            let marked = mark_bound_pods_ready(&c.client, NS).await?.len();
            *ready.lock().unwrap() += marked;
            let pods = pods_labelled(&c.client, NS, "app=web").await?;
            let gone = pods
                .iter()
                .filter(|p| p.terminating && originals.contains(&p.uid))
                .count();
            let unavailable = gone.saturating_sub(*ready.lock().unwrap());
            let mut worst = worst.lock().unwrap();
            *worst = (*worst).max(unavailable);
            let live = pods.iter().filter(|p| !p.terminating).collect::<Vec<_>>();
            Ok(live.len() == 3
                && live
                    .iter()
                    .all(|p| p.node.is_some() && p.node.as_deref() != Some("weak")))
        },
    )
    .await
    .with_context(|| offload_log(&c.scheduler))?;
    assert!(*worst.lock().unwrap() <= 1, "two pods unavailable at once");
    assert_eq!(c.count(EVICTED).await?, 3.0);
    assert_eq!(
        c.count(RELEASED).await?,
        c.count(PDB_REFUSED).await?,
        "each refusal released its reservation"
    );
    assert_eq!(c.count(HONOURED).await?, 3.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_moves_without_a_better_node_nor_what_no_controller_recreates_elsewhere(
) -> Result<()> {
    let nodes = vec![
        (FakeNode::new("weak"), cheap(WellPowered, 90.0)),
        (
            FakeNode::new("tainted").taint("dedicated", "gpu", "NoSchedule"),
            dear(WellPowered, 95.0),
        ),
    ];
    let c = Cluster::start(nodes, OFFLOAD).await?;
    // Movable: a Deployment. Not: a DaemonSet's pod, a bare pod, a kube-system Deployment's pod
    // and an opted-out Deployment's pod.
    create_deployment(&c.client, NS, deployment_json("web", 2, "250m")).await?;
    let mut system = deployment_json("system", 1, "100m");
    system["metadata"]["namespace"] = json!("kube-system");
    create_deployment(&c.client, "kube-system", system).await?;
    let mut pinned = deployment_json("pinned", 1, "100m");
    pinned["spec"]["template"]["metadata"]["annotations"] = json!({"wattwise.io/offload": "false"});
    create_deployment(&c.client, NS, pinned).await?;
    create_pod(&c.client, pod_json("bare", "100m")).await?;
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": "busybox"}]}
            }
        }
    }))?;
    let ds = Api::<DaemonSet>::namespaced(c.client.clone(), NS)
        .create(&PostParams::default(), &ds)
        .await?;
    let mut daemon = pod_json("agent-weak", "100m");
    daemon["metadata"]["labels"] = json!({"app": "agent"});
    daemon["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
        "uid": ds.metadata.uid, "controller": true
    }]);
    create_pod(&c.client, daemon).await?;
    let web = wait_live_bound(&c.client, NS, "app=web", 2).await?;
    let client = &c.client;
    let stay = |selector: &'static str, ns: &'static str| wait_live_bound(client, ns, selector, 1);
    let pinned = stay("app=pinned", NS).await?;
    let system = stay("app=system", "kube-system").await?;
    let daemon = stay("app=agent", NS).await?;
    wait_until("the bare pod bound", Duration::from_secs(20), || async {
        let pod = Api::<Pod>::namespaced(c.client.clone(), NS)
            .get("bare")
            .await?;
        Ok(pod.spec.and_then(|s| s.node_name).as_deref() == Some("weak"))
    })
    .await?;
    for p in web.iter().chain(&pinned).chain(&system).chain(&daemon) {
        assert_eq!(p.node.as_deref(), Some("weak"), "{p:?}");
    }

    // The only node that is better powered does not take the pods: nothing is evicted.
    c.pump.set("weak", cheap(LowPowered, 20.0));
    wait_logged(&c.scheduler, "no_better_node=2").await?;
    let log = c.scheduler.log_tail(3000);
    for reason in [
        "bare_pod=1",
        "daemonset=1",
        "excluded_namespace=1",
        "opted_out=1",
    ] {
        assert!(
            log.contains(reason),
            "{reason} not in the pass summary:\n{log}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.count(EVICTED).await?, 0.0);
    assert_eq!(c.count(RELEASED).await?, 0.0);
    for ns in [NS, "kube-system"] {
        let pods = pods_labelled(&c.client, ns, "").await?;
        assert!(pods.iter().all(|p| !p.terminating), "{pods:?}");
    }

    // A better node arrives: the Deployment's pods move, and only they.
    let fresh = FakeNode::new("fresh");
    c.plane.create_ready_node(&fresh).await?;
    c.pump.set("fresh", dear(WellPowered, 95.0));
    wait_until("web moved to fresh", Duration::from_secs(30), || async {
        let pods = pods_labelled(&c.client, NS, "app=web").await?;
        let live: Vec<_> = pods.iter().filter(|p| !p.terminating).collect();
        Ok(live.len() == 2 && live.iter().all(|p| p.node.as_deref() == Some("fresh")))
    })
    .await
    .with_context(|| offload_log(&c.scheduler))?;
    assert_eq!(c.count(EVICTED).await?, 2.0);
    assert_eq!(stay("app=pinned", NS).await?, pinned);
    assert_eq!(stay("app=system", "kube-system").await?, system);
    assert_eq!(stay("app=agent", NS).await?, daemon);
    let bare = Api::<Pod>::namespaced(c.client.clone(), NS)
        .get("bare")
        .await?;
    assert!(bare.metadata.deletion_timestamp.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_evicts_nothing_and_says_what_it_would_do() -> Result<()> {
    let nodes = vec![
        (FakeNode::new("weak"), cheap(WellPowered, 90.0)),
        (FakeNode::new("strong"), dear(WellPowered, 95.0)),
    ];
    let c = Cluster::start(
        nodes,
        "offload: {interval: 1s, min_age: 0s, dry_run: true}\n",
    )
    .await?;
    create_deployment(&c.client, NS, deployment_json("web", 2, "250m")).await?;
    let before = wait_live_bound(&c.client, NS, "app=web", 2).await?;
    assert_eq!(on(&before, "weak").len(), 2);

    c.pump.set("weak", cheap(LowPowered, 22.0));
    let planned = wait_events(&c.client, "OffloadDryRun", 2).await?;
    for (pod, note) in &planned {
        assert!(before.iter().any(|p| &p.name == pod), "{pod}");
        assert!(
            note.starts_with(
                "would evict from weak (low-powered, 22 %); would reserve strong (well-powered), "
            ) && note.ends_with("W predicted (dry run)"),
            "{note}"
        );
    }
    // Several passes later: nothing evicted, nothing reserved, the plan not repeated in events.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(c.count(DRY_RUN).await? >= 4.0);
    assert_eq!(c.count(EVICTED).await?, 0.0);
    assert_eq!(c.count(HONOURED).await? + c.count(RELEASED).await?, 0.0);
    assert_eq!(
        events_by_reason(&c.client, NS, "OffloadDryRun")
            .await?
            .len(),
        2
    );
    assert_eq!(wait_live_bound(&c.client, NS, "app=web", 2).await?, before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_offloading_evicts_nothing_twice_and_leaks_no_reservation(
) -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    for name in ["weak", "strong-1", "strong-2"] {
        plane.create_ready_node(&FakeNode::new(name)).await?;
    }
    // Three moves a pass: the work spans passes, and the leader dies among them.
    let offload = "offload: {interval: 1s, min_age: 0s, cooldown: 0s, reservation_ttl: 5s, \
                   max_per_pass: 3}\n";
    let mut first =
        SchedulerProcess::start_with_reports(&plane, "replica-a", STEADY_REPORTS, offload).await?;
    wait_until("replica-a leads", Duration::from_secs(20), || async {
        first.is_leader().await
    })
    .await?;
    let second =
        SchedulerProcess::start_with_reports(&plane, "replica-b", STEADY_REPORTS, offload).await?;
    let pumps = [first.grpc_addr(), second.grpc_addr()]
        .map(|addr| ReportPump::start(addr, Duration::from_millis(300)));
    for pump in &pumps {
        pump.set("weak", cheap(WellPowered, 90.0));
        pump.set("strong-1", dear(WellPowered, 95.0));
        pump.set("strong-2", dear(WellPowered, 95.0));
    }
    let _controllers = plane.start_controller_manager().await?;
    wait_fresh(&first).await?;
    create_deployment(&client, NS, deployment_json("web", 8, "250m")).await?;
    let before = wait_live_bound(&client, NS, "app=web", 8).await?;
    assert_eq!(on(&before, "weak").len(), 8);
    let originals = uids(&before);

    for pump in &pumps {
        pump.set("weak", cheap(LowPowered, 20.0));
    }
    wait_until("the first eviction", Duration::from_secs(30), || async {
        let pods = pods_labelled(&client, NS, "app=web").await?;
        Ok(pods.iter().any(|p| p.terminating))
    })
    .await?;
    first.kill();
    // The standby cannot lead before the Lease expires: what is evicted now, the old leader did.
    let by_first = pods_labelled(&client, NS, "app=web")
        .await?
        .into_iter()
        .filter(|p| p.terminating)
        .count();
    assert!(!second.is_leader().await?);
    assert!(
        (1..8).contains(&by_first),
        "{by_first} evicted before the new leader"
    );
    wait_until("replica-b leads", Duration::from_secs(20), || async {
        second.is_leader().await
    })
    .await?;
    wait_until(
        "every pod off the weak node",
        Duration::from_secs(60),
        || async {
            let pods = pods_labelled(&client, NS, "app=web").await?;
            let live: Vec<_> = pods.iter().filter(|p| !p.terminating).collect();
            Ok(live.len() == 8
                && live
                    .iter()
                    .all(|p| p.node.is_some() && p.node.as_deref() != Some("weak")))
        },
    )
    .await
    .with_context(|| offload_log(&second))?;
    // Each original pod evicted once: the new leader evicted exactly those the old one had not.
    let pods = pods_labelled(&client, NS, "app=web").await?;
    let terminating: BTreeSet<String> = pods
        .iter()
        .filter(|p| p.terminating)
        .map(|p| p.uid.clone())
        .collect();
    assert_eq!(terminating, originals);
    assert_eq!(count(&second, EVICTED).await?, (8 - by_first) as f64);
    let offloaded = events_by_reason(&client, NS, "Offloaded").await?;
    let mut per_pod = BTreeMap::<&str, usize>::new();
    for (pod, _) in &offloaded {
        *per_pod.entry(pod.as_str()).or_default() += 1;
    }
    // The old leader may have died before writing its last event, never after writing two.
    assert!(per_pod.values().all(|n| *n <= 1), "{per_pod:?}");
    // The new leader's reservations all ended with their replacements; none outlives its TTL.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(count(&second, EXPIRED).await?, 0.0);
    assert_eq!(count(&second, HONOURED).await?, (8 - by_first) as f64);
    assert_eq!(pods.len(), 16, "one replacement per eviction: {pods:?}");
    Ok(())
}

/// Taints `node` so that no new pod passes the filters there.
async fn taint(client: &Client, node: &str) -> Result<()> {
    let patch = json!({"spec": {"taints": [
        {"key": "maintenance", "value": "now", "effect": "NoSchedule"}
    ]}});
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The nodes the Offloaded events say were reserved.
fn reserved_nodes(offloaded: &[(String, String)]) -> Vec<String> {
    offloaded
        .iter()
        .filter_map(|(_, note)| note.split("; reserved ").nth(1))
        .filter_map(|rest| rest.split(' ').next())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_ends_at_its_ttl_or_when_its_node_no_longer_fits_the_replacement(
) -> Result<()> {
    const REFILTERED: &str =
        "wattwise_scheduler_offload_reservations_total{outcome=\"refiltered\"}";
    let nodes = vec![
        (FakeNode::new("weak"), cheap(WellPowered, 90.0)),
        (FakeNode::new("strong-1"), dear(WellPowered, 95.0)),
        (FakeNode::new("strong-2"), dear(WellPowered, 95.0)),
    ];
    let mut c = Cluster::start(
        nodes,
        "offload: {interval: 1s, min_age: 0s, cooldown: 0s, reservation_ttl: 3s}\n",
    )
    .await?;
    create_deployment(&c.client, NS, deployment_json("web", 2, "250m")).await?;
    let before = wait_live_bound(&c.client, NS, "app=web", 2).await?;
    assert_eq!(on(&before, "weak").len(), 2);

    // No controller recreates the evicted pods: their reservations expire, counted, and the
    // replacements made later are scheduled like any pod.
    c.controllers = None;
    c.pump.set("weak", cheap(LowPowered, 20.0));
    wait_events(&c.client, "Offloaded", 2).await?;
    wait_until(
        "both reservations expired",
        Duration::from_secs(20),
        || async { Ok(c.count(EXPIRED).await? == 2.0) },
    )
    .await
    .with_context(|| offload_log(&c.scheduler))?;
    c.controllers = Some(c.plane.start_controller_manager().await?);
    let after = wait_live_bound(&c.client, NS, "app=web", 2).await?;
    assert!(
        on(&after, "weak").is_empty(),
        "{after:?}\n{}",
        offload_log(&c.scheduler)
    );
    assert_eq!(c.count(HONOURED).await? + c.count(REFILTERED).await?, 0.0);

    // A node where the replacements are weakens; the target reserved for its pod stops fitting
    // (a taint) before the replacement comes: it is scheduled elsewhere.
    c.controllers = None;
    let source = after[0].node.clone().unwrap();
    let target = if source == "strong-1" {
        "strong-2"
    } else {
        "strong-1"
    };
    let moving: Vec<String> = on(&after, &source).iter().map(|p| p.name.clone()).collect();
    c.pump.set(&source, dear(LowPowered, 25.0));
    let offloaded = wait_events(&c.client, "Offloaded", 2 + moving.len()).await?;
    let these: Vec<(String, String)> = offloaded
        .into_iter()
        .filter(|(pod, _)| moving.contains(pod))
        .collect();
    assert_eq!(
        reserved_nodes(&these),
        vec![target.to_string(); moving.len()]
    );
    taint(&c.client, target).await?;
    c.controllers = Some(c.plane.start_controller_manager().await?);
    let last = wait_live_bound(&c.client, NS, "app=web", 2).await?;
    // The pod that stayed on the target (the two may have split over the strong nodes) is not a
    // replacement; only the replacements must have gone elsewhere.
    let stayed: BTreeSet<&str> = after.iter().map(|p| p.uid.as_str()).collect();
    let replacements: Vec<&PodView> = last
        .iter()
        .filter(|p| !stayed.contains(p.uid.as_str()))
        .collect();
    assert_eq!(replacements.len(), moving.len(), "{last:?}");
    assert!(
        replacements
            .iter()
            .all(|p| p.node.as_deref() != Some(target)),
        "{last:?}\n{}",
        offload_log(&c.scheduler)
    );
    assert_eq!(c.count(REFILTERED).await?, moving.len() as f64);
    assert_eq!(c.count(HONOURED).await?, 0.0);
    Ok(())
}
