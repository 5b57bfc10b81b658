//! `wattwise-bench-throughput [--nodes N] [--pods M] [--kube-qps default|raised|both] …`: how
//! fast wattwise-scheduler binds pods against a real kube-apiserver, next to the stock
//! kube-scheduler (v1.20.2, the one built for tests) in the same run. Prints figures; it is not a
//! timed test.
//!
//! One control plane with N fake nodes (4 CPUs, 16 GiB, 110 pods each). Then, one after the
//! other, each on a fresh namespace and with only that scheduler running: kube-scheduler binds M
//! pods (`schedulerName: default-scheduler`), then wattwise-scheduler binds M pods
//! (`schedulerName: wattwise`). Pods are identical (100m CPU, 64 Mi) and created the same way
//! (`--create-concurrency` at a time). A warm-up pod bound before each phase proves the scheduler
//! has synced; the phase then runs from the first pod created to the last pod seen bound (a
//! watch on `spec.nodeName`).
//!
//! Client-side rate limits: kube-scheduler 1.20 talks to the API server at 50 QPS, burst 100 by
//! default (binds and events each through such a client); wattwise's kube-rs client has no
//! client-side limit. `--kube-qps both` (the default) measures kube-scheduler with its defaults
//! and with `--kube-api-qps/--kube-api-burst` raised out of the way (the comparable setting), on
//! separate namespaces; the ratio is given against both.
//!
//! wattwise runs with its default configuration (binding concurrency, event rate), leader
//! election off like the fixture's kube-scheduler, `RUST_LOG=info`, and no agent reports (every
//! node priced with the default curve). Target (issue 5): wattwise / kube-scheduler ≥ 1.0.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::Client;
use serde_json::json;
use tokio::sync::oneshot;
use wattwise_scheduler::config::SchedulerConfig;
use wattwise_testenv::bench::{self, SchedulerBinary};
use wattwise_testenv::control_plane::{ControlPlane, KUBE_VERSION};

/// Requests of every benchmark pod.
const POD_CPU_MILLICORES: u64 = 100;
const POD_MEMORY: &str = "64Mi";
/// What a FakeNode offers.
const NODE_CPU_MILLICORES: u64 = 4000;
const NODE_PODS: u64 = 110;
/// kube-scheduler 1.20's client defaults, and the raised setting.
const KUBE_DEFAULT_QPS: (u32, u32) = (50, 100);
const KUBE_RAISED_QPS: (u32, u32) = (10_000, 20_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QpsMode {
    Default,
    Raised,
    Both,
}

struct Args {
    nodes: usize,
    pods: usize,
    create_concurrency: usize,
    node_concurrency: usize,
    kube_qps: QpsMode,
    scheduler: Option<PathBuf>,
    allow_debug: bool,
}

const USAGE: &str = "usage: wattwise-bench-throughput [--nodes N (1000)] [--pods M (2000)] \
[--create-concurrency C (32)] [--node-concurrency C (32)] [--kube-qps default|raised|both (both)] \
[--scheduler PATH | --release-binaries (default) | --allow-debug]";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        nodes: 1000,
        pods: 2000,
        create_concurrency: 32,
        node_concurrency: 32,
        kube_qps: QpsMode::Both,
        scheduler: None,
        allow_debug: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--nodes" => args.nodes = bench::flag_value(&flag, it.next())?,
            "--pods" => args.pods = bench::flag_value(&flag, it.next())?,
            "--create-concurrency" => {
                args.create_concurrency = bench::flag_value(&flag, it.next())?
            }
            "--node-concurrency" => args.node_concurrency = bench::flag_value(&flag, it.next())?,
            "--kube-qps" => {
                args.kube_qps = match it.next().as_deref() {
                    Some("default") => QpsMode::Default,
                    Some("raised") => QpsMode::Raised,
                    Some("both") => QpsMode::Both,
                    other => bail!("--kube-qps takes default, raised or both, not {other:?}"),
                }
            }
            "--scheduler" => args.scheduler = Some(bench::flag_value(&flag, it.next())?),
            // The default; accepted so that scripts can say so.
            "--release-binaries" => args.allow_debug = false,
            "--allow-debug" => args.allow_debug = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        args.nodes >= 1 && args.pods >= 1,
        "--nodes and --pods must be at least 1"
    );
    ensure!(
        args.create_concurrency >= 1,
        "--create-concurrency must be at least 1"
    );
    Ok(args)
}

fn pod(namespace: &str, name: &str, scheduler_name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "bench"}},
        "spec": {
            "schedulerName": scheduler_name,
            "containers": [{
                "name": "work", "image": "busybox",
                "resources": {"requests": {
                    "cpu": format!("{POD_CPU_MILLICORES}m"), "memory": POD_MEMORY,
                }}
            }]
        }
    }))?)
}

struct Phase {
    label: String,
    pods: usize,
    /// First pod created → last pod created.
    created: Duration,
    /// First pod created → last pod seen bound.
    total: Duration,
    /// utime + stime of the scheduler process over the phase.
    scheduler_cpu: Duration,
    nodes_used: usize,
    max_per_node: usize,
}

impl Phase {
    fn pods_per_second(&self) -> f64 {
        self.pods as f64 / self.total.as_secs_f64()
    }
}

/// Waits until `name` in `namespace` has a node.
async fn wait_bound(api: &Api<Pod>, name: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let pod = api.get(name).await?;
        if pod.spec.and_then(|s| s.node_name).is_some() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "pod {name} not bound within {timeout:?}: is the scheduler running?"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Binds `pods` pods with `scheduler_name` on the fresh namespace `namespace` and measures it.
/// `scheduler_pid` is the process whose CPU is reported.
async fn run_phase(
    client: &Client,
    label: &str,
    namespace: &str,
    scheduler_name: &str,
    scheduler_pid: u32,
    args: &Args,
) -> Result<Phase> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await
        .with_context(|| format!("creating namespace {namespace}"))?;
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);

    // The scheduler is up and has synced once it binds this one.
    api.create(
        &PostParams::default(),
        &pod(namespace, "warmup", scheduler_name)?,
    )
    .await?;
    wait_bound(&api, "warmup", Duration::from_secs(120)).await?;

    // Watch every benchmark pod's spec.nodeName; report when the last one is bound.
    let names: Vec<String> = (0..args.pods).map(|i| format!("p-{i:05}")).collect();
    let expected: HashSet<String> = names.iter().cloned().collect();
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel::<(Instant, Vec<String>)>();
    let watch_api = api.clone();
    let watch = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut done_tx = Some(done_tx);
        let mut bound: std::collections::HashMap<String, String> = Default::default();
        let mut events = watcher::watcher(watch_api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let pod = match event {
                Ok(Event::InitDone) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(Event::Apply(pod)) | Ok(Event::InitApply(pod)) => pod,
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("pod watch: {e} (retrying)");
                    continue;
                }
            };
            let (Some(name), Some(node)) = (
                pod.metadata.name.clone(),
                pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                continue;
            };
            if expected.contains(&name) {
                bound.insert(name, node);
                if bound.len() == expected.len() {
                    if let Some(tx) = done_tx.take() {
                        let _ = tx.send((Instant::now(), bound.into_values().collect()));
                    }
                    return;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .context("the pod watch did not start within 60 s")??;

    let cpu_before = bench::cpu_time(&scheduler_pid.to_string())?;
    let started = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        let api = api.clone();
        async move {
            api.create(
                &PostParams::default(),
                &pod(namespace, name, scheduler_name)?,
            )
            .await
            .with_context(|| format!("creating pod {namespace}/{name}"))
            .map(drop)
        }
    }))
    .buffer_unordered(args.create_concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    let created = started.elapsed();
    let timeout = Duration::from_secs(120) + Duration::from_secs_f64(args.pods as f64 / 10.0);
    let (last_bound, nodes) = match tokio::time::timeout(timeout, done_rx).await {
        Ok(done) => done.context("the pod watch ended early")?,
        Err(_) => {
            watch.abort();
            bail!(
                "{label}: not all {} pods bound within {timeout:?}",
                args.pods
            )
        }
    };
    let total = last_bound - started;
    let scheduler_cpu = bench::cpu_time(&scheduler_pid.to_string())? - cpu_before;
    let mut per_node: std::collections::HashMap<String, usize> = Default::default();
    for node in nodes {
        *per_node.entry(node).or_default() += 1;
    }
    Ok(Phase {
        label: label.to_string(),
        pods: args.pods,
        created,
        total,
        scheduler_cpu,
        nodes_used: per_node.len(),
        max_per_node: per_node.values().copied().max().unwrap_or(0),
    })
}

fn print_phase(p: &Phase) {
    println!(
        "  {:<38} {:>6} {:>10.2} s {:>10.2} s {:>9.1} {:>10.2} s {:>7} {:>5}",
        p.label,
        p.pods,
        p.created.as_secs_f64(),
        p.total.as_secs_f64(),
        p.pods_per_second(),
        p.scheduler_cpu.as_secs_f64(),
        p.nodes_used,
        p.max_per_node,
    );
}

fn qps_args((qps, burst): (u32, u32)) -> Vec<String> {
    vec![
        format!("--kube-api-qps={qps}"),
        format!("--kube-api-burst={burst}"),
    ]
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    let binary: SchedulerBinary =
        bench::scheduler_binary(args.scheduler.clone(), args.allow_debug)?;
    let kube_modes: Vec<(&str, (u32, u32))> = match args.kube_qps {
        QpsMode::Default => vec![("default", KUBE_DEFAULT_QPS)],
        QpsMode::Raised => vec![("raised", KUBE_RAISED_QPS)],
        QpsMode::Both => vec![("default", KUBE_DEFAULT_QPS), ("raised", KUBE_RAISED_QPS)],
    };
    // Pods stay on their nodes (no kubelet, no namespace controller): every phase adds its pods.
    let phases = kube_modes.len() + 1;
    let total_pods = (phases * (args.pods + 1)) as u64;
    let nodes = args.nodes as u64;
    ensure!(
        total_pods * POD_CPU_MILLICORES * 2 <= nodes * NODE_CPU_MILLICORES
            && total_pods * 2 <= nodes * NODE_PODS,
        "{phases} phases × {} pods of {POD_CPU_MILLICORES}m would fill more than half of {} nodes \
         ({NODE_CPU_MILLICORES}m, {NODE_PODS} pods each): use more nodes or fewer pods",
        args.pods + 1,
        args.nodes
    );
    let defaults = SchedulerConfig::default();

    println!(
        "wattwise-bench-throughput: {} fake nodes ({} m CPU, 16 GiB, {NODE_PODS} pods each), {} pods \
         per phase ({POD_CPU_MILLICORES}m CPU, {POD_MEMORY} each, created {} at a time) on kube-apiserver \
         {KUBE_VERSION} + etcd on 127.0.0.1, {} CPUs",
        args.nodes,
        NODE_CPU_MILLICORES,
        args.pods,
        args.create_concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("wattwise-scheduler: {binary}");
    println!(
        "  defaults: binding.concurrency {}, events.per_second {} (burst {}); leader election off; \
         kube-rs client without client-side rate limit; no agent reports (default curve); RUST_LOG=info",
        defaults.binding.concurrency, defaults.events.per_second, defaults.events.burst
    );
    println!(
        "kube-scheduler {KUBE_VERSION}: leader election off, user system:kube-scheduler; client rate limits: {}",
        kube_modes
            .iter()
            .map(|(name, (q, b))| format!("{name} --kube-api-qps={q} --kube-api-burst={b}"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    let mut plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    let started = Instant::now();
    bench::create_nodes(&plane, "node", args.nodes, args.node_concurrency).await?;
    println!(
        "created {} Ready nodes in {:.1} s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    for (mode, limits) in &kube_modes {
        plane.start_kube_scheduler_with(&qps_args(*limits)).await?;
        let pid = plane
            .kube_scheduler_pid()
            .context("kube-scheduler did not start")?;
        let label = format!("kube-scheduler ({mode} QPS {}/{})", limits.0, limits.1);
        println!("phase: {label} …");
        let phase = run_phase(
            &client,
            &label,
            &format!("bench-kube-{mode}"),
            "default-scheduler",
            pid,
            &args,
        )
        .await?;
        plane.stop_kube_scheduler();
        results.push(phase);
    }

    let config = "leader_election: {enabled: false}\n";
    let mut wattwise = bench::start_scheduler(&plane, &binary, "bench", config).await?;
    println!("phase: wattwise-scheduler …");
    let phase = run_phase(
        &client,
        "wattwise-scheduler (defaults)",
        "bench-wattwise",
        &defaults.scheduler_name,
        wattwise.pid(),
        &args,
    )
    .await;
    let bind_errors = wattwise
        .metrics_text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("wattwise_scheduler_bind_errors_total"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    ensure!(
        wattwise.is_running(),
        "wattwise-scheduler exited:\n{}",
        wattwise.log_tail(40)
    );
    let phase = phase?;
    wattwise.stop();
    let wattwise_rate = phase.pods_per_second();
    results.push(phase);

    println!();
    println!(
        "  {:<38} {:>6} {:>12} {:>12} {:>9} {:>12} {:>7} {:>5}",
        "phase", "pods", "created in", "last bound", "pods/s", "sched. CPU", "nodes", "max"
    );
    for p in &results {
        print_phase(p);
    }
    println!(
        "  (last bound: from the first pod created to the last pod seen bound; sched. CPU: \
         utime+stime of the scheduler process over that time; nodes/max: nodes used, most pods on one)"
    );
    if !bind_errors.is_empty() {
        println!("  wattwise bind errors: {}", bind_errors.join(", "));
    }
    println!();
    for kube in &results[..results.len() - 1] {
        let ratio = wattwise_rate / kube.pods_per_second();
        println!(
            "ratio wattwise / {}: {ratio:.2} — {} (≥ 1.0)",
            kube.label,
            bench::verdict(ratio >= 1.0)
        );
    }
    if results.iter().any(|p| p.label.contains("raised")) {
        println!(
            "the comparable setting is the raised one: neither client is then rate-limited on its \
             side, both are limited only by the API server, etcd and themselves"
        );
    }
    println!(
        "pod creation rate per phase (pods/s): {} — a phase whose pods/s is close to its creation \
         rate is bound by creation, not by its scheduler",
        results
            .iter()
            .map(|p| format!("{:.0}", p.pods as f64 / p.created.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(plane);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    run().await
}
