//! Pods of the `default` namespace that opt in to wattwise, as tests create and observe them
//! through the real API server.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
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
