//! The metrics and health endpoints: `/metrics` (OpenMetrics text), `/healthz` (every loop
//! registered with the [`Liveness`] is beating) and `/readyz` (whatever the daemon counts as
//! ready, now: readiness may be lost again).

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::health::Liveness;

/// `encode` renders the metrics; `/healthz` answers 503 naming the silent loops of `liveness`;
/// `ready` decides `/readyz`, which answers 503 with its reason while it is `Err`.
pub fn router(
    encode: impl Fn() -> String + Send + Sync + 'static,
    liveness: Liveness,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
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
        .route(
            "/healthz",
            get(move || {
                let health = liveness.check();
                async move { answer(health, "ok") }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready();
                async move { answer(ready, "ready") }
            }),
        )
}

fn answer(state: Result<(), String>, ok: &'static str) -> axum::response::Response {
    match state {
        Ok(()) => (StatusCode::OK, ok).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}
