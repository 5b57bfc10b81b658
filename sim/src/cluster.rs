//! The simulated cluster as it truly is: nodes with their published power curves and power
//! state, pods with their requests and true CPU use. Policies read it; the engine changes it.

use std::sync::Arc;

use wattwise_scheduler::policy::PodRequest;

use crate::solar::Storage;
use crate::specpower::SpecServer;
use crate::view::{Capacity, Requests};
use crate::workload::TracePod;

/// kube's requests for pods that request nothing (NonZeroRequested): 100 m CPU, 200 MB memory.
pub const NON_ZERO_CPU_MILLICORES: u64 = 100;
pub const NON_ZERO_MEMORY_MIB: u64 = 200;

#[derive(Debug, Clone)]
pub struct Hardware {
    pub spec: Arc<SpecServer>,
    pub inlet_celsius: f64,
    pub cpu_millicores: u64,
    pub memory_mib: u64,
    /// The kubelet's `maxPods`.
    pub max_pods: u64,
}

/// The kubelet's default `maxPods`.
pub const KUBELET_MAX_PODS: u64 = 110;

impl Hardware {
    /// True watts at utilisation `u`: the published curve at the node's inlet temperature.
    pub fn watts(&self, u: f64) -> f64 {
        self.spec.watts_at_inlet(u, self.inlet_celsius)
    }

    pub fn peak_watts(&self) -> f64 {
        self.watts(1.0)
    }

    pub fn capacity(&self) -> Capacity {
        Capacity {
            cpu_millicores: self.cpu_millicores,
            memory_mib: self.memory_mib,
            pods: self.max_pods,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Booting,
    Off,
    /// Its battery ran empty: off, its pods gone, until the battery has recovered.
    BrownedOut,
}

#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub hardware: Hardware,
    pub state: PowerState,
    /// Sum of the requests of the pods bound here.
    pub requested: Requests,
    /// The same with kube's non-zero defaults (what its resource scores read).
    pub non_zero: Requests,
    /// Pods bound here.
    pub pods: Vec<usize>,
    /// CPU the started pods use, millicores.
    pub load_millicores: f64,
    /// Since when the node has had no pod (meaningful while `pods` is empty).
    pub empty_since: f64,
    /// Battery (and panel); `None`: on the grid.
    pub storage: Option<Storage>,
}

impl SimNode {
    pub fn new(name: String, hardware: Hardware) -> Self {
        let zero = Requests {
            cpu_millicores: 0,
            memory_mib: 0,
        };
        Self {
            name,
            hardware,
            state: PowerState::On,
            requested: zero,
            non_zero: zero,
            pods: Vec::new(),
            load_millicores: 0.0,
            empty_since: 0.0,
            storage: None,
        }
    }

    /// True CPU utilisation (a busy node cannot exceed full load).
    pub fn utilisation(&self) -> f64 {
        (self.load_millicores / self.hardware.cpu_millicores as f64).clamp(0.0, 1.0)
    }

    pub fn ready(&self) -> bool {
        self.state == PowerState::On
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PodPhase {
    Pending { since: f64 },
    Bound { node: usize, at: f64, started: bool },
    Done,
}

#[derive(Debug, Clone)]
pub struct SimPod {
    pub trace: TracePod,
    /// CPU use as a share of the request.
    pub share: f64,
    pub requests: Requests,
    pub request: PodRequest,
    pub phase: PodPhase,
    /// Seconds it still has to run once bound (`None`: until the end).
    pub remaining: Option<f64>,
    /// Bumped at each bind, so events of an earlier placement are recognised as outdated.
    pub generation: u32,
}

impl SimPod {
    /// CPU the pod uses once started, millicores.
    pub fn load_millicores(&self) -> f64 {
        self.requests.cpu_millicores as f64 * self.share
    }

    /// Requests with kube's non-zero defaults.
    pub fn non_zero(&self) -> Requests {
        Requests {
            cpu_millicores: match self.requests.cpu_millicores {
                0 => NON_ZERO_CPU_MILLICORES,
                v => v,
            },
            memory_mib: match self.requests.memory_mib {
                0 => NON_ZERO_MEMORY_MIB,
                v => v,
            },
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<SimNode>,
    pub pods: Vec<SimPod>,
}
