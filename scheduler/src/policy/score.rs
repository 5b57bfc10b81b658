//! Ranking feasible nodes: by class (fresh and within the curve, then unreported, then fresh
//! but past full load), then stored energy and marginal watts, with ties spread over nodes by
//! rendezvous hashing.

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
    /// Price the pod slots a pod strands on a node whose pod limit will fill before its CPU
    /// (see [`slot_charge`]).
    pub slot_pricing: bool,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            kind: PolicyKind::Tiered,
            // Unknown usually means grid-powered: as good as a full battery.
            unknown_energy: EnergyLevel::WellPowered,
            tie_watts: 0.05,
            slot_pricing: true,
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
    /// Marginal watts, plus the slot charge when slots are priced: what scoring compares.
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

    /// The feasible nodes of the best class that has any, priced. Classes rank before any price
    /// is compared:
    /// 1. a fresh report, and the pod keeps the node within its curve;
    /// 2. no fresh report (priced on the default curve): a stale price may describe a node
    ///    that has since filled up or heated, so any fresh node that fits beats it;
    /// 3. a fresh report, and the pod would take the node past full load: the node is
    ///    saturated (by pods, BestEffort load or work outside Kubernetes) and would only run
    ///    the pod by slowing everything on it, so it is the last resort, never the cheapest.
    ///
    /// Within a class, tiered policies also take the best energy tier first. Pricing reads a
    /// node's curve, the costliest step of a decision, so only the nodes up to the chosen class
    /// are priced (saturated ones of a better tier are the rare extra).
    fn best_class(&self, pod: &PodRequest, nodes: &Snapshot, feasible: &NodeSet) -> Vec<Candidate> {
        let fresh = feasible.and(nodes.fresh());
        let stale = feasible.and_not(nodes.fresh());
        let cpu = pod.pricing_cpu_millicores;
        // Each class: its nodes, and whether members must (or must not) exceed capacity.
        for (set, past_full_load) in [(&fresh, Some(false)), (&stale, None), (&fresh, Some(true))] {
            // Pricing says whether the pod exceeds capacity anyway; checking that first would
            // only add a second pass over the same rows to the common case.
            let priced = |members: &NodeSet| {
                let mut class = Vec::new();
                for i in members.iter() {
                    let node = nodes.power(i);
                    let price = node.price(cpu);
                    if past_full_load.is_none_or(|past| price.exceeds_capacity == past) {
                        class.push(Candidate {
                            node: i as u32,
                            tier: self.tier(node),
                            watts: price.watts.0,
                        });
                    }
                }
                class
            };
            match self.kind {
                PolicyKind::Tiered => {
                    for tier in EnergyLevel::ALL.into_iter().rev() {
                        let class = priced(&set.and(&self.at_tier(nodes, tier)));
                        if !class.is_empty() {
                            return class;
                        }
                    }
                }
                PolicyKind::Weighted { .. } => {
                    let class = priced(set);
                    if !class.is_empty() {
                        return class;
                    }
                }
            }
        }
        Vec::new()
    }
}

/// The feasible nodes of the best class, priced: the only nodes scoring compares by watts.
pub(crate) struct Shortlist<'c> {
    config: &'c ScoreConfig,
    /// In node order.
    candidates: Vec<Candidate>,
}

impl<'c> Shortlist<'c> {
    pub fn new(
        config: &'c ScoreConfig,
        pod: &PodRequest,
        nodes: &Snapshot,
        feasible: &NodeSet,
    ) -> Self {
        let mut candidates = config.best_class(pod, nodes, feasible);
        if config.slot_pricing {
            price_slots(&mut candidates, pod, nodes);
        }
        Self { config, candidates }
    }

    /// The winning node's row in `nodes`; `None` when no node is feasible.
    pub fn choose(&self, pod: &PodRequest, nodes: &Snapshot) -> Option<usize> {
        let ranking = Ranking::of(self.config, &self.candidates);
        rendezvous(
            pod,
            nodes,
            self.candidates.iter().filter(|c| ranking.is_best(c)),
        )
    }
}

/// How the candidates of one shortlist compare: the best (tied within the tolerance) are those
/// [`Shortlist::choose`] picks among; [`Ranking::standing`] places the others below them.
enum Ranking {
    Tiered {
        /// The cheapest watts plus `tie_watts`: every candidate at or below ties for best.
        limit: f64,
        dearest: f64,
    },
    Weighted {
        energy: f64,
        power: f64,
        /// Watts range, for the power score.
        min: f64,
        max: f64,
        /// Best and worst combined score.
        best: f64,
        worst: f64,
    },
}

impl Ranking {
    fn of(config: &ScoreConfig, candidates: &[Candidate]) -> Self {
        let (min, max) = candidates
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
                (lo.min(c.watts), hi.max(c.watts))
            });
        match config.kind {
            PolicyKind::Tiered => Ranking::Tiered {
                // max(0) also turns a NaN tolerance into "exact ties only".
                limit: min + config.tie_watts.max(0.0),
                dearest: max,
            },
            PolicyKind::Weighted { energy, power } => {
                let score = |c: &Candidate| weighted(energy, power, min, max, c);
                let (best, worst) = candidates
                    .iter()
                    .map(score)
                    .fold((f64::NEG_INFINITY, f64::INFINITY), |(b, w), s| {
                        (b.max(s), w.min(s))
                    });
                Ranking::Weighted {
                    energy,
                    power,
                    min,
                    max,
                    best,
                    worst,
                }
            }
        }
    }

    /// What the policy compares: the weighted policy's combined score, or minus the watts.
    fn score(&self, c: &Candidate) -> f64 {
        match *self {
            Ranking::Tiered { .. } => -c.watts,
            Ranking::Weighted {
                energy,
                power,
                min,
                max,
                ..
            } => weighted(energy, power, min, max, c),
        }
    }

    /// Whether `c` ties for best.
    fn is_best(&self, c: &Candidate) -> bool {
        match *self {
            Ranking::Tiered { limit, .. } => c.watts <= limit,
            Ranking::Weighted { best, .. } => self.score(c) >= best - SCORE_TIE,
        }
    }

    /// 1 for the best, else in 0..1: how far `c` is from the worst candidate towards the best,
    /// in watts (tiered) or combined score (weighted).
    fn standing(&self, c: &Candidate) -> f64 {
        if self.is_best(c) {
            return 1.0;
        }
        let (best, worst) = match *self {
            Ranking::Tiered { limit, dearest } => (-limit, -dearest),
            Ranking::Weighted { best, worst, .. } => (best, worst),
        };
        let standing = (self.score(c) - worst) / (best - worst);
        // NaN (infinite watts) counts as the worst.
        if standing.is_nan() {
            0.0
        } else {
            standing.clamp(0.0, 1.0)
        }
    }
}

/// `energy × energy score + power × power score`, the power score from the candidates' watts
/// range `min..=max`.
fn weighted(energy: f64, power: f64, min: f64, max: f64, c: &Candidate) -> f64 {
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
}

/// kube-scheduler's `MaxExtenderPriority`: an extender's scores run from 0 to this.
pub const MAX_PRIORITY: u8 = 10;

/// The nodes in `candidates` scored 0..=[`MAX_PRIORITY`] for `pod` (row, score), for a scheduler
/// that adds its own scores to ours (kube-scheduler calling wattwise as an extender).
///
/// The candidates are ranked exactly as [`crate::policy::schedule`] ranks nodes, in groups: the
/// shortlist it would choose from (the best class and, under `tiered`, the best energy tier),
/// then the shortlist of the nodes left, and so on. The 11 scores are split into one band per
/// group, best group highest (with more than 11 groups the worst share 0), so a node never
/// scores below a node of a worse group. Within its band a node's score follows its standing:
/// the nodes [`crate::policy::schedule`] would pick among (the cheapest within `tie_watts`, or
/// the best weighted score) get the band's top, the others less by marginal watts (slot charge
/// included) or weighted score, the worst the band's bottom. So the nodes wattwise would choose
/// score 10 and, unless there are 11 groups or more, no other node does.
pub(crate) fn priorities(
    config: &ScoreConfig,
    pod: &PodRequest,
    nodes: &Snapshot,
    candidates: &NodeSet,
) -> Vec<(usize, u8)> {
    let mut groups: Vec<Vec<(usize, f64)>> = Vec::new();
    let mut rest = candidates.clone();
    loop {
        let shortlist = Shortlist::new(config, pod, nodes, &rest);
        if shortlist.candidates.is_empty() {
            break;
        }
        let ranking = Ranking::of(config, &shortlist.candidates);
        for c in &shortlist.candidates {
            rest.set(c.node as usize, false);
        }
        groups.push(
            shortlist
                .candidates
                .iter()
                .map(|c| (c.node as usize, ranking.standing(c)))
                .collect(),
        );
    }
    // The 11 scores split into one band per group, the larger bands at the top.
    let values = usize::from(MAX_PRIORITY) + 1;
    let k = groups.len();
    let mut scores = Vec::with_capacity(candidates.len());
    let mut top = usize::from(MAX_PRIORITY);
    for (j, group) in groups.iter().enumerate() {
        let size = (values / k + usize::from(j < values % k)).max(1);
        let bottom = (top + 1).saturating_sub(size);
        for &(node, standing) in group {
            let score = if standing == 1.0 || size == 1 {
                top
            } else {
                // The epsilon keeps float noise from dropping a node a whole point; only the
                // best reach the top of their band.
                let within = (standing * (size - 1) as f64 + 1e-9).floor() as usize;
                (bottom + within).min(top - 1)
            };
            scores.push((node, score as u8));
        }
        // More groups than scores: the rest share the lowest.
        top = bottom.saturating_sub(1);
    }
    scores.sort_unstable();
    scores
}

/// CPU (millicores) a node's pod limit is expected to leave unused: what is free beyond what
/// its free pod slots take at `mean_pod` millicores each.
fn expected_stranded(free_cpu: f64, free_slots: f64, mean_pod: f64) -> f64 {
    (free_cpu - free_slots * mean_pod).max(0.0)
}

/// Adds [`slot_charge`] to each candidate's marginal watts.
///
/// A node whose kubelet pod limit (110 by default) runs out before its CPU strands the CPU left
/// over: a 128-thread node holds 128 cores of 1-core pods but only 27.5 of 250 m ones. When such
/// a node is one of the cluster's cheapest per core, every small pod it takes pushes work onto
/// a dearer node later; marginal watts alone cannot see that, and in a cluster whose efficient
/// nodes are slot-bound they fill with whatever arrives first.
fn price_slots(candidates: &mut [Candidate], pod: &PodRequest, nodes: &Snapshot) {
    // The common case, no candidate near its pod limit, costs one read per candidate.
    let near_limit = |c: &Candidate| {
        let node = nodes.node(c.node as usize);
        let free = node
            .allocatable()
            .pods
            .saturating_sub(node.requested().pods);
        (free as f64) <= SLOT_HORIZON
    };
    if !candidates.iter().any(near_limit) {
        return;
    }
    let Some(mean_pod) = nodes.mean_pod_cpu_millicores() else {
        return;
    };
    let cpu = pod.pricing_cpu_millicores.max(1) as f64;
    let slots: Vec<Slots> = candidates
        .iter()
        .map(|c| Slots::of(nodes, c.node as usize, cpu, mean_pod))
        .collect();
    // Where CPU goes when slot-bound nodes run out of slots: the cheapest node per core that
    // this pod leaves with no CPU stranded.
    let reference = candidates
        .iter()
        .zip(&slots)
        .filter(|(_, s)| s.stranded_after == 0.0)
        .map(|(c, _)| c.watts / cpu)
        .fold(f64::INFINITY, f64::min);
    if !reference.is_finite() {
        return;
    }
    for (candidate, slots) in candidates.iter_mut().zip(&slots) {
        candidate.watts += slot_charge(candidate.watts / cpu, reference, slots);
    }
}

/// A node's pod slots as the pod would change them.
#[derive(Debug, Clone, Copy)]
struct Slots {
    /// Expected stranded millicores after the pod minus before: positive for a pod smaller than
    /// the mean on a slot-bound node (its slot would carry more CPU taken by an average pod),
    /// negative for a larger one (it uses CPU the slots would strand).
    stranded_delta: f64,
    stranded_after: f64,
    /// Pod slots still free before the pod: how close the limit is.
    free: f64,
}

impl Slots {
    fn of(nodes: &Snapshot, index: usize, cpu: f64, mean_pod: f64) -> Self {
        let node = nodes.node(index);
        let (requested, allocatable) = (node.requested(), node.allocatable());
        let free_cpu = allocatable
            .cpu_millicores
            .saturating_sub(requested.cpu_millicores) as f64;
        let free = allocatable.pods.saturating_sub(requested.pods) as f64;
        let before = expected_stranded(free_cpu, free, mean_pod);
        let after = expected_stranded((free_cpu - cpu).max(0.0), (free - 1.0).max(0.0), mean_pod);
        Self {
            stranded_delta: after - before,
            stranded_after: after,
            free,
        }
    }
}

/// Free pod slots over which a slot's charge fades in: e^(−free / this). A node with many free
/// slots may never reach its limit (pods leave), so its slots cost next to nothing; within its
/// last few slots the limit is all but certain. Measured on the simulator's dense-small scenario
/// (seeds 1–3): 2, 4 and 8 slots capture the same share of the energy gap within the seeds'
/// spread, while charging in proportion to the share of slots in use (no fade) lost energy.
const SLOT_FADE: f64 = 4.0;

/// Free slots beyond which the charge is taken as zero: its fade is below a millionth
/// (`SLOT_FADE × ln 10⁶`, about 55 slots), so most decisions skip slot pricing altogether.
const SLOT_HORIZON: f64 = SLOT_FADE * 13.815_510_557_964_274;

/// Watts a pod's slot costs on a node it would price at `per_millicore`: the stranded CPU it
/// adds (or takes back), at what that CPU costs on the reference node beyond this one, faded by
/// how many slots are still free ([`SLOT_FADE`]). A node with room to spare charges nothing (a
/// cluster with room on its efficient nodes loses nothing to their limit); a nearly full one
/// keeps its last slots for pods that use its CPU. Negative for a pod larger than the mean.
fn slot_charge(per_millicore: f64, reference: f64, slots: &Slots) -> f64 {
    if slots.free > SLOT_HORIZON {
        return 0.0;
    }
    let certainty = (-slots.free / SLOT_FADE).exp();
    let charge = slots.stranded_delta * (reference - per_millicore).max(0.0) * certainty;
    if charge.is_finite() {
        charge
    } else {
        0.0
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

    /// `name` on an idle–peak line at `utilisation` of 16 cores, fresh.
    fn loaded(name: &str, energy: Option<EnergyLevel>, peak: f64, utilisation: f64) -> NodeState {
        let mut n = with(name, energy, 100.0, peak);
        n.power.utilisation = utilisation;
        n
    }

    fn both_policies() -> [ScoreConfig; 2] {
        [
            ScoreConfig::default(),
            ScoreConfig {
                kind: PolicyKind::Weighted {
                    energy: 1.0,
                    power: 1.0,
                },
                ..ScoreConfig::default()
            },
        ]
    }

    #[test]
    fn a_saturated_node_ranks_after_unsaturated_and_unreported_ones() {
        use EnergyLevel::*;
        // Measured at 100 %: the old clamp priced any pod there at 0 W, the cheapest of all.
        let saturated = loaded("saturated", Some(WellPowered), 110.0, 1.0);
        let busy = loaded("busy", Some(WellPowered), 400.0, 0.9);
        let mut unreported = with("unreported", Some(WellPowered), 100.0, 300.0);
        unreported.power.fresh = false;
        let nodes = [saturated.clone(), busy, unreported.clone()];
        for config in both_policies() {
            assert_eq!(winner(&nodes, &config), "busy", "{config:?}");
            assert_eq!(
                winner(&[saturated.clone(), unreported.clone()], &config),
                "unreported",
                "{config:?}"
            );
            assert_eq!(
                winner(std::slice::from_ref(&saturated), &config),
                "saturated"
            );
        }
        // Its price says so too: the pod's 500m all costs peak watts.
        let price = Snapshot::new(&[saturated]).power(0).price(500);
        assert!(price.exceeds_capacity);
        assert!(
            (price.watts.0 - 110.0 * 500.0 / 16000.0).abs() < 1e-9,
            "{price:?}"
        );
    }

    #[test]
    fn the_class_ranks_before_the_energy_tier() {
        use EnergyLevel::*;
        let nodes = [
            loaded("well-powered-saturated", Some(WellPowered), 150.0, 0.99),
            loaded("low-powered-fits", Some(LowPowered), 400.0, 0.5),
        ];
        for config in both_policies() {
            assert_eq!(winner(&nodes, &config), "low-powered-fits", "{config:?}");
        }
    }

    #[test]
    fn among_saturated_nodes_the_cheapest_overflow_wins() {
        let nodes = [
            loaded("peak-300", None, 300.0, 1.0),
            loaded("peak-200", None, 200.0, 1.2),
            loaded("peak-250", None, 250.0, 0.99),
        ];
        for config in both_policies() {
            assert_eq!(winner(&nodes, &config), "peak-200", "{config:?}");
        }
    }

    /// An expensive well-powered node, a cheap vulnerable one and a middling low-powered one.
    fn three_tiers() -> [NodeState; 3] {
        use EnergyLevel::*;
        [
            with("well-expensive", Some(WellPowered), 100.0, 400.0),
            with("vulnerable-cheap", Some(Vulnerable), 100.0, 150.0),
            with("low-mid", Some(LowPowered), 100.0, 250.0),
        ]
    }

    fn weighted(energy: f64, power: f64) -> ScoreConfig {
        ScoreConfig {
            kind: PolicyKind::Weighted { energy, power },
            ..ScoreConfig::default()
        }
    }

    #[test]
    fn weights_decide_between_energy_and_power() {
        let nodes = three_tiers();
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
        for config in both_policies() {
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

    /// A node of `cores` on a linear curve, `pods` pods requesting `cpu` millicores bound.
    fn holding(name: &str, cores: u64, idle: f64, peak: f64, pods: u64, cpu: u64) -> NodeState {
        let mut n = with(name, None, idle, peak);
        n.allocatable.cpu_millicores = cores * 1000;
        n.power.capacity_millicores = cores * 1000;
        n.power.utilisation = cpu as f64 / (cores * 1000) as f64;
        n.requested.cpu_millicores = cpu;
        n.requested.pods = pods;
        n
    }

    fn sized(uid: &str, millicores: u64) -> PodRequest {
        let mut p = pod(uid);
        p.requests.cpu_millicores = millicores;
        p.pricing_cpu_millicores = millicores;
        p
    }

    fn chosen(nodes: &[NodeState], p: &PodRequest, config: &ScoreConfig) -> String {
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let decision = schedule(p, &Snapshot::new(nodes), &filters, config).unwrap();
        nodes[decision.node].name.clone()
    }

    #[test]
    fn the_last_slots_of_an_efficient_node_go_to_pods_that_use_its_cpu() {
        // 1.17 W per core with 2 of 110 slots and 28 cores free (the pods average 0.94 cores:
        // the slots run out with CPU left); 3.9 W per core with slots to spare.
        let nodes = [
            holding("efficient", 128, 50.0, 200.0, 108, 100_000),
            holding("dear", 64, 50.0, 300.0, 20, 20_000),
        ];
        let priced = ScoreConfig::default();
        let unpriced = ScoreConfig {
            slot_pricing: false,
            ..priced
        };
        let small = sized("small", 250);
        assert_eq!(chosen(&nodes, &small, &unpriced), "efficient");
        assert_eq!(chosen(&nodes, &small, &priced), "dear");
        let large = sized("large", 4000);
        assert_eq!(chosen(&nodes, &large, &priced), "efficient");
        // The decision still states the pod's own marginal watts, not the charge.
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let d = schedule(&small, &Snapshot::new(&nodes), &filters, &priced).unwrap();
        assert!(
            (d.marginal.watts.0 - 250.0 * 250.0 / 64_000.0).abs() < 1e-9,
            "{d:?}"
        );
    }

    #[test]
    fn slots_cost_nothing_while_an_efficient_node_has_them_to_spare() {
        // The same efficient hardware, empty: its slots are plentiful, their charge negligible.
        let nodes = [
            holding("efficient-empty", 128, 50.0, 200.0, 0, 0),
            holding("dear", 64, 50.0, 300.0, 20, 20_000),
        ];
        assert_eq!(
            chosen(&nodes, &sized("small", 250), &ScoreConfig::default()),
            "efficient-empty"
        );
        // Every node would strand CPU: no node to price the stranded CPU at, plain watts.
        let nodes = [
            holding("efficient", 128, 50.0, 200.0, 108, 100_000),
            holding("dear-full", 128, 50.0, 300.0, 108, 100_000),
        ];
        assert_eq!(
            chosen(&nodes, &sized("small", 250), &ScoreConfig::default()),
            "efficient"
        );
    }

    /// `priorities` over every node, by name.
    fn scores(nodes: &[NodeState], p: &PodRequest, config: &ScoreConfig) -> Vec<(String, u8)> {
        let rows: Vec<usize> = (0..nodes.len()).collect();
        crate::policy::priorities(p, &Snapshot::new(nodes), &rows, config)
            .into_iter()
            .map(|(row, score)| (nodes[row].name.clone(), score))
            .collect()
    }

    fn score_of(scores: &[(String, u8)], name: &str) -> u8 {
        scores.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn priorities_rank_as_the_policy_decides_energy_tier_then_watts() {
        use EnergyLevel::*;
        let mut stale = with("stale-cheapest", Some(WellPowered), 10.0, 20.0);
        stale.power.fresh = false;
        let nodes = [
            with("well-cheap", Some(WellPowered), 100.0, 200.0),
            with("well-mid", Some(WellPowered), 100.0, 300.0),
            with("well-dear", Some(WellPowered), 100.0, 400.0),
            with("vulnerable-cheapest", Some(Vulnerable), 50.0, 100.0),
            with("low-cheap", Some(LowPowered), 100.0, 200.0),
            stale,
        ];
        let config = ScoreConfig::default();
        let s = scores(&nodes, &pod("p"), &config);
        assert_eq!(s.len(), nodes.len());
        // Only the node the standalone policy picks gets the top score.
        assert_eq!(score_of(&s, "well-cheap"), MAX_PRIORITY);
        assert_eq!(winner(&nodes, &config), "well-cheap");
        let order = [
            "well-cheap",
            "well-mid",
            "well-dear",
            "vulnerable-cheapest",
            "low-cheap",
            "stale-cheapest",
        ];
        for pair in order.windows(2) {
            assert!(
                score_of(&s, pair[0]) > score_of(&s, pair[1]),
                "{} above {}: {s:?}",
                pair[0],
                pair[1]
            );
        }
        // Four groups (well-powered, vulnerable, low-powered, then the stale class) in bands of
        // 3, 3, 3 and 2 scores: the worst of a group at the bottom of its band, the best of a
        // group at the top.
        assert_eq!(score_of(&s, "well-dear"), 8);
        assert_eq!(score_of(&s, "vulnerable-cheapest"), 7);
        assert_eq!(score_of(&s, "stale-cheapest"), 1);
    }

    #[test]
    fn priorities_give_the_top_score_to_every_tied_node_and_to_none_other() {
        // 6.25 W, +0.02 W (a tie within tie_watts) and +1 W.
        let nodes = [
            with("a", None, 100.0, 300.0),
            with("b", None, 100.0, 300.64),
            with("c", None, 100.0, 332.0),
        ];
        let s = scores(&nodes, &pod("p"), &ScoreConfig::default());
        assert_eq!(
            s,
            [("a".into(), 10), ("b".into(), 10), ("c".into(), 0)],
            "one group: the best at the top, the dearest at the bottom"
        );
        // Identical nodes all tie.
        let same: Vec<_> = (0..3).map(|i| node(&format!("n{i}"))).collect();
        let s = scores(&same, &pod("p"), &ScoreConfig::default());
        assert!(s.iter().all(|(_, score)| *score == MAX_PRIORITY), "{s:?}");
    }

    #[test]
    fn priorities_score_only_the_candidates_given() {
        use EnergyLevel::*;
        let nodes = [
            with("well-cheap", Some(WellPowered), 100.0, 200.0),
            with("well-dear", Some(WellPowered), 100.0, 400.0),
            with("vulnerable", Some(Vulnerable), 100.0, 150.0),
        ];
        let snapshot = Snapshot::new(&nodes);
        let p = pod("p");
        let config = ScoreConfig::default();
        // The cheap node taken by another scheduler's rule: the next best now tops the list.
        let s = crate::policy::priorities(&p, &snapshot, &[1, 2], &config);
        assert_eq!(s, [(1, MAX_PRIORITY), (2, 4)], "bands 5..=10 and 0..=4");
        assert!(crate::policy::priorities(&p, &snapshot, &[], &config).is_empty());
        assert_eq!(
            crate::policy::priorities(&p, &snapshot, &[0, 7], &config),
            [(0, MAX_PRIORITY)],
            "no row 7"
        );
    }

    #[test]
    fn priorities_follow_the_weighted_policy() {
        let nodes = three_tiers();
        for (config, top) in [
            (weighted(1.0, 0.0), "well-expensive"),
            (weighted(0.0, 1.0), "vulnerable-cheap"),
            (weighted(1.0, 0.4), "vulnerable-cheap"),
        ] {
            let s = scores(&nodes, &pod("p"), &config);
            assert_eq!(winner(&nodes, &config), top);
            let tops: Vec<_> = s.iter().filter(|(_, v)| *v == MAX_PRIORITY).collect();
            assert_eq!(
                tops,
                [&(top.to_string(), MAX_PRIORITY)],
                "{config:?}: {s:?}"
            );
        }
        // Energy alone: well 1, low 1/3, vulnerable 2/3 of the range → 10, 0, 5.
        let s = scores(&nodes, &pod("p"), &weighted(1.0, 0.0));
        assert_eq!(score_of(&s, "vulnerable-cheap"), 5, "{s:?}");
        assert_eq!(score_of(&s, "low-mid"), 0, "{s:?}");
    }

    #[test]
    fn the_top_score_is_the_standalone_choice_over_many_clusters() {
        use EnergyLevel::*;
        let levels = [None, Some(WellPowered), Some(Vulnerable), Some(LowPowered)];
        for seed in 0..200u64 {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let nodes: Vec<NodeState> = (0..1 + next(12))
                .map(|i| {
                    let mut n = loaded(
                        &format!("n{i}"),
                        levels[next(4) as usize],
                        150.0 + next(300) as f64,
                        next(105) as f64 / 100.0,
                    );
                    n.power.fresh = next(5) != 0;
                    n
                })
                .collect();
            for config in both_policies() {
                let p = pod(&format!("p{seed}"));
                let s = scores(&nodes, &p, &config);
                let chosen = chosen(&nodes, &p, &config);
                assert_eq!(
                    score_of(&s, &chosen),
                    MAX_PRIORITY,
                    "{seed} {config:?}: {s:?}"
                );
            }
        }
    }
}
