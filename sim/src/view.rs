//! The scheduler's view of the simulated cluster: the one module that speaks the scheduler's
//! types (`wattwise_scheduler::policy`). It keeps a [`Snapshot`] up to date the way the
//! scheduler's cluster cache does (`scheduler/src/cluster/cache.rs`, `power_of`): a node with a
//! fresh report is priced on the report's curve from its measured utilisation plus the CPU of pods
//! placed less than the start window before the report was observed; a node without one on the
//! default linear curve from its requested CPU. Decisions are `policy::schedule` itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use wattwise_core::{EnergyLevel, PowerCurve};
use wattwise_scheduler::policy::offload::{self, BoundPod, OffloadConfig, Owner};
use wattwise_scheduler::policy::{
    self, utilisation, Decision, Filters, NodePower, NodeState, PodConstraints, PodRequest,
    Resources, ScoreConfig, Snapshot, Unschedulable,
};

use crate::agent::Report;

/// The scheduler's defaults (README, "Scheduler configuration").
const DEFAULT_IDLE_WATTS: f64 = 100.0;
const DEFAULT_PEAK_WATTS: f64 = 300.0;
const DEFAULT_CPU_MILLICORES: u64 = 100;

/// A pod's requests, as the simulation knows them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Requests {
    pub cpu_millicores: u64,
    pub memory_mib: u64,
}

/// The pod as the scheduler sees it.
pub fn pod_request(uid: &str, requests: Requests) -> PodRequest {
    PodRequest {
        namespace: "sim".into(),
        name: uid.into(),
        uid: uid.into(),
        priority: 0,
        requests: Resources {
            cpu_millicores: requests.cpu_millicores,
            memory_bytes: requests.memory_mib << 20,
            pods: 1,
            ..Resources::default()
        },
        pricing_cpu_millicores: if requests.cpu_millicores == 0 {
            DEFAULT_CPU_MILLICORES
        } else {
            requests.cpu_millicores
        },
        node_selector: BTreeMap::new(),
        required_node_affinity: Vec::new(),
        tolerations: Vec::new(),
        host_ports: Vec::new(),
        constraints: PodConstraints::default(),
    }
}

/// A bound pod the offloader may look at.
pub struct OffloadCandidate<'a> {
    pub pod: usize,
    pub node: usize,
    pub request: &'a PodRequest,
    /// Since it was bound (its replacement, after a move, is a new pod).
    pub age_seconds: f64,
}

fn owner_of(pod: &PodRequest) -> Owner {
    Owner {
        kind: "ReplicaSet".into(),
        namespace: pod.namespace.clone(),
        name: pod.uid.clone(),
    }
}

/// A decision's price against the truth: the model's error where placement needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriceCheck {
    /// Marginal watts the scheduler predicted on the node it chose.
    pub predicted_watts: f64,
    /// The true marginal watts of the same step on that node.
    pub true_watts: f64,
    /// The truly cheapest step among the nodes that passed the filters in the chosen node's
    /// energy tier.
    pub best_true_watts: f64,
}

/// What a node can hold, as its allocatable says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub cpu_millicores: u64,
    pub memory_mib: u64,
    /// The kubelet's `maxPods`.
    pub pods: u64,
}

/// The scheduler-side bookkeeping of one node beside its `NodeState`.
struct Row {
    /// The latest report and when it was observed.
    report: Option<(f64, Report)>,
    /// Pods placed here (placed at, CPU), newest last, until a report observed a start window
    /// after them.
    recent: Vec<(f64, u64, usize)>,
}

pub struct SchedulerView {
    snapshot: Snapshot,
    /// Each node as the cache holds it (what the offloader's planner reads).
    states: Vec<NodeState>,
    rows: Vec<Row>,
    index: HashMap<String, usize>,
    default_curve: PowerCurve,
    stale_after: f64,
    start_window: f64,
    filters: Filters,
    /// kube's filters: the same chain without an energy floor.
    plain_filters: Filters,
    score: ScoreConfig,
}

impl SchedulerView {
    /// Nodes named `names` with their capacity, all not ready until powered on.
    pub fn new(nodes: &[(String, Capacity)], stale_after: f64, start_window: f64) -> Self {
        let default_curve = PowerCurve::linear(DEFAULT_IDLE_WATTS, DEFAULT_PEAK_WATTS)
            .expect("the default curve is valid");
        let states: Vec<NodeState> = nodes
            .iter()
            .map(|(name, capacity)| NodeState {
                name: name.clone(),
                labels: BTreeMap::new(),
                unschedulable: false,
                ready: false,
                taints: Vec::new(),
                allocatable: Resources {
                    cpu_millicores: capacity.cpu_millicores,
                    memory_bytes: capacity.memory_mib << 20,
                    pods: capacity.pods,
                    ..Resources::default()
                },
                requested: Resources::default(),
                used_host_ports: Vec::new(),
                power: NodePower {
                    curve: default_curve.clone(),
                    utilisation: 0.0,
                    capacity_millicores: capacity.cpu_millicores,
                    fresh: false,
                    energy: None,
                },
            })
            .collect();
        let rows = nodes
            .iter()
            .map(|_| Row {
                report: None,
                recent: Vec::new(),
            })
            .collect();
        Self {
            snapshot: Snapshot::new(&states),
            index: (nodes.iter().enumerate())
                .map(|(i, (name, _))| (name.clone(), i))
                .collect(),
            states,
            rows,
            default_curve,
            stale_after,
            start_window,
            filters: Filters::standard(EnergyLevel::LowPowered),
            plain_filters: Filters::standard(EnergyLevel::Powerless),
            score: ScoreConfig::default(),
        }
    }

    /// wattwise's decision, by the scheduler's own policy with its default filters and `score`
    /// (the default, or a variant's).
    pub fn schedule(
        &self,
        pod: &PodRequest,
        score: &ScoreConfig,
    ) -> Result<Decision, Unschedulable> {
        policy::schedule(pod, &self.snapshot, &self.filters, score)
    }

    /// Nodes kube-scheduler's filters pass (no energy floor).
    pub fn feasible(&self, pod: &PodRequest) -> Vec<usize> {
        policy::feasible(pod, &self.snapshot, &self.plain_filters)
    }

    /// The node powered on (ready) or off.
    pub fn set_ready(&mut self, node: usize, ready: bool) {
        self.states[node].ready = ready;
        if !ready {
            let row = &mut self.rows[node];
            row.report = None;
            row.recent.clear();
        }
        self.rewrite(node);
    }

    /// Pod `pod` bound to `node` at `now`.
    pub fn bind(&mut self, node: usize, pod: usize, request: &PodRequest, now: f64) {
        self.states[node].requested.add(&request.requests);
        self.rows[node]
            .recent
            .push((now, request.pricing_cpu_millicores, pod));
        self.update_usage(node, now);
    }

    /// Pod `pod` left `node` (finished or evicted).
    pub fn unbind(&mut self, node: usize, pod: usize, request: &PodRequest, now: f64) {
        self.states[node].requested.subtract(&request.requests);
        self.rows[node].recent.retain(|&(_, _, p)| p != pod);
        self.update_usage(node, now);
    }

    /// A report observed at `now`.
    pub fn report(&mut self, node: usize, report: Report, now: f64) {
        let window = self.start_window;
        let row = &mut self.rows[node];
        row.recent.retain(|&(placed, _, _)| placed > now - window);
        row.report = Some((now, report));
        self.refresh_power(node, Some(now));
    }

    /// Brings node `node`'s freshness to `now` (a report may have gone stale).
    pub fn expire(&mut self, node: usize, now: f64) {
        if self.states[node].power.fresh {
            self.refresh_power(node, Some(now));
        }
    }

    /// `decision` for `pod` priced with the true curves `true_watts(node, utilisation)`: the same
    /// step (from the utilisation the scheduler holds, by the pod's priced CPU, clamped at full
    /// load) on the chosen node and on every node of its tier that passes the filters.
    pub fn price_check(
        &self,
        pod: &PodRequest,
        decision: &Decision,
        true_watts: impl Fn(usize, f64) -> f64,
    ) -> PriceCheck {
        let tier = |node: usize| {
            self.states[node]
                .power
                .energy
                .unwrap_or(self.score.unknown_energy)
        };
        let step = |node: usize| {
            let power = &self.states[node].power;
            let capacity = power.capacity_millicores.max(1) as f64;
            let from = power.utilisation.min(1.0);
            let to = (power.utilisation + pod.pricing_cpu_millicores as f64 / capacity).min(1.0);
            true_watts(node, to) - true_watts(node, from)
        };
        let chosen_tier = tier(decision.node);
        let best_true_watts = policy::feasible(pod, &self.snapshot, &self.filters)
            .into_iter()
            .filter(|&n| tier(n) == chosen_tier)
            .map(step)
            .fold(f64::INFINITY, f64::min);
        PriceCheck {
            predicted_watts: decision.marginal.watts.0,
            true_watts: step(decision.node),
            best_true_watts,
        }
    }

    /// Whether `node` passes wattwise's filters for `pod` now (a reserved target still fits).
    pub fn admits(&self, pod: &PodRequest, node: usize) -> bool {
        policy::feasible(pod, &self.snapshot, &self.filters).contains(&node)
    }

    /// One pass of the offloader's planner (`offload::plan`, the scheduler's own) over the
    /// nodes as the scheduler holds them and `pods`: (pod, target node) per planned move, in
    /// the plan's order. Every simulated pod counts as owned by a ReplicaSet of its own (the
    /// trace has no owners, and each pod stands for a replica its controller recreates); the
    /// owners of the pods in `cooling_down` are not moved.
    pub fn plan_offload(
        &self,
        pods: &[OffloadCandidate<'_>],
        config: &OffloadConfig,
        cooling_down: &BTreeSet<usize>,
        score: &ScoreConfig,
    ) -> Vec<(usize, usize)> {
        let bound: Vec<BoundPod> = pods
            .iter()
            .map(|c| BoundPod {
                request: c.request.clone(),
                node: self.states[c.node].name.clone(),
                owner: Some(owner_of(c.request)),
                age: Duration::from_secs_f64(c.age_seconds.max(0.0)),
                mirror: false,
                local_storage: false,
                opted_out: false,
            })
            .collect();
        let cooling: BTreeSet<Owner> = pods
            .iter()
            .filter(|c| cooling_down.contains(&c.pod))
            .map(|c| owner_of(c.request))
            .collect();
        let plan = offload::plan(&self.states, &bound, score, config, &cooling);
        let by_uid: HashMap<&str, usize> = pods
            .iter()
            .map(|c| (c.request.uid.as_str(), c.pod))
            .collect();
        plan.moves
            .iter()
            .filter_map(|m| Some((*by_uid.get(m.uid.as_str())?, *self.index.get(&m.to)?)))
            .collect()
    }

    /// Whether the planner would look at pods on `node` under `config`: its level (unknown
    /// taken as the score config does) at or below the candidates' level.
    pub fn weakly_powered(&self, node: usize, config: &OffloadConfig) -> bool {
        config.drains(&self.states[node].power, &self.score)
    }

    fn update_usage(&mut self, node: usize, now: f64) {
        let state = &self.states[node];
        self.snapshot.set_usage(
            node,
            &state.allocatable,
            &state.requested,
            &state.used_host_ports,
        );
        self.refresh_power(node, Some(now));
    }

    fn rewrite(&mut self, node: usize) {
        self.refresh_power_row(node, None);
        self.snapshot.set(node, &self.states[node]);
    }

    fn refresh_power(&mut self, node: usize, now: Option<f64>) {
        self.refresh_power_row(node, now);
        self.snapshot.set_power(node, &self.states[node].power);
    }

    /// The cache's rule (module docs); `now: None` keeps the freshness as it is. The energy
    /// level comes with a fresh report and goes with it, as in the cache (no operator labels
    /// here).
    fn refresh_power_row(&mut self, node: usize, now: Option<f64>) {
        let row = &self.rows[node];
        let state = &mut self.states[node];
        let capacity = state.allocatable.cpu_millicores;
        let fresh = match (now, &row.report) {
            (_, None) => false,
            (Some(now), Some((observed, _))) => now <= observed + self.stale_after,
            (None, Some(_)) => state.power.fresh,
        };
        let power = &mut state.power;
        match row.report.as_ref().filter(|_| fresh) {
            Some((_, report)) => {
                let unmeasured: u64 = row.recent.iter().map(|&(_, cpu, _)| cpu).sum();
                power.curve = report.curve.clone();
                power.utilisation = utilisation(report.utilisation, unmeasured, capacity);
                power.fresh = true;
                power.energy = report.energy;
            }
            None => {
                power.curve = self.default_curve.clone();
                power.utilisation = utilisation(0.0, state.requested.cpu_millicores, capacity);
                power.fresh = false;
                power.energy = None;
            }
        }
        power.capacity_millicores = capacity;
    }

    #[cfg(test)]
    pub fn power(&self, node: usize) -> &NodePower {
        self.snapshot.power(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(u: f64) -> Report {
        Report {
            curve: PowerCurve::linear(50.0, 150.0).unwrap(),
            utilisation: u,
            energy: None,
        }
    }

    #[test]
    fn pods_count_on_top_of_a_report_until_one_observed_a_window_after_them() {
        let cpu = Requests {
            cpu_millicores: 1000,
            memory_mib: 1024,
        };
        let mut view = SchedulerView::new(
            &[(
                "a".into(),
                Capacity {
                    cpu_millicores: 4000,
                    memory_mib: 8192,
                    pods: 110,
                },
            )],
            30.0,
            30.0,
        );
        view.set_ready(0, true);
        assert!(!view.power(0).fresh);
        view.report(0, report(0.25), 0.0);
        assert!(view.power(0).fresh);
        assert_eq!(view.power(0).utilisation, 0.25);
        let pod = pod_request("p", cpu);
        view.bind(0, 7, &pod, 5.0);
        assert_eq!(view.power(0).utilisation, 0.5, "placed after the report");
        view.report(0, report(0.5), 20.0);
        assert_eq!(view.power(0).utilisation, 0.75, "within the window");
        view.report(0, report(0.5), 40.0);
        assert_eq!(view.power(0).utilisation, 0.5, "measured now");
        // Stale: the default curve from requests.
        view.expire(0, 71.0);
        let power = view.power(0);
        assert!(!power.fresh);
        assert_eq!(power.utilisation, 0.25);
        assert_eq!(power.curve.peak_watts(), DEFAULT_PEAK_WATTS);
        view.unbind(0, 7, &pod, 80.0);
        assert_eq!(view.power(0).utilisation, 0.0);
        assert_eq!(view.feasible(&pod), [0]);
        view.set_ready(0, false);
        assert!(view.feasible(&pod).is_empty());
    }

    #[test]
    fn a_price_check_compares_the_predicted_step_with_the_true_one_and_the_truly_cheapest() {
        let capacity = Capacity {
            cpu_millicores: 4000,
            memory_mib: 8192,
            pods: 110,
        };
        let mut view = SchedulerView::new(
            &[("a".into(), capacity), ("b".into(), capacity)],
            30.0,
            30.0,
        );
        for node in 0..2 {
            view.set_ready(node, true);
            view.report(node, report(0.25), 0.0);
        }
        let pod = pod_request(
            "p",
            Requests {
                cpu_millicores: 1000,
                memory_mib: 64,
            },
        );
        let decision = view.schedule(&pod, &ScoreConfig::default()).unwrap();
        // Both report 50 → 150 W; truly, a rises 200 W over its range and b 50 W.
        let truth = |node: usize, u: f64| 50.0 + if node == 0 { 200.0 } else { 50.0 } * u;
        let check = view.price_check(&pod, &decision, truth);
        assert!((check.predicted_watts - 25.0).abs() < 1e-9, "{check:?}");
        let chosen_true = if decision.node == 0 { 50.0 } else { 12.5 };
        assert!((check.true_watts - chosen_true).abs() < 1e-9, "{check:?}");
        assert!((check.best_true_watts - 12.5).abs() < 1e-9, "{check:?}");
    }

    #[test]
    fn a_node_takes_no_more_pods_than_its_max_pods() {
        let capacity = Capacity {
            cpu_millicores: 64_000,
            memory_mib: 65_536,
            pods: 2,
        };
        let mut view = SchedulerView::new(&[("a".into(), capacity)], 30.0, 30.0);
        view.set_ready(0, true);
        let small = Requests {
            cpu_millicores: 100,
            memory_mib: 64,
        };
        for pod in 0..2 {
            let request = pod_request(&format!("p{pod}"), small);
            assert_eq!(view.feasible(&request), [0]);
            view.bind(0, pod, &request, 1.0);
        }
        assert!(
            view.feasible(&pod_request("p2", small)).is_empty(),
            "the third pod"
        );
    }
}
