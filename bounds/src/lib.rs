//! Lower bounds on a cluster's power at an instant, for the simulator's "how much is left to win".
//!
//! Two bounds, both over the servers' true power curves and perfect knowledge of the load:
//!
//! - [`Cluster::always_on`]: every server on; the least total watts at which the servers can run
//!   a total CPU load, the load split freely (fractionally) among them. Exact over the curves'
//!   lower convex envelopes ([`Envelope`]).
//! - [`Cluster::autoscaled`]: servers may be off (0 W); the least watts over every choice of whole
//!   servers on whose CPU (and memory) capacity covers the demand, the work then split freely among
//!   the servers that are on. Exact, by branch and bound over how many servers of each type are on
//!   (`search.rs`).
//!
//! Why they bound every placement: a placement runs each server `i` that hosts pods at some load
//! `x_i` millicores, `Σ x_i` = the demand, `x_i` ≤ its capacity, and draws `curve_i(x_i / c_i)` ≥
//! `envelope_i(x_i)`. The servers that host pods hold their memory requests and CPU load, so their
//! capacities cover the demand. The always-on bound is the least `Σ envelope_i(x_i)` over all such
//! splits with every server counted; the autoscaled bound the least over all on-sets and splits,
//! counting only the servers that are on — boot energy, empty servers kept awake and indivisible
//! pods only add to what a real policy pays.
//!
//! Memory: the autoscaled bound carries memory (the on-servers' memory must cover the running
//! pods' memory requests); the always-on bound has every server on, so memory cannot bind.

mod envelope;
mod search;

use std::collections::HashMap;

use thiserror::Error;
use wattwise_core::PowerCurve;

pub use envelope::{Envelope, Segment};

/// Load left over after a fill that counts as none: rounding, not demand (millicores).
const EPSILON_MILLICORES: f64 = 1e-6;

/// One server as the bounds see it: its true power curve and its capacities.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub curve: PowerCurve,
    pub capacity_millicores: u64,
    pub memory_mib: u64,
}

/// What the running pods need at an instant: their CPU load and their memory requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    pub cpu_millicores: f64,
    pub memory_mib: f64,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum BoundError {
    #[error("the cluster has no servers")]
    EmptyCluster,
    #[error("server {index} has no CPU capacity")]
    NoCapacity { index: usize },
    #[error("{what} is {value}, not a finite number ≥ 0")]
    InvalidDemand { what: &'static str, value: f64 },
    #[error("CPU demand of {demand_millicores} millicores exceeds the cluster's capacity of {capacity_millicores} millicores")]
    CpuBeyondCapacity {
        demand_millicores: f64,
        capacity_millicores: f64,
    },
    #[error(
        "memory demand of {demand_mib} MiB exceeds the cluster's memory of {capacity_mib} MiB"
    )]
    MemoryBeyondCapacity { demand_mib: f64, capacity_mib: f64 },
    #[error("warm start has {got} counts; the cluster has {types} server types")]
    WarmStart { got: usize, types: usize },
}

/// Identical servers (same curve, CPU and memory), which the bounds treat as one type.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerType {
    /// Indices of its servers in the slice the cluster was built from.
    pub servers: Vec<usize>,
    pub capacity_millicores: f64,
    pub memory_mib: f64,
    pub envelope: Envelope,
}

impl ServerType {
    pub fn count(&self) -> u32 {
        self.servers.len() as u32
    }
}

/// The autoscaled bound and the on-set that attains it.
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscaled {
    pub watts: f64,
    /// Servers on, per type (as [`Cluster::types`]); a good warm start for a nearby demand.
    pub on: Vec<u32>,
    /// Relaxations evaluated by the search (its work, for benchmarks).
    pub evaluations: u64,
}

/// A cluster prepared for evaluating bounds at many instants.
#[derive(Debug, Clone)]
pub struct Cluster {
    types: Vec<ServerType>,
    /// Every (type, segment) of every envelope, by increasing slope: the always-on fill order.
    segment_order: Vec<(usize, usize)>,
    cpu_millicores: f64,
    memory_mib: f64,
}

impl Cluster {
    pub fn new(servers: &[Server]) -> Result<Self, BoundError> {
        if servers.is_empty() {
            return Err(BoundError::EmptyCluster);
        }
        let mut types: Vec<ServerType> = Vec::new();
        let mut index: HashMap<(Vec<u64>, u64, u64), usize> = HashMap::new();
        for (i, s) in servers.iter().enumerate() {
            if s.capacity_millicores == 0 {
                return Err(BoundError::NoCapacity { index: i });
            }
            let key = (
                s.curve.points().iter().map(|w| w.to_bits()).collect(),
                s.capacity_millicores,
                s.memory_mib,
            );
            let t = *index.entry(key).or_insert_with(|| {
                types.push(ServerType {
                    servers: Vec::new(),
                    capacity_millicores: s.capacity_millicores as f64,
                    memory_mib: s.memory_mib as f64,
                    envelope: Envelope::of(&s.curve, s.capacity_millicores as f64),
                });
                types.len() - 1
            });
            types[t].servers.push(i);
        }
        let mut segment_order: Vec<(usize, usize)> = types
            .iter()
            .enumerate()
            .flat_map(|(t, ty)| (0..ty.envelope.segments.len()).map(move |j| (t, j)))
            .collect();
        segment_order.sort_by(|&(a, i), &(b, j)| {
            let sa = types[a].envelope.segments[i].slope;
            sa.total_cmp(&types[b].envelope.segments[j].slope)
        });
        let cpu_millicores = types
            .iter()
            .map(|t| t.count() as f64 * t.capacity_millicores)
            .sum();
        let memory_mib = types.iter().map(|t| t.count() as f64 * t.memory_mib).sum();
        Ok(Self {
            types,
            segment_order,
            cpu_millicores,
            memory_mib,
        })
    }

    pub fn types(&self) -> &[ServerType] {
        &self.types
    }

    pub fn cpu_millicores(&self) -> f64 {
        self.cpu_millicores
    }

    pub fn memory_mib(&self) -> f64 {
        self.memory_mib
    }

    /// The least total watts of every server on, running `cpu_millicores` of load between them.
    ///
    /// Each server's envelope `e_i` is convex and piecewise linear, so the problem
    /// `min Σ e_i(x_i)` subject to `Σ x_i = D`, `0 ≤ x_i ≤ c_i` is solved exactly by filling the
    /// segments of all servers cheapest slope first until `D` is placed. Proof: let `x` be that
    /// fill and `λ` the slope of the segment it ends in. Every server with room left at `x_i` has
    /// its next slope ≥ `λ`, and every server with load has its last used slope ≤ `λ`. For any
    /// feasible `y`, convexity gives `e_i(y_i) − e_i(x_i)` ≥ (slope just right of `x_i`)·(y_i − x_i)
    /// ≥ `λ (y_i − x_i)` where `y_i > x_i`, and ≥ (slope just left of `x_i`)·(y_i − x_i) ≥
    /// `λ (y_i − x_i)` where `y_i < x_i`; summing, `Σ e_i(y_i) − Σ e_i(x_i) ≥ λ Σ (y_i − x_i) = 0`.
    ///
    /// O(segments) per call (the order is sorted once in [`Cluster::new`]).
    pub fn always_on(&self, cpu_millicores: f64) -> Result<f64, BoundError> {
        self.check(Demand {
            cpu_millicores,
            memory_mib: 0.0,
        })?;
        let all: Vec<u32> = self.types.iter().map(ServerType::count).collect();
        Ok(self.watts_with(&all, cpu_millicores))
    }

    /// The least total watts over whole servers on or off (off = 0 W) whose capacity covers
    /// `demand` (CPU and memory), the CPU load split freely among the servers on.
    ///
    /// Non-decreasing in both the CPU and the memory demand (more demand only removes on-sets and
    /// raises every fill), so its value at the least demand of a time interval bounds the whole
    /// interval.
    ///
    /// `warm`: servers on per type from a nearby demand (e.g. the previous instant's
    /// [`Autoscaled::on`]); it only speeds the search up, the result is the same without it.
    /// How it is solved, and its cost: `search.rs`.
    pub fn autoscaled(
        &self,
        demand: Demand,
        warm: Option<&[u32]>,
    ) -> Result<Autoscaled, BoundError> {
        self.check(demand)?;
        if let Some(w) = warm {
            if w.len() != self.types.len() {
                return Err(BoundError::WarmStart {
                    got: w.len(),
                    types: self.types.len(),
                });
            }
        }
        Ok(search::autoscaled(self, demand, warm))
    }

    fn check(&self, demand: Demand) -> Result<(), BoundError> {
        for (what, value) in [
            ("CPU demand (millicores)", demand.cpu_millicores),
            ("memory demand (MiB)", demand.memory_mib),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(BoundError::InvalidDemand { what, value });
            }
        }
        if demand.cpu_millicores > self.cpu_millicores {
            return Err(BoundError::CpuBeyondCapacity {
                demand_millicores: demand.cpu_millicores,
                capacity_millicores: self.cpu_millicores,
            });
        }
        if demand.memory_mib > self.memory_mib {
            return Err(BoundError::MemoryBeyondCapacity {
                demand_mib: demand.memory_mib,
                capacity_mib: self.memory_mib,
            });
        }
        Ok(())
    }

    /// Idle watts of `on[t]` servers of each type plus the cheapest-slope-first fill of
    /// `cpu_millicores` over their envelopes; +∞ if they cannot hold it.
    fn watts_with(&self, on: &[u32], cpu_millicores: f64) -> f64 {
        let idle: f64 = self
            .types
            .iter()
            .zip(on)
            .map(|(t, &k)| k as f64 * t.envelope.idle)
            .sum();
        let mut left = cpu_millicores;
        let mut fill = 0.0;
        for &(t, j) in &self.segment_order {
            if left <= EPSILON_MILLICORES {
                break;
            }
            let s = self.types[t].envelope.segments[j];
            let take = (on[t] as f64 * s.length).min(left);
            fill += take * s.slope;
            left -= take;
        }
        if left > EPSILON_MILLICORES {
            return f64::INFINITY;
        }
        idle + fill
    }
}
