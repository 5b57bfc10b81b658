//! The real grpcurl, knowing nothing of wattwise but server reflection, lists, describes and calls
//! a tonic server of the wattwise API: proves the descriptor set, the reflection wiring and the
//! grpcurl fixture.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use wattwise_proto::v1 as pb;
use wattwise_proto::v1::node_power_server::{NodePower, NodePowerServer};
use wattwise_testenv::grpcurl::Grpcurl;

/// A NodePower whose report comes from the test, so the assertions can check grpcurl's decoding.
struct FixedReport(pb::NodeReport);

#[tonic::async_trait]
impl NodePower for FixedReport {
    async fn get_report(
        &self,
        _: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::NodeReport>, Status> {
        Ok(Response::new(self.0.clone()))
    }

    async fn predict_marginal(
        &self,
        request: Request<pb::PredictMarginalRequest>,
    ) -> Result<Response<pb::PredictMarginalResponse>, Status> {
        let report =
            wattwise_core::validate(self.0.clone()).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(
            report.predict_marginal(&request.into_inner().cpu_millicores),
        ))
    }

    type WatchReportsStream = Pin<Box<dyn Stream<Item = Result<pb::NodeReport, Status>> + Send>>;

    async fn watch_reports(
        &self,
        _: Request<pb::WatchReportsRequest>,
    ) -> Result<Response<Self::WatchReportsStream>, Status> {
        let template = self.0.clone();
        let reports = (1..=3).map(move |sequence| {
            Ok(pb::NodeReport {
                sequence,
                ..template.clone()
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(reports))))
    }
}

fn report(node: &str, utilisation: f64) -> pb::NodeReport {
    pb::NodeReport {
        node_name: node.into(),
        agent_instance: "test".into(),
        sequence: 7,
        observed_at: Some(prost_types_now()),
        cpu: Some(pb::CpuState {
            capacity_millicores: 8000,
            utilisation,
        }),
        curve: Some(pb::PowerCurve {
            // Linear 100 W → 300 W: 1000 m on 8000 m adds 25 W.
            watts: (0..=100).map(|i| 100.0 + 2.0 * i as f64).collect(),
        }),
        model: Some(pb::ModelInfo {
            name: "linear".into(),
            version: "1".into(),
            calibration: pb::CalibrationState::Uncalibrated as i32,
            calibration_mape_percent: None,
        }),
        ..Default::default()
    }
}

fn prost_types_now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

async fn serve(report: pb::NodeReport) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<NodePowerServer<FixedReport>>().await;
    let (reflection_v1, reflection_v1alpha) = wattwise_proto::reflection_services().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodePowerServer::new(FixedReport(report)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn grpcurl_lists_and_describes_the_api_through_reflection() {
    let grpcurl = Grpcurl::new(serve(report("node-a", 0.5)).await).unwrap();
    let services = grpcurl.list_services().await.unwrap();
    for expected in ["wattwise.v1.NodePower", "grpc.health.v1.Health"] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }
    let described = grpcurl.describe("wattwise.v1.NodeReport").await.unwrap();
    for field in ["node_name", "PowerCurve curve", "EnergyState energy"] {
        assert!(described.contains(field), "{field} missing:\n{described}");
    }
    // PowerReports is not served here, but its types ship in the same descriptor set.
    let ack = grpcurl.describe("wattwise.v1.ReportAck").await.unwrap();
    assert!(ack.contains("report_interval"), "{ack}");
}

#[tokio::test]
async fn grpcurl_calls_unary_and_streaming_methods() {
    let node = format!("node-{}", std::process::id());
    let grpcurl = Grpcurl::new(serve(report(&node, 0.5)).await).unwrap();

    let got = grpcurl
        .call("wattwise.v1.NodePower/GetReport", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(got["nodeName"], node.as_str());
    assert_eq!(got["curve"]["watts"].as_array().unwrap().len(), 101);

    let predicted = grpcurl
        .call(
            "wattwise.v1.NodePower/PredictMarginal",
            &serde_json::json!({"cpuMillicores": [1000, 8000]}),
        )
        .await
        .unwrap();
    let predictions = predicted["predictions"].as_array().unwrap();
    let watts = predictions[0]["marginalWatts"].as_f64().unwrap();
    assert!((watts - 25.0).abs() < 1e-9, "{predicted}");
    assert_eq!(predictions[1]["exceedsCapacity"], true, "{predicted}");

    let streamed = grpcurl
        .call_stream(
            "wattwise.v1.NodePower/WatchReports",
            &serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let sequences: Vec<&str> = streamed
        .iter()
        .map(|r| r["sequence"].as_str().unwrap())
        .collect();
    assert_eq!(sequences, ["1", "2", "3"], "uint64 is a JSON string");

    let health = grpcurl
        .call("grpc.health.v1.Health/Check", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(health["status"], "SERVING");
}
