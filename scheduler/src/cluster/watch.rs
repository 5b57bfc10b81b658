//! Node and pod watches (kube-rs watchers) feeding the cache and the queue. Objects are reduced to
//! what scheduling needs as they arrive; finished pods are excluded server-side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tracing::{info, warn};
use wattwise_daemon::health::Heartbeat;

use super::cache::{ClusterCache, PodChange};
use crate::health::WatchHealth;
use crate::queue::SchedulingQueue;

/// How often an idle watch loop beats its heartbeat.
const IDLE_BEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// The next item of a watcher, beating `heartbeat` while none comes (the connection itself is
/// bounded by the watch client) and noting each item in `health`.
async fn next_event<T>(
    events: &mut futures::stream::BoxStream<'_, watcher::Result<Event<T>>>,
    heartbeat: &Heartbeat,
    health: &WatchHealth,
) -> Option<watcher::Result<Event<T>>> {
    let mut idle = tokio::time::interval(IDLE_BEAT);
    loop {
        heartbeat.beat();
        tokio::select! {
            event = events.next() => {
                if let Some(e) = &event {
                    health.saw(e.is_ok(), std::time::Instant::now());
                }
                return event;
            }
            _ = idle.tick() => {}
        }
    }
}

/// Set once each watch has delivered its first full list.
#[derive(Debug, Default)]
pub struct Synced {
    pub nodes: AtomicBool,
    pub pods: AtomicBool,
}

impl Synced {
    pub fn all(&self) -> bool {
        self.nodes.load(Ordering::Acquire) && self.pods.load(Ordering::Acquire)
    }
}

fn lock(cache: &Mutex<ClusterCache>) -> std::sync::MutexGuard<'_, ClusterCache> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

pub async fn watch_nodes(
    client: Client,
    cache: Arc<Mutex<ClusterCache>>,
    queue: Arc<SchedulingQueue>,
    synced: Arc<Synced>,
    (heartbeat, health): (Heartbeat, Arc<WatchHealth>),
) {
    let config = watcher::Config::default()
        .page_size(500)
        .timeout(health.watch_timeout_secs());
    let mut events = watcher::watcher(Api::<Node>::all(client), config)
        .default_backoff()
        .boxed();
    while let Some(event) = next_event(&mut events, &heartbeat, &health).await {
        match event {
            Ok(Event::Init) => lock(&cache).begin_node_relist(),
            Ok(Event::InitApply(node)) => lock(&cache).apply_node(&node),
            Ok(Event::InitDone) => {
                let count = {
                    let mut c = lock(&cache);
                    c.end_node_relist();
                    c.node_count()
                };
                if !synced.nodes.swap(true, Ordering::AcqRel) {
                    info!(nodes = count, "node cache synced");
                }
                queue.cluster_changed();
            }
            Ok(Event::Apply(node)) => {
                lock(&cache).apply_node(&node);
                queue.cluster_changed();
            }
            Ok(Event::Delete(node)) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    lock(&cache).delete_node(name);
                }
            }
            Err(e) => warn!(error = %e, "node watch failed; retrying with backoff"),
        }
    }
}

pub async fn watch_pods(
    client: Client,
    cache: Arc<Mutex<ClusterCache>>,
    queue: Arc<SchedulingQueue>,
    synced: Arc<Synced>,
    (heartbeat, health): (Heartbeat, Arc<WatchHealth>),
) {
    // Finished pods hold no resources: leave them on the server.
    let config = watcher::Config::default()
        .page_size(500)
        .timeout(health.watch_timeout_secs())
        .fields("status.phase!=Succeeded,status.phase!=Failed");
    let mut events = watcher::watcher(Api::<Pod>::all(client), config)
        .default_backoff()
        .boxed();
    while let Some(event) = next_event(&mut events, &heartbeat, &health).await {
        match event {
            Ok(Event::Init) => lock(&cache).begin_pod_relist(),
            Ok(Event::InitApply(pod)) => {
                let change = lock(&cache).apply_pod(&pod);
                apply_to_queue(&queue, change);
            }
            Ok(Event::InitDone) => {
                let gone = lock(&cache).end_pod_relist();
                for key in &gone {
                    queue.remove(key);
                }
                if !synced.pods.swap(true, Ordering::AcqRel) {
                    info!("pod cache synced");
                }
                queue.cluster_changed();
            }
            Ok(Event::Apply(pod)) => {
                let change = lock(&cache).apply_pod(&pod);
                apply_to_queue(&queue, change);
            }
            Ok(Event::Delete(pod)) => {
                let uid = lock(&cache).delete_pod(&pod);
                queue.remove(&uid);
                queue.cluster_changed();
            }
            Err(e) => warn!(error = %e, "pod watch failed; retrying with backoff"),
        }
    }
}

fn apply_to_queue(queue: &SchedulingQueue, change: PodChange) {
    match change {
        PodChange::Pending(pod) => queue.add(pod, std::time::Instant::now()),
        PodChange::NotPending(uid) => queue.remove(&uid),
        PodChange::Unchanged => {}
    }
}
