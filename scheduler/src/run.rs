//! Wires the scheduler together: watches → cache + queue; gRPC report ingest → cache; leader
//! election → decision loop → binds and events, the energy adapter → node labels, and the
//! offloader → evictions; metrics.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use tracing::info;
use wattwise_core::PowerCurve;
use wattwise_proto::v1::power_reports_server::PowerReportsServer;

use crate::api::extender::{self, Extender};
use crate::api::metrics::{self, SchedulerMetrics};
use crate::api::reports::ReportsService;
use crate::cluster::adapter::EnergyAdapter;
use crate::cluster::cache::{CacheSettings, ClusterCache};
use crate::cluster::claims::Claims;
use crate::cluster::clients::ApiClients;
use crate::cluster::events::EventRecorder;
use crate::cluster::leader::{LeaderElector, LeaseSettings};
use crate::cluster::offloader::Offloader;
use crate::cluster::watch::{self, Synced};
use crate::config::SchedulerConfig;
use crate::health::{caches_in_sync, WatchHealth};
use crate::policy::Filters;
use crate::queue::{QueueSettings, SchedulingQueue};
use crate::scheduling::DecisionLoop;

/// Addresses the scheduler actually listens on (ports may have been 0 in the config).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// The extender API's address when `extender.enabled`.
    pub extender: Option<SocketAddr>,
}

/// This replica's identity: configured, else the host name (the pod name in a Deployment).
pub fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("wattwise-scheduler-{}", std::process::id()))
}

/// Starts everything and runs until `shutdown` resolves. Startup problems (config, ports) are
/// errors; runtime problems (API server away, agents gone, bad reports) are logged, exported and
/// retried, never fatal.
pub async fn run(
    config: SchedulerConfig,
    clients: ApiClients,
    on_bound: impl FnOnce(Bound),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let metrics = SchedulerMetrics::new();
    let default_curve = PowerCurve::linear(
        config.reports.default_idle_watts,
        config.reports.default_peak_watts,
    )
    .context("reports.default_idle_watts/default_peak_watts")?;
    let cache = Arc::new(Mutex::new(ClusterCache::new(CacheSettings {
        scheduler_name: config.scheduler_name.clone(),
        energy_label: config.policy.energy_label.clone(),
        default_cpu_millicores: config.policy.default_cpu_millicores,
        stale_after: config.reports.stale_after(),
        start_window: config.reports.pod_start_window,
        default_curve,
    })));
    let queue = Arc::new(SchedulingQueue::new(QueueSettings {
        backoff_initial: config.binding.backoff_initial,
        backoff_max: config.binding.backoff_max,
        unschedulable_retry: config.binding.unschedulable_retry,
    }));

    let grpc_listener = wattwise_daemon::listen(config.grpc.listen, "grpc.listen").await?;
    let metrics_listener = wattwise_daemon::listen(config.metrics.listen, "metrics.listen").await?;
    let extender_listener = match config.extender.enabled {
        true => Some(wattwise_daemon::listen(config.extender.listen, "extender.listen").await?),
        false => None,
    };
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        metrics: metrics_listener.local_addr()?,
        extender: extender_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?,
    };
    let liveness = wattwise_daemon::health::Liveness::new();
    let reports = ReportsService::new(
        cache.clone(),
        queue.clone(),
        metrics.clone(),
        &config.reports,
    );
    let grpc =
        wattwise_daemon::grpc::spawn(PowerReportsServer::new(reports), grpc_listener).await?;
    let max_silence = config.health.max_silence;
    let node_watch = Arc::new(WatchHealth::new("node watch", &config.api));
    let pod_watch = Arc::new(WatchHealth::new("pod watch", &config.api));
    let ready = {
        let (metrics, node_watch, pod_watch) =
            (metrics.clone(), node_watch.clone(), pod_watch.clone());
        // Down for longer than a healthy watch connection may stay silent: out of sync.
        let max_down = config.api.watch_silence();
        move || {
            caches_in_sync(
                metrics.is_synced(),
                &[&node_watch, &pod_watch],
                max_down,
                std::time::Instant::now(),
            )
        }
    };
    let http = tokio::spawn(
        axum::serve(
            metrics_listener,
            metrics::router(metrics.clone(), liveness.clone(), ready),
        )
        .into_future(),
    );

    let synced = Arc::new(Synced::default());
    // Extender mode: any replica answers kube-scheduler from its own cache, leader or not.
    let extender_http = extender_listener.map(|listener| {
        let extender = Arc::new(Extender {
            cache: cache.clone(),
            synced: synced.clone(),
            filters: Filters::energy_floor(config.policy.lowest_energy_level),
            score: config.policy.score_config(),
            default_cpu_millicores: config.policy.default_cpu_millicores,
            metrics: metrics.clone(),
        });
        let router = extender::router(extender, config.extender.max_request_bytes);
        tokio::spawn(axum::serve(listener, router).into_future())
    });
    let extender_stopped = async {
        match extender_http {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let watches = [
        tokio::spawn(watch::watch_nodes(
            clients.watches.clone(),
            cache.clone(),
            queue.clone(),
            synced.clone(),
            (liveness.register("node watch", max_silence), node_watch),
        )),
        tokio::spawn(watch::watch_pods(
            clients.watches.clone(),
            cache.clone(),
            queue.clone(),
            synced.clone(),
            (liveness.register("pod watch", max_silence), pod_watch),
        )),
    ];
    let (claims, claim_watches) = Claims::watch(clients.watches.clone(), queue.clone());

    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let (stop_election_tx, stop_election_rx) = tokio::sync::oneshot::channel::<()>();
    let election = if config.leader_election.enabled {
        let le = &config.leader_election;
        let namespace = le
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let elector = LeaderElector::new(
            clients.calls.clone(),
            LeaseSettings {
                namespace,
                name: le.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: le.lease_duration,
                renew_deadline: le.renew_deadline,
                retry_period: le.retry_period,
            },
        );
        Some(tokio::spawn(elector.run(
            leader_tx,
            liveness.register("leader election", max_silence),
            async {
                let _ = stop_election_rx.await;
            },
        )))
    } else {
        let _ = leader_tx.send(true);
        // Keep the sender alive: a dropped sender would end the decision loop.
        tokio::spawn(async move {
            let _ = stop_election_rx.await;
            drop(leader_tx);
        });
        None
    };

    // Publishing the levels on the nodes: the leader's job, from the same cache.
    let adapter = config.energy_labels.publish.then(|| {
        let adapter = EnergyAdapter {
            client: clients.calls.clone(),
            cache: cache.clone(),
            metrics: metrics.clone(),
            label_key: config.policy.energy_label.clone(),
            stale_after: config.reports.stale_after(),
            settle: config.api.timeout,
            limits: config.energy_labels.clone(),
        };
        tokio::spawn(adapter.run(
            leader_rx.clone(),
            synced.clone(),
            liveness.register("energy labels", max_silence),
        ))
    });
    // One recorder, one rate limit, for the decisions' and the offloader's events.
    let events = EventRecorder::new(
        clients.calls.clone(),
        &config.scheduler_name,
        &identity,
        &config.events,
        metrics.clone(),
    );
    // Moving pods off weak nodes: the leader's job, from the same cache, filters and pricing.
    let offloader = config.offload.enabled.then(|| {
        let offloader = Offloader {
            client: clients.calls.clone(),
            cache: cache.clone(),
            metrics: metrics.clone(),
            events: events.clone(),
            score: config.policy.score_config(),
            planner: config.offload.planner(config.policy.lowest_energy_level),
            config: config.offload.clone(),
            default_cpu_millicores: config.policy.default_cpu_millicores,
        };
        tokio::spawn(offloader.run(
            leader_rx.clone(),
            synced.clone(),
            liveness.register("offloader", max_silence),
        ))
    });
    let decisions = Arc::new(DecisionLoop {
        client: clients.calls.clone(),
        cache: cache.clone(),
        claims,
        queue: queue.clone(),
        filters: Arc::new(Filters::standard(config.policy.lowest_energy_level)),
        score: config.policy.score_config(),
        events,
        metrics: metrics.clone(),
        bind_slots: Arc::new(Semaphore::new(config.binding.concurrency)),
        bind_timeout: config.api.timeout,
    });
    let gauges = {
        let (queue, metrics, cache) = (queue.clone(), metrics.clone(), cache.clone());
        let mut leader = leader_rx.clone();
        let heartbeat = liveness.register("gauges", max_silence);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                heartbeat.beat();
                // Leadership shows at once; the rest once a second.
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = leader.changed() => if changed.is_err() { return },
                }
                metrics.leader(*leader.borrow_and_update());
                metrics.queue_depth(queue.depth());
                let summary = cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .advance(std::time::Instant::now());
                metrics.nodes(summary.nodes, summary.stale_nodes);
            }
        })
    };
    let decide = {
        let synced = synced.clone();
        let metrics = metrics.clone();
        let heartbeat = liveness.register("decisions", max_silence);
        tokio::spawn(async move {
            // Deciding on a partial list could overfill nodes whose pods are not listed yet.
            while !synced.all() {
                heartbeat.beat();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            metrics.set_synced();
            decisions.run(leader_rx, heartbeat).await;
        })
    };
    info!(%identity, scheduler_name = %config.scheduler_name, grpc = %bound.grpc, metrics = %bound.metrics, extender = ?bound.extender, "wattwise-scheduler serving");
    on_bound(bound);

    let [mut node_watch_task, mut pod_watch_task] = watches;
    let (mut decide, mut gauges) = (decide, gauges);
    // The loops end only with the process. One that ended anyway (a panic) took its heartbeat
    // with it, so /healthz cannot name it: stop, and be restarted like a wedged one.
    tokio::select! {
        _ = shutdown => info!("shutting down"),
        r = grpc => r?.context("gRPC server stopped")?,
        r = http => r?.context("metrics server stopped")?,
        r = extender_stopped => r?.context("extender server stopped")?,
        r = &mut decide => return Err(loop_ended("decision loop", r)),
        r = &mut gauges => return Err(loop_ended("gauges", r)),
        r = &mut node_watch_task => return Err(loop_ended("node watch", r)),
        r = &mut pod_watch_task => return Err(loop_ended("pod watch", r)),
    }
    let watches = [node_watch_task, pod_watch_task];
    decide.abort();
    gauges.abort();
    for task in adapter.into_iter().chain(offloader) {
        task.abort();
    }
    for w in watches.into_iter().chain(claim_watches) {
        w.abort();
    }
    let _ = stop_election_tx.send(());
    if let Some(election) = election {
        // Releasing the Lease lets a standby take over at once instead of after lease_duration.
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    Ok(())
}

fn loop_ended(name: &str, r: Result<(), tokio::task::JoinError>) -> anyhow::Error {
    match r {
        Err(e) if e.is_panic() => anyhow::anyhow!("{name} panicked; stopping"),
        _ => anyhow::anyhow!("{name} ended; stopping"),
    }
}
