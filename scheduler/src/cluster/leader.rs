//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it: the holder
//! renews every `retry_period`; others take over once the record has not changed for
//! `lease_duration` by their own clock (so clock skew between replicas does not matter); a leader
//! that cannot renew within `renew_deadline` steps down before anyone else may take over.
//! Updates carry the Lease's resourceVersion, so two candidates can never both win.
//!
//! The renew deadline is a timer of its own, not a check made when a call returns: a renew that
//! hangs (an API server that stopped answering) is abandoned when the deadline passes, and the
//! replica stops leading then, as client-go's renew loop does with its `renew_deadline` context.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};
use wattwise_daemon::health::Heartbeat;

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record seen and when (our clock) it last changed.
    observed: Option<(LeaseSpec, Instant)>,
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    /// Campaigns until `shutdown` resolves, publishing leadership on `leader` and beating
    /// `heartbeat` every round; on shutdown a held Lease is released so a standby takes over at
    /// once.
    pub async fn run(
        mut self,
        leader: watch::Sender<bool>,
        heartbeat: Heartbeat,
        shutdown: impl std::future::Future,
    ) {
        tokio::pin!(shutdown);
        let renew_deadline = self.settings.renew_deadline;
        // While leading: when leadership ends unless a renew succeeds first. It counts from when
        // the last successful renew was *sent*, before the server stamped it, so this replica
        // stops before any other may take over (renew_deadline < lease_duration, and others count
        // lease_duration from when they saw the renewed record).
        let mut leading_until: Option<Instant> = None;
        loop {
            heartbeat.beat();
            let sent = Instant::now();
            let outcome = tokio::select! {
                r = tokio::time::timeout(renew_deadline, self.try_acquire_or_renew()) => Some(r),
                _ = expiry(leading_until) => None,
                _ = &mut shutdown => break,
            };
            let still_leading = leading_until.is_some_and(|t| Instant::now() < t);
            let is_leader = match outcome {
                Some(Ok(Ok(true))) => {
                    leading_until = Some(sent + renew_deadline);
                    true
                }
                Some(Ok(Ok(false))) => false,
                Some(Ok(Err(e))) => {
                    warn!(lease = %self.settings.name, error = %e, "leader election: lease not reachable");
                    still_leading
                }
                Some(Err(_)) => {
                    warn!(lease = %self.settings.name, timeout = ?renew_deadline, "leader election: no answer from the API server within renew_deadline");
                    still_leading
                }
                None => {
                    warn!(lease = %self.settings.name, "renew_deadline passed while renewing; abandoning the call");
                    false
                }
            };
            if !is_leader {
                leading_until = None;
            }
            self.publish(&leader, is_leader);
            tokio::select! {
                _ = tokio::time::sleep(self.settings.retry_period) => {}
                _ = expiry(leading_until) => {
                    warn!(lease = %self.settings.name, "renew_deadline passed without a successful renew");
                    leading_until = None;
                    self.publish(&leader, false);
                }
                _ = &mut shutdown => break,
            }
        }
        if *leader.borrow() {
            let _ = leader.send(false);
            if let Err(e) = self.release().await {
                warn!(error = %e, "could not release the leader lease; a standby takes over when it expires");
            } else {
                info!("leader lease released");
            }
        }
    }

    fn publish(&self, leader: &watch::Sender<bool>, is_leader: bool) {
        if *leader.borrow() == is_leader {
            return;
        }
        if is_leader {
            info!(identity = %self.settings.identity, lease = %self.settings.name, "became leader");
        } else {
            info!(identity = %self.settings.identity, lease = %self.settings.name, "not the leader");
        }
        let _ = leader.send(is_leader);
    }

    fn lease_seconds(&self) -> i32 {
        self.settings.lease_duration.as_secs().max(1) as i32
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let me = self.settings.identity.clone();
        let Some(current) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let changed = self.observed.as_ref().is_none_or(|(seen, _)| *seen != spec);
        if changed {
            self.observed = Some((spec.clone(), Instant::now()));
        }
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_by_me = holder == me;
        if !held_by_me && !holder.is_empty() {
            let duration = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64))
                .unwrap_or(self.settings.lease_duration);
            let since = self
                .observed
                .as_ref()
                .map(|(_, t)| *t)
                .unwrap_or_else(Instant::now);
            if since.elapsed() < duration {
                return Ok(false);
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = LeaseSpec {
            holder_identity: Some(me),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time: if held_by_me {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if held_by_me {
                transitions
            } else {
                transitions + 1
            }),
            ..spec
        };
        let mut updated = current;
        updated.spec = Some(new_spec);
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &updated)
            .await
        {
            Ok(lease) => {
                self.observed = lease.spec.map(|s| (s, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&mut self) -> Result<(), kube::Error> {
        let mut lease = self.api.get(&self.settings.name).await?;
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// Resolves when leadership held until `until` ends; never when not leading.
async fn expiry(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
