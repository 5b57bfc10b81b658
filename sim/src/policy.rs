//! Placement policies behind one trait, run by the same engine and measured by the same
//! accounting: wattwise (the scheduler's own `policy::schedule`), kube-scheduler's default
//! scoring, MostAllocated bin-packing, random, and the two systems wattwise grows from as they
//! were. All but the serverless seed's own filter share kube's feasibility (the scheduler's
//! filter chain without an energy floor).

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use wattwise_core::EnergyLevel;

use crate::cluster::{Cluster, SimNode, SimPod};
use crate::view::SchedulerView;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    Wattwise,
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
            Self::KubeDefault => "kube-default",
            Self::MostAllocated => "most-allocated",
            Self::Random => "random",
            Self::MinimizePower => "minimize-power",
            Self::ServerlessSeed => "serverless-seed",
        }
    }

    pub fn build(self) -> Box<dyn Placement> {
        match self {
            Self::Wattwise => Box::new(Wattwise),
            Self::KubeDefault => Box::new(Kube(Strategy::LeastAllocated)),
            Self::MostAllocated => Box::new(Kube(Strategy::MostAllocated)),
            Self::Random => Box::new(Random),
            Self::MinimizePower => Box::new(MinimizePower::default()),
            Self::ServerlessSeed => Box::new(ServerlessSeed::default()),
        }
    }
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
    /// pods to evict. This is where an offloader's planner plugs in.
    fn tick(&mut self, _now: f64, _cluster: &Cluster, _rng: &mut StdRng) -> Vec<usize> {
        Vec::new()
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

/// The scheduler's own decision (`policy::schedule`, default filters and score config). Its
/// offloader (issue 13) will plug in through [`Placement::tick`].
struct Wattwise;

impl Placement for Wattwise {
    fn reads_reports(&self) -> bool {
        true
    }

    fn place(
        &mut self,
        pod: &SimPod,
        _: &Cluster,
        view: &SchedulerView,
        _: &mut StdRng,
    ) -> Option<usize> {
        view.schedule(&pod.request).ok().map(|d| d.node)
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

    fn tick(&mut self, _now: f64, cluster: &Cluster, _: &mut StdRng) -> Vec<usize> {
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

    fn tick(&mut self, _now: f64, cluster: &Cluster, rng: &mut StdRng) -> Vec<usize> {
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
