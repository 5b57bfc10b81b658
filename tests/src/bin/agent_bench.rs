//! `wattwise-agent-bench [--seconds N] [--warmup N] [--agent PATH]`: what the release agent costs
//! a node, and what the system it replaces cost for the same data. Prints figures; it is not a
//! timed test.
//!
//! The agent runs with every part active — RMCP+ to an ipmi_sim BMC with DCMI (Dell-like layout),
//! an ONNX model fed by utilisation and all three temperatures, sysinfo CPU, a fixed energy source,
//! and a report stream to a real PowerReports receiver in this process that acknowledges every
//! report — at a 1 s interval, with `/metrics` scraped every 15 s. After a warm-up,
//! `/proc/<pid>/status` (VmRSS, RssAnon, VmHWM) is sampled every second and `/proc/<pid>/stat`
//! (utime + stime) is read at both ends of the window.
//!
//! Baseline, same run, same BMC, same duration: the original system's ipmi_exporter approach,
//! one `ipmitool -I lanplus … sdr` plus one `ipmitool … dcmi power reading` per second, each a
//! fresh process and RMCP+ session; their CPU and maximum RSS come from `wait4`. (The exporter
//! daemon's own cost comes on top of that and is not counted.)
//!
//! Targets (issue 4): agent RSS ≤ 20 MiB and CPU ≤ 1 % of one core at a 1 s interval over 60 s.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::sync::mpsc;
use wattwise_proto::v1 as pb;
use wattwise_testenv::agent::{AgentProcess, Launch};
use wattwise_testenv::bench;
use wattwise_testenv::bmc::{Bmc, BmcSpec};
use wattwise_testenv::onnx::ModelSpec;
use wattwise_testenv::process::ManagedProcess;
use wattwise_testenv::receiver::{next_report, ReportReceiver};

const TARGET_RSS_MIB: f64 = 20.0;
const TARGET_CPU_PERCENT: f64 = 1.0;
const MIB: f64 = 1024.0 * 1024.0;

struct Args {
    seconds: u64,
    warmup: u64,
    agent: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        seconds: 60,
        warmup: 5,
        agent: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--warmup" => args.warmup = value()?.parse().context("--warmup")?,
            "--agent" => args.agent = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("usage: wattwise-agent-bench [--seconds N (60)] [--warmup N (5)] [--agent PATH]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    ensure!(args.seconds >= 1, "--seconds must be at least 1");
    Ok(args)
}

/// `target/release/wattwise-agent` of this workspace (this binary lives in `target/<profile>/`).
fn release_agent() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("this binary is not in a target/<profile>/ directory; pass --agent PATH")?;
    let agent = target.join("release").join("wattwise-agent");
    ensure!(
        agent.is_file(),
        "{} is missing: run `cargo build --release -p wattwise-agent` first (the benchmark \
         measures the release build), or pass --agent PATH",
        agent.display()
    );
    Ok(agent)
}

/// A model over utilisation and all three temperatures the Dell-like BMC provides.
fn model() -> ModelSpec {
    let mut spec = ModelSpec::linear(80.0, 280.0, 0.0);
    spec.name = "bench".into();
    spec.features = [
        "cpu_utilisation",
        "inlet_celsius",
        "cpu0_celsius",
        "cpu1_celsius",
    ]
    .map(String::from)
    .to_vec();
    spec.defaults = vec![
        ("inlet_celsius".into(), 25.0),
        ("cpu0_celsius".into(), 50.0),
        ("cpu1_celsius".into(), 50.0),
    ];
    spec.formula.bias = 60.0;
    spec.formula.linear = vec![200.0, 0.4, 0.2, 0.2];
    spec
}

fn rusage_cpu(usage: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct AgentFigures {
    wall: Duration,
    cpu: Duration,
    rss: Vec<u64>,
    anon: Vec<u64>,
    hwm: u64,
    threads: u64,
    reports: usize,
}

struct BaselineFigures {
    wall: Duration,
    cycles: u32,
    failures: u32,
    cpu: Duration,
    max_rss_kib: i64,
}

async fn measure_agent(
    agent: &mut AgentProcess,
    reports: &mut mpsc::UnboundedReceiver<pb::NodeReport>,
    seconds: u64,
) -> Result<AgentFigures> {
    let pid = agent.pid();
    while reports.try_recv().is_ok() {}
    let started = Instant::now();
    let cpu_before = bench::cpu_time(&pid.to_string())?;
    let (mut rss, mut anon) = (Vec::new(), Vec::new());
    let mut threads = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    for second in 0..seconds {
        ticker.tick().await;
        ensure!(
            agent.is_running(),
            "the agent exited:\n{}",
            agent.log_tail(30)
        );
        // A Prometheus scrape at its default interval.
        if second % 15 == 0 {
            agent.metrics_text().await?;
        }
        let now = bench::memory(&pid.to_string())?;
        rss.push(now.rss);
        anon.push(now.anon);
        threads = threads.max(now.threads);
    }
    let cpu = bench::cpu_time(&pid.to_string())? - cpu_before;
    let wall = started.elapsed();
    let hwm = bench::memory(&pid.to_string())?.hwm;
    let mut received = 0;
    while reports.try_recv().is_ok() {
        received += 1;
    }
    Ok(AgentFigures {
        wall,
        cpu,
        rss,
        anon,
        hwm,
        threads,
        reports: received,
    })
}

/// One `ipmitool sdr` and one `ipmitool dcmi power reading` per second for `seconds`.
fn measure_baseline(
    bmc_port: u16,
    user: &str,
    password: &str,
    seconds: u64,
) -> Result<BaselineFigures> {
    let ipmitool = wattwise_testenv::process::require_program("ipmitool")?;
    let logs = tempfile::Builder::new()
        .prefix("wattwise-bench-")
        .tempdir()?;
    let port = bmc_port.to_string();
    let run = |what: &[&str]| -> Result<(bool, libc::rusage)> {
        let mut cmd = Command::new(&ipmitool);
        cmd.args([
            "-I",
            "lanplus",
            "-C",
            "3",
            "-H",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            user,
            "-E",
        ])
        .args(what)
        .env("IPMI_PASSWORD", password);
        let mut child = ManagedProcess::spawn("ipmitool", cmd, logs.path())?;
        let (status, usage) = child.wait_with_usage()?;
        Ok((status.success(), usage))
    };
    let started = Instant::now();
    let mut figures = BaselineFigures {
        wall: Duration::ZERO,
        cycles: 0,
        failures: 0,
        cpu: Duration::ZERO,
        max_rss_kib: 0,
    };
    for i in 0..seconds {
        let due = started + Duration::from_secs(i);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for what in [&["sdr"][..], &["dcmi", "power", "reading"][..]] {
            let (ok, usage) = run(what)?;
            figures.failures += u32::from(!ok);
            figures.cpu += rusage_cpu(&usage);
            figures.max_rss_kib = figures.max_rss_kib.max(usage.ru_maxrss);
        }
        figures.cycles += 1;
    }
    // The window ends when the last cycle's second is over, like the agent's.
    let end = started + Duration::from_secs(seconds);
    if let Some(wait) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    figures.wall = started.elapsed();
    ensure!(
        figures.failures < figures.cycles * 2,
        "every ipmitool run failed; logs in {}",
        logs.keep().display()
    );
    Ok(figures)
}

fn percent(cpu: Duration, wall: Duration) -> f64 {
    100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "target met"
    } else {
        "TARGET MISSED"
    }
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    let agent_binary = match args.agent {
        Some(path) => path,
        None => release_agent()?,
    };
    ensure!(
        agent_binary.is_file(),
        "{} does not exist",
        agent_binary.display()
    );

    let bmc = Bmc::start(BmcSpec::dell_like()).await?;
    let dir = tempfile::Builder::new()
        .prefix("wattwise-bench-")
        .tempdir()?;
    let model_path = dir.path().join("bench.onnx");
    model().write(&model_path)?;
    let (tx, mut reports) = mpsc::unbounded_channel();
    let receiver = ReportReceiver::start("127.0.0.1:0".parse()?, true, tx).await?;
    let yaml = format!(
        "node_name: bench-node\ninterval: 1s\n\
         model: {{path: {model}}}\n\
         cpu: {{source: sysinfo}}\n\
         energy: {{source: {{type: fixed, percent: 80}}}}\n\
         bmc: {{mode: lan, host: 127.0.0.1, port: {port}, username: {user}, password_env: BMC_PASSWORD}}\n\
         scheduler: {{endpoints: [\"{scheduler}\"]}}\n",
        model = model_path.display(),
        port = bmc.port(),
        user = bmc.username(),
        scheduler = receiver.addr(),
    );
    let launch = Launch {
        binary: Some(agent_binary.clone()),
        ..Launch::default()
    };
    // Production logging (info), not the tests' debug.
    let env = [("BMC_PASSWORD", bmc.password()), ("RUST_LOG", "info")];
    let mut agent = AgentProcess::start_with(&yaml, &env, &launch).await?;

    // Every part active before measuring: BMC temperatures and DCMI watts, energy, the stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = next_report(&mut reports, Duration::from_secs(15)).await?;
        let measured = report.measured.as_ref().map(|m| m.source);
        if measured == Some(pb::ReadingSource::Dcmi as i32)
            && report.temperatures.len() == 3
            && report.energy.is_some()
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the agent never reported DCMI watts, 3 temperatures and energy; last report: {report:?}\nlog:\n{}",
            agent.log_tail(30)
        );
    }
    println!(
        "agent {} (pid {}): interval 1 s, BMC ipmi_sim over RMCP+ with DCMI, ONNX model with 4 inputs, \
         sysinfo CPU, fixed energy, report stream to {}",
        agent_binary.display(),
        agent.pid(),
        receiver.addr()
    );
    println!(
        "warm-up {} s, then {} s of measurement …",
        args.warmup, args.seconds
    );
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let a = measure_agent(&mut agent, &mut reports, args.seconds).await?;
    let metrics = agent.metrics_text().await?;
    for series in [
        "ipmi_up{collector=\"ipmi\"} 1",
        "ipmi_up{collector=\"dcmi\"} 1",
    ] {
        ensure!(
            metrics.contains(series),
            "the BMC was not read throughout: {series} missing from /metrics"
        );
    }
    agent.stop();
    drop(receiver);

    println!(
        "baseline: ipmitool sdr + ipmitool dcmi power reading once per second for {} s …",
        args.seconds
    );
    let (port, user, password) = (
        bmc.port(),
        bmc.username().to_string(),
        bmc.password().to_string(),
    );
    let seconds = args.seconds;
    let b = tokio::task::spawn_blocking(move || measure_baseline(port, &user, &password, seconds))
        .await??;

    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / MIB;
    let rss_mean = mean(&a.rss);
    let anon_mean = mean(&a.anon);
    let rss_max = *a.rss.iter().max().unwrap_or(&0) as f64 / MIB;
    let hwm = a.hwm as f64 / MIB;
    let agent_cpu = percent(a.cpu, a.wall);
    let base_cpu = percent(b.cpu, b.wall);
    let base_rss = b.max_rss_kib as f64 / 1024.0;
    println!();
    println!(
        "wattwise-agent over {:.1} s ({} samples):",
        a.wall.as_secs_f64(),
        a.rss.len()
    );
    println!(
        "  RSS mean {rss_mean:.2} MiB (anonymous {anon_mean:.2} MiB), max {rss_max:.2} MiB — {} (≤ {TARGET_RSS_MIB} MiB)",
        verdict(rss_max <= TARGET_RSS_MIB)
    );
    println!(
        "  peak RSS since start (VmHWM, includes startup: model load and validation) {hwm:.2} MiB"
    );
    println!(
        "  CPU {:.3} s = {agent_cpu:.3} % of one core — {} (≤ {TARGET_CPU_PERCENT} %)",
        a.cpu.as_secs_f64(),
        verdict(agent_cpu <= TARGET_CPU_PERCENT)
    );
    println!("  threads {}, reports received {}", a.threads, a.reports);
    println!(
        "baseline (ipmitool per second) over {:.1} s: {} cycles, {} failed runs",
        b.wall.as_secs_f64(),
        b.cycles,
        b.failures
    );
    println!(
        "  CPU {:.3} s = {base_cpu:.3} % of one core ({:.1} ms per cycle), max RSS of one run {base_rss:.2} MiB",
        b.cpu.as_secs_f64(),
        b.cpu.as_secs_f64() * 1000.0 / f64::from(b.cycles.max(1))
    );
    println!(
        "ratios agent/baseline: CPU {:.3}, RSS (agent mean / one ipmitool run) {:.2}",
        agent_cpu / base_cpu,
        rss_mean / base_rss
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    run().await
}
