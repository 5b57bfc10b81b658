//! `wattwise-demo`: the README's main command. A real kube-apiserver + etcd, five fake edge nodes
//! that differ (hardware from published SPECpower results, inlet temperature, BMC layout, stored
//! energy), each with its own ipmi_sim BMC and wattwise-agent, and the wattwise-scheduler. It
//! submits the sample workload from deploy/examples/, drives every node's utilisation and BMC
//! power from the pods bound there (no kubelet runs them), prints where each pod went and why,
//! and stops everything it started.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::Client;
use wattwise_proto::v1::node_power_client::NodePowerClient;
use wattwise_proto::v1::{CalibrationState, GetReportRequest};
use wattwise_testenv::agent::{AgentProcess, Launch};
use wattwise_testenv::bmc::{Bmc, BmcSpec};
use wattwise_testenv::control_plane::{ControlPlane, FakeNode};
use wattwise_testenv::drive::{set_dcmi_power, set_utilisation, write_atomically};
use wattwise_testenv::process::{require_program, wait_until};
use wattwise_testenv::scheduler::SchedulerProcess;
use wattwise_testenv::served::workspace_binary;
use wattwise_testenv::specpower::{self, SpecServer};

/// Utilisation of a node with no pods (system daemons).
const BACKGROUND_UTILISATION: f64 = 0.03;
/// The agents' read interval: short, so the warm-up gives calibration its samples in seconds.
const READ_INTERVAL_MS: u64 = 100;
/// Load levels every node passes through before the workload arrives, as a day of ordinary load
/// would take it, so each agent has calibrated the generic model against its BMC.
const WARM_UP_LEVELS: [f64; 3] = [0.2, 0.5, 0.8];
/// How long each warm-up level is held: 50 readings (calibration counts a level as known after 30).
const WARM_UP_HOLD: Duration = Duration::from_millis(50 * READ_INTERVAL_MS);

#[derive(Debug, Clone, Copy)]
enum Layout {
    DellLike,
    LenovoLike,
}

/// One fake node of the demo.
struct NodePlan {
    name: &'static str,
    result_id: &'static str,
    layout: Layout,
    inlet_celsius: f64,
    energy_percent: f64,
}

const PLAN: [NodePlan; 5] = [
    NodePlan {
        name: "edge-1",
        result_id: "power_ssj2008-20181125-00869",
        layout: Layout::DellLike,
        inlet_celsius: 21.0,
        energy_percent: 92.0,
    },
    NodePlan {
        name: "edge-2",
        result_id: "power_ssj2008-20220204-01163",
        layout: Layout::LenovoLike,
        inlet_celsius: 27.0,
        energy_percent: 81.0,
    },
    NodePlan {
        name: "edge-3",
        result_id: "power_ssj2008-20191203-01014",
        layout: Layout::DellLike,
        inlet_celsius: 24.0,
        energy_percent: 58.0,
    },
    NodePlan {
        name: "edge-4",
        result_id: "power_ssj2008-20130304-00599",
        layout: Layout::LenovoLike,
        inlet_celsius: 30.0,
        energy_percent: 28.0,
    },
    NodePlan {
        name: "edge-5",
        result_id: "power_ssj2008-20130610-00616",
        layout: Layout::DellLike,
        inlet_celsius: 22.0,
        energy_percent: 9.0,
    },
];

struct DemoNode {
    plan: &'static NodePlan,
    server: SpecServer,
    capacity_millicores: u64,
    bmc: Bmc,
    agent: AgentProcess,
    cpu_file: PathBuf,
    idle_watts: f64,
    _dir: tempfile::TempDir,
}

impl DemoNode {
    fn measured_watts(&self, utilisation: f64) -> f64 {
        self.server
            .watts_at_inlet(utilisation, self.plan.inlet_celsius)
    }

    /// What the BMC and the agent's CPU source show at `utilisation`.
    fn drive(&mut self, utilisation: f64) -> Result<()> {
        let u = utilisation.clamp(0.0, 1.0);
        set_utilisation(&self.cpu_file, u)?;
        let watts = self.measured_watts(u);
        let cpu_temp = self.plan.inlet_celsius + 12.0 + 45.0 * u;
        match self.plan.layout {
            Layout::DellLike => {
                set_dcmi_power(&mut self.bmc, watts)?;
                self.bmc.set_reading("Pwr Consumption", watts)?;
            }
            Layout::LenovoLike => {
                self.bmc.set_reading("Sys Power", watts)?;
                self.bmc.set_reading("CPU1 Temp", cpu_temp.round())?;
                self.bmc
                    .set_reading("CPU2 Temp", (cpu_temp + 1.0).round())?;
            }
        }
        Ok(())
    }
}

/// The shipped generic power model (`models/`): every demo node runs it, configured with its
/// server's published idle and peak watts as an operator would, and calibrates it online.
fn generic_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/generic.onnx")
}

async fn start_node(
    plane: &ControlPlane,
    plan: &'static NodePlan,
    scheduler_grpc: std::net::SocketAddr,
) -> Result<DemoNode> {
    let server = specpower::by_result_id(plan.result_id)?;
    let capacity_millicores = u64::from(server.threads) * 1000;
    plane
        .create_ready_node(
            &FakeNode::new(plan.name)
                .cpu(capacity_millicores)
                .memory_gib(32),
        )
        .await?;
    let mut spec = match plan.layout {
        Layout::DellLike => BmcSpec::dell_like(),
        Layout::LenovoLike => BmcSpec::lenovo_like(),
    };
    let inlet_sensor = match plan.layout {
        Layout::DellLike => "Inlet Temp",
        Layout::LenovoLike => "Ambient Temp",
    };
    for s in spec.sensors.iter_mut() {
        if s.name == inlet_sensor {
            s.value = plan.inlet_celsius;
        }
    }
    let idle_watts = server.watts_at_inlet(BACKGROUND_UTILISATION, plan.inlet_celsius);
    if spec.dcmi_watts.is_some() {
        spec.dcmi_watts = Some(idle_watts.round());
    }
    let bmc = Bmc::start(spec).await?;
    let dir = tempfile::Builder::new()
        .prefix("wattwise-demo-node-")
        .tempdir()?;
    let (cpu_file, energy_file) = (dir.path().join("cpu"), dir.path().join("energy"));
    set_utilisation(&cpu_file, BACKGROUND_UTILISATION)?;
    write_atomically(&energy_file, &format!("{}\n", plan.energy_percent))?;
    let config = format!(
        "interval: {READ_INTERVAL_MS}ms\n\
         bmc: {{mode: lan, host: 127.0.0.1, port: {port}, username: {user}, password_env: IPMI_PASSWORD}}\n\
         cpu: {{source: file, file: \"{cpu}\", capacity_millicores: {capacity_millicores}}}\n\
         model: {{path: \"{model}\", idle_watts: {idle}, peak_watts: {peak}}}\n\
         energy: {{source: {{type: file, path: \"{energy}\"}}, interval: 1s}}\n\
         scheduler: {{endpoints: [\"{scheduler_grpc}\"]}}\n",
        port = bmc.port(),
        user = bmc.username(),
        cpu = cpu_file.display(),
        model = generic_model().display(),
        idle = server.watts[0],
        peak = server.watts[10],
        energy = energy_file.display(),
    );
    let launch = Launch {
        binary: Some(workspace_binary("wattwise-agent")?),
        ..Default::default()
    };
    let agent = AgentProcess::start_with(
        &config,
        &[("NODE_NAME", plan.name), ("IPMI_PASSWORD", bmc.password())],
        &launch,
    )
    .await?;
    let mut node = DemoNode {
        plan,
        server,
        capacity_millicores,
        bmc,
        agent,
        cpu_file,
        idle_watts,
        _dir: dir,
    };
    node.drive(BACKGROUND_UTILISATION)?;
    Ok(node)
}

/// CPU requested by the bound pods of `namespace`, per node, and pod → (node, cpu).
async fn bound_pods(
    client: &Client,
    namespace: &str,
) -> Result<(
    BTreeMap<String, u64>,
    BTreeMap<String, (Option<String>, u64)>,
)> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let mut per_node = BTreeMap::new();
    let mut per_pod = BTreeMap::new();
    for pod in pods.items {
        let cpu = wattwise_scheduler::cluster::convert::pod_request(&pod, 0)?
            .requests
            .cpu_millicores;
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        if let Some(n) = &node {
            *per_node.entry(n.clone()).or_default() += cpu;
        }
        per_pod.insert(pod.metadata.name.unwrap_or_default(), (node, cpu));
    }
    Ok((per_node, per_pod))
}

/// pod → the scheduler's note on it (Scheduled or the last FailedScheduling).
async fn scheduler_notes(
    client: &Client,
    namespace: &str,
) -> Result<BTreeMap<String, (String, String)>> {
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let mut notes = BTreeMap::new();
    for e in events.items {
        let Some(pod) = e.regarding.and_then(|r| r.name) else {
            continue;
        };
        let reason = e.reason.unwrap_or_default();
        if reason == "Scheduled" || !notes.contains_key(&pod) {
            notes.insert(pod, (reason, e.note.unwrap_or_default()));
        }
    }
    Ok(notes)
}

/// "+12.3 W" out of "assigned ns/p to n: +12.3 W predicted, energy e".
fn predicted_delta(note: &str) -> Option<f64> {
    let after = note.split(": ").nth(1)?;
    after
        .split(" W")
        .next()?
        .trim_start_matches('+')
        .parse()
        .ok()
}

/// The agent's latest report, over its gRPC API.
async fn agent_report(agent: &AgentProcess) -> Result<wattwise_core::ValidatedReport> {
    let mut client = NodePowerClient::connect(format!("http://{}", agent.grpc_addr())).await?;
    let report = client.get_report(GetReportRequest {}).await?.into_inner();
    Ok(wattwise_core::validate(report)?)
}

fn level_of(percent: f64) -> &'static str {
    wattwise_core::EnergyLevel::from_percent(percent).label()
}

/// Watts the same pods would add under a placement that ignores power: each pod to the `eligible`
/// node with the most free CPU (kube-scheduler's default LeastAllocated spreading), largest first;
/// and how many pods fit on no eligible node.
fn spread_baseline(
    nodes: &[DemoNode],
    pods: &BTreeMap<String, (Option<String>, u64)>,
    eligible: impl Fn(&DemoNode) -> bool,
) -> (f64, usize) {
    let mut unplaced = 0;
    let mut used: Vec<u64> = vec![0; nodes.len()];
    let mut sizes: Vec<u64> = pods.values().map(|(_, cpu)| *cpu).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    for cpu in sizes {
        let best = (0..nodes.len())
            .filter(|&i| eligible(&nodes[i]) && used[i] + cpu <= nodes[i].capacity_millicores)
            .max_by(|&a, &b| {
                let free = |i: usize| 1.0 - (used[i] as f64 / nodes[i].capacity_millicores as f64);
                free(a).total_cmp(&free(b))
            });
        match best {
            Some(i) => used[i] += cpu,
            None => unplaced += 1,
        }
    }
    let watts = nodes
        .iter()
        .zip(&used)
        .map(|(n, &u)| {
            n.measured_watts(BACKGROUND_UTILISATION + u as f64 / n.capacity_millicores as f64)
                - n.idle_watts
        })
        .sum();
    (watts, unplaced)
}

fn repo_root() -> Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map(Path::to_path_buf)
        .context("tests/ has no parent")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // Dropping the demo future drops every fixture, which stops what it started.
    tokio::select! {
        result = demo() => result,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping everything the demo started.");
            Ok(())
        }
    }
}

async fn demo() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let workload = match args.iter().position(|a| a == "--workload") {
        Some(i) => PathBuf::from(args.get(i + 1).context("--workload needs a file")?),
        None => repo_root()?.join("deploy/examples/workload.yaml"),
    };
    let namespace = "wattwise-demo";
    let kubectl = require_program("kubectl")?;
    let started = Instant::now();

    println!("wattwise demo: starting kube-apiserver + etcd (cached build) …");
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    let scheduler = SchedulerProcess::start(&plane, "wattwise-demo", "").await?;
    println!(
        "  scheduler up: gRPC {} metrics {}",
        scheduler.grpc_addr(),
        scheduler.metrics_addr()
    );

    let mut nodes = Vec::new();
    for plan in &PLAN {
        let node = start_node(&plane, plan, scheduler.grpc_addr()).await?;
        println!(
            "  {:7} {:>5.1} W idle  {:>2} CPUs  inlet {:>4.1} °C  energy {:>3.0} % ({:13})  BMC {:?} on :{}  {} ({})",
            plan.name, node.idle_watts, node.capacity_millicores / 1000, plan.inlet_celsius,
            plan.energy_percent, level_of(plan.energy_percent), plan.layout, node.bmc.port(),
            node.server.name, node.server.year
        );
        nodes.push(node);
    }
    wait_until(
        "every agent reporting to the scheduler",
        Duration::from_secs(60),
        || async { Ok(scheduler.metric("wattwise_scheduler_stale_nodes").await? == Some(0.0)) },
    )
    .await
    .with_context(|| scheduler.log_tail(20))?;

    println!(
        "\nwarming up: every node runs at {:?} % load for {:?} each, so each agent calibrates the generic model against its BMC …",
        WARM_UP_LEVELS.map(|u| u * 100.0),
        WARM_UP_HOLD
    );
    for level in WARM_UP_LEVELS.into_iter().chain([BACKGROUND_UTILISATION]) {
        for node in nodes.iter_mut() {
            node.drive(level)?;
        }
        tokio::time::sleep(WARM_UP_HOLD).await;
    }
    for node in &nodes {
        let name = node.plan.name;
        wait_until(
            &format!("{name}'s agent calibrated"),
            Duration::from_secs(30),
            || async {
                let report = agent_report(&node.agent).await?;
                Ok(report.report().model.as_ref().map(|m| m.calibration)
                    == Some(CalibrationState::Calibrated as i32))
            },
        )
        .await
        .with_context(|| node.agent.log_tail(20))?;
        let report = agent_report(&node.agent).await?;
        let mape = report
            .report()
            .model
            .as_ref()
            .and_then(|m| m.calibration_mape_percent);
        println!(
            "  {name:7} calibrated; error on its last 60 readings, each scored before the fit learnt it: {}",
            mape.map_or("n/a".into(), |m| format!("{m:.1} %"))
        );
    }

    println!("\nsubmitting {} …", workload.display());
    let out = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(plane.kubeconfig_path())
        .args(["apply", "-f"])
        .arg(&workload)
        .output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Drive each node from its bound pods until every pod is placed (or waits as unschedulable)
    // and the agents have reported the new load.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut settled_since: Option<Instant> = None;
    let pods = loop {
        let (per_node, pods) = bound_pods(&client, namespace).await?;
        for node in nodes.iter_mut() {
            let cpu = per_node.get(node.plan.name).copied().unwrap_or(0);
            node.drive(BACKGROUND_UTILISATION + cpu as f64 / node.capacity_millicores as f64)?;
        }
        let notes = scheduler_notes(&client, namespace).await?;
        let decided = !pods.is_empty()
            && pods
                .keys()
                .all(|p| pods[p].0.is_some() || notes.contains_key(p));
        if decided {
            let since = *settled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(3) {
                break pods;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "pods still undecided after 120 s; scheduler log:\n{}",
                scheduler.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let notes = scheduler_notes(&client, namespace).await?;

    println!(
        "\n{:<16} {:>6}  {:<8} {:>10}  {:<13} note",
        "pod", "CPU", "node", "ΔW pred.", "energy"
    );
    let mut predicted_total = 0.0;
    for (pod, (node, cpu)) in &pods {
        let (reason, note) = notes.get(pod).cloned().unwrap_or_default();
        let level = node
            .as_ref()
            .and_then(|n| nodes.iter().find(|d| d.plan.name == n))
            .map(|d| level_of(d.plan.energy_percent))
            .unwrap_or("-");
        let delta = predicted_delta(&note).filter(|_| reason == "Scheduled");
        predicted_total += delta.unwrap_or(0.0);
        println!(
            "{:<16} {:>5}m  {:<8} {:>10}  {:<13} {}",
            pod,
            cpu,
            node.as_deref().unwrap_or("(pending)"),
            delta
                .map(|d| format!("{d:+.1} W"))
                .unwrap_or_else(|| "-".into()),
            level,
            if reason == "Scheduled" {
                String::new()
            } else {
                format!("{reason}: {note}")
            }
        );
    }

    println!(
        "\n{:<8} {:>5} {:>6} {:>9} {:>9} {:>8} {:>10}  {:<13}",
        "node", "pods", "util", "idle W", "BMC W", "ΔW", "model W", "energy (agent)"
    );
    let mut measured_total = 0.0;
    for node in &nodes {
        let count = pods
            .values()
            .filter(|(n, _)| n.as_deref() == Some(node.plan.name))
            .count();
        let cpu: u64 = pods
            .values()
            .filter(|(n, _)| n.as_deref() == Some(node.plan.name))
            .map(|(_, c)| c)
            .sum();
        let util = BACKGROUND_UTILISATION + cpu as f64 / node.capacity_millicores as f64;
        // What the agent itself read from its BMC over IPMI and what its model predicts.
        let report = agent_report(&node.agent).await?;
        let bmc_watts = report
            .report()
            .measured
            .as_ref()
            .map_or(f64::NAN, |m| m.watts);
        let delta = bmc_watts - node.idle_watts;
        measured_total += delta;
        println!(
            "{:<8} {:>5} {:>5.0}% {:>9.1} {:>9.1} {:>+8.1} {:>10.1}  {:<13}",
            node.plan.name,
            count,
            util * 100.0,
            node.idle_watts,
            bmc_watts,
            delta,
            report.predicted_watts(),
            report.energy_level().map_or("none", |l| l.label())
        );
    }
    let on_powerless = pods
        .values()
        .filter(|(n, _)| {
            n.as_ref().is_some_and(|n| {
                nodes
                    .iter()
                    .any(|d| d.plan.name == n && level_of(d.plan.energy_percent) == "powerless")
            })
        })
        .count();
    if on_powerless > 0 {
        bail!("{on_powerless} pods were bound to a powerless node");
    }
    let (baseline, _) = spread_baseline(&nodes, &pods, |_| true);
    // The same spread kept to the energy levels wattwise placed pods at: what remains of the
    // difference is placement; the rest is the price of sparing the weaker batteries.
    let used_levels: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| {
            pods.values()
                .any(|(at, _)| at.as_deref() == Some(n.plan.name))
        })
        .map(|n| level_of(n.plan.energy_percent))
        .collect();
    let (within_tiers, left_out) = spread_baseline(&nodes, &pods, |n| {
        used_levels.contains(level_of(n.plan.energy_percent))
    });
    let left_out = match left_out {
        0 => String::new(),
        n => format!(", {n} pods fitting on none of them"),
    };
    let ratio = |spread: f64| {
        if spread > 0.0 {
            measured_total / spread
        } else {
            f64::NAN
        }
    };
    let bound = pods.values().filter(|(n, _)| n.is_some()).count();
    println!(
        "\nsummary: {bound}/{} pods bound, none on a powerless node; predicted +{predicted_total:.1} W, \
         measured by the agents' BMC reads +{measured_total:.1} W; a power-blind spread of the same pods (most free CPU \
         first) would add +{baseline:.1} W on every node (wattwise/spread = {:.2}), +{within_tiers:.1} W on the nodes at \
         the energy levels wattwise used ({}{left_out}; wattwise/spread = {:.2}); {:.0} s in all.",
        pods.len(),
        ratio(baseline),
        used_levels.into_iter().collect::<Vec<_>>().join(", "),
        ratio(within_tiers),
        started.elapsed().as_secs_f64()
    );
    for node in nodes.iter_mut() {
        node.agent.stop();
    }
    println!("stopping everything the demo started.");
    Ok(())
}
