//! The scheduler's view of the cluster: nodes, the requests of the pods on them (including pods
//! this scheduler has bound but not yet seen bound: assumed), our pending pods, and every node's
//! latest agent report. Watch events, reports and decisions all go through here, so concurrent
//! decisions see each other.
//!
//! Memory: raw objects are not kept; each pod is reduced to its requests, host ports and node.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod};
use tracing::warn;
use wattwise_core::{EnergyLevel, PowerCurve, ValidatedReport};

use super::convert::{self, NodeBasics};
use crate::policy::{HostPort, NodePower, NodeState, PodRequest, Resources, Snapshot};

/// `namespace/name`.
pub type PodKey = String;

pub fn pod_key(namespace: &str, name: &str) -> PodKey {
    format!("{namespace}/{name}")
}

/// What the cache needs from the configuration.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub scheduler_name: String,
    pub energy_label: String,
    pub default_cpu_millicores: u64,
    pub stale_after: Duration,
    /// Curve for nodes without a fresh report.
    pub default_curve: Arc<PowerCurve>,
}

/// Why a report was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRejection {
    #[error("node_name: unknown node {0:?}")]
    UnknownNode(String),
    #[error("sequence: {got} is not after {last} for agent_instance {instance:?}")]
    OutOfOrder {
        instance: String,
        got: u64,
        last: u64,
    },
}

impl ReportRejection {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownNode(_) => "unknown_node",
            Self::OutOfOrder { .. } => "out_of_order",
        }
    }
}

/// What a pod watch event means for the scheduling queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodChange {
    /// One of ours is waiting for a node.
    Pending(PodKey),
    /// The pod is not (or no longer) ours to schedule: bound, finished, deleted or another
    /// scheduler's.
    NotPending(PodKey),
    /// Nothing the queue needs to know (our bind of the pod is still on its way).
    Unchanged,
}

#[derive(Debug, Clone)]
struct LatestReport {
    /// When the report stops being fresh: received plus `stale_after` (`None`: never, the sum
    /// being past what an `Instant` holds).
    fresh_until: Option<Instant>,
    /// When the agent read its inputs, in this process' clock (never after the report arrived).
    observed_at: Instant,
    instance: String,
    sequence: u64,
    curve: Arc<PowerCurve>,
    utilisation: f64,
    capacity_millicores: u64,
    energy: Option<EnergyLevel>,
}

#[derive(Debug, Default)]
struct PowerTrack {
    report: Option<LatestReport>,
    /// (when, pricing millicores) of pods bound here, pruned as reports catch up.
    bound_log: VecDeque<(Instant, u64)>,
    label_energy: Option<EnergyLevel>,
}

#[derive(Debug, Clone, Default)]
struct NodeUsage {
    requested: Resources,
    host_ports: Vec<HostPort>,
}

#[derive(Debug, Clone)]
struct PodEntry {
    /// Node whose usage this pod is counted in.
    node: Option<String>,
    requests: Resources,
    host_ports: Vec<HostPort>,
    /// Bound by us, not yet seen bound in a watch event.
    assumed: bool,
}

pub struct ClusterCache {
    settings: CacheSettings,
    nodes: Vec<NodeState>,
    /// `nodes` as the policy scans them, row for row; updated with every change to `nodes`, so
    /// that no decision builds one.
    snapshot: Snapshot,
    tracks: Vec<PowerTrack>,
    node_index: HashMap<String, usize>,
    /// Keyed by node name, also for nodes not (yet) seen: pods may arrive first.
    usage: HashMap<String, NodeUsage>,
    pods: HashMap<PodKey, PodEntry>,
    pending: HashMap<PodKey, Arc<PodRequest>>,
    /// Objects seen since a watcher (re)started its initial list.
    relist_nodes: Option<HashSet<String>>,
    relist_pods: Option<HashSet<PodKey>>,
}

/// Figures about the power side, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerSummary {
    pub nodes: usize,
    pub stale_nodes: usize,
}

impl ClusterCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            settings,
            nodes: Vec::new(),
            snapshot: Snapshot::default(),
            tracks: Vec::new(),
            node_index: HashMap::new(),
            usage: HashMap::new(),
            pods: HashMap::new(),
            pending: HashMap::new(),
            relist_nodes: None,
            relist_pods: None,
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    /// [`ClusterCache::nodes`] for [`crate::policy::schedule`]: a decision's index into it is
    /// also an index into `nodes()`.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.node_index.get(name).map(|&i| &self.nodes[i])
    }

    pub fn has_node(&self, name: &str) -> bool {
        self.node_index.contains_key(name)
    }

    pub fn pending(&self, key: &str) -> Option<Arc<PodRequest>> {
        self.pending.get(key).cloned()
    }

    pub fn pending_keys(&self) -> Vec<PodKey> {
        self.pending.keys().cloned().collect()
    }

    // ---- nodes ----

    pub fn apply_node(&mut self, node: &Node) {
        let basics = match convert::node_basics(node) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "ignoring node that cannot be read");
                return;
            }
        };
        if let Some(seen) = self.relist_nodes.as_mut() {
            seen.insert(basics.name.clone());
        }
        let label_energy = match convert::energy_label(&basics.labels, &self.settings.energy_label)
        {
            Some(Ok(level)) => Some(level),
            Some(Err(e)) => {
                warn!(node = %basics.name, error = %e, "ignoring energy label");
                None
            }
            None => None,
        };
        match self.node_index.get(&basics.name) {
            Some(&i) => {
                let NodeBasics {
                    name: _,
                    labels,
                    unschedulable,
                    ready,
                    taints,
                    allocatable,
                } = basics;
                let n = &mut self.nodes[i];
                n.labels = labels;
                n.unschedulable = unschedulable;
                n.ready = ready;
                n.taints = taints;
                n.allocatable = allocatable;
                self.tracks[i].label_energy = label_energy;
                self.sync_snapshot(i);
            }
            None => {
                let usage = self.usage.get(&basics.name).cloned().unwrap_or_default();
                let power = self.default_power(&usage.requested, &basics.allocatable);
                self.node_index
                    .insert(basics.name.clone(), self.nodes.len());
                self.nodes.push(NodeState {
                    name: basics.name,
                    labels: basics.labels,
                    unschedulable: basics.unschedulable,
                    ready: basics.ready,
                    taints: basics.taints,
                    allocatable: basics.allocatable,
                    requested: usage.requested,
                    used_host_ports: usage.host_ports,
                    energy: label_energy,
                    power,
                });
                self.tracks.push(PowerTrack {
                    label_energy,
                    ..Default::default()
                });
                self.sync_snapshot(self.nodes.len() - 1);
            }
        }
    }

    pub fn delete_node(&mut self, name: &str) {
        let Some(i) = self.node_index.remove(name) else {
            return;
        };
        self.nodes.swap_remove(i);
        self.snapshot.swap_remove(i);
        self.tracks.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.node_index.insert(moved.name.clone(), i);
        }
        self.rebuild_snapshot_if_wasteful();
    }

    /// Brings the snapshot's row `i` in line with `nodes[i]` (appending it for a new node).
    fn sync_snapshot(&mut self, i: usize) {
        if i == self.snapshot.len() {
            self.snapshot.push(&self.nodes[i]);
        } else {
            self.snapshot.set(i, &self.nodes[i]);
        }
        self.rebuild_snapshot_if_wasteful();
    }

    fn rebuild_snapshot_if_wasteful(&mut self) {
        if self.snapshot.wasteful() {
            self.snapshot = Snapshot::new(&self.nodes);
        }
    }

    /// A node watcher starts its initial list: nodes not listed again are dropped at the end.
    pub fn begin_node_relist(&mut self) {
        self.relist_nodes = Some(HashSet::new());
    }

    pub fn end_node_relist(&mut self) {
        let Some(seen) = self.relist_nodes.take() else {
            return;
        };
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !seen.contains(&n.name))
            .map(|n| n.name.clone())
            .collect();
        for name in gone {
            self.delete_node(&name);
        }
    }

    // ---- pods ----

    /// Takes a pod from a watch event and says what it means for the queue.
    pub fn apply_pod(&mut self, pod: &Pod) -> PodChange {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let key = pod_key(namespace, name);
        if let Some(seen) = self.relist_pods.as_mut() {
            seen.insert(key.clone());
        }
        let spec = pod.spec.as_ref();
        let node_name = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let terminal = convert::is_terminal(pod);
        let request = match convert::pod_request(pod, self.settings.default_cpu_millicores) {
            Ok(r) => r,
            Err(e) => {
                warn!(pod = %key, error = %e, "ignoring pod that cannot be read");
                self.remove_pod(&key);
                return PodChange::NotPending(key);
            }
        };
        let old = self.pods.get(&key).cloned();
        let still_assumed =
            old.as_ref().is_some_and(|o| o.assumed) && node_name.is_none() && !terminal;
        if still_assumed {
            // Our bind has not shown up in the watch yet: keep counting the pod where we put it.
            return PodChange::Unchanged;
        }
        if let Some(old) = old {
            self.uncount(&old);
        }
        let entry = PodEntry {
            node: if terminal { None } else { node_name.clone() },
            requests: request.requests.clone(),
            host_ports: request.host_ports.clone(),
            assumed: false,
        };
        self.count(&entry);
        self.pods.insert(key.clone(), entry);
        let ours =
            spec.and_then(|s| s.scheduler_name.as_deref()) == Some(&self.settings.scheduler_name);
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if ours && node_name.is_none() && !terminal && !deleting {
            self.pending.insert(key.clone(), Arc::new(request));
            PodChange::Pending(key)
        } else {
            self.pending.remove(&key);
            PodChange::NotPending(key)
        }
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> PodChange {
        let key = pod_key(namespace, name);
        self.remove_pod(&key);
        PodChange::NotPending(key)
    }

    fn remove_pod(&mut self, key: &str) {
        if let Some(old) = self.pods.remove(key) {
            self.uncount(&old);
        }
        self.pending.remove(key);
    }

    pub fn begin_pod_relist(&mut self) {
        self.relist_pods = Some(HashSet::new());
    }

    /// Ends a pod relist; returns the pods that disappeared (for the queue).
    pub fn end_pod_relist(&mut self) -> Vec<PodKey> {
        let Some(seen) = self.relist_pods.take() else {
            return Vec::new();
        };
        let gone: Vec<PodKey> = self
            .pods
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in &gone {
            self.remove_pod(key);
        }
        gone
    }

    /// Counts a pod we are binding on `node` before the watch confirms it.
    pub fn assume(&mut self, key: &str, pod: &PodRequest, node: &str, now: Instant) {
        if let Some(old) = self.pods.remove(key) {
            self.uncount(&old);
        }
        let entry = PodEntry {
            node: Some(node.to_string()),
            requests: pod.requests.clone(),
            host_ports: pod.host_ports.clone(),
            assumed: true,
        };
        self.count(&entry);
        self.pods.insert(key.to_string(), entry);
        self.pending.remove(key);
        if let Some(&i) = self.node_index.get(node) {
            self.tracks[i]
                .bound_log
                .push_back((now, pod.pricing_cpu_millicores));
        }
    }

    /// Undoes [`ClusterCache::assume`] after a failed bind; the pod is pending again.
    pub fn forget(&mut self, key: &str, pod: Arc<PodRequest>, node: &str, bound_at: Instant) {
        if let Some(old) = self.pods.get(key) {
            if !old.assumed {
                return; // the watch has overtaken us; it knows better
            }
        }
        if let Some(old) = self.pods.remove(key) {
            self.uncount(&old);
        }
        if let Some(&i) = self.node_index.get(node) {
            let log = &mut self.tracks[i].bound_log;
            if let Some(pos) = log
                .iter()
                .position(|&(t, cpu)| t == bound_at && cpu == pod.pricing_cpu_millicores)
            {
                log.remove(pos);
            }
        }
        let entry = PodEntry {
            node: None,
            requests: pod.requests.clone(),
            host_ports: pod.host_ports.clone(),
            assumed: false,
        };
        self.pods.insert(key.to_string(), entry);
        self.pending.insert(key.to_string(), pod);
    }

    fn count(&mut self, entry: &PodEntry) {
        let Some(node) = &entry.node else { return };
        let usage = self.usage.entry(node.clone()).or_default();
        usage.requested.add(&entry.requests);
        usage.host_ports.extend(entry.host_ports.iter().cloned());
        self.mirror_usage(node);
    }

    fn uncount(&mut self, entry: &PodEntry) {
        let Some(node) = &entry.node else { return };
        let Some(usage) = self.usage.get_mut(node) else {
            return;
        };
        usage.requested.subtract(&entry.requests);
        for port in &entry.host_ports {
            if let Some(pos) = usage.host_ports.iter().position(|p| p == port) {
                usage.host_ports.swap_remove(pos);
            }
        }
        if usage.requested == Resources::default() && usage.host_ports.is_empty() {
            self.usage.remove(node);
        }
        self.mirror_usage(node);
    }

    fn mirror_usage(&mut self, node: &str) {
        if let Some(&i) = self.node_index.get(node) {
            let usage = self.usage.get(node).cloned().unwrap_or_default();
            self.nodes[i].requested = usage.requested;
            self.nodes[i].used_host_ports = usage.host_ports;
            self.sync_snapshot(i);
        }
    }

    // ---- reports ----

    /// Takes a validated report received at `now`.
    pub fn ingest_report(
        &mut self,
        report: &ValidatedReport,
        now: Instant,
    ) -> Result<(), ReportRejection> {
        let name = report.node_name();
        let Some(&i) = self.node_index.get(name) else {
            return Err(ReportRejection::UnknownNode(name.to_string()));
        };
        let instance = report.report().agent_instance.clone();
        let track = &mut self.tracks[i];
        if let Some(last) = &track.report {
            if last.instance == instance && report.sequence() <= last.sequence {
                return Err(ReportRejection::OutOfOrder {
                    instance,
                    got: report.sequence(),
                    last: last.sequence,
                });
            }
        }
        // The agent's clock may be skewed; never place the observation after its arrival.
        let age = SystemTime::now()
            .duration_since(report.observed_at())
            .unwrap_or_default();
        let observed_at = now.checked_sub(age).unwrap_or(now);
        while track
            .bound_log
            .front()
            .is_some_and(|&(t, _)| t <= observed_at)
        {
            track.bound_log.pop_front();
        }
        track.report = Some(LatestReport {
            fresh_until: now.checked_add(self.settings.stale_after),
            observed_at,
            instance,
            sequence: report.sequence(),
            curve: Arc::new(report.curve().clone()),
            utilisation: report.utilisation(),
            capacity_millicores: report.capacity_millicores(),
            energy: report.energy_level(),
        });
        Ok(())
    }

    fn default_power(&self, requested: &Resources, allocatable: &Resources) -> NodePower {
        NodePower {
            curve: self.settings.default_curve.clone(),
            utilisation: requested_utilisation(requested, allocatable),
            capacity_millicores: allocatable.cpu_millicores,
            bound_since_report_millicores: 0,
            fresh: false,
        }
    }

    /// Brings every node's power and energy up to `now` (freshness, pods bound since its report).
    /// Called before each decision; O(nodes) without allocation, and only nodes whose power
    /// changed are written (and mirrored into the snapshot).
    pub fn refresh_power(&mut self, now: Instant) -> PowerSummary {
        let mut summary = PowerSummary {
            nodes: self.nodes.len(),
            stale_nodes: 0,
        };
        for (i, (n, track)) in self.nodes.iter_mut().zip(&self.tracks).enumerate() {
            let fresh = track
                .report
                .as_ref()
                .filter(|r| r.fresh_until.is_none_or(|until| now <= until));
            let (curve, utilisation, capacity_millicores, bound_since_report_millicores) =
                match fresh {
                    Some(r) => {
                        let since: u64 = track
                            .bound_log
                            .iter()
                            .filter(|&&(t, _)| t > r.observed_at)
                            .map(|&(_, cpu)| cpu)
                            .sum();
                        (&r.curve, r.utilisation, r.capacity_millicores, since)
                    }
                    None => {
                        summary.stale_nodes += 1;
                        (
                            &self.settings.default_curve,
                            requested_utilisation(&n.requested, &n.allocatable),
                            n.allocatable.cpu_millicores,
                            0,
                        )
                    }
                };
            let energy = fresh
                .and_then(|r| r.energy)
                .or(track.label_energy)
                .or_else(|| track.report.as_ref().and_then(|r| r.energy));
            let old = &n.power;
            let unchanged = Arc::ptr_eq(&old.curve, curve)
                && old.utilisation == utilisation
                && old.capacity_millicores == capacity_millicores
                && old.bound_since_report_millicores == bound_since_report_millicores
                && old.fresh == fresh.is_some()
                && n.energy == energy;
            if unchanged {
                continue;
            }
            n.power = NodePower {
                curve: curve.clone(),
                utilisation,
                capacity_millicores,
                bound_since_report_millicores,
                fresh: fresh.is_some(),
            };
            n.energy = energy;
            self.snapshot.set_power(i, &n.power, energy);
        }
        summary
    }

    /// Nodes whose agent has reported at least once.
    pub fn reporting_nodes(&self) -> usize {
        self.tracks.iter().filter(|t| t.report.is_some()).count()
    }
}

/// The utilisation a node without a fresh report is priced at: its requested CPU over
/// allocatable.
fn requested_utilisation(requested: &Resources, allocatable: &Resources) -> f64 {
    let capacity = allocatable.cpu_millicores;
    if capacity == 0 {
        1.0
    } else {
        (requested.cpu_millicores as f64 / capacity as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fixtures::report;
    use serde_json::json;
    use wattwise_proto::v1 as pb;

    fn settings() -> CacheSettings {
        CacheSettings {
            scheduler_name: "wattwise".into(),
            energy_label: "energy-status".into(),
            default_cpu_millicores: 100,
            stale_after: Duration::from_secs(30),
            default_curve: Arc::new(PowerCurve::linear(100.0, 300.0).unwrap()),
        }
    }

    fn node(name: &str, cpu: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap()
    }

    fn pod(name: &str, cpu: Option<&str>, node: Option<&str>, scheduler: &str) -> Pod {
        let mut requests = serde_json::Map::new();
        if let Some(cpu) = cpu {
            requests.insert("cpu".into(), json!(cpu));
        }
        let mut spec = json!({
            "schedulerName": scheduler,
            "containers": [{"name": "c", "image": "x", "resources": {"requests": requests}}]
        });
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": spec,
            "status": {"phase": if node.is_some() { "Running" } else { "Pending" }}
        }))
        .unwrap()
    }

    #[test]
    fn bound_pods_count_on_their_node_and_leave_when_finished() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        assert_eq!(
            c.apply_pod(&pod("a", Some("500m"), Some("n1"), "default-scheduler")),
            PodChange::NotPending("ns/a".into())
        );
        c.apply_pod(&pod("b", Some("250m"), Some("n1"), "wattwise"));
        assert_eq!(c.node("n1").unwrap().requested.cpu_millicores, 750);
        assert_eq!(c.node("n1").unwrap().requested.pods, 2);
        let mut done = pod("a", Some("500m"), Some("n1"), "default-scheduler");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        c.apply_pod(&done);
        assert_eq!(c.node("n1").unwrap().requested.cpu_millicores, 250);
        c.delete_pod("ns", "b");
        assert_eq!(c.node("n1").unwrap().requested, Resources::default());
    }

    #[test]
    fn pods_seen_before_their_node_are_counted_when_it_appears() {
        let mut c = ClusterCache::new(settings());
        c.apply_pod(&pod("a", Some("1"), Some("late"), "x"));
        c.apply_node(&node("late", "4", json!({})));
        assert_eq!(c.node("late").unwrap().requested.cpu_millicores, 1000);
    }

    #[test]
    fn our_unbound_pods_are_pending_and_assumed_pods_stay_counted() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        let p = pod("w", None, None, "wattwise");
        assert_eq!(c.apply_pod(&p), PodChange::Pending("ns/w".into()));
        let req = c.pending("ns/w").unwrap();
        assert_eq!(
            req.pricing_cpu_millicores, 100,
            "default CPU for a pod without request"
        );
        let t = Instant::now();
        c.assume("ns/w", &req, "n1", t);
        assert!(c.pending("ns/w").is_none());
        assert_eq!(c.node("n1").unwrap().requested.pods, 1);
        // A status update of the still-unbound pod must not drop the assumption.
        assert_eq!(c.apply_pod(&p), PodChange::Unchanged);
        assert_eq!(c.node("n1").unwrap().requested.pods, 1);
        // The watch confirms the bind: still counted once.
        c.apply_pod(&pod("w", None, Some("n1"), "wattwise"));
        assert_eq!(c.node("n1").unwrap().requested.pods, 1);
    }

    #[test]
    fn a_failed_bind_is_forgotten_and_the_pod_is_pending_again() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        c.apply_pod(&pod("w", Some("1"), None, "wattwise"));
        let req = c.pending("ns/w").unwrap();
        let t = Instant::now();
        c.assume("ns/w", &req, "n1", t);
        c.forget("ns/w", req, "n1", t);
        assert_eq!(c.node("n1").unwrap().requested, Resources::default());
        assert!(c.pending("ns/w").is_some());
    }

    #[test]
    fn reports_for_unknown_nodes_and_old_sequences_are_rejected() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        let now = Instant::now();
        assert_eq!(
            c.ingest_report(&report("ghost", 1, 0.1, None), now),
            Err(ReportRejection::UnknownNode("ghost".into()))
        );
        c.ingest_report(&report("n1", 5, 0.1, None), now).unwrap();
        let err = c
            .ingest_report(&report("n1", 5, 0.1, None), now)
            .unwrap_err();
        assert_eq!(err.kind(), "out_of_order");
    }

    #[test]
    fn fresh_reports_price_with_their_curve_and_count_pods_bound_since() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({"energy-status": "vulnerable"})));
        let t0 = Instant::now();
        c.refresh_power(t0);
        let n = c.node("n1").unwrap();
        assert!(!n.power.fresh);
        assert_eq!(
            n.energy,
            Some(EnergyLevel::Vulnerable),
            "label honoured without a report"
        );

        c.ingest_report(
            &report("n1", 1, 0.25, Some(pb::EnergyLevel::WellPowered)),
            t0,
        )
        .unwrap();
        c.apply_pod(&pod("w", Some("1"), None, "wattwise"));
        let req = c.pending("ns/w").unwrap();
        c.assume("ns/w", &req, "n1", t0 + Duration::from_millis(10));
        let summary = c.refresh_power(t0 + Duration::from_secs(1));
        assert_eq!(summary.stale_nodes, 0);
        let n = c.node("n1").unwrap();
        assert!(n.power.fresh);
        assert_eq!(
            n.energy,
            Some(EnergyLevel::WellPowered),
            "report beats label"
        );
        assert_eq!(n.power.bound_since_report_millicores, 1000);
        assert!((n.power.effective_utilisation() - 0.5).abs() < 1e-12);
        // curve is 50 + 100u W: one core of four from 50 % adds 25 W.
        assert!((n.power.price(1000).watts.0 - 25.0).abs() < 1e-9);

        // A newer report includes the pod; it is no longer added on top.
        c.ingest_report(&report("n1", 2, 0.5, None), t0 + Duration::from_secs(2))
            .unwrap();
        c.refresh_power(t0 + Duration::from_secs(2));
        assert_eq!(c.node("n1").unwrap().power.bound_since_report_millicores, 0);

        // Past stale_after: default curve, label energy.
        let summary = c.refresh_power(t0 + Duration::from_secs(40));
        assert_eq!(summary.stale_nodes, 1);
        let n = c.node("n1").unwrap();
        assert!(!n.power.fresh);
        assert!(Arc::ptr_eq(&n.power.curve, &c.settings().default_curve));
        assert_eq!(n.energy, Some(EnergyLevel::Vulnerable));
    }

    #[test]
    fn relist_drops_what_is_gone() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        c.apply_node(&node("n2", "4", json!({})));
        c.apply_pod(&pod("a", Some("1"), Some("n2"), "x"));
        c.begin_node_relist();
        c.apply_node(&node("n2", "4", json!({})));
        c.end_node_relist();
        assert!(!c.has_node("n1"));
        assert_eq!(c.node("n2").unwrap().requested.cpu_millicores, 1000);
        c.begin_pod_relist();
        assert_eq!(c.end_pod_relist(), vec!["ns/a".to_string()]);
        assert_eq!(c.node("n2").unwrap().requested, Resources::default());
    }

    /// Pods that exercise every filter and both scoring classes.
    fn probes() -> Vec<PodRequest> {
        use crate::policy::{Toleration, TolerationOperator};
        let base = PodRequest {
            namespace: "ns".into(),
            name: "probe".into(),
            uid: "probe".into(),
            priority: 0,
            requests: Resources {
                cpu_millicores: 500,
                pods: 1,
                ..Default::default()
            },
            pricing_cpu_millicores: 500,
            node_selector: Default::default(),
            required_node_affinity: vec![],
            tolerations: vec![],
            host_ports: vec![],
            constraints: Default::default(),
        };
        let mut in_zone = base.clone();
        in_zone.node_selector.insert("zone".into(), "a".into());
        let mut tolerant = base.clone();
        tolerant.tolerations = vec![Toleration {
            key: String::new(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
        }];
        let mut big = base.clone();
        big.requests.cpu_millicores = 2_000;
        let mut huge = base.clone();
        huge.requests.cpu_millicores = 64_000;
        vec![base, in_zone, tolerant, big, huge]
    }

    /// The snapshot the cache keeps decides and explains exactly as one built afresh from its
    /// nodes.
    fn assert_snapshot_in_step(c: &ClusterCache) {
        use crate::policy::{schedule, Filters, PolicyKind, ScoreConfig};
        let rebuilt = Snapshot::new(c.nodes());
        assert_eq!(c.snapshot().len(), c.nodes().len());
        for (i, n) in c.nodes().iter().enumerate() {
            assert_eq!(c.snapshot().name(i), n.name);
        }
        let filters = Filters::standard(EnergyLevel::LowPowered);
        let weighted = ScoreConfig {
            kind: PolicyKind::Weighted {
                energy: 1.0,
                power: 1.0,
            },
            ..ScoreConfig::default()
        };
        for score in [ScoreConfig::default(), weighted] {
            for pod in probes() {
                assert_eq!(
                    schedule(&pod, c.snapshot(), &filters, &score),
                    schedule(&pod, &rebuilt, &filters, &score),
                    "{pod:?}"
                );
            }
        }
    }

    #[test]
    fn the_snapshot_follows_nodes_pods_reports_and_deletions() {
        let mut c = ClusterCache::new(settings());
        let t0 = Instant::now();
        for (name, zone) in [("n1", "a"), ("n2", "b"), ("n3", "a"), ("n4", "a")] {
            c.apply_node(&node(name, "4", json!({"zone": zone})));
        }
        c.refresh_power(t0);
        assert_snapshot_in_step(&c);

        let cordoned_and_tainted: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a", "energy-status": "powerless"}},
            "spec": {
                "unschedulable": true,
                "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
            },
            "status": {
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "False"}]
            }
        }))
        .unwrap();
        c.apply_node(&cordoned_and_tainted);
        c.refresh_power(t0);
        assert_snapshot_in_step(&c);

        c.apply_pod(&pod("a", Some("3"), Some("n3"), "x"));
        c.ingest_report(
            &report("n4", 1, 0.9, Some(pb::EnergyLevel::WellPowered)),
            t0,
        )
        .unwrap();
        c.ingest_report(&report("n2", 1, 0.1, None), t0).unwrap();
        c.refresh_power(t0 + Duration::from_secs(1));
        assert_snapshot_in_step(&c);

        c.apply_pod(&pod("w", Some("1"), None, "wattwise"));
        let req = c.pending("ns/w").unwrap();
        c.assume("ns/w", &req, "n2", t0 + Duration::from_secs(1));
        c.refresh_power(t0 + Duration::from_secs(2));
        assert_snapshot_in_step(&c);

        // n1 leaves: n4 takes its place.
        c.delete_node("n1");
        c.refresh_power(t0 + Duration::from_secs(2));
        assert_snapshot_in_step(&c);

        // Reports go stale.
        c.refresh_power(t0 + Duration::from_secs(60));
        assert_snapshot_in_step(&c);

        // A label that changes with every update leaves garbage until the snapshot is rebuilt.
        for i in 0..3000 {
            c.apply_node(&node(
                "n3",
                "4",
                json!({"zone": "a", "build": i.to_string()}),
            ));
        }
        assert_snapshot_in_step(&c);
        assert!(!c.snapshot().wasteful());
    }
}
