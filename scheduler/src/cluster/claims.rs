//! PersistentVolumeClaims and StorageClasses, so that a decision knows whether a pod's claims are
//! bound. Standalone mode binds no volumes: a pod whose claim is not bound is refused
//! ([`crate::policy::constraints`]) rather than bound to a node its volume may never reach.
//!
//! kube-rs reflectors keep both (without managed fields); this module owns that state and is
//! consulted only for pods that mount claims. Every claim or class change lets unschedulable pods
//! retry, so a pod waiting for its claim is tried again when the claim is bound.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::policy::{ClaimState, PodRequest};
use crate::queue::SchedulingQueue;

/// The legacy way of naming a claim's class, still honoured by Kubernetes before the field.
const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// What the claim watches know; cheap to clone.
#[derive(Clone)]
pub struct Claims {
    claims: Store<PersistentVolumeClaim>,
    classes: Store<StorageClass>,
    /// Both watches have delivered their first full list.
    synced: Arc<[AtomicBool; 2]>,
}

impl Claims {
    /// Starts watching claims and classes; the tasks run until aborted.
    pub fn watch(client: Client, queue: Arc<SchedulingQueue>) -> (Self, [JoinHandle<()>; 2]) {
        let (claims, claim_writer) = reflector::store();
        let (classes, class_writer) = reflector::store();
        let synced = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let tasks = [
            tokio::spawn(reflect(
                Api::<PersistentVolumeClaim>::all(client.clone()),
                claim_writer,
                "persistentvolumeclaims",
                synced.clone(),
                0,
                queue.clone(),
            )),
            tokio::spawn(reflect(
                Api::<StorageClass>::all(client),
                class_writer,
                "storageclasses",
                synced.clone(),
                1,
                queue,
            )),
        ];
        let claims = Self {
            claims,
            classes,
            synced,
        };
        (claims, tasks)
    }

    /// `pod` with the state of each claim it mounts filled in; the same `Arc` when it mounts
    /// none (most pods: no lookup, no copy).
    pub fn resolve(&self, pod: Arc<PodRequest>) -> Arc<PodRequest> {
        if pod.constraints.volume_claims.is_empty() {
            return pod;
        }
        let synced = self.synced.iter().all(|s| s.load(Ordering::Acquire));
        let mut resolved = PodRequest::clone(&pod);
        for claim in &mut resolved.constraints.volume_claims {
            claim.state = if synced {
                let object = self
                    .claims
                    .get(&ObjectRef::new(&claim.name).within(&pod.namespace));
                claim_state(object.as_deref(), |class| {
                    self.classes.get(&ObjectRef::new(class))
                })
            } else {
                ClaimState::Unknown
            };
        }
        Arc::new(resolved)
    }
}

/// What `claim` (`None`: no such claim) means for a pod that mounts it; `class` finds a
/// StorageClass by name.
pub fn claim_state(
    claim: Option<&PersistentVolumeClaim>,
    class: impl Fn(&str) -> Option<Arc<StorageClass>>,
) -> ClaimState {
    let Some(claim) = claim else {
        return ClaimState::Missing;
    };
    let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase == Some("Bound") {
        return ClaimState::Bound;
    }
    let storage_class = claim
        .annotations()
        .get(BETA_CLASS_ANNOTATION)
        .cloned()
        .or_else(|| claim.spec.as_ref()?.storage_class_name.clone())
        .filter(|name| !name.is_empty());
    let wait_for_first_consumer = storage_class
        .as_deref()
        .and_then(class)
        .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
    ClaimState::Unbound {
        storage_class,
        wait_for_first_consumer,
    }
}

/// Keeps `writer`'s store in step with the API; any change may let a refused pod fit.
async fn reflect<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    what: &'static str,
    synced: Arc<[AtomicBool; 2]>,
    slot: usize,
    queue: Arc<SchedulingQueue>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let config = watcher::Config::default().page_size(500);
    let stream = watcher::watcher(api, config)
        .default_backoff()
        .modify(|object| object.managed_fields_mut().clear());
    let mut events = reflector::reflector(writer, stream).boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::InitDone) => {
                if !synced[slot].swap(true, Ordering::AcqRel) {
                    info!(watch = what, "cache synced");
                }
                queue.cluster_changed();
            }
            Ok(Event::Apply(_) | Event::Delete(_)) => queue.cluster_changed(),
            Ok(Event::Init | Event::InitApply(_)) => {}
            Err(e) => warn!(watch = what, error = %e, "watch failed; retrying with backoff"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn claim(value: Value) -> PersistentVolumeClaim {
        serde_json::from_value(value).unwrap()
    }

    fn classes(name: &str) -> Option<Arc<StorageClass>> {
        let mode = match name {
            "local" => "WaitForFirstConsumer",
            "network" => "Immediate",
            _ => return None,
        };
        Some(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "provisioner": "example.com/p",
                "volumeBindingMode": mode,
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn claims_are_bound_missing_or_unbound_with_their_class_mode() {
        assert_eq!(claim_state(None, classes), ClaimState::Missing);
        let bound = claim(json!({
            "metadata": {"name": "c"},
            "spec": {"storageClassName": "local"},
            "status": {"phase": "Bound"},
        }));
        assert_eq!(claim_state(Some(&bound), classes), ClaimState::Bound);
        let unbound = |class: Value, annotations: Value| {
            let c = claim(json!({
                "metadata": {"name": "c", "annotations": annotations},
                "spec": {"storageClassName": class},
                "status": {"phase": "Pending"},
            }));
            claim_state(Some(&c), classes)
        };
        let state = |class: Option<&str>, wait_for_first_consumer| ClaimState::Unbound {
            storage_class: class.map(Into::into),
            wait_for_first_consumer,
        };
        assert_eq!(
            unbound(json!("local"), json!({})),
            state(Some("local"), true)
        );
        assert_eq!(
            unbound(json!("network"), json!({})),
            state(Some("network"), false)
        );
        // A class not (yet) known, no class, or the empty class (static binding only).
        assert_eq!(
            unbound(json!("gone"), json!({})),
            state(Some("gone"), false)
        );
        assert_eq!(unbound(json!(null), json!({})), state(None, false));
        assert_eq!(unbound(json!(""), json!({})), state(None, false));
        // The beta annotation names the class before the field does.
        assert_eq!(
            unbound(json!("network"), json!({BETA_CLASS_ANNOTATION: "local"})),
            state(Some("local"), true)
        );
    }
}
