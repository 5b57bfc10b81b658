//! Streams reports to every scheduler replica (`wattwise.v1.PowerReports/StreamReports`).
//!
//! Each configured `host:port` is resolved to all of its addresses (a headless Service lists every
//! replica) and re-resolved periodically; each address gets its own stream task. A report is sent
//! when it differs meaningfully from the last one sent, and at least once per report interval
//! (the scheduler's ack says which). Reports come from a watch channel, so a disconnected or slow
//! scheduler costs one report of memory, never a backlog.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};
use wattwise_core::ValidatedReport;
use wattwise_proto::v1::power_reports_client::PowerReportsClient;

use crate::api::grpc::LatestReport;
use crate::api::metrics::AgentMetrics;
use crate::config::SchedulerConfig;
use crate::report::meaningful_change;

/// Report interval used until a scheduler says otherwise, and the bounds its answer is held to.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);
const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(100);
const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Doubling backoff with full jitter in [d/2, d].
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next delay to wait (jittered), doubling the base for the time after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Keeps one stream per resolved scheduler address until the returned handle is aborted.
pub fn spawn(
    config: SchedulerConfig,
    latest: LatestReport,
    metrics: Arc<AgentMetrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut streams: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
        loop {
            let resolved = resolve_all(&config.endpoints).await;
            // A failed resolution keeps the streams we have: DNS hiccups must not drop reports.
            if let Some(addresses) = resolved {
                let gone: Vec<SocketAddr> = streams
                    .keys()
                    .filter(|addr| !addresses.contains(addr))
                    .copied()
                    .collect();
                for addr in gone {
                    info!(endpoint = %addr, "scheduler address gone; closing its stream");
                    if let Some(task) = streams.remove(&addr) {
                        task.abort();
                        // Once it has ended, the task cannot re-create the series dropped next.
                        let _ = task.await;
                    }
                    metrics.forget_endpoint(&addr.to_string());
                }
                for addr in addresses {
                    streams.entry(addr).or_insert_with(|| {
                        info!(endpoint = %addr, "streaming reports to scheduler");
                        tokio::spawn(stream_forever(
                            addr,
                            config.clone(),
                            latest.clone(),
                            metrics.clone(),
                        ))
                    });
                }
            }
            sleep(config.resolve_interval).await;
        }
    })
}

/// Every address of every endpoint, or `None` when any lookup failed.
async fn resolve_all(endpoints: &[String]) -> Option<Vec<SocketAddr>> {
    let mut all = Vec::new();
    for endpoint in endpoints {
        match tokio::net::lookup_host(endpoint.as_str()).await {
            Ok(addrs) => all.extend(addrs),
            Err(e) => {
                warn!(%endpoint, error = %e, "cannot resolve scheduler endpoint");
                return None;
            }
        }
    }
    all.sort();
    all.dedup();
    Some(all)
}

async fn stream_forever(
    addr: SocketAddr,
    config: SchedulerConfig,
    latest: LatestReport,
    metrics: Arc<AgentMetrics>,
) {
    let endpoint = addr.to_string();
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    // Kept across reconnects: a replica that already has a report must not get it again.
    let mut last_sent = None;
    loop {
        let result =
            stream_once(addr, latest.clone(), &metrics, &mut backoff, &mut last_sent).await;
        metrics.set_stream_connected(&endpoint, false);
        match result {
            Ok(()) => info!(%endpoint, "scheduler closed the report stream"),
            Err(e) => warn!(%endpoint, error = %e, "report stream failed"),
        }
        let delay = backoff.next_delay();
        debug!(%endpoint, ?delay, "reconnecting after backoff");
        sleep(delay).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] tonic::Status),
}

/// Whether `next` should go to a scheduler that last got `sent`. Every message on a stream is a
/// distinct report — a newer observation with its own sequence; re-sending one would be out of
/// order — sent when the report interval is up (`due`) or when it changed meaningfully.
fn worth_sending(sent: Option<&ValidatedReport>, next: &ValidatedReport, due: bool) -> bool {
    sent.is_none_or(|sent| {
        next.sequence() > sent.sequence() && (due || meaningful_change(sent, next))
    })
}

async fn stream_once(
    addr: SocketAddr,
    mut latest: LatestReport,
    metrics: &AgentMetrics,
    backoff: &mut Backoff,
    last_sent: &mut Option<Arc<ValidatedReport>>,
) -> Result<(), StreamError> {
    let endpoint = addr.to_string();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI authority")
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = PowerReportsClient::new(channel);
    // Capacity 1: if the scheduler is not reading, the next send replaces nothing and waits.
    let (outbound, rx) = mpsc::channel(1);
    let mut interval = DEFAULT_REPORT_INTERVAL;
    // A new stream wants a report at once: the newest now, or else the next one built.
    let mut next_due = Instant::now();
    if let Some(report) = latest.borrow_and_update().clone() {
        if worth_sending(last_sent.as_deref(), &report, true)
            && outbound.try_send(report.report().clone()).is_ok()
        {
            *last_sent = Some(report);
            next_due += interval;
        }
    }
    let mut acks = client
        .stream_reports(ReceiverStream::new(rx))
        .await?
        .into_inner();
    metrics.set_stream_connected(&endpoint, true);
    // Set when the interval was up with nothing newer to send: the next report goes at once.
    let mut overdue = false;
    loop {
        tokio::select! {
            changed = latest.changed() => {
                if changed.is_err() {
                    return Ok(()); // the agent is shutting down
                }
                let Some(report) = latest.borrow_and_update().clone() else { continue };
                let due = Instant::now() >= next_due;
                if worth_sending(last_sent.as_deref(), &report, due)
                    && outbound.try_send(report.report().clone()).is_ok()
                {
                    *last_sent = Some(report);
                    next_due = Instant::now() + interval;
                    overdue = false;
                }
            }
            _ = sleep_until(next_due), if !overdue => {
                // Nothing was sent for a whole interval: send the newest report (fresh readings
                // and observed_at, even if nothing changed meaningfully). When there is none
                // newer than the last sent (the report loop is slower than the interval, or
                // stuck), wait for the next one rather than repeat an old observation.
                let newest = latest.borrow_and_update().clone();
                match newest {
                    Some(report) if worth_sending(last_sent.as_deref(), &report, true)
                        && outbound.try_send(report.report().clone()).is_ok() =>
                    {
                        *last_sent = Some(report);
                        next_due = Instant::now() + interval;
                    }
                    _ => overdue = true,
                }
            }
            ack = acks.message() => {
                let Some(ack) = ack? else { return Ok(()) };
                backoff.reset();
                metrics.count_ack(&endpoint, ack.accepted);
                if !ack.accepted {
                    warn!(%endpoint, sequence = ack.sequence, reason = %ack.reason, "scheduler rejected a report");
                }
                if let Some(wanted) = ack.report_interval.and_then(|d| Duration::try_from(d).ok()) {
                    let wanted = wanted.clamp(MIN_REPORT_INTERVAL, MAX_REPORT_INTERVAL);
                    if wanted != interval {
                        debug!(%endpoint, ?wanted, "scheduler set the report interval");
                        next_due = next_due - interval + wanted;
                        interval = wanted;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattwise_proto::v1 as pb;

    fn report(sequence: u64, utilisation: f64) -> ValidatedReport {
        wattwise_core::validate(pb::NodeReport {
            node_name: "node-1".into(),
            agent_instance: "a1".into(),
            sequence,
            observed_at: Some(prost_types::Timestamp {
                seconds: 1_790_000_000 + sequence as i64,
                nanos: 0,
            }),
            cpu: Some(pb::CpuState {
                capacity_millicores: 4000,
                utilisation,
            }),
            curve: Some(pb::PowerCurve {
                watts: vec![100.0, 200.0],
            }),
            model: Some(pb::ModelInfo {
                name: "generic".into(),
                version: "1".into(),
                calibration: pb::CalibrationState::Uncalibrated as i32,
                calibration_mape_percent: None,
            }),
            measured: Some(pb::PowerMeasurement {
                source: pb::ReadingSource::None as i32,
                watts: 0.0,
                sensor_name: String::new(),
            }),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn only_newer_reports_are_sent_when_due_or_changed() {
        let sent = report(7, 0.3);
        assert!(
            worth_sending(None, &sent, false),
            "a first report goes at once"
        );
        let same_again = report(7, 0.3);
        assert!(
            !worth_sending(Some(&sent), &same_again, true),
            "never the same sequence twice, even when due"
        );
        let steady = report(8, 0.3);
        assert!(!worth_sending(Some(&sent), &steady, false));
        assert!(
            worth_sending(Some(&sent), &steady, true),
            "due: the newest observation"
        );
        let moved = report(8, 0.5);
        assert!(
            worth_sending(Some(&sent), &moved, false),
            "a meaningful change"
        );
        assert!(
            !worth_sending(Some(&sent), &report(6, 0.9), true),
            "never an older one"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let bases = [100u64, 200, 400, 800, 800, 800];
        for (d, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *d >= base / 2 && *d <= base,
                "{d:?} not in [{:?}, {base:?}]",
                base / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
