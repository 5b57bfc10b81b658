//! wattwise with the real kube-controller-manager (deployment, replicaset, garbage collector
//! controllers): the pods controllers create are scheduled by wattwise, and an evicted pod's
//! replacement is too. The groundwork for moving pods between nodes.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use wattwise_testenv::control_plane::{finish_graceful_deletions, ControlPlane, FakeNode};
use wattwise_testenv::pods::{
    create_deployment, deployment_json, pods_labelled, wait_live_bound, PodView, NS,
};
use wattwise_testenv::process::wait_until;
use wattwise_testenv::scheduler::SchedulerProcess;

async fn web_pods(client: &Client) -> Result<Vec<PodView>> {
    pods_labelled(client, NS, "app=web").await
}

/// Waits until the Deployment has `n` pods, none terminating, all bound; returns their UIDs.
async fn wait_web_bound(client: &Client, n: usize) -> Result<BTreeSet<String>> {
    let live = wait_live_bound(client, NS, "app=web", n).await?;
    Ok(live.into_iter().map(|p| p.uid).collect())
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

    create_deployment(&client, NS, deployment_json("web", 3, "250m")).await?;
    let first = wait_web_bound(&client, 3)
        .await
        .with_context(|| controllers.log_tail(30))
        .with_context(|| scheduler.log_tail(30))?;

    // Evict one (policy/v1beta1: this v1.20 server has no policy/v1 Eviction).
    let victim = web_pods(&client).await?[0].clone();
    let eviction = json!({
        "apiVersion": "policy/v1beta1",
        "kind": "Eviction",
        "metadata": {"name": victim.name, "namespace": NS},
    });
    let _: serde_json::Value = Api::<Pod>::namespaced(client.clone(), NS)
        .create_subresource("eviction", &victim.name, &PostParams::default(), &eviction)
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
    assert!(!after.contains(&victim.uid));
    let pods = web_pods(&client).await?;
    assert!(
        pods.iter().any(|p| p.uid == victim.uid && p.terminating),
        "the evicted pod is Terminating: {pods:?}"
    );

    // Playing the kubelet: the graceful deletion finishes and nothing else goes.
    let finished = finish_graceful_deletions(&client, NS).await?;
    assert_eq!(finished, vec![victim.name.clone()]);
    wait_until("the evicted pod gone", Duration::from_secs(20), || async {
        Ok(web_pods(&client).await?.iter().all(|p| p.uid != victim.uid))
    })
    .await?;
    assert_eq!(wait_web_bound(&client, 3).await?, after);
    Ok(())
}
