//! The README's main command, end to end: the `wattwise-demo` binary (what `scripts/demo` runs)
//! with the shipped sample workload, checked from its printed table.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wattwise_testenv::process::ManagedProcess;
use wattwise_testenv::served::workspace_binary;

#[test]
fn the_demo_binds_the_sample_workload_and_prints_where_each_pod_went() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workload = root.join("deploy/examples/workload.yaml");
    let pods: Vec<String> = std::fs::read_to_string(&workload)?
        .split("\n---")
        .filter(|doc| doc.contains("kind: Pod"))
        .map(|doc| {
            let meta = doc
                .split("metadata:")
                .nth(1)
                .context("pod without metadata")?;
            let name = meta
                .lines()
                .find_map(|l| l.trim().strip_prefix("name:"))
                .context("pod without a name")?;
            Ok(name.trim().trim_matches('"').to_string())
        })
        .collect::<Result<_>>()?;
    assert!(
        pods.len() >= 8,
        "the sample workload has {} pods",
        pods.len()
    );

    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(workspace_binary("wattwise-demo")?);
    cmd.arg("--workload").arg(&workload);
    let mut demo = ManagedProcess::spawn("wattwise-demo", cmd, dir.path())?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while demo.is_running() {
        if Instant::now() > deadline {
            bail!("demo still running after 300 s:\n{}", demo.log_tail(60));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = std::fs::read_to_string(demo.log_path())?;
    assert_eq!(demo.exit_code(), Some(0), "{output}");

    let table: Vec<&str> = output
        .lines()
        .skip_while(|l| !l.starts_with("pod "))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    for pod in &pods {
        let row = table
            .iter()
            .find(|r| r.split_whitespace().next() == Some(pod.as_str()))
            .with_context(|| format!("no row for {pod}:\n{output}"))?;
        assert!(!row.contains("(pending)"), "{row}");
        assert!(row.contains(" W "), "a predicted ΔW: {row}");
        assert!(!row.contains("powerless"), "{row}");
    }
    let summary = output
        .lines()
        .find(|l| l.starts_with("summary:"))
        .context("no summary")?;
    assert!(
        summary.contains(&format!(
            "{0}/{0} pods bound, none on a powerless node",
            pods.len()
        )),
        "{summary}"
    );
    // Predicted and BMC-measured increases agree: the agents' models follow the nodes' curves.
    let number_after = |marker: &str| -> Result<f64> {
        let rest = summary.split(marker).nth(1).context("marker")?;
        let number: String = rest
            .trim_start_matches('+')
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        Ok(number.parse()?)
    };
    // Both spreads are priced: over every node, and over the nodes at the levels wattwise used
    // (the default workload goes to well-powered nodes only).
    assert!(number_after("would add ")? > 0.0, "{summary}");
    assert!(
        number_after("on every node (wattwise/spread = ")? > 0.0,
        "{summary}"
    );
    assert!(
        summary.contains("on the nodes at the energy levels wattwise used (well-powered; "),
        "{summary}"
    );
    let predicted = number_after("predicted ")?;
    let measured = number_after("BMC reads ")?;
    assert!(
        predicted > 0.0 && (predicted - measured).abs() <= 0.25 * predicted,
        "predicted {predicted} W vs measured {measured} W: {summary}"
    );
    Ok(())
}
