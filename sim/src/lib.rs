//! wattwise-sim: replays pod traces through the scheduler's own policy and through baselines on
//! simulated clusters of published server power curves, with the same accounting for all.
//!
//! - [`scenario`]: the scenario file format;
//! - [`specpower`]: the published server curves nodes draw;
//! - [`solar`]: panels and batteries of edge nodes;
//! - [`workload`]: trace input (Alibaba layout) and the synthetic generator;
//! - [`agent`]: what each node's agent reports, by the agent's own model and calibration code;
//! - [`view`]: the scheduler's view and decisions (the one module speaking its types);
//! - [`policy`]: the placement policies;
//! - [`engine`]: the discrete-event simulation and its energy accounting;
//! - [`report`]: figures over seeds, as a table or JSON.
pub mod agent;
pub mod cluster;
pub mod engine;
pub mod plot;
pub mod policy;
pub mod report;
pub mod scenario;
pub mod solar;
pub mod specpower;
pub mod view;
pub mod workload;

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

use cluster::{Hardware, SimNode};
use engine::{Outcome, Setup, Timing};
use policy::PolicyName;
use scenario::Scenario;
use workload::TracePod;

/// Each random stream of a run is its seed xor a constant of its own, so drawing more from one
/// stream never shifts another.
pub(crate) mod stream {
    pub const WORKLOAD: u64 = 0x5eed_0f00_3a11_0001;
    pub const SHARES: u64 = 0x5eed_0f00_3a11_0002;
    pub const WARM_UP: u64 = 0x5eed_0f00_3a11_0003;
    pub const SENSOR_NOISE: u64 = 0x5eed_0f00_3a11_0004;
}

#[derive(Debug, Error)]
pub enum SimError {
    #[error(transparent)]
    Spec(#[from] specpower::SpecError),
    #[error(transparent)]
    Trace(#[from] workload::TraceError),
    #[error("power model: {0}")]
    Model(#[from] wattwise_agent::model::ModelError),
}

/// One run's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub policy: PolicyName,
    pub seed: u64,
    pub outcome: Outcome,
    pub timing: Timing,
}

/// The scenario's nodes, in order: its groups, then its node list.
pub fn nodes(scenario: &Scenario) -> Result<Vec<SimNode>, SimError> {
    let curated = specpower::curated()?;
    let find = |id: &str| {
        curated
            .iter()
            .find(|s| s.result_id == id)
            .cloned()
            .map(Arc::new)
            .ok_or_else(|| specpower::SpecError::UnknownResult {
                id: id.into(),
                file: "data/specpower/specpower_curated.csv",
            })
    };
    let mut nodes = Vec::new();
    for group in &scenario.nodes {
        let spec = find(&group.spec)?;
        let storage = match &group.battery {
            Some(b) => Some(solar::Storage {
                battery: solar::Battery {
                    capacity_wh: b.capacity_wh,
                    charge_wh: b.capacity_wh * b.initial_percent / 100.0,
                    restart_percent: b.restart_percent,
                },
                sun: match &group.solar {
                    Some(s) => Some(Arc::new(solar::Sun::load(
                        &scenario.resolve(&s.site),
                        s.panel_watts_peak,
                        s.shift_hours,
                    )?)),
                    None => None,
                },
            }),
            None => None,
        };
        for _ in 0..group.count {
            let hardware = Hardware {
                cpu_millicores: group.cpu_millicores.unwrap_or(spec.threads as u64 * 1000),
                memory_mib: group.memory_mib.unwrap_or((spec.memory_gb * 1024.0) as u64),
                max_pods: group.max_pods,
                spec: spec.clone(),
                inlet_celsius: group.inlet_celsius,
            };
            let mut node = SimNode::new(format!("node-{:04}", nodes.len()), hardware);
            node.storage = storage.clone();
            nodes.push(node);
        }
    }
    if let Some(list) = &scenario.node_list {
        let listed = workload::read_node_list(&scenario.resolve(&list.path))?;
        for (i, node) in listed.into_iter().enumerate() {
            let spec = find(&list.hardware[i % list.hardware.len()])?;
            let hardware = Hardware {
                spec,
                inlet_celsius: list.inlet_celsius,
                cpu_millicores: node.cpu_millicores,
                memory_mib: node.memory_mib,
                max_pods: list.max_pods,
            };
            nodes.push(SimNode::new(node.name, hardware));
        }
    }
    Ok(nodes)
}

/// The scenario's pods for `seed`.
pub fn pods(scenario: &Scenario, nodes: &[SimNode], seed: u64) -> Result<Vec<TracePod>, SimError> {
    let duration = scenario.duration_hours * 3600.0;
    if let Some(trace) = &scenario.workload.trace {
        return Ok(workload::read_trace(&scenario.resolve(&trace.pods))?);
    }
    let synthetic = scenario
        .workload
        .synthetic
        .as_ref()
        .expect("validated: trace or synthetic");
    let mut series = workload::read_column(
        &scenario.resolve(&synthetic.utilisation_series),
        &synthetic.column,
    )?;
    if synthetic.percent_of_peak {
        workload::to_percent_of_peak(&mut series);
    }
    let shorts = match &synthetic.short_job_durations {
        Some(path) => workload::read_column(&scenario.resolve(path), "duration")?,
        None => Vec::new(),
    };
    let capacity = nodes.iter().map(|n| n.hardware.cpu_millicores).sum();
    Ok(workload::synthesise(
        synthetic, &series, &shorts, capacity, duration, seed,
    ))
}

/// Every policy of the scenario under every seed.
pub fn simulate(scenario: &Scenario) -> Result<Vec<Run>, SimError> {
    let nodes = nodes(scenario)?;
    let mut models = agent::Models::default();
    let mut runs = Vec::new();
    for &seed in &scenario.seeds {
        let pods = pods(scenario, &nodes, seed)?;
        let mut rng = StdRng::seed_from_u64(seed ^ stream::SHARES);
        let [lo, hi] = scenario.workload.utilisation_of_request;
        let shares: Vec<f64> = pods
            .iter()
            .map(|_| lo + (hi - lo) * rng.random::<f64>())
            .collect();
        for &name in &scenario.policies {
            let mut policy = name.build();
            let agents = if policy.reads_reports() {
                Some(agents(scenario, &nodes, &mut models, seed)?)
            } else {
                None
            };
            let setup = Setup {
                nodes: nodes.clone(),
                agents,
                pods: pods.clone(),
                shares: shares.clone(),
                duration: scenario.duration_hours * 3600.0,
                reports: scenario.reports.clone(),
                power: scenario.power_management.clone(),
                pod_start_seconds: scenario.pod_start_seconds,
                seed,
            };
            let (outcome, timing) = engine::run(setup, policy.as_mut());
            tracing::info!(
                policy = name.label(),
                seed,
                energy_kwh = outcome.energy_kwh,
                wall_seconds = timing.wall_seconds,
                "run finished"
            );
            runs.push(Run {
                policy: name,
                seed,
                outcome,
                timing,
            });
        }
    }
    Ok(runs)
}

/// One agent per node, warmed up as the scenario says.
pub fn agents(
    scenario: &Scenario,
    nodes: &[SimNode],
    models: &mut agent::Models,
    seed: u64,
) -> Result<Vec<agent::Agent>, SimError> {
    let r = &scenario.reports;
    let mut rng = StdRng::seed_from_u64(seed ^ stream::WARM_UP);
    nodes
        .iter()
        .map(|node| {
            let h = &node.hardware;
            let model = models.for_server(&r.model, &h.spec, r.configure_idle_peak)?;
            let mut agent = agent::Agent::new(&node.name, model, h.inlet_celsius)?;
            if r.warmup {
                agent.warm_up(|u| h.watts(u), r.sensor_noise, &mut rng);
            }
            Ok(agent)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(seeds: &str) -> Scenario {
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/workload");
        let sun = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/solar/greensboro-nc.csv"
        );
        // Two of the old nodes on small batteries (a panel on one group), so that levels fall,
        // nodes brown out and the offloader moves pods within the hour.
        let yaml = format!(
            "
name: tiny
duration_hours: 1
seeds: {seeds}
nodes:
  - {{spec: power_ssj2008-20121113-00584, count: 1}}
  - {{spec: power_ssj2008-20121113-00584, count: 1, battery: {{capacity_wh: 60, initial_percent: 60}},
     solar: {{site: {sun}, panel_watts_peak: 100, shift_hours: 4300}}}}
  - {{spec: power_ssj2008-20121113-00584, count: 1, battery: {{capacity_wh: 40, initial_percent: 90}}}}
  - {{spec: power_ssj2008-20210615-01111, count: 1}}
workload:
  synthetic:
    utilisation_series: {data}/dc_util_google2019_300s.csv
    column: cpu_util_percent
    short_job_share: 0.3
    short_job_durations: {data}/azure_functions_2021_excerpt_199_invocations.csv
    service_mean_seconds: 600
power_management: {{kind: autoscaler, empty_minutes: 2}}
policies: [wattwise, serverless-seed, random]
"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.yaml");
        std::fs::write(&path, yaml).unwrap();
        Scenario::load(&path).unwrap()
    }

    #[test]
    fn committed_scenarios_load_with_their_nodes_and_data() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let scenario = Scenario::load(&path).unwrap();
                let nodes = nodes(&scenario).unwrap();
                assert!(!nodes.is_empty(), "{}", path.display());
                if let Some(s) = &scenario.workload.synthetic {
                    let series = scenario.resolve(&s.utilisation_series);
                    assert!(!workload::read_column(&series, &s.column)
                        .unwrap()
                        .is_empty());
                }
                seen += 1;
            }
        }
        assert!(seen >= 3);
    }

    #[test]
    fn the_same_seed_gives_the_same_result() {
        let outcomes = |seeds: &str| -> Vec<(PolicyName, Outcome)> {
            simulate(&scenario(seeds))
                .unwrap()
                .into_iter()
                .map(|r| (r.policy, r.outcome))
                .collect()
        };
        let first = outcomes("[3]");
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|(_, o)| o.pods > 100 && o.decisions > 0));
        for (policy, o) in &first {
            let h = o.node_hours_by_level;
            let total = h.well_powered + h.vulnerable + h.low_powered + h.powerless + h.grid;
            assert!((total - 4.0).abs() < 1e-9, "{policy:?}: {h:?}");
            assert!((h.grid - 2.0).abs() < 1e-9, "{policy:?}: {h:?}");
            assert!(h.powerless > 0.0, "{policy:?}: the small batteries run low");
        }
        // Nodes may power off here, so every policy's energy is at least the whole-server
        // bound, which is at most the always-on one.
        for (policy, o) in &first {
            assert!(o.bound_autoscaled_kwh > 0.0, "{policy:?}");
            assert!(
                o.bound_autoscaled_kwh <= o.bound_always_on_kwh,
                "{policy:?}"
            );
            assert!(o.bound_autoscaled_kwh <= o.energy_kwh, "{policy:?}");
        }
        assert_eq!(first, outcomes("[3]"));
        let other = outcomes("[4]");
        for ((policy, a), (_, b)) in first.iter().zip(&other) {
            assert_ne!(a.energy_kwh, b.energy_kwh, "{policy:?}");
        }
    }
}
