//! Figures per policy over seeds (mean ± sample standard deviation), as a text table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use wattwise_core::EnergyLevel;

use crate::policy::PolicyName;
use crate::Run;

/// Mean and sample standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub stdev: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n.max(1.0);
        let stdev = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { mean, stdev }
    }
}

/// Node-hours spent at each true energy level (the battery's charge, no hysteresis), and on the
/// grid (no battery).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LevelHours {
    pub well_powered: f64,
    pub vulnerable: f64,
    pub low_powered: f64,
    /// Below 15 %: the seed paper's availability metric (browned-out hours included).
    pub powerless: f64,
    pub grid: f64,
}

impl LevelHours {
    /// Adds `hours` at `level` (`None`: grid).
    pub fn add(&mut self, level: Option<EnergyLevel>, hours: f64) {
        *match level {
            Some(EnergyLevel::WellPowered) => &mut self.well_powered,
            Some(EnergyLevel::Vulnerable) => &mut self.vulnerable,
            Some(EnergyLevel::LowPowered) => &mut self.low_powered,
            Some(EnergyLevel::Powerless) => &mut self.powerless,
            None => &mut self.grid,
        } += hours;
    }
}

/// How well a policy that prices pods priced them, against the true curves (`PriceCheck`s summed
/// over its decisions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PlacementQuality {
    pub decisions: u64,
    /// Σ |predicted − true| marginal watts on the chosen nodes.
    pub abs_error_watts: f64,
    /// Σ true marginal watts on the chosen nodes.
    pub true_watts: f64,
    /// Decisions whose node was truly the cheapest of its tier (within the scheduler's tie, 0.05 W).
    pub truly_cheapest: u64,
    /// Σ (true marginal on the chosen node − the truly cheapest of its tier).
    pub regret_watts: f64,
}

impl PlacementQuality {
    const TIE_WATTS: f64 = 0.05;

    pub fn add(&mut self, check: &crate::view::PriceCheck) {
        self.decisions += 1;
        self.abs_error_watts += (check.predicted_watts - check.true_watts).abs();
        self.true_watts += check.true_watts;
        let regret = (check.true_watts - check.best_true_watts).max(0.0);
        if regret <= Self::TIE_WATTS {
            self.truly_cheapest += 1;
        }
        self.regret_watts += regret;
    }

    /// Mean |error| of the predicted marginal watts as a share of the true ones, percent.
    pub fn marginal_error_percent(&self) -> f64 {
        100.0 * self.abs_error_watts / self.true_watts.max(f64::MIN_POSITIVE)
    }

    pub fn truly_cheapest_percent(&self) -> f64 {
        100.0 * self.truly_cheapest as f64 / (self.decisions.max(1) as f64)
    }

    pub fn mean_regret_watts(&self) -> f64 {
        self.regret_watts / (self.decisions.max(1) as f64)
    }
}

/// One point of a run's time series (for plots): sampled every [`SAMPLE_SECONDS`] simulated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub t_seconds: f64,
    /// Total true watts of the cluster.
    pub watts: f64,
    /// IT energy since the start.
    pub energy_kwh: f64,
    /// Nodes at each true energy level (node counts, grid nodes apart).
    pub well_powered: usize,
    pub vulnerable: usize,
    pub low_powered: usize,
    pub powerless: usize,
    pub grid: usize,
    /// Of the powerless, those browned out (off until their battery recovers).
    pub browned_out: usize,
}

pub const SAMPLE_SECONDS: f64 = 60.0;

/// One policy's figures over the seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub policy: PolicyName,
    pub seeds: usize,
    pub energy_kwh: Stat,
    pub bound_always_on_kwh: Stat,
    pub bound_autoscaled_kwh: Stat,
    /// Share of the gap between kube-default's energy and the scenario's bound (always-on or
    /// autoscaled, as its power management) that this policy closes, percent, per seed.
    pub gap_captured_percent: Option<Stat>,
    /// Energy saved against kube-default in the same seeds (percent; absent without it).
    pub saving_vs_kube_percent: Option<Stat>,
    pub mean_watts: Stat,
    pub peak_watts: Stat,
    pub pods: Stat,
    pub pods_never_placed: Stat,
    pub mean_pending_seconds: Stat,
    pub p99_pending_seconds: Stat,
    pub node_hours_on: Stat,
    pub node_hours_off: Stat,
    pub evictions: Stat,
    /// Evictions per simulated hour (each evicted pod is recreated and placed again).
    pub pods_moved_per_hour: Stat,
    pub node_hours_well_powered: Stat,
    pub node_hours_vulnerable: Stat,
    pub node_hours_low_powered: Stat,
    pub node_hours_powerless: Stat,
    pub node_hours_browned_out: Stat,
    /// IT energy with browned-out hours charged at the nodes' idle watts (equal availability).
    pub energy_brownouts_at_idle_kwh: Stat,
    /// [`Summary::gap_captured_percent`] on that energy, kube-default's included.
    pub gap_captured_brownouts_at_idle_percent: Option<Stat>,
    /// Pods killed by brown-outs (back to pending).
    pub brownout_kills: Stat,
    /// How many fewer node-hours powerless than serverless-seed's in the same seeds, percent
    /// (absent without it, or where it had none).
    pub powerless_fewer_than_seed_percent: Option<Stat>,
    pub boots: Stat,
    pub decisions: Stat,
    pub decisions_per_second: Stat,
    /// For policies that price pods: |predicted − true| marginal watts on the chosen node as a
    /// share of the true, percent; decisions that chose the truly cheapest node of their tier,
    /// percent; and the mean true watts lost to the model per decision.
    pub marginal_error_percent: Option<Stat>,
    pub truly_cheapest_percent: Option<Stat>,
    pub mean_regret_watts: Option<Stat>,
}

/// `autoscaled`: the scenario lets nodes power off, so its bound is the whole-server one.
pub fn summarise(runs: &[Run], autoscaled: bool) -> Vec<Summary> {
    let mut by_policy: BTreeMap<PolicyName, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        by_policy.entry(run.policy).or_default().push(run);
    }
    let seed_powerless: BTreeMap<u64, f64> = runs
        .iter()
        .filter(|r| r.policy == PolicyName::ServerlessSeed)
        .map(|r| (r.seed, r.outcome.node_hours_by_level.powerless))
        .collect();
    let kube_runs = || runs.iter().filter(|r| r.policy == PolicyName::KubeDefault);
    let kube: BTreeMap<u64, f64> = kube_runs()
        .map(|r| (r.seed, r.outcome.energy_kwh))
        .collect();
    let at_idle = |r: &Run| r.outcome.energy_kwh + r.outcome.browned_out_idle_kwh;
    let kube_at_idle: BTreeMap<u64, f64> = kube_runs().map(|r| (r.seed, at_idle(r))).collect();
    by_policy
        .into_iter()
        .map(|(policy, runs)| {
            let stat =
                |f: &dyn Fn(&Run) -> f64| Stat::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let savings: Option<Vec<f64>> = runs
                .iter()
                .map(|r| {
                    kube.get(&r.seed)
                        .map(|k| 100.0 * (k - r.outcome.energy_kwh) / k)
                })
                .collect();
            let bound = |r: &Run| {
                if autoscaled {
                    r.outcome.bound_autoscaled_kwh
                } else {
                    r.outcome.bound_always_on_kwh
                }
            };
            let captured_of = |kube: &BTreeMap<u64, f64>, energy: &dyn Fn(&Run) -> f64| {
                let captured: Option<Vec<f64>> = runs
                    .iter()
                    .map(|r| {
                        kube.get(&r.seed)
                            .map(|k| 100.0 * (k - energy(r)) / (k - bound(r)))
                    })
                    .collect();
                captured.map(|c| Stat::of(&c))
            };
            let quality = |f: &dyn Fn(&PlacementQuality) -> f64| {
                let values: Option<Vec<f64>> = runs
                    .iter()
                    .map(|r| r.outcome.placement.as_ref().map(f))
                    .collect();
                values.map(|v| Stat::of(&v))
            };
            let fewer_powerless: Option<Vec<f64>> = runs
                .iter()
                .map(|r| {
                    seed_powerless
                        .get(&r.seed)
                        .filter(|&&s| s > 0.0)
                        .map(|s| 100.0 * (s - r.outcome.node_hours_by_level.powerless) / s)
                })
                .collect();
            Summary {
                policy,
                seeds: runs.len(),
                energy_kwh: stat(&|r| r.outcome.energy_kwh),
                bound_always_on_kwh: stat(&|r| r.outcome.bound_always_on_kwh),
                bound_autoscaled_kwh: stat(&|r| r.outcome.bound_autoscaled_kwh),
                gap_captured_percent: captured_of(&kube, &|r| r.outcome.energy_kwh),
                saving_vs_kube_percent: savings.map(|s| Stat::of(&s)),
                mean_watts: stat(&|r| r.outcome.mean_watts),
                peak_watts: stat(&|r| r.outcome.peak_watts),
                pods: stat(&|r| r.outcome.pods as f64),
                pods_never_placed: stat(&|r| r.outcome.pods_never_placed as f64),
                mean_pending_seconds: stat(&|r| r.outcome.mean_pending_seconds),
                p99_pending_seconds: stat(&|r| r.outcome.p99_pending_seconds),
                node_hours_on: stat(&|r| r.outcome.node_hours_on),
                node_hours_off: stat(&|r| r.outcome.node_hours_off),
                evictions: stat(&|r| r.outcome.evictions as f64),
                pods_moved_per_hour: stat(&|r| r.outcome.pods_moved_per_hour),
                node_hours_well_powered: stat(&|r| r.outcome.node_hours_by_level.well_powered),
                node_hours_vulnerable: stat(&|r| r.outcome.node_hours_by_level.vulnerable),
                node_hours_low_powered: stat(&|r| r.outcome.node_hours_by_level.low_powered),
                node_hours_powerless: stat(&|r| r.outcome.node_hours_by_level.powerless),
                node_hours_browned_out: stat(&|r| r.outcome.node_hours_browned_out),
                energy_brownouts_at_idle_kwh: stat(&at_idle),
                gap_captured_brownouts_at_idle_percent: captured_of(&kube_at_idle, &at_idle),
                brownout_kills: stat(&|r| r.outcome.brownout_kills as f64),
                powerless_fewer_than_seed_percent: fewer_powerless.map(|v| Stat::of(&v)),
                boots: stat(&|r| r.outcome.boots as f64),
                decisions: stat(&|r| r.outcome.decisions as f64),
                decisions_per_second: stat(&|r| r.timing.decisions_per_second),
                marginal_error_percent: quality(&|q| q.marginal_error_percent()),
                truly_cheapest_percent: quality(&|q| q.truly_cheapest_percent()),
                mean_regret_watts: quality(&|q| q.mean_regret_watts()),
            }
        })
        .collect()
}

/// `mean ± stdev` with `digits` decimals (no spread shown when there is none).
fn f(s: Stat, digits: usize) -> String {
    if s.stdev == 0.0 {
        format!("{:.*}", digits, s.mean)
    } else {
        format!("{:.*} ± {:.*}", digits, s.mean, digits, s.stdev)
    }
}

/// A Markdown table of the summaries.
pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| policy | IT energy kWh | bound always-on kWh | bound autoscaled kWh | kube→bound gap captured % | saving vs kube % | mean W | peak W | never placed | pending mean s | pending p99 s | node-h on | node-h off | evictions | boots | decisions/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in summaries {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.policy.label(),
            f(s.energy_kwh, 2),
            f(s.bound_always_on_kwh, 2),
            f(s.bound_autoscaled_kwh, 2),
            s.gap_captured_percent.map_or("–".into(), |v| f(v, 1)),
            s.saving_vs_kube_percent.map_or("–".into(), |v| f(v, 1)),
            f(s.mean_watts, 0),
            f(s.peak_watts, 0),
            f(s.pods_never_placed, 0),
            f(s.mean_pending_seconds, 1),
            f(s.p99_pending_seconds, 1),
            f(s.node_hours_on, 0),
            f(s.node_hours_off, 0),
            f(s.evictions, 0),
            f(s.boots, 0),
            f(s.decisions_per_second, 0),
        );
    }
    out
}

/// The placement-quality figures of the policies that price pods with the agents' reports.
pub fn placement_table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| policy | marginal watts error % | chose the truly cheapest node of its tier % | true W lost per decision |\n\
         |---|---|---|---|\n",
    );
    for s in summaries {
        let (Some(error), Some(cheapest), Some(regret)) = (
            s.marginal_error_percent,
            s.truly_cheapest_percent,
            s.mean_regret_watts,
        ) else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.policy.label(),
            f(error, 1),
            f(cheapest, 1),
            f(regret, 2),
        );
    }
    out
}

/// A Markdown table of the energy-level figures (for scenarios with battery nodes).
pub fn levels_table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| policy | node-h well-powered | node-h vulnerable | node-h low-powered | node-h powerless | of which browned out | fewer powerless than serverless-seed % | pods killed by brown-outs | evictions | pods moved/h | IT energy, brown-outs at idle kWh | gap captured, brown-outs at idle % |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in summaries {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.policy.label(),
            f(s.node_hours_well_powered, 1),
            f(s.node_hours_vulnerable, 1),
            f(s.node_hours_low_powered, 1),
            f(s.node_hours_powerless, 1),
            f(s.node_hours_browned_out, 1),
            s.powerless_fewer_than_seed_percent
                .map_or("–".into(), |v| f(v, 1)),
            f(s.brownout_kills, 0),
            f(s.evictions, 0),
            f(s.pods_moved_per_hour, 1),
            f(s.energy_brownouts_at_idle_kwh, 2),
            s.gap_captured_brownouts_at_idle_percent
                .map_or("–".into(), |v| f(v, 1)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::PriceCheck;

    #[test]
    fn placement_quality_sums_errors_ties_and_regret_by_hand() {
        let mut q = PlacementQuality::default();
        q.add(&PriceCheck {
            predicted_watts: 10.0,
            true_watts: 12.0,
            best_true_watts: 11.98,
        });
        q.add(&PriceCheck {
            predicted_watts: 5.0,
            true_watts: 8.0,
            best_true_watts: 6.0,
        });
        assert_eq!(q.decisions, 2);
        // |10 − 12| + |5 − 8| = 5 W of 20 true.
        assert!((q.marginal_error_percent() - 25.0).abs() < 1e-9);
        // The first is within the 0.05 W tie: cheapest; the second lost 2 W.
        assert_eq!(q.truly_cheapest, 1);
        assert!((q.truly_cheapest_percent() - 50.0).abs() < 1e-9);
        assert!((q.mean_regret_watts() - (0.02 + 2.0) / 2.0).abs() < 1e-9);
    }

    /// A run of `policy` (seed 1) with `energy` kWh, `idle` kWh of it browned out, bound 10.
    fn run(policy: PolicyName, energy: f64, idle: f64) -> crate::Run {
        crate::Run {
            policy,
            seed: 1,
            outcome: crate::engine::Outcome {
                energy_kwh: energy,
                bound_always_on_kwh: 10.0,
                bound_autoscaled_kwh: 5.0,
                mean_watts: 0.0,
                peak_watts: 0.0,
                pods: 0,
                pods_never_placed: 0,
                mean_pending_seconds: 0.0,
                p99_pending_seconds: 0.0,
                node_hours_on: 0.0,
                node_hours_booting: 0.0,
                node_hours_off: 0.0,
                node_hours_browned_out: 0.0,
                browned_out_idle_kwh: idle,
                node_hours_by_level: LevelHours::default(),
                evictions: 0,
                pods_moved_per_hour: 0.0,
                brownout_kills: 0,
                boots: 0,
                decisions: 0,
                placement: None,
                series: Vec::new(),
            },
            timing: crate::engine::Timing {
                wall_seconds: 1.0,
                decisions_per_second: 0.0,
            },
        }
    }

    #[test]
    fn the_gap_is_captured_on_energy_and_at_equal_availability_by_hand() {
        // kube-default 30 kWh of which nodes browned out 4 kWh of idle; the policy 28 and 1.
        let runs = [
            run(PolicyName::KubeDefault, 30.0, 4.0),
            run(PolicyName::Wattwise, 28.0, 1.0),
        ];
        let summaries = summarise(&runs, false);
        let w = summaries
            .iter()
            .find(|s| s.policy == PolicyName::Wattwise)
            .unwrap();
        // (30 − 28) / (30 − 10) and (34 − 29) / (34 − 10).
        assert!((w.gap_captured_percent.unwrap().mean - 10.0).abs() < 1e-9);
        assert!((w.energy_brownouts_at_idle_kwh.mean - 29.0).abs() < 1e-9);
        let at_idle = w.gap_captured_brownouts_at_idle_percent.unwrap().mean;
        assert!((at_idle - 500.0 / 24.0).abs() < 1e-9, "{at_idle}");
        assert!(levels_table(&summaries).contains("| 29.00 | 20.8 |"));
    }
}
