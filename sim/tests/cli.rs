//! The `wattwise-sim` binary as the README and docs/evaluation.md tell users to run it: a
//! committed scenario in, a table or JSON out, PNG plots on request; a bad scenario gives an error naming the file and
//! field, and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new(env!("CARGO_BIN_EXE_wattwise-sim"))
        .args(args)
        .current_dir(repo)
        .env("NO_COLOR", "1")
        .output()
        .expect("running wattwise-sim")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_trace_scenario_runs_every_policy_and_reports_json_and_a_table() {
    let out = sim(&["sim/scenarios/example-trace.yaml", "--json", "--seeds", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains('\u{1b}'),
        "no terminal colours in a log that is not a terminal"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["scenario"], "example-trace");
    let runs = json["runs"].as_array().expect("runs");
    let policies: Vec<&str> = runs.iter().filter_map(|r| r["policy"].as_str()).collect();
    assert_eq!(
        policies,
        [
            "wattwise",
            "kube-default",
            "most-allocated",
            "random",
            "minimize-power",
            "serverless-seed"
        ]
    );
    for run in runs {
        let o = &run["outcome"];
        let energy = o["energy_kwh"].as_f64().unwrap();
        let always_on = o["bound_always_on_kwh"].as_f64().unwrap();
        let autoscaled = o["bound_autoscaled_kwh"].as_f64().unwrap();
        assert!(energy > 0.0 && energy.is_finite(), "{run}");
        // The trace's autoscaled scenario: the whole-server bound holds for every policy.
        assert!(autoscaled <= energy + 1e-9, "{run}");
        assert!(autoscaled <= always_on + 1e-9, "{run}");
        assert_eq!(o["pods"], 300, "{run}");
    }

    let plots = tempfile::tempdir().unwrap();
    let dir = plots.path().join("plots");
    let table = sim(&[
        "sim/scenarios/example-trace.yaml",
        "--seeds",
        "1",
        "--plots",
        dir.to_str().unwrap(),
    ]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    for policy in policies {
        assert!(table.contains(policy), "{policy} missing:\n{table}");
    }
    for chart in ["power", "energy"] {
        let file = dir.join(format!("example-trace-{chart}.png"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} is a PNG",
            file.display()
        );
    }
    assert!(
        !dir.join("example-trace-levels.png").exists(),
        "no battery, no levels chart"
    );
}

#[test]
fn a_bad_scenario_is_refused_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/example-trace.yaml"),
    )
    .unwrap();
    let bad: PathBuf = dir.path().join("typo.yaml");
    std::fs::write(&bad, original.replace("duration_hours", "duration_hourz")).unwrap();
    let out = sim(&[bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("typo.yaml"), "{err}");
    assert!(err.contains("duration_hourz"), "{err}");

    let out = sim(&["sim/scenarios/no-such-scenario.yaml"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-scenario.yaml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_solar_scenario_reports_energy_levels_and_a_time_series_on_request() {
    // The committed edge-solar scenario, shortened to 2 hours and two policies.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = repo.join("data").canonicalize().unwrap();
    let original = std::fs::read_to_string(repo.join("sim/scenarios/edge-solar.yaml")).unwrap();
    let short = original
        .replace("../../data/", &format!("{}/", data.display()))
        .replace("duration_hours: 72", "duration_hours: 2")
        .lines()
        .map(|l| {
            if l.starts_with("policies:") {
                "policies: [wattwise, serverless-seed]"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short-solar.yaml");
    std::fs::write(&path, short).unwrap();
    let path = path.to_str().unwrap();

    let out = sim(&[path, "--json", "--series", "--seeds", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for run in json["runs"].as_array().unwrap() {
        let o = &run["outcome"];
        let levels = &o["node_hours_by_level"];
        let sum: f64 = [
            "well_powered",
            "vulnerable",
            "low_powered",
            "powerless",
            "grid",
        ]
        .iter()
        .map(|k| levels[k].as_f64().unwrap())
        .sum();
        // 21 nodes for 2 hours, each counted at one level (or the grid) at every instant.
        assert!((sum - 42.0).abs() < 1e-6, "{run}");
        assert!(
            (levels["grid"].as_f64().unwrap() - 2.0).abs() < 1e-6,
            "{run}"
        );
        let series = o["series"].as_array().unwrap();
        assert_eq!(series.len(), 121, "a sample a minute, both ends included");
        let last = &series[120];
        assert_eq!(last["t_seconds"], 7200.0);
        assert_eq!(last["grid"], 1);
        assert!(
            (last["energy_kwh"].as_f64().unwrap() - o["energy_kwh"].as_f64().unwrap()).abs() < 1e-9
        );
    }
    let seed = &json["summaries"][1];
    assert_eq!(seed["policy"], "serverless-seed");
    assert!(seed["evictions"]["mean"].as_f64().unwrap() > 0.0);

    // Without --series the JSON stays small; the table gains the energy-level table.
    let out = sim(&[path, "--json", "--seeds", "1"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["runs"][0]["outcome"]["series"], serde_json::json!([]));
    let table = text(&sim(&[path, "--seeds", "1"]).stdout);
    assert!(table.contains("node-h powerless"), "{table}");
}
