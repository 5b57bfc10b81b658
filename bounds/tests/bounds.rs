//! The bounds against brute force and against random feasible placements (seeded, reproducible).

use wattwise_bounds::{BoundError, Cluster, Demand, Envelope, Server};
use wattwise_core::PowerCurve;

/// splitmix64: a seeded generator, so every case here is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A non-decreasing 11-point curve: convex, concave or neither, sometimes flat.
fn random_curve(rng: &mut Rng) -> PowerCurve {
    let idle = rng.uniform(20.0, 300.0);
    let shape = rng.below(4);
    let mut watts = vec![idle];
    for i in 1..=10 {
        let step = match shape {
            0 => rng.uniform(0.0, 30.0),                 // anything
            1 => 2.0 * i as f64 * rng.uniform(0.5, 1.5), // convex-ish
            2 => (11 - i) as f64 * 3.0,                  // concave
            _ => 0.0,                                    // flat
        };
        watts.push(watts[i - 1] + step);
    }
    PowerCurve::new(watts).unwrap()
}

fn random_server(rng: &mut Rng) -> Server {
    Server {
        curve: random_curve(rng),
        capacity_millicores: 1000 * (1 + rng.below(16) as u64),
        memory_mib: 1024 * rng.below(64) as u64,
    }
}

/// `least..=least + more` servers drawn from up to `most_kinds` distinct ones, so types repeat.
fn random_cluster(rng: &mut Rng, least: usize, more: usize, most_kinds: usize) -> Vec<Server> {
    let n = least + rng.below(more + 1);
    let kinds = 1 + rng.below(most_kinds);
    let distinct: Vec<Server> = (0..kinds).map(|_| random_server(rng)).collect();
    (0..n).map(|_| distinct[rng.below(kinds)].clone()).collect()
}

fn capacity(servers: &[Server]) -> (f64, f64) {
    servers.iter().fold((0.0, 0.0), |(c, m), s| {
        (c + s.capacity_millicores as f64, m + s.memory_mib as f64)
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The best split of `cpu` over the servers' envelopes on a grid of the first servers' loads
/// (the last takes the rest), two or three servers.
fn grid_optimum(
    servers: &[Server],
    cpu: f64,
    steps: usize,
    watts: impl Fn(usize, f64) -> f64,
) -> f64 {
    let caps: Vec<f64> = servers
        .iter()
        .map(|s| s.capacity_millicores as f64)
        .collect();
    let last = servers.len() - 1;
    let mut best = f64::INFINITY;
    let grid = |i: usize| -> Vec<f64> {
        (0..=steps)
            .map(|k| caps[i] * k as f64 / steps as f64)
            .collect()
    };
    let price = |loads: &[f64]| -> f64 {
        let rest = cpu - loads.iter().sum::<f64>();
        if !(-1e-9..=caps[last] + 1e-9).contains(&rest) {
            return f64::INFINITY;
        }
        loads
            .iter()
            .enumerate()
            .map(|(i, &x)| watts(i, x))
            .sum::<f64>()
            + watts(last, rest.clamp(0.0, caps[last]))
    };
    match servers.len() {
        2 => {
            for x in grid(0) {
                best = best.min(price(&[x]));
            }
        }
        3 => {
            let ys = grid(1);
            for x in grid(0) {
                for &y in &ys {
                    best = best.min(price(&[x, y]));
                }
            }
        }
        n => panic!("{n} servers"),
    }
    best
}

#[test]
fn always_on_is_the_optimal_split_over_the_envelopes() {
    let mut rng = Rng(1);
    let steps = 400;
    for case in 0..200 {
        let n = 2 + rng.below(2);
        let servers: Vec<Server> = (0..n).map(|_| random_server(&mut rng)).collect();
        let cluster = Cluster::new(&servers).unwrap();
        let cpu = rng.uniform(0.0, 1.0) * cluster.cpu_millicores();
        let bound = cluster.always_on(cpu).unwrap();
        let envelopes: Vec<Envelope> = servers
            .iter()
            .map(|s| Envelope::of(&s.curve, s.capacity_millicores as f64))
            .collect();
        let on_envelopes = grid_optimum(&servers, cpu, steps, |i, x| envelopes[i].watts_at(x));
        let on_curves = grid_optimum(&servers, cpu, steps, |i, x| {
            servers[i]
                .curve
                .watts_at(x / servers[i].capacity_millicores as f64)
        });
        // The grid misses the optimum by at most a grid step of the steepest segment per server.
        let steepest = envelopes
            .iter()
            .zip(&servers)
            .flat_map(|(e, s)| {
                e.segments
                    .iter()
                    .map(move |g| g.slope * s.capacity_millicores as f64)
            })
            .fold(0.0, f64::max);
        let slack = 2.0 * n as f64 * steepest / steps as f64 + 1e-9;
        assert!(
            bound <= on_envelopes + 1e-9,
            "case {case}: {bound} > grid {on_envelopes}"
        );
        assert!(
            on_envelopes - bound <= slack,
            "case {case}: {bound} vs grid {on_envelopes} (slack {slack})"
        );
        assert!(
            bound <= on_curves + 1e-9,
            "case {case}: {bound} > true curves {on_curves}"
        );
    }
}

#[test]
fn always_on_equals_the_true_optimum_on_convex_curves() {
    // Envelope = curve, so the brute force over the true curves is the same problem.
    let mut rng = Rng(2);
    let steps = 600;
    for case in 0..100 {
        let servers: Vec<Server> = (0..2)
            .map(|_| {
                let idle = rng.uniform(30.0, 200.0);
                let a = rng.uniform(0.0, 100.0);
                let b = rng.uniform(0.0, 200.0);
                Server {
                    curve: PowerCurve::sample(11, |u| idle + a * u + b * u * u).unwrap(),
                    capacity_millicores: 1000 * (1 + rng.below(8) as u64),
                    memory_mib: 0,
                }
            })
            .collect();
        let cluster = Cluster::new(&servers).unwrap();
        let cpu = rng.uniform(0.0, 1.0) * cluster.cpu_millicores();
        let bound = cluster.always_on(cpu).unwrap();
        let truth = grid_optimum(&servers, cpu, steps, |i, x| {
            servers[i]
                .curve
                .watts_at(x / servers[i].capacity_millicores as f64)
        });
        assert!(bound <= truth + 1e-9, "case {case}");
        assert!(
            truth - bound <= 4.0 * 300.0 / steps as f64,
            "case {case}: {bound} vs {truth}"
        );
    }
}

/// The autoscaled optimum by enumerating every on/off subset of single servers, each priced by
/// the always-on bound of the servers on (checked against brute force above).
fn enumerate_subsets(servers: &[Server], demand: Demand) -> f64 {
    let mut best = f64::INFINITY;
    for mask in 0u32..(1 << servers.len()) {
        let on: Vec<Server> = (0..servers.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| servers[i].clone())
            .collect();
        let (cpu, memory) = capacity(&on);
        if on.is_empty() {
            if demand.cpu_millicores == 0.0 && demand.memory_mib == 0.0 {
                best = best.min(0.0);
            }
            continue;
        }
        if cpu < demand.cpu_millicores || memory < demand.memory_mib {
            continue;
        }
        best = best.min(
            Cluster::new(&on)
                .unwrap()
                .always_on(demand.cpu_millicores)
                .unwrap(),
        );
    }
    best
}

#[test]
fn autoscaled_equals_the_best_on_off_subset() {
    let mut rng = Rng(3);
    let mut binding_memory = 0;
    for case in 0..300 {
        let servers = random_cluster(&mut rng, 1, 8, 4);
        let (cpu, memory) = capacity(&servers);
        let demand = Demand {
            cpu_millicores: rng.uniform(0.0, 1.0) * cpu,
            memory_mib: if rng.below(2) == 0 {
                0.0
            } else {
                rng.uniform(0.0, 1.0) * memory
            },
        };
        let cluster = Cluster::new(&servers).unwrap();
        let got = cluster.autoscaled(demand, None).unwrap();
        let want = enumerate_subsets(&servers, demand);
        assert!(
            close(got.watts, want),
            "case {case}: {} vs brute force {want} ({demand:?})",
            got.watts
        );
        // The on-set it reports attains the value and covers the demand.
        let types = cluster.types();
        let (on_cpu, on_memory) = types
            .iter()
            .zip(&got.on)
            .fold((0.0, 0.0), |(c, m), (t, &k)| {
                (
                    c + k as f64 * t.capacity_millicores,
                    m + k as f64 * t.memory_mib,
                )
            });
        assert!(
            on_cpu >= demand.cpu_millicores - 1e-6 && on_memory >= demand.memory_mib,
            "case {case}"
        );
        let cpu_only = cluster
            .autoscaled(
                Demand {
                    memory_mib: 0.0,
                    ..demand
                },
                None,
            )
            .unwrap();
        binding_memory += usize::from(got.watts > cpu_only.watts + 1e-9);
    }
    assert!(
        binding_memory >= 20,
        "memory bound the on-set in only {binding_memory} cases"
    );
}

#[test]
fn bounds_are_below_every_random_placement() {
    let mut rng = Rng(4);
    for case in 0..300 {
        let servers = random_cluster(&mut rng, 2, 9, 5);
        let cluster = Cluster::new(&servers).unwrap();
        // Pods of random CPU load and memory request, each on a random server with room.
        let mut load = vec![0.0; servers.len()];
        let mut memory = vec![0.0; servers.len()];
        let mut demand = Demand {
            cpu_millicores: 0.0,
            memory_mib: 0.0,
        };
        for _ in 0..rng.below(40) {
            let cpu = rng.uniform(0.0, 2000.0);
            let mem = rng.uniform(0.0, 4096.0);
            let start = rng.below(servers.len());
            if let Some(i) = (0..servers.len())
                .map(|k| (start + k) % servers.len())
                .find(|&i| {
                    load[i] + cpu <= servers[i].capacity_millicores as f64
                        && memory[i] + mem <= servers[i].memory_mib as f64
                })
            {
                load[i] += cpu;
                memory[i] += mem;
                demand.cpu_millicores += cpu;
                demand.memory_mib += mem;
            }
        }
        let watts = |i: usize| {
            servers[i]
                .curve
                .watts_at(load[i] / servers[i].capacity_millicores as f64)
        };
        let all_on: f64 = (0..servers.len()).map(watts).sum();
        let hosting: f64 = (0..servers.len())
            .filter(|&i| memory[i] > 0.0 || load[i] > 0.0)
            .map(watts)
            .sum();
        let always_on = cluster.always_on(demand.cpu_millicores).unwrap();
        let autoscaled = cluster.autoscaled(demand, None).unwrap().watts;
        assert!(
            always_on <= all_on + 1e-9,
            "case {case}: {always_on} > placement {all_on}"
        );
        assert!(
            autoscaled <= hosting + 1e-9,
            "case {case}: {autoscaled} > placement {hosting}"
        );
        assert!(autoscaled <= always_on + 1e-9, "case {case}");
    }
}

#[test]
fn warm_starts_change_nothing_but_the_work() {
    let mut rng = Rng(5);
    for case in 0..100 {
        let servers = random_cluster(&mut rng, 20, 39, 5);
        let cluster = Cluster::new(&servers).unwrap();
        let (cpu, memory) = capacity(&servers);
        let demand = Demand {
            cpu_millicores: rng.uniform(0.0, 1.0) * cpu,
            memory_mib: rng.uniform(0.0, 0.5) * memory,
        };
        let cold = cluster.autoscaled(demand, None).unwrap();
        let warm: Vec<u32> = cluster
            .types()
            .iter()
            .map(|t| rng.below(t.count() as usize + 1) as u32)
            .collect();
        let warmed = cluster.autoscaled(demand, Some(&warm)).unwrap();
        let own = cluster.autoscaled(demand, Some(&cold.on)).unwrap();
        assert!(
            close(cold.watts, warmed.watts) && close(cold.watts, own.watts),
            "case {case}"
        );
        assert!(
            own.evaluations <= cold.evaluations,
            "case {case}: {} > {}",
            own.evaluations,
            cold.evaluations
        );
    }
}

#[test]
fn more_demand_never_lowers_a_bound() {
    let mut rng = Rng(6);
    for case in 0..30 {
        let servers = random_cluster(&mut rng, 30, 0, 4);
        let cluster = Cluster::new(&servers).unwrap();
        let (mut on, mut auto) = (0.0, 0.0);
        for step in 0..=50 {
            let cpu = cluster.cpu_millicores() * step as f64 / 50.0;
            let a = cluster.always_on(cpu).unwrap();
            let b = cluster
                .autoscaled(
                    Demand {
                        cpu_millicores: cpu,
                        memory_mib: 0.0,
                    },
                    None,
                )
                .unwrap()
                .watts;
            assert!(
                a >= on - 1e-9 && b >= auto - 1e-9,
                "case {case} step {step}"
            );
            (on, auto) = (a, b);
        }
        // Memory requests too, at a fixed CPU load.
        let cpu = cluster.cpu_millicores() * rng.uniform(0.0, 0.5);
        let mut auto = 0.0;
        for step in 0..=20 {
            let demand = Demand {
                cpu_millicores: cpu,
                memory_mib: cluster.memory_mib() * step as f64 / 20.0,
            };
            let b = cluster.autoscaled(demand, None).unwrap().watts;
            assert!(b >= auto - 1e-9, "case {case} memory step {step}");
            auto = b;
        }
    }
}

#[test]
fn a_hand_computed_pair() {
    // A: 100 → 200 W, B: 50 → 250 W, both linear over 1000 m.
    let servers = [
        Server {
            curve: PowerCurve::linear(100.0, 200.0).unwrap(),
            capacity_millicores: 1000,
            memory_mib: 8,
        },
        Server {
            curve: PowerCurve::linear(50.0, 250.0).unwrap(),
            capacity_millicores: 1000,
            memory_mib: 4,
        },
    ];
    let cluster = Cluster::new(&servers).unwrap();
    let at = |cpu: f64, memory_mib: f64| {
        cluster
            .autoscaled(
                Demand {
                    cpu_millicores: cpu,
                    memory_mib,
                },
                None,
            )
            .unwrap()
    };
    // 500 m: all on A's cheaper slope (0.1 W/m) with both idle; or either alone at 150 W.
    assert!(close(
        cluster.always_on(500.0).unwrap(),
        100.0 + 50.0 + 50.0
    ));
    assert!(close(at(500.0, 0.0).watts, 150.0));
    // 200 m: B alone 90 W beats A alone 120 W.
    assert!(close(at(200.0, 0.0).watts, 90.0));
    assert_eq!(at(200.0, 0.0).on, [0, 1]);
    // …unless the pods need A's memory.
    assert!(close(at(200.0, 6.0).watts, 120.0));
    // 1500 m: both, A full (200 W), B 500 m (150 W).
    assert!(close(cluster.always_on(1500.0).unwrap(), 350.0));
    assert!(close(at(1500.0, 0.0).watts, 350.0));
    assert!(close(at(0.0, 0.0).watts, 0.0));
    assert!(close(cluster.always_on(0.0).unwrap(), 150.0));
}

#[test]
fn bad_input_is_an_error_naming_it() {
    let servers = [Server {
        curve: PowerCurve::linear(100.0, 200.0).unwrap(),
        capacity_millicores: 1000,
        memory_mib: 512,
    }];
    let cluster = Cluster::new(&servers).unwrap();
    assert_eq!(Cluster::new(&[]).unwrap_err(), BoundError::EmptyCluster);
    let no_cpu = Server {
        capacity_millicores: 0,
        ..servers[0].clone()
    };
    assert_eq!(
        Cluster::new(&[servers[0].clone(), no_cpu])
            .unwrap_err()
            .to_string(),
        "server 1 has no CPU capacity"
    );
    for bad in [f64::NAN, -1.0, f64::INFINITY] {
        let e = cluster.always_on(bad).unwrap_err().to_string();
        assert!(e.starts_with("CPU demand (millicores) is"), "{e}");
        let e = cluster
            .autoscaled(
                Demand {
                    cpu_millicores: 1.0,
                    memory_mib: bad,
                },
                None,
            )
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("memory demand (MiB) is"), "{e}");
    }
    assert_eq!(
        cluster.always_on(1000.5).unwrap_err().to_string(),
        "CPU demand of 1000.5 millicores exceeds the cluster's capacity of 1000 millicores"
    );
    assert_eq!(
        cluster
            .autoscaled(
                Demand {
                    cpu_millicores: 1.0,
                    memory_mib: 513.0
                },
                None
            )
            .unwrap_err(),
        BoundError::MemoryBeyondCapacity {
            demand_mib: 513.0,
            capacity_mib: 512.0
        }
    );
    assert_eq!(
        cluster
            .autoscaled(
                Demand {
                    cpu_millicores: 1.0,
                    memory_mib: 0.0
                },
                Some(&[1, 1])
            )
            .unwrap_err()
            .to_string(),
        "warm start has 2 counts; the cluster has 1 server types"
    );
    // Exactly full is fine.
    assert!(close(cluster.always_on(1000.0).unwrap(), 200.0));
}
