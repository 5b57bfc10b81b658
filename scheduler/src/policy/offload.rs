//! The offloader's plan: which pods to move off weakly powered nodes, and where each goes. Pure:
//! the caller brings the nodes and the bound pods as plain structs and carries the plan out
//! (evictions, reservations); nothing here talks to the API.
//!
//! A move is planned only when a node exists that passes every filter for the pod — counting the
//! pods already planned onto it in this pass — and is at least `min_improvement` levels better
//! powered than the pod's node. No target, no move (the original offloader evicted anyway).
//!
//! Order (a documented choice): pods on the weakest nodes first, then the lowest priority, then
//! the largest CPU request (it takes the most work off a draining battery per eviction), then UID
//! so that a plan is deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use wattwise_core::{EnergyLevel, Marginal};

use super::filter::{Filter, FilterReason, Filters, Scan};
use super::score::ScoreConfig;
use super::types::{NodePower, NodeState, PodRequest};
use super::{schedule, Snapshot};

/// Pods with this annotation set to `"false"` are never moved.
pub const OPT_OUT_ANNOTATION: &str = "wattwise.io/offload";

/// Priority of `system-cluster-critical`; pods at or above it are never moved.
pub const SYSTEM_CLUSTER_CRITICAL: i32 = 2_000_000_000;

/// The controller that recreates a pod, as its controlling owner reference names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A pod bound to a node, with what decides whether it may move.
#[derive(Debug, Clone)]
pub struct BoundPod {
    /// What the filters and the price read; its UID is the pod's identity.
    pub request: PodRequest,
    pub node: String,
    /// The controlling owner; `None` for a bare pod.
    pub owner: Option<Owner>,
    /// Since the pod was created.
    pub age: Duration,
    /// A mirror pod (a static pod's API shadow): the kubelet, not a controller, owns it.
    pub mirror: bool,
    /// Mounts emptyDir or hostPath volumes, whose data an eviction loses.
    pub local_storage: bool,
    /// Annotated [`OPT_OUT_ANNOTATION`]`: "false"`.
    pub opted_out: bool,
}

/// What the offloader may do in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct OffloadConfig {
    /// Pods on nodes at or below this level are candidates.
    pub at_or_below: EnergyLevel,
    /// A target must be at least this many levels better than the pod's node (1..=3).
    pub min_improvement: u8,
    /// The lowest level any pod may be placed on (`policy.lowest_energy_level`).
    pub lowest_energy: EnergyLevel,
    pub excluded_namespaces: BTreeSet<String>,
    /// Younger pods stay: a pod that has just started is not moved again at once.
    pub min_age: Duration,
    pub allow_local_storage: bool,
    pub max_per_pass: usize,
    pub max_per_node: usize,
    pub max_per_namespace: usize,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        Self {
            at_or_below: EnergyLevel::LowPowered,
            min_improvement: 1,
            lowest_energy: EnergyLevel::LowPowered,
            excluded_namespaces: BTreeSet::from(["kube-system".to_string()]),
            min_age: Duration::from_secs(300),
            allow_local_storage: false,
            max_per_pass: 20,
            max_per_node: 5,
            max_per_namespace: 10,
        }
    }
}

impl OffloadConfig {
    /// Whether the pods of a node with `power` are candidates: its level (unknown taken as
    /// `score` takes it) at or below `at_or_below`.
    pub fn drains(&self, power: &NodePower, score: &ScoreConfig) -> bool {
        power.energy.unwrap_or(score.unknown_energy) <= self.at_or_below
    }
}

/// Why a pod on a weak node is not moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    BarePod,
    MirrorPod,
    /// Owned by a DaemonSet: its replacement would come back to the same node.
    DaemonSet,
    /// Owned by something that is not known to recreate it elsewhere (e.g. a Job).
    OtherOwner,
    ExcludedNamespace,
    Critical,
    TooYoung,
    LocalStorage,
    OptedOut,
    /// Its owner was moved recently.
    Cooldown,
    /// No node passes every filter at the required level.
    NoBetterNode,
    PassLimit,
    NodeLimit,
    NamespaceLimit,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::BarePod => "bare_pod",
            Skip::MirrorPod => "mirror_pod",
            Skip::DaemonSet => "daemonset",
            Skip::OtherOwner => "other_owner",
            Skip::ExcludedNamespace => "excluded_namespace",
            Skip::Critical => "critical",
            Skip::TooYoung => "too_young",
            Skip::LocalStorage => "local_storage",
            Skip::OptedOut => "opted_out",
            Skip::Cooldown => "cooldown",
            Skip::NoBetterNode => "no_better_node",
            Skip::PassLimit => "pass_limit",
            Skip::NodeLimit => "node_limit",
            Skip::NamespaceLimit => "namespace_limit",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One planned move: evict `uid` from `from`, reserve `to` for its replacement.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub owner: Owner,
    pub from: String,
    /// `None`: unknown level, taken as `ScoreConfig::unknown_energy`.
    pub from_energy: Option<EnergyLevel>,
    pub to: String,
    pub to_energy: Option<EnergyLevel>,
    /// What the pod adds at the target.
    pub added: Marginal,
    /// What its leaving saves at the source (watts, ≥ 0).
    pub saved_watts: f64,
}

impl Move {
    /// Predicted change of the cluster's power: added at the target minus saved at the source.
    pub fn delta_watts(&self) -> f64 {
        self.added.watts.0 - self.saved_watts
    }
}

/// A pass's plan: the moves in order, and how many candidates were skipped for each reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub skipped: BTreeMap<Skip, usize>,
    /// Bound pods on nodes at or below the configured level.
    pub on_weak_nodes: usize,
}

/// Plans one pass over `nodes` (the policy's view, reservations included) and the pods bound
/// to them. Owners in `cooling_down` are not moved.
pub fn plan(
    nodes: &[NodeState],
    pods: &[BoundPod],
    score: &ScoreConfig,
    config: &OffloadConfig,
    cooling_down: &BTreeSet<Owner>,
) -> Plan {
    let index: HashMap<&str, usize> = (nodes.iter().enumerate())
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let level_of = |power: &NodePower| power.energy.unwrap_or(score.unknown_energy);
    let mut plan = Plan::default();

    let mut candidates: Vec<(&BoundPod, usize, EnergyLevel)> = Vec::new();
    for pod in pods {
        let Some(&at) = index.get(pod.node.as_str()) else {
            continue; // a node the view does not hold (gone meanwhile)
        };
        if !config.drains(&nodes[at].power, score) {
            continue;
        }
        let level = level_of(&nodes[at].power);
        plan.on_weak_nodes += 1;
        match ineligible(pod, config, cooling_down) {
            Some(skip) => *plan.skipped.entry(skip).or_default() += 1,
            None => candidates.push((pod, at, level)),
        }
    }
    candidates.sort_by(|(a, _, la), (b, _, lb)| {
        la.cmp(lb)
            .then(a.request.priority.cmp(&b.request.priority))
            .then(
                b.request
                    .pricing_cpu_millicores
                    .cmp(&a.request.pricing_cpu_millicores),
            )
            .then(a.request.uid.cmp(&b.request.uid))
    });

    // Targets see the moves planned before them: the snapshot is updated as the plan grows, from
    // copies of the few nodes that receive pods.
    let mut snapshot = Snapshot::new(nodes);
    let mut targets = HashMap::<usize, NodeState>::new();
    let mut per_node = BTreeMap::<usize, usize>::new();
    let mut per_namespace = BTreeMap::<&str, usize>::new();
    let mut filters_by_level = BTreeMap::<EnergyLevel, Filters>::new();
    for (pod, from, from_level) in candidates {
        let skip = if plan.moves.len() >= config.max_per_pass {
            Some(Skip::PassLimit)
        } else if per_node.get(&from).copied().unwrap_or(0) >= config.max_per_node {
            Some(Skip::NodeLimit)
        } else if per_namespace
            .get(pod.request.namespace.as_str())
            .copied()
            .unwrap_or(0)
            >= config.max_per_namespace
        {
            Some(Skip::NamespaceLimit)
        } else {
            None
        };
        if let Some(skip) = skip {
            *plan.skipped.entry(skip).or_default() += 1;
            continue;
        }
        let Some(required) = required_level(from_level, config) else {
            *plan.skipped.entry(Skip::NoBetterNode).or_default() += 1;
            continue;
        };
        let filters = filters_by_level
            .entry(required)
            .or_insert_with(|| target_filters(required, score.unknown_energy));
        let Ok(decision) = schedule(&pod.request, &snapshot, filters, score) else {
            *plan.skipped.entry(Skip::NoBetterNode).or_default() += 1;
            continue;
        };
        let to = decision.node;
        let source = &nodes[from].power;
        plan.moves.push(Move {
            uid: pod.request.uid.clone(),
            namespace: pod.request.namespace.clone(),
            name: pod.request.name.clone(),
            owner: pod.owner.clone().expect("candidates have owners"),
            from: nodes[from].name.clone(),
            from_energy: source.energy,
            to: nodes[to].name.clone(),
            to_energy: decision.energy,
            added: decision.marginal,
            saved_watts: saving(source, pod.request.pricing_cpu_millicores),
        });
        *per_node.entry(from).or_default() += 1;
        *per_namespace
            .entry(pod.request.namespace.as_str())
            .or_default() += 1;
        let target = targets.entry(to).or_insert_with(|| nodes[to].clone());
        place(target, &pod.request);
        snapshot.set(to, target);
    }
    plan
}

/// Why `pod` may not move at all, whatever the nodes.
fn ineligible(
    pod: &BoundPod,
    config: &OffloadConfig,
    cooling_down: &BTreeSet<Owner>,
) -> Option<Skip> {
    if pod.mirror {
        return Some(Skip::MirrorPod);
    }
    let Some(owner) = &pod.owner else {
        return Some(Skip::BarePod);
    };
    match owner.kind.as_str() {
        "ReplicaSet" | "StatefulSet" => {}
        "DaemonSet" => return Some(Skip::DaemonSet),
        _ => return Some(Skip::OtherOwner),
    }
    if config.excluded_namespaces.contains(&pod.request.namespace) {
        return Some(Skip::ExcludedNamespace);
    }
    if pod.request.priority >= SYSTEM_CLUSTER_CRITICAL {
        return Some(Skip::Critical);
    }
    if pod.opted_out {
        return Some(Skip::OptedOut);
    }
    if pod.local_storage && !config.allow_local_storage {
        return Some(Skip::LocalStorage);
    }
    if pod.age < config.min_age {
        return Some(Skip::TooYoung);
    }
    if cooling_down.contains(owner) {
        return Some(Skip::Cooldown);
    }
    None
}

/// The lowest level a target of a pod on a `from` node may have: `min_improvement` levels above
/// `from`, above the candidates' levels (a pod never moves onto a node the offloader drains, to
/// be moved again next pass) and allowed new pods at all. `None` when no level is good enough.
fn required_level(from: EnergyLevel, config: &OffloadConfig) -> Option<EnergyLevel> {
    let better = from.raised(usize::from(config.min_improvement.max(1)))?;
    let undrained = config.at_or_below.raised(1)?;
    Some(better.max(undrained).max(config.lowest_energy))
}

/// The standard chain with the energy floor at `required`; nodes of unknown level count as
/// `unknown_energy`, as scoring takes them.
fn target_filters(required: EnergyLevel, unknown_energy: EnergyLevel) -> Filters {
    let mut filters = Filters::standard(required);
    if unknown_energy < required {
        filters.0.push(Box::new(UnknownEnergyBelow(unknown_energy)));
    }
    filters
}

/// Rejects nodes of unknown level when that level is taken as below the requirement.
struct UnknownEnergyBelow(EnergyLevel);

impl Filter for UnknownEnergyBelow {
    fn name(&self) -> &'static str {
        "UnknownEnergyBelow"
    }

    fn filter<'a>(&self, _pod: &'a PodRequest, scan: &mut Scan<'a>) {
        scan.reject(scan.nodes().at_energy(None), FilterReason::Energy(self.0));
    }
}

/// Watts a pod of `cpu_millicores` stops adding when it leaves a node priced as `power`.
fn saving(power: &NodePower, cpu_millicores: u64) -> f64 {
    if power.capacity_millicores == 0 {
        return 0.0;
    }
    let without = NodePower {
        utilisation: (power.utilisation - cpu_millicores as f64 / power.capacity_millicores as f64)
            .max(0.0),
        ..power.clone()
    };
    without.price(cpu_millicores).watts.0.max(0.0)
}

/// Counts `pod` on `node` as the cache counts an assumed pod: its requests, host ports and CPU.
fn place(node: &mut NodeState, pod: &PodRequest) {
    node.requested.add(&pod.requests);
    node.used_host_ports.extend(pod.host_ports.iter().cloned());
    if node.power.capacity_millicores > 0 {
        node.power.utilisation +=
            pod.pricing_cpu_millicores as f64 / node.power.capacity_millicores as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fixtures::{node, pod, power};
    use EnergyLevel::*;

    fn at(name: &str, energy: Option<EnergyLevel>, idle: f64, peak: f64) -> NodeState {
        let mut n = node(name);
        n.power = power(idle, peak);
        n.power.energy = energy;
        n
    }

    fn owner(name: &str) -> Owner {
        Owner {
            kind: "ReplicaSet".into(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// A ReplicaSet's pod of `cpu` millicores on `node`, an hour old.
    fn bound(uid: &str, node: &str, cpu: u64) -> BoundPod {
        let mut request = pod(uid);
        request.requests.cpu_millicores = cpu;
        request.pricing_cpu_millicores = cpu;
        BoundPod {
            request,
            node: node.into(),
            owner: Some(owner("web")),
            age: Duration::from_secs(3600),
            mirror: false,
            local_storage: false,
            opted_out: false,
        }
    }

    fn plan_of(nodes: &[NodeState], pods: &[BoundPod], config: &OffloadConfig) -> Plan {
        plan(
            nodes,
            pods,
            &ScoreConfig::default(),
            config,
            &BTreeSet::new(),
        )
    }

    #[test]
    fn pods_on_weak_nodes_move_to_the_cheapest_better_powered_node() {
        let nodes = [
            at("weak", Some(LowPowered), 100.0, 300.0),
            at("strong-dear", Some(WellPowered), 100.0, 400.0),
            at("strong-cheap", Some(WellPowered), 100.0, 200.0),
            at("vulnerable-cheapest", Some(Vulnerable), 50.0, 60.0),
        ];
        let pods = [bound("a", "weak", 1000), bound("b", "strong-dear", 1000)];
        let plan = plan_of(&nodes, &pods, &OffloadConfig::default());
        assert_eq!(plan.on_weak_nodes, 1);
        assert_eq!(plan.moves.len(), 1, "{plan:?}");
        let m = &plan.moves[0];
        assert_eq!((m.uid.as_str(), m.from.as_str()), ("a", "weak"));
        // One level better suffices, and tiered scoring takes the best tier first.
        assert_eq!(m.to, "strong-cheap");
        assert_eq!(m.to_energy, Some(WellPowered));
        // 1 of 16 cores on a 100 W span: 6.25 W added; 200 W span at the source: 12.5 W saved.
        assert!((m.added.watts.0 - 6.25).abs() < 1e-9, "{m:?}");
        assert!((m.saved_watts - 12.5).abs() < 1e-9, "{m:?}");
        assert!((m.delta_watts() + 6.25).abs() < 1e-9);
    }

    #[test]
    fn no_target_means_no_move() {
        // The only better node is full: the pod stays (the original evicted anyway).
        let mut full = at("full", Some(WellPowered), 100.0, 200.0);
        full.requested.cpu_millicores = full.allocatable.cpu_millicores;
        let nodes = [at("weak", Some(Powerless), 100.0, 300.0), full];
        let plan = plan_of(
            &nodes,
            &[bound("a", "weak", 500)],
            &OffloadConfig::default(),
        );
        assert!(plan.moves.is_empty());
        assert_eq!(plan.skipped, BTreeMap::from([(Skip::NoBetterNode, 1)]));
    }

    #[test]
    fn the_target_must_be_the_required_number_of_levels_better() {
        let nodes = [
            at("weak", Some(LowPowered), 100.0, 300.0),
            at("vulnerable", Some(Vulnerable), 100.0, 200.0),
        ];
        let pods = [bound("a", "weak", 500)];
        let one = plan_of(&nodes, &pods, &OffloadConfig::default());
        assert_eq!(one.moves[0].to, "vulnerable");
        let two = plan_of(
            &nodes,
            &pods,
            &OffloadConfig {
                min_improvement: 2,
                ..OffloadConfig::default()
            },
        );
        assert!(two.moves.is_empty(), "{two:?}");
        // Nothing is three levels above low-powered.
        let three = plan_of(
            &nodes,
            &pods,
            &OffloadConfig {
                min_improvement: 3,
                ..OffloadConfig::default()
            },
        );
        assert_eq!(three.skipped, BTreeMap::from([(Skip::NoBetterNode, 1)]));
    }

    #[test]
    fn unknown_levels_count_as_scoring_takes_them() {
        let nodes = [
            at("weak", Some(LowPowered), 100.0, 300.0),
            at("grid", None, 100.0, 200.0),
        ];
        let pods = [bound("a", "weak", 500)];
        let grid_is_good = plan_of(&nodes, &pods, &OffloadConfig::default());
        assert_eq!(grid_is_good.moves[0].to, "grid");
        let grid_is_weak = plan(
            &nodes,
            &pods,
            &ScoreConfig {
                unknown_energy: LowPowered,
                ..ScoreConfig::default()
            },
            &OffloadConfig::default(),
            &BTreeSet::new(),
        );
        assert!(grid_is_weak.moves.is_empty(), "{grid_is_weak:?}");
    }

    #[test]
    fn planned_moves_fill_their_targets() {
        // Room for two 4-core pods on the only better node: the third stays.
        let mut target = at("target", Some(WellPowered), 100.0, 200.0);
        target.requested.cpu_millicores = 8_000;
        let nodes = [at("weak", Some(LowPowered), 100.0, 300.0), target];
        let pods: Vec<_> = (0..3)
            .map(|i| bound(&format!("p{i}"), "weak", 4000))
            .collect();
        let plan = plan_of(&nodes, &pods, &OffloadConfig::default());
        assert_eq!(plan.moves.len(), 2, "{plan:?}");
        assert_eq!(plan.skipped, BTreeMap::from([(Skip::NoBetterNode, 1)]));
        // The second move is priced on top of the first.
        assert!(plan.moves[1].added.watts.0 >= plan.moves[0].added.watts.0);
    }

    #[test]
    fn only_pods_a_controller_recreates_elsewhere_move() {
        let nodes = [
            at("weak", Some(LowPowered), 100.0, 300.0),
            at("strong", Some(WellPowered), 100.0, 200.0),
        ];
        let with = |uid: &str, change: &dyn Fn(&mut BoundPod)| {
            let mut p = bound(uid, "weak", 500);
            change(&mut p);
            p
        };
        let kind = |k: &str| {
            let k = k.to_string();
            move |p: &mut BoundPod| p.owner.as_mut().unwrap().kind = k.clone()
        };
        let pods = [
            with("bare", &|p| p.owner = None),
            with("mirror", &|p| p.mirror = true),
            with("daemon", &kind("DaemonSet")),
            with("job", &kind("Job")),
            with("system", &|p| p.request.namespace = "kube-system".into()),
            with("critical", &|p| {
                p.request.priority = SYSTEM_CLUSTER_CRITICAL
            }),
            with("young", &|p| p.age = Duration::from_secs(10)),
            with("scratch", &|p| p.local_storage = true),
            with("pinned", &|p| p.opted_out = true),
            with("stateful", &kind("StatefulSet")),
            with("web", &|_| {}),
        ];
        let plan = plan_of(&nodes, &pods, &OffloadConfig::default());
        let moved: BTreeSet<_> = plan.moves.iter().map(|m| m.uid.as_str()).collect();
        assert_eq!(moved, BTreeSet::from(["stateful", "web"]));
        let expected: BTreeMap<Skip, usize> = [
            Skip::BarePod,
            Skip::MirrorPod,
            Skip::DaemonSet,
            Skip::OtherOwner,
            Skip::ExcludedNamespace,
            Skip::Critical,
            Skip::TooYoung,
            Skip::LocalStorage,
            Skip::OptedOut,
        ]
        .into_iter()
        .map(|s| (s, 1))
        .collect();
        assert_eq!(plan.skipped, expected);
        assert_eq!(plan.on_weak_nodes, 11);
    }

    #[test]
    fn owners_cooling_down_stay() {
        let nodes = [
            at("weak", Some(LowPowered), 100.0, 300.0),
            at("strong", Some(WellPowered), 100.0, 200.0),
        ];
        let plan = plan(
            &nodes,
            &[bound("a", "weak", 500)],
            &ScoreConfig::default(),
            &OffloadConfig::default(),
            &BTreeSet::from([owner("web")]),
        );
        assert!(plan.moves.is_empty());
        assert_eq!(plan.skipped, BTreeMap::from([(Skip::Cooldown, 1)]));
    }

    #[test]
    fn weakest_nodes_lowest_priority_and_largest_pods_go_first_within_limits() {
        let nodes = [
            at("low", Some(LowPowered), 100.0, 300.0),
            at("empty", Some(Powerless), 100.0, 300.0),
            at("strong", Some(WellPowered), 100.0, 200.0),
        ];
        let mut important = bound("important", "low", 2000);
        important.request.priority = 100;
        let pods = [
            important,
            bound("small", "low", 500),
            bound("large", "low", 2000),
            bound("drained", "empty", 100),
        ];
        let all = plan_of(&nodes, &pods, &OffloadConfig::default());
        let order: Vec<_> = all.moves.iter().map(|m| m.uid.as_str()).collect();
        assert_eq!(order, ["drained", "large", "small", "important"]);

        let limited = plan_of(
            &nodes,
            &pods,
            &OffloadConfig {
                max_per_pass: 3,
                max_per_node: 1,
                ..OffloadConfig::default()
            },
        );
        let order: Vec<_> = limited.moves.iter().map(|m| m.uid.as_str()).collect();
        assert_eq!(order, ["drained", "large"]);
        assert_eq!(limited.skipped, BTreeMap::from([(Skip::NodeLimit, 2)]));

        let per_namespace = plan_of(
            &nodes,
            &pods,
            &OffloadConfig {
                max_per_namespace: 1,
                ..OffloadConfig::default()
            },
        );
        assert_eq!(per_namespace.moves.len(), 1);
        assert_eq!(
            per_namespace.skipped,
            BTreeMap::from([(Skip::NamespaceLimit, 3)])
        );
        let per_pass = plan_of(
            &nodes,
            &pods,
            &OffloadConfig {
                max_per_pass: 2,
                ..OffloadConfig::default()
            },
        );
        assert_eq!(per_pass.skipped, BTreeMap::from([(Skip::PassLimit, 2)]));
    }

    #[test]
    fn a_node_the_offloader_drains_is_never_a_target() {
        // One level above powerless is low-powered, which is drained itself.
        let nodes = [
            at("empty", Some(Powerless), 100.0, 300.0),
            at("low-cheap", Some(LowPowered), 50.0, 60.0),
        ];
        let plan = plan_of(
            &nodes,
            &[bound("a", "empty", 500)],
            &OffloadConfig::default(),
        );
        assert_eq!(plan.skipped, BTreeMap::from([(Skip::NoBetterNode, 1)]));
    }

    #[test]
    fn pods_on_nodes_above_the_level_are_not_candidates() {
        let nodes = [
            at("vulnerable", Some(Vulnerable), 100.0, 300.0),
            at("strong", Some(WellPowered), 100.0, 200.0),
        ];
        let plan = plan_of(
            &nodes,
            &[bound("a", "vulnerable", 500), bound("gone", "nowhere", 500)],
            &OffloadConfig::default(),
        );
        assert_eq!(plan, Plan::default());
    }
}
