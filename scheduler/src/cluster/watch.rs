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

use super::cache::{ClusterCache, PodChange};
use crate::queue::SchedulingQueue;

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
) {
    let config = watcher::Config::default().page_size(500);
    let mut events = watcher::watcher(Api::<Node>::all(client), config)
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
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
) {
    // Finished pods hold no resources: leave them on the server.
    let config = watcher::Config::default()
        .page_size(500)
        .fields("status.phase!=Succeeded,status.phase!=Failed");
    let mut events = watcher::watcher(Api::<Pod>::all(client), config)
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
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
