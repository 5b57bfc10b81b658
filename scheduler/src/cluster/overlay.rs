//! This scheduler's own assumptions on top of what the API says: capacity it has taken on a node
//! before the API shows it taken. Keyed by pod UID, one [`Reservation`] per pod:
//!
//! - while our bind is on its way the API shows the pod unbound, so its requests count here
//!   ([`ReservationState::Binding`]), and concurrent decisions never overfill a node;
//! - once the API shows it bound, its requests count in the store, but its CPU is not yet in the
//!   node's measured utilisation (image pull, init containers): it counts on top of a report
//!   observed less than the start-up window after it was placed
//!   ([`ReservationState::Starting`]), as Trimaran's TargetLoadPacking does, so a burst does not
//!   herd onto the node that looked cheapest before the burst. A pod another scheduler binds
//!   while we watch (kube-scheduler in extender mode, another replica) starts the same way and
//!   counts the same way ([`Reservation::started_elsewhere`]).
//!
//! Every reservation ends: a failed bind, the pod's deletion, another node in the API, or, once
//! starting, a report that can contain it or the time after which none can leave it out.
//!
//! The offloader adds a third kind ([`ReservationState::Planned`]): capacity held on a target
//! node for the replacement of a pod it evicts, keyed by the evicted pod's UID and found by the
//! replacement's [`Replacement`] (same owner, same template). It counts like a bind on its way
//! until the replacement takes it, the eviction fails, or its TTL passes. Its key is derived from
//! the evicted pod's UID ([`planned_key`]), so events of the evicted pod itself leave it alone.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use super::store::PodUid;
use crate::policy::offload::Owner;
use crate::policy::{HostPort, PodRequest, Resources};

/// What identifies an evicted pod's replacement: its controller and its template
/// (`pod-template-hash` of a ReplicaSet's pods, `controller-revision-hash` of a StatefulSet's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Replacement {
    pub owner: Owner,
    pub template: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    /// Our bind is on its way: the API does not show the pod on the node yet.
    Binding,
    /// The API shows the pod on the node; its CPU may not be in the node's measurements yet.
    Starting,
    /// Held for an evicted pod's replacement until `until` (the offloader's plan).
    Planned { until: Instant },
}

/// Capacity this scheduler holds on a node for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub node: String,
    pub requests: Resources,
    pub host_ports: Vec<HostPort>,
    /// CPU counted on top of the node's measured utilisation (the pod's pricing CPU).
    pub cpu_millicores: u64,
    /// When the pod was placed.
    pub since: Instant,
    pub state: ReservationState,
}

impl Reservation {
    /// `pod` being bound to `node` from `now`.
    pub fn binding(pod: &PodRequest, node: &str, now: Instant) -> Self {
        Self {
            node: node.to_string(),
            requests: pod.requests.clone(),
            host_ports: pod.host_ports.clone(),
            cpu_millicores: pod.pricing_cpu_millicores,
            since: now,
            state: ReservationState::Binding,
        }
    }

    /// A pod another scheduler (or replica) bound to `node`, seen at `now`: only its CPU counts,
    /// on top of measurements, while it starts (its requests are in the API's usage already).
    pub fn started_elsewhere(node: &str, cpu_millicores: u64, now: Instant) -> Self {
        Self {
            node: node.to_string(),
            requests: Resources::default(),
            host_ports: Vec::new(),
            cpu_millicores,
            since: now,
            state: ReservationState::Starting,
        }
    }

    /// Whether a measurement observed at `observed_at` may not contain the pod yet (a planned
    /// one's pod does not exist yet: no measurement contains it).
    fn unmeasured_at(&self, observed_at: Instant, window: Duration) -> bool {
        if matches!(self.state, ReservationState::Planned { .. }) {
            return true;
        }
        self.since
            .checked_add(window)
            .is_none_or(|measurable| observed_at < measurable)
    }
}

/// The key of the planned reservation for the replacement of pod `evicted`.
pub fn planned_key(evicted: &str) -> String {
    format!("offload/{evicted}")
}

#[derive(Debug, Default)]
pub struct Overlay {
    reservations: HashMap<PodUid, Reservation>,
    by_node: HashMap<String, Vec<PodUid>>,
    /// (when a starting or planned reservation can count no more, its key): entries of
    /// reservations that ended or changed are skipped when they come due.
    expiries: BinaryHeap<Reverse<(Instant, PodUid)>>,
    /// Planned reservations by the replacement they wait for, oldest first.
    planned: HashMap<Replacement, Vec<PodUid>>,
}

impl Overlay {
    pub fn get(&self, uid: &str) -> Option<&Reservation> {
        self.reservations.get(uid)
    }

    /// Reservations, nodes with any, and queued expiries (for tests of memory bounds).
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        (
            self.reservations.len(),
            self.by_node.len(),
            self.expiries.len(),
        )
    }

    /// Holds `reservation` for pod `uid`, replacing any it had; returns the replaced one.
    pub fn reserve(&mut self, uid: &str, reservation: Reservation) -> Option<Reservation> {
        let old = self.remove(uid);
        self.by_node
            .entry(reservation.node.clone())
            .or_default()
            .push(uid.to_string());
        self.reservations.insert(uid.to_string(), reservation);
        old
    }

    /// Counts a starting pod (`reservation` in [`ReservationState::Starting`]) until a measurement
    /// contains it, `horizon` after it was placed at the latest.
    pub fn starting(&mut self, uid: &str, reservation: Reservation, horizon: Duration) {
        debug_assert_eq!(reservation.state, ReservationState::Starting);
        if let Some(due) = reservation.since.checked_add(horizon) {
            self.expiries.push(Reverse((due, uid.to_string())));
        }
        self.reserve(uid, reservation);
    }

    /// Holds capacity on `reservation.node` for `replacement` until `until`, for the pod
    /// `evicted` (a UID) leaves.
    pub fn plan(
        &mut self,
        evicted: &str,
        replacement: Replacement,
        mut reservation: Reservation,
        until: Instant,
    ) {
        let key = planned_key(evicted);
        reservation.state = ReservationState::Planned { until };
        self.reserve(&key, reservation);
        self.planned
            .entry(replacement)
            .or_default()
            .push(key.clone());
        self.expiries.push(Reverse((until, key)));
    }

    /// Ends the planned reservation for the pod `evicted` (the eviction did not happen).
    pub fn release_planned(&mut self, evicted: &str) -> Option<Reservation> {
        self.remove(&planned_key(evicted))
    }

    /// Takes the oldest planned reservation waiting for `replacement`.
    pub fn take_planned(&mut self, replacement: &Replacement) -> Option<Reservation> {
        let uid = self.planned.get(replacement)?.first()?.clone();
        self.remove(&uid)
    }

    pub fn remove(&mut self, uid: &str) -> Option<Reservation> {
        let old = self.reservations.remove(uid)?;
        if matches!(old.state, ReservationState::Planned { .. }) {
            // Few are planned at a time (the offloader's per-pass limit): a scan is cheap.
            self.planned.retain(|_, uids| {
                uids.retain(|u| u != uid);
                !uids.is_empty()
            });
        }
        if let Some(uids) = self.by_node.get_mut(&old.node) {
            if let Some(pos) = uids.iter().position(|u| u == uid) {
                uids.swap_remove(pos);
            }
            if uids.is_empty() {
                self.by_node.remove(&old.node);
            }
        }
        Some(old)
    }

    /// The API shows pod `uid` on `node` (`None`: unbound, or finished). A binding reservation
    /// there becomes a starting one, to be dropped `horizon` after it was placed at the latest;
    /// one for another node was overtaken (another replica's bind) and ends, and so does a
    /// starting one whose pod finished. Returns the node of a reservation whose requests
    /// stopped counting here.
    pub fn confirm(&mut self, uid: &str, node: Option<&str>, horizon: Duration) -> Option<String> {
        let r = self.reservations.get_mut(uid)?;
        if r.state != ReservationState::Binding {
            if node != Some(r.node.as_str()) {
                self.remove(uid);
            }
            return None;
        }
        match node {
            // The bind has not shown up yet (a status update of the unbound pod).
            None => return None,
            Some(n) if n != r.node => return self.remove(uid).map(|r| r.node),
            Some(_) => {}
        }
        r.state = ReservationState::Starting;
        if let Some(due) = r.since.checked_add(horizon) {
            self.expiries.push(Reverse((due, uid.to_string())));
        }
        Some(r.node.clone())
    }

    /// Adds the requests and host ports of the pods being bound to `node`, and of the
    /// replacements planned there.
    pub fn add_binding(
        &self,
        node: &str,
        requested: &mut Resources,
        host_ports: &mut Vec<HostPort>,
    ) {
        for r in self.on(node) {
            if r.state != ReservationState::Starting {
                requested.add(&r.requests);
                host_ports.extend(r.host_ports.iter().cloned());
            }
        }
    }

    /// CPU of the pods placed on `node` that a measurement observed at `observed_at` may not
    /// contain yet: placed less than `window` before it.
    pub fn unmeasured_cpu(&self, node: &str, observed_at: Instant, window: Duration) -> u64 {
        self.on(node)
            .filter(|r| r.unmeasured_at(observed_at, window))
            .map(|r| r.cpu_millicores)
            .sum()
    }

    /// A measurement of `node` observed at `observed_at` arrived: starting pods it contains
    /// count no more (later measurements contain them too).
    pub fn measured(&mut self, node: &str, observed_at: Instant, window: Duration) {
        let done: Vec<PodUid> = (self.by_node.get(node).into_iter().flatten())
            .filter(|uid| {
                let r = &self.reservations[*uid];
                r.state == ReservationState::Starting && !r.unmeasured_at(observed_at, window)
            })
            .cloned()
            .collect();
        for uid in done {
            self.remove(&uid);
        }
    }

    /// Ends the starting reservations whose horizon passed by `now`, and the planned ones whose
    /// TTL did; returns the nodes of the planned ones (their replacements never came).
    pub fn expire(&mut self, now: Instant, horizon: Duration) -> Vec<String> {
        let mut planned = Vec::new();
        while let Some(Reverse((due, _))) = self.expiries.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, uid))) = self.expiries.pop() else {
                break;
            };
            let current = self.reservations.get(&uid).map(|r| match r.state {
                ReservationState::Starting => r.since.checked_add(horizon) == Some(due),
                ReservationState::Planned { until } => until == due,
                ReservationState::Binding => false,
            });
            if current == Some(true) {
                if let Some(r) = self.remove(&uid) {
                    if matches!(r.state, ReservationState::Planned { .. }) {
                        planned.push(r.node);
                    }
                }
            }
        }
        planned
    }

    /// `node` is gone: nothing starts there any more. Binds on their way keep their
    /// reservation until they end.
    pub fn drop_node(&mut self, node: &str) {
        let starting: Vec<PodUid> = (self.by_node.get(node).into_iter().flatten())
            .filter(|uid| self.reservations[*uid].state == ReservationState::Starting)
            .cloned()
            .collect();
        for uid in starting {
            self.remove(&uid);
        }
    }

    fn on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Reservation> + 'a {
        (self.by_node.get(node).into_iter().flatten()).map(|uid| &self.reservations[uid])
    }
}
