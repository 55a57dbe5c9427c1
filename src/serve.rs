//! The HTTP listener of `tend watch` (`--listen`): `GET /metrics` (tend's
//! own metrics), `GET /healthz` (the process is alive) and `GET /readyz`
//! (the last pass succeeded recently). Loopback unless told otherwise; it
//! only reads what the passes published. See ARCHITECTURE.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// What the handlers read.
#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    /// `/readyz` answers 200 while the last successful pass is this recent.
    ready_within: Duration,
}

/// Binds `addr` and serves until the runtime stops. Returns the address
/// bound (port 0 picks a free one).
pub async fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready_within: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(Shared {
            metrics,
            ready_within,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "The HTTP listener stopped.");
        }
    });
    Ok(local)
}

async fn metrics_text(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn ready(State(s): State<Shared>) -> impl IntoResponse {
    let last = s.metrics.last_success();
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    if last > 0.0 && now - last <= s.ready_within.as_secs_f64() {
        (StatusCode::OK, "ready\n".to_string())
    } else if last == 0.0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no pass has succeeded yet\n".to_string(),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the last successful pass was {:.0}s ago\n",
                now - last
            ),
        )
    }
}
