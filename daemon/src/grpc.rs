//! A gRPC server for one wattwise service, with `grpc.health.v1` (the service marked serving) and
//! server reflection v1 and v1alpha, so grpcurl can list and call everything.

use std::convert::Infallible;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::http::Request;
use tonic::codegen::Service;
use tonic::server::NamedService;

/// Serves `service` on `listener` in a background task.
pub async fn spawn<S>(
    service: S,
    listener: TcpListener,
) -> Result<JoinHandle<Result<(), tonic::transport::Error>>>
where
    S: Service<Request<Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<S>().await;
    let (reflection_v1, reflection_v1alpha) = wattwise_proto::reflection_services()?;
    Ok(tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    ))
}
