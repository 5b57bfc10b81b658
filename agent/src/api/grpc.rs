//! The `wattwise.v1.NodePower` service: the latest report, marginal-power predictions priced on
//! its curve, and a stream of reports as they are produced.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use wattwise_core::ValidatedReport;
use wattwise_proto::v1 as pb;
use wattwise_proto::v1::node_power_server::NodePower;

/// Most CPU sizes one PredictMarginal call may price.
pub const MAX_PREDICT_SIZES: usize = 1024;

/// The latest report, shared by the report loop (writer) and every reader.
pub type LatestReport = watch::Receiver<Option<Arc<ValidatedReport>>>;

pub struct NodePowerService {
    latest: LatestReport,
}

impl NodePowerService {
    pub fn new(latest: LatestReport) -> Self {
        Self { latest }
    }

    fn current(&self) -> Result<Arc<ValidatedReport>, Status> {
        self.latest
            .borrow()
            .clone()
            .ok_or_else(|| Status::failed_precondition("the agent has not produced a report yet"))
    }
}

#[tonic::async_trait]
impl NodePower for NodePowerService {
    async fn get_report(
        &self,
        _: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::NodeReport>, Status> {
        Ok(Response::new(self.current()?.report().clone()))
    }

    async fn predict_marginal(
        &self,
        request: Request<pb::PredictMarginalRequest>,
    ) -> Result<Response<pb::PredictMarginalResponse>, Status> {
        let sizes = request.into_inner().cpu_millicores;
        if sizes.len() > MAX_PREDICT_SIZES {
            return Err(Status::invalid_argument(format!(
                "cpu_millicores: {} sizes requested; at most {MAX_PREDICT_SIZES}",
                sizes.len()
            )));
        }
        Ok(Response::new(self.current()?.predict_marginal(&sizes)))
    }

    type WatchReportsStream = Pin<Box<dyn Stream<Item = Result<pb::NodeReport, Status>> + Send>>;

    async fn watch_reports(
        &self,
        _: Request<pb::WatchReportsRequest>,
    ) -> Result<Response<Self::WatchReportsStream>, Status> {
        // A watch channel holds only the newest value: a slow client skips reports instead of
        // making the agent buffer them.
        let stream = WatchStream::new(self.latest.clone())
            .filter_map(|latest| latest.map(|r| Ok(r.report().clone())));
        Ok(Response::new(Box::pin(stream)))
    }
}
