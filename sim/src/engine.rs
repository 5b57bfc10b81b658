//! The discrete-event simulation: pod arrivals, starts and completions, agent reports, the
//! policy's periodic work (offloaders' evictions), power management, batteries and brown-outs,
//! and energy accounting that integrates each node's true watts over time (piecewise constant
//! between events, so the integral is exact).
//!
//! Beside it, the lower bounds of `wattwise-bounds` over the same run: for each report period,
//! the bound at the least demand seen in that period (CPU load of started pods, memory requests
//! of bound pods) times the period's length. Both bounds are non-decreasing in the demand, so
//! this stays a lower bound on the energy any placement of that demand needs.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use wattwise_bounds::{BoundError, Demand};
use wattwise_core::{EnergyLevel, PowerCurve};

use crate::agent::Agent;
use crate::cluster::{Cluster, PodPhase, PowerState, SimNode, SimPod};
use crate::policy::{Eviction, Placement};
use crate::report::{LevelHours, PlacementQuality, Sample, SAMPLE_SECONDS};
use crate::scenario::{PowerManagement, Reports};
use crate::view::{pod_request, Capacity, Requests, SchedulerView};
use crate::workload::TracePod;

/// What one run needs besides the policy.
pub struct Setup {
    pub nodes: Vec<SimNode>,
    /// One per node; `None` when the policy reads no reports.
    pub agents: Option<Vec<Agent>>,
    pub pods: Vec<TracePod>,
    /// Each pod's CPU use as a share of its request.
    pub shares: Vec<f64>,
    pub duration: f64,
    pub reports: Reports,
    pub power: PowerManagement,
    pub pod_start_seconds: f64,
    pub seed: u64,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub energy_kwh: f64,
    /// Lower bound with every node on (fractional over the curves' convex envelopes).
    pub bound_always_on_kwh: f64,
    /// Lower bound with nodes free to power off (whole servers, divisible work).
    pub bound_autoscaled_kwh: f64,
    pub mean_watts: f64,
    pub peak_watts: f64,
    pub pods: usize,
    pub pods_never_placed: usize,
    pub mean_pending_seconds: f64,
    pub p99_pending_seconds: f64,
    pub node_hours_on: f64,
    pub node_hours_booting: f64,
    pub node_hours_off: f64,
    /// Battery nodes off because their battery ran empty.
    pub node_hours_browned_out: f64,
    /// What the browned-out nodes would have drawn idle over those hours: IT energy plus this
    /// compares policies at equal availability (a browned-out node draws 0 W, which IT energy
    /// alone rewards).
    pub browned_out_idle_kwh: f64,
    /// Node-hours at each true energy level (battery charge), and on the grid.
    pub node_hours_by_level: LevelHours,
    /// Pods the policy evicted (offloaders).
    pub evictions: u64,
    pub pods_moved_per_hour: f64,
    /// Pods killed by brown-outs (they go back to pending).
    pub brownout_kills: u64,
    pub boots: u64,
    pub decisions: u64,
    /// How well the policy's prices matched the true curves (policies that price pods).
    pub placement: Option<PlacementQuality>,
    /// Every [`SAMPLE_SECONDS`] simulated (for plots).
    pub series: Vec<Sample>,
}

/// Wall-clock figures of a run (not part of the deterministic outcome).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Timing {
    pub wall_seconds: f64,
    pub decisions_per_second: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    End { pod: usize, generation: u32 },
    Started { pod: usize, generation: u32 },
    Booted { node: usize },
    Reports,
    Sample,
    Expire { node: usize },
    PolicyTick,
    PowerTick,
    Arrival { pod: usize },
    Retry,
}

impl Event {
    /// Order of events at the same instant: what frees or changes the cluster first, then what
    /// observes it, then decisions.
    fn rank(self) -> u8 {
        match self {
            Event::End { .. } => 0,
            Event::Started { .. } => 1,
            Event::Booted { .. } => 2,
            Event::Reports => 3,
            Event::Sample => 4,
            Event::Expire { .. } => 5,
            Event::PolicyTick => 6,
            Event::PowerTick => 7,
            Event::Arrival { .. } => 8,
            Event::Retry => 9,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Scheduled {
    at: f64,
    seq: u64,
    event: Event,
}

impl Eq for Scheduled {}

impl Ord for Scheduled {
    /// Earliest first (the heap is a max-heap), then by rank, then in the order scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then(other.event.rank().cmp(&self.event.rank()))
            .then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct Engine<'p> {
    cluster: Cluster,
    agents: Option<Vec<Agent>>,
    view: SchedulerView,
    policy: &'p mut dyn Placement,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    now: f64,
    /// Pods waiting, in arrival order.
    pending: VecDeque<usize>,
    retry_scheduled: bool,
    rng: StdRng,
    noise_rng: StdRng,
    reports: Reports,
    power: PowerManagement,
    pod_start_seconds: f64,
    // Accounting.
    watts: Vec<f64>,
    total_watts: f64,
    last_t: f64,
    energy_joules: f64,
    peak_watts: f64,
    states: [usize; 4],
    state_seconds: [f64; 4],
    /// Idle watts of the nodes browned out now, and their integral: what they would have drawn
    /// kept on without work (an availability-neutral reading of energy).
    browned_out_idle_watts: f64,
    browned_out_idle_joules: f64,
    waits: Vec<f64>,
    evictions: u64,
    brownout_kills: u64,
    boots: u64,
    decisions: u64,
    /// Each node's energy since `node_since` (settled when its watts change), joules.
    node_joules: Vec<f64>,
    node_since: Vec<f64>,
    /// When batteries were last stepped.
    batteries_at: f64,
    level_hours: LevelHours,
    series: Vec<Sample>,
    bounds: Bounds,
}

/// The lower bounds' running integral.
struct Bounds {
    cluster: wattwise_bounds::Cluster,
    /// CPU load of started pods and memory requests of bound pods, now.
    demand: Demand,
    /// The least demand since `since`.
    least: Demand,
    since: f64,
    always_on_joules: f64,
    autoscaled_joules: f64,
    /// Servers on per type at the last evaluation: a warm start for the next.
    warm: Option<Vec<u32>>,
}

impl Bounds {
    fn new(nodes: &[SimNode]) -> Result<Self, BoundError> {
        let servers: Vec<wattwise_bounds::Server> = nodes
            .iter()
            .map(|n| wattwise_bounds::Server {
                // 1 % steps hold the published 10 % levels exactly.
                curve: PowerCurve::sample(101, |u| n.hardware.watts(u))
                    .expect("published curves rise with load"),
                capacity_millicores: n.hardware.cpu_millicores,
                memory_mib: n.hardware.memory_mib,
            })
            .collect();
        let zero = Demand {
            cpu_millicores: 0.0,
            memory_mib: 0.0,
        };
        Ok(Self {
            cluster: wattwise_bounds::Cluster::new(&servers)?,
            demand: zero,
            least: zero,
            since: 0.0,
            always_on_joules: 0.0,
            autoscaled_joules: 0.0,
            warm: None,
        })
    }

    /// The demand changed by (`cpu`, `memory`).
    fn change(&mut self, cpu: f64, memory: f64) {
        self.demand.cpu_millicores = (self.demand.cpu_millicores + cpu).max(0.0);
        self.demand.memory_mib = (self.demand.memory_mib + memory).max(0.0);
        self.least.cpu_millicores = self.least.cpu_millicores.min(self.demand.cpu_millicores);
        self.least.memory_mib = self.least.memory_mib.min(self.demand.memory_mib);
    }

    /// Closes the period ending at `now`.
    fn close(&mut self, now: f64) {
        let dt = now - self.since;
        if dt > 0.0 {
            let least = self.least;
            if let Ok(watts) = self.cluster.always_on(least.cpu_millicores) {
                self.always_on_joules += watts * dt;
            }
            if let Ok(bound) = self.cluster.autoscaled(least, self.warm.as_deref()) {
                self.autoscaled_joules += bound.watts * dt;
                self.warm = Some(bound.on);
            }
        }
        self.since = now;
        self.least = self.demand;
    }
}

fn state_slot(state: PowerState) -> usize {
    match state {
        PowerState::On => 0,
        PowerState::Booting => 1,
        PowerState::Off => 2,
        PowerState::BrownedOut => 3,
    }
}

/// Runs `setup` under `policy`.
pub fn run(setup: Setup, policy: &mut dyn Placement) -> (Outcome, Timing) {
    let started = Instant::now();
    let duration = setup.duration;
    let mut engine = Engine::new(setup, policy);
    engine.run_until(duration);
    let wall = started.elapsed().as_secs_f64();
    let decisions = engine.decisions;
    (
        engine.outcome(duration),
        Timing {
            wall_seconds: wall,
            decisions_per_second: decisions as f64 / wall.max(1e-9),
        },
    )
}

impl<'p> Engine<'p> {
    fn new(setup: Setup, policy: &'p mut dyn Placement) -> Self {
        let capacities: Vec<(String, Capacity)> = setup
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.hardware.capacity()))
            .collect();
        let view = SchedulerView::new(
            &capacities,
            setup.reports.stale_after_seconds,
            setup.reports.start_window_seconds,
        );
        let pods = setup
            .pods
            .into_iter()
            .zip(&setup.shares)
            .map(|(trace, &share)| {
                let requests = Requests {
                    cpu_millicores: trace.cpu_millicores,
                    memory_mib: trace.memory_mib,
                };
                SimPod {
                    request: pod_request(&trace.name, requests),
                    remaining: trace.lifetime,
                    trace,
                    share,
                    requests,
                    phase: PodPhase::Done,
                    generation: 0,
                }
            })
            .collect::<Vec<_>>();
        let nodes = setup.nodes.len();
        let nodes_for_bounds = setup.nodes.clone();
        let mut engine = Engine {
            cluster: Cluster {
                nodes: setup.nodes,
                pods,
            },
            agents: setup.agents.filter(|_| policy.reads_reports()),
            view,
            policy,
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0.0,
            pending: VecDeque::new(),
            retry_scheduled: false,
            rng: StdRng::seed_from_u64(setup.seed),
            noise_rng: StdRng::seed_from_u64(setup.seed ^ crate::stream::SENSOR_NOISE),
            reports: setup.reports,
            power: setup.power,
            pod_start_seconds: setup.pod_start_seconds,
            watts: vec![0.0; nodes],
            total_watts: 0.0,
            last_t: 0.0,
            energy_joules: 0.0,
            peak_watts: 0.0,
            states: [0; 4],
            state_seconds: [0.0; 4],
            browned_out_idle_watts: 0.0,
            browned_out_idle_joules: 0.0,
            waits: Vec::new(),
            evictions: 0,
            brownout_kills: 0,
            boots: 0,
            decisions: 0,
            node_joules: vec![0.0; nodes],
            node_since: vec![0.0; nodes],
            batteries_at: 0.0,
            level_hours: LevelHours::default(),
            series: Vec::new(),
            bounds: Bounds::new(&nodes_for_bounds).expect("validated nodes"),
        };
        engine.start();
        engine
    }
}

impl Engine<'_> {
    fn schedule(&mut self, at: f64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    fn start(&mut self) {
        for node in 0..self.cluster.nodes.len() {
            self.states[state_slot(self.cluster.nodes[node].state)] += 1;
            self.view.set_ready(node, self.cluster.nodes[node].ready());
            self.update_watts(node);
        }
        for pod in 0..self.cluster.pods.len() {
            let at = self.cluster.pods[pod].trace.arrival;
            self.schedule(at, Event::Arrival { pod });
        }
        self.schedule(0.0, Event::Reports);
        self.schedule(0.0, Event::Sample);
        if self.policy.tick_seconds().is_some() {
            self.schedule(0.0, Event::PolicyTick);
        }
        if let PowerManagement::Autoscaler { scan_seconds, .. } = self.power {
            self.schedule(scan_seconds, Event::PowerTick);
        }
    }

    fn run_until(&mut self, end: f64) {
        while let Some(next) = self.queue.peek().copied() {
            if next.at > end {
                break;
            }
            self.queue.pop();
            self.advance(next.at);
            self.handle(next.event);
        }
        self.advance(end);
        self.step_batteries();
        self.bounds.close(end);
    }

    /// Integrates power and node states up to `t`.
    fn advance(&mut self, t: f64) {
        let dt = t - self.last_t;
        if dt > 0.0 {
            self.energy_joules += self.total_watts * dt;
            self.browned_out_idle_joules += self.browned_out_idle_watts * dt;
            self.peak_watts = self.peak_watts.max(self.total_watts);
            for (seconds, count) in self.state_seconds.iter_mut().zip(self.states) {
                *seconds += count as f64 * dt;
            }
            self.last_t = t;
        }
        self.now = t;
    }

    /// The node's true watts changed (load or power state).
    fn update_watts(&mut self, node: usize) {
        let n = &self.cluster.nodes[node];
        let watts = match (n.state, &self.power) {
            (PowerState::BrownedOut, _) => 0.0,
            (PowerState::On, _) => n.hardware.watts(n.utilisation()),
            (
                PowerState::Booting,
                PowerManagement::Autoscaler {
                    boot_power_of_peak, ..
                },
            ) => boot_power_of_peak * n.hardware.peak_watts(),
            (PowerState::Off, PowerManagement::Autoscaler { off_watts, .. }) => *off_watts,
            (_, PowerManagement::AlwaysOn) => 0.0,
        };
        self.node_joules[node] += self.watts[node] * (self.now - self.node_since[node]);
        self.node_since[node] = self.now;
        self.total_watts += watts - self.watts[node];
        self.watts[node] = watts;
    }

    fn set_state(&mut self, node: usize, state: PowerState) {
        let n = &mut self.cluster.nodes[node];
        let idle = n.hardware.watts(0.0);
        if n.state == PowerState::BrownedOut {
            self.browned_out_idle_watts -= idle;
        }
        if state == PowerState::BrownedOut {
            self.browned_out_idle_watts += idle;
        }
        self.states[state_slot(n.state)] -= 1;
        self.states[state_slot(state)] += 1;
        n.state = state;
        let ready = n.ready();
        self.view.set_ready(node, ready);
        self.update_watts(node);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrival { pod } => {
                self.cluster.pods[pod].phase = PodPhase::Pending { since: self.now };
                if !self.try_place(pod) {
                    self.pending.push_back(pod);
                }
            }
            Event::Started { pod, generation } => {
                let p = &self.cluster.pods[pod];
                if let PodPhase::Bound {
                    node,
                    at,
                    started: false,
                } = p.phase
                {
                    if p.generation == generation {
                        let load = p.load_millicores();
                        self.cluster.pods[pod].phase = PodPhase::Bound {
                            node,
                            at,
                            started: true,
                        };
                        self.cluster.nodes[node].load_millicores += load;
                        self.bounds.change(load, 0.0);
                        self.update_watts(node);
                    }
                }
            }
            Event::End { pod, generation } => {
                if self.cluster.pods[pod].generation == generation
                    && matches!(self.cluster.pods[pod].phase, PodPhase::Bound { .. })
                {
                    self.unbind(pod);
                    self.cluster.pods[pod].phase = PodPhase::Done;
                    self.want_retry();
                }
            }
            Event::Booted { node } => {
                if self.cluster.nodes[node].state != PowerState::Booting {
                    return; // browned out while booting
                }
                self.set_state(node, PowerState::On);
                self.cluster.nodes[node].empty_since = self.now;
                self.report(node);
                self.want_retry();
            }
            Event::Reports => {
                self.step_batteries();
                for node in 0..self.cluster.nodes.len() {
                    if self.cluster.nodes[node].ready() {
                        self.report(node);
                    }
                }
                self.bounds.close(self.now);
                let period = self.reports.period_seconds;
                self.schedule(self.now + period, Event::Reports);
            }
            Event::Sample => {
                self.sample();
                self.schedule(self.now + SAMPLE_SECONDS, Event::Sample);
            }
            Event::Expire { node } => self.view.expire(node, self.now),
            Event::PolicyTick => {
                let evictions =
                    self.policy
                        .tick(self.now, &self.cluster, &self.view, &mut self.rng);
                self.evict(&evictions);
                self.want_retry();
                let period = self.policy.tick_seconds().expect("a ticking policy");
                self.schedule(self.now + period, Event::PolicyTick);
            }
            Event::PowerTick => self.autoscale(),
            Event::Retry => {
                self.retry_scheduled = false;
                self.retry_pending();
            }
        }
    }

    /// Evicts `evictions`' pods. Their controllers recreate them at once; a replacement whose
    /// node was reserved is bound there if the node still passes wattwise's filters for it (the
    /// scheduler honours the reservation), otherwise it waits like any pending pod.
    fn evict(&mut self, evictions: &[Eviction]) {
        let mut evicted = Vec::with_capacity(evictions.len());
        for e in evictions {
            if matches!(self.cluster.pods[e.pod].phase, PodPhase::Bound { .. }) {
                self.unbind(e.pod);
                self.evictions += 1;
                self.cluster.pods[e.pod].phase = PodPhase::Pending { since: self.now };
                evicted.push(*e);
            }
        }
        for e in evicted {
            match e.to {
                Some(to) if self.view.admits(&self.cluster.pods[e.pod].request, to) => {
                    self.bind(e.pod, to)
                }
                _ => self.pending.push_back(e.pod),
            }
        }
    }

    /// Steps every battery to now: the panel's energy in, the node's true energy out (exact:
    /// watts are constant between the changes `update_watts` settles). A battery that ran
    /// empty browns its node out; a browned-out node whose battery has recovered is on again.
    /// Node-hours per true level count each node at its level when the step began.
    fn step_batteries(&mut self) {
        let (since, now) = (self.batteries_at, self.now);
        self.batteries_at = now;
        let hours = (now - since) / 3600.0;
        for node in 0..self.cluster.nodes.len() {
            let used = self.node_joules[node] + self.watts[node] * (now - self.node_since[node]);
            self.node_joules[node] = 0.0;
            self.node_since[node] = now;
            let n = &mut self.cluster.nodes[node];
            let Some(storage) = n.storage.as_mut() else {
                self.level_hours.add(None, hours);
                continue;
            };
            let battery = &mut storage.battery;
            self.level_hours
                .add(Some(EnergyLevel::from_percent(battery.percent())), hours);
            let solar = storage
                .sun
                .as_ref()
                .map_or(0.0, |sun| sun.joules(since, now));
            battery.step(solar, used);
            match n.state {
                PowerState::On | PowerState::Booting if battery.empty() => self.brown_out(node),
                PowerState::BrownedOut if battery.recovered() => {
                    n.empty_since = now;
                    self.set_state(node, PowerState::On);
                    self.want_retry();
                }
                _ => {}
            }
        }
    }

    /// Node `node`'s battery is empty: it stops, its pods are killed and wait to be placed
    /// again (their work so far kept, as for an eviction).
    fn brown_out(&mut self, node: usize) {
        let pods = self.cluster.nodes[node].pods.clone();
        for pod in pods {
            self.unbind(pod);
            self.cluster.pods[pod].phase = PodPhase::Pending { since: self.now };
            self.pending.push_back(pod);
            self.brownout_kills += 1;
        }
        self.set_state(node, PowerState::BrownedOut);
        self.want_retry();
    }

    fn sample(&mut self) {
        let mut sample = Sample {
            t_seconds: self.now,
            watts: self.total_watts,
            energy_kwh: self.energy_joules / 3.6e6,
            well_powered: 0,
            vulnerable: 0,
            low_powered: 0,
            powerless: 0,
            grid: 0,
            browned_out: 0,
        };
        for n in &self.cluster.nodes {
            let level = n
                .storage
                .as_ref()
                .map(|s| EnergyLevel::from_percent(s.battery.percent()));
            *match level {
                Some(EnergyLevel::WellPowered) => &mut sample.well_powered,
                Some(EnergyLevel::Vulnerable) => &mut sample.vulnerable,
                Some(EnergyLevel::LowPowered) => &mut sample.low_powered,
                Some(EnergyLevel::Powerless) => &mut sample.powerless,
                None => &mut sample.grid,
            } += 1;
            if n.state == PowerState::BrownedOut {
                sample.browned_out += 1;
            }
        }
        self.series.push(sample);
    }

    /// A pass over the waiting pods soon (kube moves unschedulable pods back on cluster events,
    /// after a short backoff).
    fn want_retry(&mut self) {
        if !self.retry_scheduled && !self.pending.is_empty() {
            self.retry_scheduled = true;
            self.schedule(self.now + 1.0, Event::Retry);
        }
    }

    fn retry_pending(&mut self) {
        // A pod that fits nowhere rules out every later pod requesting at least as much.
        let mut failed: Option<(u64, u64)> = None;
        let waiting = std::mem::take(&mut self.pending);
        for pod in waiting {
            if !matches!(self.cluster.pods[pod].phase, PodPhase::Pending { .. }) {
                continue;
            }
            let r = self.cluster.pods[pod].requests;
            let dominated =
                failed.is_some_and(|(cpu, mem)| r.cpu_millicores >= cpu && r.memory_mib >= mem);
            if dominated || !self.try_place(pod) {
                if !dominated {
                    failed = Some(failed.map_or((r.cpu_millicores, r.memory_mib), |(c, m)| {
                        (c.min(r.cpu_millicores), m.min(r.memory_mib))
                    }));
                }
                self.pending.push_back(pod);
            }
        }
    }

    fn try_place(&mut self, pod: usize) -> bool {
        self.decisions += 1;
        let choice = self.policy.place(
            &self.cluster.pods[pod],
            &self.cluster,
            &self.view,
            &mut self.rng,
        );
        match choice {
            Some(node) => {
                self.bind(pod, node);
                true
            }
            None => false,
        }
    }

    fn bind(&mut self, pod: usize, node: usize) {
        let now = self.now;
        let p = &mut self.cluster.pods[pod];
        if let PodPhase::Pending { since } = p.phase {
            self.waits.push(now - since);
        }
        p.generation += 1;
        p.phase = PodPhase::Bound {
            node,
            at: now,
            started: false,
        };
        let (generation, remaining, non_zero, requests) =
            (p.generation, p.remaining, p.non_zero(), p.requests);
        let n = &mut self.cluster.nodes[node];
        n.pods.push(pod);
        n.requested = add(n.requested, requests, 1);
        n.non_zero = add(n.non_zero, non_zero, 1);
        self.bounds.change(0.0, requests.memory_mib as f64);
        self.view
            .bind(node, pod, &self.cluster.pods[pod].request, now);
        self.schedule(
            now + self.pod_start_seconds,
            Event::Started { pod, generation },
        );
        if let Some(remaining) = remaining {
            self.schedule(now + remaining, Event::End { pod, generation });
        }
    }

    /// Takes a bound pod off its node (finished or evicted). An evicted pod keeps the work it
    /// has left: its remaining time loses only what it ran, and it starts up again wherever it
    /// is placed next, so a restart costs time, not work.
    fn unbind(&mut self, pod: usize) {
        let now = self.now;
        let ran_since = self.pod_start_seconds;
        let p = &mut self.cluster.pods[pod];
        let PodPhase::Bound { node, at, started } = p.phase else {
            return;
        };
        p.remaining = p
            .remaining
            .map(|r| (r - (now - at - ran_since).max(0.0)).max(0.0));
        let (load, non_zero, requests) = (p.load_millicores(), p.non_zero(), p.requests);
        let n = &mut self.cluster.nodes[node];
        n.pods.retain(|&q| q != pod);
        n.requested = add(n.requested, requests, -1);
        n.non_zero = add(n.non_zero, non_zero, -1);
        if started {
            n.load_millicores = (n.load_millicores - load).max(0.0);
        }
        let cpu = if started { -load } else { 0.0 };
        self.bounds.change(cpu, -(requests.memory_mib as f64));
        if n.pods.is_empty() {
            n.empty_since = now;
        }
        self.view
            .unbind(node, pod, &self.cluster.pods[pod].request, now);
        self.update_watts(node);
    }

    /// Node `node`'s agent reports now.
    fn report(&mut self, node: usize) {
        let Some(agents) = self.agents.as_mut() else {
            return;
        };
        let n = &self.cluster.nodes[node];
        let u = n.utilisation();
        let report = agents[node].cycle(
            u,
            n.hardware.watts(u),
            n.storage.as_ref().map(|s| s.battery.percent()),
            self.reports.sensor_noise,
            &mut self.noise_rng,
        );
        self.view.report(node, report, self.now);
        if self.reports.period_seconds > self.reports.stale_after_seconds {
            let at = self.now + self.reports.stale_after_seconds + 1e-6;
            self.schedule(at, Event::Expire { node });
        }
    }

    /// The autoscaler: empty nodes past their time power off; pending pods that fit on no
    /// running or booting node boot off nodes (a random one that fits, as cluster-autoscaler's
    /// default `random` expander picks).
    fn autoscale(&mut self) {
        let PowerManagement::Autoscaler {
            empty_minutes,
            boot_seconds,
            scan_seconds,
            ..
        } = self.power
        else {
            return;
        };
        for node in 0..self.cluster.nodes.len() {
            let n = &self.cluster.nodes[node];
            if n.ready() && n.pods.is_empty() && self.now - n.empty_since >= empty_minutes * 60.0 {
                self.set_state(node, PowerState::Off);
            }
        }
        // Room on booting nodes, as the pods waiting for them will take it.
        let mut room: Vec<(usize, Requests)> = (0..self.cluster.nodes.len())
            .filter(|&i| self.cluster.nodes[i].state == PowerState::Booting)
            .map(|i| (i, self.free(i)))
            .collect();
        let mut off: Vec<usize> = (0..self.cluster.nodes.len())
            .filter(|&i| self.cluster.nodes[i].state == PowerState::Off)
            .collect();
        for &pod in &self.pending {
            let r = self.cluster.pods[pod].requests;
            let fits = |free: &Requests| {
                free.cpu_millicores >= r.cpu_millicores && free.memory_mib >= r.memory_mib
            };
            if let Some((_, free)) = room.iter_mut().find(|(_, free)| fits(free)) {
                *free = add(*free, r, -1);
                continue;
            }
            let candidates: Vec<usize> = (0..off.len())
                .filter(|&k| fits(&self.capacity(off[k])))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let k = candidates[rand::Rng::random_range(&mut self.rng, 0..candidates.len())];
            let node = off.swap_remove(k);
            room.push((node, add(self.capacity(node), r, -1)));
        }
        for (node, _) in room {
            if self.cluster.nodes[node].state == PowerState::Off {
                self.set_state(node, PowerState::Booting);
                self.boots += 1;
                self.schedule(self.now + boot_seconds, Event::Booted { node });
            }
        }
        self.schedule(self.now + scan_seconds, Event::PowerTick);
    }

    fn capacity(&self, node: usize) -> Requests {
        let h = &self.cluster.nodes[node].hardware;
        Requests {
            cpu_millicores: h.cpu_millicores,
            memory_mib: h.memory_mib,
        }
    }

    fn free(&self, node: usize) -> Requests {
        add(self.capacity(node), self.cluster.nodes[node].requested, -1)
    }

    fn outcome(mut self, duration: f64) -> Outcome {
        self.waits.sort_by(f64::total_cmp);
        let mean_wait = if self.waits.is_empty() {
            0.0
        } else {
            self.waits.iter().sum::<f64>() / self.waits.len() as f64
        };
        let p99 = self
            .waits
            .get(((self.waits.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0);
        let arrived = self
            .cluster
            .pods
            .iter()
            .filter(|p| p.trace.arrival <= duration)
            .count();
        let never_placed = self
            .cluster
            .pods
            .iter()
            .filter(|p| p.trace.arrival <= duration && p.generation == 0)
            .count();
        Outcome {
            energy_kwh: self.energy_joules / 3.6e6,
            bound_always_on_kwh: self.bounds.always_on_joules / 3.6e6,
            bound_autoscaled_kwh: self.bounds.autoscaled_joules / 3.6e6,
            mean_watts: self.energy_joules / duration,
            peak_watts: self.peak_watts,
            pods: arrived,
            pods_never_placed: never_placed,
            mean_pending_seconds: mean_wait,
            p99_pending_seconds: p99,
            node_hours_on: self.state_seconds[0] / 3600.0,
            node_hours_booting: self.state_seconds[1] / 3600.0,
            node_hours_off: self.state_seconds[2] / 3600.0,
            node_hours_browned_out: self.state_seconds[3] / 3600.0,
            browned_out_idle_kwh: self.browned_out_idle_joules / 3.6e6,
            node_hours_by_level: self.level_hours,
            evictions: self.evictions,
            pods_moved_per_hour: self.evictions as f64 / (duration / 3600.0),
            brownout_kills: self.brownout_kills,
            boots: self.boots,
            decisions: self.decisions,
            placement: self.policy.placement_quality(),
            series: self.series,
        }
    }
}

/// `a + sign × b`, per resource, floored at zero.
fn add(a: Requests, b: Requests, sign: i8) -> Requests {
    if sign >= 0 {
        Requests {
            cpu_millicores: a.cpu_millicores + b.cpu_millicores,
            memory_mib: a.memory_mib + b.memory_mib,
        }
    } else {
        Requests {
            cpu_millicores: a.cpu_millicores.saturating_sub(b.cpu_millicores),
            memory_mib: a.memory_mib.saturating_sub(b.memory_mib),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::Hardware;
    use crate::cluster::KUBELET_MAX_PODS;
    use crate::policy::PolicyName;
    use crate::specpower::by_result_id;

    /// A Fujitsu TX1320 M4: 10 W idle, 30 W at 50 %, 71.7 W at 100 %; 12 threads.
    fn node() -> SimNode {
        let spec = Arc::new(by_result_id("power_ssj2008-20181125-00869").unwrap());
        let hardware = Hardware {
            spec,
            inlet_celsius: 23.0,
            cpu_millicores: 12_000,
            memory_mib: 16_384,
            max_pods: KUBELET_MAX_PODS,
        };
        SimNode::new("n".into(), hardware)
    }

    /// One pod of 6,000 m using all of it (50 % of the node) from `arrival` for 200 s.
    fn setup(arrival: f64, power: PowerManagement) -> Setup {
        Setup {
            nodes: vec![node()],
            agents: None,
            pods: vec![TracePod {
                name: "p".into(),
                cpu_millicores: 6000,
                memory_mib: 1024,
                arrival,
                lifetime: Some(200.0),
            }],
            shares: vec![1.0],
            duration: 1000.0,
            reports: Reports::default(),
            power,
            pod_start_seconds: 0.0,
            seed: 1,
        }
    }

    fn joules(outcome: &Outcome) -> f64 {
        outcome.energy_kwh * 3.6e6
    }

    #[test]
    fn energy_integrates_true_watts_always_on() {
        let mut policy = PolicyName::KubeDefault.build();
        let (o, _) = run(setup(100.0, PowerManagement::AlwaysOn), policy.as_mut());
        // 100 s idle, 200 s at 50 %, 700 s idle.
        let expected = 10.0 * 100.0 + 30.0 * 200.0 + 10.0 * 700.0;
        assert!((joules(&o) - expected).abs() < 1e-6, "{}", joules(&o));
        assert!((o.mean_watts - 14.0).abs() < 1e-9);
        assert_eq!(o.peak_watts, 30.0);
        assert_eq!((o.pods, o.pods_never_placed, o.decisions), (1, 0, 1));
        assert_eq!(o.mean_pending_seconds, 0.0);
        assert!((o.node_hours_on - 1000.0 / 3600.0).abs() < 1e-12);
        // The bounds take each 10 s report period at its least demand: the periods the pod
        // arrives and leaves in count as idle. Always on: 10 W idle, 30 W at 50 % (a vertex of
        // the curve's convex envelope); autoscaled: 0 W without demand.
        let always_on = 10.0 * 110.0 + 30.0 * 180.0 + 10.0 * 710.0;
        assert!((o.bound_always_on_kwh * 3.6e6 - always_on).abs() < 1e-6);
        assert!((o.bound_autoscaled_kwh * 3.6e6 - 30.0 * 180.0).abs() < 1e-6);
        assert!(o.bound_always_on_kwh <= o.energy_kwh);
    }

    #[test]
    fn energy_integrates_power_off_boot_and_work_autoscaled() {
        let power = PowerManagement::Autoscaler {
            empty_minutes: 5.0,
            boot_seconds: 60.0,
            boot_power_of_peak: 1.0,
            off_watts: 2.0,
            scan_seconds: 10.0,
        };
        let mut policy = PolicyName::KubeDefault.build();
        let (o, _) = run(setup(400.0, power), policy.as_mut());
        // Idle until the scan at 300 s finds it empty for 5 minutes; off (2 W) until the scan
        // at 410 s sees the pod that arrived at 400 s; boots at peak watts until 470 s; the
        // retry a second later binds the pod, which runs 200 s; empty from 671 s, off at the
        // scan at 980 s.
        let expected = 10.0 * 300.0
            + 2.0 * 110.0
            + 71.7 * 60.0
            + 10.0 * 1.0
            + 30.0 * 200.0
            + 10.0 * 309.0
            + 2.0 * 20.0;
        assert!(
            (joules(&o) - expected).abs() < 1e-6,
            "{} vs {expected}",
            joules(&o)
        );
        assert_eq!(o.peak_watts, 71.7);
        assert_eq!((o.boots, o.pods_never_placed), (1, 0));
        assert!((o.mean_pending_seconds - 71.0).abs() < 1e-9);
        assert!((o.node_hours_off - 130.0 / 3600.0).abs() < 1e-12);
        assert!((o.node_hours_booting - 60.0 / 3600.0).abs() < 1e-12);
    }
}

#[cfg(test)]
mod battery_tests {
    use std::sync::Arc;

    use super::*;
    use crate::agent::{Agent, Models};
    use crate::cluster::Hardware;
    use crate::cluster::KUBELET_MAX_PODS;
    use crate::policy::PolicyName;
    use crate::solar::{Battery, Storage, Sun};
    use crate::specpower::by_result_id;

    /// Fujitsu TX1320 M4: 10 W idle, 30 W at 50 %; 12 threads.
    const SMALL: &str = "power_ssj2008-20181125-00869";
    /// Tyan 2S of 2012: 16 threads, 61 → 256 W.
    const OLD: &str = "power_ssj2008-20121113-00584";

    fn node(name: &str, spec: &str, storage: Option<Storage>) -> SimNode {
        let spec = Arc::new(by_result_id(spec).unwrap());
        let hardware = Hardware {
            cpu_millicores: spec.threads as u64 * 1000,
            memory_mib: 16_384,
            max_pods: KUBELET_MAX_PODS,
            spec,
            inlet_celsius: 23.0,
        };
        let mut node = SimNode::new(name.into(), hardware);
        node.storage = storage;
        node
    }

    fn battery(capacity_wh: f64, percent: f64, sun: Option<Sun>) -> Option<Storage> {
        Some(Storage {
            battery: Battery {
                capacity_wh,
                charge_wh: capacity_wh * percent / 100.0,
                restart_percent: 20.0,
            },
            sun: sun.map(Arc::new),
        })
    }

    /// One pod of 6,000 m, fully busy, from 0 until the end.
    fn setup(nodes: Vec<SimNode>, duration: f64) -> Setup {
        Setup {
            nodes,
            agents: None,
            pods: vec![TracePod {
                name: "p".into(),
                cpu_millicores: 6000,
                memory_mib: 1024,
                arrival: 0.0,
                lifetime: None,
            }],
            shares: vec![1.0],
            duration,
            reports: Reports {
                sensor_noise: 0.0,
                ..Reports::default()
            },
            power: PowerManagement::AlwaysOn,
            pod_start_seconds: 0.0,
            seed: 1,
        }
    }

    fn agents(nodes: &[SimNode]) -> Vec<Agent> {
        let mut models = Models::default();
        let mut rng = StdRng::seed_from_u64(1);
        nodes
            .iter()
            .map(|n| {
                let h = &n.hardware;
                let model = models
                    .for_server(&Reports::default().model, &h.spec, true)
                    .unwrap();
                let mut agent = Agent::new(&n.name, model, h.inlet_celsius).unwrap();
                agent.warm_up(|u| h.watts(u), 0.0, &mut rng);
                agent
            })
            .collect()
    }

    fn node_of(engine: &Engine, pod: usize) -> Option<usize> {
        match engine.cluster.pods[pod].phase {
            PodPhase::Bound { node, .. } => Some(node),
            _ => None,
        }
    }

    #[test]
    fn a_battery_drains_browns_its_node_out_and_recovers_in_the_sun() {
        // 10.1 Wh at 50 % (5.05 Wh); a 36 W panel, dark in even hours, lit in odd ones.
        let sun = Sun::new(&[0.0, 1000.0], 36.0, 0.0);
        let nodes = vec![node("n", SMALL, battery(10.1, 50.0, Some(sun)))];
        let mut policy = PolicyName::KubeDefault.build();
        let mut engine = Engine::new(setup(nodes, 7200.0), policy.as_mut());
        engine.run_until(7200.0);
        // 30 W from 0 empties 5.05 Wh at 606 s: the step ending at 610 s finds it empty (the
        // charge clamped at 0), kills the pod and browns the node out (0 W). From 3600 s the
        // panel gives 36 W: 20 % (2.02 Wh) is back at the step ending 3810 s (2.1 Wh); the node
        // is on, the retry a second later places the pod again, which runs at 30 W under a
        // 36 W panel to the end.
        let b = &engine.cluster.nodes[0].storage.as_ref().unwrap().battery;
        let charge = 2.1 + (36.0 * 3390.0 - 10.0 * 1.0 - 30.0 * 3389.0) / 3600.0;
        assert!(
            (b.charge_wh - charge).abs() < 1e-9,
            "{} vs {charge}",
            b.charge_wh
        );
        assert_eq!(node_of(&engine, 0), Some(0));
        let o = engine.outcome(7200.0);
        let expected = 30.0 * 610.0 + 10.0 * 1.0 + 30.0 * 3389.0;
        assert!((o.energy_kwh * 3.6e6 - expected).abs() < 1e-6);
        assert_eq!((o.brownout_kills, o.evictions), (1, 0));
        assert!((o.node_hours_browned_out - 3200.0 / 3600.0).abs() < 1e-9);
        // Idle at 10 W over those 3,200 s.
        assert!((o.browned_out_idle_kwh * 3.6e6 - 10.0 * 3200.0).abs() < 1e-6);
        assert!((o.mean_pending_seconds - (3811.0 - 610.0) / 2.0).abs() < 1e-9);
        // True levels by the charge at each step's start: below 15 % (1.515 Wh) from the step
        // starting at 430 s (1.467 Wh) until the one starting at 3760 s (1.6 Wh).
        let h = o.node_hours_by_level;
        assert!((h.powerless - 3330.0 / 3600.0).abs() < 1e-9, "{h:?}");
        let total = h.well_powered + h.vulnerable + h.low_powered + h.powerless;
        assert!((total - 2.0).abs() < 1e-9 && h.grid == 0.0, "{h:?}");
        // One sample a minute, from 0 to 7200 s.
        assert_eq!(o.series.len(), 121);
        let at = |t: f64| o.series.iter().find(|s| s.t_seconds == t).unwrap();
        assert_eq!((at(1200.0).browned_out, at(1200.0).powerless), (1, 1));
        assert_eq!(at(1200.0).watts, 0.0);
        assert_eq!(at(4200.0).browned_out, 0);
        assert!((at(7200.0).energy_kwh - o.energy_kwh).abs() < 1e-12);
    }

    /// A 20 Wh battery node, cheaper per core than the old grid node, takes the pod; at 30 W it
    /// falls below 38 % (the agent's hysteresis under 40 %) after about 1,490 s.
    fn draining(offloader: bool) -> (Outcome, Option<usize>, PodPhase) {
        let nodes = vec![
            node("battery", SMALL, battery(20.0, 100.0, None)),
            node("grid", OLD, None),
        ];
        let mut setup = setup(nodes, 3000.0);
        setup.agents = Some(agents(&setup.nodes));
        let name = if offloader {
            PolicyName::Wattwise
        } else {
            PolicyName::WattwiseNoOffload
        };
        let mut policy = name.build();
        let mut engine = Engine::new(setup, policy.as_mut());
        engine.run_until(3000.0);
        let (node, phase) = (node_of(&engine, 0), engine.cluster.pods[0].phase);
        (engine.outcome(3000.0), node, phase)
    }

    #[test]
    fn the_offloader_moves_a_pod_off_a_draining_battery_before_it_browns_out() {
        let (o, node, phase) = draining(true);
        assert_eq!(node, Some(1), "moved to the grid node");
        assert_eq!((o.evictions, o.brownout_kills), (1, 0));
        // Moved at the first pass after the agent reported low-powered, and bound at once on
        // the node the planner reserved (no pending time).
        let PodPhase::Bound { at, .. } = phase else {
            unreachable!()
        };
        assert!((1488.0..1488.0 + 50.0).contains(&at), "moved at {at}");
        assert_eq!(o.mean_pending_seconds, 0.0);
        assert_eq!(o.node_hours_browned_out, 0.0);

        // Without the offloader the pod stays until the battery is empty (2,400 s).
        let (o, node, _) = draining(false);
        assert_eq!((o.evictions, o.brownout_kills), (0, 1));
        assert_eq!(node, Some(1));
        assert!(o.node_hours_browned_out > 0.0);
    }

    /// Evicts pod 0 once, towards node `to`.
    struct MoveTo(usize);

    impl Placement for MoveTo {
        fn tick_seconds(&self) -> Option<f64> {
            Some(100.0)
        }

        fn tick(
            &mut self,
            now: f64,
            _: &Cluster,
            _: &SchedulerView,
            _: &mut StdRng,
        ) -> Vec<Eviction> {
            if now == 100.0 {
                vec![Eviction {
                    pod: 0,
                    to: Some(self.0),
                }]
            } else {
                Vec::new()
            }
        }

        /// Always the first node that passes kube's filters.
        fn place(
            &mut self,
            pod: &SimPod,
            _: &Cluster,
            view: &SchedulerView,
            _: &mut StdRng,
        ) -> Option<usize> {
            view.feasible(&pod.request).first().copied()
        }
    }

    #[test]
    fn an_evicted_pod_is_bound_on_its_reserved_node_if_it_still_fits() {
        let nodes = || {
            vec![
                node("a", SMALL, None),
                node("b", SMALL, None),
                node("c", SMALL, None),
            ]
        };
        let mut policy = MoveTo(2);
        let mut engine = Engine::new(setup(nodes(), 200.0), &mut policy);
        engine.run_until(200.0);
        assert_eq!(
            node_of(&engine, 0),
            Some(2),
            "the reserved node, not `place`'s"
        );
        assert_eq!(engine.evictions, 1);

        // A reserved node that no longer fits (4 cores, the pod asks 6): scheduled as any pod,
        // back on the first node that fits.
        let mut small = nodes();
        small[2].hardware.cpu_millicores = 4000;
        let mut policy = MoveTo(2);
        let mut engine = Engine::new(setup(small, 200.0), &mut policy);
        engine.run_until(200.0);
        assert_eq!(node_of(&engine, 0), Some(0));
        assert_eq!(engine.evictions, 1);
    }
}
