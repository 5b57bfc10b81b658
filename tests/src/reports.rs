//! Real gRPC clients of the scheduler's `PowerReports`: a single stream that sends one report and
//! waits for its ack, and a pump that keeps a set of nodes' reports fresh, like their agents would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use wattwise_proto::v1 as pb;
use wattwise_proto::v1::power_reports_client::PowerReportsClient;

/// What a fake agent says about its node.
#[derive(Debug, Clone)]
pub struct NodePowerSpec {
    pub capacity_millicores: u64,
    pub utilisation: f64,
    /// Watts at 0 %, 1 %, …, 100 %.
    pub curve: Vec<f64>,
    pub energy: Option<(pb::EnergyLevel, f64)>,
}

impl NodePowerSpec {
    /// `idle + (peak − idle) · u^exponent` on 101 points: exponent > 1 is convex (each pod costs
    /// more than the last), < 1 concave.
    pub fn curve(idle: f64, peak: f64, exponent: f64) -> Vec<f64> {
        (0..=100)
            .map(|i| idle + (peak - idle) * (i as f64 / 100.0).powf(exponent))
            .collect()
    }

    pub fn new(capacity_millicores: u64, idle: f64, peak: f64, exponent: f64) -> Self {
        Self {
            capacity_millicores,
            utilisation: 0.0,
            curve: Self::curve(idle, peak, exponent),
            energy: None,
        }
    }

    pub fn energy(mut self, level: pb::EnergyLevel, percent: f64) -> Self {
        self.energy = Some((level, percent));
        self
    }

    pub fn report(&self, node: &str, instance: &str, sequence: u64) -> pb::NodeReport {
        pb::NodeReport {
            node_name: node.to_string(),
            agent_instance: instance.to_string(),
            sequence,
            observed_at: Some(SystemTime::now().into()),
            cpu: Some(pb::CpuState {
                capacity_millicores: self.capacity_millicores,
                utilisation: self.utilisation,
            }),
            curve: Some(pb::PowerCurve {
                watts: self.curve.clone(),
            }),
            model: Some(pb::ModelInfo {
                name: "test".into(),
                version: "1".into(),
                calibration: pb::CalibrationState::Uncalibrated as i32,
                calibration_mape_percent: None,
            }),
            energy: self.energy.map(|(level, percent)| pb::EnergyState {
                level: level as i32,
                percent,
                source: "test".into(),
            }),
            ..Default::default()
        }
    }
}

/// One report stream: each [`ReportStream::send`] waits for its ack.
pub struct ReportStream {
    tx: mpsc::Sender<pb::NodeReport>,
    acks: Streaming<pb::ReportAck>,
}

impl ReportStream {
    pub async fn connect(scheduler: SocketAddr) -> Result<Self> {
        let mut client = PowerReportsClient::connect(format!("http://{scheduler}"))
            .await
            .with_context(|| format!("connecting to the scheduler at {scheduler}"))?;
        let (tx, rx) = mpsc::channel(16);
        let acks = client
            .stream_reports(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, acks })
    }

    pub async fn send(&mut self, report: pb::NodeReport) -> Result<pb::ReportAck> {
        let sequence = report.sequence;
        self.tx.send(report).await.context("stream closed")?;
        let ack = tokio::time::timeout(Duration::from_secs(10), self.acks.message())
            .await
            .context("no ack within 10 s")??
            .context("stream ended without an ack")?;
        if ack.sequence != sequence {
            bail!(
                "ack for sequence {} while {} was sent",
                ack.sequence,
                sequence
            );
        }
        Ok(ack)
    }
}

/// Keeps reporting every node in its table every `interval` (one stream per node, as agents do);
/// stops on drop. Tests change a node's entry to change what it reports.
pub struct ReportPump {
    pub nodes: Arc<Mutex<BTreeMap<String, NodePowerSpec>>>,
    task: JoinHandle<()>,
}

impl ReportPump {
    pub fn start(scheduler: SocketAddr, interval: Duration) -> Self {
        let nodes: Arc<Mutex<BTreeMap<String, NodePowerSpec>>> = Default::default();
        let table = nodes.clone();
        let task = tokio::spawn(async move {
            let instance = format!("pump-{}", std::process::id());
            let mut streams: BTreeMap<String, ReportStream> = BTreeMap::new();
            let mut sequence = 0u64;
            loop {
                sequence += 1;
                let snapshot = table.lock().unwrap().clone();
                for (node, spec) in snapshot {
                    if !streams.contains_key(&node) {
                        match ReportStream::connect(scheduler).await {
                            Ok(s) => {
                                streams.insert(node.clone(), s);
                            }
                            Err(_) => continue,
                        }
                    }
                    let stream = streams.get_mut(&node).expect("inserted");
                    if stream
                        .send(spec.report(&node, &instance, sequence))
                        .await
                        .is_err()
                    {
                        streams.remove(&node);
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        Self { nodes, task }
    }

    pub fn set(&self, node: &str, spec: NodePowerSpec) {
        self.nodes.lock().unwrap().insert(node.to_string(), spec);
    }

    pub fn remove(&self, node: &str) {
        self.nodes.lock().unwrap().remove(node);
    }
}

impl Drop for ReportPump {
    fn drop(&mut self) {
        self.task.abort();
    }
}
