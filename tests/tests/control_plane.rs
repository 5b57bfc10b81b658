//! The real control plane fixture: kube-apiserver + etcd built from Debian's source, driven with
//! kube-rs, kubectl and the stock kube-scheduler.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;
use kube::Api;
use wattwise_testenv::control_plane::{ControlPlane, ControlPlaneOptions, FakeNode};

fn pod(name: &str, scheduler: Option<&str>) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "schedulerName": scheduler.unwrap_or("default-scheduler"),
            "containers": [{"name": "app", "image": "example.invalid/app:1",
                            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}],
        }
    }))
    .unwrap()
}

async fn node_name_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name).await.unwrap().spec.unwrap().node_name
}

#[tokio::test]
async fn a_binding_posted_with_kube_rs_sets_the_pods_node() {
    let plane = ControlPlane::start().await.unwrap();
    let node = plane
        .create_ready_node(&FakeNode::new("node-a").cpu(8000).label("zone", "z1"))
        .await
        .unwrap();
    let ready = node.status.unwrap().conditions.unwrap();
    assert!(ready
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));

    let pods: Api<Pod> = Api::namespaced(plane.client().await.unwrap(), "default");
    pods.create(&PostParams::default(), &pod("p1", Some("wattwise")))
        .await
        .unwrap();
    assert_eq!(
        node_name_of(&pods, "p1").await,
        None,
        "nobody schedules wattwise pods here"
    );

    let binding = serde_json::json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "p1", "namespace": "default"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"},
    });
    pods.create_subresource::<_, serde_json::Value>(
        "binding",
        "p1",
        &PostParams::default(),
        &binding,
    )
    .await
    .unwrap();
    assert_eq!(node_name_of(&pods, "p1").await.as_deref(), Some("node-a"));
}

#[tokio::test]
async fn state_survives_an_apiserver_restart_and_clients_reconnect() {
    let mut plane = ControlPlane::start().await.unwrap();
    plane
        .create_ready_node(&FakeNode::new("node-r"))
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(plane.client().await.unwrap());

    plane.stop_apiserver();
    assert!(
        nodes.get("node-r").await.is_err(),
        "the apiserver is really down"
    );
    plane.start_apiserver().await.unwrap();

    let node = nodes.get("node-r").await.unwrap();
    assert_eq!(node.metadata.name.as_deref(), Some("node-r"));
}

#[tokio::test]
async fn the_stock_kube_scheduler_schedules_onto_a_ready_node() {
    let plane = ControlPlane::start_with(ControlPlaneOptions {
        kube_scheduler: true,
    })
    .await
    .unwrap();
    plane
        .create_ready_node(&FakeNode::new("node-s"))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(plane.client().await.unwrap(), "default");
    pods.create(&PostParams::default(), &pod("stock", None))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(node) = node_name_of(&pods, "stock").await {
            assert_eq!(node, "node-s");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kube-scheduler did not bind within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn kubectl_works_with_the_generated_kubeconfig() {
    let plane = ControlPlane::start().await.unwrap();
    plane
        .create_ready_node(&FakeNode::new("node-k"))
        .await
        .unwrap();
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(plane.kubeconfig_path())
        .args(["get", "nodes", "-o", "name"])
        .output()
        .await
        .expect("kubectl is preinstalled");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node/node-k");
}
