//! Ranking feasible nodes: fresh prices first, then stored energy and marginal watts, with ties
//! spread over nodes by rendezvous hashing.

use wattwise_core::EnergyLevel;

use super::snapshot::{NodeSet, Snapshot};
use super::types::{NodePower, PodRequest};

/// How energy tier and marginal watts combine.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum PolicyKind {
    /// Best energy tier first, then fewest marginal watts within it.
    #[default]
    Tiered,
    /// Highest `energy × energy_score + power × power_score`, both scores in 0..=1.
    Weighted { energy: f64, power: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreConfig {
    pub kind: PolicyKind,
    /// Tier assumed for nodes of unknown energy level (no battery or renewable source reported).
    pub unknown_energy: EnergyLevel,
    /// Marginal watts this close to the cheapest count as equal: below model accuracy, and
    /// packing every pod onto a node a milliwatt cheaper would defeat spreading.
    pub tie_watts: f64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            kind: PolicyKind::Tiered,
            // Unknown usually means grid-powered: as good as a full battery.
            unknown_energy: EnergyLevel::WellPowered,
            tie_watts: 0.05,
        }
    }
}

/// Weighted scores this close count as equal (float noise, not preference).
const SCORE_TIE: f64 = 1e-9;

/// A feasible node of the best class, as scoring sees it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Row index into the snapshot.
    node: u32,
    /// The node's level, or the configured level for unknown.
    tier: EnergyLevel,
    /// Marginal watts.
    watts: f64,
}

impl ScoreConfig {
    /// The node's level, or the configured level for unknown.
    fn tier(&self, node: &NodePower) -> EnergyLevel {
        node.energy.unwrap_or(self.unknown_energy)
    }

    /// Nodes scored as `tier`: at that level, or of unknown level when that is the tier assumed
    /// for unknown.
    fn at_tier(&self, nodes: &Snapshot, tier: EnergyLevel) -> NodeSet {
        let at_level = nodes.at_energy(Some(tier));
        if self.unknown_energy == tier {
            at_level.or(nodes.at_energy(None))
        } else {
            at_level.clone()
        }
    }

    /// The feasible nodes of the best class that has any. Scoring compares the class first:
    /// freshness, then (tiered only) the energy tier. A fresh report beats a stale one under any
    /// weighting: a stale price may describe a node that has since filled up or heated.
    fn best_class(&self, nodes: &Snapshot, feasible: &NodeSet) -> NodeSet {
        let fresh = feasible.and(nodes.fresh());
        let stale = feasible.and_not(nodes.fresh());
        for by_freshness in [fresh, stale] {
            match self.kind {
                PolicyKind::Tiered => {
                    for tier in EnergyLevel::ALL.into_iter().rev() {
                        let class = by_freshness.and(&self.at_tier(nodes, tier));
                        if !class.is_empty() {
                            return class;
                        }
                    }
                }
                PolicyKind::Weighted { .. } => {
                    if !by_freshness.is_empty() {
                        return by_freshness;
                    }
                }
            }
        }
        NodeSet::default()
    }
}

/// The feasible nodes of the best class, priced: the only nodes scoring compares by watts.
pub(crate) struct Shortlist<'c> {
    config: &'c ScoreConfig,
    /// In node order.
    candidates: Vec<Candidate>,
}

impl<'c> Shortlist<'c> {
    /// Pricing reads a node's curve, the costliest step of a decision, so the class is settled
    /// first and only its nodes are priced.
    pub fn new(
        config: &'c ScoreConfig,
        pod: &PodRequest,
        nodes: &Snapshot,
        feasible: &NodeSet,
    ) -> Self {
        let candidates = config
            .best_class(nodes, feasible)
            .iter()
            .map(|i| {
                let node = nodes.power(i);
                Candidate {
                    node: i as u32,
                    tier: config.tier(node),
                    watts: node.price(pod.pricing_cpu_millicores).watts.0,
                }
            })
            .collect();
        Self { config, candidates }
    }

    /// The winning node's row in `nodes`; `None` when no node is feasible.
    pub fn choose(&self, pod: &PodRequest, nodes: &Snapshot) -> Option<usize> {
        let class = || self.candidates.iter();
        match self.config.kind {
            PolicyKind::Tiered => {
                let cheapest = class().map(|c| c.watts).fold(f64::INFINITY, f64::min);
                // max(0) also turns a NaN tolerance into "exact ties only".
                let limit = cheapest + self.config.tie_watts.max(0.0);
                rendezvous(pod, nodes, class().filter(|c| c.watts <= limit))
            }
            PolicyKind::Weighted { energy, power } => {
                let (min, max) = class().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
                    (lo.min(c.watts), hi.max(c.watts))
                });
                let score = |c: &Candidate| {
                    let power_score = if max > min {
                        1.0 - (c.watts - min) / (max - min)
                    } else {
                        1.0
                    };
                    let score = energy * energy_score(c.tier) + power * power_score;
                    // Non-finite weights (∞ × 0) must not make every node lose.
                    if score.is_nan() {
                        f64::NEG_INFINITY
                    } else {
                        score
                    }
                };
                let best = class().map(score).fold(f64::NEG_INFINITY, f64::max);
                rendezvous(pod, nodes, class().filter(|c| score(c) >= best - SCORE_TIE))
            }
        }
    }
}

/// Powerless 0 … WellPowered 1 in equal steps.
fn energy_score(level: EnergyLevel) -> f64 {
    match level {
        EnergyLevel::Powerless => 0.0,
        EnergyLevel::LowPowered => 1.0 / 3.0,
        EnergyLevel::Vulnerable => 2.0 / 3.0,
        EnergyLevel::WellPowered => 1.0,
    }
}

/// Among tied candidates, the one with the highest hash of (pod uid, node name): the same pod
/// always gets the same node, while different pods spread over the tie instead of piling onto
/// the first node in the list.
fn rendezvous<'a>(
    pod: &PodRequest,
    nodes: &Snapshot,
    tied: impl Iterator<Item = &'a Candidate>,
) -> Option<usize> {
    // 0xff never occurs in UTF-8, so no two (uid, name) pairs hash the same byte string.
    let pod_state = fnv1a(fnv1a(FNV_OFFSET_BASIS, pod.uid.as_bytes()), &[0xff]);
    tied.map(|c| {
        let weight = fmix64(fnv1a(pod_state, nodes.name(c.node as usize).as_bytes()));
        (weight, c.node)
    })
    // Equal weights (vanishingly rare): the lower index, to stay deterministic.
    .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
    .map(|(_, node)| node as usize)
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a, continuing from `state`: stable across Rust versions and platforms, unlike
/// `DefaultHasher`, so a pod's choice does not change with a scheduler upgrade.
fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// MurmurHash3's finaliser: FNV-1a moves its last bytes into the high bits only weakly, and node
/// names often differ only in their last bytes, while rendezvous compares whole values.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::policy::filter::Filters;
    use crate::policy::fixtures::{node, pod, power};
    use crate::policy::schedule;
    use crate::policy::types::NodeState;

    fn winner(nodes: &[NodeState], config: &ScoreConfig) -> String {
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let decision = schedule(&pod("p"), &Snapshot::new(nodes), &filters, config).unwrap();
        nodes[decision.node].name.clone()
    }

    fn with(name: &str, energy: Option<EnergyLevel>, idle: f64, peak: f64) -> NodeState {
        let mut n = node(name);
        n.power = power(idle, peak);
        n.power.energy = energy;
        n
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            fnv1a(fnv1a(FNV_OFFSET_BASIS, b"foo"), b"bar"),
            fnv1a(FNV_OFFSET_BASIS, b"foobar")
        );
    }

    #[test]
    fn lowest_marginal_watts_within_the_best_tier_wins() {
        use EnergyLevel::*;
        let nodes = [
            // Cheapest of all, but a worse tier.
            with("vulnerable-cheap", Some(Vulnerable), 50.0, 100.0),
            with("well-expensive", Some(WellPowered), 100.0, 400.0),
            with("well-cheap", Some(WellPowered), 100.0, 200.0),
            with("grid-mid", None, 100.0, 300.0),
        ];
        assert_eq!(winner(&nodes, &ScoreConfig::default()), "well-cheap");
    }

    #[test]
    fn unknown_energy_takes_the_configured_tier() {
        use EnergyLevel::*;
        let nodes = [
            with("grid-cheap", None, 100.0, 150.0),
            with("vulnerable-expensive", Some(Vulnerable), 100.0, 400.0),
        ];
        assert_eq!(winner(&nodes, &ScoreConfig::default()), "grid-cheap");
        let pessimistic = ScoreConfig {
            unknown_energy: LowPowered,
            ..ScoreConfig::default()
        };
        assert_eq!(winner(&nodes, &pessimistic), "vulnerable-expensive");
    }

    #[test]
    fn powerless_is_never_chosen_with_the_default_floor() {
        use EnergyLevel::*;
        let nodes = [
            with("powerless-cheapest", Some(Powerless), 10.0, 20.0),
            with("low", Some(LowPowered), 100.0, 400.0),
        ];
        assert_eq!(winner(&nodes, &ScoreConfig::default()), "low");
        let weighted = ScoreConfig {
            kind: PolicyKind::Weighted {
                energy: 0.0,
                power: 1.0,
            },
            ..ScoreConfig::default()
        };
        assert_eq!(winner(&nodes, &weighted), "low");
    }

    #[test]
    fn stale_nodes_come_after_fresh_ones() {
        use EnergyLevel::*;
        let mut stale = with("stale-best", Some(WellPowered), 10.0, 20.0);
        stale.power.fresh = false;
        let fresh = with("fresh-worse", Some(LowPowered), 100.0, 400.0);
        let nodes = [stale.clone(), fresh];
        assert_eq!(winner(&nodes, &ScoreConfig::default()), "fresh-worse");
        let weighted = ScoreConfig {
            kind: PolicyKind::Weighted {
                energy: 1.0,
                power: 1.0,
            },
            ..ScoreConfig::default()
        };
        assert_eq!(winner(&nodes, &weighted), "fresh-worse");
        // With no fresh node, stale ones still schedule.
        let mut stale_expensive = with("stale-expensive", Some(WellPowered), 100.0, 400.0);
        stale_expensive.power.fresh = false;
        assert_eq!(
            winner(&[stale, stale_expensive], &ScoreConfig::default()),
            "stale-best"
        );
    }

    #[test]
    fn weights_decide_between_energy_and_power() {
        use EnergyLevel::*;
        let nodes = [
            with("well-expensive", Some(WellPowered), 100.0, 400.0),
            with("vulnerable-cheap", Some(Vulnerable), 100.0, 150.0),
            with("low-mid", Some(LowPowered), 100.0, 250.0),
        ];
        let weighted = |energy, power| ScoreConfig {
            kind: PolicyKind::Weighted { energy, power },
            ..ScoreConfig::default()
        };
        assert_eq!(winner(&nodes, &weighted(1.0, 0.0)), "well-expensive");
        assert_eq!(winner(&nodes, &weighted(0.0, 1.0)), "vulnerable-cheap");
        // Energy 1 vs 2/3 + power 0 vs 1: power must weigh over a third of energy to win.
        assert_eq!(winner(&nodes, &weighted(1.0, 0.3)), "well-expensive");
        assert_eq!(winner(&nodes, &weighted(1.0, 0.4)), "vulnerable-cheap");
    }

    #[test]
    fn marginal_watts_within_the_tolerance_tie() {
        // 500m of 16 cores on a 100..300 W line costs 6.25 W; +0.02 W and +1 W variants.
        let nodes = [
            with("a", None, 100.0, 300.0),
            with("b", None, 100.0, 300.64),
            with("c", None, 100.0, 332.0),
        ];
        let winners: BTreeSet<_> = (0..100)
            .map(|i| {
                let filters = Filters::standard(EnergyLevel::LowPowered);
                let d = schedule(
                    &pod(&format!("pod-{i}")),
                    &Snapshot::new(&nodes),
                    &filters,
                    &ScoreConfig::default(),
                )
                .unwrap();
                nodes[d.node].name.as_str()
            })
            .collect();
        assert_eq!(winners, BTreeSet::from(["a", "b"]));
    }

    #[test]
    fn ties_break_per_pod_and_spread_pods() {
        let nodes: Vec<_> = (0..5).map(|i| node(&format!("node-{i}"))).collect();
        let filters = Filters::standard(EnergyLevel::LowPowered);
        for config in [
            ScoreConfig::default(),
            ScoreConfig {
                kind: PolicyKind::Weighted {
                    energy: 1.0,
                    power: 1.0,
                },
                ..ScoreConfig::default()
            },
        ] {
            let mut per_node = [0; 5];
            for i in 0..100 {
                let p = pod(&format!("0b9c6a1e-{i:04}"));
                let snapshot = Snapshot::new(&nodes);
                let first = schedule(&p, &snapshot, &filters, &config).unwrap().node;
                let again = schedule(&p, &snapshot, &filters, &config).unwrap().node;
                assert_eq!(first, again, "deterministic per pod");
                per_node[first] += 1;
            }
            assert!(
                per_node.iter().all(|&n| n >= 10),
                "100 pods over 5 tied nodes: {per_node:?}"
            );
        }
    }
}
