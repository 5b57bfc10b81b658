//! Feasibility: one small unit per concern, each answering "may this pod run on this node?".
//!
//! Rules and reason texts follow kube-scheduler's plugins of the same concern, so an operator
//! reading `FailedScheduling` events sees familiar wording.
//!
//! A unit runs over a [`Snapshot`] of the cluster, not node by node: it first works out what
//! depends only on the pod (its label strings as the snapshot's ids, which of the cluster's taints
//! it tolerates), then tests each node still in the [`Scan`] with a few integer compares; units
//! about conditions few nodes are in (cordoned, not ready, tainted, short of energy) visit only
//! the snapshot's set of such nodes. Each node is rejected by the first unit of the chain that
//! rejects it, as if the chain ran node by node. [`Filter::check`] applies a unit to one plain
//! [`NodeState`].

use std::borrow::Cow;
use std::fmt;

use wattwise_core::EnergyLevel;

use super::snapshot::{Node, NodeSet, Snapshot, Sym};
use super::types::{
    HostPort, NodeSelectorTerm, NodeState, PodRequest, SelectorOperator, SelectorRequirement,
    TaintEffect, Toleration, TolerationOperator,
};

/// The taint kube puts on cordoned nodes; a pod tolerating it may land on an unschedulable node.
pub const TAINT_NODE_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// One feasibility concern.
pub trait Filter {
    /// Stable name for logs and metrics (kube's plugin name where one exists).
    fn name(&self) -> &'static str;

    /// Drops from `scan` the nodes this unit rejects for `pod`.
    fn filter<'a>(&self, pod: &'a PodRequest, scan: &mut Scan<'a>);

    /// This unit's verdict on one plain node, through a one-node snapshot: for tests and for
    /// reading, not for scanning a cluster.
    fn check(&self, pod: &PodRequest, node: &NodeState) -> Result<(), FilterReason<'static>> {
        let nodes = Snapshot::new(std::slice::from_ref(node));
        let mut scan = Scan::new(&nodes, true);
        self.filter(pod, &mut scan);
        match scan.into_rejected().pop() {
            Some((reason, _)) => Err(reason.into_owned()),
            None => Ok(()),
        }
    }
}

/// Why a node cannot take a pod. Strings borrow from the pod or the snapshot while scanning, so
/// rejecting a node allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterReason<'a> {
    Unschedulable,
    NotReady,
    UntoleratedTaint {
        key: Cow<'a, str>,
        value: Cow<'a, str>,
    },
    NodeAffinity,
    /// Names the resource: `cpu`, `memory`, `ephemeral-storage` or an extended resource.
    Insufficient(Cow<'a, str>),
    TooManyPods,
    HostPortConflict,
    /// The node's energy level, below the configured floor.
    Energy(EnergyLevel),
}

impl FilterReason<'_> {
    /// kube-scheduler's phrasing; pods' unschedulable messages count nodes by this text, so it
    /// carries no per-node detail except a taint's key and value (as kube's does).
    pub fn summary(&self) -> Cow<'static, str> {
        match self {
            FilterReason::Unschedulable => "node(s) were unschedulable".into(),
            FilterReason::NotReady => "node(s) were not ready".into(),
            FilterReason::UntoleratedTaint { key, value } => {
                format!("node(s) had untolerated taint {{{key}: {value}}}").into()
            }
            FilterReason::NodeAffinity => {
                "node(s) didn't match Pod's node affinity/selector".into()
            }
            FilterReason::Insufficient(resource) => format!("Insufficient {resource}").into(),
            FilterReason::TooManyPods => "Too many pods".into(),
            FilterReason::HostPortConflict => {
                "node(s) didn't have free ports for the requested pod ports".into()
            }
            FilterReason::Energy(level) => format!("node(s) were {}", level.label()).into(),
        }
    }

    pub fn into_owned(self) -> FilterReason<'static> {
        let owned = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        match self {
            FilterReason::Unschedulable => FilterReason::Unschedulable,
            FilterReason::NotReady => FilterReason::NotReady,
            FilterReason::UntoleratedTaint { key, value } => FilterReason::UntoleratedTaint {
                key: owned(key),
                value: owned(value),
            },
            FilterReason::NodeAffinity => FilterReason::NodeAffinity,
            FilterReason::Insufficient(resource) => FilterReason::Insufficient(owned(resource)),
            FilterReason::TooManyPods => FilterReason::TooManyPods,
            FilterReason::HostPortConflict => FilterReason::HostPortConflict,
            FilterReason::Energy(level) => FilterReason::Energy(level),
        }
    }
}

impl fmt::Display for FilterReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// The filter chain's working set over a snapshot: the nodes no unit has rejected yet and, when
/// explaining, how many of the others each reason rejected.
pub struct Scan<'a> {
    nodes: &'a Snapshot,
    feasible: NodeSet,
    /// `None` unless explaining: the common case (some node fits) counts nothing.
    rejected: Option<Vec<(FilterReason<'a>, usize)>>,
}

impl<'a> Scan<'a> {
    /// Every node of `nodes`, none rejected yet.
    pub(crate) fn new(nodes: &'a Snapshot, explain: bool) -> Self {
        Self::among(nodes, NodeSet::full(nodes.len()), explain)
    }

    /// The nodes of `nodes` in `among`, none rejected yet.
    fn among(nodes: &'a Snapshot, among: NodeSet, explain: bool) -> Self {
        Self {
            nodes,
            feasible: among,
            rejected: explain.then(Vec::new),
        }
    }

    pub(crate) fn nodes(&self) -> &'a Snapshot {
        self.nodes
    }

    pub(crate) fn feasible(&self) -> &NodeSet {
        &self.feasible
    }

    /// Keeps the nodes `test` passes.
    pub(crate) fn retain(&mut self, test: impl FnMut(Node<'a>) -> Result<(), FilterReason<'a>>) {
        self.retain_among(None, test);
    }

    /// Keeps the nodes `test` passes, testing only those in `among` (when given): the others pass.
    pub(crate) fn retain_among(
        &mut self,
        among: Option<&NodeSet>,
        mut test: impl FnMut(Node<'a>) -> Result<(), FilterReason<'a>>,
    ) {
        for w in 0..self.feasible.word_count() {
            let mut bits = self.feasible.word(w) & among.map_or(u64::MAX, |among| among.word(w));
            while bits != 0 {
                let index = 64 * w + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Err(reason) = test(self.nodes.node(index)) {
                    self.feasible.set(index, false);
                    self.count(reason, 1);
                }
            }
        }
    }

    /// Rejects every node in `nodes` for `reason`, at a cost per 64 nodes rather than per node.
    pub(crate) fn reject(&mut self, nodes: &NodeSet, reason: FilterReason<'a>) {
        let kept = self.feasible.and_not(nodes);
        let rejected = self.feasible.len() - kept.len();
        self.feasible = kept;
        self.count(reason, rejected);
    }

    fn count(&mut self, reason: FilterReason<'a>, nodes: usize) {
        let Some(rejected) = self.rejected.as_mut().filter(|_| nodes > 0) else {
            return;
        };
        match rejected.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += nodes,
            None => rejected.push((reason, nodes)),
        }
    }

    /// Rejected nodes per reason (empty unless explaining).
    pub(crate) fn into_rejected(self) -> Vec<(FilterReason<'a>, usize)> {
        self.rejected.unwrap_or_default()
    }
}

/// kube's `Toleration.ToleratesTaint`: an empty effect matches every effect, an empty key every
/// key; `Exists` ignores the value, `Equal` compares it.
fn tolerates(toleration: &Toleration, key: &str, value: &str, effect: TaintEffect) -> bool {
    if toleration.effect.is_some_and(|e| e != effect) {
        return false;
    }
    if !toleration.key.is_empty() && toleration.key != key {
        return false;
    }
    match toleration.operator {
        TolerationOperator::Exists => true,
        TolerationOperator::Equal => toleration.value == value,
    }
}

fn any_tolerates(tolerations: &[Toleration], key: &str, value: &str, effect: TaintEffect) -> bool {
    tolerations.iter().any(|t| tolerates(t, key, value, effect))
}

/// Cordoned nodes take no pods, except pods that tolerate the unschedulable taint.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter<'a>(&self, pod: &'a PodRequest, scan: &mut Scan<'a>) {
        let tolerated = any_tolerates(
            &pod.tolerations,
            TAINT_NODE_UNSCHEDULABLE,
            "",
            TaintEffect::NoSchedule,
        );
        if !tolerated {
            scan.reject(scan.nodes().cordoned(), FilterReason::Unschedulable);
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct NodeReady;

impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }

    fn filter<'a>(&self, _pod: &'a PodRequest, scan: &mut Scan<'a>) {
        scan.reject(scan.nodes().not_ready(), FilterReason::NotReady);
    }
}

/// The first NoSchedule or NoExecute taint the pod does not tolerate fails the node;
/// PreferNoSchedule is a scoring hint in kube, not a filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter<'a>(&self, pod: &'a PodRequest, scan: &mut Scan<'a>) {
        // Decided once per distinct taint in the cluster, then looked up per node.
        let taints = scan.nodes().taint_table();
        let repels: Vec<bool> = taints
            .iter()
            .map(|taint| {
                taint.effect != TaintEffect::PreferNoSchedule
                    && !any_tolerates(&pod.tolerations, &taint.key, &taint.value, taint.effect)
            })
            .collect();
        if !repels.contains(&true) {
            return;
        }
        scan.retain_among(Some(scan.nodes().tainted()), |node| {
            match node.taints().iter().find(|&&id| repels[id as usize]) {
                Some(&id) => {
                    let taint = &taints[id as usize];
                    Err(FilterReason::UntoleratedTaint {
                        key: Cow::Borrowed(&taint.key),
                        value: Cow::Borrowed(&taint.value),
                    })
                }
                None => Ok(()),
            }
        });
    }
}

/// `nodeSelector` (every pair) and required node affinity (any term).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeAffinity;

impl Filter for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter<'a>(&self, pod: &'a PodRequest, scan: &mut Scan<'a>) {
        if pod.node_selector.is_empty() && pod.required_node_affinity.is_empty() {
            return;
        }
        let nodes = scan.nodes();
        let selector: Vec<(Sym, Sym)> = pod
            .node_selector
            .iter()
            .map(|(key, value)| (nodes.symbol(key), nodes.symbol(value)))
            .collect();
        // Terms that can select no node are left out; "no terms" still means "no requirement".
        let any_term = pod.required_node_affinity.is_empty();
        let terms: Vec<Term> = pod
            .required_node_affinity
            .iter()
            .filter_map(|term| Term::resolve(term, nodes))
            .collect();
        scan.retain(|node| {
            let selector = selector
                .iter()
                .all(|&(key, value)| node.label(key) == Some(value));
            let affinity = any_term || terms.iter().any(|term| term.matches(node, nodes));
            if selector && affinity {
                Ok(())
            } else {
                Err(FilterReason::NodeAffinity)
            }
        });
    }
}

/// A NodeSelectorTerm with its strings as a snapshot's ids.
struct Term {
    expressions: Vec<Requirement>,
    fields: Vec<Requirement>,
}

/// A SelectorRequirement with its key and values as a snapshot's ids (a string no node carries
/// becomes an id no node has).
struct Requirement {
    key: Sym,
    operator: SelectorOperator,
    values: Vec<Sym>,
    /// `Gt`/`Lt`: the one value, parsed; `None` when there is not exactly one or it is no integer.
    bound: Option<i64>,
}

impl Term {
    /// `None` for a term that selects no node. kube: a term without requirements selects no
    /// node, rather than every node; and `matchFields` allows only `metadata.name`.
    fn resolve(term: &NodeSelectorTerm, nodes: &Snapshot) -> Option<Self> {
        let empty = term.match_expressions.is_empty() && term.match_fields.is_empty();
        if empty || term.match_fields.iter().any(|r| r.key != "metadata.name") {
            return None;
        }
        let resolve = |requirements: &[SelectorRequirement]| {
            requirements
                .iter()
                .map(|r| Requirement::resolve(r, nodes))
                .collect()
        };
        Some(Self {
            expressions: resolve(&term.match_expressions),
            fields: resolve(&term.match_fields),
        })
    }

    fn matches(&self, node: Node, nodes: &Snapshot) -> bool {
        self.expressions
            .iter()
            .all(|requirement| label_matches(requirement, node.label(requirement.key), nodes))
            && self
                .fields
                .iter()
                .all(|requirement| name_matches(requirement, node.name()))
    }
}

impl Requirement {
    fn resolve(requirement: &SelectorRequirement, nodes: &Snapshot) -> Self {
        Self {
            key: nodes.symbol(&requirement.key),
            operator: requirement.operator,
            values: requirement.values.iter().map(|v| nodes.symbol(v)).collect(),
            bound: match requirement.values.as_slice() {
                [bound] => bound.parse().ok(),
                _ => None,
            },
        }
    }
}

/// `label`: the node's value for the requirement's key, if it has the label.
fn label_matches(requirement: &Requirement, label: Option<Sym>, nodes: &Snapshot) -> bool {
    match requirement.operator {
        SelectorOperator::In => label.is_some_and(|v| requirement.values.contains(&v)),
        SelectorOperator::NotIn => label.is_none_or(|v| !requirement.values.contains(&v)),
        SelectorOperator::Exists => label.is_some(),
        SelectorOperator::DoesNotExist => label.is_none(),
        SelectorOperator::Gt | SelectorOperator::Lt => {
            let (Some(label), Some(bound)) = (label, requirement.bound) else {
                return false;
            };
            let Ok(label) = nodes.resolve(label).parse::<i64>() else {
                return false;
            };
            if requirement.operator == SelectorOperator::Gt {
                label > bound
            } else {
                label < bound
            }
        }
    }
}

/// A `metadata.name` field requirement: kube allows only `In` and `NotIn`; anything else matches
/// nothing.
fn name_matches(requirement: &Requirement, name: Sym) -> bool {
    let listed = requirement.values.contains(&name);
    match requirement.operator {
        SelectorOperator::In => listed,
        SelectorOperator::NotIn => !listed,
        _ => false,
    }
}

/// Requests against allocatable, as kube's NodeResourcesFit: the pod count first, then every
/// resource the pod asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourcesFit;

impl Filter for ResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter<'a>(&self, pod: &'a PodRequest, scan: &mut Scan<'a>) {
        let want = &pod.requests;
        let nodes = scan.nodes();
        let extended: Vec<(&'a str, Sym, u64)> = want
            .extended
            .iter()
            .map(|(resource, &want)| (resource.as_str(), nodes.symbol(resource), want))
            .collect();
        scan.retain(|node| {
            let (used, have) = (node.requested(), node.allocatable());
            if used.pods.saturating_add(1) > have.pods {
                return Err(FilterReason::TooManyPods);
            }
            fits(
                "cpu",
                want.cpu_millicores,
                used.cpu_millicores,
                have.cpu_millicores,
            )?;
            fits(
                "memory",
                want.memory_bytes,
                used.memory_bytes,
                have.memory_bytes,
            )?;
            fits(
                "ephemeral-storage",
                want.ephemeral_storage_bytes,
                used.ephemeral_storage_bytes,
                have.ephemeral_storage_bytes,
            )?;
            for &(resource, id, want) in &extended {
                // A node without the resource at all has none allocatable.
                let (used, have) = node.extended(id);
                fits(resource, want, used, have)?;
            }
            Ok(())
        });
    }
}

/// A request for nothing always fits, even on an overcommitted node.
fn fits(resource: &str, want: u64, used: u64, have: u64) -> Result<(), FilterReason<'_>> {
    if want > 0 && used.saturating_add(want) > have {
        Err(FilterReason::Insufficient(Cow::Borrowed(resource)))
    } else {
        Ok(())
    }
}

/// Host ports, as kube's NodePorts: same protocol and port on overlapping addresses conflict.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostPorts;

impl Filter for HostPorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter<'a>(&self, pod: &'a PodRequest, scan: &mut Scan<'a>) {
        if pod.host_ports.is_empty() {
            return;
        }
        scan.retain(|node| {
            let conflict = pod.host_ports.iter().any(|wanted| {
                node.host_ports()
                    .iter()
                    .any(|used| ports_conflict(wanted, used))
            });
            if conflict {
                Err(FilterReason::HostPortConflict)
            } else {
                Ok(())
            }
        });
    }
}

fn ports_conflict(a: &HostPort, b: &HostPort) -> bool {
    // Port 0 means "no host port" in a container spec; kube skips it.
    a.port != 0
        && a.port == b.port
        && a.protocol == b.protocol
        && (a.host_ip == b.host_ip
            || binds_every_address(&a.host_ip)
            || binds_every_address(&b.host_ip))
}

fn binds_every_address(host_ip: &str) -> bool {
    host_ip.is_empty() || host_ip == "0.0.0.0"
}

/// Nodes whose stored energy is below `lowest_allowed` get no new pods; nodes of unknown level
/// (e.g. grid-powered, no report) pass.
#[derive(Debug, Clone, Copy)]
pub struct EnergyFloor {
    pub lowest_allowed: EnergyLevel,
}

impl Default for EnergyFloor {
    /// Powerless nodes get no new pods, as in the original energy-level filter.
    fn default() -> Self {
        Self {
            lowest_allowed: EnergyLevel::LowPowered,
        }
    }
}

impl Filter for EnergyFloor {
    fn name(&self) -> &'static str {
        "EnergyFloor"
    }

    fn filter<'a>(&self, _pod: &'a PodRequest, scan: &mut Scan<'a>) {
        for level in EnergyLevel::ALL {
            if level < self.lowest_allowed {
                scan.reject(
                    scan.nodes().at_energy(Some(level)),
                    FilterReason::Energy(level),
                );
            }
        }
    }
}

/// An ordered filter chain; the first failing unit names the node's reason.
pub struct Filters(pub Vec<Box<dyn Filter + Send + Sync>>);

/// A chain's verdict on some nodes of a snapshot, each named by its row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Ascending.
    pub passed: Vec<usize>,
    /// Ascending, each with its first failing unit's reason.
    pub failed: Vec<(usize, FilterReason<'static>)>,
}

impl Filters {
    /// kube's checks in kube's order, with the energy floor right after readiness: a node failing
    /// several is counted under its first failure.
    pub fn standard(lowest_energy: EnergyLevel) -> Self {
        Self(vec![
            Box::new(NodeUnschedulable),
            Box::new(NodeReady),
            // A node's energy state, like its readiness, matters more to an operator reading
            // FailedScheduling than whether it happens to be full.
            Box::new(EnergyFloor {
                lowest_allowed: lowest_energy,
            }),
            Box::new(TaintToleration),
            Box::new(NodeAffinity),
            Box::new(ResourcesFit),
            Box::new(HostPorts),
        ])
    }

    /// The energy floor alone: what wattwise adds to a scheduler that runs kube's own checks
    /// (kube-scheduler calling it as an extender).
    pub fn energy_floor(lowest_energy: EnergyLevel) -> Self {
        Self(vec![Box::new(EnergyFloor {
            lowest_allowed: lowest_energy,
        })])
    }

    /// Runs the chain over every node of `nodes`. Each unit sees only the nodes all earlier units
    /// passed, so a node is rejected (and, when explaining, counted) under its first failing unit.
    pub(crate) fn scan<'a>(
        &self,
        pod: &'a PodRequest,
        nodes: &'a Snapshot,
        explain: bool,
    ) -> Scan<'a> {
        self.scan_among(pod, nodes, NodeSet::full(nodes.len()), explain)
    }

    fn scan_among<'a>(
        &self,
        pod: &'a PodRequest,
        nodes: &'a Snapshot,
        among: NodeSet,
        explain: bool,
    ) -> Scan<'a> {
        let mut scan = Scan::among(nodes, among, explain);
        for filter in &self.0 {
            filter.filter(pod, &mut scan);
        }
        scan
    }

    /// The chain over the nodes in `among` only: which pass, and why each other one fails.
    pub(crate) fn verdicts(&self, pod: &PodRequest, nodes: &Snapshot, among: &NodeSet) -> Verdicts {
        let passed = self.scan_among(pod, nodes, among.clone(), false).feasible;
        // Failures are the rare case (a few weak nodes): each is explained by a scan of its own.
        let failed = among
            .and_not(&passed)
            .iter()
            .filter_map(|row| {
                let mut one = NodeSet::default();
                one.set(row, true);
                let reason = self
                    .scan_among(pod, nodes, one, true)
                    .into_rejected()
                    .pop()?;
                Some((row, reason.0.into_owned()))
            })
            .collect();
        Verdicts {
            passed: passed.iter().collect(),
            failed,
        }
    }

    /// The first unit that rejects `node`, with its reason; `None` when the node is feasible.
    /// One plain node, through [`Filter::check`]: for tests and for reading.
    pub fn first_failure(
        &self,
        pod: &PodRequest,
        node: &NodeState,
    ) -> Option<(&'static str, FilterReason<'static>)> {
        self.0
            .iter()
            .find_map(|filter| filter.check(pod, node).err().map(|r| (filter.name(), r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fixtures::{node, pod};
    use crate::policy::types::{Protocol, Taint};

    fn toleration(
        key: &str,
        operator: TolerationOperator,
        value: &str,
        effect: Option<TaintEffect>,
    ) -> Toleration {
        Toleration {
            key: key.into(),
            operator,
            value: value.into(),
            effect,
        }
    }

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
        }
    }

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn expressions(requirements: Vec<SelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: requirements,
            match_fields: vec![],
        }
    }

    #[test]
    fn cordoned_node_fails_unless_the_pod_tolerates_the_unschedulable_taint() {
        let mut n = node("n1");
        let mut p = pod("p");
        assert_eq!(NodeUnschedulable.check(&p, &n), Ok(()));
        n.unschedulable = true;
        assert_eq!(
            NodeUnschedulable.check(&p, &n),
            Err(FilterReason::Unschedulable)
        );
        p.tolerations = vec![toleration(
            TAINT_NODE_UNSCHEDULABLE,
            TolerationOperator::Exists,
            "",
            Some(TaintEffect::NoSchedule),
        )];
        assert_eq!(NodeUnschedulable.check(&p, &n), Ok(()));
        // A NoExecute-only toleration does not cover the NoSchedule taint.
        p.tolerations[0].effect = Some(TaintEffect::NoExecute);
        assert!(NodeUnschedulable.check(&p, &n).is_err());
        // Tolerate-everything (empty key, Exists, any effect) does.
        p.tolerations = vec![toleration("", TolerationOperator::Exists, "", None)];
        assert_eq!(NodeUnschedulable.check(&p, &n), Ok(()));
    }

    #[test]
    fn not_ready_node_fails() {
        let mut n = node("n1");
        let p = pod("p");
        assert_eq!(NodeReady.check(&p, &n), Ok(()));
        n.ready = false;
        assert_eq!(NodeReady.check(&p, &n), Err(FilterReason::NotReady));
    }

    #[test]
    fn untolerated_noschedule_and_noexecute_taints_fail_prefer_noschedule_does_not() {
        let mut n = node("n1");
        let p = pod("p");
        n.taints = vec![taint("soft", "", TaintEffect::PreferNoSchedule)];
        assert_eq!(TaintToleration.check(&p, &n), Ok(()));
        n.taints
            .push(taint("dedicated", "gpu", TaintEffect::NoSchedule));
        assert_eq!(
            TaintToleration.check(&p, &n),
            Err(FilterReason::UntoleratedTaint {
                key: "dedicated".into(),
                value: "gpu".into()
            })
        );
        n.taints = vec![taint("evict", "", TaintEffect::NoExecute)];
        assert!(TaintToleration.check(&p, &n).is_err());
    }

    #[test]
    fn toleration_matching_follows_kube() {
        let mut n = node("n1");
        let mut p = pod("p");
        n.taints = vec![
            taint("dedicated", "gpu", TaintEffect::NoSchedule),
            taint("evict", "soon", TaintEffect::NoExecute),
        ];
        // Empty key + Exists tolerates every taint.
        p.tolerations = vec![toleration("", TolerationOperator::Exists, "", None)];
        assert_eq!(TaintToleration.check(&p, &n), Ok(()));

        // Equal compares the value; Exists ignores it; effect None covers both effects.
        p.tolerations = vec![
            toleration("dedicated", TolerationOperator::Equal, "gpu", None),
            toleration("evict", TolerationOperator::Exists, "ignored", None),
        ];
        assert_eq!(TaintToleration.check(&p, &n), Ok(()));
        p.tolerations[0].value = "cpu".into();
        assert_eq!(
            TaintToleration.check(&p, &n),
            Err(FilterReason::UntoleratedTaint {
                key: "dedicated".into(),
                value: "gpu".into()
            })
        );

        // An effect that differs from the taint's does not tolerate it.
        p.tolerations = vec![
            toleration(
                "dedicated",
                TolerationOperator::Equal,
                "gpu",
                Some(TaintEffect::NoSchedule),
            ),
            toleration(
                "evict",
                TolerationOperator::Exists,
                "",
                Some(TaintEffect::NoSchedule),
            ),
        ];
        assert_eq!(
            TaintToleration.check(&p, &n),
            Err(FilterReason::UntoleratedTaint {
                key: "evict".into(),
                value: "soon".into()
            })
        );
    }

    #[test]
    fn node_selector_needs_every_pair() {
        let mut n = node("n1");
        let mut p = pod("p");
        n.labels.insert("zone".into(), "a".into());
        n.labels.insert("disk".into(), "ssd".into());
        p.node_selector.insert("zone".into(), "a".into());
        assert_eq!(NodeAffinity.check(&p, &n), Ok(()));
        p.node_selector.insert("disk".into(), "hdd".into());
        assert_eq!(NodeAffinity.check(&p, &n), Err(FilterReason::NodeAffinity));
    }

    #[test]
    fn affinity_terms_are_ored_and_their_requirements_anded() {
        let mut n = node("n1");
        let mut p = pod("p");
        n.labels.insert("zone".into(), "a".into());
        n.labels.insert("gen".into(), "5".into());
        p.required_node_affinity = vec![
            expressions(vec![
                requirement("zone", SelectorOperator::In, &["a", "b"]),
                requirement("gen", SelectorOperator::In, &["6"]),
            ]),
            expressions(vec![requirement("zone", SelectorOperator::In, &["c"])]),
        ];
        assert!(NodeAffinity.check(&p, &n).is_err());
        p.required_node_affinity.push(expressions(vec![requirement(
            "gen",
            SelectorOperator::Exists,
            &[],
        )]));
        assert_eq!(NodeAffinity.check(&p, &n), Ok(()));
        // The node selector still applies alongside affinity.
        p.node_selector.insert("zone".into(), "b".into());
        assert!(NodeAffinity.check(&p, &n).is_err());
    }

    #[test]
    fn an_empty_term_matches_nothing() {
        let n = node("n1");
        let mut p = pod("p");
        p.required_node_affinity = vec![NodeSelectorTerm::default()];
        assert_eq!(NodeAffinity.check(&p, &n), Err(FilterReason::NodeAffinity));
    }

    #[test]
    fn selector_operators() {
        let mut n = node("n1");
        n.labels.insert("zone".into(), "a".into());
        n.labels.insert("cores".into(), "64".into());
        n.labels.insert("name".into(), "big".into());
        let matches = |r: SelectorRequirement| {
            let mut p = pod("p");
            p.required_node_affinity = vec![expressions(vec![r])];
            NodeAffinity.check(&p, &n).is_ok()
        };
        use SelectorOperator::*;
        assert!(matches(requirement("zone", In, &["a", "b"])));
        assert!(!matches(requirement("zone", In, &["b"])));
        assert!(!matches(requirement("missing", In, &["a"])));
        assert!(matches(requirement("zone", NotIn, &["b"])));
        assert!(!matches(requirement("zone", NotIn, &["a"])));
        assert!(
            matches(requirement("missing", NotIn, &["a"])),
            "absent label is not in"
        );
        assert!(matches(requirement("zone", Exists, &[])));
        assert!(!matches(requirement("missing", Exists, &[])));
        assert!(matches(requirement("missing", DoesNotExist, &[])));
        assert!(!matches(requirement("zone", DoesNotExist, &[])));
        assert!(matches(requirement("cores", Gt, &["32"])));
        assert!(!matches(requirement("cores", Gt, &["64"])));
        assert!(matches(requirement("cores", Lt, &["65"])));
        assert!(!matches(requirement("cores", Lt, &["64"])));
        assert!(matches(requirement("cores", Gt, &["-1"])));
        // Unparsable label or bound, a missing label, or not exactly one value: no match.
        assert!(!matches(requirement("name", Gt, &["1"])));
        assert!(!matches(requirement("name", Lt, &["1"])));
        assert!(!matches(requirement("cores", Gt, &["many"])));
        assert!(!matches(requirement("missing", Lt, &["1"])));
        assert!(!matches(requirement("cores", Gt, &["1", "2"])));
        assert!(!matches(requirement("cores", Gt, &[])));
    }

    #[test]
    fn match_fields_support_only_metadata_name_in_and_not_in() {
        let n = node("n1");
        let mut p = pod("p");
        let fields = |r: SelectorRequirement| NodeSelectorTerm {
            match_expressions: vec![],
            match_fields: vec![r],
        };
        use SelectorOperator::*;
        p.required_node_affinity = vec![fields(requirement("metadata.name", In, &["n1"]))];
        assert_eq!(NodeAffinity.check(&p, &n), Ok(()));
        p.required_node_affinity = vec![fields(requirement("metadata.name", In, &["n2"]))];
        assert!(NodeAffinity.check(&p, &n).is_err());
        p.required_node_affinity = vec![fields(requirement("metadata.name", NotIn, &["n2"]))];
        assert_eq!(NodeAffinity.check(&p, &n), Ok(()));
        p.required_node_affinity = vec![fields(requirement("metadata.name", NotIn, &["n1"]))];
        assert!(NodeAffinity.check(&p, &n).is_err());
        p.required_node_affinity = vec![fields(requirement("metadata.name", Exists, &[]))];
        assert!(NodeAffinity.check(&p, &n).is_err());
        p.required_node_affinity = vec![fields(requirement("metadata.uid", In, &["n1"]))];
        assert!(NodeAffinity.check(&p, &n).is_err());
    }

    #[test]
    fn resources_fit_up_to_allocatable_exactly() {
        let mut n = node("n1");
        let p = pod("p");
        n.allocatable.cpu_millicores = 4000;
        n.requested.cpu_millicores = 3500;
        assert_eq!(ResourcesFit.check(&p, &n), Ok(()), "500m fits in 500m");
        n.requested.cpu_millicores = 3501;
        assert_eq!(
            ResourcesFit.check(&p, &n),
            Err(FilterReason::Insufficient("cpu".into()))
        );
        n.requested.cpu_millicores = 0;
        n.requested.memory_bytes = n.allocatable.memory_bytes;
        assert_eq!(
            ResourcesFit.check(&p, &n).unwrap_err().summary(),
            "Insufficient memory"
        );
    }

    #[test]
    fn resources_fit_checks_storage_pods_and_extended_resources() {
        let mut n = node("n1");
        let mut p = pod("p");
        p.requests.ephemeral_storage_bytes = 1 << 30;
        n.allocatable.ephemeral_storage_bytes = 1 << 29;
        assert_eq!(
            ResourcesFit.check(&p, &n).unwrap_err().summary(),
            "Insufficient ephemeral-storage"
        );
        p.requests.ephemeral_storage_bytes = 0;
        assert_eq!(ResourcesFit.check(&p, &n), Ok(()));

        n.requested.pods = n.allocatable.pods;
        assert_eq!(ResourcesFit.check(&p, &n), Err(FilterReason::TooManyPods));
        assert_eq!(FilterReason::TooManyPods.summary(), "Too many pods");
        n.requested.pods = 0;

        p.requests.extended.insert("nvidia.com/gpu".into(), 1);
        assert_eq!(
            ResourcesFit.check(&p, &n).unwrap_err().summary(),
            "Insufficient nvidia.com/gpu",
            "a node without the resource at all"
        );
        n.allocatable.extended.insert("nvidia.com/gpu".into(), 2);
        assert_eq!(ResourcesFit.check(&p, &n), Ok(()));
        n.requested.extended.insert("nvidia.com/gpu".into(), 2);
        assert!(ResourcesFit.check(&p, &n).is_err());
    }

    #[test]
    fn zero_requests_fit_an_overcommitted_node() {
        let mut n = node("n1");
        let mut p = pod("p");
        p.requests.cpu_millicores = 0;
        n.requested.cpu_millicores = n.allocatable.cpu_millicores + 1;
        assert_eq!(ResourcesFit.check(&p, &n), Ok(()));
    }

    #[test]
    fn host_ports_conflict_on_same_protocol_port_and_overlapping_address() {
        let port = |ip: &str, protocol, port| HostPort {
            host_ip: ip.into(),
            protocol,
            port,
        };
        let mut n = node("n1");
        let mut p = pod("p");
        n.used_host_ports = vec![port("10.0.0.1", Protocol::Tcp, 8080)];
        p.host_ports = vec![port("10.0.0.1", Protocol::Tcp, 8080)];
        assert_eq!(HostPorts.check(&p, &n), Err(FilterReason::HostPortConflict));
        for wildcard in ["", "0.0.0.0"] {
            p.host_ports = vec![port(wildcard, Protocol::Tcp, 8080)];
            assert!(HostPorts.check(&p, &n).is_err(), "{wildcard:?} pod side");
        }
        n.used_host_ports = vec![port("0.0.0.0", Protocol::Tcp, 8080)];
        p.host_ports = vec![port("10.0.0.2", Protocol::Tcp, 8080)];
        assert!(HostPorts.check(&p, &n).is_err(), "wildcard node side");

        n.used_host_ports = vec![port("10.0.0.1", Protocol::Tcp, 8080)];
        for free in [
            port("10.0.0.2", Protocol::Tcp, 8080),
            port("10.0.0.1", Protocol::Udp, 8080),
            port("10.0.0.1", Protocol::Tcp, 8081),
        ] {
            p.host_ports = vec![free.clone()];
            assert_eq!(HostPorts.check(&p, &n), Ok(()), "{free:?}");
        }
    }

    #[test]
    fn energy_floor_rejects_levels_below_it_and_passes_unknown() {
        let mut n = node("n1");
        let p = pod("p");
        let floor = EnergyFloor::default();
        assert_eq!(floor.lowest_allowed, EnergyLevel::LowPowered);
        assert_eq!(floor.check(&p, &n), Ok(()), "unknown level");
        n.power.energy = Some(EnergyLevel::Powerless);
        assert_eq!(
            floor.check(&p, &n),
            Err(FilterReason::Energy(EnergyLevel::Powerless))
        );
        assert_eq!(
            floor.check(&p, &n).unwrap_err().summary(),
            "node(s) were powerless"
        );
        n.power.energy = Some(EnergyLevel::LowPowered);
        assert_eq!(floor.check(&p, &n), Ok(()));
        let strict = EnergyFloor {
            lowest_allowed: EnergyLevel::Vulnerable,
        };
        assert_eq!(
            strict.check(&p, &n).unwrap_err().summary(),
            "node(s) were low-powered"
        );
    }

    #[test]
    fn summaries_use_kube_wording() {
        use FilterReason::*;
        for (reason, text) in [
            (Unschedulable, "node(s) were unschedulable"),
            (NotReady, "node(s) were not ready"),
            (
                UntoleratedTaint {
                    key: "dedicated".into(),
                    value: "gpu".into(),
                },
                "node(s) had untolerated taint {dedicated: gpu}",
            ),
            (
                NodeAffinity,
                "node(s) didn't match Pod's node affinity/selector",
            ),
            (Insufficient("cpu".into()), "Insufficient cpu"),
            (
                HostPortConflict,
                "node(s) didn't have free ports for the requested pod ports",
            ),
        ] {
            assert_eq!(reason.summary(), text);
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn the_chain_reports_its_first_failing_unit() {
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let p = pod("p");
        let mut n = node("n1");
        assert_eq!(filters.first_failure(&p, &n), None);
        n.power.energy = Some(EnergyLevel::Powerless);
        n.requested.cpu_millicores = n.allocatable.cpu_millicores;
        let powerless = filters.first_failure(&p, &n).expect("rejected");
        assert_eq!(
            powerless.0, "EnergyFloor",
            "energy before a full node: {powerless:?}"
        );
        n.power.energy = None;
        assert_eq!(
            filters.first_failure(&p, &n),
            Some(("NodeResourcesFit", FilterReason::Insufficient("cpu".into())))
        );
        n.unschedulable = true;
        assert_eq!(
            filters.first_failure(&p, &n),
            Some(("NodeUnschedulable", FilterReason::Unschedulable))
        );
        let names: Vec<_> = filters.0.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "NodeUnschedulable",
                "NodeReady",
                "EnergyFloor",
                "TaintToleration",
                "NodeAffinity",
                "NodeResourcesFit",
                "NodePorts"
            ]
        );
    }

    #[test]
    fn verdicts_judge_only_the_nodes_asked_about_with_a_reason_for_each_failure() {
        let filters = Filters::energy_floor(EnergyLevel::LowPowered);
        let mut nodes = Vec::new();
        for (name, level) in [
            ("well", Some(EnergyLevel::WellPowered)),
            ("powerless-1", Some(EnergyLevel::Powerless)),
            ("grid", None),
            ("powerless-2", Some(EnergyLevel::Powerless)),
            ("low", Some(EnergyLevel::LowPowered)),
        ] {
            let mut n = node(name);
            n.power.energy = level;
            nodes.push(n);
        }
        // Full and cordoned: kube-scheduler's business, not the energy floor's.
        nodes[0].requested.cpu_millicores = nodes[0].allocatable.cpu_millicores;
        nodes[4].unschedulable = true;
        let snapshot = Snapshot::new(&nodes);
        let p = pod("p");
        let v = crate::policy::verdicts(&p, &snapshot, &[0, 1, 2, 4], &filters);
        assert_eq!(v.passed, [0, 2, 4]);
        assert_eq!(
            v.failed,
            [(1, FilterReason::Energy(EnergyLevel::Powerless))],
            "powerless-2 was not asked about"
        );
        assert_eq!(v.failed[0].1.to_string(), "node(s) were powerless");
        let v = crate::policy::verdicts(&p, &snapshot, &[3], &filters);
        assert_eq!((v.passed.len(), v.failed.len()), (0, 1));
        // The standard chain explains each node by its first failure, as schedule counts it.
        let v = crate::policy::verdicts(
            &p,
            &snapshot,
            &[0, 1, 2, 3, 4],
            &Filters::standard(EnergyLevel::LowPowered),
        );
        assert_eq!(v.passed, [2]);
        assert_eq!(
            v.failed,
            [
                (0, FilterReason::Insufficient("cpu".into())),
                (1, FilterReason::Energy(EnergyLevel::Powerless)),
                (3, FilterReason::Energy(EnergyLevel::Powerless)),
                (4, FilterReason::Unschedulable),
            ]
        );
        // Constraints standalone mode refuses are the calling scheduler's to evaluate.
        let mut spread = pod("spread");
        spread.constraints.hard_topology_spread = vec!["zone".into()];
        assert_eq!(
            crate::policy::verdicts(&spread, &snapshot, &[0, 2], &filters).passed,
            [0, 2]
        );
    }
}
