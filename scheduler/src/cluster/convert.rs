//! Pure conversion of Kubernetes objects into the policy's structs, following kube-scheduler's
//! reading of the same fields. Errors name the object and the field path, so a log line points
//! at what to fix.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, Pod, PodAffinityTerm, PodSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use thiserror::Error;
use wattwise_core::energy::UnknownEnergyLevel;
use wattwise_core::EnergyLevel;

use super::overlay::Replacement;
use super::quantity::{self, QuantityError};
use crate::policy::offload::{BoundPod, Owner, OPT_OUT_ANNOTATION};
use crate::policy::{
    ClaimState, HostPort, NodeSelectorTerm, PodConstraints, PodRequest, Protocol, Resources,
    SelectorOperator, SelectorRequirement, Taint, TaintEffect, Toleration, TolerationOperator,
    VolumeClaim,
};

/// A field that cannot be converted: `pod default/web-1: spec.containers[web].resources.requests.cpu:
/// "12x" is not a quantity`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}{field}: {kind}", object_prefix(.object))]
pub struct ConvertError {
    /// `pod namespace/name` or `node name`; `None` when only part of an object was converted.
    pub object: Option<String>,
    /// Path of the field within the object (or within the converted part).
    pub field: String,
    pub kind: ConvertErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvertErrorKind {
    #[error(transparent)]
    Quantity(#[from] QuantityError),
    #[error("unknown operator {0:?}")]
    UnknownOperator(String),
    #[error("unknown effect {0:?}")]
    UnknownEffect(String),
    #[error("unknown protocol {0:?}")]
    UnknownProtocol(String),
    #[error("port {0} is out of range")]
    PortOutOfRange(i32),
}

fn object_prefix(object: &Option<String>) -> String {
    object
        .as_ref()
        .map(|o| format!("{o}: "))
        .unwrap_or_default()
}

impl ConvertError {
    fn at(field: impl Into<String>, kind: impl Into<ConvertErrorKind>) -> Self {
        ConvertError {
            object: None,
            field: field.into(),
            kind: kind.into(),
        }
    }

    /// Prefixes the field path with the path of the part it was found in.
    fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }

    fn of(mut self, object: String) -> Self {
        self.object = Some(object);
        self
    }
}

/// The part of a [`crate::policy::NodeState`] that comes from the Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBasics {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub unschedulable: bool,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    pub taints: Vec<Taint>,
    /// `status.allocatable`, or `status.capacity` when the node reports no allocatable.
    pub allocatable: Resources,
}

/// A resource list in canonical units: `cpu` in millicores, `memory` and `ephemeral-storage` in
/// bytes, `pods` as a count, extended resources (a `/` in the name, or `hugepages-*`) in their
/// units. Other names (`storage`, `attachable-volumes-*`) are not scheduled on and are skipped.
pub fn resources_from_map(map: &BTreeMap<String, Quantity>) -> Result<Resources, ConvertError> {
    let mut resources = Resources::default();
    for (name, amount) in map {
        set_resource(&mut resources, name, amount)?;
    }
    Ok(resources)
}

/// Sets one resource of `resources` to `amount`; the error's field is the resource name.
fn set_resource(
    resources: &mut Resources,
    name: &str,
    amount: &Quantity,
) -> Result<(), ConvertError> {
    let at = |e: QuantityError| ConvertError::at(name, e);
    match name {
        "cpu" => resources.cpu_millicores = quantity::milli_value(amount).map_err(at)?,
        "memory" => resources.memory_bytes = quantity::value(amount).map_err(at)?,
        "ephemeral-storage" => {
            resources.ephemeral_storage_bytes = quantity::value(amount).map_err(at)?
        }
        "pods" => resources.pods = quantity::value(amount).map_err(at)?,
        _ if name.contains('/') || name.starts_with("hugepages-") => {
            // Zero amounts are left out so that "requests nothing" has one representation.
            match quantity::value(amount).map_err(at)? {
                0 => resources.extended.remove(name),
                n => resources.extended.insert(name.to_string(), n),
            };
        }
        _ => {}
    }
    Ok(())
}

/// A pod's effective requests as kube-scheduler computes them (component-helpers `PodRequests`):
/// the larger of the running containers (with sidecars) and the peak of the init phase, where
/// each init container runs alongside the sidecars started before it; pod-level requests replace
/// the aggregate for the resources they name; overhead is added; `pods` is 1.
pub fn effective_requests(spec: &PodSpec) -> Result<Resources, ConvertError> {
    let mut total = Resources::default();
    for container in &spec.containers {
        total.add(&container_requests(container, "spec.containers")?);
    }

    // KEP-753: a sidecar (init container with restartPolicy Always) keeps running, so it adds to
    // the pod's sum and to the footprint of every init container started after it.
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for container in spec.init_containers.iter().flatten() {
        let request = container_requests(container, "spec.initContainers")?;
        if is_sidecar(container) {
            total.add(&request);
            sidecars.add(&request);
            init_peak.max_with(&sidecars);
        } else {
            let mut running = request;
            running.add(&sidecars);
            init_peak.max_with(&running);
        }
    }
    total.max_with(&init_peak);

    // Pod-level resources (KEP-2837): the API server keeps the field only where the feature is
    // on, and then its requests for cpu, memory and hugepages override the containers' sum.
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        for (name, amount) in pod_level {
            if name == "cpu" || name == "memory" || name.starts_with("hugepages-") {
                set_resource(&mut total, name, amount)
                    .map_err(|e| e.within("spec.resources.requests"))?;
            }
        }
    }

    if let Some(overhead) = &spec.overhead {
        total.add(&resources_from_map(overhead).map_err(|e| e.within("spec.overhead"))?);
    }
    total.pods = 1;
    Ok(total)
}

/// A container's requests; a resource with a limit but no request requests its limit, as API
/// defaulting would have set it.
fn container_requests(container: &Container, list: &str) -> Result<Resources, ConvertError> {
    let mut resources = Resources::default();
    let Some(requirements) = &container.resources else {
        return Ok(resources);
    };
    let path = |part: &str| format!("{list}[{}].resources.{part}", container.name);
    let requests = requirements.requests.as_ref();
    for (name, amount) in requests.into_iter().flatten() {
        set_resource(&mut resources, name, amount).map_err(|e| e.within(&path("requests")))?;
    }
    for (name, amount) in requirements.limits.iter().flatten() {
        if !requests.is_some_and(|r| r.contains_key(name)) {
            set_resource(&mut resources, name, amount).map_err(|e| e.within(&path("limits")))?;
        }
    }
    Ok(resources)
}

fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// What the policy needs to know about `pod`. `default_cpu_millicores` prices a pod that
/// requests no CPU.
pub fn pod_request(pod: &Pod, default_cpu_millicores: u64) -> Result<PodRequest, ConvertError> {
    let in_pod = |e: ConvertError| e.of(pod_object(pod));
    let no_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let requests = effective_requests(spec).map_err(in_pod)?;
    let pricing_cpu_millicores = match requests.cpu_millicores {
        0 => default_cpu_millicores,
        cpu => cpu,
    };
    Ok(PodRequest {
        namespace: pod_namespace(pod).to_string(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        priority: spec.priority.unwrap_or(0),
        requests,
        pricing_cpu_millicores,
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        required_node_affinity: required_node_affinity(spec).map_err(in_pod)?,
        tolerations: tolerations(spec).map_err(in_pod)?,
        host_ports: host_ports(pod)?,
        constraints: pod_constraints(pod),
    })
}

/// The pod's constraints that the filters do not evaluate. Claims are [`ClaimState::Unknown`]
/// here: whether they are bound is cluster state, looked up when the pod is decided.
fn pod_constraints(pod: &Pod) -> PodConstraints {
    let Some(spec) = &pod.spec else {
        return PodConstraints::default();
    };
    let affinity = spec.affinity.as_ref();
    let required = |terms: Option<&Vec<PodAffinityTerm>>| terms.is_some_and(|t| !t.is_empty());
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    PodConstraints {
        scheduling_gates: (spec.scheduling_gates.iter().flatten())
            .map(|gate| gate.name.clone())
            .collect(),
        required_pod_affinity: required(affinity.and_then(|a| a.pod_affinity.as_ref()).and_then(
            |a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            },
        )),
        required_pod_anti_affinity: required(
            affinity
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
        ),
        // Anything but ScheduleAnyway is a requirement (the API knows only DoNotSchedule).
        hard_topology_spread: (spec.topology_spread_constraints.iter().flatten())
            .filter(|c| c.when_unsatisfiable != "ScheduleAnyway")
            .map(|c| c.topology_key.clone())
            .collect(),
        volume_claims: (spec.volumes.iter().flatten())
            .filter_map(|volume| {
                let name = match (&volume.persistent_volume_claim, &volume.ephemeral) {
                    (Some(claim), _) => claim.claim_name.clone(),
                    // The ephemeral volume controller names the claim it creates this way.
                    (None, Some(_)) => format!("{pod_name}-{}", volume.name),
                    (None, None) => return None,
                };
                Some(VolumeClaim {
                    name,
                    state: ClaimState::Unknown,
                })
            })
            .collect(),
    }
}

fn pod_namespace(pod: &Pod) -> &str {
    // Same fallback as the cluster cache's pod keys.
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

fn pod_object(pod: &Pod) -> String {
    format!(
        "pod {}/{}",
        pod_namespace(pod),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn required_node_affinity(spec: &PodSpec) -> Result<Vec<NodeSelectorTerm>, ConvertError> {
    const PATH: &str =
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms";
    let Some(selector) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return Ok(Vec::new());
    };
    selector
        .node_selector_terms
        .iter()
        .enumerate()
        .map(|(i, term)| {
            let within = |part: &str, e: ConvertError| e.within(&format!("{PATH}[{i}].{part}"));
            Ok(NodeSelectorTerm {
                match_expressions: selector_requirements(term.match_expressions.as_deref())
                    .map_err(|e| within("matchExpressions", e))?,
                match_fields: selector_requirements(term.match_fields.as_deref())
                    .map_err(|e| within("matchFields", e))?,
            })
        })
        .collect()
}

fn selector_requirements(
    requirements: Option<&[NodeSelectorRequirement]>,
) -> Result<Vec<SelectorRequirement>, ConvertError> {
    requirements
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let operator = match r.operator.as_str() {
                "In" => SelectorOperator::In,
                "NotIn" => SelectorOperator::NotIn,
                "Exists" => SelectorOperator::Exists,
                "DoesNotExist" => SelectorOperator::DoesNotExist,
                "Gt" => SelectorOperator::Gt,
                "Lt" => SelectorOperator::Lt,
                other => {
                    return Err(ConvertError::at(
                        format!("[{i}].operator"),
                        ConvertErrorKind::UnknownOperator(other.to_string()),
                    ))
                }
            };
            Ok(SelectorRequirement {
                key: r.key.clone(),
                operator,
                values: r.values.clone().unwrap_or_default(),
            })
        })
        .collect()
}

fn tolerations(spec: &PodSpec) -> Result<Vec<Toleration>, ConvertError> {
    spec.tolerations
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| {
            let at = |field: &str, kind: ConvertErrorKind| {
                ConvertError::at(format!("spec.tolerations[{i}].{field}"), kind)
            };
            // An empty operator means Equal; an empty effect matches every effect.
            let operator = match t.operator.as_deref().unwrap_or_default() {
                "" | "Equal" => TolerationOperator::Equal,
                "Exists" => TolerationOperator::Exists,
                other => {
                    return Err(at(
                        "operator",
                        ConvertErrorKind::UnknownOperator(other.to_string()),
                    ))
                }
            };
            let effect = match t.effect.as_deref().unwrap_or_default() {
                "" => None,
                other => Some(taint_effect(other).ok_or_else(|| {
                    at("effect", ConvertErrorKind::UnknownEffect(other.to_string()))
                })?),
            };
            Ok(Toleration {
                key: t.key.clone().unwrap_or_default(),
                operator,
                value: t.value.clone().unwrap_or_default(),
                effect,
            })
        })
        .collect()
}

fn taint_effect(effect: &str) -> Option<TaintEffect> {
    match effect {
        "NoSchedule" => Some(TaintEffect::NoSchedule),
        "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
        "NoExecute" => Some(TaintEffect::NoExecute),
        _ => None,
    }
}

/// The host ports `pod` occupies on its node: ports with `hostPort > 0` of its containers and of
/// its sidecars. Like kube-scheduler (`GetHostPorts`), ordinary init containers are left out: they
/// have exited before the containers start.
pub fn host_ports(pod: &Pod) -> Result<Vec<HostPort>, ConvertError> {
    let Some(spec) = &pod.spec else {
        return Ok(Vec::new());
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| is_sidecar(c))
        .map(|c| ("spec.initContainers", c));
    let containers = spec.containers.iter().map(|c| ("spec.containers", c));
    let mut ports = Vec::new();
    for (list, container) in sidecars.chain(containers) {
        for (i, port) in container.ports.iter().flatten().enumerate() {
            let Some(host_port) = port.host_port.filter(|&p| p > 0) else {
                continue;
            };
            let at = |field: &str, kind: ConvertErrorKind| {
                ConvertError::at(
                    format!("{list}[{}].ports[{i}].{field}", container.name),
                    kind,
                )
                .of(pod_object(pod))
            };
            let number = u16::try_from(host_port)
                .map_err(|_| at("hostPort", ConvertErrorKind::PortOutOfRange(host_port)))?;
            // The API defaults an empty protocol to TCP.
            let protocol = match port.protocol.as_deref().unwrap_or_default() {
                "" | "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                other => {
                    return Err(at(
                        "protocol",
                        ConvertErrorKind::UnknownProtocol(other.to_string()),
                    ))
                }
            };
            ports.push(HostPort {
                host_ip: port.host_ip.clone().unwrap_or_default(),
                protocol,
                port: number,
            });
        }
    }
    Ok(ports)
}

/// The pod's controller, from its controlling owner reference; `None` for a bare pod.
pub fn owner(pod: &Pod) -> Option<Owner> {
    let owner =
        (pod.metadata.owner_references.iter().flatten()).find(|o| o.controller == Some(true))?;
    Some(Owner {
        kind: owner.kind.clone(),
        namespace: pod_namespace(pod).to_string(),
        name: owner.name.clone(),
    })
}

/// What a replacement of `pod` has in common with it: its controller and the hash of the
/// template it was made from (`pod-template-hash` for a ReplicaSet's pods,
/// `controller-revision-hash` for a StatefulSet's; empty when the pod carries neither).
pub fn replacement(pod: &Pod) -> Option<Replacement> {
    let owner = owner(pod)?;
    let labels = pod.metadata.labels.as_ref();
    let template = ["pod-template-hash", "controller-revision-hash"]
        .iter()
        .find_map(|key| labels.and_then(|l| l.get(*key)))
        .cloned()
        .unwrap_or_default();
    Some(Replacement { owner, template })
}

/// A pod the API shows bound to a node, as the offloader's planner reads it; `now` dates it.
pub fn bound_pod(
    pod: &Pod,
    default_cpu_millicores: u64,
    now: Timestamp,
) -> Result<Option<BoundPod>, ConvertError> {
    let Some(node) = (pod.spec.as_ref())
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
    else {
        return Ok(None);
    };
    if is_terminal(pod) || pod.metadata.deletion_timestamp.is_some() {
        return Ok(None); // leaving already
    }
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let created = (pod.metadata.creation_timestamp.as_ref()).map_or(now, |t| t.0);
    let age = now
        .duration_since(created)
        .try_into()
        .unwrap_or(std::time::Duration::ZERO);
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    Ok(Some(BoundPod {
        request: pod_request(pod, default_cpu_millicores)?,
        node,
        owner: owner(pod),
        age,
        mirror: annotation(MIRROR_ANNOTATION).is_some(),
        local_storage: (volumes.into_iter().flatten())
            .any(|v| v.empty_dir.is_some() || v.host_path.is_some()),
        opted_out: annotation(OPT_OUT_ANNOTATION) == Some("false"),
    }))
}

/// Set by the kubelet on the API's shadow of a static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The pod has finished (phase `Succeeded` or `Failed`) and holds no resources any more.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// What the Node object says about the node.
pub fn node_basics(node: &Node) -> Result<NodeBasics, ConvertError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let in_node = |e: ConvertError| e.of(format!("node {name}"));
    let spec = node.spec.as_ref();
    let status = node.status.as_ref();

    let taints = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| {
            let effect = taint_effect(&t.effect).ok_or_else(|| {
                ConvertError::at(
                    format!("spec.taints[{i}].effect"),
                    ConvertErrorKind::UnknownEffect(t.effect.clone()),
                )
            })?;
            Ok(Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect,
            })
        })
        .collect::<Result<_, ConvertError>>()
        .map_err(in_node)?;

    // As kube's GetNodeCondition: the first Ready condition counts.
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");

    let allocatable = match status.and_then(|s| s.allocatable.as_ref()) {
        Some(map) if !map.is_empty() => {
            resources_from_map(map).map_err(|e| e.within("status.allocatable"))
        }
        _ => status
            .and_then(|s| s.capacity.as_ref())
            .map_or(Ok(Resources::default()), |map| {
                resources_from_map(map).map_err(|e| e.within("status.capacity"))
            }),
    }
    .map_err(in_node)?;

    Ok(NodeBasics {
        labels: node.metadata.labels.clone().unwrap_or_default(),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        ready,
        taints,
        allocatable,
        name,
    })
}

/// The node's energy level from its `label_key` label (`energy-status=well-powered`); `None`
/// without the label, an error for a value that is not a level.
pub fn energy_label(
    labels: &BTreeMap<String, String>,
    label_key: &str,
) -> Option<Result<EnergyLevel, UnknownEnergyLevel>> {
    labels.get(label_key).map(|value| value.parse())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web-1", "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn node(value: Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    fn spec(value: Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    fn container(name: &str, requests: Value) -> Value {
        json!({"name": name, "resources": {"requests": requests}})
    }

    fn sidecar(name: &str, requests: Value) -> Value {
        json!({"name": name, "restartPolicy": "Always", "resources": {"requests": requests}})
    }

    fn cpu_mem(cpu: u64, memory: u64) -> Resources {
        Resources {
            cpu_millicores: cpu,
            memory_bytes: memory,
            pods: 1,
            ..Default::default()
        }
    }

    fn quantities(value: Value) -> BTreeMap<String, Quantity> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn resource_maps_convert_to_canonical_units() {
        let resources = resources_from_map(&quantities(json!({
            "cpu": "1.5",
            "memory": "1Gi",
            "ephemeral-storage": "10G",
            "pods": "110",
            "nvidia.com/gpu": "2",
            "hugepages-2Mi": "64Mi",
            "example.com/zero": "0",
            "storage": "garbage is ignored",
        })))
        .unwrap();
        assert_eq!(
            resources,
            Resources {
                cpu_millicores: 1500,
                memory_bytes: 1 << 30,
                ephemeral_storage_bytes: 10_000_000_000,
                pods: 110,
                extended: BTreeMap::from([
                    ("hugepages-2Mi".to_string(), 64 << 20),
                    ("nvidia.com/gpu".to_string(), 2),
                ]),
            }
        );
        let err = resources_from_map(&quantities(json!({"memory": "1GB"}))).unwrap_err();
        assert_eq!(err.to_string(), r#"memory: "1GB" is not a quantity"#);
    }

    #[test]
    fn containers_add_up() {
        let requests = effective_requests(&spec(json!({"containers": [
            container("a", json!({"cpu": "100m", "memory": "64Mi"})),
            container("b", json!({"cpu": "250m", "nvidia.com/gpu": "1"})),
            {"name": "c"},
        ]})))
        .unwrap();
        let mut expected = cpu_mem(350, 64 << 20);
        expected.extended.insert("nvidia.com/gpu".into(), 1);
        assert_eq!(requests, expected);
    }

    #[test]
    fn a_bigger_init_container_sets_the_floor_per_resource() {
        let requests = effective_requests(&spec(json!({
            "initContainers": [
                container("migrate", json!({"cpu": "2", "memory": "10Mi"})),
                container("warm", json!({"cpu": "500m", "memory": "1Gi"})),
            ],
            "containers": [
                container("a", json!({"cpu": "100m", "memory": "64Mi"})),
                container("b", json!({"cpu": "100m", "memory": "64Mi"})),
            ],
        })))
        .unwrap();
        assert_eq!(requests, cpu_mem(2000, 1 << 30));
    }

    #[test]
    fn sidecars_run_alongside_later_init_containers_and_the_containers() {
        // KEP-753's example shape: sidecar s1, init i1, sidecar s2, init i2, then containers.
        let requests = effective_requests(&spec(json!({
            "initContainers": [
                sidecar("s1", json!({"cpu": "100m"})),
                container("i1", json!({"cpu": "1"})),
                sidecar("s2", json!({"cpu": "200m"})),
                container("i2", json!({"cpu": "500m"})),
            ],
            "containers": [container("app", json!({"cpu": "300m"}))],
        })))
        .unwrap();
        // Init peak: i1 with s1 = 1100m; i2 with s1+s2 = 800m. Running: 300 + 100 + 200 = 600m.
        assert_eq!(requests.cpu_millicores, 1100);

        let requests = effective_requests(&spec(json!({
            "initContainers": [
                sidecar("proxy", json!({"cpu": "1"})),
                container("i1", json!({"cpu": "1500m"})),
            ],
            "containers": [container("app", json!({"cpu": "1"}))],
        })))
        .unwrap();
        // i1 runs beside the sidecar: 1.5 + 1 = 2.5 beats the running sum of 1 + 1 = 2.
        assert_eq!(requests.cpu_millicores, 2500);

        let requests = effective_requests(&spec(json!({
            "initContainers": [
                container("i0", json!({"cpu": "1"})),
                sidecar("proxy", json!({"cpu": "1"})),
            ],
            "containers": [container("app", json!({"cpu": "1"}))],
        })))
        .unwrap();
        // i0 runs before the sidecar starts: the running sum of 2 wins.
        assert_eq!(requests.cpu_millicores, 2000);
    }

    #[test]
    fn overhead_is_added_and_pods_is_one() {
        let requests = effective_requests(&spec(json!({
            "containers": [container("a", json!({"cpu": "100m", "memory": "64Mi"}))],
            "initContainers": [container("i", json!({"cpu": "1"}))],
            "overhead": {"cpu": "250m", "memory": "120Mi", "pods": "5"},
        })))
        .unwrap();
        assert_eq!(requests, cpu_mem(1250, (64 + 120) << 20));
    }

    #[test]
    fn limits_stand_in_for_missing_requests() {
        let requests = effective_requests(&spec(json!({"containers": [
            {"name": "limits-only", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}},
            {"name": "mixed", "resources": {
                "requests": {"cpu": "100m"},
                "limits": {"cpu": "4", "memory": "256Mi"},
            }},
        ]})))
        .unwrap();
        assert_eq!(requests, cpu_mem(2100, (1 << 30) + (256 << 20)));
    }

    #[test]
    fn pod_level_requests_override_cpu_and_memory() {
        let requests = effective_requests(&spec(json!({
            "resources": {"requests": {"cpu": "3", "nvidia.com/gpu": "9"}},
            "containers": [container("a", json!({"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}))],
            "overhead": {"cpu": "100m"},
        })))
        .unwrap();
        // cpu from the pod level, memory still from the containers; an extended resource is not
        // a pod-level resource, so the containers' gpu stands.
        let mut expected = cpu_mem(3100, 1 << 30);
        expected.extended.insert("nvidia.com/gpu".into(), 1);
        assert_eq!(requests, expected);
    }

    #[test]
    fn request_errors_name_the_pod_container_and_resource() {
        let err = pod_request(
            &pod(json!({"containers": [container("web", json!({"cpu": "12x"}))]})),
            100,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"pod default/web-1: spec.containers[web].resources.requests.cpu: "12x" is not a quantity"#
        );

        let err = effective_requests(&spec(json!({
            "containers": [],
            "initContainers": [{"name": "init", "resources": {"limits": {"memory": "-1Gi"}}}],
        })))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"spec.initContainers[init].resources.limits.memory: "-1Gi" is negative"#
        );

        let err = effective_requests(&spec(json!({
            "containers": [],
            "overhead": {"cpu": "lots"},
        })))
        .unwrap_err();
        assert_eq!(err.field, "spec.overhead.cpu");
        assert_eq!(err.object, None);
    }

    #[test]
    fn pod_request_reads_identity_priority_and_selector() {
        let request = pod_request(
            &pod(json!({
                "priority": 1000,
                "nodeSelector": {"zone": "a"},
                "containers": [container("a", json!({"cpu": "300m"}))],
            })),
            100,
        )
        .unwrap();
        assert_eq!(request.namespace, "default");
        assert_eq!(request.name, "web-1");
        assert_eq!(request.uid, "u-1");
        assert_eq!(request.priority, 1000);
        assert_eq!(request.pricing_cpu_millicores, 300);
        assert_eq!(
            request.node_selector,
            BTreeMap::from([("zone".to_string(), "a".to_string())])
        );
        assert!(request.required_node_affinity.is_empty());
        assert!(request.tolerations.is_empty());
        assert!(request.host_ports.is_empty());

        let best_effort = pod_request(&pod(json!({"containers": [{"name": "a"}]})), 100).unwrap();
        assert_eq!(best_effort.priority, 0);
        assert_eq!(best_effort.requests, cpu_mem(0, 0));
        assert_eq!(best_effort.pricing_cpu_millicores, 100);
    }

    #[test]
    fn constraints_keep_the_hard_ones_and_every_claim() {
        let request = pod_request(
            &pod(json!({
                "containers": [{"name": "a"}],
                "schedulingGates": [{"name": "example.com/quota"}],
                "affinity": {
                    "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 1, "podAffinityTerm": {"topologyKey": "zone"}},
                    ]},
                    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname",
                         "labelSelector": {"matchLabels": {"app": "web"}}},
                    ]},
                },
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"},
                    {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                     "whenUnsatisfiable": "DoNotSchedule"},
                ],
                "volumes": [
                    {"name": "config", "configMap": {"name": "c"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-1"}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                ],
            })),
            100,
        )
        .unwrap();
        let unknown = |name: &str| VolumeClaim {
            name: name.into(),
            state: ClaimState::Unknown,
        };
        assert_eq!(
            request.constraints,
            PodConstraints {
                scheduling_gates: vec!["example.com/quota".into()],
                required_pod_affinity: false,
                required_pod_anti_affinity: true,
                hard_topology_spread: vec!["kubernetes.io/hostname".into()],
                volume_claims: vec![unknown("data-web-1"), unknown("web-1-scratch")],
            }
        );
        let plain = pod_request(&pod(json!({"containers": [{"name": "a"}]})), 100).unwrap();
        assert_eq!(plain.constraints, PodConstraints::default());
    }

    #[test]
    fn required_node_affinity_converts_every_operator() {
        let request = pod_request(
            &pod(json!({
                "containers": [{"name": "a"}],
                "affinity": {"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [
                            {"key": "zone", "operator": "In", "values": ["a", "b"]},
                            {"key": "arch", "operator": "NotIn", "values": ["arm64"]},
                            {"key": "gpu", "operator": "Exists"},
                            {"key": "spot", "operator": "DoesNotExist"},
                        ]},
                        {
                            "matchExpressions": [
                                {"key": "cores", "operator": "Gt", "values": ["8"]},
                                {"key": "age", "operator": "Lt", "values": ["30"]},
                            ],
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": ["n1"]},
                            ],
                        },
                        {},
                    ]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 1, "preference": {"matchExpressions": [
                            {"key": "x", "operator": "Bogus"},
                        ]}},
                    ],
                }},
            })),
            100,
        )
        .unwrap();
        let req = |key: &str, operator, values: &[&str]| SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        use SelectorOperator::*;
        assert_eq!(
            request.required_node_affinity,
            vec![
                NodeSelectorTerm {
                    match_expressions: vec![
                        req("zone", In, &["a", "b"]),
                        req("arch", NotIn, &["arm64"]),
                        req("gpu", Exists, &[]),
                        req("spot", DoesNotExist, &[]),
                    ],
                    match_fields: vec![],
                },
                NodeSelectorTerm {
                    match_expressions: vec![req("cores", Gt, &["8"]), req("age", Lt, &["30"])],
                    match_fields: vec![req("metadata.name", In, &["n1"])],
                },
                // An empty term is kept: it matches no node.
                NodeSelectorTerm::default(),
            ]
        );
    }

    #[test]
    fn unknown_affinity_operator_is_named() {
        let err = pod_request(
            &pod(json!({
                "containers": [{"name": "a"}],
                "affinity": {"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {},
                        {"matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": ["n1"]},
                            {"key": "metadata.name", "operator": "Matches", "values": ["n*"]},
                        ]},
                    ]},
                }},
            })),
            100,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod default/web-1: spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution\
             .nodeSelectorTerms[1].matchFields[1].operator: unknown operator \"Matches\""
        );
    }

    #[test]
    fn tolerations_default_operator_and_effect() {
        let request = pod_request(
            &pod(json!({
                "containers": [{"name": "a"}],
                "tolerations": [
                    {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                    {"operator": "Exists"},
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                     "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "soft", "operator": "Equal", "value": "x", "effect": "PreferNoSchedule"},
                ],
            })),
            100,
        )
        .unwrap();
        assert_eq!(
            request.tolerations,
            vec![
                Toleration {
                    key: "dedicated".into(),
                    operator: TolerationOperator::Equal,
                    value: "gpu".into(),
                    effect: Some(TaintEffect::NoSchedule),
                },
                Toleration {
                    key: String::new(),
                    operator: TolerationOperator::Exists,
                    value: String::new(),
                    effect: None,
                },
                Toleration {
                    key: "node.kubernetes.io/not-ready".into(),
                    operator: TolerationOperator::Exists,
                    value: String::new(),
                    effect: Some(TaintEffect::NoExecute),
                },
                Toleration {
                    key: "soft".into(),
                    operator: TolerationOperator::Equal,
                    value: "x".into(),
                    effect: Some(TaintEffect::PreferNoSchedule),
                },
            ]
        );
    }

    #[test]
    fn unknown_toleration_effect_or_operator_is_named() {
        let err = pod_request(
            &pod(json!({
                "containers": [{"name": "a"}],
                "tolerations": [{"operator": "Exists"}, {"key": "k", "effect": "NoWay"}],
            })),
            100,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"pod default/web-1: spec.tolerations[1].effect: unknown effect "NoWay""#
        );
        let err = pod_request(
            &pod(json!({"containers": [{"name": "a"}], "tolerations": [{"operator": "Lt"}]})),
            100,
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.tolerations[0].operator");
        assert_eq!(err.kind, ConvertErrorKind::UnknownOperator("Lt".into()));
    }

    #[test]
    fn host_ports_come_from_containers_and_sidecars() {
        let p = pod(json!({
            "initContainers": [
                {"name": "setup", "ports": [{"containerPort": 1, "hostPort": 1}]},
                {"name": "proxy", "restartPolicy": "Always",
                 "ports": [{"containerPort": 15001, "hostPort": 15001, "protocol": "SCTP"}]},
            ],
            "containers": [
                {"name": "web", "ports": [
                    {"containerPort": 8080},
                    {"containerPort": 8080, "hostPort": 0},
                    {"containerPort": 8080, "hostPort": 80},
                    {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
                ]},
            ],
        }));
        let expected = vec![
            HostPort {
                host_ip: String::new(),
                protocol: Protocol::Sctp,
                port: 15001,
            },
            HostPort {
                host_ip: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
            },
            HostPort {
                host_ip: "10.0.0.1".into(),
                protocol: Protocol::Udp,
                port: 53,
            },
        ];
        assert_eq!(host_ports(&p).unwrap(), expected);
        assert_eq!(pod_request(&p, 100).unwrap().host_ports, expected);
    }

    #[test]
    fn bad_host_ports_are_named() {
        let err = host_ports(&pod(json!({"containers": [
            {"name": "web", "ports": [{"containerPort": 80, "hostPort": 80, "protocol": "QUIC"}]},
        ]})))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"pod default/web-1: spec.containers[web].ports[0].protocol: unknown protocol "QUIC""#
        );
        let err = host_ports(&pod(json!({"containers": [
            {"name": "web", "ports": [{"containerPort": 80}, {"containerPort": 80, "hostPort": 70000}]},
        ]})))
        .unwrap_err();
        assert_eq!(err.field, "spec.containers[web].ports[1].hostPort");
        assert_eq!(err.kind, ConvertErrorKind::PortOutOfRange(70000));
    }

    #[test]
    fn terminal_phases() {
        let with_phase = |phase: Option<&str>| {
            let mut p = pod(json!({"containers": []}));
            if let Some(phase) = phase {
                p.status = Some(serde_json::from_value(json!({"phase": phase})).unwrap());
            }
            is_terminal(&p)
        };
        assert!(with_phase(Some("Succeeded")));
        assert!(with_phase(Some("Failed")));
        assert!(!with_phase(Some("Running")));
        assert!(!with_phase(Some("Pending")));
        assert!(!with_phase(Some("Unknown")));
        assert!(!with_phase(None));
    }

    #[test]
    fn node_basics_reads_labels_taints_readiness_and_allocatable() {
        let basics = node_basics(&node(json!({
            "metadata": {"name": "n1", "labels": {"energy-status": "vulnerable", "zone": "a"}},
            "spec": {"unschedulable": true, "taints": [
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": "soft", "effect": "PreferNoSchedule"},
            ]},
            "status": {
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                "allocatable": {"cpu": "7800m", "memory": "31Gi", "pods": "110"},
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True"},
                ],
            },
        })))
        .unwrap();
        assert_eq!(
            basics,
            NodeBasics {
                name: "n1".into(),
                labels: BTreeMap::from([
                    ("energy-status".into(), "vulnerable".into()),
                    ("zone".into(), "a".into()),
                ]),
                unschedulable: true,
                ready: true,
                taints: vec![
                    Taint {
                        key: "dedicated".into(),
                        value: "gpu".into(),
                        effect: TaintEffect::NoSchedule,
                    },
                    Taint {
                        key: "soft".into(),
                        value: String::new(),
                        effect: TaintEffect::PreferNoSchedule,
                    },
                ],
                allocatable: Resources {
                    cpu_millicores: 7800,
                    memory_bytes: 31 << 30,
                    pods: 110,
                    ..Default::default()
                },
            }
        );
        assert_eq!(
            energy_label(&basics.labels, "energy-status"),
            Some(Ok(EnergyLevel::Vulnerable))
        );
    }

    #[test]
    fn node_readiness_needs_a_true_ready_condition() {
        let ready = |conditions: Value| {
            node_basics(&node(json!({
                "metadata": {"name": "n1"},
                "status": {"conditions": conditions},
            })))
            .unwrap()
            .ready
        };
        assert!(ready(json!([{"type": "Ready", "status": "True"}])));
        assert!(!ready(json!([{"type": "Ready", "status": "False"}])));
        assert!(!ready(json!([{"type": "Ready", "status": "Unknown"}])));
        assert!(!ready(json!([{"type": "DiskPressure", "status": "True"}])));
        assert!(!ready(json!([])));
        let bare = node_basics(&node(json!({"metadata": {"name": "n1"}}))).unwrap();
        assert!(!bare.ready);
        assert!(!bare.unschedulable);
        assert_eq!(bare.allocatable, Resources::default());
    }

    #[test]
    fn allocatable_falls_back_to_capacity() {
        for status in [
            json!({"capacity": {"cpu": "4", "memory": "8Gi"}}),
            json!({"capacity": {"cpu": "4", "memory": "8Gi"}, "allocatable": {}}),
        ] {
            let basics = node_basics(&node(json!({"metadata": {"name": "n1"}, "status": status})));
            assert_eq!(
                basics.unwrap().allocatable,
                Resources {
                    cpu_millicores: 4000,
                    memory_bytes: 8 << 30,
                    ..Default::default()
                }
            );
        }
    }

    #[test]
    fn node_errors_name_the_node_and_field() {
        let err = node_basics(&node(json!({
            "metadata": {"name": "n1"},
            "status": {"allocatable": {"cpu": "4", "memory": "8 Gi"}},
        })))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"node n1: status.allocatable.memory: "8 Gi" is not a quantity"#
        );
        let err = node_basics(&node(json!({
            "metadata": {"name": "n1"},
            "status": {"capacity": {"ephemeral-storage": "1e400"}},
        })))
        .unwrap_err();
        assert_eq!(err.field, "status.capacity.ephemeral-storage");
        let err = node_basics(&node(json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": [{"key": "k", "effect": "NoScheduleAtAll"}]},
        })))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"node n1: spec.taints[0].effect: unknown effect "NoScheduleAtAll""#
        );
    }

    #[test]
    fn energy_labels_parse_all_levels() {
        let labels =
            |value: &str| BTreeMap::from([("energy-status".to_string(), value.to_string())]);
        for (value, level) in [
            ("well-powered", EnergyLevel::WellPowered),
            ("vulnerable", EnergyLevel::Vulnerable),
            ("low-powered", EnergyLevel::LowPowered),
            ("powerless", EnergyLevel::Powerless),
        ] {
            assert_eq!(
                energy_label(&labels(value), "energy-status"),
                Some(Ok(level))
            );
        }
        assert_eq!(energy_label(&labels("well-powered"), "other-key"), None);
        assert_eq!(energy_label(&BTreeMap::new(), "energy-status"), None);
        let err = energy_label(&labels("charging"), "energy-status")
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("\"charging\""), "{err}");
    }

    #[test]
    fn a_bound_pod_says_who_recreates_it_and_what_an_eviction_would_lose() {
        let created = "2026-01-01T00:00:00Z";
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let owned: Pod = serde_json::from_value(json!({
            "metadata": {
                "namespace": "shop", "name": "web-abc-1", "uid": "u-1",
                "creationTimestamp": created,
                "labels": {"pod-template-hash": "abc"},
                "annotations": {"wattwise.io/offload": "false"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "o-0"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                     "uid": "o-1", "controller": true}
                ]
            },
            "spec": {
                "nodeName": "edge-4",
                "containers": [container("web", json!({"cpu": "250m"}))],
                "volumes": [{"name": "scratch", "emptyDir": {}}]
            }
        }))
        .unwrap();
        let b = bound_pod(&owned, 100, now).unwrap().unwrap();
        let web = Owner {
            kind: "ReplicaSet".into(),
            namespace: "shop".into(),
            name: "web-abc".into(),
        };
        assert_eq!(b.node, "edge-4");
        assert_eq!(b.owner.as_ref(), Some(&web));
        assert_eq!(b.age, std::time::Duration::from_secs(600));
        assert_eq!(b.request.requests.cpu_millicores, 250);
        assert!(b.local_storage && b.opted_out && !b.mirror);
        assert_eq!(
            replacement(&owned),
            Some(Replacement {
                owner: web,
                template: "abc".into()
            })
        );

        // Bare, mirror, unbound and leaving pods.
        let mut bare = pod(json!({"nodeName": "edge-4", "containers": []}));
        bare.metadata.annotations =
            Some([("kubernetes.io/config.mirror".to_string(), "x".to_string())].into());
        let b = bound_pod(&bare, 100, now).unwrap().unwrap();
        assert!(b.owner.is_none() && b.mirror && !b.local_storage && !b.opted_out);
        assert_eq!(replacement(&bare), None);
        assert!(bound_pod(&pod(json!({"containers": []})), 100, now)
            .unwrap()
            .is_none());
        let mut leaving = owned.clone();
        leaving.metadata.deletion_timestamp = owned.metadata.creation_timestamp.clone();
        assert!(bound_pod(&leaving, 100, now).unwrap().is_none());
    }
}
