//! A real `wattwise.v1.PowerReports` server standing in for a scheduler replica: it records every
//! report an agent streams to it, acknowledges each one, and on [`ReportReceiver::stop`] ends every
//! open stream and closes its port, as a scheduler that goes away would.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use wattwise_proto::v1 as pb;
use wattwise_proto::v1::power_reports_server::{PowerReports, PowerReportsServer};

/// The report interval every ack asks for.
pub const ACK_REPORT_INTERVAL: Duration = Duration::from_secs(1);

struct Service {
    reports: mpsc::UnboundedSender<pb::NodeReport>,
    accept: bool,
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl PowerReports for Service {
    type StreamReportsStream = Pin<Box<dyn Stream<Item = Result<pb::ReportAck, Status>> + Send>>;

    async fn stream_reports(
        &self,
        request: Request<Streaming<pb::NodeReport>>,
    ) -> Result<Response<Self::StreamReportsStream>, Status> {
        let mut inbound = request.into_inner();
        let (acks, out) = mpsc::channel(4);
        let (reports, accept, mut stop) = (self.reports.clone(), self.accept, self.stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = inbound.message() => {
                        let Ok(Some(report)) = message else { return };
                        let ack = pb::ReportAck {
                            sequence: report.sequence,
                            accepted: accept,
                            reason: if accept { String::new() } else { "test rejects everything".into() },
                            report_interval: Some(prost_types::Duration {
                                seconds: ACK_REPORT_INTERVAL.as_secs() as i64,
                                nanos: ACK_REPORT_INTERVAL.subsec_nanos() as i32,
                            }),
                        };
                        let _ = reports.send(report);
                        if acks.send(Ok(ack)).await.is_err() { return }
                    }
                    _ = stop.changed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// A running receiver; stopped when dropped.
pub struct ReportReceiver {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl ReportReceiver {
    /// Listens on `addr` (port 0 picks one) and sends every report it receives to `reports`.
    /// `accept` is what the acks say (false: every report is rejected, with a reason).
    pub async fn start(
        addr: SocketAddr,
        accept: bool,
        reports: mpsc::UnboundedSender<pb::NodeReport>,
    ) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("report receiver: cannot listen on {addr}"))?;
        Self::serve(listener, accept, reports)
    }

    /// Serves on a listener the caller bound (e.g. the same port on several addresses).
    pub fn serve(
        listener: TcpListener,
        accept: bool,
        reports: mpsc::UnboundedSender<pb::NodeReport>,
    ) -> Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let service = PowerReportsServer::new(Service {
            reports,
            accept,
            stop: stop_rx.clone(),
        });
        let mut shutdown = stop_rx;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = shutdown.changed().await;
                }),
        );
        Ok(Self {
            addr,
            stop,
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ends every open stream and closes the port; returns once the server has stopped.
    pub async fn stop(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            server
                .await
                .context("report receiver task")?
                .context("report receiver server")?;
        }
        Ok(())
    }
}

impl Drop for ReportReceiver {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The next report from `rx`, failing after `timeout`.
pub async fn next_report(
    rx: &mut mpsc::UnboundedReceiver<pb::NodeReport>,
    timeout: Duration,
) -> Result<pb::NodeReport> {
    tokio::time::timeout(timeout, rx.recv())
        .await
        .with_context(|| format!("no report within {timeout:?}"))?
        .context("the receiver's report channel closed")
}
