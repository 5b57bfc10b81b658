//! Pods of the `default` namespace that opt in to wattwise, as tests create and observe them
//! through the real API server.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::process::wait_until;

pub const NS: &str = "default";

/// A one-container pod for `schedulerName: wattwise` requesting `cpu` and 64Mi.
pub fn pod_json(name: &str, cpu: &str) -> serde_json::Value {
    pod_json_requesting(name, cpu, "64Mi")
}

/// A one-container pod for `schedulerName: wattwise` requesting `cpu` and `memory`.
pub fn pod_json_requesting(name: &str, cpu: &str, memory: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "schedulerName": "wattwise",
            "containers": [{
                "name": "work", "image": "busybox",
                "resources": {"requests": {"cpu": cpu, "memory": memory}}
            }]
        }
    })
}

/// A Deployment `name` of `replicas` pods labelled `app={name}`, each requesting `cpu` and 64Mi,
/// scheduled by wattwise.
pub fn deployment_json(name: &str, replicas: u32, cpu: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "schedulerName": "wattwise",
                    "containers": [{
                        "name": name, "image": "busybox",
                        "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}
                    }]
                }
            }
        }
    })
}

pub async fn create_deployment(
    client: &Client,
    namespace: &str,
    deployment: serde_json::Value,
) -> Result<()> {
    let deployment: Deployment = serde_json::from_value(deployment)?;
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &deployment)
        .await?;
    Ok(())
}

/// A pod as the controller tests watch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    /// Deleted and waiting for its (absent) kubelet.
    pub terminating: bool,
}

/// Every pod of `namespace` matching `selector`.
pub async fn pods_labelled(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<PodView>> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .map(|p| PodView {
            name: p.metadata.name.unwrap_or_default(),
            uid: p.metadata.uid.unwrap_or_default(),
            node: p.spec.and_then(|s| s.node_name),
            terminating: p.metadata.deletion_timestamp.is_some(),
        })
        .collect())
}

/// Waits until `selector` matches `n` pods in `namespace`, none terminating, all bound; returns
/// them.
pub async fn wait_live_bound(
    client: &Client,
    namespace: &str,
    selector: &str,
    n: usize,
) -> Result<Vec<PodView>> {
    let live = || async {
        let pods = pods_labelled(client, namespace, selector).await?;
        anyhow::Ok(
            pods.into_iter()
                .filter(|p| !p.terminating)
                .collect::<Vec<_>>(),
        )
    };
    wait_until(
        &format!("{n} live {selector} pods, all bound"),
        Duration::from_secs(60),
        || async {
            let live = live().await?;
            Ok(live.len() == n && live.iter().all(|p| p.node.is_some()))
        },
    )
    .await?;
    live().await
}

pub async fn create_pod(client: &Client, pod: serde_json::Value) -> Result<()> {
    let pod: Pod = serde_json::from_value(pod)?;
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(())
}

/// pod name → node name, for every bound pod.
pub async fn placements(client: &Client) -> Result<BTreeMap<String, String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| {
            let node = p.spec?.node_name?;
            Some((p.metadata.name?, node))
        })
        .collect())
}

/// Placements once at least `pods` pods are bound.
pub async fn wait_bound(
    client: &Client,
    pods: usize,
    timeout: Duration,
) -> Result<BTreeMap<String, String>> {
    wait_until(&format!("{pods} pods bound"), timeout, || async {
        Ok(placements(client).await?.len() >= pods)
    })
    .await?;
    placements(client).await
}

/// (reason, note) of every events.k8s.io/v1 event about `pod`.
pub async fn events_of(client: &Client, pod: &str) -> Result<Vec<(String, String)>> {
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

/// (regarding pod, note) of every events.k8s.io/v1 event in `namespace` with `reason`.
pub async fn events_by_reason(
    client: &Client,
    namespace: &str,
    reason: &str,
) -> Result<Vec<(String, String)>> {
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| {
            let pod = e.regarding.and_then(|r| r.name).unwrap_or_default();
            (pod, e.note.unwrap_or_default())
        })
        .collect())
}
