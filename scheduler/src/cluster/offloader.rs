//! The offloader's pass, carried out (the leader only): every `offload.interval` it reads the
//! cache's nodes (planned reservations included), lists the pods of the nodes at or below
//! `offload.at_or_below` from the API, asks [`offload::plan`] what to move, and for each move
//! reserves the target for the pod's replacement in the cache *before* evicting the pod through
//! the Eviction API, so that the replacement — and no other pod — gets the target
//! (see [`super::overlay`]). A PodDisruptionBudget's refusal (HTTP 429) or any failure releases
//! the reservation; the pod is a candidate again on the next pass. A successful eviction puts
//! the pod's owner in cooldown for `offload.cooldown`.
//!
//! The weak nodes' pods are listed per pass rather than kept in the cache: the cache keeps every
//! pod reduced to what it uses, and the few pods of weak nodes are all the planner needs in full.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};
use wattwise_core::{EnergyLevel, MarginalWatts};
use wattwise_daemon::health::Heartbeat;

use super::cache::ClusterCache;
use super::convert;
use super::events::{EventKind, EventRecorder, PodRef};
use super::overlay::Replacement;
use super::watch::Synced;
use crate::api::metrics::{EvictionResult, ReservationOutcome, SchedulerMetrics};
use crate::config::OffloaderConfig;
use crate::policy::offload::{self, Move, OffloadConfig, Owner, Skip};
use crate::policy::{NodeState, PodRequest, ScoreConfig};

/// How often a pass waiting on the API beats the heartbeat.
const BEAT: Duration = Duration::from_secs(1);

pub struct Offloader {
    pub client: Client,
    pub cache: Arc<Mutex<ClusterCache>>,
    pub metrics: Arc<SchedulerMetrics>,
    pub events: EventRecorder,
    pub score: ScoreConfig,
    /// The planner's rules (`offload.*` with `policy.lowest_energy_level`).
    pub planner: OffloadConfig,
    pub config: OffloaderConfig,
    /// `policy.default_cpu_millicores`, as the cache prices pods.
    pub default_cpu_millicores: u64,
}

/// What a replica keeps between passes.
#[derive(Default)]
struct State {
    /// Owners evicted from recently, and until when they stay.
    cooldown: HashMap<Owner, Instant>,
    /// The Eviction API's version this server serves (`v1` or `v1beta1`), once discovered.
    eviction_version: Option<String>,
}

/// A move with what carrying it out needs beyond the plan.
struct Planned<'a> {
    step: &'a Move,
    request: &'a PodRequest,
    replacement: Replacement,
    /// The source node's charge, for the event.
    percent: Option<f64>,
}

impl Offloader {
    /// Runs until the leader channel closes; passes run only while `leader` says so and the
    /// caches are synced.
    pub async fn run(
        self,
        mut leader: watch::Receiver<bool>,
        synced: Arc<Synced>,
        heartbeat: Heartbeat,
    ) {
        let mut state = State::default();
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle = tokio::time::interval(BEAT);
        loop {
            heartbeat.beat();
            tokio::select! {
                _ = tick.tick() => {}
                _ = idle.tick() => continue,
                changed = leader.changed() => if changed.is_err() { return } else { continue },
            }
            if !*leader.borrow_and_update() || !synced.all() {
                continue;
            }
            // API calls are bounded by api.timeout: waiting on them is progress, not a wedge.
            let pass = self.pass(&mut state, &leader);
            tokio::pin!(pass);
            loop {
                tokio::select! {
                    () = &mut pass => break,
                    _ = idle.tick() => heartbeat.beat(),
                }
            }
        }
    }

    async fn pass(&self, state: &mut State, leader: &watch::Receiver<bool>) {
        let started = Instant::now();
        let (nodes, expired) = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.advance(started);
            (cache.nodes(), cache.take_expired_plans())
        };
        if expired > 0 {
            self.metrics
                .reservations(ReservationOutcome::Expired, expired);
            info!(
                expired,
                "reservations for replacements expired unused (offload.reservation_ttl)"
            );
        }
        let (pods, replacements) = self.weak_nodes_pods(&nodes).await;
        state.cooldown.retain(|_, until| *until > started);
        let cooling: BTreeSet<Owner> = state.cooldown.keys().cloned().collect();
        let plan = offload::plan(&nodes, &pods, &self.score, &self.planner, &cooling);
        if plan.on_weak_nodes > 0 {
            info!(
                pods_on_weak_nodes = plan.on_weak_nodes,
                moves = plan.moves.len(),
                skipped = %skips(&plan.skipped),
                dry_run = self.config.dry_run,
                "offload pass planned"
            );
        }
        let requests: HashMap<&str, &PodRequest> = (pods.iter())
            .map(|p| (p.request.uid.as_str(), &p.request))
            .collect();
        let moves: Vec<Planned> = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            (plan.moves.iter())
                .filter_map(|step| {
                    Some(Planned {
                        step,
                        request: requests.get(step.uid.as_str())?,
                        replacement: replacements.get(&step.uid)?.clone(),
                        percent: cache.energy_percent(&step.from),
                    })
                })
                .collect()
        };
        for planned in &moves {
            if !*leader.borrow() {
                break; // a standby evicts nothing
            }
            if self.config.dry_run {
                self.dry_run(planned);
            } else if !self.carry_out(planned, state).await {
                break;
            }
        }
        self.metrics
            .offload_pass(started.elapsed().as_secs_f64(), plan.on_weak_nodes);
    }

    /// The pods bound to nodes at or below the configured level, as the planner reads them, and
    /// what their replacements will have in common with them.
    async fn weak_nodes_pods(
        &self,
        nodes: &[NodeState],
    ) -> (Vec<offload::BoundPod>, HashMap<String, Replacement>) {
        let now = Timestamp::now();
        let api = Api::<Pod>::all(self.client.clone());
        let (mut pods, mut replacements) = (Vec::new(), HashMap::new());
        let weak = (nodes.iter()).filter(|n| self.planner.drains(&n.power, &self.score));
        for node in weak {
            let params = ListParams::default().fields(&format!("spec.nodeName={}", node.name));
            let listed = match api.list(&params).await {
                Ok(list) => list.items,
                Err(e) => {
                    warn!(node = %node.name, error = %e, "listing the pods of a weak node failed; it is left for the next pass");
                    continue;
                }
            };
            for pod in listed {
                match convert::bound_pod(&pod, self.default_cpu_millicores, now) {
                    Ok(Some(bound)) => {
                        if let Some(r) = convert::replacement(&pod) {
                            replacements.insert(bound.request.uid.clone(), r);
                        }
                        pods.push(bound);
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "pod on a weak node cannot be read; not moved"),
                }
            }
        }
        (pods, replacements)
    }

    fn dry_run(&self, planned: &Planned) {
        let message = describe(planned.step, planned.percent, true);
        info!(pod = %pod_ref(planned.step).key(), from = %planned.step.from, to = %planned.step.to, "dry run: {message}");
        self.metrics.eviction(EvictionResult::DryRun);
        self.events
            .record(pod_ref(planned.step), EventKind::OffloadDryRun, message);
    }

    /// Reserves the target and evicts; false when evictions cannot be tried this pass.
    async fn carry_out(&self, planned: &Planned<'_>, state: &mut State) -> bool {
        let m = planned.step;
        let version = match &state.eviction_version {
            Some(v) => v.clone(),
            None => match self.eviction_version().await {
                Ok(v) => {
                    info!(version = %format!("policy/{v}"), "Eviction API discovered");
                    state.eviction_version.insert(v).clone()
                }
                Err(e) => {
                    warn!(error = %e, "discovering the Eviction API's version failed; no evictions this pass");
                    return false;
                }
            },
        };
        let now = Instant::now();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plan_replacement(
                planned.request,
                planned.replacement.clone(),
                &m.to,
                now,
                now + self.config.reservation_ttl,
            );
        let key = pod_ref(m).key();
        match self.evict(m, &version).await {
            Ok(()) => {
                self.metrics.eviction(EvictionResult::Evicted);
                state
                    .cooldown
                    .insert(m.owner.clone(), now + self.config.cooldown);
                let message = describe(m, planned.percent, false);
                info!(pod = %key, owner = %m.owner, from = %m.from, to = %m.to, delta_watts = m.delta_watts(), "offloaded: {message}");
                self.events
                    .record(pod_ref(m), EventKind::Offloaded, message);
            }
            Err(e) => {
                let refused = matches!(&e, kube::Error::Api(s) if s.code == 429);
                self.release(m);
                if refused {
                    self.metrics.eviction(EvictionResult::PdbRefused);
                    info!(pod = %key, owner = %m.owner, "eviction refused by a PodDisruptionBudget; tried again on a later pass");
                } else {
                    self.metrics.eviction(EvictionResult::Failed);
                    warn!(pod = %key, owner = %m.owner, error = %e, "eviction failed; reservation released");
                }
            }
        }
        true
    }

    fn release(&self, m: &Move) {
        let released = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release_replacement(&m.uid);
        if released {
            self.metrics.reservations(ReservationOutcome::Released, 1);
        }
    }

    /// Which version of the Eviction API the server serves for `pods/eviction`: `v1` from
    /// Kubernetes 1.22, `v1beta1` before (the test control plane is 1.20).
    async fn eviction_version(&self) -> Result<String, kube::Error> {
        let core = self.client.list_core_api_resources("v1").await?;
        let eviction = core.resources.iter().find(|r| r.name == "pods/eviction");
        Ok(eviction
            .and_then(|r| r.version.clone())
            .filter(|v| v == "v1")
            .unwrap_or_else(|| "v1beta1".into()))
    }

    /// Evicts the pod the move names — that pod, not a namesake created since (a StatefulSet's
    /// replacement has the same name).
    async fn evict(&self, m: &Move, version: &str) -> Result<(), kube::Error> {
        let eviction = json!({
            "apiVersion": format!("policy/{version}"),
            "kind": "Eviction",
            "metadata": {"name": m.name, "namespace": m.namespace},
            "deleteOptions": {"preconditions": {"uid": m.uid}},
        });
        Api::<Pod>::namespaced(self.client.clone(), &m.namespace)
            .create_subresource::<_, serde_json::Value>(
                "eviction",
                &m.name,
                &PostParams::default(),
                &eviction,
            )
            .await
            .map(|_| ())
    }
}

/// The event's message: `evicted from edge-4 (low-powered, 22 %); reserved edge-1
/// (well-powered), -3.1 W predicted`.
fn describe(m: &Move, percent: Option<f64>, dry_run: bool) -> String {
    let level = |l: Option<EnergyLevel>| l.map_or("unknown level", EnergyLevel::label);
    let charge = percent.map_or(String::new(), |p| format!(", {p:.0} %"));
    let (evict, reserve, suffix) = if dry_run {
        ("would evict", "would reserve", " (dry run)")
    } else {
        ("evicted", "reserved", "")
    };
    format!(
        "{evict} from {} ({}{charge}); {reserve} {} ({}), {} predicted{suffix}",
        m.from,
        level(m.from_energy),
        m.to,
        level(m.to_energy),
        MarginalWatts(m.delta_watts()),
    )
}

/// `reason=count` pairs, most frequent first.
fn skips(skipped: &BTreeMap<Skip, usize>) -> String {
    let mut counts: Vec<_> = skipped.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let pairs: Vec<String> = counts.iter().map(|(s, n)| format!("{s}={n}")).collect();
    pairs.join(" ")
}

fn pod_ref(m: &Move) -> PodRef {
    PodRef::new(&m.namespace, &m.name, &m.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattwise_core::Marginal;

    #[test]
    fn events_say_where_from_where_to_and_what_it_saves() {
        let m = Move {
            uid: "u".into(),
            namespace: "shop".into(),
            name: "web-1".into(),
            owner: Owner {
                kind: "ReplicaSet".into(),
                namespace: "shop".into(),
                name: "web-abc".into(),
            },
            from: "edge-4".into(),
            from_energy: Some(EnergyLevel::LowPowered),
            to: "edge-1".into(),
            to_energy: Some(EnergyLevel::WellPowered),
            added: Marginal {
                watts: MarginalWatts(6.25),
                utilisation_after: 0.5,
                exceeds_capacity: false,
            },
            saved_watts: 9.35,
        };
        assert_eq!(
            describe(&m, Some(22.4), false),
            "evicted from edge-4 (low-powered, 22 %); reserved edge-1 (well-powered), \
             -3.1 W predicted"
        );
        let unknown = Move {
            to_energy: None,
            ..m.clone()
        };
        assert_eq!(
            describe(&unknown, None, true),
            "would evict from edge-4 (low-powered); would reserve edge-1 (unknown level), \
             -3.1 W predicted (dry run)"
        );
        let skipped = BTreeMap::from([
            (Skip::DaemonSet, 1),
            (Skip::Cooldown, 3),
            (Skip::BarePod, 1),
        ]);
        assert_eq!(skips(&skipped), "cooldown=3 bare_pod=1 daemonset=1");
    }
}
