//! `wattwise-bench-ingest [--streams N] [--seconds S] …`: what ingesting agent reports costs the
//! release wattwise-scheduler. Prints figures; it is not a timed test.
//!
//! A real control plane with N fake nodes and the scheduler. First a baseline: the scheduler idle
//! with the same nodes and no streams. Then N concurrent report streams (one per node, real gRPC
//! over loopback, each its own HTTP/2 connection), started spread over the first second, each
//! sending a valid report for its node (101-point curve, three temperatures, DCMI watts, energy,
//! sensor health — what an agent sends) once a second and reading its ack. After a warm-up,
//! the scheduler's CPU (utime + stime from `/proc/<pid>/stat`) and memory (VmRSS sampled every
//! second, VmHWM) are measured over the window, together with the acks received.
//!
//! The load generator runs in this process on the same machine: its own CPU is printed too so
//! readers can judge the interference. Targets (issue 5): ≤ 0.5 core and ≤ 256 MiB at 5,000
//! streams at 1 Hz.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use wattwise_proto::v1 as pb;
use wattwise_testenv::bench::{self, Memory, SchedulerBinary, MIB};
use wattwise_testenv::control_plane::{ControlPlane, FakeNode};
use wattwise_testenv::reports::{NodePowerSpec, ReportStream};
use wattwise_testenv::served::ServedProcess;

const TARGET_CORES: f64 = 0.5;
const TARGET_RSS_MIB: f64 = 256.0;

struct Args {
    streams: usize,
    seconds: u64,
    warmup: u64,
    idle_seconds: Option<u64>,
    node_concurrency: usize,
    unschedulable_pods: usize,
    scheduler: Option<PathBuf>,
    allow_debug: bool,
}

const USAGE: &str = "usage: wattwise-bench-ingest [--streams N (5000)] [--seconds S (60)] \
[--warmup S (10)] [--idle-seconds S (= --seconds)] [--node-concurrency C (32)] \
[--unschedulable-pods N (0)] \
[--scheduler PATH | --release-binaries (default) | --allow-debug]";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        streams: 5000,
        seconds: 60,
        warmup: 10,
        idle_seconds: None,
        node_concurrency: 32,
        unschedulable_pods: 0,
        scheduler: None,
        allow_debug: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--streams" => args.streams = bench::flag_value(&flag, it.next())?,
            "--seconds" => args.seconds = bench::flag_value(&flag, it.next())?,
            "--warmup" => args.warmup = bench::flag_value(&flag, it.next())?,
            "--idle-seconds" => args.idle_seconds = Some(bench::flag_value(&flag, it.next())?),
            "--node-concurrency" => args.node_concurrency = bench::flag_value(&flag, it.next())?,
            "--unschedulable-pods" => {
                args.unschedulable_pods = bench::flag_value(&flag, it.next())?
            }
            "--scheduler" => args.scheduler = Some(bench::flag_value(&flag, it.next())?),
            "--release-binaries" => args.allow_debug = false,
            "--allow-debug" => args.allow_debug = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(args.streams >= 1, "--streams must be at least 1");
    ensure!(args.seconds >= 1, "--seconds must be at least 1");
    Ok(args)
}

/// Makes room for `needed` open files in this process (and so in the scheduler it starts).
/// Returns a note for the output.
fn raise_fd_limit(needed: u64) -> Result<String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    let before = (limit.rlim_cur, limit.rlim_max);
    if limit.rlim_cur >= needed {
        return Ok(format!(
            "RLIMIT_NOFILE {} (hard {}) suffices for {needed} descriptors; not raised",
            before.0, before.1
        ));
    }
    let wanted = needed.max(limit.rlim_max.min(1 << 20));
    limit.rlim_cur = wanted;
    limit.rlim_max = limit.rlim_max.max(wanted);
    // SAFETY: a valid pointer to a local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "RLIMIT_NOFILE is {} (hard {}) but {needed} descriptors are needed and raising it \
             failed: {err}",
            before.0,
            before.1
        );
    }
    Ok(format!(
        "raised RLIMIT_NOFILE from {} (hard {}) to {} (hard {}) in the bench process; the \
         scheduler inherits it",
        before.0, before.1, limit.rlim_cur, limit.rlim_max
    ))
}

/// A report as an agent with a Dell-like BMC sends it.
fn agent_report(spec: &NodePowerSpec, node: &str, instance: &str, sequence: u64) -> pb::NodeReport {
    let mut report = spec.report(node, instance, sequence);
    let temperature =
        |role: pb::TemperatureRole, index: u32, celsius: f64, name: &str| pb::Temperature {
            role: role as i32,
            index,
            celsius,
            sensor_name: name.to_string(),
            source: pb::ReadingSource::SdrSensor as i32,
        };
    report.temperatures = vec![
        temperature(pb::TemperatureRole::Inlet, 0, 23.5, "Inlet Temp"),
        temperature(pb::TemperatureRole::Cpu, 0, 51.0, "CPU1 Temp"),
        temperature(pb::TemperatureRole::Cpu, 1, 49.0, "CPU2 Temp"),
    ];
    let u = spec.utilisation.clamp(0.0, 1.0);
    report.measured = Some(pb::PowerMeasurement {
        source: pb::ReadingSource::Dcmi as i32,
        watts: spec.curve[(u * 100.0).round() as usize] + 3.0,
        sensor_name: "DCMI".into(),
    });
    let now = SystemTime::now();
    report.sensors = ["inlet", "cpu0", "cpu1", "power"]
        .iter()
        .map(|role| pb::SensorHealth {
            role: role.to_string(),
            status: pb::SensorStatus::Ok as i32,
            detail: String::new(),
            last_ok: Some(now.into()),
        })
        .collect();
    report
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    first_rejection: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
    /// Set while the measured window runs: streams record ack latencies then.
    measuring: AtomicBool,
}

impl Counters {
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// One fake agent: reports `node` once a second from `start` on until `stop`; returns the ack
/// latencies (µs) seen while measuring.
async fn agent_stream(
    index: usize,
    scheduler: SocketAddr,
    node: String,
    start: tokio::time::Instant,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut spec = NodePowerSpec::new(
        4000,
        70.0 + (index % 40) as f64,
        250.0 + (index % 120) as f64,
        1.2 + (index % 7) as f64 / 10.0,
    )
    .energy(pb::EnergyLevel::WellPowered, 90.0);
    let instance = format!("bench-{}-{index}", std::process::id());
    let mut sequence = 0u64;
    let mut stream: Option<ReportStream> = None;
    let mut ticks = tokio::time::interval_at(start, Duration::from_secs(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        if stream.is_none() {
            match ReportStream::connect(scheduler).await {
                Ok(s) => {
                    if sequence == 0 {
                        counters.connected.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    stream = Some(s);
                }
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    counters
                        .first_error
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| format!("{node}: {e:#}"));
                    continue;
                }
            }
        }
        sequence += 1;
        // Utilisation moves a little, as on a real node.
        spec.utilisation = 0.2 + 0.01 * ((sequence + index as u64) % 10) as f64;
        let report = agent_report(&spec, &node, &instance, sequence);
        let sent = Instant::now();
        let s = stream.as_mut().expect("connected above");
        match s.send(report).await {
            Ok(ack) if ack.accepted => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                if counters.measuring.load(Ordering::Relaxed) {
                    latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Ok(ack) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                counters
                    .first_rejection
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| format!("{node} #{sequence}: {}", ack.reason));
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                counters
                    .first_error
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| format!("{node} #{sequence}: {e:#}"));
                stream = None;
            }
        }
    }
    latencies
}

/// CPU and memory of the scheduler (and of this process) over one window.
struct Window {
    wall: Duration,
    scheduler_cpu: Duration,
    /// Per-second scheduler CPU, in cores.
    per_second: Vec<f64>,
    bench_cpu: Duration,
    rss: Vec<u64>,
    end: Memory,
}

impl Window {
    fn cores(&self) -> f64 {
        self.scheduler_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
    fn bench_cores(&self) -> f64 {
        self.bench_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
    fn rss_mean_mib(&self) -> f64 {
        self.rss.iter().sum::<u64>() as f64 / self.rss.len().max(1) as f64 / MIB
    }
    fn rss_max_mib(&self) -> f64 {
        self.rss.iter().copied().max().unwrap_or(0) as f64 / MIB
    }
    fn per_second_percentile(&self, q: f64) -> f64 {
        percentile(&self.per_second, q)
    }
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn measure(scheduler: &mut ServedProcess, seconds: u64) -> Result<Window> {
    let pid = scheduler.pid().to_string();
    let started = Instant::now();
    let cpu_before = bench::cpu_time(&pid)?;
    let bench_before = bench::cpu_time("self")?;
    let mut last = cpu_before;
    let mut last_at = started;
    let mut per_second = Vec::new();
    let mut rss = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    for _ in 0..seconds {
        ticks.tick().await;
        ensure!(
            scheduler.is_running(),
            "the scheduler exited:\n{}",
            scheduler.log_tail(40)
        );
        let now = bench::cpu_time(&pid)?;
        let at = Instant::now();
        per_second.push((now - last).as_secs_f64() / (at - last_at).as_secs_f64());
        (last, last_at) = (now, at);
        rss.push(bench::memory(&pid)?.rss);
    }
    let scheduler_cpu = bench::cpu_time(&pid)? - cpu_before;
    let bench_cpu = bench::cpu_time("self")? - bench_before;
    Ok(Window {
        wall: started.elapsed(),
        scheduler_cpu,
        per_second,
        bench_cpu,
        rss,
        end: bench::memory(&pid)?,
    })
}

/// Creates `count` pods for wattwise that fit no node (64 CPUs each) and waits until the
/// scheduler holds them all as unschedulable: a cluster with pods waiting while agents report.
async fn create_unschedulable_pods(
    plane: &ControlPlane,
    scheduler: &ServedProcess,
    count: usize,
) -> Result<()> {
    let client = plane.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    futures::stream::iter((0..count).map(|i| {
        let pods = pods.clone();
        async move {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("too-big-{i:05}"), "namespace": "default"},
                "spec": {
                    "schedulerName": "wattwise",
                    "containers": [{
                        "name": "work", "image": "busybox",
                        "resources": {"requests": {"cpu": "64", "memory": "64Mi"}}
                    }]
                }
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;
    let series = "wattwise_scheduler_pending_pods{queue=\"unschedulable\"}";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let held = scheduler.metric(series).await?.unwrap_or(0.0);
        if held >= count as f64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {held} of {count} pods are unschedulable in the scheduler after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("{count} pods that fit no node (64 CPUs each) wait as unschedulable");
    Ok(())
}

/// `series value` lines of the scheduler's metrics that start with `prefix`.
async fn metric_lines(scheduler: &ServedProcess, prefix: &str) -> Vec<String> {
    scheduler
        .metrics_text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    let binary: SchedulerBinary =
        bench::scheduler_binary(args.scheduler.clone(), args.allow_debug)?;
    let idle_seconds = args.idle_seconds.unwrap_or(args.seconds);
    // One descriptor per connection on each side, plus the API server clients and some slack.
    let fd_note = raise_fd_limit(args.streams as u64 + 1024)?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "wattwise-bench-ingest: {} nodes, {} report streams at 1 Hz (one HTTP/2 connection each, \
         started over the first second), warm-up {} s, window {} s; idle baseline {} s; {cpus} CPUs",
        args.streams, args.streams, args.warmup, args.seconds, idle_seconds
    );
    println!("{fd_note}");
    println!("wattwise-scheduler: {binary}");
    let config = "reports: {interval: 1s}\nleader_election: {enabled: false}\n";
    println!(
        "  config: reports.interval 1s (agents report at 1 Hz), leader election off, other keys \
         default; RUST_LOG=info"
    );

    let plane = ControlPlane::start().await?;
    let started = Instant::now();
    let nodes = bench::create_nodes(
        &plane,
        "node",
        args.streams,
        args.node_concurrency,
        FakeNode::new,
    )
    .await?;
    println!(
        "created {} Ready nodes in {:.1} s",
        nodes.len(),
        started.elapsed().as_secs_f64()
    );
    let mut scheduler = bench::start_scheduler(&plane, &binary, "bench", config).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while scheduler.metric("wattwise_scheduler_nodes").await? != Some(nodes.len() as f64) {
        ensure!(
            Instant::now() < deadline,
            "the scheduler does not show {} nodes",
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("scheduler pid {} has all nodes", scheduler.pid());
    if args.unschedulable_pods > 0 {
        create_unschedulable_pods(&plane, &scheduler, args.unschedulable_pods).await?;
    }

    println!("idle baseline, {idle_seconds} s …");
    // Let start-up settle first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unschedulable_series =
        "wattwise_scheduler_schedule_attempts_total{result=\"unschedulable\"}";
    let idle_retries_before = scheduler.metric(unschedulable_series).await?.unwrap_or(0.0);
    let idle = measure(&mut scheduler, idle_seconds).await?;
    let idle_retries =
        scheduler.metric(unschedulable_series).await?.unwrap_or(0.0) - idle_retries_before;

    println!(
        "starting {} streams, warm-up {} s …",
        args.streams, args.warmup
    );
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let first = tokio::time::Instant::now() + Duration::from_millis(100);
    let spread = Duration::from_secs(1);
    let tasks: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let start = first + spread.mul_f64(i as f64 / args.streams as f64);
            tokio::spawn(agent_stream(
                i,
                scheduler.grpc_addr(),
                node.clone(),
                start,
                counters.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let connected = counters.connected.load(Ordering::Relaxed);
    let agents = scheduler
        .metric("wattwise_scheduler_connected_agents")
        .await?;
    println!(
        "after warm-up: {connected} streams connected (scheduler: {} open), {} acks, {} rejected, \
         {} errors; measuring {} s …",
        agents.unwrap_or(f64::NAN),
        counters.accepted.load(Ordering::Relaxed),
        counters.rejected.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
        args.seconds
    );

    let retries_before = scheduler.metric(unschedulable_series).await?.unwrap_or(0.0);
    let before = counters.snapshot();
    counters.measuring.store(true, Ordering::Relaxed);
    let loaded = measure(&mut scheduler, args.seconds).await;
    counters.measuring.store(false, Ordering::Relaxed);
    let after = counters.snapshot();
    let loaded = loaded?;
    let reports = metric_lines(&scheduler, "wattwise_scheduler_reports_total").await;
    let retries = scheduler.metric(unschedulable_series).await?.unwrap_or(0.0) - retries_before;

    let _ = stop_tx.send(true);
    let mut latencies: Vec<u32> = Vec::new();
    for task in tasks {
        if let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(15), task).await {
            latencies.extend(l);
        }
    }
    let log_tail = scheduler.log_tail(5);
    scheduler.stop();
    drop(plane);

    let acked = after.0 - before.0;
    let rejected_window = after.1 - before.1;
    let errors_window = after.2 - before.2;
    let total_rejected = counters.rejected.load(Ordering::Relaxed);
    let rate = acked as f64 / loaded.wall.as_secs_f64();
    let latencies_ms: Vec<f64> = latencies.iter().map(|&us| us as f64 / 1000.0).collect();

    println!();
    println!(
        "idle scheduler ({} nodes, no streams) over {:.1} s:",
        nodes.len(),
        idle.wall.as_secs_f64()
    );
    println!(
        "  CPU {:.3} s = {:.4} cores; RSS mean {:.1} MiB, max {:.1} MiB; VmHWM {:.1} MiB; threads {}",
        idle.scheduler_cpu.as_secs_f64(),
        idle.cores(),
        idle.rss_mean_mib(),
        idle.rss_max_mib(),
        idle.end.hwm as f64 / MIB,
        idle.end.threads
    );
    println!(
        "loaded scheduler ({} streams at 1 Hz) over {:.1} s:",
        args.streams,
        loaded.wall.as_secs_f64()
    );
    println!(
        "  reports acked {acked} = {rate:.1}/s (offered {}/s); rejected {rejected_window} in the \
         window, {total_rejected} in all — {}; stream errors {errors_window} in the window, {} in \
         all, reconnects {}",
        args.streams,
        if total_rejected == 0 {
            "none, as required"
        } else {
            "REJECTIONS (must be 0)"
        },
        counters.errors.load(Ordering::Relaxed),
        counters.reconnects.load(Ordering::Relaxed)
    );
    println!(
        "  ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} acks)",
        percentile(&latencies_ms, 0.5),
        percentile(&latencies_ms, 0.99),
        percentile(&latencies_ms, 1.0),
        latencies_ms.len()
    );
    println!(
        "  CPU {:.2} s = {:.3} cores (per second: p50 {:.3}, p95 {:.3}, max {:.3}) — {} (≤ {TARGET_CORES} core)",
        loaded.scheduler_cpu.as_secs_f64(),
        loaded.cores(),
        loaded.per_second_percentile(0.5),
        loaded.per_second_percentile(0.95),
        loaded.per_second_percentile(1.0),
        bench::verdict(loaded.cores() <= TARGET_CORES)
    );
    println!(
        "  RSS mean {:.1} MiB, max {:.1} MiB; VmHWM {:.1} MiB — {} (≤ {TARGET_RSS_MIB} MiB); threads {}",
        loaded.rss_mean_mib(),
        loaded.rss_max_mib(),
        loaded.end.hwm as f64 / MIB,
        bench::verdict(loaded.end.hwm as f64 / MIB <= TARGET_RSS_MIB),
        loaded.end.threads
    );
    println!(
        "  per report: {:.1} µs of scheduler CPU ({:.1} µs above idle)",
        loaded.scheduler_cpu.as_secs_f64() * 1e6 / acked.max(1) as f64,
        (loaded.cores() - idle.cores()) * loaded.wall.as_secs_f64() * 1e6 / acked.max(1) as f64
    );
    println!(
        "increment over idle: CPU +{:.3} cores ({}), RSS mean +{:.1} MiB (×{:.2}), VmHWM +{:.1} MiB",
        loaded.cores() - idle.cores(),
        if idle.cores() >= 0.001 {
            format!("×{:.1}", loaded.cores() / idle.cores())
        } else {
            "idle < 0.001 core: no meaningful ratio".to_string()
        },
        loaded.rss_mean_mib() - idle.rss_mean_mib(),
        loaded.rss_mean_mib() / idle.rss_mean_mib().max(1e-9),
        (loaded.end.hwm as f64 - idle.end.hwm as f64) / MIB
    );
    println!(
        "load generator (this process, same {cpus} CPUs): {:.3} cores over the window (idle window: {:.3})",
        loaded.bench_cores(),
        idle.bench_cores()
    );
    println!("scheduler report counters: {}", reports.join(", "));
    if args.unschedulable_pods > 0 {
        println!(
            "unschedulable pods retried {retries} times in the window ({:.1}/s; idle window: {:.1}/s)",
            retries / loaded.wall.as_secs_f64(),
            idle_retries / idle.wall.as_secs_f64()
        );
    }
    if let Some(r) = counters.first_rejection.lock().unwrap().as_ref() {
        println!("first rejection: {r}");
    }
    if let Some(e) = counters.first_error.lock().unwrap().as_ref() {
        println!("first stream error: {e}");
    }
    ensure!(
        total_rejected == 0,
        "{total_rejected} reports were rejected; scheduler log tail:\n{log_tail}"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    run().await
}
