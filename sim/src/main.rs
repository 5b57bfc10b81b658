//! `wattwise-sim SCENARIO.yaml [--json [--series]] [--plots DIR] [--seeds 1,2,3]`: runs every policy of the scenario under
//! every seed and prints the figures per policy (mean ± stdev over seeds).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use wattwise_sim::{plot, report, scenario::Scenario, simulate};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The scenario file (YAML).
    scenario: PathBuf,
    /// Print the runs and summaries as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// With --json: include each run's time series (every 60 s simulated: watts, cumulative
    /// kWh, nodes per true energy level), for plots.
    #[arg(long)]
    series: bool,
    /// Write PNG plots of the first seed (power, cumulative energy, energy levels) into DIR.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Override the scenario's seeds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,wattwise_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(seeds) = args.seeds {
        scenario.seeds = seeds;
    }
    let runs = simulate(&scenario).with_context(|| format!("scenario {}", scenario.name))?;
    let autoscaled = matches!(
        scenario.power_management,
        wattwise_sim::scenario::PowerManagement::Autoscaler { .. }
    );
    let summaries = report::summarise(&runs, autoscaled);
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in plot::scenario(dir, &scenario.name, &runs)? {
            tracing::info!(file = %file.display(), "plot written");
        }
    }
    if args.json {
        let runs: Vec<_> = runs
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if !args.series {
                    r.outcome.series.clear();
                }
                r
            })
            .collect();
        let out = serde_json::json!({
            "scenario": scenario.name,
            "seeds": scenario.seeds,
            "summaries": summaries,
            "runs": runs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "scenario {} ({} h, seeds {:?})\n",
            scenario.name, scenario.duration_hours, scenario.seeds
        );
        print!("{}", report::table(&summaries));
        let placement = report::placement_table(&summaries);
        if placement.lines().count() > 2 {
            println!(
                "\nPrices against the true curves (the model's error where placement needs it):\n"
            );
            print!("{placement}");
        }
        if scenario.nodes.iter().any(|g| g.battery.is_some()) {
            println!("\nEnergy levels (true battery charge):\n");
            print!("{}", report::levels_table(&summaries));
        }
        let wall: f64 = runs.iter().map(|r| r.timing.wall_seconds).sum();
        println!("\n{} runs, {:.1} s wall", runs.len(), wall);
    }
    Ok(())
}
