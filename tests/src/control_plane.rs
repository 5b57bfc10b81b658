//! A real Kubernetes control plane: etcd + kube-apiserver (+ optionally the stock kube-scheduler
//! and kube-controller-manager), v1.20.2 built from Debian's source package by
//! `scripts/build-kube.sh` and cached.
//!
//! No kubelet runs: nodes are plain Node objects whose status the fixture patches to Ready, and
//! pods stay Pending after binding (but `spec.nodeName` is set). Graceful deletions of bound pods
//! are finished by the test ([`finish_graceful_deletions`]), as a kubelet would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::process::{cache_dir, free_tcp_port, require_program, ManagedProcess};

/// Kubernetes version of the cached binaries.
pub const KUBE_VERSION: &str = "v1.20.2";

/// Where `scripts/build-kube.sh` caches the binaries.
pub fn kube_bin_dir() -> PathBuf {
    cache_dir()
        .join(format!("kubernetes-{KUBE_VERSION}"))
        .join("bin")
}

fn kube_binary(name: &str) -> Result<PathBuf> {
    let path = kube_bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run scripts/build-kube.sh (scripts/test does)",
            path.display()
        );
    }
    Ok(path)
}

/// Options for [`ControlPlane::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// Also run the stock kube-scheduler (for comparisons and benchmarks).
    pub kube_scheduler: bool,
}

/// How [`ControlPlane::start_kube_scheduler_with`] runs the stock kube-scheduler.
#[derive(Debug, Clone, Default)]
pub struct KubeScheduler {
    /// Campaign for the `kube-system/kube-scheduler` Lease (its default lock) before scheduling;
    /// off, it schedules at once.
    pub leader_elect: bool,
    /// After the fixture's own flags, e.g. `--kube-api-qps=…` (1.20 defaults to 50 QPS, burst 100).
    pub extra_args: Vec<String>,
    /// Extenders it calls. Any makes the fixture run it with a `KubeSchedulerConfiguration`
    /// file (`kubescheduler.config.k8s.io/v1beta1`, 1.20's newest) carrying them, its client
    /// and leader election set as the flags would set them.
    pub extenders: Vec<SchedulerExtender>,
}

/// One entry of a `KubeSchedulerConfiguration`'s `extenders:` (1.20's v1beta1 `Extender`, the
/// fields wattwise uses; reading a field it does not know is an error).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulerExtender {
    /// e.g. `http://127.0.0.1:9202`; kube-scheduler appends `/<verb>`.
    pub url_prefix: String,
    pub filter_verb: String,
    pub prioritize_verb: String,
    /// Multiplies the extender's 0..=10 scores (then scaled by 10 to kube's 0..=100).
    pub weight: i64,
    /// Only node names travel (the extender keeps its own node cache).
    pub node_cache_capable: bool,
    /// Scheduling goes on without the extender when it cannot be reached or fails.
    pub ignorable: bool,
}

impl SchedulerExtender {
    /// An extender at `addr` with the verbs `filter` and `prioritize`, node names only and
    /// ignorable, as wattwise's shipped configuration has it.
    pub fn wattwise(addr: std::net::SocketAddr, weight: i64) -> Self {
        Self {
            url_prefix: format!("http://{addr}"),
            filter_verb: "filter".into(),
            prioritize_verb: "prioritize".into(),
            weight,
            node_cache_capable: true,
            ignorable: true,
        }
    }
}

/// A running control plane; everything stops on drop.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    etcd: ManagedProcess,
    apiserver: Option<ManagedProcess>,
    scheduler: Option<ManagedProcess>,
    apiserver_args: Vec<String>,
    port: u16,
    etcd_port: u16,
    admin_kubeconfig: PathBuf,
}

const ADMIN_TOKEN: &str = "wattwise-admin-token";
const SCHEDULER_TOKEN: &str = "wattwise-kube-scheduler-token";

impl ControlPlane {
    pub async fn start() -> Result<Self> {
        Self::start_with(ControlPlaneOptions::default()).await
    }

    pub async fn start_with(options: ControlPlaneOptions) -> Result<Self> {
        kube_binary("kube-apiserver")?; // fail before starting anything
        let etcd_bin = require_program("etcd")?;
        let dir = tempfile::Builder::new()
            .prefix("wattwise-kube-")
            .tempdir()?;
        make_certificates(dir.path())?;
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n\
                 {SCHEDULER_TOKEN},system:kube-scheduler,scheduler-uid\n"
            ),
        )?;

        let (etcd_client, etcd_peer) = (free_tcp_port()?, free_tcp_port()?);
        let mut cmd = Command::new(etcd_bin);
        cmd.arg("--name=wattwise")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{etcd_client}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
            ))
            .arg(format!(
                "--initial-cluster=wattwise=http://127.0.0.1:{etcd_peer}"
            ))
            .arg("--log-level=warn");
        let etcd = ManagedProcess::spawn("etcd", cmd, dir.path())?;

        let port = free_tcp_port()?;
        let d = dir.path().display();
        let apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            // 1.20 still opens an insecure port (8080) by default; parallel instances would clash.
            "--insecure-port=0".into(),
            format!("--cert-dir={d}"),
            format!("--tls-cert-file={d}/server.crt"),
            format!("--tls-private-key-file={d}/server.key"),
            format!("--client-ca-file={d}/ca.crt"),
            format!("--service-account-key-file={d}/sa.pub"),
            format!("--service-account-signing-key-file={d}/sa.key"),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--token-auth-file={d}/tokens.csv"),
            "--authorization-mode=Node,RBAC".into(),
            // No controller-manager creates service accounts or untaints new nodes.
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // As on real clusters (kubeadm, kind, k3s set it): node agents such as the wattwise
            // DaemonSet (in-band IPMI) run privileged containers.
            "--allow-privileged=true".into(),
        ];
        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        write_kubeconfig(&admin_kubeconfig, dir.path(), port, "admin", ADMIN_TOKEN)?;
        let mut plane = Self {
            dir,
            etcd,
            apiserver: None,
            scheduler: None,
            apiserver_args,
            port,
            etcd_port: etcd_client,
            admin_kubeconfig,
        };
        plane.start_apiserver().await?;
        if options.kube_scheduler {
            plane.start_kube_scheduler().await?;
        }
        Ok(plane)
    }

    /// Starts (or restarts) kube-apiserver on the same port, certs and etcd, and waits until it
    /// serves the `default` namespace.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        let mut cmd = Command::new(kube_binary("kube-apiserver")?);
        cmd.args(&self.apiserver_args);
        self.apiserver = Some(ManagedProcess::spawn(
            "kube-apiserver",
            cmd,
            self.dir.path(),
        )?);
        self.wait_apiserver_ready(Duration::from_secs(60)).await
    }

    /// Stops kube-apiserver (etcd keeps the state).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop();
        }
    }

    async fn wait_apiserver_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.etcd.ensure_running()?;
            if let Some(api) = self.apiserver.as_mut() {
                api.ensure_running()?;
            }
            let last = match self.client().await {
                Ok(client) => match Api::<Namespace>::all(client).get("default").await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                let log = self
                    .apiserver
                    .as_ref()
                    .map(|p| p.log_tail(30))
                    .unwrap_or_default();
                bail!("kube-apiserver not ready within {timeout:?} ({last}); log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn start_kube_scheduler(&mut self) -> Result<()> {
        self.start_kube_scheduler_with(&KubeScheduler::default())
            .await
    }

    /// Starts (or restarts) the stock kube-scheduler as `options` say. Its client is the
    /// `system:kube-scheduler` user. With leader election it returns once the scheduler campaigns
    /// for its Lease (`kube-system/kube-scheduler`), which it does only after its informers synced.
    pub async fn start_kube_scheduler_with(&mut self, options: &KubeScheduler) -> Result<()> {
        self.stop_kube_scheduler();
        let kubeconfig = self.dir.path().join("scheduler.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            self.dir.path(),
            self.port,
            "system:kube-scheduler",
            SCHEDULER_TOKEN,
        )?;
        let mut cmd = Command::new(kube_binary("kube-scheduler")?);
        if !options.extenders.is_empty() {
            // With --config, 1.20 ignores the deprecated flags (--kubeconfig, --leader-elect,
            // --port): the file says it all.
            let config = self.dir.path().join("kube-scheduler-config.json");
            let health = |port: u16| format!("127.0.0.1:{port}");
            let document = serde_json::json!({
                "apiVersion": "kubescheduler.config.k8s.io/v1beta1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {"kubeconfig": kubeconfig},
                "leaderElection": {"leaderElect": options.leader_elect},
                "healthzBindAddress": health(free_tcp_port()?),
                "metricsBindAddress": health(free_tcp_port()?),
                "extenders": options.extenders,
            });
            std::fs::write(&config, serde_json::to_vec_pretty(&document)?)
                .with_context(|| format!("writing {}", config.display()))?;
            cmd.arg(format!("--config={}", config.display()));
        }
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                kubeconfig.display()
            ))
            .arg(format!("--leader-elect={}", options.leader_elect))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_tcp_port()?))
            .arg("--port=0")
            .args(&options.extra_args);
        // The log is appended to across restarts: only what this process writes counts.
        let log_path = self.dir.path().join("kube-scheduler.log");
        let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len()) as usize;
        let mut scheduler = ManagedProcess::spawn("kube-scheduler", cmd, self.dir.path())?;
        if options.leader_elect {
            // client-go logs this when it starts campaigning; kube-scheduler 1.20 campaigns after
            // its informers' caches synced.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                scheduler.ensure_running()?;
                let log = std::fs::read(&log_path).unwrap_or_default();
                if String::from_utf8_lossy(log.get(log_start..).unwrap_or_default())
                    .contains("attempting to acquire leader lease")
                {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "kube-scheduler did not campaign for its lease within 120 s; log:\n{}",
                        scheduler.log_tail(30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            // It has no readiness endpoint we can reach without client certs; a crash shows early.
            tokio::time::sleep(Duration::from_secs(1)).await;
            scheduler.ensure_running()?;
        }
        self.scheduler = Some(scheduler);
        Ok(())
    }

    /// Stops the stock kube-scheduler if it runs. Idempotent.
    pub fn stop_kube_scheduler(&mut self) {
        if let Some(mut p) = self.scheduler.take() {
            p.stop();
        }
    }

    /// Starts kube-controller-manager with only the controllers tests need: Deployments,
    /// ReplicaSets and the garbage collector. Never the node lifecycle controller: fake nodes have
    /// no kubelet, it would mark them NotReady, taint them and evict their pods. Listens on no
    /// port. Stops when the returned value is dropped.
    pub async fn start_controller_manager(&self) -> Result<ControllerManager> {
        let mut cmd = Command::new(kube_binary("kube-controller-manager")?);
        cmd.arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .arg("--controllers=deployment,replicaset,garbagecollector,disruption")
            // No service accounts exist (no token controller): every controller uses this client.
            .arg("--use-service-account-credentials=false")
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg("--secure-port=0")
            .arg("--port=0");
        let mut process = ManagedProcess::spawn("kube-controller-manager", cmd, self.dir.path())?;
        // Returns once the controllers run; a bad flag or an unreachable API server shows here.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            process.ensure_running()?;
            let log = std::fs::read_to_string(process.log_path()).unwrap_or_default();
            if [
                "\"deployment\"",
                "\"replicaset\"",
                "\"garbagecollector\"",
                "\"disruption\"",
            ]
            .iter()
            .all(|c| log.contains(&format!("Started {c}")))
            {
                return Ok(ControllerManager { process });
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "kube-controller-manager did not start its controllers within 60 s; log:\n{}",
                    process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stock kube-scheduler's process id while it runs.
    pub fn kube_scheduler_pid(&self) -> Option<u32> {
        self.scheduler.as_ref().map(ManagedProcess::pid)
    }

    /// etcd's database size and its quota (`--quota-backend-bytes`), bytes, from its metrics:
    /// how close a large benchmark came to the point where etcd refuses writes.
    pub async fn etcd_db_size(&self) -> Result<(u64, u64)> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.etcd_port))
            .await?
            .error_for_status()?
            .text()
            .await?;
        let gauge = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as u64)
                .with_context(|| format!("etcd exports no {name}"))
        };
        Ok((
            gauge("etcd_mvcc_db_total_size_in_bytes")?,
            gauge("etcd_server_quota_backend_bytes")?,
        ))
    }

    /// A kube-rs client with admin rights (from the generated kubeconfig, not the user's).
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.admin_kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("loading the generated kubeconfig")?;
        Ok(Client::try_from(config)?)
    }

    /// The API server's address.
    pub fn apiserver_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// An admin kubeconfig, usable by kubectl.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// An admin kubeconfig whose server is `addr` on 127.0.0.1 (e.g. a proxy in front of the
    /// apiserver; the serving certificate is for 127.0.0.1, so TLS passes through it).
    pub fn kubeconfig_via(&self, addr: std::net::SocketAddr) -> Result<PathBuf> {
        let port = addr.port();
        let path = self.dir.path().join(format!("admin-via-{port}.kubeconfig"));
        write_kubeconfig(&path, self.dir.path(), port, "admin", ADMIN_TOKEN)?;
        Ok(path)
    }

    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn admin_token(&self) -> &str {
        ADMIN_TOKEN
    }

    /// Creates a Node and patches its status to Ready with the given capacity.
    pub async fn create_ready_node(&self, spec: &FakeNode) -> Result<Node> {
        let nodes: Api<Node> = Api::all(self.client().await?);
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": spec.name, "labels": spec.labels},
            "spec": {"taints": spec.taints},
        }))?;
        nodes
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating node {}", spec.name))?;
        let resources = BTreeMap::from([
            (
                "cpu".to_string(),
                Quantity(format!("{}m", spec.cpu_millicores)),
            ),
            (
                "memory".to_string(),
                Quantity(spec.memory_bytes.to_string()),
            ),
            ("pods".to_string(), Quantity(spec.pods.to_string())),
            ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
        ]);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = serde_json::json!({
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "fake node (wattwise test environment)",
                    "lastHeartbeatTime": now, "lastTransitionTime": now,
                }],
            }
        });
        nodes
            .patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("marking node {} Ready", spec.name))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Clients first, then the store.
        self.scheduler.take();
        self.apiserver.take();
        self.etcd.stop();
    }
}

/// A running kube-controller-manager ([`ControlPlane::start_controller_manager`]); stopped on
/// drop.
pub struct ControllerManager {
    process: ManagedProcess,
}

impl ControllerManager {
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// Plays the kubelet's part in deleting pods: a pod bound to a node is only marked
/// `Terminating` by a delete or an eviction (its grace period runs on the kubelet), so without
/// a kubelet it would stay forever. Deletes every such pod in `namespace` with grace 0; returns
/// their names.
/// Plays the kubelet for pods bound to fake nodes: marks every bound, live pod of `namespace`
/// that is not Ready yet Running and Ready (what PodDisruptionBudgets count as healthy). Returns
/// their names.
pub async fn mark_bound_pods_ready(client: &Client, namespace: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut marked = Vec::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some();
        let ready = (pod.status.as_ref().and_then(|s| s.conditions.as_ref()))
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !bound || ready || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
        }});
        match pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Ok(_) => marked.push(name),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("marking {name} ready")),
        }
    }
    Ok(marked)
}

pub async fn finish_graceful_deletions(client: &Client, namespace: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut finished = Vec::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        if pod.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let name = pod.metadata.name.unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            // The pod we saw, not a namesake created since.
            preconditions: pod.metadata.uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => finished.push(name),
            // Gone already, or replaced by a namesake: nothing left to finish.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("finishing the deletion of {name}")),
        }
    }
    Ok(finished)
}

/// A Node object standing in for a machine (no kubelet).
#[derive(Debug, Clone)]
pub struct FakeNode {
    pub name: String,
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl FakeNode {
    /// 4 CPUs, 16 GiB, 110 pods.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            cpu_millicores: 4000,
            memory_bytes: 16 << 30,
            pods: 110,
            labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
            taints: Vec::new(),
        }
    }

    pub fn cpu(mut self, millicores: u64) -> Self {
        self.cpu_millicores = millicores;
        self
    }

    /// The kubelet's pod limit (`maxPods`): allocatable pods.
    pub fn pods(mut self, pods: u32) -> Self {
        self.pods = pods;
        self
    }

    pub fn memory_gib(mut self, gib: u64) -> Self {
        self.memory_bytes = gib << 30;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints.push(Taint {
            key: key.to_string(),
            value: Some(value.to_string()),
            effect: effect.to_string(),
            time_added: None,
        });
        self
    }
}

/// A CA, a serving certificate for 127.0.0.1/localhost, and a service-account key pair.
fn make_certificates(dir: &Path) -> Result<()> {
    let openssl = require_program("openssl")?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n",
    )?;
    let steps: [&[&str]; 5] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=wattwise-test-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        &["genrsa", "-out", "sa.key", "2048"],
        &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    ];
    for args in steps {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

fn write_kubeconfig(path: &Path, dir: &Path, port: u16, user: &str, token: &str) -> Result<()> {
    let ca = dir.join("ca.crt");
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: wattwise\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\n\
             users:\n- name: {user}\n  user:\n    token: {token}\n\
             contexts:\n- name: wattwise\n  context:\n    cluster: wattwise\n    user: {user}\n\
             current-context: wattwise\n",
            ca.display()
        ),
    )
    .with_context(|| format!("writing {}", path.display()))
}
