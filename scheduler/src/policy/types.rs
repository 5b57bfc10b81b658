//! The plain structs the policy decides over. The cluster layer fills them from Kubernetes objects
//! and agent reports; nothing here does I/O.

use std::collections::BTreeMap;

use wattwise_core::{EnergyLevel, Marginal, PowerCurve};

/// Resource amounts in Kubernetes' canonical integer units: CPU in millicores, memory and
/// ephemeral storage in bytes, pods as a count, extended resources (e.g. `nvidia.com/gpu`,
/// `hugepages-2Mi`) in their own integer units (bytes for hugepages).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
    pub pods: u64,
    pub extended: BTreeMap<String, u64>,
}

impl Resources {
    /// Adds `other` to `self` (saturating).
    pub fn add(&mut self, other: &Resources) {
        self.cpu_millicores = self.cpu_millicores.saturating_add(other.cpu_millicores);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        self.ephemeral_storage_bytes = self
            .ephemeral_storage_bytes
            .saturating_add(other.ephemeral_storage_bytes);
        self.pods = self.pods.saturating_add(other.pods);
        for (name, amount) in &other.extended {
            let entry = self.extended.entry(name.clone()).or_default();
            *entry = entry.saturating_add(*amount);
        }
    }

    /// Subtracts `other` from `self`, flooring at zero; extended resources that reach zero are
    /// removed so that add-then-subtract returns to an equal value.
    pub fn subtract(&mut self, other: &Resources) {
        self.cpu_millicores = self.cpu_millicores.saturating_sub(other.cpu_millicores);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
        self.ephemeral_storage_bytes = self
            .ephemeral_storage_bytes
            .saturating_sub(other.ephemeral_storage_bytes);
        self.pods = self.pods.saturating_sub(other.pods);
        for (name, amount) in &other.extended {
            if let Some(entry) = self.extended.get_mut(name) {
                *entry = entry.saturating_sub(*amount);
                if *entry == 0 {
                    self.extended.remove(name);
                }
            }
        }
    }

    /// Raises each amount in `self` to at least the one in `other` (init containers' rule).
    pub fn max_with(&mut self, other: &Resources) {
        self.cpu_millicores = self.cpu_millicores.max(other.cpu_millicores);
        self.memory_bytes = self.memory_bytes.max(other.memory_bytes);
        self.ephemeral_storage_bytes = self
            .ephemeral_storage_bytes
            .max(other.ephemeral_storage_bytes);
        self.pods = self.pods.max(other.pods);
        for (name, amount) in &other.extended {
            let entry = self.extended.entry(name.clone()).or_default();
            *entry = (*entry).max(*amount);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Taint {
    pub key: String,
    /// Empty when the taint has no value.
    pub value: String,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TolerationOperator {
    Equal,
    Exists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    /// Empty with `Exists` tolerates every key.
    pub key: String,
    pub operator: TolerationOperator,
    pub value: String,
    /// `None` tolerates every effect.
    pub effect: Option<TaintEffect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    pub values: Vec<String>,
}

/// A NodeSelectorTerm: every expression and every field requirement must match. Kubernetes allows
/// only `metadata.name` in `match_fields`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSelectorTerm {
    pub match_expressions: Vec<SelectorRequirement>,
    pub match_fields: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Empty or `0.0.0.0` means every address (conflicts with any IP on the same port/protocol).
    pub host_ip: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What the policy needs to know about a pod waiting for a node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRequest {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub priority: i32,
    /// Effective requests the way Kubernetes computes them: per resource, the larger of the sum
    /// over containers and the largest init container, plus pod overhead; `pods` is 1.
    pub requests: Resources,
    /// CPU the pod is priced and counted with: its effective CPU request, or the configured
    /// default when it requests none.
    pub pricing_cpu_millicores: u64,
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity terms, ORed. Empty: no requirement.
    pub required_node_affinity: Vec<NodeSelectorTerm>,
    pub tolerations: Vec<Toleration>,
    pub host_ports: Vec<HostPort>,
    /// What ties the pod to other pods, topology or volumes; the filters evaluate none of it,
    /// and [`super::constraints::unsupported`] refuses the pods that need it.
    pub constraints: PodConstraints,
}

/// A pod's constraints that standalone mode does not evaluate. Soft ones (preferred pod
/// affinity and anti-affinity, `ScheduleAnyway` spread) are not kept: every node satisfies a
/// preference, so they are ignored rather than refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodConstraints {
    /// `spec.schedulingGates`: the pod may not be scheduled while any remains.
    pub scheduling_gates: Vec<String>,
    /// `requiredDuringSchedulingIgnoredDuringExecution` pod affinity terms exist.
    pub required_pod_affinity: bool,
    /// `requiredDuringSchedulingIgnoredDuringExecution` pod anti-affinity terms exist.
    pub required_pod_anti_affinity: bool,
    /// Topology keys of the spread constraints with `whenUnsatisfiable: DoNotSchedule`.
    pub hard_topology_spread: Vec<String>,
    /// PersistentVolumeClaims the pod mounts, generic ephemeral volumes' included.
    pub volume_claims: Vec<VolumeClaim>,
}

/// A PersistentVolumeClaim a pod mounts, in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeClaim {
    pub name: String,
    pub state: ClaimState,
}

/// What the cluster says about a claim when the pod is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimState {
    /// Not looked up yet: the pod has just been read, or the claim watch has not synced.
    Unknown,
    /// No such claim.
    Missing,
    Bound,
    /// Not bound. With `wait_for_first_consumer` its StorageClass binds a volume only once a
    /// scheduler picks a node for the claim, which standalone mode does not do; otherwise the
    /// volume controller binds it on its own.
    Unbound {
        storage_class: Option<String>,
        wait_for_first_consumer: bool,
    },
}

/// The power side of a node, as scoring prices it: the one definition of a node's power. The
/// cluster cache derives it from the node's latest fresh agent report and this scheduler's
/// reservations there, or from the cluster default when no report is fresh.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePower {
    /// The report's curve, or the default curve without a fresh report. A `PowerCurve` shares
    /// its points, so clones are cheap and each curve is one pointer away.
    pub curve: PowerCurve,
    /// Utilisation the next pod starts from (a fraction): the measured utilisation plus the CPU
    /// of pods bound to the node too recently to be in the measurement; for a node without a
    /// fresh report, its requested CPU over allocatable CPU. Not capped at 1: a node loaded past
    /// its capacity is priced as such.
    pub utilisation: f64,
    pub capacity_millicores: u64,
    /// False when the report is missing or observed longer ago than the staleness limit.
    pub fresh: bool,
    /// The fresh report's level, else the node's `energy-status` label, else `None` (unknown,
    /// e.g. grid).
    pub energy: Option<EnergyLevel>,
}

impl NodePower {
    /// The pod's marginal watts from `utilisation` ([`PowerCurve::marginal`]: the curve difference
    /// up to full load, peak watts per unit beyond it).
    pub fn price(&self, pod_cpu_millicores: u64) -> Marginal {
        self.curve.marginal(
            self.utilisation,
            self.capacity_millicores,
            pod_cpu_millicores,
        )
    }
}

/// [`NodePower::utilisation`]: `measured` plus `extra_millicores` of `capacity_millicores`; a node without capacity is full.
/// Not capped at 1: a node loaded beyond its capacity is priced as such.
pub fn utilisation(measured: f64, extra_millicores: u64, capacity_millicores: u64) -> f64 {
    if capacity_millicores == 0 {
        return 1.0;
    }
    (measured + extra_millicores as f64 / capacity_millicores as f64).max(0.0)
}

/// What the policy needs to know about a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub unschedulable: bool,
    pub ready: bool,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    /// Effective requests of the node's non-terminal pods, including pods this scheduler has
    /// bound but not yet seen bound (assumed); `pods` is their count.
    pub requested: Resources,
    pub used_host_ports: Vec<HostPort>,
    pub power: NodePower,
}
