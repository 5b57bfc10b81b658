//! Time per evaluation of both bounds at 1,000 nodes, over a day of demand.
//!
//!     cargo run --release -p wattwise-bounds --example bench
//!
//! Nodes: SPECpower curves from data/specpower/specpower_curated.csv (every k-th result, so the
//! types differ in age and size), CPU = threads × 1000 m, memory = the result's memory. Demand: a
//! diurnal day at 1-minute steps (CPU 15..75 % of the cluster, memory requests 1.4× the CPU share
//! of the cluster's memory, capped at 90 %), seeded noise. The always-on bound is the baseline
//! measured in the same run.

use std::path::Path;
use std::time::Instant;

use wattwise_bounds::{Cluster, Demand, Server};
use wattwise_core::PowerCurve;

const NODES: usize = 1000;
const INSTANTS: usize = 1440;

/// Fields of one CSV line (double-quoted fields may hold commas).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

fn specpower() -> Vec<Server> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/specpower/specpower_curated.csv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header = fields(lines.next().unwrap());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let watts: Vec<usize> = std::iter::once("idle_w".to_string())
        .chain((10..=100).step_by(10).map(|p| format!("w_at_{p}")))
        .map(|c| col(&c))
        .collect();
    lines
        .map(|line| {
            let f = fields(line);
            let num = |i: usize| {
                f[i].parse::<f64>()
                    .unwrap_or_else(|e| panic!("{line}: {e}"))
            };
            Server {
                curve: PowerCurve::new(watts.iter().map(|&i| num(i)).collect()).unwrap(),
                capacity_millicores: 1000 * num(col("threads")) as u64,
                memory_mib: (1024.0 * num(col("mem_gb"))) as u64,
            }
        })
        .collect()
}

/// splitmix64, for the demand's noise and the split of nodes among types.
fn noise(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}

fn main() {
    let catalogue = specpower();
    println!(
        "{NODES} nodes, {INSTANTS} instants (a day at 1-minute steps); µs per evaluation (median, max)"
    );
    println!("| types | always-on (baseline) | autoscaled, cold | autoscaled, warm start | relaxations per call: cold mean; warm mean, max | autoscaled / always-on watts |");
    println!("|---|---|---|---|---|---|");
    for types in [5usize, 10, 20] {
        let mut state = types as u64;
        let stride = catalogue.len() / types;
        let kinds: Vec<&Server> = (0..types).map(|t| &catalogue[t * stride]).collect();
        let servers: Vec<Server> = (0..NODES)
            .map(|_| kinds[(noise(&mut state) * types as f64) as usize % types].clone())
            .collect();
        let cluster = Cluster::new(&servers).unwrap();
        let demands: Vec<Demand> = (0..INSTANTS)
            .map(|i| {
                let day = (i as f64 / INSTANTS as f64 * std::f64::consts::TAU).sin();
                let share = (0.45 + 0.3 * day + 0.02 * (noise(&mut state) - 0.5)).clamp(0.0, 1.0);
                Demand {
                    cpu_millicores: share * cluster.cpu_millicores(),
                    memory_mib: (1.4 * share).min(0.9) * cluster.memory_mib(),
                }
            })
            .collect();

        // (median, max) µs: the machine is shared, so the median is the figure; max shows the
        // hardest instant.
        let time = |f: &mut dyn FnMut(&Demand)| {
            let mut us: Vec<f64> = demands
                .iter()
                .map(|d| {
                    let start = Instant::now();
                    f(d);
                    start.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            us.sort_by(f64::total_cmp);
            (us[us.len() / 2], us[us.len() - 1])
        };
        let mut on_watts = 0.0;
        let always = time(&mut |d| on_watts += cluster.always_on(d.cpu_millicores).unwrap());
        let mut cold_evaluations = 0u64;
        let cold = time(&mut |d| {
            cold_evaluations += cluster.autoscaled(*d, None).unwrap().evaluations;
        });
        let (mut previous, mut evaluations, mut most, mut auto_watts) =
            (None::<Vec<u32>>, 0u64, 0u64, 0.0);
        let warm = time(&mut |d| {
            let r = cluster.autoscaled(*d, previous.as_deref()).unwrap();
            evaluations += r.evaluations;
            most = most.max(r.evaluations);
            auto_watts += r.watts;
            previous = Some(r.on);
        });
        println!(
            "| {types} | {:.2}, {:.1} | {:.1}, {:.0} | {:.1}, {:.0} | {:.0}; {:.0}, {most} | {:.3} |",
            always.0,
            always.1,
            cold.0,
            cold.1,
            warm.0,
            warm.1,
            cold_evaluations as f64 / INSTANTS as f64,
            evaluations as f64 / INSTANTS as f64,
            auto_watts / on_watts,
        );
    }
}
