//! The manifests in deploy/ against the real kube-apiserver: `kubectl apply` (a real apply with
//! strict validation, no dry run) creates every object; the objects agree with each other (config
//! paths, ports, selectors, the scheduler endpoint); RBAC grants the scheduler exactly what it
//! needs and the agent nothing (`kubectl auth can-i`); the ConfigMaps' configurations pass the
//! built binaries' `--check-config`; and the scheduler, running with a token of its own service
//! account and the ConfigMap's configuration, takes the Lease and binds the sample workload.
//!
//! Nothing here is skipped: a missing kubectl, etcd, kube-apiserver or binary fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::Value;
use wattwise_core::EnergyLevel;
use wattwise_testenv::control_plane::{ControlPlane, FakeNode, KubeScheduler, SchedulerExtender};
use wattwise_testenv::manifests::{base_dir, deploy_dir, mounted_volume};
use wattwise_testenv::process::{free_tcp_port, require_program, wait_until, ManagedProcess};
use wattwise_testenv::reports::{NodePowerSpec, ReportStream};
use wattwise_testenv::served::{check_config, workspace_binary};

const NS: &str = "wattwise";
const DEMO_NS: &str = "wattwise-demo";
const SCHEDULER_SA: &str = "system:serviceaccount:wattwise:wattwise-scheduler";
const AGENT_SA: &str = "system:serviceaccount:wattwise:wattwise-agent";

/// kubectl against the test control plane, with the admin kubeconfig.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(plane: &ControlPlane) -> Result<Self> {
        Ok(Self {
            bin: require_program("kubectl")?,
            kubeconfig: plane.kubeconfig_path().to_path_buf(),
        })
    }

    fn output(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .with_context(|| format!("running kubectl {}", args.join(" ")))
    }

    /// Runs kubectl and returns stdout; a non-zero exit is an error with stderr.
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply` (strict validation, a real apply) of one file or directory; the objects it
    /// reports as `kind.group/name`.
    fn apply(&self, path: &Path) -> Result<Vec<String>> {
        let path = path.to_str().context("non-UTF-8 path")?;
        let out = self.run(&["apply", "--validate=strict", "-o", "name", "-f", path])?;
        Ok(out.lines().map(str::to_string).collect())
    }

    fn get_json(&self, resource: &str, namespace: Option<&str>, name: &str) -> Result<Value> {
        // An empty name lists.
        let mut args = vec!["get", resource, "-o", "json"];
        if !name.is_empty() {
            args.insert(2, name);
        }
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        Ok(serde_json::from_str(&self.run(&args)?)?)
    }

    /// `kubectl auth can-i` as `user`: Ok(true) for "yes", Ok(false) for "no", an error for
    /// anything else (e.g. a resource type the server does not know, which would make a "no"
    /// meaningless).
    fn can_i(&self, user: &str, args: &[&str]) -> Result<bool> {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        let as_user = format!("--as={user}");
        full.push(&as_user);
        let out = self.output(&full)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("doesn't have a resource type") || stderr.contains("error") {
            bail!("kubectl {}: {stderr}", full.join(" "));
        }
        match stdout.split_whitespace().next() {
            Some("yes") => Ok(true),
            Some("no") => Ok(false),
            _ => bail!(
                "kubectl {}: unexpected answer {stdout:?} {stderr}",
                full.join(" ")
            ),
        }
    }

    /// The resource rules `kubectl auth can-i --list` shows for `user` in `namespace`:
    /// resource → (resource names, verbs).
    fn rules(&self, user: &str, namespace: &str) -> Result<BTreeMap<String, Vec<String>>> {
        let as_user = format!("--as={user}");
        let out = self.run(&["auth", "can-i", "--list", "-n", namespace, &as_user])?;
        let mut rules = BTreeMap::new();
        for line in out.lines().skip(1) {
            // Non-resource URL rows start with blanks; resource rows with the resource.
            if line.starts_with(char::is_whitespace) || line.trim().is_empty() {
                continue;
            }
            let resource = line.split_whitespace().next().unwrap_or_default();
            let groups: Vec<&str> = line
                .split('[')
                .skip(1)
                .filter_map(|g| g.split(']').next())
                .collect();
            // [non-resource URLs] [resource names] [verbs]
            let names = groups.get(1).copied().unwrap_or_default();
            let verbs = groups.last().copied().unwrap_or_default();
            rules
                .entry(resource.to_string())
                .or_insert_with(Vec::new)
                .push(format!("[{names}] [{verbs}]"));
        }
        Ok(rules)
    }
}

fn serves_policy_v1(kubectl: &Kubectl) -> Result<bool> {
    let versions = kubectl.run(&["api-versions"])?;
    Ok(versions.lines().any(|v| v.trim() == "policy/v1"))
}

/// What `kubectl apply -k` installs on this server: deploy/ (the base), or on a server without
/// policy/v1 (before 1.21; the test server is v1.20) the overlay deploy/overlays/pre-1.21,
/// which the README names for such clusters.
fn install_dir(kubectl: &Kubectl) -> Result<PathBuf> {
    if serves_policy_v1(kubectl)? {
        return Ok(deploy_dir());
    }
    eprintln!("server lacks policy/v1: installing deploy/overlays/pre-1.21");
    Ok(deploy_dir().join("overlays/pre-1.21"))
}

/// `overlay` of deploy/overlays/ as this server takes it: itself, or on a server without
/// policy/v1 a kustomization in `scratch` adding the component deploy/components/pre-1.21, as
/// deploy/README.md tells users of such clusters. Kustomize takes only relative paths, so
/// `scratch` must be on the repository's filesystem.
fn overlay_for(kubectl: &Kubectl, overlay: &str, scratch: &Path) -> Result<PathBuf> {
    let dir = deploy_dir().join("overlays").join(overlay);
    if serves_policy_v1(kubectl)? {
        return Ok(dir);
    }
    let up = |from: &Path, to: &Path| -> Result<String> {
        let (from, to) = (from.canonicalize()?, to.canonicalize()?);
        let common = from
            .ancestors()
            .find(|a| to.starts_with(a))
            .context("no common ancestor")?;
        let ups = from.strip_prefix(common)?.components().count();
        let down = to.strip_prefix(common)?;
        Ok(format!("{}{}", "../".repeat(ups), down.display()))
    };
    std::fs::write(
        scratch.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [{}]\ncomponents: [{}]\n",
            up(scratch, &dir)?,
            up(scratch, &deploy_dir().join("components/pre-1.21"))?
        ),
    )?;
    Ok(scratch.to_path_buf())
}

/// Installs wattwise as the README says (`kubectl apply -k`, strict validation, a real apply),
/// checks that applying again would change nothing (`kubectl diff -k`, a server-side dry run),
/// then applies examples/; returns every object kubectl reported.
fn apply_all(kubectl: &Kubectl) -> Result<BTreeSet<String>> {
    let dir = install_dir(kubectl)?;
    let dir = dir.to_str().context("a UTF-8 path")?;
    let mut applied: BTreeSet<String> = kubectl
        .run(&["apply", "--validate=strict", "-o", "name", "-k", dir])?
        .lines()
        .map(String::from)
        .collect();
    let diff = kubectl.output(&["diff", "-k", dir])?;
    ensure!(
        diff.status.success(),
        "kubectl diff -k {dir} after the apply ({}):\n{}{}",
        diff.status,
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    applied.extend(kubectl.apply(&deploy_dir().join("examples"))?);
    Ok(applied)
}

/// The base's kustomization lists every manifest in deploy/base/, so none is left out of
/// `kubectl apply -k deploy/`.
#[test]
fn the_kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(base_dir().join("kustomization.yaml")).unwrap();
    let kustomization: Value = serde_yaml::from_str(&text).unwrap();
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(base_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {v:#}"))
}

/// The file a workload's `--config=` argument names must be a key of the ConfigMap mounted at
/// its directory. Returns (ConfigMap name, key).
fn config_source(workload: &Value) -> (String, String) {
    let pod = &workload["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let path = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config="))
        .expect("a --config= argument");
    let (dir, key) = path.rsplit_once('/').unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("no volume mounted at {dir}"));
    let volume = mounted_volume(pod, mount);
    (
        str_at(volume, "/configMap/name").to_string(),
        key.to_string(),
    )
}

/// Container port names of a workload.
fn port_names(workload: &Value) -> BTreeMap<String, i64> {
    workload["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// A Service's selector must select the workload's pods and its named target ports exist.
fn assert_service_targets(service: &Value, workload: &Value) {
    let name = str_at(service, "/metadata/name");
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"].as_object().unwrap();
    assert!(!selector.is_empty(), "{name}: empty selector");
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "{name}: selector {k}={v} misses the pods");
    }
    let ports = port_names(workload);
    for p in service["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        assert!(
            ports.contains_key(target),
            "{name}: targetPort {target} is not a container port"
        );
    }
}

/// `key: value` of a top-level-or-nested YAML line in a config document (first occurrence).
fn yaml_value<'a>(doc: &'a str, key: &str) -> Option<&'a str> {
    doc.lines().find_map(|l| {
        let l = l.trim_start();
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.split(" #").next().unwrap().trim())
    })
}

/// The agent config with its commented-out LAN `bmc:` block in place of the active one.
fn lan_variant(agent_yaml: &str) -> String {
    let lines: Vec<&str> = agent_yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "# bmc:")
        .expect("a commented LAN `# bmc:` block");
    let lan: Vec<&str> = std::iter::once("bmc:")
        .chain(
            lines[start + 1..]
                .iter()
                .take_while(|l| l.starts_with("#   "))
                .map(|l| &l[2..]),
        )
        .collect();
    assert!(
        lan.iter().any(|l| l.trim() == "mode: lan"),
        "the commented block is the LAN variant: {lan:?}"
    );
    let active = lines
        .iter()
        .position(|l| *l == "bmc:")
        .expect("a bmc block");
    let end = lines[active + 1..]
        .iter()
        .position(|l| !l.starts_with(' '))
        .map_or(lines.len(), |i| active + 1 + i);
    let mut out: Vec<&str> = lines[..active].to_vec();
    out.extend(lan);
    out.extend_from_slice(&lines[end..]);
    out.join("\n") + "\n"
}

#[tokio::test]
async fn manifests_apply_and_rbac_grants_only_what_is_needed() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let kubectl = Kubectl::new(&plane)?;
    let dir = tempfile::tempdir()?;

    // A real apply of every file, in the documented order.
    let applied = apply_all(&kubectl)?;
    let mut expected: BTreeSet<String> = [
        "namespace/wattwise",
        "serviceaccount/wattwise-scheduler",
        "clusterrole.rbac.authorization.k8s.io/wattwise-scheduler",
        "clusterrolebinding.rbac.authorization.k8s.io/wattwise-scheduler",
        "role.rbac.authorization.k8s.io/wattwise-scheduler-leader-election",
        "rolebinding.rbac.authorization.k8s.io/wattwise-scheduler-leader-election",
        "configmap/wattwise-scheduler",
        "deployment.apps/wattwise-scheduler",
        "poddisruptionbudget.policy/wattwise-scheduler",
        "service/wattwise-scheduler",
        "service/wattwise-scheduler-metrics",
        "serviceaccount/wattwise-agent",
        "configmap/wattwise-agent",
        "secret/wattwise-agent-bmc",
        "daemonset.apps/wattwise-agent",
        "namespace/wattwise-demo",
    ]
    .map(String::from)
    .into();
    let demo_pods = [
        "web-1", "web-2", "web-3", "web-4", "api-1", "api-2", "api-3", "cache-1", "batch-1",
        "batch-2", "batch-3", "tools",
    ];
    expected.extend(demo_pods.iter().map(|p| format!("pod/{p}")));
    assert_eq!(applied, expected, "objects kubectl applied");

    // Every object exists on the server (read back, not taken from kubectl's word).
    for object in &expected {
        let (kind, name) = object.split_once('/').unwrap();
        let namespaced = !matches!(
            kind,
            "namespace"
                | "clusterrole.rbac.authorization.k8s.io"
                | "clusterrolebinding.rbac.authorization.k8s.io"
        );
        let ns = if kind == "pod" { DEMO_NS } else { NS };
        let v = kubectl.get_json(kind, namespaced.then_some(ns), name)?;
        assert_eq!(str_at(&v, "/metadata/name"), name, "{object}");
    }

    // Validation is real: a typo'd field is rejected, not silently dropped.
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo, namespace: wattwise}\ndatta: {a: b}\n",
    )?;
    let err = kubectl.apply(&typo).unwrap_err().to_string();
    assert!(err.contains("datta"), "{err}");

    // The objects agree with each other.
    let scheduler = kubectl.get_json("deployment", Some(NS), "wattwise-scheduler")?;
    let agent = kubectl.get_json("daemonset", Some(NS), "wattwise-agent")?;
    assert_eq!(scheduler["spec"]["replicas"], 2);
    let headless = kubectl.get_json("service", Some(NS), "wattwise-scheduler")?;
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "gRPC Service is headless"
    );
    assert_eq!(headless["spec"]["ports"][0]["name"], "grpc");
    assert_eq!(headless["spec"]["ports"][0]["port"], 9201);
    assert_service_targets(&headless, &scheduler);
    let metrics = kubectl.get_json("service", Some(NS), "wattwise-scheduler-metrics")?;
    assert_service_targets(&metrics, &scheduler);
    let pdb = kubectl.get_json("poddisruptionbudget", Some(NS), "wattwise-scheduler")?;
    let labels = &scheduler["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "PDB selector {k}={v}");
    }
    for (workload, sa, probe_port) in [
        (&scheduler, "wattwise-scheduler", "metrics"),
        (&agent, "wattwise-agent", "metrics"),
    ] {
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], sa);
        let c = &pod["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], probe_port);
        assert!(port_names(workload).contains_key(probe_port));
        for r in ["requests", "limits"] {
            for k in ["cpu", "memory"] {
                assert!(c["resources"][r][k].is_string(), "{sa}: resources.{r}.{k}");
            }
        }
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{sa}");
    }
    let sched_pod = &scheduler["spec"]["template"]["spec"];
    assert_eq!(sched_pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        sched_pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        sched_pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            [0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let env: Vec<(&str, &str)> = sched_pod["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                str_at(e, "/name"),
                str_at(e, "/valueFrom/fieldRef/fieldPath"),
            )
        })
        .collect();
    assert!(env.contains(&("POD_NAME", "metadata.name")), "{env:?}");
    assert!(
        env.contains(&("POD_NAMESPACE", "metadata.namespace")),
        "{env:?}"
    );

    let agent_pod = &agent["spec"]["template"]["spec"];
    assert_eq!(agent_pod["automountServiceAccountToken"], false);
    let agent_sa = kubectl.get_json("serviceaccount", Some(NS), "wattwise-agent")?;
    assert_eq!(agent_sa["automountServiceAccountToken"], false);
    let agent_env = &agent_pod["containers"][0]["env"][0];
    assert_eq!(agent_env["name"], "NODE_NAME");
    assert_eq!(
        agent_env["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let ipmi = agent_pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["hostPath"]["path"] == "/dev/ipmi0")
        .expect("hostPath /dev/ipmi0");
    assert_eq!(ipmi["hostPath"]["type"], "CharDevice");
    assert!(
        agent_pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "the agent tolerates every taint"
    );
    let annotations = &agent["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"].as_str().unwrap(),
        port_names(&agent)["metrics"].to_string()
    );

    // The sample workload: bare pods for wattwise, one of them without a CPU request.
    let pods = kubectl.get_json("pods", Some(DEMO_NS), "")?;
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), demo_pods.len());
    for p in items {
        assert_eq!(
            p["spec"]["schedulerName"], "wattwise",
            "{}",
            p["metadata"]["name"]
        );
    }
    assert!(items
        .iter()
        .any(|p| p["spec"]["containers"][0]["resources"]["requests"]["cpu"].is_null()));

    // RBAC: the scheduler can do what it needs …
    let sched = |args: &[&str]| kubectl.can_i(SCHEDULER_SA, args);
    for args in [
        &["get", "nodes"][..],
        &["list", "nodes"],
        &["watch", "nodes"],
        // The energy adapter's label and annotations.
        &["patch", "nodes"],
        &["patch", "nodes/edge-1"],
        &["get", "pods", "-n", DEMO_NS],
        &["list", "pods", "--all-namespaces"],
        &["watch", "pods", "--all-namespaces"],
        &["create", "pods", "--subresource=binding", "-n", DEMO_NS],
        // The offloader's evictions (policy/v1 and v1beta1 alike: one core subresource).
        &["create", "pods", "--subresource=eviction", "-n", DEMO_NS],
        &[
            "create",
            "pods",
            "--subresource=eviction",
            "--all-namespaces",
        ],
        &["list", "persistentvolumeclaims", "--all-namespaces"],
        &["watch", "persistentvolumeclaims", "--all-namespaces"],
        &["list", "storageclasses.storage.k8s.io"],
        &["watch", "storageclasses.storage.k8s.io"],
        &["create", "events.events.k8s.io", "-n", DEMO_NS],
        &["create", "events", "-n", DEMO_NS],
        &["create", "leases.coordination.k8s.io", "-n", NS],
        &[
            "get",
            "leases.coordination.k8s.io/wattwise-scheduler",
            "-n",
            NS,
        ],
        &[
            "update",
            "leases.coordination.k8s.io/wattwise-scheduler",
            "-n",
            NS,
        ],
    ] {
        assert!(sched(args)?, "scheduler must be allowed: {args:?}");
    }
    // … and nothing else it could abuse.
    for args in [
        &["delete", "pods", "-n", DEMO_NS][..],
        &["create", "pods", "-n", DEMO_NS],
        &["update", "pods", "-n", DEMO_NS],
        &["patch", "pods", "-n", DEMO_NS],
        &["update", "pods", "--subresource=status", "-n", DEMO_NS],
        &["delete", "pods", "--subresource=eviction", "-n", DEMO_NS],
        &["get", "poddisruptionbudgets.policy", "-n", DEMO_NS],
        &["get", "secrets", "-n", NS],
        &["list", "secrets", "--all-namespaces"],
        &["get", "configmaps", "-n", NS],
        &["update", "nodes"],
        &["create", "nodes"],
        &["patch", "nodes", "--subresource=status"],
        &["update", "nodes", "--subresource=status"],
        &["get", "persistentvolumeclaims", "-n", DEMO_NS],
        &["create", "persistentvolumeclaims", "-n", DEMO_NS],
        &["update", "persistentvolumeclaims", "-n", DEMO_NS],
        &[
            "update",
            "persistentvolumeclaims",
            "--subresource=status",
            "-n",
            DEMO_NS,
        ],
        &["delete", "persistentvolumeclaims", "-n", DEMO_NS],
        &["list", "persistentvolumes"],
        &["update", "storageclasses.storage.k8s.io"],
        &["delete", "nodes"],
        &["delete", "events", "-n", DEMO_NS],
        &[
            "update",
            "leases.coordination.k8s.io/kube-scheduler",
            "-n",
            NS,
        ],
        &[
            "delete",
            "leases.coordination.k8s.io/wattwise-scheduler",
            "-n",
            NS,
        ],
        &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
        &[
            "update",
            "leases.coordination.k8s.io/wattwise-scheduler",
            "-n",
            "kube-system",
        ],
        &["create", "serviceaccounts", "--subresource=token", "-n", NS],
        &["*", "*"],
    ] {
        assert!(!sched(args)?, "scheduler must be denied: {args:?}");
    }
    // The complete list of resource rules, beyond what every authenticated user may do.
    let everyone = [
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
        "selfsubjectreviews.authentication.k8s.io",
    ];
    let mut rules = kubectl.rules(SCHEDULER_SA, NS)?;
    rules.retain(|r, _| !everyone.contains(&r.as_str()));
    let rules: BTreeMap<&str, Vec<&str>> = rules
        .iter()
        .map(|(r, v)| (r.as_str(), v.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        rules,
        BTreeMap::from([
            ("nodes", vec!["[] [get list watch patch]"]),
            ("pods", vec!["[] [get list watch]"]),
            ("pods/binding", vec!["[] [create]"]),
            ("pods/eviction", vec!["[] [create]"]),
            ("persistentvolumeclaims", vec!["[] [list watch]"]),
            ("storageclasses.storage.k8s.io", vec!["[] [list watch]"]),
            ("events", vec!["[] [create]"]),
            ("events.events.k8s.io", vec!["[] [create]"]),
            (
                "leases.coordination.k8s.io",
                vec!["[] [create]", "[wattwise-scheduler] [get update]"]
            ),
        ]),
        "the scheduler's rules in its namespace"
    );

    // The agent can do nothing at all.
    let agent_can = |args: &[&str]| kubectl.can_i(AGENT_SA, args);
    for args in [
        &["get", "nodes"][..],
        &["get", "pods", "-n", NS],
        &["list", "pods", "--all-namespaces"],
        &["create", "pods", "--subresource=binding", "-n", DEMO_NS],
        &["get", "secrets", "-n", NS],
        &["get", "configmaps", "-n", NS],
        &["create", "events", "-n", NS],
        &[
            "get",
            "leases.coordination.k8s.io/wattwise-scheduler",
            "-n",
            NS,
        ],
        &["*", "*"],
    ] {
        assert!(!agent_can(args)?, "agent must be denied: {args:?}");
    }
    for ns in [NS, DEMO_NS, "default"] {
        let extra: Vec<String> = kubectl
            .rules(AGENT_SA, ns)?
            .into_keys()
            .filter(|r| !everyone.contains(&r.as_str()))
            .collect();
        assert!(extra.is_empty(), "agent has rules in {ns}: {extra:?}");
    }

    // The ConfigMaps' configurations, as the server stores them, pass --check-config. The agent's
    // names a model in the agent image (Dockerfile.agent copies models/*.onnx there;
    // tests/tests/images.rs checks this configuration inside the image): here the same file
    // comes from the repository through --model.
    let agent_bin = workspace_binary("wattwise-agent")?;
    let scheduler_bin = workspace_binary("wattwise-scheduler")?;
    let mut docs = BTreeMap::new();
    for workload in [&scheduler, &agent] {
        let (cm, key) = config_source(workload);
        let config_map = kubectl.get_json("configmap", Some(NS), &cm)?;
        let doc = config_map["data"][&key]
            .as_str()
            .with_context(|| format!("ConfigMap {cm} has no key {key}"))?
            .to_string();
        docs.insert(key, doc);
    }
    let agent_doc = &docs["agent.yaml"];
    let scheduler_doc = &docs["scheduler.yaml"];
    let image_model = yaml_value(agent_doc.split("\nmodel:").nth(1).unwrap(), "path").unwrap();
    let model_name = image_model
        .strip_prefix("/usr/share/wattwise/models/")
        .unwrap_or_else(|| {
            panic!("model.path {image_model} is not in the image's model directory")
        });
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(model_name);
    assert!(model.is_file(), "{} is not shipped", model.display());
    let model_arg = ["--model", model.to_str().unwrap()];
    for (binary, key, args) in [
        (&scheduler_bin, "scheduler.yaml", &[][..]),
        (&agent_bin, "agent.yaml", &model_arg[..]),
    ] {
        let (ok, out) = check_config(binary, &docs[key], dir.path(), key, args)?;
        assert!(ok && out.contains("configuration is valid"), "{key}: {out}");
    }

    // The commented LAN variant is a valid configuration too.
    let lan = lan_variant(agent_doc);
    let (ok, out) = check_config(&agent_bin, &lan, dir.path(), "agent-lan.yaml", &model_arg)?;
    assert!(ok, "LAN variant: {out}\n{lan}");
    // … and its password file is where the Secret is mounted.
    let password_file = yaml_value(&lan, "password_file").unwrap();
    let (secret_dir, secret_key) = password_file.rsplit_once('/').unwrap();
    let mount = agent_pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == secret_dir)
        .expect("the BMC Secret is mounted where password_file points");
    let volume = agent_pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let secret_name = str_at(volume, "/secret/secretName");
    let secret = kubectl.get_json("secret", Some(NS), secret_name)?;
    assert!(
        secret["data"][secret_key].is_string(),
        "Secret {secret_name} key {secret_key}"
    );

    // A typo'd key fails, naming the key.
    for (binary, doc, args, from, to) in [
        (
            &agent_bin,
            agent_doc,
            &model_arg[..],
            "sdr_check_interval:",
            "sdr_check_intervall:",
        ),
        (
            &scheduler_bin,
            scheduler_doc,
            &[][..],
            "unschedulable_retry:",
            "unschedulable_retries:",
        ),
    ] {
        assert!(doc.contains(from));
        let (ok, out) = check_config(
            binary,
            &doc.replacen(from, to, 1),
            dir.path(),
            "typo.yaml",
            args,
        )?;
        let key = to.trim_end_matches(':');
        assert!(!ok, "{key} was accepted: {out}");
        assert!(out.contains(key), "the error names {key}: {out}");
        assert!(!out.contains("configuration is valid"), "{out}");
    }

    // The names that tie the pieces together.
    let endpoint = format!(
        "{}.{}.svc:{}",
        str_at(&headless, "/metadata/name"),
        NS,
        headless["spec"]["ports"][0]["port"]
    );
    assert!(
        agent_doc.contains(&format!("endpoints: [\"{endpoint}\"]")),
        "the agent streams to the headless Service {endpoint}"
    );
    let grpc_listen = yaml_value(scheduler_doc.split("grpc:").nth(1).unwrap(), "listen").unwrap();
    assert!(
        grpc_listen.ends_with(&format!(":{}\"", port_names(&scheduler)["grpc"])),
        "scheduler grpc.listen {grpc_listen} is the container port"
    );
    let metrics_listen = yaml_value(agent_doc.split("metrics:").nth(1).unwrap(), "listen").unwrap();
    assert!(
        metrics_listen.ends_with(&format!(":{}\"", port_names(&agent)["metrics"])),
        "agent metrics.listen {metrics_listen} is the container port"
    );
    assert_eq!(
        yaml_value(scheduler_doc, "lease_name"),
        Some("wattwise-scheduler")
    );
    assert_eq!(
        yaml_value(scheduler_doc, "scheduler_name"),
        Some("wattwise")
    );
    Ok(())
}

/// A kubeconfig that authenticates with `token` (a service account's).
fn token_kubeconfig(plane: &ControlPlane, token: &str, path: &Path) -> Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: u\n  user:\n    token: {token}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
             current-context: c\n",
            plane.server_url(),
            plane.ca_pem_path().display()
        ),
    )?;
    Ok(())
}

/// What a replica of the installed Deployment runs with, written to `dir`: a kubeconfig with a
/// token of its service account (TokenRequest), nothing more, and its ConfigMap's configuration
/// as the server stores it.
fn scheduler_files(
    plane: &ControlPlane,
    kubectl: &Kubectl,
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let token = kubectl
        .run(&[
            "create",
            "token",
            "wattwise-scheduler",
            "-n",
            NS,
            "--duration=1h",
        ])?
        .trim()
        .to_string();
    let kubeconfig = dir.join("scheduler.kubeconfig");
    token_kubeconfig(plane, &token, &kubeconfig)?;
    let config_map = kubectl.get_json("configmap", Some(NS), "wattwise-scheduler")?;
    let config = dir.join("scheduler.yaml");
    std::fs::write(&config, str_at(&config_map, "/data/scheduler.yaml"))?;
    Ok((kubeconfig, config))
}

#[tokio::test]
async fn the_scheduler_runs_with_exactly_the_manifests_rbac_and_config() -> Result<()> {
    let plane = ControlPlane::start().await?;
    let kubectl = Kubectl::new(&plane)?;
    let dir = tempfile::tempdir()?;
    apply_all(&kubectl)?;
    for name in ["node-a", "node-b", "node-c"] {
        plane
            .create_ready_node(&FakeNode::new(name).cpu(8000))
            .await?;
    }

    let (kubeconfig, config) = scheduler_files(&plane, &kubectl, dir.path())?;

    // As the Deployment runs it (args and downward-API env), on loopback ports.
    let metrics = format!("127.0.0.1:{}", free_tcp_port()?);
    let grpc: std::net::SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
    let mut cmd = Command::new(workspace_binary("wattwise-scheduler")?);
    cmd.arg(format!("--config={}", config.display()))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg(format!("--grpc-listen={grpc}"))
        .arg(format!("--metrics-listen={metrics}"))
        .env("POD_NAME", "wattwise-scheduler-test-0")
        .env("POD_NAMESPACE", NS)
        .env("RUST_LOG", "info,wattwise_scheduler=debug")
        .env_remove("KUBECONFIG");
    let mut scheduler = ManagedProcess::spawn("wattwise-scheduler", cmd, dir.path())?;

    let client = plane.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), DEMO_NS);
    let bound = wait_until("every sample pod bound", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default()).await?;
            Ok(!list.items.is_empty()
                && list
                    .items
                    .iter()
                    .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()))
        }
    })
    .await;
    scheduler.ensure_running()?;
    let log = scheduler.log_tail(60);
    bound.with_context(|| format!("scheduler log:\n{log}"))?;

    let lease = Api::<Lease>::namespaced(client.clone(), NS)
        .get("wattwise-scheduler")
        .await?;
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("wattwise-scheduler-test-0"),
        "the replica holds the Lease in its namespace"
    );
    // Events are written after the binds, in the background: wait for them.
    let events = Api::<Event>::namespaced(client, DEMO_NS);
    let scheduled = || async {
        let list = events.list(&ListParams::default()).await?;
        Ok::<_, anyhow::Error>(
            (list.items.iter())
                .filter(|e| e.reason.as_deref() == Some("Scheduled"))
                .count(),
        )
    };
    wait_until(
        "a Scheduled event per sample pod",
        Duration::from_secs(20),
        || async { Ok(scheduled().await? >= 12) },
    )
    .await?;
    let http = reqwest::Client::new();
    let ready = http.get(format!("http://{metrics}/readyz")).send().await?;
    assert!(ready.status().is_success(), "/readyz: {}", ready.status());

    // The energy adapter labels a node under the same RBAC.
    let mut stream = ReportStream::connect(grpc).await?;
    let report = NodePowerSpec::new(8000, 100.0, 300.0, 1.0)
        .energy(wattwise_proto::v1::EnergyLevel::Vulnerable, 50.0)
        .report("node-a", "deploy-test", 1);
    assert!(stream.send(report).await?.accepted);
    let nodes: Api<Node> = Api::all(plane.client().await?);
    wait_until("node-a labelled", Duration::from_secs(20), || async {
        let labels = nodes
            .get("node-a")
            .await?
            .metadata
            .labels
            .unwrap_or_default();
        Ok(labels.get("energy-status").map(String::as_str) == Some("vulnerable"))
    })
    .await
    .with_context(|| scheduler.log_tail(30))?;
    let log = scheduler.log_tail(2000).to_lowercase();
    assert!(
        !log.contains("forbidden"),
        "the scheduler hit a permission it lacks:\n{log}"
    );
    Ok(())
}

/// deploy/examples/README.md documents the energy-status label with exactly the four levels the
/// scheduler parses.
#[test]
fn the_energy_label_convention_matches_the_levels() {
    let text = std::fs::read_to_string(deploy_dir().join("examples/README.md")).unwrap();
    let values: BTreeSet<&str> = text
        .split("energy-status=")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap()
        })
        .collect();
    for v in &values {
        v.parse::<EnergyLevel>()
            .unwrap_or_else(|e| panic!("README label value {v:?}: {e}"));
    }
    assert_eq!(
        values,
        BTreeSet::from(["well-powered", "vulnerable", "low-powered", "powerless"])
    );
    let scheduler = std::fs::read_to_string(base_dir().join("scheduler.yaml")).unwrap();
    assert!(scheduler.contains("energy_label: energy-status"));
}

/// deploy/overlays/extender: every replica serves the extender API behind the Service, and the
/// cluster's kube-scheduler, given the shipped `extenders:` entry, asks it about its pods.
#[tokio::test]
async fn the_extender_overlay_answers_kube_scheduler_with_the_shipped_configuration() -> Result<()>
{
    let mut plane = ControlPlane::start().await?;
    let kubectl = Kubectl::new(&plane)?;
    let dir = tempfile::tempdir()?;
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let overlay = overlay_for(&kubectl, "extender", scratch.path())?;
    let overlay = overlay.to_str().context("a UTF-8 path")?;
    let applied = kubectl.run(&["apply", "--validate=strict", "-o", "name", "-k", overlay])?;
    assert!(
        applied.lines().any(|l| l == "service/wattwise-extender"),
        "{applied}"
    );
    assert!(
        applied
            .lines()
            .any(|l| l == "deployment.apps/wattwise-scheduler"),
        "the base comes along: {applied}"
    );

    // The Service reaches the port the replicas serve the extender on.
    let deployment = kubectl.get_json("deployment", Some(NS), "wattwise-scheduler")?;
    let service = kubectl.get_json("service", Some(NS), "wattwise-extender")?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .context("args")?
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        args.contains(&"--extender-listen=0.0.0.0:9202".to_string()),
        "{args:?}"
    );
    assert_eq!(port_names(&deployment)["extender"], 9202);
    assert_eq!(str_at(&service, "/spec/ports/0/targetPort"), "extender");
    assert_service_targets(&service, &deployment);

    // A replica as the Deployment runs it (its args, the ConfigMap's configuration, its service
    // account), on loopback ports.
    let (kubeconfig, config) = scheduler_files(&plane, &kubectl, dir.path())?;
    let extender: std::net::SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
    let metrics = format!("127.0.0.1:{}", free_tcp_port()?);
    let mut cmd = Command::new(workspace_binary("wattwise-scheduler")?);
    for arg in &args {
        cmd.arg(if arg.starts_with("--config=") {
            format!("--config={}", config.display())
        } else if arg.starts_with("--extender-listen=") {
            format!("--extender-listen={extender}")
        } else {
            arg.clone()
        });
    }
    cmd.arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg(format!("--grpc-listen=127.0.0.1:{}", free_tcp_port()?))
        .arg(format!("--metrics-listen={metrics}"))
        .env("POD_NAME", "wattwise-scheduler-test-0")
        .env("POD_NAMESPACE", NS)
        .env_remove("KUBECONFIG");
    let mut scheduler = ManagedProcess::spawn("wattwise-scheduler", cmd, dir.path())?;
    let http = reqwest::Client::new();
    let ready = wait_until("the replica ready", Duration::from_secs(30), || async {
        Ok(http
            .get(format!("http://{metrics}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()))
    })
    .await;
    scheduler.ensure_running()?;
    ready.with_context(|| scheduler.log_tail(40))?;

    // The stock kube-scheduler with the shipped extenders entry, its urlPrefix the replica's
    // loopback address instead of the Service's ClusterIP.
    let shipped: Value = serde_yaml::from_str(&std::fs::read_to_string(
        deploy_dir().join("overlays/extender/kube-scheduler-config.yaml"),
    )?)?;
    assert_eq!(shipped["kind"], "KubeSchedulerConfiguration");
    let entries = shipped["extenders"].as_array().context("extenders")?;
    assert_eq!(entries.len(), 1);
    let mut entry: SchedulerExtender = serde_json::from_value(entries[0].clone())?;
    assert_eq!(entry.url_prefix, "http://CLUSTER-IP:9202");
    assert!(entry.ignorable && entry.node_cache_capable);
    entry.url_prefix = format!("http://{extender}");
    plane
        .start_kube_scheduler_with(&KubeScheduler {
            extenders: vec![entry],
            ..KubeScheduler::default()
        })
        .await?;
    // Two nodes: with one, kube-scheduler binds without scoring (no prioritize call).
    for name in ["node-a", "node-b"] {
        plane
            .create_ready_node(&FakeNode::new(name).cpu(8000))
            .await?;
    }
    let client = plane.client().await?;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "asked", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "100m"}}}]}
    }))?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&Default::default(), &pod).await?;
    wait_until(
        "the pod bound by kube-scheduler",
        Duration::from_secs(60),
        || async {
            let pod = pods.get("asked").await?;
            Ok(pod.spec.and_then(|s| s.node_name).is_some())
        },
    )
    .await
    .with_context(|| scheduler.log_tail(40))?;
    let body = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for verb in ["filter", "prioritize"] {
        let series =
            format!("wattwise_scheduler_extender_calls_total{{verb=\"{verb}\",result=\"ok\"}}");
        let calls: f64 = body
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {series} in:\n{body}"))?;
        assert!(calls >= 1.0, "{series} {calls}");
    }
    scheduler.ensure_running()?;
    Ok(())
}
