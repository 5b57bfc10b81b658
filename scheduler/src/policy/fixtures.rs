//! Plain nodes, pods and agent reports for the scheduler's unit tests.

use std::collections::BTreeMap;
use std::time::SystemTime;

use wattwise_core::{PowerCurve, ValidatedReport};
use wattwise_proto::v1 as pb;

use super::types::{NodePower, NodeState, PodRequest, Resources};

/// A ready, empty 16-core node on a 100–300 W linear curve at 20 % load, fresh, energy unknown.
pub fn node(name: &str) -> NodeState {
    NodeState {
        name: name.into(),
        labels: BTreeMap::from([("kubernetes.io/hostname".into(), name.into())]),
        unschedulable: false,
        ready: true,
        taints: vec![],
        allocatable: Resources {
            cpu_millicores: 16_000,
            memory_bytes: 64 << 30,
            ephemeral_storage_bytes: 100 << 30,
            pods: 110,
            extended: BTreeMap::new(),
        },
        requested: Resources::default(),
        used_host_ports: vec![],
        power: power(100.0, 300.0),
    }
}

/// A fresh report on a linear idle–peak curve at 20 % load of 16 cores.
pub fn power(idle_watts: f64, peak_watts: f64) -> NodePower {
    NodePower {
        curve: PowerCurve::linear(idle_watts, peak_watts).unwrap(),
        utilisation: 0.2,
        capacity_millicores: 16_000,
        fresh: true,
        energy: None,
    }
}

/// A 500m / 512 MiB pod with no constraints.
pub fn pod(uid: &str) -> PodRequest {
    PodRequest {
        namespace: "default".into(),
        name: uid.into(),
        uid: uid.into(),
        priority: 0,
        requests: Resources {
            cpu_millicores: 500,
            memory_bytes: 512 << 20,
            ephemeral_storage_bytes: 0,
            pods: 1,
            extended: BTreeMap::new(),
        },
        pricing_cpu_millicores: 500,
        node_selector: BTreeMap::new(),
        required_node_affinity: vec![],
        tolerations: vec![],
        host_ports: vec![],
        constraints: Default::default(),
    }
}

/// A valid agent report observed now: 4 cores at `utilisation` on a 50–150 W curve, with `level`
/// (and a percent inside it) when given.
pub fn report(
    node: &str,
    seq: u64,
    utilisation: f64,
    level: Option<pb::EnergyLevel>,
) -> ValidatedReport {
    report_observed(node, seq, utilisation, level, SystemTime::now())
}

/// [`report`], observed at `observed_at`.
pub fn report_observed(
    node: &str,
    seq: u64,
    utilisation: f64,
    level: Option<pb::EnergyLevel>,
    observed_at: SystemTime,
) -> ValidatedReport {
    wattwise_core::validate(pb::NodeReport {
        node_name: node.into(),
        agent_instance: "a1".into(),
        sequence: seq,
        observed_at: Some(observed_at.into()),
        cpu: Some(pb::CpuState {
            capacity_millicores: 4000,
            utilisation,
        }),
        curve: Some(pb::PowerCurve {
            watts: (0..=100).map(|i| 50.0 + i as f64).collect(),
        }),
        model: Some(pb::ModelInfo {
            name: "test".into(),
            calibration: pb::CalibrationState::Uncalibrated as i32,
            ..Default::default()
        }),
        energy: level.map(|l| pb::EnergyState {
            level: l as i32,
            percent: match l {
                pb::EnergyLevel::Powerless => 5.0,
                pb::EnergyLevel::LowPowered => 25.0,
                pb::EnergyLevel::Vulnerable => 50.0,
                _ => 90.0,
            },
            source: "fixed".into(),
        }),
        ..Default::default()
    })
    .unwrap()
}
