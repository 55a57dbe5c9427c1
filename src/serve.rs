//! The HTTP listener of `tend watch` (`--listen`): `GET /metrics` (tend's
//! own metrics), `GET /healthz` (the process is alive), `GET /readyz` (the
//! last pass succeeded recently) and `POST /hooks/github` (a signed push
//! starts a full pass at once). It only reads what the passes published
//! and asks the loop for a pass; it never acts itself. See ARCHITECTURE.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, Mac};

use crate::metrics::Metrics;

/// What the listener needs from the loop.
pub struct Service {
    pub metrics: Arc<Metrics>,
    /// `/readyz` answers 200 while the last successful pass is this recent.
    pub ready_within: Duration,
    /// The secret GitHub signs webhook deliveries with
    /// (`TEND_GITHUB_WEBHOOK_SECRET`); without it the hook is off.
    pub github_secret: Option<String>,
    /// The branch a push must be to (`refs/heads/<branch>`), when the
    /// source names one.
    pub branch: Option<String>,
    /// Asks the loop for a full pass at once.
    pub wake: Arc<dyn Fn() + Send + Sync>,
    /// The bearer token Alertmanager sends (`TEND_ALERTMANAGER_TOKEN`);
    /// without it the hook is off.
    pub alertmanager_token: Option<String>,
    /// Where pushed alerts are kept for the prober.
    pub alerts: Arc<crate::health::alerts::AlertBook>,
    /// Asks the loop for a healing pass at once.
    pub heal: Arc<dyn Fn() + Send + Sync>,
}

/// What the handlers read.
#[derive(Clone)]
struct Shared(Arc<Service>);

/// GitHub's deliveries can be large (a push of many commits).
const HOOK_BODY_LIMIT: usize = 5 * 1024 * 1024;

/// Binds `addr` and serves until the runtime stops. Returns the address
/// bound (port 0 picks a free one).
pub async fn spawn(addr: SocketAddr, service: Service) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .merge(
            Router::new()
                .route("/hooks/github", post(github))
                .route("/hooks/alertmanager", post(alertmanager))
                .layer(DefaultBodyLimit::max(HOOK_BODY_LIMIT)),
        )
        .with_state(Shared(Arc::new(service)))
        .layer(axum::middleware::from_fn(deadline));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "The HTTP listener stopped.");
        }
    });
    Ok(local)
}

/// How long one request may take, reading its body included: a client
/// that sends slowly cannot hold a handler.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn deadline(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {}s\n",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
}

async fn metrics_text(State(Shared(s)): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn ready(State(Shared(s)): State<Shared>) -> impl IntoResponse {
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

/// `POST /hooks/github`: a delivery signed with the shared secret
/// (`X-Hub-Signature-256`, compared in constant time). `ping` is answered;
/// a `push` to the watched branch asks for a full pass at once; anything
/// unsigned or wrongly signed is 401 and changes nothing.
async fn github(
    State(Shared(s)): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(secret) = &s.github_secret else {
        return (
            StatusCode::NOT_FOUND,
            "the GitHub webhook is off: set TEND_GITHUB_WEBHOOK_SECRET\n".into(),
        );
    };
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !signed(secret.as_bytes(), &body, signature) {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Hub-Signature-256\n".into(),
        );
    }
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match event {
        "ping" => (StatusCode::OK, "pong\n".into()),
        "push" => {
            let payload: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("the push payload is not JSON: {e}\n"),
                    )
                }
            };
            let pushed = payload
                .get("ref")
                .and_then(|r| r.as_str())
                .unwrap_or_default();
            match &s.branch {
                Some(b) if pushed != format!("refs/heads/{b}") && pushed != b => (
                    StatusCode::OK,
                    format!("ignored: a push to {pushed}; tend watches {b}\n"),
                ),
                _ => {
                    tracing::info!(pushed, "A push: reconciling now.");
                    (s.wake)();
                    (StatusCode::ACCEPTED, "a full pass starts now\n".into())
                }
            }
        }
        other => (StatusCode::OK, format!("ignored: event `{other}`\n")),
    }
}

/// `POST /hooks/alertmanager`: Alertmanager's webhook (version 4), with
/// `Authorization: Bearer <TEND_ALERTMANAGER_TOKEN>` compared in constant
/// time. Each alert labelled `tend_resource="<kind>/<name>"` becomes the
/// signal `alert/<alertname>` of that resource, and a healing pass starts
/// at once. A missing or wrong token is 401 and records nothing; a
/// malformed payload is 400 with the reason.
async fn alertmanager(
    State(Shared(s)): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(token) = &s.alertmanager_token else {
        return (
            StatusCode::NOT_FOUND,
            "the Alertmanager webhook is off: set TEND_ALERTMANAGER_TOKEN\n".into(),
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same(given.as_bytes(), token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token\n".into(),
        );
    }
    let alerts = match parse_alerts(&body) {
        Ok(a) => a,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let (mut recorded, mut ignored) = (0, 0);
    for a in alerts {
        let keys = match a.resource {
            Some(key) => vec![key],
            None => s.alerts.route(&a.name, &a.labels),
        };
        if keys.is_empty() {
            ignored += 1;
            continue;
        }
        for key in keys {
            s.alerts
                .set_instance(key, &a.name, &a.instance, a.firing, a.summary.clone());
        }
        recorded += 1;
    }
    if recorded > 0 {
        (s.heal)();
    }
    (
        StatusCode::OK,
        format!("recorded {recorded} alerts; ignored {ignored} without a tend_resource label\n"),
    )
}

/// One alert of a webhook payload.
struct PushedAlert {
    name: String,
    firing: bool,
    resource: Option<crate::vocab::ResourceKey>,
    labels: std::collections::BTreeMap<String, String>,
    /// Which instance of the alert (Alertmanager's fingerprint).
    instance: String,
    summary: String,
}

/// Reads Alertmanager's webhook payload (version 4).
fn parse_alerts(body: &[u8]) -> Result<Vec<PushedAlert>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the payload is not JSON: {e}"))?;
    if v.get("version").and_then(|x| x.as_str()) != Some("4") {
        return Err("expected Alertmanager's webhook payload, version \"4\"".into());
    }
    let alerts = v
        .get("alerts")
        .and_then(|a| a.as_array())
        .ok_or("the payload has no `alerts` list")?;
    alerts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let label = |k: &str| a.pointer(&format!("/labels/{k}")).and_then(|x| x.as_str());
            let name = label("alertname").ok_or(format!("alerts[{i}] has no alertname label"))?;
            let firing = match a.get("status").and_then(|x| x.as_str()) {
                Some("firing") => true,
                Some("resolved") => false,
                _ => return Err(format!("alerts[{i}].status must be firing or resolved")),
            };
            let resource = match label("tend_resource") {
                None => None,
                Some(r) => {
                    let (kind, name) = r.split_once('/').ok_or(format!(
                        "alerts[{i}]: tend_resource `{r}` is not <kind>/<name>"
                    ))?;
                    let kind = crate::vocab::Kind::parse(kind).ok_or(format!(
                        "alerts[{i}]: unknown kind `{kind}` in tend_resource"
                    ))?;
                    Some(crate::vocab::ResourceKey::new(kind, name))
                }
            };
            let summary = a
                .pointer("/annotations/summary")
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            let labels = a
                .get("labels")
                .and_then(|l| l.as_object())
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let instance = a
                .get("fingerprint")
                .and_then(|f| f.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{labels:?}"));
            Ok(PushedAlert {
                name: name.to_string(),
                firing,
                resource,
                labels,
                instance,
                summary,
            })
        })
        .collect()
}

/// Equal byte strings, compared in time that depends neither on where
/// they differ nor on their lengths: both are hashed first, and the
/// digests compared in constant time.
fn same(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body`
/// under `secret`, compared in constant time.
pub fn signed(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (L8): a token of another length was refused at once,
    /// telling the token's length apart by timing.
    #[test]
    fn l8_tokens_are_compared_whatever_their_length() {
        assert!(same(b"s3cret-token", b"s3cret-token"));
        assert!(!same(b"s3cret-token", b"s3cret-tokem"));
        assert!(!same(b"s3cret", b"s3cret-token"));
        assert!(!same(b"", b"s3cret-token"));
    }

    /// The example from GitHub's documentation on validating deliveries.
    #[test]
    fn signatures_are_checked_as_github_makes_them() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signed(secret, body, good));
        assert!(!signed(secret, b"Hello, World?", good));
        assert!(!signed(b"another secret", body, good));
        assert!(!signed(secret, body, "sha1=757107"));
        assert!(!signed(secret, body, "sha256=zz"));
        assert!(!signed(secret, body, ""));
    }
}
