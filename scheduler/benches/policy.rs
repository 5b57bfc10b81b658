//! One pod through the full policy (`schedule`) over 500, 5,000 and 15,000 varied nodes, against
//! the cheapest possible scheduler over the same nodes (cpu + memory fit, most free cpu), so the
//! cost of filtering kube's way and pricing by power curve reads as a ratio.
//!
//! `schedule` reads a [`Snapshot`] of the nodes that the cluster cache keeps up to date. The
//! `wattwise_with_upkeep` figure is what the scheduler spends per pod, the policy included: on a
//! cluster cache holding the same nodes (Node objects, a pod per node carrying its requests, an
//! agent report per fresh node), the cache brought to now (`advance`), the decision, the pod
//! assumed on its node and the assumption undone (the cost of the watch confirming the bind: one
//! node's usage and power rewritten). The `upkeep` group measures its parts and what runs off
//! the decision path: building a snapshot (start-up, compaction), rewriting one node (a node
//! event), one node's usage (a pod event) or power (a report), taking in a report.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use k8s_openapi::api::core::v1::{Node, Pod};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use wattwise_core::{EnergyLevel, PowerCurve, ValidatedReport};
use wattwise_proto::v1 as pb;
use wattwise_scheduler::cluster::cache::{CacheSettings, ClusterCache};
use wattwise_scheduler::policy::offload::{plan, BoundPod, OffloadConfig, Owner};
use wattwise_scheduler::policy::{
    schedule, Filters, HostPort, NodePower, NodeState, PodRequest, Protocol, Resources,
    ScoreConfig, Snapshot, Taint, TaintEffect, Toleration, TolerationOperator,
};

const GIB: u64 = 1 << 30;

/// (instance type, cores, memory GiB, idle W, peak W) – spans small to large two-socket servers.
const SHAPES: [(&str, u64, u64, f64, f64); 4] = [
    ("m5.2xlarge", 8, 32, 45.0, 180.0),
    ("m5.4xlarge", 16, 64, 70.0, 260.0),
    ("c5.9xlarge", 36, 72, 95.0, 390.0),
    ("m5.16xlarge", 64, 256, 120.0, 520.0),
];

fn cluster(count: usize, rng: &mut StdRng) -> Vec<NodeState> {
    (0..count).map(|i| node(i, rng)).collect()
}

fn node(i: usize, rng: &mut StdRng) -> NodeState {
    let (instance_type, cores, memory_gib, idle, peak) = SHAPES[rng.random_range(0..SHAPES.len())];
    // Each node's own curve: SPECpower-like, concave, idle/peak ±10 %, at its temperatures.
    let idle = idle * rng.random_range(0.9..1.1);
    let peak = peak * rng.random_range(0.9..1.1);
    let exponent = rng.random_range(0.6..0.9);
    let curve = PowerCurve::sample(101, |u| idle + (peak - idle) * u.powf(exponent)).unwrap();

    let name = format!("node-{i:05}");
    let arch = if rng.random_bool(0.95) {
        "amd64"
    } else {
        "arm64"
    };
    let labels = BTreeMap::from([
        ("kubernetes.io/arch".to_string(), arch.to_string()),
        ("kubernetes.io/hostname".to_string(), name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "node.kubernetes.io/instance-type".to_string(),
            instance_type.to_string(),
        ),
        (
            "topology.kubernetes.io/region".to_string(),
            "eu-west-1".to_string(),
        ),
        (
            "topology.kubernetes.io/zone".to_string(),
            format!("eu-west-1{}", ["a", "b", "c"][i % 3]),
        ),
    ]);

    // ~10 % tainted: half for batch (the pod tolerates it), half dedicated to GPUs (it does not).
    let taints = match rng.random_range(0..20) {
        0 => vec![taint("workload", "batch")],
        1 => vec![taint("dedicated", "gpu")],
        _ => vec![],
    };

    let allocatable = Resources {
        cpu_millicores: cores * 1000 - 100,
        memory_bytes: (memory_gib - 1) * GIB,
        ephemeral_storage_bytes: 100 * GIB,
        pods: 110,
        extended: BTreeMap::new(),
    };
    // ~10 % nearly full: less than the pod's 500m left.
    let load = if rng.random_bool(0.1) {
        1.0
    } else {
        rng.random_range(0.05..0.85)
    };
    let requested = Resources {
        cpu_millicores: ((allocatable.cpu_millicores as f64 * load) as u64)
            .min(allocatable.cpu_millicores - 200),
        memory_bytes: (allocatable.memory_bytes as f64 * load * 0.8) as u64,
        ephemeral_storage_bytes: 0,
        pods: (load * 60.0) as u64,
        extended: BTreeMap::new(),
    };

    // ~40 % grid (unknown level), the rest battery/renewable with ~5 % powerless overall.
    let energy = match rng.random_range(0..100) {
        0..40 => None,
        40..45 => Some(EnergyLevel::Powerless),
        45..60 => Some(EnergyLevel::LowPowered),
        60..80 => Some(EnergyLevel::Vulnerable),
        _ => Some(EnergyLevel::WellPowered),
    };

    let measured = (load * rng.random_range(0.5..1.0)).min(1.0);
    // ~20 % with a pod placed since their report.
    let unmeasured = if rng.random_bool(0.2) { 500.0 } else { 0.0 };
    NodeState {
        name,
        labels,
        unschedulable: rng.random_bool(0.01),
        ready: rng.random_bool(0.995),
        taints,
        allocatable,
        requested,
        // node-exporter's host port, as on most clusters.
        used_host_ports: vec![HostPort {
            host_ip: String::new(),
            protocol: Protocol::Tcp,
            port: 9100,
        }],
        power: NodePower {
            curve,
            utilisation: measured + unmeasured / (cores * 1000) as f64,
            capacity_millicores: cores * 1000,
            // ~5 % without a fresh report.
            fresh: rng.random_bool(0.95),
            energy,
        },
    }
}

fn taint(key: &str, value: &str) -> Taint {
    Taint {
        key: key.into(),
        value: value.into(),
        effect: TaintEffect::NoSchedule,
    }
}

fn typical_pod() -> PodRequest {
    PodRequest {
        namespace: "shop".into(),
        name: "checkout-7d9f8b6c5-x2k4q".into(),
        uid: "5f1c2a9e-3b7d-4e21-9a8f-0c6d4b2e1f37".into(),
        priority: 0,
        requests: Resources {
            cpu_millicores: 500,
            memory_bytes: 512 << 20,
            ephemeral_storage_bytes: 0,
            pods: 1,
            extended: BTreeMap::new(),
        },
        pricing_cpu_millicores: 500,
        node_selector: BTreeMap::from([("kubernetes.io/arch".into(), "amd64".into())]),
        required_node_affinity: vec![],
        tolerations: vec![Toleration {
            key: "workload".into(),
            operator: TolerationOperator::Equal,
            value: "batch".into(),
            effect: Some(TaintEffect::NoSchedule),
        }],
        host_ports: vec![],
        constraints: Default::default(),
    }
}

/// The floor: fit on cpu and memory only, most free cpu wins.
fn most_free_cpu(pod: &PodRequest, nodes: &[NodeState]) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (index, node) in nodes.iter().enumerate() {
        let free_cpu = node
            .allocatable
            .cpu_millicores
            .saturating_sub(node.requested.cpu_millicores);
        let free_memory = node
            .allocatable
            .memory_bytes
            .saturating_sub(node.requested.memory_bytes);
        if free_cpu >= pod.requests.cpu_millicores
            && free_memory >= pod.requests.memory_bytes
            && best.is_none_or(|(_, most)| free_cpu > most)
        {
            best = Some((index, free_cpu));
        }
    }
    best.map(|(index, _)| index)
}

fn policy(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(5);
    let pod = typical_pod();
    let filters = Filters::standard(EnergyLevel::LowPowered);
    let score = ScoreConfig::default();
    let mut group = c.benchmark_group("schedule");
    for count in [500, 5_000, 15_000] {
        let nodes = cluster(count, &mut rng);
        let snapshot = Snapshot::new(&nodes);
        // The cluster must leave the policy real work: most nodes feasible, a decision made.
        let decision = schedule(&pod, &snapshot, &filters, &score).unwrap();
        assert!(decision.feasible > count * 6 / 10, "{}", decision.feasible);
        assert!(most_free_cpu(&pod, &nodes).is_some());

        group.bench_with_input(
            BenchmarkId::new("wattwise", count),
            &snapshot,
            |b, nodes| b.iter(|| schedule(black_box(&pod), black_box(nodes), &filters, &score)),
        );
        // What slot pricing costs. Here no candidate is near its pod limit (the fast path:
        // one read per candidate); below, every node is 8 pods from it (the full path).
        let unpriced = ScoreConfig {
            slot_pricing: false,
            ..score
        };
        group.bench_with_input(
            BenchmarkId::new("wattwise_without_slot_pricing", count),
            &snapshot,
            |b, nodes| b.iter(|| schedule(black_box(&pod), black_box(nodes), &filters, &unpriced)),
        );
        let mut near_limit = nodes.clone();
        for node in &mut near_limit {
            node.requested.pods = node.allocatable.pods - 8;
        }
        let near_limit = Snapshot::new(&near_limit);
        for (name, config) in [
            ("wattwise_near_pod_limits", score),
            ("wattwise_near_pod_limits_without_slot_pricing", unpriced),
        ] {
            group.bench_with_input(BenchmarkId::new(name, count), &near_limit, |b, nodes| {
                b.iter(|| schedule(black_box(&pod), black_box(nodes), &filters, &config))
            });
        }

        let mut cache = cache_of(&nodes);
        let in_cache = schedule(&pod, cache.snapshot(), &filters, &score).unwrap();
        assert!(in_cache.feasible > count * 6 / 10, "{}", in_cache.feasible);
        group.bench_function(BenchmarkId::new("wattwise_with_upkeep", count), |b| {
            b.iter(|| {
                let now = Instant::now();
                cache.advance(now);
                let decision = schedule(black_box(&pod), cache.snapshot(), &filters, &score);
                let node = cache.snapshot().name(decision.unwrap().node).to_string();
                cache.assume(&pod, &node, now);
                cache.forget(&pod.uid);
            })
        });

        group.bench_with_input(
            BenchmarkId::new("baseline_most_free_cpu", count),
            &nodes,
            |b, nodes| b.iter(|| most_free_cpu(black_box(&pod), black_box(nodes))),
        );
    }
    group.finish();
}

/// The same nodes in a cluster cache, as watch events and agent reports would leave them: the
/// Node objects, one pod bound to each carrying the node's requests and host port, and a report
/// for each node with a fresh power side (its curve, utilisation and level).
fn cache_of(nodes: &[NodeState]) -> ClusterCache {
    let mut cache = ClusterCache::new(CacheSettings {
        scheduler_name: "wattwise".into(),
        energy_label: "energy-status".into(),
        default_cpu_millicores: 100,
        stale_after: Duration::from_secs(3600),
        start_window: Duration::from_secs(30),
        default_curve: PowerCurve::linear(100.0, 300.0).unwrap(),
    });
    let now = Instant::now();
    for node in nodes {
        let taints: Vec<_> = node
            .taints
            .iter()
            .map(|t| json!({"key": t.key, "value": t.value, "effect": "NoSchedule"}))
            .collect();
        let object: Node = serde_json::from_value(json!({
            "metadata": {"name": node.name, "labels": node.labels},
            "spec": {"unschedulable": node.unschedulable, "taints": taints},
            "status": {
                "allocatable": {
                    "cpu": format!("{}m", node.allocatable.cpu_millicores),
                    "memory": node.allocatable.memory_bytes.to_string(),
                    "pods": node.allocatable.pods.to_string(),
                },
                "conditions": [{"type": "Ready", "status": if node.ready { "True" } else { "False" }}]
            }
        }))
        .unwrap();
        cache.apply_node(&object);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("load-{}", node.name), "namespace": "bench", "uid": format!("uid-{}", node.name)},
            "spec": {
                "nodeName": node.name,
                "containers": [{
                    "name": "load", "image": "x",
                    "ports": [{"containerPort": 9100, "hostPort": 9100}],
                    "resources": {"requests": {
                        "cpu": format!("{}m", node.requested.cpu_millicores.max(1)),
                        "memory": node.requested.memory_bytes.max(1).to_string(),
                    }}
                }]
            },
            "status": {"phase": "Running"}
        }))
        .unwrap();
        cache.apply_pod(&pod);
        if !node.power.fresh {
            continue;
        }
        cache.ingest_report(&report(node, 1), now).unwrap();
    }
    cache
}

/// What the node's agent reports: its curve, utilisation and level.
fn report(node: &NodeState, sequence: u64) -> ValidatedReport {
    wattwise_core::validate(pb::NodeReport {
        node_name: node.name.clone(),
        agent_instance: "bench".into(),
        sequence,
        observed_at: Some(SystemTime::now().into()),
        cpu: Some(pb::CpuState {
            capacity_millicores: node.power.capacity_millicores,
            utilisation: node.power.utilisation.min(1.0),
        }),
        curve: Some(pb::PowerCurve {
            watts: node.power.curve.points().to_vec(),
        }),
        model: Some(pb::ModelInfo {
            name: "bench".into(),
            calibration: pb::CalibrationState::Uncalibrated as i32,
            ..Default::default()
        }),
        energy: node.power.energy.map(|level| pb::EnergyState {
            level: level.to_proto() as i32,
            percent: level.range().0,
            source: "bench".into(),
        }),
        ..Default::default()
    })
    .unwrap()
}

fn upkeep(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(5);
    let mut group = c.benchmark_group("upkeep");
    let mut nodes = Vec::new();
    for count in [500, 5_000, 15_000] {
        nodes = cluster(count, &mut rng);
        group.bench_with_input(
            BenchmarkId::new("snapshot_build", count),
            &nodes,
            |b, nodes| b.iter(|| Snapshot::new(black_box(nodes))),
        );
        let mut cache = cache_of(&nodes);
        // Between two decisions with no report going stale (each one that does adds one
        // `snapshot_set_power`).
        group.bench_function(BenchmarkId::new("advance", count), |b| {
            b.iter(|| cache.advance(black_box(Instant::now())))
        });
        let mut sequence = 1;
        let mut next = (0..nodes.len()).cycle();
        group.bench_function(BenchmarkId::new("ingest_report", count), |b| {
            b.iter(|| {
                let i = next.next().unwrap();
                sequence += 1;
                let report = report(&nodes[i], sequence);
                cache.ingest_report(black_box(&report), Instant::now())
            })
        });
    }

    let mut snapshot = Snapshot::new(&nodes);
    let mut next = (0..nodes.len()).cycle();
    group.bench_function("snapshot_set_node", |b| {
        b.iter(|| {
            let i = next.next().unwrap();
            snapshot.set(i, black_box(&nodes[i]));
        })
    });
    group.bench_function("snapshot_set_usage", |b| {
        b.iter(|| {
            let i = next.next().unwrap();
            let n = &nodes[i];
            snapshot.set_usage(
                i,
                &n.allocatable,
                black_box(&n.requested),
                &n.used_host_ports,
            );
        })
    });
    group.bench_function("snapshot_set_power", |b| {
        b.iter(|| {
            let i = next.next().unwrap();
            snapshot.set_power(i, black_box(&nodes[i].power));
        })
    });
    group.finish();
}

/// One offloader pass over 5,000 nodes and 50,000 pods (ten per node, 100m–1 CPU, each of a
/// ReplicaSet, an hour old) with 10 % of the nodes low-powered: with the default limits (at
/// most 20 moves a pass) and without limits (every pod on a weak node placed: the worst case),
/// beside one pod through `schedule` over the same nodes.
fn offload(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(9);
    let mut nodes = cluster(5_000, &mut rng);
    for (i, node) in nodes.iter_mut().enumerate() {
        node.power.energy = match i % 10 {
            0 => Some(EnergyLevel::LowPowered),
            _ => Some(EnergyLevel::WellPowered),
        };
    }
    let owner = Owner {
        kind: "ReplicaSet".into(),
        namespace: "bench".into(),
        name: "web".into(),
    };
    let pods: Vec<BoundPod> = (0..50_000)
        .map(|i| {
            let mut request = typical_pod();
            request.uid = format!("uid-{i}");
            request.name = format!("pod-{i}");
            let cpu = rng.random_range(100..=1000);
            request.requests.cpu_millicores = cpu;
            request.pricing_cpu_millicores = cpu;
            BoundPod {
                request,
                node: nodes[i % nodes.len()].name.clone(),
                owner: Some(owner.clone()),
                age: Duration::from_secs(3600),
                mirror: false,
                local_storage: false,
                opted_out: false,
            }
        })
        .collect();
    let score = ScoreConfig::default();
    let defaults = OffloadConfig {
        excluded_namespaces: Default::default(),
        ..OffloadConfig::default()
    };
    let unlimited = OffloadConfig {
        max_per_pass: usize::MAX,
        max_per_node: usize::MAX,
        max_per_namespace: usize::MAX,
        ..defaults.clone()
    };
    let none = BTreeSet::new();
    for (name, config) in [("default_limits", &defaults), ("unlimited", &unlimited)] {
        let plan = plan(&nodes, &pods, &score, config, &none);
        assert_eq!(plan.on_weak_nodes, 5_000);
        assert!(!plan.moves.is_empty());
        eprintln!(
            "offload {name}: {} moves, skipped {:?}",
            plan.moves.len(),
            plan.skipped
        );
    }
    let mut group = c.benchmark_group("offload");
    group.sample_size(10);
    group.bench_function("pass_default_limits/5000x50000", |b| {
        b.iter(|| {
            plan(
                black_box(&nodes),
                black_box(&pods),
                &score,
                &defaults,
                &none,
            )
        })
    });
    group.bench_function("pass_unlimited/5000x50000", |b| {
        b.iter(|| {
            plan(
                black_box(&nodes),
                black_box(&pods),
                &score,
                &unlimited,
                &none,
            )
        })
    });
    let snapshot = Snapshot::new(&nodes);
    let filters = Filters::standard(EnergyLevel::LowPowered);
    let pod = typical_pod();
    group.bench_function("baseline_one_schedule/5000", |b| {
        b.iter(|| schedule(black_box(&pod), black_box(&snapshot), &filters, &score))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Modest samples: the whole run stays around two minutes on two cores.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = policy, upkeep, offload
}
criterion_main!(benches);
