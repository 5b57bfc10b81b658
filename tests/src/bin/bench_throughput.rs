//! `wattwise-bench-throughput [--shapes 1000x2000,5000x10000] [--kube-qps default|raised|both] …`:
//! how fast wattwise-scheduler drains a backlog of pending pods against a real kube-apiserver,
//! next to the stock kube-scheduler (v1.20.2, the one built for tests) drained the same way in the
//! same run. Prints figures; it is not a timed test.
//!
//! It measures the DRAIN RATE, not pod creation: for each shape (N nodes × M pods) one control
//! plane with N fake nodes shaped like scheduler_perf's default node (4 CPUs, 32 GiB, 110 pods; the
//! 5,000 × 10,000 shape is scheduler_perf's SchedulingBasic at 5,000 nodes with 10,000 measured
//! pods). Then, one phase after the other, each with only its scheduler running and on a fresh
//! namespace:
//!
//! 1. the benchmark takes the scheduler's leader Lease under its own identity and keeps renewing
//!    it, as a live leader would;
//! 2. it creates the M pods (scheduler_perf's default pod: 100m CPU, 500 Mi) with the phase's
//!    `schedulerName`, `--create-concurrency` at a time — outside the timed window;
//! 3. it starts the scheduler with leader election on and waits until it has synced its caches
//!    (wattwise: `/readyz`; kube-scheduler: it campaigns only after its informers synced) and its
//!    CPU has gone quiet: the whole backlog is in its queue;
//! 4. it releases the Lease; the timed window runs from the scheduler taking the Lease (seen
//!    through a watch on it) to the last pod seen bound (a watch on `spec.nodeName!=""` in the
//!    namespace: one event per bind, no polling);
//! 5. it checks that every pod got bound, none twice, and that no node's bound requests (cpu,
//!    memory, pod count, over every pod in the cluster) exceed its allocatable: a failed run is an
//!    error, never a figure. It then stops the scheduler and deletes the phase's pods, so that every
//!    phase starts from empty nodes.
//!
//! Client-side rate limits: kube-scheduler 1.20 talks to the API server at 50 QPS, burst 100 by
//! default (binds through such a client); wattwise's kube-rs client has no client-side limit.
//! `--kube-qps both` (the default) drains with kube-scheduler's defaults and with
//! `--kube-api-qps/--kube-api-burst` raised out of the way (the comparable setting); the ratio is
//! given against both.
//!
//! wattwise runs with its default configuration (binding concurrency unless
//! `--binding-concurrency` says otherwise, event rate) and leader election on, `RUST_LOG=info`,
//! and no agent reports (every node priced with the default curve).
//! Target (issue 5): wattwise / kube-scheduler ≥ 1.0.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wattwise_scheduler::cluster::quantity;
use wattwise_scheduler::config::SchedulerConfig;
use wattwise_testenv::bench::{self, SchedulerBinary};
use wattwise_testenv::control_plane::{ControlPlane, FakeNode, KubeScheduler, KUBE_VERSION};
use wattwise_testenv::process::wait_until;
use wattwise_testenv::served::ServedProcess;

/// scheduler_perf's default pod (config/templates/pod-default.yaml).
const POD_CPU: &str = "100m";
const POD_MEMORY: &str = "500Mi";
/// kube-scheduler 1.20's client defaults, and the raised setting.
const KUBE_DEFAULT_QPS: (u32, u32) = (50, 100);
const KUBE_RAISED_QPS: (u32, u32) = (10_000, 20_000);
/// The identity under which the benchmark holds a scheduler's Lease until the drain starts.
const HOLDER: &str = "wattwise-bench-holder";
/// How often the holder renews: well inside both schedulers' 15 s lease duration.
const HOLDER_RENEW: Duration = Duration::from_secs(2);
/// Where wattwise campaigns (its default Lease name, in a namespace that exists).
const WATTWISE_LEASE: (&str, &str) = ("default", "wattwise-scheduler");
/// kube-scheduler 1.20's default lock.
const KUBE_LEASE: (&str, &str) = ("kube-system", "kube-scheduler");

/// scheduler_perf's default node (4 CPUs, 32 GiB, 110 pods).
fn perf_node(name: &str) -> FakeNode {
    FakeNode::new(name).cpu(4000).memory_gib(32)
}

/// N nodes × M pods.
#[derive(Debug, Clone, Copy)]
struct Shape {
    nodes: usize,
    pods: usize,
}

impl FromStr for Shape {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (nodes, pods) = s
            .split_once('x')
            .with_context(|| format!("shape {s:?} is not NODESxPODS, e.g. 1000x2000"))?;
        let shape = Shape {
            nodes: nodes
                .parse()
                .with_context(|| format!("shape {s:?}: nodes"))?,
            pods: pods.parse().with_context(|| format!("shape {s:?}: pods"))?,
        };
        ensure!(
            shape.nodes >= 1 && shape.pods >= 1,
            "shape {s:?}: nodes and pods must be at least 1"
        );
        Ok(shape)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} nodes × {} pods", self.nodes, self.pods)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QpsMode {
    Default,
    Raised,
    Both,
}

struct Args {
    shapes: Vec<Shape>,
    create_concurrency: usize,
    node_concurrency: usize,
    kube_qps: QpsMode,
    /// wattwise's `binding.concurrency`, if not its default.
    binding_concurrency: Option<usize>,
    scheduler: Option<PathBuf>,
    allow_debug: bool,
}

const USAGE: &str = "usage: wattwise-bench-throughput [--shapes NxM,… (1000x2000,5000x10000)] \
[--create-concurrency C (32)] [--node-concurrency C (32)] [--kube-qps default|raised|both (both)] \
[--binding-concurrency N (wattwise's default)] [--scheduler PATH | --release-binaries (default) | --allow-debug]";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        shapes: vec![
            Shape {
                nodes: 1000,
                pods: 2000,
            },
            Shape {
                nodes: 5000,
                pods: 10_000,
            },
        ],
        create_concurrency: 32,
        node_concurrency: 32,
        kube_qps: QpsMode::Both,
        binding_concurrency: None,
        scheduler: None,
        allow_debug: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--shapes" => {
                let value = it.next().context("--shapes needs a value")?;
                args.shapes = value
                    .split(',')
                    .map(Shape::from_str)
                    .collect::<Result<_>>()?;
            }
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
            "--binding-concurrency" => {
                args.binding_concurrency = Some(bench::flag_value(&flag, it.next())?)
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
        args.create_concurrency >= 1 && args.node_concurrency >= 1,
        "--create-concurrency and --node-concurrency must be at least 1"
    );
    Ok(args)
}

/// The scheduler a phase drains with.
#[derive(Debug, Clone)]
enum Contender {
    Kube { mode: &'static str, qps: (u32, u32) },
    Wattwise { binding_concurrency: Option<usize> },
}

impl Contender {
    fn label(&self) -> String {
        match self {
            Contender::Kube { mode, qps } => {
                format!("kube-scheduler ({mode} QPS {}/{})", qps.0, qps.1)
            }
            Contender::Wattwise {
                binding_concurrency: None,
            } => "wattwise-scheduler (defaults)".to_string(),
            Contender::Wattwise {
                binding_concurrency: Some(n),
            } => format!("wattwise-scheduler (binding.concurrency {n})"),
        }
    }

    fn key(&self) -> String {
        match self {
            Contender::Kube { mode, .. } => format!("kube-{mode}"),
            Contender::Wattwise { .. } => "wattwise".to_string(),
        }
    }

    fn scheduler_name(&self) -> String {
        match self {
            Contender::Kube { .. } => "default-scheduler".to_string(),
            Contender::Wattwise { .. } => SchedulerConfig::default().scheduler_name,
        }
    }

    fn lease(&self) -> (&'static str, &'static str) {
        match self {
            Contender::Kube { .. } => KUBE_LEASE,
            Contender::Wattwise { .. } => WATTWISE_LEASE,
        }
    }
}

/// A contender's running process.
enum Running {
    /// The control plane's kube-scheduler.
    Kube {
        pid: u32,
    },
    Wattwise(ServedProcess),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Kube { pid } => *pid,
            Running::Wattwise(served) => served.pid(),
        }
    }
}

fn pod(namespace: &str, name: &str, scheduler_name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "bench"}},
        "spec": {
            "schedulerName": scheduler_name,
            "containers": [{
                "name": "pause", "image": "registry.k8s.io/pause:3.2",
                "resources": {
                    "requests": {"cpu": POD_CPU, "memory": POD_MEMORY},
                    "limits": {"cpu": POD_CPU, "memory": POD_MEMORY},
                }
            }]
        }
    }))?)
}

/// Sets the Lease `namespace/name` to `holder` (None: released, anyone may take it at once),
/// creating it if needed; retried on conflicts with a campaigning scheduler.
async fn write_lease(api: &Api<Lease>, name: &str, holder: Option<&str>) -> Result<()> {
    for _ in 0..10 {
        let now = MicroTime(Timestamp::now());
        let spec = |old: Option<LeaseSpec>| LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            acquire_time: Some(now.clone()),
            renew_time: Some(now.clone()),
            ..old.unwrap_or_default()
        };
        let result = match api.get_opt(name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        ..Default::default()
                    },
                    spec: Some(spec(None)),
                };
                api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec(lease.spec.take()));
                api.replace(name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("writing Lease {name}")),
        }
    }
    bail!("Lease {name}: 10 conflicting writes in a row")
}

/// The benchmark holding a scheduler's Lease like a live leader: renewed every [`HOLDER_RENEW`].
struct LeaseHolder {
    api: Api<Lease>,
    name: String,
    renew: JoinHandle<()>,
}

impl LeaseHolder {
    async fn hold(client: &Client, (namespace, name): (&str, &str)) -> Result<Self> {
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        write_lease(&api, name, Some(HOLDER)).await?;
        let renew = {
            let (api, name) = (api.clone(), name.to_string());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HOLDER_RENEW).await;
                    if let Err(e) = write_lease(&api, &name, Some(HOLDER)).await {
                        eprintln!("renewing the held Lease {name}: {e:#}");
                    }
                }
            })
        };
        Ok(Self {
            api,
            name: name.to_string(),
            renew,
        })
    }

    /// Stops renewing and releases the Lease; returns when it was released.
    async fn release(self) -> Result<Instant> {
        self.renew.abort();
        let _ = self.renew.await;
        write_lease(&self.api, &self.name, None).await?;
        Ok(Instant::now())
    }
}

/// The moment someone other than the benchmark took a Lease, and the contender's CPU time then.
struct Leadership {
    at: Instant,
    holder: String,
    cpu: Duration,
}

/// Watches the Lease `namespace/name` and reports the first holder that is not [`HOLDER`].
async fn watch_leadership(
    client: &Client,
    (namespace, name): (&str, &str),
    pid: u32,
) -> Result<oneshot::Receiver<Result<Leadership>>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = oneshot::channel();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let lease = match event {
                Ok(Event::InitDone) => {
                    if let Some(ready) = ready_tx.take() {
                        let _ = ready.send(());
                    }
                    continue;
                }
                Ok(Event::Apply(lease) | Event::InitApply(lease)) => lease,
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("lease watch: {e} (retrying)");
                    continue;
                }
            };
            let at = Instant::now();
            let holder = lease
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            if !holder.is_empty() && holder != HOLDER {
                let cpu = bench::cpu_time(&pid.to_string());
                let _ = tx.send(cpu.map(|cpu| Leadership { at, holder, cpu }));
                return;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .context("the lease watch did not start within 60 s")??;
    Ok(rx)
}

/// Binds in one namespace as a watch sees them: (when, pod, node), one event per pod that has a
/// node (the field selector leaves out every pod still pending).
struct BindWatch {
    events: mpsc::UnboundedReceiver<(Instant, String, String)>,
    task: JoinHandle<()>,
}

impl BindWatch {
    async fn start(api: Api<Pod>) -> Result<Self> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (tx, events) = mpsc::unbounded_channel();
        let config = watcher::Config::default().fields("spec.nodeName!=");
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut stream = watcher::watcher(api, config).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                let pod = match event {
                    Ok(Event::InitDone) => {
                        if let Some(ready) = ready_tx.take() {
                            let _ = ready.send(());
                        }
                        continue;
                    }
                    Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("pod watch: {e} (retrying)");
                        continue;
                    }
                };
                let at = Instant::now();
                if let (Some(name), Some(node)) =
                    (pod.metadata.name, pod.spec.and_then(|s| s.node_name))
                {
                    if tx.send((at, name, node)).is_err() {
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), ready_rx)
            .await
            .context("the pod watch did not start within 60 s")??;
        Ok(Self { events, task })
    }

    /// Fails if any pod has been bound so far.
    fn ensure_none_bound(&mut self, when: &str) -> Result<()> {
        if let Ok((_, name, node)) = self.events.try_recv() {
            bail!(
                "pod {name} was bound to {node} {when}: the scheduler did not wait for its Lease"
            );
        }
        Ok(())
    }
}

impl Drop for BindWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// cpu millicores, memory bytes, pods.
type Resources = (u64, u64, u64);

/// What a pod requests: its containers' sum, or its largest init container if that is more.
fn pod_requests(pod: &Pod) -> Result<Resources> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let of = |c: &k8s_openapi::api::core::v1::Container| -> Result<(u64, u64)> {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |key: &str, milli: bool| -> Result<u64> {
            requests
                .and_then(|r| r.get(key))
                .map(|q| {
                    if milli {
                        quantity::milli_value(q)
                    } else {
                        quantity::value(q)
                    }
                })
                .transpose()
                .with_context(|| format!("pod {name}: {key} request"))
                .map(Option::unwrap_or_default)
        };
        Ok((get("cpu", true)?, get("memory", false)?))
    };
    let (mut cpu, mut memory) = (0, 0);
    for c in &spec.containers {
        let (c_cpu, c_memory) = of(c)?;
        cpu += c_cpu;
        memory += c_memory;
    }
    for c in spec.init_containers.iter().flatten() {
        let (c_cpu, c_memory) = of(c)?;
        cpu = cpu.max(c_cpu);
        memory = memory.max(c_memory);
    }
    Ok((cpu, memory, 1))
}

/// How a phase's pods ended up placed.
struct Placement {
    nodes_used: usize,
    max_per_node: usize,
}

/// Checks that all `pods` pods of `namespace` are bound and that no node in the cluster holds
/// more than its allocatable (cpu, memory, pod count) summed over every bound pod.
async fn verify_placement(client: &Client, namespace: &str, pods: usize) -> Result<Placement> {
    let listed = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut unbound = Vec::new();
    for pod in &listed.items {
        match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(node) => *per_node.entry(node).or_default() += 1,
            None => unbound.push(pod.metadata.name.clone().unwrap_or_default()),
        }
    }
    ensure!(
        listed.items.len() == pods && unbound.is_empty(),
        "{namespace}: {} pods listed, {} of them unbound (e.g. {:?}); expected {pods} bound",
        listed.items.len(),
        unbound.len(),
        unbound.first()
    );

    let mut allocatable: HashMap<String, Resources> = HashMap::new();
    for node in Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        let name = node.metadata.name.clone().unwrap_or_default();
        let alloc = node
            .status
            .and_then(|s| s.allocatable)
            .with_context(|| format!("node {name} has no allocatable"))?;
        let get = |key: &str, milli: bool| -> Result<u64> {
            let q = alloc
                .get(key)
                .with_context(|| format!("node {name}: no allocatable {key}"))?;
            Ok(if milli {
                quantity::milli_value(q)?
            } else {
                quantity::value(q)?
            })
        };
        allocatable.insert(
            name.clone(),
            (
                get("cpu", true)?,
                get("memory", false)?,
                get("pods", false)?,
            ),
        );
    }
    let mut used: HashMap<String, Resources> = HashMap::new();
    for pod in Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields("spec.nodeName!="))
        .await?
    {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let (cpu, memory, count) = pod_requests(&pod)?;
        let entry = used.entry(node).or_default();
        entry.0 += cpu;
        entry.1 += memory;
        entry.2 += count;
    }
    let mut overcommitted: Vec<String> = used
        .iter()
        .filter_map(|(node, used)| match allocatable.get(node) {
            None => Some(format!("{node} (no such node)")),
            Some(alloc) if used.0 > alloc.0 || used.1 > alloc.1 || used.2 > alloc.2 => Some(
                format!("{node} (requests {used:?} > allocatable {alloc:?} as cpu m, bytes, pods)"),
            ),
            Some(_) => None,
        })
        .collect();
    overcommitted.sort();
    ensure!(
        overcommitted.is_empty(),
        "{} nodes overcommitted, e.g. {}",
        overcommitted.len(),
        overcommitted[..overcommitted.len().min(3)].join("; ")
    );
    Ok(Placement {
        nodes_used: per_node.len(),
        max_per_node: per_node.values().copied().max().unwrap_or(0),
    })
}

/// Waits until `pid` has used under 3 % of a core in each of two consecutive seconds: it has
/// digested its initial lists and sits idle, waiting for its Lease.
async fn wait_quiet(pid: u32, label: &str) -> Result<()> {
    let pid = pid.to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut quiet = 0;
    let mut before = bench::cpu_time(&pid)?;
    while quiet < 2 {
        ensure!(
            Instant::now() < deadline,
            "{label} did not go quiet within 180 s after syncing"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = bench::cpu_time(&pid)?;
        quiet = if now - before < Duration::from_millis(30) {
            quiet + 1
        } else {
            0
        };
        before = now;
    }
    Ok(())
}

struct Phase {
    label: String,
    pods: usize,
    /// Pods created per second (outside the timed window; for reference).
    create_rate: f64,
    /// Lease released → the scheduler seen holding it (its retry period; not timed).
    lead_delay: Duration,
    /// The scheduler taking the Lease (or its first bind, if seen earlier) → last pod seen bound.
    drain: Duration,
    /// utime + stime of the scheduler process over `drain`.
    cpu: Duration,
    placement: Placement,
    /// wattwise's `wattwise_scheduler_bind_errors_total` series, if any.
    bind_errors: Vec<String>,
}

impl Phase {
    fn pods_per_second(&self) -> f64 {
        self.pods as f64 / self.drain.as_secs_f64()
    }
}

/// One drain: pods first, then the scheduler, then the Lease; see the module comment.
async fn run_phase(
    plane: &mut ControlPlane,
    client: &Client,
    binary: &SchedulerBinary,
    contender: &Contender,
    shape: Shape,
    args: &Args,
) -> Result<Phase> {
    let label = contender.label();
    let namespace = format!("drain-{}", contender.key());
    let scheduler_name = contender.scheduler_name();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await
        .with_context(|| format!("creating namespace {namespace}"))?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let holder = LeaseHolder::hold(client, contender.lease()).await?;

    let names: Vec<String> = (0..shape.pods).map(|i| format!("p-{i:05}")).collect();
    let started = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        let (api, namespace, scheduler_name) = (&api, &namespace, &scheduler_name);
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
    let create_rate = shape.pods as f64 / started.elapsed().as_secs_f64();

    let mut binds = BindWatch::start(api.clone()).await?;
    binds.ensure_none_bound("before any scheduler ran")?;
    let mut running = match contender {
        Contender::Kube { qps, .. } => {
            plane
                .start_kube_scheduler_with(&KubeScheduler {
                    leader_elect: true,
                    extra_args: vec![
                        format!("--kube-api-qps={}", qps.0),
                        format!("--kube-api-burst={}", qps.1),
                    ],
                    ..KubeScheduler::default()
                })
                .await?;
            Running::Kube {
                pid: plane
                    .kube_scheduler_pid()
                    .context("kube-scheduler did not start")?,
            }
        }
        Contender::Wattwise { .. } => {
            let (lease_namespace, lease_name) = WATTWISE_LEASE;
            let mut config = format!(
                "leader_election: {{enabled: true, namespace: {lease_namespace}, lease_name: {lease_name}}}\n"
            );
            if let Some(n) = args.binding_concurrency {
                config.push_str(&format!("binding: {{concurrency: {n}}}\n"));
            }
            // Returns once /readyz says the caches synced.
            Running::Wattwise(bench::start_scheduler(plane, binary, "bench", &config).await?)
        }
    };
    let pid = running.pid();
    wait_quiet(pid, &label).await?;
    binds.ensure_none_bound("while the benchmark held the Lease")?;

    let leadership = watch_leadership(client, contender.lease(), pid).await?;
    let released = holder.release().await?;
    let timeout = Duration::from_secs(120) + Duration::from_secs_f64(shape.pods as f64 / 10.0);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut bound: HashMap<String, String> = HashMap::with_capacity(shape.pods);
    let mut rebound = Vec::new();
    let mut first_bind = None;
    let mut last_bind = released;
    while bound.len() < shape.pods {
        match tokio::time::timeout_at(deadline, binds.events.recv()).await {
            Ok(Some((at, name, node))) => match bound.get(&name) {
                Some(before) if *before != node => {
                    rebound.push(format!("{name}: {before} → {node}"))
                }
                Some(_) => {}
                None => {
                    bound.insert(name, node);
                    first_bind.get_or_insert(at);
                    last_bind = at;
                }
            },
            Ok(None) => bail!("{label}: the pod watch ended"),
            Err(_) => {
                let log = match &running {
                    Running::Kube { .. } => String::new(),
                    Running::Wattwise(served) => served.log_tail(30),
                };
                bail!(
                    "{label}: only {} of {} pods bound within {timeout:?} after the Lease was \
                     released{}",
                    bound.len(),
                    shape.pods,
                    if log.is_empty() {
                        String::new()
                    } else {
                        format!("; log:\n{log}")
                    }
                )
            }
        }
    }
    let cpu_end = bench::cpu_time(&pid.to_string())?;
    let leadership = tokio::time::timeout(Duration::from_secs(10), leadership)
        .await
        .with_context(|| format!("{label} bound every pod but was never seen holding the Lease"))?
        .context("the lease watch ended")??;
    ensure!(
        leadership.at >= released,
        "{label} ({}) took the Lease while the benchmark held it",
        leadership.holder
    );
    let start = first_bind.map_or(leadership.at, |first| first.min(leadership.at));

    let bind_errors = match &mut running {
        Running::Kube { .. } => {
            plane.stop_kube_scheduler();
            Vec::new()
        }
        Running::Wattwise(served) => {
            let errors = served
                .metrics_text()
                .await
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("wattwise_scheduler_bind_errors_total"))
                .map(str::to_string)
                .collect();
            ensure!(
                served.is_running(),
                "wattwise-scheduler exited:\n{}",
                served.log_tail(40)
            );
            served.stop();
            errors
        }
    };
    ensure!(
        rebound.is_empty(),
        "{label}: {} pods changed node, e.g. {}",
        rebound.len(),
        rebound[0]
    );
    let placement = verify_placement(client, &namespace, shape.pods).await?;

    // Every phase starts from empty nodes. Bound pods would wait for a kubelet to confirm a
    // graceful deletion: delete them at once.
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    futures::stream::iter(names.iter().map(|name| {
        let (api, now) = (&api, &now);
        async move { api.delete(name, now).await.map(drop) }
    }))
    .buffer_unordered(args.create_concurrency)
    .try_collect::<Vec<()>>()
    .await
    .with_context(|| format!("deleting the pods of {namespace}"))?;
    wait_until(
        "the deleted pods to go",
        Duration::from_secs(300),
        || async {
            Ok(api
                .list(&ListParams::default().limit(1))
                .await?
                .items
                .is_empty())
        },
    )
    .await?;

    Ok(Phase {
        label,
        pods: shape.pods,
        create_rate,
        lead_delay: leadership.at.saturating_duration_since(released),
        drain: last_bind - start,
        cpu: cpu_end - leadership.cpu,
        placement,
        bind_errors,
    })
}

fn print_phases(phases: &[Phase]) {
    println!(
        "  {:<44} {:>6} {:>9} {:>9} {:>9} {:>10} {:>9} {:>6} {:>4}",
        "phase", "pods", "created/s", "drain", "pods/s", "sched. CPU", "lead wait", "nodes", "max"
    );
    for p in phases {
        println!(
            "  {:<44} {:>6} {:>9.0} {:>7.2} s {:>9.1} {:>8.2} s {:>7.2} s {:>6} {:>4}",
            p.label,
            p.pods,
            p.create_rate,
            p.drain.as_secs_f64(),
            p.pods_per_second(),
            p.cpu.as_secs_f64(),
            p.lead_delay.as_secs_f64(),
            p.placement.nodes_used,
            p.placement.max_per_node,
        );
        if !p.bind_errors.is_empty() {
            println!("    bind errors: {}", p.bind_errors.join(", "));
        }
    }
}

/// All phases of one shape on a control plane of its own.
async fn run_shape(
    shape: Shape,
    contenders: &[Contender],
    binary: &SchedulerBinary,
    args: &Args,
) -> Result<Vec<Phase>> {
    println!("== {shape}");
    let shape_started = Instant::now();
    let mut plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    let started = Instant::now();
    bench::create_nodes(
        &plane,
        "node",
        shape.nodes,
        args.node_concurrency,
        perf_node,
    )
    .await?;
    println!(
        "created {} Ready nodes in {:.1} s",
        shape.nodes,
        started.elapsed().as_secs_f64()
    );
    let mut phases = Vec::new();
    for contender in contenders {
        println!("phase: {} …", contender.label());
        let phase = run_phase(&mut plane, &client, binary, contender, shape, args).await?;
        println!(
            "  {:.1} pods/s over {:.2} s, CPU {:.2} s, all {} bound on {} nodes, none overcommitted",
            phase.pods_per_second(),
            phase.drain.as_secs_f64(),
            phase.cpu.as_secs_f64(),
            phase.pods,
            phase.placement.nodes_used
        );
        phases.push(phase);
    }
    let (db, quota) = plane.etcd_db_size().await?;
    println!(
        "shape done in {:.0} s; etcd database {:.0} MiB of its {:.0} MiB quota",
        shape_started.elapsed().as_secs_f64(),
        db as f64 / bench::MIB,
        quota as f64 / bench::MIB
    );
    Ok(phases)
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    let binary: SchedulerBinary =
        bench::scheduler_binary(args.scheduler.clone(), args.allow_debug)?;
    let kube_modes: Vec<(&'static str, (u32, u32))> = match args.kube_qps {
        QpsMode::Default => vec![("default", KUBE_DEFAULT_QPS)],
        QpsMode::Raised => vec![("raised", KUBE_RAISED_QPS)],
        QpsMode::Both => vec![("default", KUBE_DEFAULT_QPS), ("raised", KUBE_RAISED_QPS)],
    };
    let mut contenders: Vec<Contender> = kube_modes
        .iter()
        .map(|&(mode, qps)| Contender::Kube { mode, qps })
        .collect();
    contenders.push(Contender::Wattwise {
        binding_concurrency: args.binding_concurrency,
    });
    let defaults = SchedulerConfig::default();

    println!(
        "wattwise-bench-throughput: drain rate — pods created first, then the scheduler leads and \
         binds them all; shapes {}; nodes 4 CPUs, 32 GiB, 110 pods; pods {POD_CPU} CPU, {POD_MEMORY} \
         (scheduler_perf's defaults), created {} at a time; kube-apiserver {KUBE_VERSION} + etcd on \
         127.0.0.1, {} CPUs",
        args.shapes
            .iter()
            .map(Shape::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        args.create_concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("wattwise-scheduler: {binary}");
    println!(
        "  binding.concurrency {}, events.per_second {} (burst {}); leader election on; \
         kube-rs client without client-side rate limit; no agent reports (default curve); RUST_LOG=info",
        args.binding_concurrency
            .unwrap_or(defaults.binding.concurrency),
        defaults.events.per_second, defaults.events.burst
    );
    println!(
        "kube-scheduler {KUBE_VERSION}: leader election on, user system:kube-scheduler; client rate \
         limits: {}",
        kube_modes
            .iter()
            .map(|(name, (q, b))| format!("{name} --kube-api-qps={q} --kube-api-burst={b}"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    let mut results = Vec::new();
    for &shape in &args.shapes {
        results.push((shape, run_shape(shape, &contenders, &binary, &args).await?));
    }

    println!();
    for (shape, phases) in &results {
        println!("{shape}:");
        print_phases(phases);
        let wattwise = phases.last().expect("wattwise is the last phase");
        for kube in &phases[..phases.len() - 1] {
            let ratio = wattwise.pods_per_second() / kube.pods_per_second();
            println!(
                "  ratio wattwise / {}: {ratio:.2} — {} (≥ 1.0)",
                kube.label,
                bench::verdict(ratio >= 1.0)
            );
        }
    }
    println!(
        "  (drain: from the scheduler taking its Lease — pods all created and in its caches — to \
         the last pod seen bound; sched. CPU: utime+stime of the scheduler over the drain; lead \
         wait: Lease released → taken, its retry period, not in the drain; nodes/max: nodes used, \
         most pods on one; every phase checked: all pods bound once, no node over its allocatable)"
    );
    if args.kube_qps != QpsMode::Default {
        println!(
            "the comparable setting is the raised one: neither client is then rate-limited on its \
             side, both are limited only by the API server, etcd and themselves"
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    run().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_requests_its_containers_sum_or_its_largest_init_container() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "i", "resources": {"requests": {"cpu": "500m", "memory": "1Mi"}}},
                ],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "0.25"}}},
                ],
            }
        }))
        .unwrap();
        assert_eq!(pod_requests(&pod).unwrap(), (500, 500 << 20, 1));
        let bad: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "lots"}}}]}
        }))
        .unwrap();
        let err = format!("{:#}", pod_requests(&bad).unwrap_err());
        assert!(err.contains("pod p: cpu request"), "{err}");
    }

    #[test]
    fn shapes_parse_as_nodes_x_pods() {
        let shape: Shape = "5000x10000".parse().unwrap();
        assert_eq!((shape.nodes, shape.pods), (5000, 10_000));
        assert!("5000".parse::<Shape>().is_err());
        assert!("0x10".parse::<Shape>().is_err());
    }
}
