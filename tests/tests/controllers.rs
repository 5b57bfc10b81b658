//! wattwise with the real kube-controller-manager (deployment, replicaset, garbage collector
//! controllers): the pods controllers create are scheduled by wattwise, and an evicted pod's
//! replacement is too. The groundwork for moving pods between nodes.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde_json::json;
use wattwise_testenv::control_plane::{finish_graceful_deletions, ControlPlane, FakeNode};
use wattwise_testenv::pods::NS;
use wattwise_testenv::process::wait_until;
use wattwise_testenv::scheduler::SchedulerProcess;

/// (name, uid, node, terminating) of every pod of the `app=web` Deployment.
async fn web_pods(client: &Client) -> Result<Vec<(String, String, Option<String>, bool)>> {
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels("app=web"))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.metadata.uid.unwrap_or_default(),
                p.spec.and_then(|s| s.node_name),
                p.metadata.deletion_timestamp.is_some(),
            )
        })
        .collect())
}

/// Waits until the Deployment has `n` pods, none terminating, all bound; returns their UIDs.
async fn wait_web_bound(client: &Client, n: usize) -> Result<BTreeSet<String>> {
    wait_until(
        &format!("{n} live web pods, all bound"),
        Duration::from_secs(60),
        || async {
            let pods = web_pods(client).await?;
            let live: Vec<_> = pods.iter().filter(|p| !p.3).collect();
            Ok(live.len() == n && live.iter().all(|p| p.2.is_some()))
        },
    )
    .await?;
    Ok(web_pods(client)
        .await?
        .into_iter()
        .filter(|p| !p.3)
        .map(|p| p.1)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_created_pods_and_an_evicted_pods_replacement_are_bound_by_wattwise(
) -> Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    for name in ["edge-1", "edge-2"] {
        plane.create_ready_node(&FakeNode::new(name)).await?;
    }
    let scheduler = SchedulerProcess::start(&plane, "replica-a", "").await?;
    let controllers = plane.start_controller_manager().await?;

    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "schedulerName": "wattwise",
                    "containers": [{
                        "name": "web", "image": "busybox",
                        "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}
                    }]
                }
            }
        }
    }))?;
    Api::<Deployment>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &deployment)
        .await?;
    let first = wait_web_bound(&client, 3)
        .await
        .with_context(|| controllers.log_tail(30))
        .with_context(|| scheduler.log_tail(30))?;

    // Evict one (policy/v1beta1: this v1.20 server has no policy/v1 Eviction).
    let victim = web_pods(&client).await?[0].clone();
    let eviction = json!({
        "apiVersion": "policy/v1beta1",
        "kind": "Eviction",
        "metadata": {"name": victim.0, "namespace": NS},
    });
    let _: serde_json::Value = Api::<Pod>::namespaced(client.clone(), NS)
        .create_subresource("eviction", &victim.0, &PostParams::default(), &eviction)
        .await
        .context("evicting")?;
    // Bound and without a kubelet, the evicted pod stays Terminating; the ReplicaSet replaces it
    // at once, and wattwise binds the replacement.
    let after = wait_web_bound(&client, 3)
        .await
        .with_context(|| controllers.log_tail(30))?;
    let replacements: Vec<&String> = after.difference(&first).collect();
    assert_eq!(
        replacements.len(),
        1,
        "one replacement: {after:?} vs {first:?}"
    );
    assert!(!after.contains(&victim.1));
    let pods = web_pods(&client).await?;
    assert!(
        pods.iter().any(|p| p.1 == victim.1 && p.3),
        "the evicted pod is Terminating: {pods:?}"
    );

    // Playing the kubelet: the graceful deletion finishes and nothing else goes.
    let finished = finish_graceful_deletions(&client, NS).await?;
    assert_eq!(finished, vec![victim.0.clone()]);
    wait_until("the evicted pod gone", Duration::from_secs(20), || async {
        Ok(web_pods(&client).await?.iter().all(|p| p.1 != victim.1))
    })
    .await?;
    assert_eq!(wait_web_bound(&client, 3).await?, after);
    Ok(())
}
