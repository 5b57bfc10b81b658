//! What the API server says: nodes and the pods on them, as the watches deliver them (kube-rs'
//! reflector store, reduced to what scheduling reads). Nothing here knows about this scheduler's
//! own decisions; those are the [`super::overlay`].
//!
//! Pods are keyed by UID: a pod deleted and recreated under the same name is another pod.
//! Memory: raw objects are not kept; each pod is reduced to its requests, host ports and node.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use tracing::warn;
use wattwise_core::EnergyLevel;

use super::convert::{self, NodeBasics};
use super::published::PublishedEnergy;
use crate::policy::{HostPort, PodRequest, Resources};

/// A pod's identity (`metadata.uid`).
pub type PodUid = String;

/// A node as the API describes it.
#[derive(Debug, Clone)]
pub struct StoredNode {
    pub basics: NodeBasics,
    /// From the configured energy label when it is the operator's; `None` without one, with one
    /// that is not a level, or with one wattwise wrote (see [`super::published`]).
    pub label_energy: Option<EnergyLevel>,
    /// The energy label and wattwise's annotations as the Node object carries them.
    pub published: PublishedEnergy,
}

#[derive(Debug, Clone)]
struct StoredPod {
    /// Node whose usage this pod is counted in (none when unbound or finished).
    node: Option<String>,
    requests: Resources,
    host_ports: Vec<HostPort>,
}

/// What the pods the API shows on a node use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeUsage {
    pub requested: Resources,
    pub host_ports: Vec<HostPort>,
}

/// What a pod event changed.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSeen {
    pub uid: PodUid,
    /// Where the API says the pod runs (or is bound), if anywhere and not finished.
    pub node: Option<String>,
    /// Nodes whose usage changed.
    pub touched: Vec<String>,
    /// One of ours, waiting for a node: what the policy needs to place it.
    pub pending: Option<PodRequest>,
    /// The pod's pricing CPU (millicores) when this event shows it bound and the one before
    /// showed it unbound: a bind while we watched, by whichever scheduler.
    pub newly_bound: Option<u64>,
}

#[derive(Debug, Default)]
pub struct ApiStore {
    nodes: HashMap<String, StoredNode>,
    pods: HashMap<PodUid, StoredPod>,
    /// Keyed by node name, also for nodes not (yet) seen: pods may arrive first. Entries leave
    /// when their last pod does.
    usage: HashMap<String, NodeUsage>,
    /// Objects seen since a watcher (re)started its initial list.
    relist_nodes: Option<HashSet<String>>,
    relist_pods: Option<HashSet<PodUid>>,
}

/// A pod's UID; a pod without one (never the case for objects from the API) is known by its
/// `namespace/name`.
pub fn pod_uid(pod: &Pod) -> PodUid {
    match pod.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_string(),
        _ => format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

impl ApiStore {
    pub fn node(&self, name: &str) -> Option<&StoredNode> {
        self.nodes.get(name)
    }

    pub fn usage(&self, node: &str) -> Option<&NodeUsage> {
        self.usage.get(node)
    }

    /// Nodes, pods, and nodes with usage held (for tests of memory bounds).
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        (self.nodes.len(), self.pods.len(), self.usage.len())
    }

    /// Takes a node from a watch event; returns its name, or `None` if it cannot be read.
    pub fn apply_node(&mut self, node: &Node, energy_label: &str) -> Option<String> {
        let basics = match convert::node_basics(node) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "ignoring node that cannot be read");
                return None;
            }
        };
        if let Some(seen) = self.relist_nodes.as_mut() {
            seen.insert(basics.name.clone());
        }
        let published = PublishedEnergy::from_metadata(
            &basics.labels,
            node.metadata
                .annotations
                .as_ref()
                .unwrap_or(&Default::default()),
            energy_label,
        );
        let label_energy = match convert::energy_label(&basics.labels, energy_label) {
            // A label wattwise wrote mirrors reports; only the reports count.
            _ if published.managed => None,
            Some(Ok(level)) => Some(level),
            Some(Err(e)) => {
                warn!(node = %basics.name, error = %e, "ignoring energy label");
                None
            }
            None => None,
        };
        let name = basics.name.clone();
        self.nodes.insert(
            name.clone(),
            StoredNode {
                basics,
                label_energy,
                published,
            },
        );
        Some(name)
    }

    pub fn delete_node(&mut self, name: &str) -> bool {
        self.nodes.remove(name).is_some()
    }

    /// A node watcher starts its initial list: nodes not listed again are dropped at the end.
    pub fn begin_node_relist(&mut self) {
        self.relist_nodes = Some(HashSet::new());
    }

    /// Ends a node relist; returns the nodes that disappeared (already removed here).
    pub fn end_node_relist(&mut self) -> Vec<String> {
        let Some(seen) = self.relist_nodes.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = (self.nodes.keys())
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in &gone {
            self.nodes.remove(name);
        }
        gone
    }

    /// Takes a pod from a watch event.
    pub fn apply_pod(
        &mut self,
        pod: &Pod,
        scheduler_name: &str,
        default_cpu_millicores: u64,
    ) -> PodSeen {
        let uid = pod_uid(pod);
        if let Some(seen) = self.relist_pods.as_mut() {
            seen.insert(uid.clone());
        }
        let request = match convert::pod_request(pod, default_cpu_millicores) {
            Ok(r) => r,
            Err(e) => {
                warn!(%uid, error = %e, "ignoring pod that cannot be read");
                let touched = self.remove_pod(&uid);
                return PodSeen {
                    uid,
                    node: None,
                    touched,
                    pending: None,
                    newly_bound: None,
                };
            }
        };
        let spec = pod.spec.as_ref();
        let terminal = convert::is_terminal(pod);
        let bound_to = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let node = bound_to.clone().filter(|_| !terminal);
        let stored = StoredPod {
            node: node.clone(),
            requests: request.requests.clone(),
            host_ports: request.host_ports.clone(),
        };
        let was_unbound = self.pods.get(&uid).is_some_and(|old| old.node.is_none());
        let newly_bound = (was_unbound && node.is_some()).then_some(request.pricing_cpu_millicores);
        let mut touched = Vec::new();
        // Most events are status updates that change nothing counted.
        let unchanged = self.pods.get(&uid).is_some_and(|old| {
            old.node == stored.node
                && old.requests == stored.requests
                && old.host_ports == stored.host_ports
        });
        if !unchanged {
            touched = self.remove_pod(&uid);
            if let Some(n) = &stored.node {
                let usage = self.usage.entry(n.clone()).or_default();
                usage.requested.add(&stored.requests);
                usage.host_ports.extend(stored.host_ports.iter().cloned());
                if !touched.contains(n) {
                    touched.push(n.clone());
                }
            }
            self.pods.insert(uid.clone(), stored);
        }
        let ours = spec.and_then(|s| s.scheduler_name.as_deref()) == Some(scheduler_name);
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let pending = (ours && bound_to.is_none() && !terminal && !deleting).then_some(request);
        PodSeen {
            uid,
            node,
            touched,
            pending,
            newly_bound,
        }
    }

    /// Forgets a pod; returns the nodes whose usage changed.
    pub fn remove_pod(&mut self, uid: &str) -> Vec<String> {
        let Some(old) = self.pods.remove(uid) else {
            return Vec::new();
        };
        let Some(node) = old.node else {
            return Vec::new();
        };
        if let Some(usage) = self.usage.get_mut(&node) {
            usage.requested.subtract(&old.requests);
            for port in &old.host_ports {
                if let Some(pos) = usage.host_ports.iter().position(|p| p == port) {
                    usage.host_ports.swap_remove(pos);
                }
            }
            if usage.requested == Resources::default() && usage.host_ports.is_empty() {
                self.usage.remove(&node);
            }
        }
        vec![node]
    }

    pub fn begin_pod_relist(&mut self) {
        self.relist_pods = Some(HashSet::new());
    }

    /// Ends a pod relist; returns the pods that disappeared and the nodes whose usage changed.
    pub fn end_pod_relist(&mut self) -> (Vec<PodUid>, Vec<String>) {
        let Some(seen) = self.relist_pods.take() else {
            return (Vec::new(), Vec::new());
        };
        let gone: Vec<PodUid> = (self.pods.keys())
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        let mut touched = Vec::new();
        for uid in &gone {
            for node in self.remove_pod(uid) {
                if !touched.contains(&node) {
                    touched.push(node);
                }
            }
        }
        (gone, touched)
    }
}
