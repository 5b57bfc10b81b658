//! The scheduler's view of the cluster, in three parts kept apart the way kube-rs keeps watcher,
//! reflector store and controller apart:
//!
//! - [`ApiStore`]: what the API server says (nodes, pods and what they use), keyed by pod UID;
//! - [`Overlay`]: what this scheduler has taken on top of that (pods being bound, pods started
//!   too recently to be measured), keyed by pod UID;
//! - [`PowerView`]: every node's latest agent report, with its age.
//!
//! [`ClusterCache`] joins them into the [`Snapshot`] the policy scans, updating only the rows an
//! event changes. Time enters through events alone (a report, a decision's `advance`), so a
//! decision costs no pass over every node. Pending pods live in the queue, not here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use wattwise_core::{PowerCurve, ValidatedReport};

use super::convert;
use super::overlay::{Overlay, Replacement, Reservation, ReservationState};
use super::power::PowerView;
pub use super::power::ReportRejection;
use super::published::{PublishedEnergy, ReportedEnergy};
pub use super::store::PodUid;
use super::store::{pod_uid, ApiStore};
use crate::policy::{utilisation, HostPort, NodePower, NodeState, PodRequest, Resources, Snapshot};

/// What the cache needs from the configuration.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub scheduler_name: String,
    pub energy_label: String,
    pub default_cpu_millicores: u64,
    /// A report counts for this long after its agent observed it.
    pub stale_after: Duration,
    /// A pod placed on a node counts on top of the node's measured utilisation until a report
    /// observed this long after it was placed: time for it to start and show in measurements.
    pub start_window: Duration,
    /// Curve for nodes without a fresh report.
    pub default_curve: PowerCurve,
}

impl CacheSettings {
    /// After this, no fresh report can have been observed within `start_window` of a pod's
    /// placement: its reservation can count no more.
    fn reservation_horizon(&self) -> Duration {
        self.start_window.saturating_add(self.stale_after)
    }
}

/// What a pod watch event means for the scheduling queue.
#[derive(Debug, Clone, PartialEq)]
pub enum PodChange {
    /// One of ours is waiting for a node.
    Pending(Arc<PodRequest>),
    /// The pod is not (or no longer) ours to schedule: bound, finished, deleted or another
    /// scheduler's.
    NotPending(PodUid),
    /// Nothing the queue needs to know (our bind of the pod is still on its way).
    Unchanged,
}

/// What an accepted report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// The node's energy level changed: the only thing from reports the filters read, so the
    /// only way a report can make a waiting pod fit.
    pub energy_changed: bool,
}

/// Figures about the power side, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerSummary {
    pub nodes: usize,
    pub stale_nodes: usize,
}

/// The snapshot's rows by node name.
#[derive(Default)]
struct NodeTable {
    snapshot: Snapshot,
    index: HashMap<String, usize>,
}

impl NodeTable {
    fn upsert(&mut self, node: &NodeState) {
        match self.index.get(&node.name) {
            Some(&i) => self.snapshot.set(i, node),
            None => {
                self.index.insert(node.name.clone(), self.snapshot.len());
                self.snapshot.push(node);
            }
        }
    }

    fn remove(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        self.snapshot.swap_remove(i);
        if i < self.snapshot.len() {
            self.index.insert(self.snapshot.name(i).to_string(), i);
        }
    }
}

pub struct ClusterCache {
    settings: CacheSettings,
    store: ApiStore,
    overlay: Overlay,
    power: PowerView,
    table: NodeTable,
    /// Pending pods of ours that a controller made: what a planned reservation waits for.
    replacements: HashMap<PodUid, Replacement>,
    /// Planned reservations that expired unused since the last [`ClusterCache::take_expired_plans`].
    expired_plans: usize,
}

impl ClusterCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            settings,
            store: ApiStore::default(),
            overlay: Overlay::default(),
            power: PowerView::default(),
            table: NodeTable::default(),
            replacements: HashMap::new(),
            expired_plans: 0,
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The nodes as [`crate::policy::schedule`] reads them; a decision's index names a row.
    pub fn snapshot(&self) -> &Snapshot {
        &self.table.snapshot
    }

    pub fn node_count(&self) -> usize {
        self.table.snapshot.len()
    }

    pub fn has_node(&self, name: &str) -> bool {
        self.table.index.contains_key(name)
    }

    /// Node `name`'s row in the snapshot.
    pub fn row(&self, name: &str) -> Option<usize> {
        self.table.index.get(name).copied()
    }

    /// Node `name` as the policy sees it (built on demand: the snapshot is what decisions read).
    pub fn node(&self, name: &str) -> Option<NodeState> {
        let stored = self.store.node(name)?;
        let (requested, used_host_ports) = self.usage(name);
        let b = &stored.basics;
        Some(NodeState {
            name: b.name.clone(),
            labels: b.labels.clone(),
            unschedulable: b.unschedulable,
            ready: b.ready,
            taints: b.taints.clone(),
            allocatable: b.allocatable.clone(),
            requested,
            used_host_ports,
            power: self.power_of(name)?,
        })
    }

    // ---- nodes ----

    pub fn apply_node(&mut self, node: &Node) {
        let Some(name) = self.store.apply_node(node, &self.settings.energy_label) else {
            return;
        };
        if let Some(state) = self.node(&name) {
            self.table.upsert(&state);
        }
        self.compact_if_wasteful();
    }

    pub fn delete_node(&mut self, name: &str) {
        self.store.delete_node(name);
        self.forget_node(name);
    }

    fn forget_node(&mut self, name: &str) {
        self.power.remove(name);
        self.overlay.drop_node(name);
        self.table.remove(name);
        self.compact_if_wasteful();
    }

    /// Rebuilds the snapshot, row for row, once old strings could outnumber live ones.
    fn compact_if_wasteful(&mut self) {
        if !self.table.snapshot.wasteful() {
            return;
        }
        self.table.snapshot = Snapshot::new(&self.nodes());
    }

    /// A node watcher starts its initial list: nodes not listed again are dropped at the end.
    pub fn begin_node_relist(&mut self) {
        self.store.begin_node_relist();
    }

    pub fn end_node_relist(&mut self) {
        for name in self.store.end_node_relist() {
            self.forget_node(&name);
        }
    }

    // ---- pods ----

    /// Takes a pod from a watch event, now, and says what it means for the queue.
    pub fn apply_pod(&mut self, pod: &Pod) -> PodChange {
        self.apply_pod_at(pod, Instant::now())
    }

    /// Takes a pod from a watch event seen at `now`.
    pub fn apply_pod_at(&mut self, pod: &Pod, now: Instant) -> PodChange {
        let seen = self.store.apply_pod(
            pod,
            &self.settings.scheduler_name,
            self.settings.default_cpu_millicores,
        );
        let mut touched = seen.touched;
        let horizon = self.settings.reservation_horizon();
        let confirmed = self
            .overlay
            .confirm(&seen.uid, seen.node.as_deref(), horizon);
        touched.extend(confirmed);
        // Bound by someone else (kube-scheduler in extender mode, another replica): it starts
        // like a pod we bound, so its CPU counts on top of measurements until they contain it.
        if let (Some(cpu), Some(node)) = (seen.newly_bound, seen.node.as_deref()) {
            if self.overlay.get(&seen.uid).is_none() {
                let started = Reservation::started_elsewhere(node, cpu, now);
                self.overlay.starting(&seen.uid, started, horizon);
                touched.push(node.to_string());
            }
        }
        for node in touched {
            self.refresh(&node);
        }
        let binding = self
            .overlay
            .get(&seen.uid)
            .is_some_and(|r| r.state == ReservationState::Binding);
        match seen
            .pending
            .as_ref()
            .and_then(|_| convert::replacement(pod))
        {
            Some(r) => self.replacements.insert(seen.uid.clone(), r),
            None => self.replacements.remove(&seen.uid),
        };
        match seen.pending {
            // Our bind has not shown up in the watch yet: the pod is not waiting.
            Some(_) if binding => PodChange::Unchanged,
            Some(request) => PodChange::Pending(Arc::new(request)),
            None => PodChange::NotPending(seen.uid),
        }
    }

    /// The pod is gone; returns its UID.
    pub fn delete_pod(&mut self, pod: &Pod) -> PodUid {
        let uid = pod_uid(pod);
        self.remove_pod(&uid);
        uid
    }

    fn remove_pod(&mut self, uid: &str) {
        self.replacements.remove(uid);
        let mut touched = self.store.remove_pod(uid);
        touched.extend(self.overlay.remove(uid).map(|r| r.node));
        for node in touched {
            self.refresh(&node);
        }
    }

    pub fn begin_pod_relist(&mut self) {
        self.store.begin_pod_relist();
    }

    /// Ends a pod relist; returns the pods that disappeared (for the queue).
    pub fn end_pod_relist(&mut self) -> Vec<PodUid> {
        let (gone, touched) = self.store.end_pod_relist();
        for uid in &gone {
            self.remove_pod(uid);
        }
        for node in touched {
            self.refresh(&node);
        }
        gone
    }

    /// Counts a pod we are binding on `node` (placed at `now`) before the watch confirms it.
    pub fn assume(&mut self, pod: &PodRequest, node: &str, now: Instant) {
        let old = self
            .overlay
            .reserve(&pod.uid, Reservation::binding(pod, node, now));
        if let Some(old) = old.filter(|old| old.node != node) {
            self.refresh(&old.node);
        }
        self.refresh(node);
    }

    /// Undoes [`ClusterCache::assume`] after a failed bind. Only a bind still on its way is
    /// undone: once the watch has shown the pod bound, the API knows better.
    pub fn forget(&mut self, uid: &str) {
        let binding = self
            .overlay
            .get(uid)
            .is_some_and(|r| r.state == ReservationState::Binding);
        if binding {
            if let Some(r) = self.overlay.remove(uid) {
                self.refresh(&r.node);
            }
        }
    }

    // ---- the offloader's planned reservations ----

    /// Holds `node`'s capacity for the replacement of `evicted` (a pod the offloader is about to
    /// evict) until `until`: every decision counts it as a bind on its way.
    pub fn plan_replacement(
        &mut self,
        evicted: &PodRequest,
        replacement: Replacement,
        node: &str,
        now: Instant,
        until: Instant,
    ) {
        let reservation = Reservation::binding(evicted, node, now);
        self.overlay
            .plan(&evicted.uid, replacement, reservation, until);
        self.refresh(node);
    }

    /// Drops the planned reservation for `evicted`'s replacement (its eviction did not happen).
    pub fn release_replacement(&mut self, evicted: &str) -> bool {
        let Some(r) = self.overlay.release_planned(evicted) else {
            return false;
        };
        self.refresh(&r.node);
        true
    }

    /// The node planned for pending pod `uid` if it replaces an evicted pod, the reservation
    /// taken: from here on the pod is decided like any other, its own bind reserving again.
    pub fn take_planned(&mut self, uid: &str) -> Option<String> {
        let replacement = self.replacements.get(uid)?;
        let r = self.overlay.take_planned(replacement)?;
        self.refresh(&r.node);
        Some(r.node)
    }

    /// How many planned reservations expired unused since the last call.
    pub fn take_expired_plans(&mut self) -> usize {
        std::mem::take(&mut self.expired_plans)
    }

    /// Every node as the policy sees it, planned reservations included (the offloader's view).
    pub fn nodes(&self) -> Vec<NodeState> {
        (0..self.table.snapshot.len())
            .filter_map(|i| self.node(self.table.snapshot.name(i)))
            .collect()
    }

    // ---- reports and time ----

    /// Takes a validated report received at `now`.
    pub fn ingest_report(
        &mut self,
        report: &ValidatedReport,
        now: Instant,
    ) -> Result<Ingested, ReportRejection> {
        let name = report.node_name();
        let Some(&row) = self.table.index.get(name) else {
            return Err(ReportRejection::UnknownNode(name.to_string()));
        };
        let before = self.table.snapshot.power(row).energy;
        let reading = self.power.ingest(report, now, self.settings.stale_after)?;
        let observed_at = reading.observed_at;
        self.overlay
            .measured(name, observed_at, self.settings.start_window);
        self.refresh_power(name);
        Ok(Ingested {
            energy_changed: self.table.snapshot.power(row).energy != before,
        })
    }

    /// Brings the cache to `now`: nodes whose report went stale since the last call are priced
    /// on the default curve, and reservations that can no longer count end. Touches only those;
    /// called before each decision.
    pub fn advance(&mut self, now: Instant) -> PowerSummary {
        for node in self.power.expire(now) {
            self.refresh_power(&node);
        }
        let horizon = self.settings.reservation_horizon();
        let expired = self.overlay.expire(now, horizon);
        self.expired_plans += expired.len();
        for node in expired {
            self.refresh(&node);
        }
        let nodes = self.table.snapshot.len();
        PowerSummary {
            nodes,
            stale_nodes: nodes - self.table.snapshot.fresh().len(),
        }
    }

    /// Calls `visit` with each node's published energy metadata and what its agent reports
    /// now. A node that never reported counts as reporting no level once `expect_reports`
    /// (its agent had time to report), as not known yet before.
    pub fn energy_publication(
        &self,
        expect_reports: bool,
        mut visit: impl FnMut(&str, &PublishedEnergy, ReportedEnergy),
    ) {
        for i in 0..self.table.snapshot.len() {
            let name = self.table.snapshot.name(i);
            let Some(stored) = self.store.node(name) else {
                continue;
            };
            let reported = match self.power.reading(name) {
                Some(r) if !r.stale => match (r.energy, r.energy_percent) {
                    (Some(level), Some(percent)) => ReportedEnergy::Level { level, percent },
                    _ => ReportedEnergy::None,
                },
                Some(_) => ReportedEnergy::None,
                None if expect_reports => ReportedEnergy::None,
                None => ReportedEnergy::NotYet,
            };
            visit(name, &stored.published, reported);
        }
    }

    /// Node `name`'s charge as its fresh report says, in percent.
    pub fn energy_percent(&self, name: &str) -> Option<f64> {
        self.power.fresh(name)?.energy_percent
    }

    /// Nodes whose agent has reported at least once.
    pub fn reporting_nodes(&self) -> usize {
        self.power.reporting()
    }

    // ---- deriving rows ----

    /// What node `name`'s pods use: those the API shows there and those being bound there.
    fn usage(&self, name: &str) -> (Resources, Vec<HostPort>) {
        let (mut requested, mut host_ports) = match self.store.usage(name) {
            Some(u) => (u.requested.clone(), u.host_ports.clone()),
            None => Default::default(),
        };
        self.overlay
            .add_binding(name, &mut requested, &mut host_ports);
        (requested, host_ports)
    }

    /// Node `name`'s power: its fresh report plus the CPU of pods placed too recently to be in
    /// it, or without a fresh report the default curve at its requested CPU.
    fn power_of(&self, name: &str) -> Option<NodePower> {
        let stored = self.store.node(name)?;
        Some(match self.power.fresh(name) {
            Some(r) => {
                let unmeasured =
                    self.overlay
                        .unmeasured_cpu(name, r.observed_at, self.settings.start_window);
                NodePower {
                    curve: r.curve.clone(),
                    utilisation: utilisation(r.utilisation, unmeasured, r.capacity_millicores),
                    capacity_millicores: r.capacity_millicores,
                    fresh: true,
                    energy: r.energy.or(stored.label_energy),
                }
            }
            None => {
                let allocatable = stored.basics.allocatable.cpu_millicores;
                let (requested, _) = self.usage(name);
                NodePower {
                    curve: self.settings.default_curve.clone(),
                    utilisation: utilisation(0.0, requested.cpu_millicores, allocatable),
                    capacity_millicores: allocatable,
                    fresh: false,
                    energy: stored.label_energy,
                }
            }
        })
    }

    /// Rewrites node `name`'s usage and power in the snapshot.
    fn refresh(&mut self, name: &str) {
        let Some(&row) = self.table.index.get(name) else {
            return; // pods of a node not (yet) seen
        };
        let Some(stored) = self.store.node(name) else {
            return;
        };
        let (requested, host_ports) = self.usage(name);
        self.table
            .snapshot
            .set_usage(row, &stored.basics.allocatable, &requested, &host_ports);
        self.refresh_power(name);
    }

    fn refresh_power(&mut self, name: &str) {
        let Some(&row) = self.table.index.get(name) else {
            return;
        };
        if let Some(power) = self.power_of(name) {
            self.table.snapshot.set_power(row, &power);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::policy::fixtures::{report, report_observed};
    use serde_json::json;
    use wattwise_core::EnergyLevel;
    use wattwise_proto::v1 as pb;

    /// Settings for unit tests of the cache and what reads it.
    pub(crate) fn settings() -> CacheSettings {
        CacheSettings {
            scheduler_name: "wattwise".into(),
            energy_label: "energy-status".into(),
            default_cpu_millicores: 100,
            stale_after: Duration::from_secs(30),
            start_window: Duration::from_secs(5),
            default_curve: PowerCurve::linear(100.0, 300.0).unwrap(),
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

    /// Pod `name` with UID `uid-{name}`.
    fn pod(name: &str, cpu: Option<&str>, node: Option<&str>, scheduler: &str) -> Pod {
        pod_with_uid(name, &format!("uid-{name}"), cpu, node, scheduler)
    }

    fn pod_with_uid(
        name: &str,
        uid: &str,
        cpu: Option<&str>,
        node: Option<&str>,
        scheduler: &str,
    ) -> Pod {
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
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "spec": spec,
            "status": {"phase": if node.is_some() { "Running" } else { "Pending" }}
        }))
        .unwrap()
    }

    /// The request of a pod the cache says is waiting.
    fn pending(change: PodChange) -> Arc<PodRequest> {
        match change {
            PodChange::Pending(request) => request,
            other => panic!("not pending: {other:?}"),
        }
    }

    fn power(c: &ClusterCache, name: &str) -> NodePower {
        c.node(name).unwrap().power
    }

    #[test]
    fn bound_pods_count_on_their_node_and_leave_when_finished() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        assert_eq!(
            c.apply_pod(&pod("a", Some("500m"), Some("n1"), "default-scheduler")),
            PodChange::NotPending("uid-a".into())
        );
        c.apply_pod(&pod("b", Some("250m"), Some("n1"), "wattwise"));
        assert_eq!(c.node("n1").unwrap().requested.cpu_millicores, 750);
        assert_eq!(c.node("n1").unwrap().requested.pods, 2);
        let mut done = pod("a", Some("500m"), Some("n1"), "default-scheduler");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        c.apply_pod(&done);
        assert_eq!(c.node("n1").unwrap().requested.cpu_millicores, 250);
        assert_eq!(
            c.delete_pod(&pod("b", None, None, "wattwise")),
            "uid-b".to_string()
        );
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
        let req = pending(c.apply_pod(&p));
        assert_eq!(req.uid, "uid-w");
        assert_eq!(
            req.pricing_cpu_millicores, 100,
            "default CPU for a pod without request"
        );
        c.assume(&req, "n1", Instant::now());
        assert_eq!(c.node("n1").unwrap().requested.pods, 1);
        // A status update of the still-unbound pod must not drop the assumption.
        assert_eq!(c.apply_pod(&p), PodChange::Unchanged);
        assert_eq!(c.node("n1").unwrap().requested.pods, 1);
        // The watch confirms the bind: still counted once.
        c.apply_pod(&pod("w", None, Some("n1"), "wattwise"));
        assert_eq!(c.node("n1").unwrap().requested.pods, 1);
        assert_snapshot_in_step(&c);
    }

    #[test]
    fn a_failed_bind_is_forgotten() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        let p = pod("w", Some("1"), None, "wattwise");
        let req = pending(c.apply_pod(&p));
        c.assume(&req, "n1", Instant::now());
        c.forget(&req.uid);
        assert_eq!(c.node("n1").unwrap().requested, Resources::default());
        // The next event about it says it waits again.
        assert_eq!(c.apply_pod(&p), PodChange::Pending(req));
    }

    #[test]
    fn a_namesake_recreated_while_a_bind_is_on_its_way_is_another_pod() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        let old = pending(c.apply_pod(&pod_with_uid("web-0", "u1", Some("1"), None, "wattwise")));
        c.assume(&old, "n1", Instant::now());
        // Deleted and recreated under the same name before the bind's answer.
        assert_eq!(
            c.delete_pod(&pod_with_uid("web-0", "u1", None, None, "wattwise")),
            "u1".to_string()
        );
        let new = pending(c.apply_pod(&pod_with_uid("web-0", "u2", Some("1"), None, "wattwise")));
        assert_eq!(new.uid, "u2");
        c.assume(&new, "n1", Instant::now());
        // The old bind's refusal concerns u1 only.
        c.forget("u1");
        assert_eq!(c.node("n1").unwrap().requested.cpu_millicores, 1000);
        c.forget("u2");
        assert_eq!(c.node("n1").unwrap().requested.cpu_millicores, 0);
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

    /// Each node's (published, reported) pair as the adapter sees it.
    fn publication(
        c: &ClusterCache,
        expect_reports: bool,
    ) -> HashMap<String, (PublishedEnergy, ReportedEnergy)> {
        let mut out = HashMap::new();
        c.energy_publication(expect_reports, |name, published, reported| {
            out.insert(name.to_string(), (published.clone(), reported));
        });
        out
    }

    #[test]
    fn a_label_wattwise_wrote_is_no_fallback_level_and_reports_feed_the_adapter() {
        use crate::cluster::published::{PERCENT_ANNOTATION, SOURCE_ANNOTATION};
        let mut c = ClusterCache::new(settings());
        let mut ours = node("ours", "4", json!({"energy-status": "low-powered"}));
        ours.metadata.annotations = Some(
            [(SOURCE_ANNOTATION, "wattwise"), (PERCENT_ANNOTATION, "22")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        );
        c.apply_node(&ours);
        c.apply_node(&node(
            "operator",
            "4",
            json!({"energy-status": "vulnerable"}),
        ));
        c.apply_node(&node("bare", "4", json!({})));
        let t0 = Instant::now();
        c.advance(t0);
        // Without reports, only the operator's label is a level.
        assert_eq!(power(&c, "ours").energy, None);
        assert_eq!(power(&c, "operator").energy, Some(EnergyLevel::Vulnerable));

        let p = publication(&c, false);
        assert_eq!(p["ours"].1, ReportedEnergy::NotYet);
        assert!(p["ours"].0.managed);
        assert_eq!(p["operator"].0.operator_label(), Some("vulnerable"));
        let p = publication(&c, true);
        assert_eq!(p["ours"].1, ReportedEnergy::None, "agents had their time");

        c.ingest_report(
            &report("ours", 1, 0.1, Some(pb::EnergyLevel::LowPowered)),
            t0,
        )
        .unwrap();
        c.ingest_report(&report("bare", 1, 0.1, None), t0).unwrap();
        let p = publication(&c, false);
        assert!(
            matches!(
                p["ours"].1,
                ReportedEnergy::Level {
                    level: EnergyLevel::LowPowered,
                    ..
                }
            ),
            "{:?}",
            p["ours"].1
        );
        assert_eq!(
            p["bare"].1,
            ReportedEnergy::None,
            "a report without a level"
        );
        assert_eq!(power(&c, "ours").energy, Some(EnergyLevel::LowPowered));

        // Stale: the level goes, and the label wattwise wrote does not keep it alive.
        c.advance(t0 + Duration::from_secs(31));
        assert_eq!(power(&c, "ours").energy, None);
        assert_eq!(publication(&c, false)["ours"].1, ReportedEnergy::None);
    }

    #[test]
    fn pods_another_scheduler_binds_count_on_top_of_measurements_while_they_start() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        let t0 = Instant::now();
        c.ingest_report(&report("n1", 1, 0.25, None), t0).unwrap();
        // Seen pending, then bound by kube-scheduler (extender mode): its requests count at
        // once, and its CPU on top of the 25 % measured until a report can contain it.
        let stock = |node| pod("s", Some("1"), node, "default-scheduler");
        assert_eq!(
            c.apply_pod_at(&stock(None), t0),
            PodChange::NotPending("uid-s".into())
        );
        assert!((power(&c, "n1").utilisation - 0.25).abs() < 1e-12);
        let bound_at = t0 + Duration::from_secs(1);
        c.apply_pod_at(&stock(Some("n1")), bound_at);
        assert_eq!(c.node("n1").unwrap().requested.cpu_millicores, 1000);
        assert!((power(&c, "n1").utilisation - 0.5).abs() < 1e-12);
        // Status updates of the bound pod change nothing.
        c.apply_pod_at(&stock(Some("n1")), bound_at + Duration::from_secs(1));
        assert!((power(&c, "n1").utilisation - 0.5).abs() < 1e-12);
        assert_eq!(c.overlay.sizes().0, 1);
        let later = bound_at + settings().start_window + Duration::from_millis(100);
        c.ingest_report(&report("n1", 2, 0.5, None), later).unwrap();
        assert!((power(&c, "n1").utilisation - 0.5).abs() < 1e-12);
        assert_eq!(c.overlay.sizes().0, 0, "measured: nothing left on top");

        // A pod first seen bound (a relist, a restart) has been running: only its requests count.
        c.apply_pod_at(
            &pod("old", Some("1"), Some("n1"), "default-scheduler"),
            later,
        );
        assert_eq!(c.node("n1").unwrap().requested.cpu_millicores, 2000);
        assert!((power(&c, "n1").utilisation - 0.5).abs() < 1e-12);
        assert_eq!(c.overlay.sizes().0, 0);
        // Deleted, the count ends at once; without a report containing it, at the horizon.
        let quick = pod("q", Some("1"), None, "default-scheduler");
        c.apply_pod_at(&quick, later);
        c.apply_pod_at(&pod("q", Some("1"), Some("n1"), "default-scheduler"), later);
        assert_eq!(c.overlay.sizes().0, 1);
        c.delete_pod(&quick);
        assert_eq!(c.overlay.sizes().0, 0);
        c.apply_pod_at(&pod("h", Some("1"), None, "default-scheduler"), later);
        c.apply_pod_at(&pod("h", Some("1"), Some("n1"), "default-scheduler"), later);
        c.advance(later + settings().reservation_horizon() + Duration::from_secs(1));
        assert_eq!(c.overlay.sizes().0, 0);
        assert_snapshot_in_step(&c);
    }

    #[test]
    fn fresh_reports_price_with_their_curve_and_count_pods_placed_within_the_start_window() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({"energy-status": "vulnerable"})));
        let t0 = Instant::now();
        c.advance(t0);
        let n = power(&c, "n1");
        assert!(!n.fresh);
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
        let req = pending(c.apply_pod(&pod("w", Some("1"), None, "wattwise")));
        let placed = t0 + Duration::from_millis(10);
        c.assume(&req, "n1", placed);
        let summary = c.advance(t0 + Duration::from_secs(1));
        assert_eq!(summary.stale_nodes, 0);
        let n = power(&c, "n1");
        assert!(n.fresh);
        assert_eq!(
            n.energy,
            Some(EnergyLevel::WellPowered),
            "report beats label"
        );
        assert!((n.utilisation - 0.5).abs() < 1e-12);
        // curve is 50 + 100u W: one core of four from 50 % adds 25 W.
        assert!((n.price(1000).watts.0 - 25.0).abs() < 1e-9);

        // The bind shows in the watch, and a newer report, observed after the bind but before
        // the pod could start, still says 25 %: the pod stays on top of it.
        c.apply_pod(&pod("w", Some("1"), Some("n1"), "wattwise"));
        c.ingest_report(&report("n1", 2, 0.25, None), t0 + Duration::from_secs(2))
            .unwrap();
        assert!((power(&c, "n1").utilisation - 0.5).abs() < 1e-12);

        // A report observed a start window after the placement contains the pod.
        let later = placed + settings().start_window + Duration::from_millis(100);
        c.ingest_report(&report("n1", 3, 0.5, None), later).unwrap();
        assert!((power(&c, "n1").utilisation - 0.5).abs() < 1e-12);
        assert_eq!(c.overlay.sizes().0, 0, "nothing left to count on top");

        // Past stale_after: default curve at requested/allocatable, label energy.
        let summary = c.advance(later + Duration::from_secs(31));
        assert_eq!(summary.stale_nodes, 1);
        let n = power(&c, "n1");
        assert!(!n.fresh);
        assert_eq!(n.curve, c.settings().default_curve);
        assert!((n.utilisation - 0.25).abs() < 1e-12);
        assert_eq!(n.energy, Some(EnergyLevel::Vulnerable));
        assert_snapshot_in_step(&c);
    }

    #[test]
    fn freshness_counts_from_observation_not_arrival() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "4", json!({})));
        let now = Instant::now();
        let long_ago = SystemTime::now() - Duration::from_secs(60);
        let buffered = report_observed("n1", 1, 0.3, Some(pb::EnergyLevel::Powerless), long_ago);
        c.ingest_report(&buffered, now).unwrap();
        let n = power(&c, "n1");
        assert!(
            !n.fresh,
            "a report observed past stale_after is stale on arrival"
        );
        assert_eq!(n.energy, None, "and its level does not count");
        assert_eq!(c.advance(now).stale_nodes, 1);

        // Observed 20 s ago: fresh, for the 10 s it has left.
        let recent = SystemTime::now() - Duration::from_secs(20);
        c.ingest_report(&report_observed("n1", 2, 0.3, None, recent), now)
            .unwrap();
        assert!(power(&c, "n1").fresh);
        assert_eq!(c.advance(now + Duration::from_secs(9)).stale_nodes, 0);
        assert_eq!(c.advance(now + Duration::from_secs(11)).stale_nodes, 1);

        // An agent whose clock runs ahead is taken as reporting on arrival.
        let ahead = SystemTime::now() + Duration::from_secs(3600);
        let t = now + Duration::from_secs(12);
        c.ingest_report(&report_observed("n1", 3, 0.3, None, ahead), t)
            .unwrap();
        assert_eq!(c.advance(t + Duration::from_secs(29)).stale_nodes, 0);
        assert_eq!(c.advance(t + Duration::from_secs(31)).stale_nodes, 1);
    }

    #[test]
    fn an_expired_energy_level_stops_counting() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("battery", "4", json!({})));
        c.apply_node(&node(
            "labelled",
            "4",
            json!({"energy-status": "vulnerable"}),
        ));
        let t0 = Instant::now();
        let well = Some(pb::EnergyLevel::WellPowered);
        c.ingest_report(&report("battery", 1, 0.1, well), t0)
            .unwrap();
        c.ingest_report(&report("labelled", 1, 0.1, well), t0)
            .unwrap();
        assert_eq!(power(&c, "battery").energy, Some(EnergyLevel::WellPowered));
        assert_eq!(power(&c, "labelled").energy, Some(EnergyLevel::WellPowered));
        // Reports stop: the level goes with them, to the label where there is one.
        c.advance(t0 + Duration::from_secs(31));
        assert_eq!(power(&c, "battery").energy, None);
        assert_eq!(power(&c, "labelled").energy, Some(EnergyLevel::Vulnerable));
        assert_snapshot_in_step(&c);
    }

    #[test]
    fn only_reports_that_change_a_nodes_energy_level_can_help_waiting_pods() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("grid", "4", json!({})));
        c.apply_node(&node(
            "labelled",
            "4",
            json!({"energy-status": "powerless"}),
        ));
        c.apply_node(&node("battery", "4", json!({})));
        let now = Instant::now();
        let changed = |c: &mut ClusterCache, r| c.ingest_report(&r, now).unwrap().energy_changed;
        // Grid power, no level before or after; the label already counted without a report.
        assert!(!changed(&mut c, report("grid", 1, 0.2, None)));
        assert!(!changed(&mut c, report("labelled", 1, 0.2, None)));
        // A level that differs from what decisions saw.
        let low = Some(pb::EnergyLevel::LowPowered);
        assert!(changed(&mut c, report("labelled", 2, 0.2, low)));
        assert!(changed(&mut c, report("battery", 1, 0.2, low)));
        // The same level again changes nothing …
        assert!(!changed(&mut c, report("battery", 2, 0.2, low)));
        // … but a new one does, and so does losing it (the node falls back to no level).
        let powerless = Some(pb::EnergyLevel::Powerless);
        assert!(changed(&mut c, report("battery", 3, 0.2, powerless)));
        assert!(changed(&mut c, report("battery", 4, 0.2, None)));
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
        assert_eq!(c.end_pod_relist(), vec!["uid-a".to_string()]);
        assert_eq!(c.node("n2").unwrap().requested, Resources::default());
        assert_snapshot_in_step(&c);
    }

    /// Everything the cache holds, summed over its parts.
    fn held(c: &ClusterCache) -> usize {
        let (nodes, pods, usage) = c.store.sizes();
        let (reservations, reserved_nodes, reservation_expiries) = c.overlay.sizes();
        let (readings, report_expiries) = c.power.sizes();
        nodes
            + pods
            + usage
            + reservations
            + reserved_nodes
            + reservation_expiries
            + readings
            + report_expiries
            + c.table.index.len()
            + c.table.snapshot.len()
            + c.replacements.len()
    }

    #[test]
    fn memory_stays_flat_over_churn_of_nodes_without_reports() {
        let mut c = ClusterCache::new(settings());
        // Nodes that stay and never report, and pods bound to them over and over.
        for i in 0..3 {
            c.apply_node(&node(&format!("quiet-{i}"), "64", json!({})));
        }
        let mut t = Instant::now();
        let mut most = 0;
        for i in 0..10_000 {
            t += Duration::from_secs(1);
            let name = format!("n{i}");
            let quiet = format!("quiet-{}", i % 3);
            c.apply_node(&node(&name, "4", json!({})));
            for (pod_name, target) in [(format!("p{i}"), &name), (format!("q{i}"), &quiet)] {
                let req = pending(c.apply_pod(&pod(&pod_name, Some("100m"), None, "wattwise")));
                c.advance(t);
                c.assume(&req, target, t);
                c.apply_pod(&pod(&pod_name, Some("100m"), Some(target), "wattwise"));
            }
            c.delete_pod(&pod(&format!("p{i}"), None, None, "wattwise"));
            c.delete_node(&name);
            // Pods on the quiet nodes finish a little later.
            if i >= 5 {
                c.delete_pod(&pod(&format!("q{}", i - 5), None, None, "wattwise"));
            }
            if i == 100 {
                most = held(&c);
            }
            assert!(held(&c) <= most.max(200), "cycle {i}: {}", held(&c));
        }
        // The start window (5 s) plus stale_after (30 s) of reservations on quiet nodes at most.
        assert!(c.overlay.sizes().0 <= 40, "{:?}", c.overlay.sizes());
        assert_eq!(c.node_count(), 3);
        assert_snapshot_in_step(&c);
    }

    #[test]
    fn memory_stays_flat_over_pods_deleted_mid_bind() {
        use crate::queue::{QueueSettings, SchedulingQueue};
        let queue = SchedulingQueue::new(QueueSettings {
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
            unschedulable_retry: Duration::from_millis(1),
        });
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("n1", "64", json!({})));
        let t = Instant::now();
        for i in 0..10_000 {
            let p = pod(&format!("p{i}"), Some("100m"), None, "wattwise");
            let req = pending(c.apply_pod(&p));
            queue.add(req.clone(), t);
            c.assume(&req, "n1", t);
            // Deleted while its bind is on its way; the bind then fails.
            let uid = c.delete_pod(&p);
            queue.remove(&uid);
            c.forget(&req.uid);
            queue.retry_later(&req.uid, t);
            assert!(!queue.contains(&req.uid), "a deleted pod came back");
        }
        assert_eq!(held(&c), 3, "one node, its row and index entry");
        let (entries, active, backoff) = queue.sizes();
        assert_eq!((entries, backoff), (0, 0));
        assert!(active <= 64, "{active} outdated queue items");
        assert_eq!(c.node("n1").unwrap().requested, Resources::default());
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

    /// The snapshot the cache keeps row by row decides and explains exactly as one built afresh
    /// from its parts.
    fn assert_snapshot_in_step(c: &ClusterCache) {
        use crate::policy::{schedule, Filters, PolicyKind, ScoreConfig};
        let nodes: Vec<NodeState> = (0..c.snapshot().len())
            .map(|i| c.node(c.snapshot().name(i)).unwrap())
            .collect();
        let rebuilt = Snapshot::new(&nodes);
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(c.table.index[&n.name], i);
            assert_eq!(c.snapshot().power(i), &n.power, "{}", n.name);
        }
        assert_eq!(c.table.index.len(), nodes.len());
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
        c.advance(t0);
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
        assert_snapshot_in_step(&c);

        c.apply_pod(&pod("a", Some("3"), Some("n3"), "x"));
        c.ingest_report(
            &report("n4", 1, 0.9, Some(pb::EnergyLevel::WellPowered)),
            t0,
        )
        .unwrap();
        c.ingest_report(&report("n2", 1, 0.1, None), t0).unwrap();
        c.advance(t0 + Duration::from_secs(1));
        assert_snapshot_in_step(&c);

        let req = pending(c.apply_pod(&pod("w", Some("1"), None, "wattwise")));
        c.assume(&req, "n2", t0 + Duration::from_secs(1));
        c.advance(t0 + Duration::from_secs(2));
        assert_snapshot_in_step(&c);

        // n1 leaves: n4 takes its place.
        c.delete_node("n1");
        assert_snapshot_in_step(&c);

        // Reports go stale.
        c.advance(t0 + Duration::from_secs(60));
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

    /// `pod` made by ReplicaSet `web-abc` from template `abc`.
    fn of_web(mut pod: Pod) -> Pod {
        pod.metadata.labels = Some([("pod-template-hash".to_string(), "abc".to_string())].into());
        pod.metadata.owner_references = Some(vec![serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs",
            "controller": true
        }))
        .unwrap()]);
        pod
    }

    #[test]
    fn a_planned_reservation_holds_capacity_for_the_replacement_alone_until_its_ttl() {
        let mut c = ClusterCache::new(settings());
        c.apply_node(&node("weak", "4", json!({})));
        c.apply_node(&node("target", "4", json!({})));
        let t0 = Instant::now();
        let evicted = of_web(pod("web-1", Some("1"), Some("weak"), "wattwise"));
        c.apply_pod(&evicted);
        let request = convert::pod_request(&evicted, 100).unwrap();
        let web = convert::replacement(&evicted).unwrap();
        let ttl = Duration::from_secs(120);
        c.plan_replacement(&request, web.clone(), "target", t0, t0 + ttl);
        let cpu = |c: &ClusterCache, n: &str| c.node(n).unwrap().requested.cpu_millicores;
        assert_eq!(cpu(&c, "target"), 1000, "held for every decision");
        // Events of the evicted pod itself (terminating, then gone) leave the plan alone.
        c.delete_pod(&evicted);
        assert_eq!(cpu(&c, "target"), 1000);
        assert_snapshot_in_step(&c);

        // Another pod of ours, or one of another template, finds nothing planned.
        pending(c.apply_pod(&pod("other", Some("1"), None, "wattwise")));
        assert_eq!(c.take_planned("uid-other"), None);
        let mut other_template = of_web(pod("web-old", Some("1"), None, "wattwise"));
        other_template.metadata.labels = Some([("pod-template-hash".into(), "old".into())].into());
        pending(c.apply_pod(&other_template));
        assert_eq!(c.take_planned("uid-web-old"), None);
        // The replacement takes it, once.
        pending(c.apply_pod(&of_web(pod("web-2", Some("1"), None, "wattwise"))));
        assert_eq!(c.take_planned("uid-web-2").as_deref(), Some("target"));
        assert_eq!(c.take_planned("uid-web-2"), None);
        assert_eq!(cpu(&c, "target"), 0);

        // Released (the eviction failed), and expired at its TTL: counted, capacity back.
        c.plan_replacement(&request, web.clone(), "target", t0, t0 + ttl);
        assert!(c.release_replacement(&request.uid));
        assert!(!c.release_replacement(&request.uid));
        c.plan_replacement(&request, web, "target", t0, t0 + ttl);
        c.advance(t0 + ttl - Duration::from_secs(1));
        assert_eq!((cpu(&c, "target"), c.take_expired_plans()), (1000, 0));
        c.advance(t0 + ttl);
        assert_eq!((cpu(&c, "target"), c.take_expired_plans()), (0, 1));
        assert_eq!(c.take_expired_plans(), 0);
        assert_eq!(c.take_planned("uid-web-2"), None);
        assert_snapshot_in_step(&c);
        c.delete_pod(&of_web(pod("web-2", None, None, "wattwise")));
        c.delete_pod(&other_template);
        c.delete_pod(&pod("other", None, None, "wattwise"));
        assert_eq!(c.replacements.len(), 0);
        assert_eq!(c.overlay.sizes().0, 0);
    }
}
