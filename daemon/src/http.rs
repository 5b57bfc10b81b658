//! The metrics and health endpoints: `/metrics` (OpenMetrics text), `/healthz` (the process
//! answers) and `/readyz` (whatever the daemon counts as ready).

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// `encode` renders the metrics; `ready` decides `/readyz`, which answers 503 with
/// `not_ready_reason` until then.
pub fn router(
    encode: impl Fn() -> String + Send + Sync + 'static,
    ready: impl Fn() -> bool + Send + Sync + 'static,
    not_ready_reason: &'static str,
) -> Router {
    let encode = Arc::new(encode);
    let ready = Arc::new(ready);
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, not_ready_reason).into_response()
                    }
                }
            }),
        )
}
