//! The decision loop: while this replica leads, take the next pending pod, run the policy over
//! the cache, assume the pod on the chosen node and bind it in the background. Decisions are
//! serial (each sees the previous one's assumption); binds run concurrently up to a limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};
use wattwise_core::EnergyLevel;
use wattwise_daemon::health::Heartbeat;

use crate::api::metrics::{AttemptResult, ReservationOutcome, SchedulerMetrics};
use crate::cluster::cache::ClusterCache;
use crate::cluster::claims::Claims;
use crate::cluster::events::{EventKind, EventRecorder, PodRef};
use crate::policy::{self, Decision, Filters, PodRequest, ScoreConfig};
use crate::queue::{Popped, SchedulingQueue};

pub struct DecisionLoop {
    pub client: Client,
    pub cache: Arc<Mutex<ClusterCache>>,
    pub claims: Claims,
    pub queue: Arc<SchedulingQueue>,
    pub filters: Arc<Filters>,
    pub score: ScoreConfig,
    pub events: EventRecorder,
    pub metrics: Arc<SchedulerMetrics>,
    pub bind_slots: Arc<Semaphore>,
    /// A bind still unanswered after this is abandoned: its slot is freed and the pod retried.
    pub bind_timeout: Duration,
}

/// How often an idle decision loop beats.
const IDLE_BEAT: Duration = Duration::from_secs(1);

/// What a bind task needs.
struct Placement {
    popped: Popped,
    node: String,
    decision: Decision,
    /// The node was reserved for this pod by the offloader (it replaces an evicted pod).
    reserved: bool,
}

impl DecisionLoop {
    /// Runs until the process ends; decides only while `leader` is true. Beats `heartbeat` while
    /// idle and after each decision, but not while it waits for a bind slot with a pod in hand:
    /// a loop stuck there (or on the cache lock) is wedged.
    pub async fn run(self: Arc<Self>, mut leader: watch::Receiver<bool>, heartbeat: Heartbeat) {
        let mut idle = tokio::time::interval(IDLE_BEAT);
        loop {
            heartbeat.beat();
            if !*leader.borrow_and_update() {
                tokio::select! {
                    changed = leader.changed() => if changed.is_err() { return },
                    _ = idle.tick() => {}
                }
                continue;
            }
            let popped = tokio::select! {
                p = self.queue.pop() => p,
                changed = leader.changed() => if changed.is_err() { return } else { continue },
                _ = idle.tick() => continue,
            };
            // A bind slot first, so that no more pods are assumed than can be bound.
            let Ok(permit) = self.bind_slots.clone().acquire_owned().await else {
                return;
            };
            // A replica that stepped down while waiting starts no bind.
            if !*leader.borrow() {
                self.queue.release(&popped.pod.uid);
                continue;
            }
            self.decide(popped, permit);
        }
    }

    fn decide(self: &Arc<Self>, popped: Popped, permit: OwnedSemaphorePermit) {
        let pod = popped.pod.clone();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !self.queue.contains(&pod.uid) {
            return; // bound by someone else, deleted, or no longer ours since it was popped
        }
        let pod = self.claims.resolve(pod);
        let key = pod_ref(&pod).key();
        let now = Instant::now();
        let summary = cache.advance(now);
        self.metrics.nodes(summary.nodes, summary.stale_nodes);
        let started = Instant::now();
        // A replacement of a pod the offloader evicted goes where it was planned to, if that
        // node still passes every filter for it; otherwise it is scheduled like any pod.
        let reserved = cache.take_planned(&pod.uid).and_then(|node| {
            let placed = (cache.row(&node))
                .and_then(|row| policy::place_on(&pod, cache.snapshot(), &self.filters, row));
            let outcome = match placed {
                Some(_) => ReservationOutcome::Honoured,
                None => {
                    info!(pod = %key, %node, "the node reserved for this replacement no longer passes the filters; scheduling it anew");
                    ReservationOutcome::Refiltered
                }
            };
            self.metrics.reservations(outcome, 1);
            placed
        });
        let result = match &reserved {
            Some(decision) => Ok(decision.clone()),
            None => policy::schedule(&pod, cache.snapshot(), &self.filters, &self.score),
        };
        self.metrics.decision(started.elapsed().as_secs_f64());
        match result {
            Ok(decision) => {
                let node = cache.snapshot().name(decision.node).to_string();
                cache.assume(&pod, &node, now);
                drop(cache);
                debug!(pod = %key, uid = %pod.uid, %node, marginal = %decision.marginal.watts, "assumed");
                let placement = Placement {
                    popped,
                    node,
                    decision,
                    reserved: reserved.is_some(),
                };
                let this = self.clone();
                tokio::spawn(async move {
                    this.bind(placement).await;
                    drop(permit);
                });
            }
            Err(unschedulable) => {
                drop(cache);
                let message = unschedulable.to_string();
                info!(pod = %key, reason = %message, "unschedulable");
                self.metrics.attempt(AttemptResult::Unschedulable);
                self.queue.unschedulable(&pod.uid, now);
                self.events
                    .record(pod_ref(&pod), EventKind::FailedScheduling, message);
            }
        }
    }

    async fn bind(&self, p: Placement) {
        let pod = &p.popped.pod;
        let key = pod_ref(pod).key();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(p.node.clone()),
                ..Default::default()
            },
        };
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace);
        let params = PostParams::default();
        let call =
            api.create_subresource::<_, serde_json::Value>("binding", &pod.name, &params, &binding);
        match tokio::time::timeout(self.bind_timeout, call).await {
            Ok(Ok(_)) => {
                self.queue.remove(&pod.uid);
                let watts = p.decision.marginal.watts;
                self.metrics.attempt(AttemptResult::Scheduled);
                self.metrics
                    .bound(p.popped.first_seen.elapsed().as_secs_f64(), watts.0);
                let energy = p
                    .decision
                    .energy
                    .map(EnergyLevel::label)
                    .unwrap_or("unknown");
                let freshness = if p.decision.fresh {
                    ""
                } else {
                    " (no fresh report: default curve)"
                };
                let load = if p.decision.marginal.exceeds_capacity {
                    " (past full load)"
                } else {
                    ""
                };
                let reserved = if p.reserved {
                    " (reserved by the offloader)"
                } else {
                    ""
                };
                let message = format!(
                    "assigned {} to {}{}: {} predicted{}{}, energy {}",
                    key, p.node, reserved, watts, freshness, load, energy
                );
                info!(pod = %key, node = %p.node, marginal_watts = watts.0, energy, fresh = p.decision.fresh, reserved = p.reserved, "bound");
                self.events
                    .record(pod_ref(pod), EventKind::Scheduled, message);
            }
            // Already bound (another replica, a previous attempt), or this pod (UID) is gone,
            // maybe replaced by a namesake: the watch knows where it went; nothing to retry.
            // Only this UID is dropped; a namesake is another pod with its own entries.
            Ok(Err(kube::Error::Api(e))) if e.code == 409 || e.code == 404 => {
                warn!(pod = %key, uid = %pod.uid, node = %p.node, code = e.code, reason = %e.message, "bind refused; dropping the pod from the queue");
                self.metrics.bind_error(if e.code == 409 {
                    "conflict"
                } else {
                    "not_found"
                });
                self.metrics.attempt(AttemptResult::Error);
                self.queue.remove(&pod.uid);
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(&pod.uid);
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within api.timeout ({:?})", self.bind_timeout),
                };
                // Un-assumed like any failure: if the bind did land, the watch shows the pod bound.
                warn!(pod = %key, uid = %pod.uid, node = %p.node, %error, "bind failed; retrying with backoff");
                self.metrics.bind_error("error");
                self.metrics.attempt(AttemptResult::Error);
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(&pod.uid);
                // A no-op if the pod left meanwhile: nothing brings it back.
                self.queue.retry_later(&pod.uid, Instant::now());
            }
        }
    }
}

fn pod_ref(pod: &PodRequest) -> PodRef {
    PodRef::new(&pod.namespace, &pod.name, &pod.uid)
}
