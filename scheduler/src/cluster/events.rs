//! Pod events (`Scheduled`, `FailedScheduling`, the offloader's `Offloaded` and `OffloadDryRun`):
//! events.k8s.io/v1, falling back to core/v1 when the API server does not serve the former.
//! Rate-limited (token bucket) and de-duplicated (the same FailedScheduling or OffloadDryRun
//! message for a pod is not repeated within `repeat_after`), because a burst of unschedulable
//! pods, or a dry run's plan repeated every pass, must not turn into a burst of writes against
//! the API server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tracing::{debug, warn};

use super::rate::TokenBucket;
use crate::api::metrics::SchedulerMetrics;
use crate::config::EventsConfig;

/// The pod an event is about.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
        }
    }

    /// `namespace/name`, for people: logs and events.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Scheduled,
    FailedScheduling,
    /// The offloader evicted the pod and reserved a node for its replacement.
    Offloaded,
    /// The offloader would have (`offload.dry_run`).
    OffloadDryRun,
}

impl EventKind {
    fn reason(self) -> &'static str {
        match self {
            Self::Scheduled => "Scheduled",
            Self::FailedScheduling => "FailedScheduling",
            Self::Offloaded => "Offloaded",
            Self::OffloadDryRun => "OffloadDryRun",
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Self::FailedScheduling => "Warning",
            Self::Scheduled | Self::Offloaded | Self::OffloadDryRun => "Normal",
        }
    }

    /// events.k8s.io's `action`: what was done.
    fn action(self) -> &'static str {
        match self {
            Self::Scheduled => "Binding",
            Self::FailedScheduling => "Scheduling",
            Self::Offloaded | Self::OffloadDryRun => "Evicting",
        }
    }

    /// Repeated unchanged while its cause lasts, so written once per `repeat_after`.
    fn repeats(self) -> bool {
        matches!(self, Self::FailedScheduling | Self::OffloadDryRun)
    }
}

enum Admission {
    Write,
    /// The same message was written recently: nothing to add.
    Repeat,
    RateLimited,
}

struct Limits {
    bucket: TokenBucket,
    /// Last repeating message (FailedScheduling, OffloadDryRun) per pod and when it was written.
    recent: HashMap<String, (String, Instant)>,
}

#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    repeat_after: Duration,
    limits: Arc<Mutex<Limits>>,
    core_only: Arc<AtomicBool>,
    metrics: Arc<SchedulerMetrics>,
}

impl EventRecorder {
    pub fn new(
        client: Client,
        controller: &str,
        instance: &str,
        config: &EventsConfig,
        metrics: Arc<SchedulerMetrics>,
    ) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            repeat_after: config.repeat_after,
            limits: Arc::new(Mutex::new(Limits {
                bucket: TokenBucket::full(config.per_second, config.burst, Instant::now()),
                recent: HashMap::new(),
            })),
            core_only: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    /// Records the event in the background; never blocks scheduling.
    pub fn record(&self, pod: PodRef, kind: EventKind, message: String) {
        match self.admit(&pod, kind, &message) {
            Admission::Write => {}
            Admission::Repeat => return,
            Admission::RateLimited => {
                self.metrics.event_dropped();
                return;
            }
        }
        let recorder = self.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.write(&pod, kind, &message).await {
                recorder.metrics.event_dropped();
                warn!(pod = %format!("{}/{}", pod.namespace, pod.name), reason = kind.reason(), error = %e, "could not write event");
            }
        });
    }

    fn admit(&self, pod: &PodRef, kind: EventKind, message: &str) -> Admission {
        let now = Instant::now();
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("{}/{}", pod.namespace, pod.name);
        if kind.repeats() {
            if let Some((last, at)) = limits.recent.get(&key) {
                if last == message && now.saturating_duration_since(*at) < self.repeat_after {
                    debug!(pod = %key, reason = kind.reason(), "event repeated within repeat_after; not written");
                    return Admission::Repeat;
                }
            }
        }
        if !limits.bucket.take(now) {
            return Admission::RateLimited;
        }
        match kind {
            _ if kind.repeats() => {
                if limits.recent.len() > 50_000 {
                    let horizon = self.repeat_after;
                    limits
                        .recent
                        .retain(|_, (_, at)| now.saturating_duration_since(*at) < horizon);
                }
                limits.recent.insert(key, (message.to_string(), now));
            }
            EventKind::Scheduled => {
                limits.recent.remove(&key);
            }
            _ => {}
        }
        Admission::Write
    }

    async fn write(&self, pod: &PodRef, kind: EventKind, message: &str) -> Result<(), kube::Error> {
        if !self.core_only.load(Ordering::Relaxed) {
            match self.write_events_v1(pod, kind, message).await {
                // An unserved API answers 404 with this text; a missing namespace names itself.
                Err(kube::Error::Api(e))
                    if e.code == 404
                        && e.message.contains("could not find the requested resource") =>
                {
                    warn!("events.k8s.io/v1 is not served; writing core/v1 events");
                    self.core_only.store(true, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        self.write_core_v1(pod, kind, message).await
    }

    fn event_name(pod: &PodRef) -> String {
        let nanos = Timestamp::now().as_nanosecond();
        format!("{}.{:x}", pod.name, nanos)
    }

    fn regarding(pod: &PodRef) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        }
    }

    async fn write_events_v1(
        &self,
        pod: &PodRef,
        kind: EventKind,
        message: &str,
    ) -> Result<(), kube::Error> {
        let event = Event {
            metadata: ObjectMeta {
                name: Some(Self::event_name(pod)),
                namespace: Some(pod.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            action: Some(kind.action().into()),
            reason: Some(kind.reason().into()),
            note: Some(truncate(message, 1024)),
            type_: Some(kind.event_type().into()),
            regarding: Some(Self::regarding(pod)),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        Api::<Event>::namespaced(self.client.clone(), &pod.namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }

    async fn write_core_v1(
        &self,
        pod: &PodRef,
        kind: EventKind,
        message: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let event = CoreEvent {
            metadata: ObjectMeta {
                name: Some(Self::event_name(pod)),
                namespace: Some(pod.namespace.clone()),
                ..Default::default()
            },
            involved_object: Self::regarding(pod),
            reason: Some(kind.reason().into()),
            message: Some(truncate(message, 1024)),
            type_: Some(kind.event_type().into()),
            source: Some(EventSource {
                component: Some(self.controller.clone()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        Api::<CoreEvent>::namespaced(self.client.clone(), &pod.namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }
}

fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}
