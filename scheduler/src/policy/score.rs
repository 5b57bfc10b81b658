//! Ranking feasible nodes: fresh prices first, then stored energy and marginal watts, with ties
//! spread over nodes by rendezvous hashing.

use wattwise_core::EnergyLevel;

use super::types::{NodeState, PodRequest};

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

/// A feasible node as scoring sees it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Index into the scheduled node slice.
    node: usize,
    /// The node's level, or the configured level for unknown.
    tier: EnergyLevel,
    fresh: bool,
    /// Marginal watts; NaN when the node was outside the best class when offered and so can
    /// never win (see [`Shortlist::offer`]).
    watts: f64,
}

/// Feasible nodes as the scan finds them, priced only while they can still win.
pub(crate) struct Shortlist<'c> {
    config: &'c ScoreConfig,
    candidates: Vec<Candidate>,
    /// Best class offered so far.
    best: Option<(bool, Option<EnergyLevel>)>,
}

impl<'c> Shortlist<'c> {
    pub fn with_capacity(config: &'c ScoreConfig, capacity: usize) -> Self {
        Self {
            config,
            candidates: Vec::with_capacity(capacity),
            best: None,
        }
    }

    /// Feasible nodes so far.
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// The class scoring compares first: freshness, then (tiered only) the energy tier. A fresh
    /// report beats a stale one under any weighting: a stale price may describe a node that has
    /// since filled up or heated.
    fn class(&self, fresh: bool, tier: EnergyLevel) -> (bool, Option<EnergyLevel>) {
        match self.config.kind {
            PolicyKind::Tiered => (fresh, Some(tier)),
            PolicyKind::Weighted { .. } => (fresh, None),
        }
    }

    /// Adds a feasible node. Pricing reads the node's curve, the costliest step of a scan, so a
    /// node below the best class seen so far is not priced: the best class only rises, so such
    /// a node is never compared by watts.
    pub fn offer(&mut self, pod: &PodRequest, index: usize, node: &NodeState) {
        let tier = node.energy.unwrap_or(self.config.unknown_energy);
        let fresh = node.power.fresh;
        let class = self.class(fresh, tier);
        let watts = if self.best.is_none_or(|best| class >= best) {
            self.best = Some(class);
            node.power.price(pod.pricing_cpu_millicores).watts.0
        } else {
            f64::NAN
        };
        self.candidates.push(Candidate {
            node: index,
            tier,
            fresh,
            watts,
        });
    }

    /// The winning node's index into `nodes`; `None` when nothing was offered.
    pub fn choose(&self, pod: &PodRequest, nodes: &[NodeState]) -> Option<usize> {
        let (fresh, tier) = self.best?;
        let class = || {
            self.candidates
                .iter()
                .filter(move |c| self.class(c.fresh, c.tier) == (fresh, tier))
        };
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
    nodes: &[NodeState],
    tied: impl Iterator<Item = &'a Candidate>,
) -> Option<usize> {
    // 0xff never occurs in UTF-8, so no two (uid, name) pairs hash the same byte string.
    let pod_state = fnv1a(fnv1a(FNV_OFFSET_BASIS, pod.uid.as_bytes()), &[0xff]);
    tied.map(|c| {
        let weight = fmix64(fnv1a(pod_state, nodes[c.node].name.as_bytes()));
        (weight, c.node)
    })
    // Equal weights (vanishingly rare): the lower index, to stay deterministic.
    .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
    .map(|(_, node)| node)
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

    fn winner(nodes: &[NodeState], config: &ScoreConfig) -> String {
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let decision = schedule(&pod("p"), nodes, &filters, config).unwrap();
        nodes[decision.node].name.clone()
    }

    fn with(name: &str, energy: Option<EnergyLevel>, idle: f64, peak: f64) -> NodeState {
        let mut n = node(name);
        n.energy = energy;
        n.power = power(idle, peak);
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
                    &nodes,
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
                let first = schedule(&p, &nodes, &filters, &config).unwrap().node;
                let again = schedule(&p, &nodes, &filters, &config).unwrap().node;
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
