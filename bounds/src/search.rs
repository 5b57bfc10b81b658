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
//! `μ` is chosen once per call (golden-section search of the root relaxation, concave in `μ`);
//! any `μ ≥ 0` keeps the bound valid, a good one only prunes more.
//!
//! **Search.** Depth-first over types (most efficient first, by their bundle slope); at a node,
//! the relaxation with `k_t` fixed to `v` is convex in `v`, so its minimiser is found by binary
//! search, and children are tried from there outward in both directions until the relaxation
//! reaches the best value found (beyond that point, convexity says it only grows). At a leaf every
//! `k` is fixed and `Φ(k)` is evaluated exactly. The incumbent starts as the better of every
//! server on and the caller's warm start (repaired to cover the demand). Exact up to float
//! rounding (≈1e-12 relative): nothing is pruned whose relaxation is below the incumbent.
//!
//! **Cost.** A relaxation is O(P), P = Σ_t (segments_t + 1) (≤ 11 per type for SPECpower's 11
//! points), plus O(P log P) and O(log(1/tol)) relaxations per call to sort the pieces and choose
//! `μ`. A node costs O(log N_t) relaxations plus one per child tried. The worst case is
//! exponential in the number of types — with flat curves the problem is a bounded knapsack
//! (min-cost covering) — but the relaxation is within about one server's idle watts of the
//! optimum, so few nodes survive: `examples/bench.rs` measures it at 1,000 nodes.

use crate::{Autoscaled, Cluster, Demand, ServerType, EPSILON_MILLICORES};

/// Golden-section steps for `μ` (each shrinks the interval by 0.618; 24 → 1e-5 of it).
const MU_STEPS: usize = 24;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Segment(usize),
    Bundle,
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    slope: f64,
    ty: usize,
    kind: Kind,
}

/// The relaxation at one memory multiplier `μ` (watts per MiB).
struct Relaxation<'a> {
    types: &'a [ServerType],
    mu: f64,
    /// `p_t − μ m_t`.
    idle: Vec<f64>,
    /// Segments inside the bundle (`j°`; 0 when there is no bundle, `idle ≤ 0`).
    inside: Vec<usize>,
    /// Millicores of one bundle.
    bundle: Vec<f64>,
    pieces: Vec<Piece>,
}

impl<'a> Relaxation<'a> {
    fn new(types: &'a [ServerType], mu: f64) -> Self {
        let mut r = Relaxation {
            types,
            mu,
            idle: Vec::with_capacity(types.len()),
            inside: Vec::with_capacity(types.len()),
            bundle: Vec::with_capacity(types.len()),
            pieces: Vec::new(),
        };
        for (t, ty) in types.iter().enumerate() {
            let idle = ty.envelope.idle - mu * ty.memory_mib;
            let segments = &ty.envelope.segments;
            r.pieces
                .extend(segments.iter().enumerate().map(|(j, s)| Piece {
                    slope: s.slope,
                    ty: t,
                    kind: Kind::Segment(j),
                }));
            let (mut inside, mut cpu) = (0, 0.0);
            if idle > 0.0 {
                let (mut watts, mut millicores, mut best) = (idle, 0.0, f64::INFINITY);
                for (j, s) in segments.iter().enumerate() {
                    watts += s.length * s.slope;
                    millicores += s.length;
                    if watts / millicores < best {
                        (best, inside, cpu) = (watts / millicores, j + 1, millicores);
                    }
                }
                r.pieces.push(Piece {
                    slope: best,
                    ty: t,
                    kind: Kind::Bundle,
                });
            }
            r.idle.push(idle);
            r.inside.push(inside);
            r.bundle.push(cpu);
        }
        r.pieces.sort_by(|a, b| a.slope.total_cmp(&b.slope));
        r
    }

    /// The bound over all `k` with `lo ≤ k ≤ hi`; +∞ when none of them covers the demand.
    fn bound(&self, lo: &[u32], hi: &[u32], demand: Demand) -> f64 {
        if !covers(self.types, hi, demand) {
            return f64::INFINITY;
        }
        let mut watts = self.mu * demand.memory_mib;
        for t in 0..self.types.len() {
            let k = if self.idle[t] <= 0.0 { hi[t] } else { lo[t] };
            watts += k as f64 * self.idle[t];
        }
        let mut left = demand.cpu_millicores;
        for p in &self.pieces {
            if left <= EPSILON_MILLICORES {
                break;
            }
            let t = p.ty;
            let length = match p.kind {
                Kind::Bundle => (hi[t] - lo[t]) as f64 * self.bundle[t],
                Kind::Segment(j) => {
                    let k = if self.idle[t] <= 0.0 || j >= self.inside[t] {
                        hi[t]
                    } else {
                        lo[t]
                    };
                    k as f64 * self.types[t].envelope.segments[j].length
                }
            };
            let take = length.min(left);
            watts += take * p.slope;
            left -= take;
        }
        if left > EPSILON_MILLICORES {
            return f64::INFINITY;
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

/// The memory multiplier that maximises the root relaxation (golden-section search; concave).
fn choose_mu(types: &[ServerType], all: &[u32], demand: Demand) -> f64 {
    let none = vec![0; types.len()];
    // Past the largest idle watts per MiB every type pays for itself and the bound only falls.
    let top = types
        .iter()
        .filter(|t| t.memory_mib > 0.0)
        .map(|t| t.envelope.idle / t.memory_mib)
        .fold(0.0, f64::max);
    if demand.memory_mib <= 0.0 || top <= 0.0 {
        return 0.0;
    }
    let value = |mu: f64| Relaxation::new(types, mu).bound(&none, all, demand);
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (0.0, top);
    let (mut c, mut d) = (b - phi * (b - a), a + phi * (b - a));
    let (mut fc, mut fd) = (value(c), value(d));
    for _ in 0..MU_STEPS {
        if fc >= fd {
            b = d;
            (d, fd) = (c, fc);
            c = b - phi * (b - a);
            fc = value(c);
        } else {
            a = c;
            (c, fc) = (d, fd);
            d = a + phi * (b - a);
            fd = value(d);
        }
    }
    let mut best = (value(0.0), 0.0);
    for (f, mu) in [(fc, c), (fd, d)] {
        if f > best.0 {
            best = (f, mu);
        }
    }
    best.1
}

struct Search<'a> {
    cluster: &'a Cluster,
    relaxation: Relaxation<'a>,
    demand: Demand,
    /// Types in the order they are fixed.
    order: Vec<usize>,
    lo: Vec<u32>,
    hi: Vec<u32>,
    best: f64,
    best_on: Vec<u32>,
    evaluations: u64,
}

impl Search<'_> {
    /// The relaxation with type `t` fixed to `v` on.
    fn fixed(&mut self, t: usize, v: u32) -> f64 {
        self.lo[t] = v;
        self.hi[t] = v;
        self.evaluations += 1;
        self.relaxation.bound(&self.lo, &self.hi, self.demand)
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
        // The relaxation is convex in v: its minimiser by binary search.
        let (mut a, mut b) = (least, hi);
        while a < b {
            let m = a + (b - a) / 2;
            if self.fixed(t, m + 1) < self.fixed(t, m) {
                a = m + 1;
            } else {
                b = m;
            }
        }
        for v in a..=hi {
            if self.fixed(t, v) >= self.best {
                break;
            }
            self.dive(depth + 1);
        }
        for v in (least..a).rev() {
            if self.fixed(t, v) >= self.best {
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
    let relaxation = Relaxation::new(types, choose_mu(types, &all, demand));
    // Most efficient first: the type whose bundle is cheapest per millicore at μ = 0.
    let plain = Relaxation::new(types, 0.0);
    let mut efficiency = vec![f64::INFINITY; types.len()];
    for p in plain
        .pieces
        .iter()
        .filter(|p| matches!(p.kind, Kind::Bundle))
    {
        efficiency[p.ty] = p.slope;
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
    let mut search = Search {
        cluster,
        relaxation,
        demand,
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
