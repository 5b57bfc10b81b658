//! The autoscaled bound: which whole servers to have on, by branch and bound over counts per type.
//!
//! **Problem.** Servers of type `t` (`N_t` identical ones: capacity `c_t`, memory `m_t`, envelope
//! idle `p_t` plus convex segments) may be on or off. Choose `k_t ∈ 0..=N_t` on with
//! `Σ k_t c_t ≥ D` and `Σ k_t m_t ≥ M`, minimising `Φ(k) = Σ k_t p_t + Fill(k, D)`, where
//! `Fill` places the load `D` over the segments of the servers on, cheapest slope first (exact for
//! a given on-set: `Cluster::always_on`'s proof, on the servers that are on).
//!
//! **Relaxation** (the bound at a search node, where each `k_t` is known to lie in `lo_t..=hi_t`):
//! let `k_t` be real. With a multiplier `μ ≥ 0` on the memory constraint, the LP
//! `min μ M + Σ_t [k_t (p_t − μ m_t) + Σ_j s_tj y_tj]` over `lo ≤ k ≤ hi`, `0 ≤ y_tj ≤ k_t ℓ_tj`,
//! `Σ y = D` is ≤ `Φ(k)` for every integral `k` in the box that meets the memory constraint (weak
//! duality: the added term `μ (M − Σ k m)` is ≤ 0 there). It separates by type into a convex
//! piecewise-linear cost of the load `x_t` the type takes, and is then solved exactly by the same
//! cheapest-slope-first fill over every type's pieces:
//! - `p′_t = p_t − μ m_t ≤ 0`: a server on pays for itself, so `k_t = hi_t`; pieces are the
//!   segments with multiplicity `hi_t`, plus the constant `hi_t p′_t`.
//! - `p′_t > 0`: the constant `lo_t p′_t` and the `lo_t` servers' segments; each further server
//!   (up to `hi_t − lo_t`, fractionally) is best bought as a *bundle*: its first `j°` segments at
//!   the average slope `A = (p′_t + Σ_{j<j°} ℓ_j s_j) / Σ_{j<j°} ℓ_j`, with `j°` minimising `A` (the
//!   tangent from the origin). Minimality of `A` gives `s_{j°−1} ≤ A ≤ s_{j°}`, so the bundle sits
//!   between the segments it contains (bought with `lo_t` multiplicity before it) and those after
//!   it (then with multiplicity `hi_t`: every server is on once bundles run out). In slope order
//!   this is the cheapest way to buy load from the type for every `x_t`, i.e. the LP's value.
//!
//! Any `μ ≥ 0` keeps the bound valid; a good one prunes more. Each search node picks its own by
//! golden-section search (the bound is concave in `μ`), because the types already fixed change how
//! much memory is still wanted: one `μ` for the whole search subtracts `μ ×` the memory surplus
//! of nodes whose fixed servers already hold plenty, and measured ~100× more relaxations at
//! 1,000 nodes. Without memory demand `μ = 0`.
//!
//! **Search.** Depth-first over types (most efficient first, by their bundle slope). A node's
//! children (`k_t` fixed to `v`) are bounded by the maximum of the relaxation at a fixed set of
//! multipliers (the node's `μ` and `SPREAD` multiples of it): each is an LP's value in one of its
//! right-hand sides, so convex in `v`, and so is their maximum. Its minimiser is found by binary
//! search, and children are tried from there outward in both directions until the bound reaches
//! the best value found (beyond that point, convexity says it only grows); each child then
//! re-bounds itself at its own `μ` before branching. At a leaf every `k` is fixed and `Φ(k)` is
//! evaluated exactly. The incumbent starts as the better of every server on and the caller's
//! warm start (repaired to cover the demand). Exact up to float rounding (≈1e-12 relative):
//! nothing is pruned whose bound is below the incumbent.
//!
//! **Cost.** A relaxation is O(P + T log T), P = Σ_t segments_t (≤ 10 per type for SPECpower's
//! 11 points; the segments are sorted once per cluster, the T bundles per `μ`). A node costs
//! `MU_STEPS` relaxations to choose its `μ` (none without memory demand), then O(log N_t) bounds
//! for the binary search plus one per child tried, each bound `1 + SPREAD.len()` relaxations
//! with memory demand. The worst case is exponential in the number of types — with flat curves
//! the problem is a bounded knapsack (min-cost covering) — but the relaxation is within about one
//! server's idle watts of the optimum, so few nodes survive: `examples/bench.rs` measures it at
//! 1,000 nodes (README, "Benchmarks").

use crate::{Autoscaled, Cluster, Demand, ServerType, EPSILON_MILLICORES};

/// Golden-section steps for a node's `μ` (each shrinks the interval by 0.618: 12 → 0.3 % of it).
const MU_STEPS: usize = 12;
/// A node's children are bounded at its `μ` and these multiples of it (and the best of them).
const SPREAD: [f64; 5] = [0.0, 0.5, 0.8, 1.25, 2.0];

/// The relaxation at one memory multiplier `μ` (watts per MiB).
struct Relaxation {
    mu: f64,
    /// `p_t − μ m_t`.
    idle: Vec<f64>,
    /// Segments inside the bundle (`j°`; 0 when there is no bundle, `idle ≤ 0`).
    inside: Vec<usize>,
    /// Millicores of one bundle.
    bundle: Vec<f64>,
    /// (slope, type) of every bundle, by slope.
    bundles: Vec<(f64, usize)>,
}

impl Relaxation {
    fn new(types: &[ServerType], mu: f64) -> Self {
        let mut r = Relaxation {
            mu,
            idle: Vec::with_capacity(types.len()),
            inside: Vec::with_capacity(types.len()),
            bundle: Vec::with_capacity(types.len()),
            bundles: Vec::with_capacity(types.len()),
        };
        for (t, ty) in types.iter().enumerate() {
            let idle = ty.envelope.idle - mu * ty.memory_mib;
            let (mut inside, mut cpu) = (0, 0.0);
            if idle > 0.0 {
                let (mut watts, mut millicores, mut best) = (idle, 0.0, f64::INFINITY);
                for (j, s) in ty.envelope.segments.iter().enumerate() {
                    watts += s.length * s.slope;
                    millicores += s.length;
                    if watts / millicores < best {
                        (best, inside, cpu) = (watts / millicores, j + 1, millicores);
                    }
                }
                r.bundles.push((best, t));
            }
            r.idle.push(idle);
            r.inside.push(inside);
            r.bundle.push(cpu);
        }
        r.bundles.sort_by(|a, b| a.0.total_cmp(&b.0));
        r
    }

    /// The bound over all `k` with `lo ≤ k ≤ hi`; +∞ when none of them covers the demand.
    fn bound(&self, cluster: &Cluster, lo: &[u32], hi: &[u32], demand: Demand) -> f64 {
        let types = &cluster.types;
        if !covers(types, hi, demand) {
            return f64::INFINITY;
        }
        let mut watts = self.mu * demand.memory_mib;
        for t in 0..types.len() {
            let k = if self.idle[t] <= 0.0 { hi[t] } else { lo[t] };
            watts += k as f64 * self.idle[t];
        }
        // Cheapest first over the merge of the segments (sorted once) and the bundles.
        let mut left = demand.cpu_millicores;
        let (mut i, mut b) = (0, 0);
        let segments = &cluster.segment_order;
        while left > EPSILON_MILLICORES {
            let segment = segments
                .get(i)
                .map(|&(t, j)| (types[t].envelope.segments[j].slope, t, j));
            let bundle = self.bundles.get(b).copied();
            let segment_first = match (segment, bundle) {
                (Some((slope, _, _)), Some((other, _))) => slope <= other,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return f64::INFINITY,
            };
            let (slope, length) = match (segment, bundle) {
                (Some((slope, t, j)), _) if segment_first => {
                    i += 1;
                    let k = if self.idle[t] <= 0.0 || j >= self.inside[t] {
                        hi[t]
                    } else {
                        lo[t]
                    };
                    (slope, k as f64 * types[t].envelope.segments[j].length)
                }
                (_, Some((slope, t))) => {
                    b += 1;
                    (slope, (hi[t] - lo[t]) as f64 * self.bundle[t])
                }
                (_, None) => return f64::INFINITY, // not reached: segment_first was true
            };
            let take = length.min(left);
            watts += take * slope;
            left -= take;
        }
        watts
    }
}

/// Whether `on` servers per type have the CPU and memory for `demand`.
fn covers(types: &[ServerType], on: &[u32], demand: Demand) -> bool {
    let (mut cpu, mut memory) = (0.0, 0.0);
    for (t, &k) in types.iter().zip(on) {
        cpu += k as f64 * t.capacity_millicores;
        memory += k as f64 * t.memory_mib;
    }
    cpu >= demand.cpu_millicores - EPSILON_MILLICORES && memory >= demand.memory_mib
}

struct Search<'a> {
    cluster: &'a Cluster,
    demand: Demand,
    /// Largest `μ` worth trying: past the largest idle watts per MiB every type pays for itself
    /// and the bound only falls. 0 without memory demand.
    top_mu: f64,
    /// Types in the order they are fixed.
    order: Vec<usize>,
    lo: Vec<u32>,
    hi: Vec<u32>,
    best: f64,
    best_on: Vec<u32>,
    evaluations: u64,
}

impl Search<'_> {
    fn bound(&mut self, relaxation: &Relaxation) -> f64 {
        self.evaluations += 1;
        relaxation.bound(self.cluster, &self.lo, &self.hi, self.demand)
    }

    /// The relaxation at the `μ` that maximises it for the current box (golden-section search).
    fn relaxation(&mut self) -> (Relaxation, f64) {
        let types = &self.cluster.types;
        let plain = Relaxation::new(types, 0.0);
        let at_zero = self.bound(&plain);
        if self.top_mu <= 0.0 || !at_zero.is_finite() {
            return (plain, at_zero);
        }
        let phi = (5f64.sqrt() - 1.0) / 2.0;
        let (mut a, mut b) = (0.0, self.top_mu);
        let probe = |search: &mut Self, mu: f64| {
            let r = Relaxation::new(types, mu);
            let v = search.bound(&r);
            (r, v)
        };
        let mut c = probe(self, b - phi * (b - a));
        let mut d = probe(self, a + phi * (b - a));
        for _ in 0..MU_STEPS {
            if c.1 >= d.1 {
                b = d.0.mu;
                d = c;
                c = probe(self, b - phi * (b - a));
            } else {
                a = c.0.mu;
                c = d;
                d = probe(self, a + phi * (b - a));
            }
        }
        [c, d].into_iter().fold(
            (plain, at_zero),
            |best, x| if x.1 > best.1 { x } else { best },
        )
    }

    fn dive(&mut self, depth: usize) {
        if depth == self.order.len() {
            let watts = self
                .cluster
                .watts_with(&self.lo, self.demand.cpu_millicores);
            if watts < self.best {
                self.best = watts;
                self.best_on.clone_from(&self.lo);
            }
            return;
        }
        let (relaxation, bound) = self.relaxation();
        if bound >= self.best {
            return;
        }
        let t = self.order[depth];
        let (lo, hi) = (self.lo[t], self.hi[t]);
        // Fewest of type t that can cover the demand with every undecided type fully on.
        let mut probe = self.hi.clone();
        let mut covers_with = |v: u32| {
            probe[t] = v;
            covers(&self.cluster.types, &probe, self.demand)
        };
        if !covers_with(hi) {
            return;
        }
        let least = if covers_with(lo) {
            lo
        } else {
            let (mut a, mut b) = (lo, hi); // a does not cover, b does
            while b - a > 1 {
                let m = a + (b - a) / 2;
                if covers_with(m) {
                    b = m;
                } else {
                    a = m;
                }
            }
            b
        };
        // Children are priced at a fixed set of multipliers around the node's best, so the bound
        // (their maximum: a maximum of convex functions of v) stays convex in v.
        let mu = relaxation.mu;
        let mut at: Vec<Relaxation> = vec![relaxation];
        if mu > 0.0 {
            for f in SPREAD {
                at.push(Relaxation::new(&self.cluster.types, mu * f));
            }
        }
        let fixed = |search: &mut Self, v: u32| {
            search.lo[t] = v;
            search.hi[t] = v;
            at.iter()
                .fold(f64::NEG_INFINITY, |b, r| b.max(search.bound(r)))
        };
        // The relaxation is convex in v: its minimiser by binary search.
        let (mut a, mut b) = (least, hi);
        while a < b {
            let m = a + (b - a) / 2;
            if fixed(self, m + 1) < fixed(self, m) {
                a = m + 1;
            } else {
                b = m;
            }
        }
        for v in a..=hi {
            if fixed(self, v) >= self.best {
                break;
            }
            self.dive(depth + 1);
        }
        for v in (least..a).rev() {
            if fixed(self, v) >= self.best {
                break;
            }
            self.dive(depth + 1);
        }
        self.lo[t] = lo;
        self.hi[t] = hi;
    }
}

pub(crate) fn autoscaled(cluster: &Cluster, demand: Demand, warm: Option<&[u32]>) -> Autoscaled {
    let types = &cluster.types;
    let all: Vec<u32> = types.iter().map(ServerType::count).collect();
    // Most efficient first: the type whose bundle is cheapest per millicore at μ = 0.
    let plain = Relaxation::new(types, 0.0);
    let mut efficiency = vec![f64::INFINITY; types.len()];
    for &(slope, t) in &plain.bundles {
        efficiency[t] = slope;
    }
    let mut order: Vec<usize> = (0..types.len()).collect();
    order.sort_by(|&a, &b| efficiency[a].total_cmp(&efficiency[b]));

    let mut best_on = all.clone();
    let mut best = cluster.watts_with(&all, demand.cpu_millicores);
    if let Some(warm) = warm {
        let mut on: Vec<u32> = warm.iter().zip(&all).map(|(&w, &n)| w.min(n)).collect();
        // Repair: add servers, most efficient type first, until the demand is covered.
        for &t in &order {
            while on[t] < all[t] && !covers(types, &on, demand) {
                on[t] += 1;
            }
        }
        let watts = cluster.watts_with(&on, demand.cpu_millicores);
        if watts < best {
            (best, best_on) = (watts, on);
        }
    }
    let top_mu = if demand.memory_mib > 0.0 {
        types
            .iter()
            .filter(|t| t.memory_mib > 0.0)
            .map(|t| t.envelope.idle / t.memory_mib)
            .fold(0.0, f64::max)
    } else {
        0.0
    };
    let mut search = Search {
        cluster,
        demand,
        top_mu,
        order,
        lo: vec![0; types.len()],
        hi: all,
        best,
        best_on,
        evaluations: 0,
    };
    search.dive(0);
    Autoscaled {
        watts: search.best,
        on: search.best_on,
        evaluations: search.evaluations,
    }
}
