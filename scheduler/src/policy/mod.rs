//! Scheduling policy: pure filter and score units over plain structs (no I/O).
//!
//! [`schedule`] refuses pods with constraints it does not evaluate ([`constraints`]), runs a
//! [`Snapshot`] of the nodes through [`Filters`], prices the feasible ones and picks one by
//! [`ScoreConfig`]; when none is feasible it explains why in kube-scheduler's words.
pub mod constraints;
pub mod filter;
pub mod offload;
pub mod score;
pub mod snapshot;
pub mod types;

#[cfg(test)]
pub(crate) mod fixtures;

use std::collections::BTreeMap;
use std::fmt;

use wattwise_core::{EnergyLevel, Marginal};

pub use constraints::Unsupported;
pub use filter::{Filter, FilterReason, Filters, Verdicts};
pub use score::{PolicyKind, ScoreConfig, MAX_PRIORITY};
pub use snapshot::Snapshot;
pub use types::*;

use score::Shortlist;
use snapshot::NodeSet;

/// Where a pod goes and what it costs there.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Index of the node in the snapshot (and in the node slice it mirrors).
    pub node: usize,
    pub marginal: Marginal,
    /// The node's own level (`None`: unknown), not the tier assumed for scoring.
    pub energy: Option<EnergyLevel>,
    pub fresh: bool,
    /// How many nodes passed every filter.
    pub feasible: usize,
}

/// Why a pod was not placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unschedulable {
    /// The pod needs what standalone mode does not evaluate; no node was considered.
    Unsupported(Vec<Unsupported>),
    NoFeasibleNode(NoFeasibleNode),
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(constraints) => {
                for (i, constraint) in constraints.iter().enumerate() {
                    let separator = if i == 0 { "" } else { "; " };
                    write!(f, "{separator}{constraint}")?;
                }
                Ok(())
            }
            Self::NoFeasibleNode(reasons) => reasons.fmt(f),
        }
    }
}

/// No node passed the filters. Each node is counted once, under the summary of its first failing
/// filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFeasibleNode {
    pub nodes_total: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for NoFeasibleNode {
    /// kube-scheduler's message: `0/8 nodes are available: 3 Insufficient cpu, 2 node(s) were
    /// powerless.`, most frequent reason first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes are available: ", self.nodes_total)?;
        if self.reasons.is_empty() {
            return f.write_str("no nodes.");
        }
        let mut reasons: Vec<_> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (i, (reason, count)) in reasons.into_iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{count} {reason}")?;
        }
        f.write_str(".")
    }
}

impl std::error::Error for Unschedulable {}

/// Picks a node for `pod`, or says why none fits.
pub fn schedule(
    pod: &PodRequest,
    nodes: &Snapshot,
    filters: &Filters,
    score: &ScoreConfig,
) -> Result<Decision, Unschedulable> {
    let unsupported = constraints::unsupported(&pod.constraints);
    if !unsupported.is_empty() {
        return Err(Unschedulable::Unsupported(unsupported));
    }
    let scan = filters.scan(pod, nodes, false);
    let shortlist = Shortlist::new(score, pod, nodes, scan.feasible());
    let Some(index) = shortlist.choose(pod, nodes) else {
        return Err(explain(pod, nodes, filters));
    };
    Ok(decision(pod, nodes, index, scan.feasible().len()))
}

/// Places `pod` on node `index` chosen beforehand (the offloader's reservation for a
/// replacement) if the node passes every filter for it, as [`schedule`] would count it there;
/// `None` when it does not.
pub fn place_on(
    pod: &PodRequest,
    nodes: &Snapshot,
    filters: &Filters,
    index: usize,
) -> Option<Decision> {
    if !constraints::unsupported(&pod.constraints).is_empty() {
        return None;
    }
    let scan = filters.scan(pod, nodes, false);
    let feasible = scan.feasible();
    (index < nodes.len() && feasible.contains(index))
        .then(|| decision(pod, nodes, index, feasible.len()))
}

fn decision(pod: &PodRequest, nodes: &Snapshot, index: usize, feasible: usize) -> Decision {
    let node = nodes.power(index);
    Decision {
        node: index,
        marginal: node.price(pod.pricing_cpu_millicores),
        energy: node.energy,
        fresh: node.fresh,
        feasible,
    }
}

/// The nodes `pod` passes every filter on, ascending: the same feasibility as [`schedule`], for
/// placement rules that rank nodes another way (the simulator's baselines).
pub fn feasible(pod: &PodRequest, nodes: &Snapshot, filters: &Filters) -> Vec<usize> {
    filters.scan(pod, nodes, false).feasible().iter().collect()
}

/// Another scheduler's filter step (kube-scheduler calling wattwise as an extender): `filters`
/// over the nodes at `rows` of `nodes` only. Unlike [`schedule`], constraints standalone mode
/// does not evaluate are no reason to refuse the pod: the calling scheduler evaluates them.
pub fn verdicts(pod: &PodRequest, nodes: &Snapshot, rows: &[usize], filters: &Filters) -> Verdicts {
    filters.verdicts(pod, nodes, &node_set(nodes, rows))
}

/// Another scheduler's score step: the nodes at `rows` of `nodes` scored
/// 0..=[`MAX_PRIORITY`] for `pod` by [`ScoreConfig`]'s ranking (see [`score::priorities`]),
/// as (row, score) ascending by row.
pub fn priorities(
    pod: &PodRequest,
    nodes: &Snapshot,
    rows: &[usize],
    score: &ScoreConfig,
) -> Vec<(usize, u8)> {
    score::priorities(score, pod, nodes, &node_set(nodes, rows))
}

/// The rows as a set; rows `nodes` does not have are left out.
fn node_set(nodes: &Snapshot, rows: &[usize]) -> NodeSet {
    let mut set = NodeSet::default();
    for &row in rows.iter().filter(|&&row| row < nodes.len()) {
        set.set(row, true);
    }
    set
}

/// Runs the chain again, counting, so the common case (some node fits) counts nothing and
/// builds no strings; strings are made once per distinct reason.
fn explain(pod: &PodRequest, nodes: &Snapshot, filters: &Filters) -> Unschedulable {
    let mut reasons = BTreeMap::<String, usize>::new();
    for (reason, count) in filters.scan(pod, nodes, true).into_rejected() {
        *reasons.entry(reason.summary().into_owned()).or_default() += count;
    }
    Unschedulable::NoFeasibleNode(NoFeasibleNode {
        nodes_total: nodes.len(),
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::fixtures::{node, pod, power};
    use super::*;

    #[test]
    fn decision_describes_the_chosen_node() {
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let mut cheap = node("cheap");
        cheap.power = power(100.0, 200.0);
        cheap.power.energy = Some(EnergyLevel::WellPowered);
        let mut full = node("full");
        full.requested.cpu_millicores = full.allocatable.cpu_millicores;
        let nodes = [node("default"), cheap, full];
        let p = pod("p");
        let d = schedule(
            &p,
            &Snapshot::new(&nodes),
            &filters,
            &ScoreConfig::default(),
        )
        .unwrap();
        assert_eq!(d.node, 1);
        assert_eq!(d.marginal, nodes[1].power.price(500));
        assert!(
            (d.marginal.watts.0 - 3.125).abs() < 1e-9,
            "{:?}",
            d.marginal
        );
        assert_eq!(d.energy, Some(EnergyLevel::WellPowered));
        assert!(d.fresh);
        assert_eq!(d.feasible, 2);
    }

    #[test]
    fn unschedulable_counts_each_node_once_in_kube_format() {
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let mut n = node(&format!("full-{i}"));
            n.requested.cpu_millicores = n.allocatable.cpu_millicores;
            nodes.push(n);
        }
        for i in 0..2 {
            let mut n = node(&format!("powerless-{i}"));
            n.power.energy = Some(EnergyLevel::Powerless);
            nodes.push(n);
        }
        for i in 0..2 {
            let mut n = node(&format!("cordoned-{i}"));
            n.unschedulable = true;
            // Also full and powerless: counted only under the first failing filter.
            n.requested.cpu_millicores = n.allocatable.cpu_millicores;
            n.power.energy = Some(EnergyLevel::Powerless);
            nodes.push(n);
        }
        let mut tainted = node("gpu");
        tainted.taints = vec![Taint {
            key: "dedicated".into(),
            value: "gpu".into(),
            effect: TaintEffect::NoSchedule,
        }];
        nodes.push(tainted);

        let err = schedule(
            &pod("p"),
            &Snapshot::new(&nodes),
            &filters,
            &ScoreConfig::default(),
        )
        .unwrap_err();
        let Unschedulable::NoFeasibleNode(err) = err else {
            panic!("{err:?}");
        };
        assert_eq!(err.nodes_total, 8);
        assert_eq!(err.reasons.values().sum::<usize>(), 8);
        assert_eq!(
            err.to_string(),
            "0/8 nodes are available: 3 Insufficient cpu, 2 node(s) were powerless, \
             2 node(s) were unschedulable, 1 node(s) had untolerated taint {dedicated: gpu}."
        );
    }

    #[test]
    fn no_nodes_at_all() {
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let err = schedule(
            &pod("p"),
            &Snapshot::default(),
            &filters,
            &ScoreConfig::default(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "0/0 nodes are available: no nodes.");
    }

    #[test]
    fn unsupported_constraints_refuse_the_pod_before_any_node_is_tried() {
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let nodes = Snapshot::new(&[node("a"), node("b")]);
        let mut p = pod("p");
        p.constraints.required_pod_anti_affinity = true;
        p.constraints.hard_topology_spread = vec!["kubernetes.io/hostname".into()];
        let err = schedule(&p, &nodes, &filters, &ScoreConfig::default()).unwrap_err();
        assert_eq!(
            err,
            Unschedulable::Unsupported(vec![
                Unsupported::PodAntiAffinity,
                Unsupported::TopologySpread
            ])
        );
        assert_eq!(
            err.to_string(),
            "pod has required pod anti-affinity, which wattwise's standalone mode does not \
             evaluate (use extender mode or the default scheduler); pod has topology spread \
             constraints, which wattwise's standalone mode does not evaluate (use extender mode \
             or the default scheduler)"
        );
        // A gated pod is tried again once its gates are gone (the update re-queues it).
        let mut gated = pod("g");
        gated.constraints.scheduling_gates = vec!["example.com/wait".into()];
        let err = schedule(&gated, &nodes, &filters, &ScoreConfig::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod has scheduling gates (example.com/wait); it waits until they are removed"
        );
        gated.constraints.scheduling_gates.clear();
        assert!(schedule(&gated, &nodes, &filters, &ScoreConfig::default()).is_ok());
    }

    #[test]
    fn a_node_chosen_beforehand_takes_the_pod_only_if_it_passes_every_filter() {
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let mut full = node("full");
        full.requested.cpu_millicores = full.allocatable.cpu_millicores;
        let mut dear = node("dear");
        dear.power = power(100.0, 900.0);
        let nodes = Snapshot::new(&[node("cheap"), full, dear]);
        let p = pod("p");
        // Not the node schedule() would pick, and still taken: it passes every filter.
        let d = place_on(&p, &nodes, &filters, 2).unwrap();
        assert_eq!((d.node, d.feasible), (2, 2));
        assert_eq!(d.marginal, nodes.power(2).price(p.pricing_cpu_millicores));
        assert_ne!(
            schedule(&p, &nodes, &filters, &ScoreConfig::default())
                .unwrap()
                .node,
            2
        );
        assert_eq!(place_on(&p, &nodes, &filters, 1), None, "full");
        assert_eq!(place_on(&p, &nodes, &filters, 3), None, "no such row");
        let mut gated = pod("g");
        gated.constraints.scheduling_gates = vec!["example.com/wait".into()];
        assert_eq!(place_on(&gated, &nodes, &filters, 0), None);
    }
}
