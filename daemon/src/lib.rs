//! What `wattwise-agent` and `wattwise-scheduler` both need to run as daemons, written once:
//!
//! - [`config`]: YAML configuration files whose errors name the file and the key.
//! - [`logging`] and [`shutdown_signal`].
//! - [`health`]: liveness of the long-running loops, for `/healthz`.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`grpc`]: a gRPC server with `grpc.health.v1` and server reflection beside the service.
pub mod config;
pub mod grpc;
pub mod health;
pub mod http;
pub mod logging;

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Listens on `addr`; the error names the configuration key it came from.
pub async fn listen(
    addr: std::net::SocketAddr,
    key: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}
