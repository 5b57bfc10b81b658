//! The simulator decides as the scheduler does: a small committed scenario (sim/scenarios/
//! example-trace.yaml) replayed against the real kube-apiserver with the real scheduler binary.
//! Both sides get the same cluster state — the scenario's nodes, the reports its agents' real
//! model and calibration code make for them, the same energy levels, the same pods arriving and
//! leaving in trace order — and every placement the simulator's view makes must be the one the
//! scheduler binds, with the same predicted marginal watts and energy level in its event.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use rand::rngs::StdRng;
use rand::SeedableRng;
use wattwise_core::{EnergyLevel, MarginalWatts};
use wattwise_scheduler::config::PolicyConfig;
use wattwise_sim::agent::{Models, Report};
use wattwise_sim::scenario::Scenario;
use wattwise_sim::view::{pod_request, Capacity, Requests, SchedulerView};
use wattwise_testenv::control_plane::{ControlPlane, FakeNode};
use wattwise_testenv::manifests::repo_dir;
use wattwise_testenv::pods::{events_of, pod_json_requesting, NS};
use wattwise_testenv::process::wait_until;
use wattwise_testenv::reports::{NodePowerSpec, ReportPump};
use wattwise_testenv::scheduler::SchedulerProcess;

const SEED: u64 = 1;
/// Trace pods replayed (arrivals; departures among them are replayed too).
const PODS: usize = 40;
/// Both sides count every pod bound since the nodes' reports on top of them (the reports say 0 %
/// throughout): the scheduler's window is its longest, the view's the same; reports stay fresh
/// as long.
const START_WINDOW: &str = "10m";
const START_WINDOW_SECONDS: f64 = 600.0;

/// Energy levels the nodes' agents report at first, and after half the pods one change.
fn initial_levels() -> BTreeMap<&'static str, (EnergyLevel, f64)> {
    BTreeMap::from([
        ("node-1", (EnergyLevel::Vulnerable, 60.0)),
        ("node-2", (EnergyLevel::Powerless, 10.0)),
        ("node-5", (EnergyLevel::LowPowered, 30.0)),
        ("node-6", (EnergyLevel::WellPowered, 95.0)),
    ])
}
const CHANGED: (&str, EnergyLevel, f64) = ("node-1", EnergyLevel::WellPowered, 90.0);

enum Step {
    Arrive(usize),
    Leave(usize),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_placements_are_the_real_schedulers() -> Result<()> {
    let scenario = Scenario::load(&repo_dir().join("sim/scenarios/example-trace.yaml"))?;
    let nodes = wattwise_sim::nodes(&scenario)?;
    let mut agents = wattwise_sim::agents(&scenario, &nodes, &mut Models::default(), SEED)?;
    let mut trace = wattwise_sim::pods(&scenario, &nodes, SEED)?;
    trace.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    trace.truncate(PODS);
    // Arrivals and the departures that come before the last arrival, in time order (a
    // departure at the same second as an arrival goes first, as the engine frees capacity first).
    let last_arrival = trace[PODS - 1].arrival;
    let mut steps: Vec<(f64, u8, Step)> = Vec::new();
    for (i, pod) in trace.iter().enumerate() {
        steps.push((pod.arrival, 1, Step::Arrive(i)));
        if let Some(lifetime) = pod.lifetime {
            if pod.arrival + lifetime < last_arrival {
                steps.push((pod.arrival + lifetime, 0, Step::Leave(i)));
            }
        }
    }
    steps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let departures = steps
        .iter()
        .filter(|s| matches!(s.2, Step::Leave(_)))
        .count();
    assert!(departures > 0, "the replay exercises departures");

    // The simulator's side: its view of the nodes, reported on once at t = 0 by their agents.
    let capacities: Vec<(String, Capacity)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.hardware.capacity()))
        .collect();
    let mut view = SchedulerView::new(&capacities, START_WINDOW_SECONDS, START_WINDOW_SECONDS);
    // The binary runs its default `policy:` (slot pricing on).
    let score = PolicyConfig::default().score_config();
    let mut rng = StdRng::seed_from_u64(SEED);
    let noise = scenario.reports.sensor_noise;
    let levels = initial_levels();
    let mut specs = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let percent = levels.get(node.name.as_str()).map(|&(_, p)| p);
        let report = agents[i].cycle(0.0, node.hardware.watts(0.0), percent, noise, &mut rng);
        assert_eq!(
            report.energy,
            levels.get(node.name.as_str()).map(|&(l, _)| l),
            "{}: the agent's level for {percent:?} %",
            node.name
        );
        view.set_ready(i, true);
        specs.insert(
            node.name.clone(),
            spec_of(&report, node.hardware.cpu_millicores, percent),
        );
        view.report(i, report, 0.0);
    }

    // The scheduler's side: the same nodes, the same reports kept fresh by a pump.
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    for node in &nodes {
        let capacity = node.hardware.capacity();
        let mut fake = FakeNode::new(&node.name).cpu(capacity.cpu_millicores);
        fake.memory_bytes = capacity.memory_mib << 20;
        fake.pods = u32::try_from(capacity.pods)?;
        plane.create_ready_node(&fake).await?;
    }
    // The view holds reports fresh for the whole replay; so does the scheduler, whatever a
    // loaded machine does to the pump's timing.
    let reports =
        format!("interval: 1s, stale_after: {START_WINDOW}, pod_start_window: {START_WINDOW}");
    let scheduler = SchedulerProcess::start_with_reports(&plane, "replay", &reports, "").await?;
    let pump = ReportPump::start(scheduler.grpc_addr(), Duration::from_millis(300));
    for (name, spec) in &specs {
        pump.set(name, spec.clone());
    }
    for (name, &(level, _)) in &levels {
        wait_level(&client, name, level).await?;
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    // Each arrived pod's (UID, node index) until it leaves.
    let mut placed: Vec<Option<(String, usize)>> = vec![None; PODS];
    let mut now = 1.0;
    let mut arrived = 0;
    let mut compared = 0;
    for (_, _, step) in &steps {
        now += 0.01;
        match *step {
            Step::Arrive(i) => {
                arrived += 1;
                if arrived == PODS / 2 {
                    // Half-way, one node's battery charges: its agent reports again (the same
                    // curve unless the reading taught the calibrator something; either way both
                    // sides get the report).
                    let (name, level, percent) = CHANGED;
                    let index = nodes.iter().position(|n| n.name == name).context(name)?;
                    let h = &nodes[index].hardware;
                    let report =
                        agents[index].cycle(0.0, h.watts(0.0), Some(percent), noise, &mut rng);
                    assert_eq!(
                        report.energy,
                        Some(level),
                        "{name}: the agent's level at {percent} %"
                    );
                    pump.set(name, spec_of(&report, h.cpu_millicores, Some(percent)));
                    wait_level(&client, name, level).await?;
                    view.report(index, report, now);
                }
                let pod = &trace[i];
                let cpu = format!("{}m", pod.cpu_millicores);
                let memory = format!("{}Mi", pod.memory_mib);
                let manifest = pod_json_requesting(&pod.name, &cpu, &memory);
                let created = pods
                    .create(&PostParams::default(), &serde_json::from_value(manifest)?)
                    .await?;
                let uid = created.metadata.uid.context("a created pod has a UID")?;
                let requests = Requests {
                    cpu_millicores: pod.cpu_millicores,
                    memory_mib: pod.memory_mib,
                };
                let request = pod_request(&uid, requests);
                let expected = match view.schedule(&request, &score) {
                    Ok(decision) => decision,
                    Err(why) => bail!("the view found no node for {}: {why:?}", pod.name),
                };
                let node = bound_node(&client, &pod.name).await?;
                let want = &nodes[expected.node].name;
                assert_eq!(
                    &node, want,
                    "{} (#{arrived}, {} m): the simulator chose {want}, the scheduler {node}",
                    pod.name, pod.cpu_millicores
                );
                let note = scheduled_note(&client, &pod.name).await?;
                let priced = format!("{} predicted", MarginalWatts(expected.marginal.watts.0));
                let energy = expected.energy.map(EnergyLevel::label).unwrap_or("unknown");
                assert!(
                    note.contains(&priced) && note.ends_with(&format!("energy {energy}")),
                    "{}: the simulator priced {priced}, energy {energy}; the scheduler said {note:?}",
                    pod.name
                );
                view.bind(expected.node, i, &request, now);
                placed[i] = Some((uid, expected.node));
                compared += 1;
            }
            Step::Leave(i) => {
                let pod = &trace[i];
                let (uid, node) = placed[i].take().context("a pod leaves after it arrived")?;
                // Gone at once: there is no kubelet to finish a graceful deletion. The scheduler
                // sees the deletion before the next pod: both come on its one pod watch, in order.
                pods.delete(&pod.name, &DeleteParams::default().grace_period(0))
                    .await?;
                view.unbind(
                    node,
                    i,
                    &pod_request(
                        &uid,
                        Requests {
                            cpu_millicores: pod.cpu_millicores,
                            memory_mib: pod.memory_mib,
                        },
                    ),
                    now,
                );
            }
        }
    }
    assert_eq!(compared, PODS);
    let used: std::collections::BTreeSet<String> = wattwise_testenv::pods::placements(&client)
        .await?
        .into_values()
        .collect();
    assert!(
        used.len() > 1,
        "the replay spreads over several nodes: {used:?}"
    );
    assert!(
        !used.contains("node-2"),
        "the powerless node got a pod: {used:?}"
    );
    drop(pump);
    Ok(())
}

/// What the node's agent says in `report`, as the scheduler receives it.
fn spec_of(report: &Report, capacity_millicores: u64, percent: Option<f64>) -> NodePowerSpec {
    NodePowerSpec {
        capacity_millicores,
        utilisation: report.utilisation,
        curve: report.curve.points().to_vec(),
        energy: report
            .energy
            .zip(percent)
            .map(|(level, percent)| (level.to_proto(), percent)),
    }
}

/// The node `pod` is bound to, once it is.
async fn bound_node(client: &Client, pod: &str) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let node = std::sync::Mutex::new(None);
    wait_until(&format!("{pod} bound"), Duration::from_secs(30), || async {
        let bound = pods.get(pod).await?.spec.and_then(|s| s.node_name);
        let found = bound.is_some();
        *node.lock().unwrap() = bound;
        Ok(found)
    })
    .await?;
    Ok(node.into_inner().unwrap().unwrap_or_default())
}

/// The note of the pod's `Scheduled` event ("assigned default/p to n: +3.1 W predicted, energy x").
async fn scheduled_note(client: &Client, pod: &str) -> Result<String> {
    let note = std::sync::Mutex::new(String::new());
    wait_until(
        &format!("{pod}'s Scheduled event"),
        Duration::from_secs(30),
        || async {
            let events = events_of(client, pod).await?;
            match events.into_iter().find(|(reason, _)| reason == "Scheduled") {
                Some((_, n)) => {
                    *note.lock().unwrap() = n;
                    Ok(true)
                }
                None => Ok(false),
            }
        },
    )
    .await?;
    Ok(note.into_inner().unwrap())
}

/// Waits until the scheduler's energy adapter has published `level` on `node`: its cache has the
/// report that says so.
async fn wait_level(client: &Client, node: &str, level: EnergyLevel) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until(
        &format!("{node} labelled {level}"),
        Duration::from_secs(20),
        || async {
            let labels = nodes.get(node).await?.metadata.labels.unwrap_or_default();
            Ok(labels.get("energy-status").map(String::as_str) == Some(level.label()))
        },
    )
    .await
}
