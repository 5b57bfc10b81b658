//! Extender mode: the kube-scheduler extender API (v1, JSON over HTTP), so the stock
//! kube-scheduler keeps every plugin of its own (pod affinity, topology spread, volume binding,
//! preemption) and asks wattwise about energy:
//!
//! - `POST /filter`: the energy floor (`policy.lowest_energy_level`), the same unit standalone
//!   mode runs, with kube's reason text per failed node;
//! - `POST /prioritize`: each node scored 0..=10 by the standalone policy's own ranking
//!   ([`crate::policy::priorities`]).
//!
//! Every replica answers from its own cache: no leadership is needed. The pod comes from the
//! request itself (a pod just created may not be in the cache yet), the nodes by name
//! (`nodeCacheCapable: true`) or as full objects. Bad requests get HTTP 400 naming what is wrong;
//! before the caches have synced every call gets 503 (an `ignorable` extender is then skipped).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::metrics::SchedulerMetrics;
use crate::cluster::cache::ClusterCache;
use crate::cluster::convert;
use crate::cluster::watch::Synced;
use crate::policy::{self, Filters, PodRequest, ScoreConfig};

/// `ExtenderArgs` of `k8s.io/kube-scheduler/extender/v1`. Its Go fields carry no JSON tags, so
/// the names on the wire are the Go field names.
#[derive(Debug, Deserialize)]
struct ExtenderArgs {
    #[serde(rename = "Pod")]
    pod: Option<Pod>,
    /// Full node objects: sent when the extender is not `nodeCacheCapable`.
    #[serde(rename = "Nodes")]
    nodes: Option<NodeList>,
    /// Node names: sent when the extender is `nodeCacheCapable`.
    #[serde(rename = "NodeNames")]
    node_names: Option<Vec<String>>,
}

/// A `v1.NodeList`; items are kept as sent, to be returned as they came.
#[derive(Debug, Deserialize)]
struct NodeList {
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

/// `ExtenderFilterResult`: nodes in the form they were sent in, and the failed ones with a
/// reason each.
#[derive(Debug, Serialize)]
struct ExtenderFilterResult {
    #[serde(rename = "Nodes", skip_serializing_if = "Option::is_none")]
    nodes: Option<serde_json::Value>,
    #[serde(rename = "NodeNames", skip_serializing_if = "Option::is_none")]
    node_names: Option<Vec<String>>,
    #[serde(rename = "FailedNodes")]
    failed_nodes: BTreeMap<String, String>,
    #[serde(rename = "Error")]
    error: String,
}

/// One entry of a `HostPriorityList`.
#[derive(Debug, Serialize)]
struct HostPriority {
    #[serde(rename = "Host")]
    host: String,
    #[serde(rename = "Score")]
    score: i64,
}

/// The candidate nodes of a request, in the form they came in.
enum Candidates {
    Names(Vec<String>),
    Objects(Vec<serde_json::Value>),
}

impl Candidates {
    fn names(&self) -> Vec<&str> {
        match self {
            Candidates::Names(names) => names.iter().map(String::as_str).collect(),
            Candidates::Objects(items) => items
                .iter()
                .map(|n| n["metadata"]["name"].as_str().unwrap_or_default())
                .collect(),
        }
    }
}

/// What went wrong with a call, as the HTTP answer says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// HTTP 400 (or 413 for a body over `extender.max_request_bytes`): the request is wrong.
    BadRequest(StatusCode, String),
    /// HTTP 503: this replica's caches have not synced yet.
    NotSynced,
}

impl CallError {
    fn bad(message: impl Into<String>) -> Self {
        CallError::BadRequest(StatusCode::BAD_REQUEST, message.into())
    }

    /// The `result` label of the call metrics.
    fn result(&self) -> &'static str {
        match self {
            CallError::BadRequest(..) => "bad_request",
            CallError::NotSynced => "not_synced",
        }
    }
}

/// The two verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Filter,
    Prioritize,
}

impl Verb {
    pub fn label(self) -> &'static str {
        match self {
            Verb::Filter => "filter",
            Verb::Prioritize => "prioritize",
        }
    }
}

/// Answers extender calls from one replica's cache.
pub struct Extender {
    pub cache: Arc<Mutex<ClusterCache>>,
    pub synced: Arc<Synced>,
    /// [`Filters::energy_floor`]: kube-scheduler runs its own checks.
    pub filters: Filters,
    pub score: ScoreConfig,
    pub default_cpu_millicores: u64,
    pub metrics: Arc<SchedulerMetrics>,
}

impl Extender {
    /// One call with a JSON body: the JSON answer, or why there is none.
    pub fn call(&self, verb: Verb, body: &[u8]) -> Result<Vec<u8>, CallError> {
        let args: ExtenderArgs = serde_json::from_slice(body)
            .map_err(|e| CallError::bad(format!("invalid ExtenderArgs JSON: {e}")))?;
        let pod = args
            .pod
            .as_ref()
            .ok_or_else(|| CallError::bad("ExtenderArgs.Pod is missing"))?;
        let request = convert::pod_request(pod, self.default_cpu_millicores)
            .map_err(|e| CallError::bad(format!("ExtenderArgs.Pod: {e}")))?;
        let candidates = match (args.node_names, args.nodes) {
            (Some(names), _) => Candidates::Names(names),
            (None, Some(list)) => Candidates::Objects(list.items),
            (None, None) => {
                return Err(CallError::bad(
                    "ExtenderArgs has neither NodeNames nor Nodes",
                ))
            }
        };
        if !self.synced.all() {
            return Err(CallError::NotSynced);
        }
        let answer = match verb {
            Verb::Filter => serde_json::to_vec(&self.filter(&request, candidates)),
            Verb::Prioritize => serde_json::to_vec(&self.prioritize(&request, &candidates)),
        };
        Ok(answer.expect("extender answers serialise"))
    }

    /// The energy floor over the candidates. Nodes this replica does not know (its watch has
    /// not shown them yet) pass: wattwise knows nothing against them.
    fn filter(&self, pod: &PodRequest, candidates: Candidates) -> ExtenderFilterResult {
        let names = candidates.names();
        let mut failed_nodes = BTreeMap::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.advance(Instant::now());
            let rows: Vec<usize> = names.iter().filter_map(|n| cache.row(n)).collect();
            let verdicts = policy::verdicts(pod, cache.snapshot(), &rows, &self.filters);
            for (row, reason) in verdicts.failed {
                let name = cache.snapshot().name(row).to_string();
                failed_nodes.insert(name, reason.summary().into_owned());
            }
        }
        let passes = |name: &str| !failed_nodes.contains_key(name);
        let (nodes, node_names) = match &candidates {
            Candidates::Names(names) => {
                let passed = names.iter().filter(|n| passes(n)).cloned().collect();
                (None, Some(passed))
            }
            Candidates::Objects(items) => {
                let passed: Vec<_> = items
                    .iter()
                    .filter(|n| passes(n["metadata"]["name"].as_str().unwrap_or_default()))
                    .cloned()
                    .collect();
                (Some(serde_json::json!({ "items": passed })), None)
            }
        };
        debug!(
            pod = %format!("{}/{}", pod.namespace, pod.name),
            nodes = names.len(),
            failed = failed_nodes.len(),
            "extender filter"
        );
        ExtenderFilterResult {
            nodes,
            node_names,
            failed_nodes,
            error: String::new(),
        }
    }

    /// Every candidate scored 0..=10, in the order sent; nodes this replica does not know score
    /// 0.
    fn prioritize(&self, pod: &PodRequest, candidates: &Candidates) -> Vec<HostPriority> {
        let names = candidates.names();
        let mut scores = BTreeMap::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.advance(Instant::now());
            let rows: Vec<usize> = names.iter().filter_map(|n| cache.row(n)).collect();
            for (row, score) in policy::priorities(pod, cache.snapshot(), &rows, &self.score) {
                scores.insert(cache.snapshot().name(row).to_string(), score);
            }
        }
        debug!(
            pod = %format!("{}/{}", pod.namespace, pod.name),
            nodes = names.len(),
            top = scores.values().filter(|&&s| s == policy::MAX_PRIORITY).count(),
            "extender prioritize"
        );
        names
            .into_iter()
            .map(|name| HostPriority {
                host: name.to_string(),
                score: scores.get(name).copied().map_or(0, i64::from),
            })
            .collect()
    }

    /// One HTTP call: answered, counted and timed.
    fn answer(&self, verb: Verb, body: Result<Bytes, BytesRejection>) -> Response {
        let started = Instant::now();
        let outcome = body
            .map_err(|e| CallError::BadRequest(e.status(), e.body_text()))
            .and_then(|body| self.call(verb, &body));
        let result = outcome.as_ref().map_or_else(CallError::result, |_| "ok");
        self.metrics
            .extender_call(verb.label(), result, started.elapsed().as_secs_f64());
        match outcome {
            Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            Err(CallError::BadRequest(status, message)) => {
                warn!(verb = verb.label(), error = %message, "bad extender request");
                (status, message).into_response()
            }
            Err(CallError::NotSynced) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "caches not synced yet: no answer from this replica",
            )
                .into_response(),
        }
    }
}

/// `POST /filter` and `POST /prioritize` (kube-scheduler appends the verb to `urlPrefix`), with
/// bodies up to `max_request_bytes`.
pub fn router(extender: Arc<Extender>, max_request_bytes: usize) -> Router {
    let for_filter = extender.clone();
    Router::new()
        .route(
            "/filter",
            post(move |body: Result<Bytes, BytesRejection>| async move {
                for_filter.answer(Verb::Filter, body)
            }),
        )
        .route(
            "/prioritize",
            post(move |body: Result<Bytes, BytesRejection>| async move {
                extender.answer(Verb::Prioritize, body)
            }),
        )
        .layer(DefaultBodyLimit::max(max_request_bytes))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use wattwise_proto::v1 as pb;

    use super::*;
    use crate::cluster::cache::tests::settings;
    use crate::policy::fixtures::report;
    use wattwise_core::EnergyLevel;

    fn node(name: &str) -> Value {
        json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        })
    }

    fn pod(name: &str, cpu: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {
                "containers": [{"name": "c", "image": "x",
                                "resources": {"requests": {"cpu": cpu}}}],
                "topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "x"}}
                }]
            }
        })
    }

    /// An extender over nodes `well` (cheap), `dear`, `powerless` and `low` reporting, synced.
    fn extender(synced: bool) -> Extender {
        let mut cache = ClusterCache::new(settings());
        let now = Instant::now();
        for (name, level, peak) in [
            ("well", pb::EnergyLevel::WellPowered, 150.0),
            ("dear", pb::EnergyLevel::WellPowered, 400.0),
            ("powerless", pb::EnergyLevel::Powerless, 60.0),
            ("low", pb::EnergyLevel::LowPowered, 150.0),
        ] {
            cache.apply_node(&serde_json::from_value(node(name)).unwrap());
            let mut r = report(name, 1, 0.2, Some(level)).into_report();
            r.curve = Some(pb::PowerCurve {
                watts: (0..=100)
                    .map(|i| 50.0 + (peak - 50.0) * i as f64 / 100.0)
                    .collect(),
            });
            let r = wattwise_core::validate(r).unwrap();
            cache.ingest_report(&r, now).unwrap();
        }
        let state = Synced::default();
        state
            .nodes
            .store(synced, std::sync::atomic::Ordering::Release);
        state
            .pods
            .store(synced, std::sync::atomic::Ordering::Release);
        Extender {
            cache: Arc::new(Mutex::new(cache)),
            synced: Arc::new(state),
            filters: Filters::energy_floor(EnergyLevel::LowPowered),
            score: ScoreConfig::default(),
            default_cpu_millicores: 100,
            metrics: SchedulerMetrics::new(),
        }
    }

    fn call(e: &Extender, verb: Verb, args: Value) -> Value {
        let body = serde_json::to_vec(&args).unwrap();
        serde_json::from_slice(&e.call(verb, &body).unwrap()).unwrap()
    }

    #[test]
    fn filter_by_names_fails_powerless_nodes_with_kube_s_reason() {
        let e = extender(true);
        // "new" is not in the cache yet: nothing is known against it.
        let answer = call(
            &e,
            Verb::Filter,
            json!({"Pod": pod("p", "500m"),
                   "NodeNames": ["well", "powerless", "low", "new"]}),
        );
        assert_eq!(
            answer,
            json!({
                "NodeNames": ["well", "low", "new"],
                "FailedNodes": {"powerless": "node(s) were powerless"},
                "Error": ""
            })
        );
    }

    #[test]
    fn filter_of_full_nodes_returns_the_objects_sent() {
        let e = extender(true);
        let answer = call(
            &e,
            Verb::Filter,
            json!({"Pod": pod("p", "500m"), "Nodes": {"items": [node("powerless"), node("dear")]}}),
        );
        assert_eq!(answer["Nodes"], json!({"items": [node("dear")]}));
        assert_eq!(answer["FailedNodes"]["powerless"], "node(s) were powerless");
        assert!(answer.get("NodeNames").is_none(), "{answer}");
    }

    #[test]
    fn prioritize_scores_every_node_sent_in_order() {
        let e = extender(true);
        let answer = call(
            &e,
            Verb::Prioritize,
            json!({"Pod": pod("p", "500m"), "NodeNames": ["dear", "new", "low", "well"]}),
        );
        let scores: Vec<(String, i64)> = answer
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["Host"].as_str().unwrap().to_string(),
                    h["Score"].as_i64().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = scores.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dear", "new", "low", "well"]);
        let score = |n: &str| scores.iter().find(|(h, _)| h == n).unwrap().1;
        assert_eq!(score("well"), 10, "{scores:?}");
        assert!(
            score("dear") < 10 && score("dear") > score("low"),
            "{scores:?}"
        );
        assert_eq!(score("new"), 0, "unknown to this replica");
    }

    #[test]
    fn bad_requests_are_named_and_answered_400() {
        let e = extender(true);
        for (body, expected) in [
            (&b"{not json"[..], "invalid ExtenderArgs JSON"),
            (br#"{"NodeNames": ["well"]}"#, "ExtenderArgs.Pod is missing"),
            (
                br#"{"Pod": {"metadata": {"name": "p"}}}"#,
                "neither NodeNames nor Nodes",
            ),
            (
                br#"{"Pod": 7, "NodeNames": []}"#,
                "invalid ExtenderArgs JSON",
            ),
        ] {
            match e.call(Verb::Filter, body) {
                Err(CallError::BadRequest(status, message)) => {
                    assert_eq!(status, StatusCode::BAD_REQUEST);
                    assert!(message.contains(expected), "{message}");
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
        let bad_cpu = json!({"Pod": pod("p", "lots"), "NodeNames": ["well"]});
        match e.call(Verb::Prioritize, &serde_json::to_vec(&bad_cpu).unwrap()) {
            Err(CallError::BadRequest(_, message)) => {
                assert!(message.starts_with("ExtenderArgs.Pod: "), "{message}");
                assert!(message.contains("lots"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn calls_wait_for_the_caches_and_are_counted() {
        let e = extender(false);
        let args = serde_json::to_vec(&json!({"Pod": pod("p", "1"), "NodeNames": ["well"]}));
        let response = e.answer(Verb::Filter, Ok(Bytes::from(args.unwrap())));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = e.answer(Verb::Prioritize, Ok(Bytes::from_static(b"[")));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let text = e.metrics.encode();
        for series in [
            "wattwise_scheduler_extender_calls_total{verb=\"filter\",result=\"not_synced\"} 1",
            "wattwise_scheduler_extender_calls_total{verb=\"prioritize\",result=\"bad_request\"} 1",
            "wattwise_scheduler_extender_call_duration_seconds_count{verb=\"filter\"} 1",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }
}
