//! Placement policies behind one trait, run by the same engine and measured by the same
//! accounting: wattwise (the scheduler's own `policy::schedule`), kube-scheduler's default
//! scoring, MostAllocated bin-packing, random, and the two systems wattwise grows from as they
//! were. Feasibility is the scheduler's own filter chain for all of them: wattwise's with its
//! energy floor, the baselines' without one (kube's), the serverless seed's plus its powerless
//! filter on its own levels.

use std::collections::{BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use wattwise_core::EnergyLevel;
use wattwise_scheduler::config::{OffloaderConfig, PolicyConfig};
use wattwise_scheduler::policy::ScoreConfig;

use crate::cluster::{Cluster, PodPhase, SimNode, SimPod};
use crate::report::PlacementQuality;
use crate::view::{OffloadCandidate, SchedulerView};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    Wattwise,
    WattwiseNoOffload,
    WattwiseNoSlotPricing,
    KubeDefault,
    MostAllocated,
    Random,
    MinimizePower,
    ServerlessSeed,
}

impl PolicyName {
    pub fn label(self) -> &'static str {
        match self {
            Self::Wattwise => "wattwise",
            Self::WattwiseNoOffload => "wattwise-no-offload",
            Self::WattwiseNoSlotPricing => "wattwise-no-slot-pricing",
            Self::KubeDefault => "kube-default",
            Self::MostAllocated => "most-allocated",
            Self::Random => "random",
            Self::MinimizePower => "minimize-power",
            Self::ServerlessSeed => "serverless-seed",
        }
    }

    pub fn build(self) -> Box<dyn Placement> {
        match self {
            Self::Wattwise => Box::new(Wattwise::new(true, ScoreConfig::default())),
            Self::WattwiseNoOffload => Box::new(Wattwise::new(false, ScoreConfig::default())),
            Self::WattwiseNoSlotPricing => Box::new(Wattwise::new(
                true,
                ScoreConfig {
                    slot_pricing: false,
                    ..ScoreConfig::default()
                },
            )),
            Self::KubeDefault => Box::new(Kube(Strategy::LeastAllocated)),
            Self::MostAllocated => Box::new(Kube(Strategy::MostAllocated)),
            Self::Random => Box::new(Random),
            Self::MinimizePower => Box::new(MinimizePower::default()),
            Self::ServerlessSeed => Box::new(ServerlessSeed::default()),
        }
    }
}

/// A pod to evict, and the node reserved for its replacement (`None`: scheduled as any pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eviction {
    pub pod: usize,
    pub to: Option<usize>,
}

/// How a policy places pods, and what it does periodically.
pub trait Placement {
    /// Whether decisions read agents' reports (else the engine does not make them).
    fn reads_reports(&self) -> bool {
        false
    }

    /// Period of [`Placement::tick`], seconds.
    fn tick_seconds(&self) -> Option<f64> {
        None
    }

    /// Periodic work at `now` (refreshing readings, energy adapters, offloaders); returns the
    /// pods to evict, each with the node reserved for its replacement if the policy planned one.
    fn tick(
        &mut self,
        _now: f64,
        _cluster: &Cluster,
        _view: &SchedulerView,
        _rng: &mut StdRng,
    ) -> Vec<Eviction> {
        Vec::new()
    }

    /// How its prices compared with the true curves, for a policy that prices pods.
    fn placement_quality(&self) -> Option<PlacementQuality> {
        None
    }

    /// The node for `pod`, or `None` when no node may take it now.
    fn place(
        &mut self,
        pod: &SimPod,
        cluster: &Cluster,
        view: &SchedulerView,
        rng: &mut StdRng,
    ) -> Option<usize>;
}

/// The scheduler's own decision (`policy::schedule`, default filters, the default score config
/// or a variant's) and, with the offloader, its planner (`offload::plan`) on the scheduler's default `offload:`
/// configuration (pass period, per-owner cooldown, limits): each planned move evicts the pod and
/// reserves the target for its replacement.
struct Wattwise {
    score: ScoreConfig,
    /// The scheduler's own `offload:` defaults, when the offloader runs.
    offloader: Option<OffloaderConfig>,
    quality: PlacementQuality,
    /// Pods moved and when: their owners cool down.
    moved: HashMap<usize, f64>,
}

impl Wattwise {
    fn new(offloader: bool, score: ScoreConfig) -> Self {
        Self {
            score,
            offloader: offloader.then(OffloaderConfig::default),
            quality: PlacementQuality::default(),
            moved: HashMap::new(),
        }
    }
}

impl Placement for Wattwise {
    fn reads_reports(&self) -> bool {
        true
    }

    fn tick_seconds(&self) -> Option<f64> {
        self.offloader.as_ref().map(|o| o.interval.as_secs_f64())
    }

    fn tick(
        &mut self,
        now: f64,
        cluster: &Cluster,
        view: &SchedulerView,
        _: &mut StdRng,
    ) -> Vec<Eviction> {
        let Some(offloader) = &self.offloader else {
            return Vec::new();
        };
        let config = offloader.planner(PolicyConfig::default().lowest_energy_level);
        let cooldown = offloader.cooldown.as_secs_f64();
        self.moved.retain(|_, &mut at| now - at < cooldown);
        // Only pods on nodes the planner would look at: it skips the others itself, and
        // handing it every pod of a large cluster each pass costs time for nothing.
        let mut candidates = Vec::new();
        for (node, n) in cluster.nodes.iter().enumerate() {
            if !view.weakly_powered(node, &config) {
                continue;
            }
            for &pod in &n.pods {
                let p = &cluster.pods[pod];
                if let PodPhase::Bound { at, .. } = p.phase {
                    candidates.push(OffloadCandidate {
                        pod,
                        node,
                        request: &p.request,
                        age_seconds: now - at,
                    });
                }
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        let cooling: BTreeSet<usize> = self.moved.keys().copied().collect();
        let moves = view.plan_offload(&candidates, &config, &cooling, &self.score);
        moves
            .into_iter()
            .map(|(pod, to)| {
                self.moved.insert(pod, now);
                Eviction { pod, to: Some(to) }
            })
            .collect()
    }

    fn placement_quality(&self) -> Option<PlacementQuality> {
        Some(self.quality)
    }

    fn place(
        &mut self,
        pod: &SimPod,
        cluster: &Cluster,
        view: &SchedulerView,
        _: &mut StdRng,
    ) -> Option<usize> {
        let decision = view.schedule(&pod.request, &self.score).ok()?;
        let check = view.price_check(&pod.request, &decision, |node, u| {
            cluster.nodes[node].hardware.watts(u)
        });
        self.quality.add(&check);
        Some(decision.node)
    }
}

#[derive(Debug, Clone, Copy)]
enum Strategy {
    LeastAllocated,
    MostAllocated,
}

/// kube-scheduler's score of `node` for `pod`, as its default profile computes it
/// (kubernetes/kubernetes pkg/scheduler/apis/config/v1/default_plugins.go and defaults.go:
/// NodeResourcesFit weight 1 with scoring strategy LeastAllocated over cpu and memory, each
/// weight 1; NodeResourcesBalancedAllocation weight 1 over cpu and memory;
/// pkg/scheduler/framework/plugins/noderesources: least/most_allocated.go,
/// balanced_allocation.go). The other default score plugins (TaintToleration, NodeAffinity,
/// PodTopologySpread, InterPodAffinity, ImageLocality) score every simulated node alike: no
/// taints, affinities, owners or images. MostAllocated swaps only the fit strategy, as the
/// documented bin-packing configuration does.
fn kube_score(node: &SimNode, pod: &SimPod, strategy: Strategy) -> i64 {
    const MAX: i64 = 100;
    let capacity = [
        node.hardware.cpu_millicores as i64,
        (node.hardware.memory_mib << 20) as i64,
    ];
    let pod_non_zero = pod.non_zero();
    // The fit score reads NonZeroRequested, pod included.
    let non_zero = [
        (node.non_zero.cpu_millicores + pod_non_zero.cpu_millicores) as i64,
        ((node.non_zero.memory_mib + pod_non_zero.memory_mib) << 20) as i64,
    ];
    let resource = |requested: i64, capacity: i64| -> i64 {
        if capacity == 0 {
            return 0;
        }
        match strategy {
            Strategy::LeastAllocated if requested > capacity => 0,
            Strategy::LeastAllocated => (capacity - requested) * MAX / capacity,
            Strategy::MostAllocated => requested.min(capacity) * MAX / capacity,
        }
    };
    let fit = (resource(non_zero[0], capacity[0]) + resource(non_zero[1], capacity[1])) / 2;
    // BalancedAllocation reads the actual requests, pod included, and skips BestEffort pods.
    let balanced = if pod.requests.cpu_millicores == 0 && pod.requests.memory_mib == 0 {
        0
    } else {
        let fraction =
            |requested: u64, capacity: i64| (requested as f64 / capacity as f64).min(1.0);
        let cpu = fraction(
            node.requested.cpu_millicores + pod.requests.cpu_millicores,
            capacity[0],
        );
        let memory = fraction(
            (node.requested.memory_mib + pod.requests.memory_mib) << 20,
            capacity[1],
        );
        let std = ((cpu - memory) / 2.0).abs();
        ((1.0 - std) * MAX as f64) as i64
    };
    fit + balanced
}

/// The best-scoring candidate; ties broken uniformly at random, as kube's `selectHost` does.
fn best_of<T: PartialOrd + Copy>(
    candidates: impl Iterator<Item = (usize, T)>,
    better: impl Fn(T, T) -> bool,
    rng: &mut StdRng,
) -> Option<usize> {
    let mut best: Option<(usize, T)> = None;
    let mut ties = 0u32;
    for (node, score) in candidates {
        match best {
            Some((_, b)) if better(b, score) => {}
            Some((_, b)) if !better(score, b) => {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some((node, score));
                }
            }
            _ => {
                best = Some((node, score));
                ties = 1;
            }
        }
    }
    best.map(|(node, _)| node)
}

/// kube-scheduler's default profile (LeastAllocated) or its bin-packing variant.
struct Kube(Strategy);

impl Placement for Kube {
    fn place(
        &mut self,
        pod: &SimPod,
        cluster: &Cluster,
        view: &SchedulerView,
        rng: &mut StdRng,
    ) -> Option<usize> {
        let scored = view
            .feasible(&pod.request)
            .into_iter()
            .map(|i| (i, kube_score(&cluster.nodes[i], pod, self.0)));
        best_of(scored, |a, b| a > b, rng)
    }
}

/// Any feasible node, uniformly.
struct Random;

impl Placement for Random {
    fn place(
        &mut self,
        pod: &SimPod,
        _: &Cluster,
        view: &SchedulerView,
        rng: &mut StdRng,
    ) -> Option<usize> {
        let feasible = view.feasible(&pod.request);
        (!feasible.is_empty()).then(|| feasible[rng.random_range(0..feasible.len())])
    }
}

/// The first seed's MinimizePower score plugin as it was: each node's power before and after the
/// pod predicted from readings refreshed every 15 minutes (ipmi_exporter and metrics-server
/// scraped into labels), model inputs rounded to 0.1, and only the first container's CPU request
/// (the simulated pods have one). Its model was trained per node; here it is the node's true
/// curve, the best such a model can be. Fewest predicted watts wins, ties at random.
#[derive(Default)]
struct MinimizePower {
    /// Each node's utilisation as last read.
    readings: Vec<f64>,
    minute: u64,
}

/// Minutes between two readings of one node; nodes are read in turn, so readings are 0..15
/// minutes old.
const READING_MINUTES: u64 = 15;

impl Placement for MinimizePower {
    fn tick_seconds(&self) -> Option<f64> {
        Some(60.0)
    }

    fn tick(
        &mut self,
        _now: f64,
        cluster: &Cluster,
        _: &SchedulerView,
        _: &mut StdRng,
    ) -> Vec<Eviction> {
        let first = self.readings.is_empty();
        self.readings.resize(cluster.nodes.len(), 0.0);
        for (i, node) in cluster.nodes.iter().enumerate() {
            if first || i as u64 % READING_MINUTES == self.minute % READING_MINUTES {
                self.readings[i] = node.utilisation();
            }
        }
        self.minute += 1;
        Vec::new()
    }

    fn place(
        &mut self,
        pod: &SimPod,
        cluster: &Cluster,
        view: &SchedulerView,
        rng: &mut StdRng,
    ) -> Option<usize> {
        let round = |u: f64| (u * 10.0).round() / 10.0;
        let scored = view.feasible(&pod.request).into_iter().map(|i| {
            let hardware = &cluster.nodes[i].hardware;
            let before = self.readings.get(i).copied().unwrap_or(0.0);
            let after =
                before + pod.requests.cpu_millicores as f64 / hardware.cpu_millicores as f64;
            (
                i,
                hardware.watts(round(after)) - hardware.watts(round(before)),
            )
        });
        best_of(scored, |a, b| a < b, rng)
    }
}

/// The serverless seed as it was: an energy adapter that gives nodes random levels, then swaps
/// them every period (well-powered ↔ low-powered, vulnerable ↔ powerless); a scheduler that is
/// kube's default plus a filter dropping powerless nodes; an offloader that evicts every pod on a
/// node while any node has a higher level, whatever room that node has.
#[derive(Default)]
struct ServerlessSeed {
    levels: Vec<EnergyLevel>,
    ticks: u64,
}

const ADAPTER_SECONDS: u64 = 20;
const OFFLOADER_SECONDS: u64 = 30;
const SEED_TICK_SECONDS: u64 = 10;

impl Placement for ServerlessSeed {
    fn tick_seconds(&self) -> Option<f64> {
        Some(SEED_TICK_SECONDS as f64)
    }

    fn tick(
        &mut self,
        _now: f64,
        cluster: &Cluster,
        _: &SchedulerView,
        rng: &mut StdRng,
    ) -> Vec<Eviction> {
        let elapsed = self.ticks * SEED_TICK_SECONDS;
        self.ticks += 1;
        if self.levels.is_empty() {
            self.levels = (0..cluster.nodes.len())
                .map(|_| EnergyLevel::ALL[rng.random_range(0..EnergyLevel::ALL.len())])
                .collect();
        } else if elapsed.is_multiple_of(ADAPTER_SECONDS) {
            for level in &mut self.levels {
                *level = match *level {
                    EnergyLevel::WellPowered => EnergyLevel::LowPowered,
                    EnergyLevel::LowPowered => EnergyLevel::WellPowered,
                    EnergyLevel::Vulnerable => EnergyLevel::Powerless,
                    EnergyLevel::Powerless => EnergyLevel::Vulnerable,
                };
            }
        }
        if !elapsed.is_multiple_of(OFFLOADER_SECONDS) {
            return Vec::new();
        }
        let ready = |i: &usize| cluster.nodes[*i].ready();
        let Some(highest) = (0..cluster.nodes.len())
            .filter(ready)
            .map(|i| self.levels[i])
            .max()
        else {
            return Vec::new();
        };
        (0..cluster.nodes.len())
            .filter(|i| ready(i) && self.levels[*i] < highest)
            .flat_map(|i| cluster.nodes[i].pods.iter().copied())
            .map(|pod| Eviction { pod, to: None })
            .collect()
    }

    fn place(
        &mut self,
        pod: &SimPod,
        cluster: &Cluster,
        view: &SchedulerView,
        rng: &mut StdRng,
    ) -> Option<usize> {
        let scored = view
            .feasible(&pod.request)
            .into_iter()
            .filter(|&i| self.levels.get(i) != Some(&EnergyLevel::Powerless))
            .map(|i| {
                (
                    i,
                    kube_score(&cluster.nodes[i], pod, Strategy::LeastAllocated),
                )
            });
        best_of(scored, |a, b| a > b, rng)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;
    use wattwise_core::PowerCurve;

    use super::*;
    use crate::agent::Report;
    use crate::cluster::KUBELET_MAX_PODS;
    use crate::cluster::{Hardware, PodPhase};
    use crate::specpower::by_result_id;
    use crate::view::{pod_request, Requests};
    use crate::workload::TracePod;

    /// Tyan 2S of 2012 (16 threads, 61 → 256 W) and a Lenovo 1S of 2021 (128 threads,
    /// 54 → 240 W).
    const OLD: &str = "power_ssj2008-20121113-00584";
    const NEW: &str = "power_ssj2008-20210615-01111";

    fn pod(cpu: u64) -> SimPod {
        let requests = Requests {
            cpu_millicores: cpu,
            memory_mib: 1024,
        };
        SimPod {
            trace: TracePod {
                name: format!("p{cpu}"),
                cpu_millicores: cpu,
                memory_mib: 1024,
                arrival: 0.0,
                lifetime: None,
            },
            share: 1.0,
            requests,
            request: pod_request(&format!("p{cpu}"), requests),
            phase: PodPhase::Pending { since: 0.0 },
            remaining: None,
            generation: 0,
        }
    }

    /// Nodes of the given servers (capacity `cpu` each, else the server's threads), ready.
    fn cluster(specs: &[&str], cpu: Option<u64>) -> (Cluster, SchedulerView) {
        let nodes: Vec<SimNode> = specs
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let spec = Arc::new(by_result_id(id).unwrap());
                let hardware = Hardware {
                    cpu_millicores: cpu.unwrap_or(spec.threads as u64 * 1000),
                    memory_mib: 32_768,
                    max_pods: KUBELET_MAX_PODS,
                    spec,
                    inlet_celsius: 23.0,
                };
                SimNode::new(format!("n{i}"), hardware)
            })
            .collect();
        let capacities: Vec<_> = nodes
            .iter()
            .map(|n| (n.name.clone(), n.hardware.capacity()))
            .collect();
        let mut view = SchedulerView::new(&capacities, 30.0, 30.0);
        for i in 0..nodes.len() {
            view.set_ready(i, true);
        }
        (
            Cluster {
                nodes,
                pods: Vec::new(),
            },
            view,
        )
    }

    /// A running pod of `cpu` on `node`, fully busy.
    fn load(c: &mut Cluster, view: &mut SchedulerView, node: usize, cpu: u64) {
        let p = pod(cpu);
        let n = &mut c.nodes[node];
        n.requested.cpu_millicores += cpu;
        n.requested.memory_mib += p.requests.memory_mib;
        n.non_zero = n.requested;
        n.load_millicores += cpu as f64;
        n.pods.push(c.pods.len());
        view.bind(node, c.pods.len(), &p.request, -100.0);
        c.pods.push(p);
    }

    /// Each node reports its true curve and utilisation.
    fn report_all(c: &Cluster, view: &mut SchedulerView) {
        for (i, n) in c.nodes.iter().enumerate() {
            let curve = PowerCurve::sample(101, |u| n.hardware.watts(u)).unwrap();
            let report = Report {
                curve,
                utilisation: n.utilisation(),
                energy: None,
            };
            view.report(i, report, 0.0);
        }
    }

    fn choose(name: PolicyName, c: &Cluster, view: &SchedulerView, p: &SimPod) -> Option<usize> {
        let mut rng = StdRng::seed_from_u64(1);
        name.build().place(p, c, view, &mut rng)
    }

    #[test]
    fn kube_default_spreads_and_most_allocated_packs() {
        let (mut c, mut view) = cluster(&[OLD, OLD], Some(8000));
        load(&mut c, &mut view, 0, 4000);
        let p = pod(1000);
        assert_eq!(choose(PolicyName::KubeDefault, &c, &view, &p), Some(1));
        assert_eq!(choose(PolicyName::MostAllocated, &c, &view, &p), Some(0));
        // A pod that fits only on the emptier node goes there under both.
        let big = pod(6000);
        assert_eq!(choose(PolicyName::MostAllocated, &c, &view, &big), Some(1));
        assert_eq!(choose(PolicyName::Random, &c, &view, &big), Some(1));
    }

    #[test]
    fn wattwise_takes_the_node_adding_fewest_watts_where_kube_spreads() {
        let (mut c, mut view) = cluster(&[OLD, NEW], None);
        // The efficient node is half busy, the old one idle.
        load(&mut c, &mut view, 1, 64_000);
        report_all(&c, &mut view);
        let p = pod(1000);
        assert_eq!(choose(PolicyName::Wattwise, &c, &view, &p), Some(1));
        assert_eq!(choose(PolicyName::KubeDefault, &c, &view, &p), Some(0));
        // Without fresh reports wattwise still places (default curve, from requests).
        view.expire(0, 1000.0);
        view.expire(1, 1000.0);
        assert!(choose(PolicyName::Wattwise, &c, &view, &p).is_some());
    }

    #[test]
    fn minimize_power_prices_on_readings_that_miss_load_placed_since() {
        let (mut c, mut view) = cluster(&[NEW, NEW], Some(16_000));
        let mut rng = StdRng::seed_from_u64(1);
        let mut policy = MinimizePower::default();
        load(&mut c, &mut view, 0, 8000);
        policy.tick(0.0, &c, &view, &mut rng);
        // Whichever node the readings make cheaper keeps winning while load placed there since
        // the reading stays unseen.
        let p = pod(4000);
        let first = policy.place(&p, &c, &view, &mut rng).unwrap();
        load(&mut c, &mut view, first, 4000);
        assert_eq!(
            policy.place(&p, &c, &view, &mut rng),
            Some(first),
            "stale readings"
        );
        // Inputs rounded to 0.1: a 100 m pod moves no input, so every node costs 0 W.
        let tiny = pod(100);
        let before = policy.readings.clone();
        let costs: Vec<f64> = (0..2)
            .map(|i| {
                let h = &c.nodes[i].hardware;
                let round = |u: f64| (u * 10.0).round() / 10.0;
                h.watts(round(before[i] + 100.0 / 16_000.0)) - h.watts(round(before[i]))
            })
            .collect();
        assert_eq!(costs, [0.0, 0.0]);
        let mut chosen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            chosen.extend(policy.place(&tiny, &c, &view, &mut rng));
        }
        assert_eq!(chosen.len(), 2, "ties broken at random");
    }

    #[test]
    fn serverless_seed_filters_powerless_and_evicts_towards_any_higher_level() {
        let (mut c, mut view) = cluster(&[OLD, OLD, OLD], Some(8000));
        let mut policy = ServerlessSeed {
            levels: vec![
                EnergyLevel::Powerless,
                EnergyLevel::WellPowered,
                EnergyLevel::LowPowered,
            ],
            ticks: 3,
        };
        let mut rng = StdRng::seed_from_u64(1);
        // The well-powered node is full; the powerless one empty.
        load(&mut c, &mut view, 1, 8000);
        let p = pod(1000);
        assert_eq!(policy.place(&p, &c, &view, &mut rng), Some(2));
        load(&mut c, &mut view, 2, 1000);
        // At 30 s the offloader evicts every pod below the highest level (node 2's, pod 1),
        // though the well-powered node has no room for it.
        assert_eq!(
            policy.tick(30.0, &c, &view, &mut rng),
            [Eviction { pod: 1, to: None }]
        );
        // At 40 s the adapter swaps levels (well ↔ low, vulnerable ↔ powerless); no offloading.
        assert!(policy.tick(40.0, &c, &view, &mut rng).is_empty());
        assert_eq!(
            policy.levels,
            [
                EnergyLevel::Vulnerable,
                EnergyLevel::LowPowered,
                EnergyLevel::WellPowered
            ]
        );
    }

    #[test]
    fn wattwise_ticks_move_old_pods_off_low_powered_nodes_to_the_planned_target_once() {
        let (mut c, mut view) = cluster(&[OLD, OLD, NEW], Some(16_000));
        // Node 0 low-powered holds an hour-old pod and a young one; node 1 well-powered, node 2
        // vulnerable (both better by at least one level; tiers rank well-powered first).
        for (cpu, bound_at) in [(2000, -3600.0), (1000, -60.0)] {
            load(&mut c, &mut view, 0, cpu);
            let pod = c.pods.len() - 1;
            c.pods[pod].phase = PodPhase::Bound {
                node: 0,
                at: bound_at,
                started: true,
            };
        }
        let levels = [
            EnergyLevel::LowPowered,
            EnergyLevel::WellPowered,
            EnergyLevel::Vulnerable,
        ];
        for (i, n) in c.nodes.iter().enumerate() {
            let report = Report {
                curve: PowerCurve::sample(101, |u| n.hardware.watts(u)).unwrap(),
                utilisation: n.utilisation(),
                energy: Some(levels[i]),
            };
            view.report(i, report, 0.0);
        }
        let mut policy = Wattwise::new(true, ScoreConfig::default());
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(policy.tick_seconds(), Some(30.0));
        // The old pod moves, reserved on the well-powered node; the young one (under the
        // planner's 5-minute minimum age) stays.
        assert_eq!(
            policy.tick(0.0, &c, &view, &mut rng),
            [Eviction {
                pod: 0,
                to: Some(1)
            }]
        );
        // Its owner cools down: the next pass (the pod seen still there) moves nothing.
        assert!(policy.tick(30.0, &c, &view, &mut rng).is_empty());
        // Without the offloader, no ticks at all.
        assert_eq!(
            Wattwise::new(false, ScoreConfig::default()).tick_seconds(),
            None
        );
    }
}
