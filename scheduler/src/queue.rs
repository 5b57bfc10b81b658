//! Pending pods for this scheduler, keyed by UID, with what the policy needs to place each: the
//! one place that holds them. Highest priority first, then first come first served.
//! A pod that could not be placed waits as unschedulable until an event that could help (node
//! added or changed, pod deleted, an agent report that changes a node's energy level) or
//! `unschedulable_retry` passes; every retry respects its exponential backoff. Nothing here
//! busy-loops and no pod is forgotten: a pod leaves only when bound, deleted or no longer ours.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::cluster::store::PodUid;
use crate::policy::PodRequest;

type PodKey = PodUid;

#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub unschedulable_retry: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Backoff,
    Unschedulable { since: Instant },
    InFlight,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<PodRequest>,
    priority: i32,
    seq: u64,
    attempts: u32,
    state: State,
    /// Not before this may the pod be tried again.
    retry_at: Instant,
    first_seen: Instant,
}

#[derive(Debug, PartialEq, Eq)]
struct ActiveItem {
    priority: i32,
    seq: u64,
    key: PodKey,
}

impl Ord for ActiveItem {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Default)]
struct QueueState {
    entries: HashMap<PodKey, Entry>,
    /// May hold outdated items; an item counts only if its entry is Active with the same seq.
    active: BinaryHeap<ActiveItem>,
    backoff: BinaryHeap<Reverse<(Instant, u64, PodKey)>>,
    next_seq: u64,
    cluster_changed: bool,
}

impl QueueState {
    /// Drops queued items whose pod left once they could outnumber the pods held: a standby
    /// replica never pops, and would otherwise keep an item for every pod it ever saw waiting.
    /// Amortised constant per removal.
    fn compact_if_wasteful(&mut self) {
        let limit = 2 * self.entries.len() + 64;
        if self.active.len() > limit {
            let entries = &self.entries;
            self.active.retain(|item| {
                entries.get(&item.key).is_some_and(|e| {
                    e.state == State::Active && e.seq == item.seq && e.priority == item.priority
                })
            });
        }
        if self.backoff.len() > limit {
            let entries = &self.entries;
            self.backoff.retain(|Reverse((_, seq, key))| {
                entries
                    .get(key)
                    .is_some_and(|e| e.state == State::Backoff && e.seq == *seq)
            });
        }
    }
}

/// A pod handed to the decision loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Popped {
    pub pod: Arc<PodRequest>,
    /// When the queue first saw the pod pending (for queue→bind latency).
    pub first_seen: Instant,
    pub attempts: u32,
}

/// Pods per queue state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub active: usize,
    pub backoff: usize,
    pub unschedulable: usize,
    pub in_flight: usize,
}

pub struct SchedulingQueue {
    settings: QueueSettings,
    state: Mutex<QueueState>,
    wake: Notify,
}

impl SchedulingQueue {
    pub fn new(settings: QueueSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(QueueState::default()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pending pod appeared or changed. New pods go to the back of their priority.
    pub fn add(&self, pod: Arc<PodRequest>, now: Instant) {
        let mut s = self.lock();
        let priority = pod.priority;
        let key = pod.uid.clone();
        match s.entries.get_mut(&key) {
            Some(e) => {
                e.pod = pod;
                // The pod itself changed (e.g. its scheduling gates were removed): that may be
                // what it waited for, so it retries after its backoff, not after the next
                // cluster event.
                if let State::Unschedulable { .. } = e.state {
                    e.priority = priority;
                    e.state = State::Backoff;
                    let item = Reverse((e.retry_at, e.seq, key));
                    s.backoff.push(item);
                    drop(s);
                    self.wake.notify_one();
                    return;
                }
                if e.priority != priority && e.state == State::Active {
                    e.priority = priority;
                    let seq = e.seq;
                    s.active.push(ActiveItem { priority, seq, key });
                } else {
                    e.priority = priority;
                }
            }
            None => {
                let seq = s.next_seq;
                s.next_seq += 1;
                s.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        priority,
                        seq,
                        attempts: 0,
                        state: State::Active,
                        retry_at: now,
                        first_seen: now,
                    },
                );
                s.active.push(ActiveItem { priority, seq, key });
                drop(s);
                self.wake.notify_one();
            }
        }
    }

    /// The pod is no longer ours to place (bound, deleted, finished).
    pub fn remove(&self, key: &str) {
        let mut s = self.lock();
        s.entries.remove(key);
        s.compact_if_wasteful();
    }

    /// Something changed that could make unschedulable pods fit; they retry after their backoff.
    pub fn cluster_changed(&self) {
        self.lock().cluster_changed = true;
        self.wake.notify_one();
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        (self.settings.backoff_initial * factor).min(self.settings.backoff_max)
    }

    /// No node fits now; wait for a helpful event.
    pub fn unschedulable(&self, key: &str, now: Instant) {
        let backoff = self.settings.backoff_initial;
        let mut s = self.lock();
        if let Some(e) = s.entries.get_mut(key) {
            e.attempts += 1;
            e.retry_at = now + self.backoff_for(e.attempts).max(backoff);
            e.state = State::Unschedulable { since: now };
        }
    }

    /// A transient failure (bind error): retry after the pod's backoff.
    pub fn retry_later(&self, key: &str, now: Instant) {
        let mut s = self.lock();
        let Some(e) = s.entries.get_mut(key) else {
            return;
        };
        e.attempts += 1;
        e.retry_at = now + self.backoff_for(e.attempts);
        e.state = State::Backoff;
        let item = Reverse((e.retry_at, e.seq, key.to_string()));
        s.backoff.push(item);
        drop(s);
        self.wake.notify_one();
    }

    /// Puts an in-flight pod back in its place (leadership was lost before it was decided).
    pub fn release(&self, key: &str) {
        let mut s = self.lock();
        let Some(e) = s.entries.get_mut(key) else {
            return;
        };
        if e.state != State::InFlight {
            return;
        }
        e.state = State::Active;
        let item = ActiveItem {
            priority: e.priority,
            seq: e.seq,
            key: key.to_string(),
        };
        s.active.push(item);
        drop(s);
        self.wake.notify_one();
    }

    /// Moves due pods to active; returns the next time something becomes due.
    fn promote(&self, s: &mut QueueState, now: Instant) -> Option<Instant> {
        let changed = std::mem::take(&mut s.cluster_changed);
        let retry = self.settings.unschedulable_retry;
        let mut to_backoff = Vec::new();
        let mut next_unschedulable: Option<Instant> = None;
        for (key, e) in s.entries.iter_mut() {
            if let State::Unschedulable { since } = e.state {
                if changed || now.saturating_duration_since(since) >= retry {
                    e.state = State::Backoff;
                    to_backoff.push(Reverse((e.retry_at, e.seq, key.clone())));
                } else {
                    let at = since + retry;
                    next_unschedulable = Some(next_unschedulable.map_or(at, |n| n.min(at)));
                }
            }
        }
        s.backoff.extend(to_backoff);
        while let Some(Reverse((at, seq, _))) = s.backoff.peek() {
            if *at > now {
                break;
            }
            let (seq, Reverse((_, _, key))) = (*seq, s.backoff.pop().expect("peeked"));
            if let Some(e) = s.entries.get_mut(&key) {
                if e.state == State::Backoff && e.seq == seq {
                    e.state = State::Active;
                    let priority = e.priority;
                    s.active.push(ActiveItem { priority, seq, key });
                }
            }
        }
        let next_backoff = s.backoff.peek().map(|Reverse((at, _, _))| *at);
        match (next_backoff, next_unschedulable) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the next pod to place, waiting as long as none is due.
    pub async fn pop(&self) -> Popped {
        loop {
            let notified = self.wake.notified();
            let next_due = {
                let mut s = self.lock();
                let now = Instant::now();
                let next_due = self.promote(&mut s, now);
                while let Some(item) = s.active.pop() {
                    let Some(e) = s.entries.get_mut(&item.key) else {
                        continue;
                    };
                    if e.state != State::Active || e.seq != item.seq || e.priority != item.priority
                    {
                        continue;
                    }
                    e.state = State::InFlight;
                    return Popped {
                        pod: e.pod.clone(),
                        first_seen: e.first_seen,
                        attempts: e.attempts,
                    };
                }
                next_due
            };
            match next_due {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), notified).await;
                }
                None => notified.await,
            }
        }
    }

    pub fn depth(&self) -> QueueDepth {
        let s = self.lock();
        let mut d = QueueDepth::default();
        for e in s.entries.values() {
            match e.state {
                State::Active => d.active += 1,
                State::Backoff => d.backoff += 1,
                State::Unschedulable { .. } => d.unschedulable += 1,
                State::InFlight => d.in_flight += 1,
            }
        }
        d
    }

    /// Whether the pod is still waiting or being placed.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().entries.contains_key(key)
    }

    /// Pods held, and queued items including outdated ones (for tests of memory bounds).
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.entries.len(), s.active.len(), s.backoff.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> SchedulingQueue {
        SchedulingQueue::new(QueueSettings {
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(80),
            unschedulable_retry: Duration::from_millis(300),
        })
    }

    fn pod(uid: &str, priority: i32) -> Arc<PodRequest> {
        let mut pod = crate::policy::fixtures::pod(uid);
        pod.priority = priority;
        Arc::new(pod)
    }

    async fn pop_now(q: &SchedulingQueue) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(5), q.pop())
            .await
            .ok()
            .map(|p| p.pod.uid.clone())
    }

    #[tokio::test]
    async fn priority_first_then_fifo() {
        let q = queue();
        let now = Instant::now();
        q.add(pod("ns/low-1", 0), now);
        q.add(pod("ns/high", 100), now);
        q.add(pod("ns/low-2", 0), now);
        q.add(pod("ns/mid", 10), now);
        let mut order = Vec::new();
        while let Some(k) = pop_now(&q).await {
            order.push(k);
        }
        assert_eq!(order, ["ns/high", "ns/mid", "ns/low-1", "ns/low-2"]);
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_an_event_then_their_backoff() {
        let q = queue();
        q.add(pod("ns/a", 0), Instant::now());
        let p = q.pop().await;
        q.unschedulable(&p.pod.uid, Instant::now());
        assert_eq!(q.depth().unschedulable, 1);
        assert_eq!(pop_now(&q).await, None, "no event, no retry");
        q.cluster_changed();
        let t = Instant::now();
        let again = tokio::time::timeout(Duration::from_secs(1), q.pop())
            .await
            .unwrap();
        assert_eq!(again.pod.uid, "ns/a");
        assert_eq!(again.attempts, 1);
        assert!(t.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn unschedulable_pods_are_retried_without_events_too() {
        let q = queue();
        q.add(pod("ns/a", 0), Instant::now());
        let p = q.pop().await;
        let t = Instant::now();
        q.unschedulable(&p.pod.uid, t);
        let again = tokio::time::timeout(Duration::from_secs(2), q.pop())
            .await
            .unwrap();
        assert_eq!(again.pod.uid, "ns/a");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn an_updated_unschedulable_pod_retries_without_a_cluster_event() {
        let q = queue();
        q.add(pod("ns/gated", 0), Instant::now());
        q.add(pod("ns/other", 0), Instant::now());
        for _ in 0..2 {
            let p = q.pop().await;
            q.unschedulable(&p.pod.uid, Instant::now());
        }
        // The gated pod's update (its gates removed) arrives; nothing else changes.
        q.add(pod("ns/gated", 0), Instant::now());
        let again = tokio::time::timeout(Duration::from_millis(250), q.pop())
            .await
            .expect("retried before unschedulable_retry");
        assert_eq!(again.pod.uid, "ns/gated");
        assert_eq!(q.depth().unschedulable, 1, "the other pod still waits");
    }

    #[tokio::test]
    async fn bind_errors_back_off_exponentially_up_to_the_cap() {
        let q = queue();
        q.add(pod("ns/a", 0), Instant::now());
        q.pop().await;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let t = Instant::now();
            q.retry_later("ns/a", t);
            q.pop().await;
            waits.push(t.elapsed());
        }
        for (wait, floor_ms) in waits.iter().zip([20, 40, 80, 80]) {
            assert!(*wait >= Duration::from_millis(floor_ms), "{waits:?}");
        }
        assert!(
            waits[3] < Duration::from_millis(160),
            "capped at 80 ms: {waits:?}"
        );
    }

    #[tokio::test]
    async fn removed_pods_are_never_popped() {
        let q = queue();
        q.add(pod("ns/a", 0), Instant::now());
        q.add(pod("ns/b", 0), Instant::now());
        q.remove("ns/a");
        assert_eq!(pop_now(&q).await.as_deref(), Some("ns/b"));
        assert_eq!(pop_now(&q).await, None);
        assert_eq!(
            q.depth(),
            QueueDepth {
                in_flight: 1,
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn a_waiting_pop_wakes_on_add() {
        let q = std::sync::Arc::new(queue());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await.pod.uid.clone() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.add(pod("ns/late", 0), Instant::now());
        let key = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(key, "ns/late");
    }
}
