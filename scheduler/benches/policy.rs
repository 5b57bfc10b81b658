//! One pod through the full policy (`schedule`) over 500, 5,000 and 15,000 varied nodes, against
//! the cheapest possible scheduler over the same nodes (cpu + memory fit, most free cpu), so the
//! cost of filtering kube's way and pricing by power curve reads as a ratio.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wattwise_core::{EnergyLevel, PowerCurve};
use wattwise_scheduler::policy::{
    schedule, Filters, HostPort, NodePower, NodeState, PodRequest, Protocol, Resources,
    ScoreConfig, Taint, TaintEffect, Toleration, TolerationOperator,
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
        energy,
        power: NodePower {
            curve: Arc::new(curve),
            utilisation: (load * rng.random_range(0.5..1.0)).min(1.0),
            capacity_millicores: cores * 1000,
            bound_since_report_millicores: if rng.random_bool(0.2) { 500 } else { 0 },
            // ~5 % without a fresh report.
            fresh: rng.random_bool(0.95),
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
        // The cluster must leave the policy real work: most nodes feasible, a decision made.
        let decision = schedule(&pod, &nodes, &filters, &score).unwrap();
        assert!(decision.feasible > count * 6 / 10, "{}", decision.feasible);
        assert!(most_free_cpu(&pod, &nodes).is_some());

        group.bench_with_input(BenchmarkId::new("wattwise", count), &nodes, |b, nodes| {
            b.iter(|| schedule(black_box(&pod), black_box(nodes), &filters, &score))
        });
        group.bench_with_input(
            BenchmarkId::new("baseline_most_free_cpu", count),
            &nodes,
            |b, nodes| b.iter(|| most_free_cpu(black_box(&pod), black_box(nodes))),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Modest samples: the whole run stays around a minute on two cores.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = policy
}
criterion_main!(benches);
