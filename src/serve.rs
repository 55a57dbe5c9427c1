//! The HTTP listener of `tend watch` (`--listen`): `GET /metrics` (tend's
//! own metrics), `GET /healthz` (the process is alive), `GET /readyz` (the
//! last pass succeeded recently), `POST /hooks/github` (a signed push
//! starts a full pass at once), `POST /hooks/alertmanager`, and `POST
//! /pause` / `POST /resume` (the emergency switch, with its own token). It
//! only reads what the passes published, records pauses, and asks the
//! loop for a pass; it never acts itself. See ARCHITECTURE.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
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
    /// The bearer token of `POST /pause` and `POST /resume`
    /// (`TEND_PAUSE_TOKEN`); without it both are off.
    pub pause_token: Option<String>,
    /// Records a pause, or ends pauses; answers what it did.
    pub pauses: Arc<dyn Fn(PauseRequest) -> Result<String, String> + Send + Sync>,
    /// Tells the other members of a fleet what this one received.
    pub announce: Arc<dyn Fn(crate::fleet::Announcement) + Send + Sync>,
}

/// What `POST /pause` and `POST /resume` ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum PauseRequest {
    Pause {
        selector: String,
        until: Option<chrono::DateTime<chrono::Utc>>,
        reason: String,
    },
    /// `None`: every pause.
    Resume { selector: Option<String> },
}

/// What the handlers read.
#[derive(Clone)]
struct Shared {
    service: Arc<Service>,
    /// Turns to read an authenticated hook's body.
    reads: Arc<tokio::sync::Semaphore>,
    /// GitHub deliveries already handled.
    deliveries: Arc<std::sync::Mutex<Deliveries>>,
}

/// GitHub's deliveries can be large (a push of many commits).
const GITHUB_BODY_LIMIT: usize = 5 * 1024 * 1024;

/// Alertmanager batches alerts; the alert book keeps at most a few
/// hundred per resource anyway.
const ALERTMANAGER_BODY_LIMIT: usize = 1024 * 1024;

/// At most this many connections are open at once, fewer when the file
/// descriptor limit is low (a quarter of it): idle connections can never
/// take the descriptors a pass needs.
const MAX_CONNECTIONS: usize = 256;

/// A client has this long to send a request's head, on a new connection
/// and between requests on a kept-alive one; then the connection closes.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many hook bodies are read at once, after authentication.
const HOOK_READS: usize = 4;

/// Binds `addr` and serves until the runtime stops. Returns the address
/// bound (port 0 picks a free one).
pub async fn spawn(addr: SocketAddr, service: Service) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/hooks/github", post(github))
        .route("/hooks/alertmanager", post(alertmanager))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(Shared {
            service: Arc::new(service),
            reads: Arc::new(tokio::sync::Semaphore::new(HOOK_READS)),
            deliveries: Arc::new(std::sync::Mutex::new(Deliveries::default())),
        })
        .layer(axum::middleware::from_fn(deadline));
    let limit = connection_limit();
    tokio::spawn(accept(listener, app, limit));
    Ok(local)
}

/// How many connections may be open at once: [`MAX_CONNECTIONS`], or a
/// quarter of the file descriptor limit when that is lower. The soft
/// limit is first raised towards the hard one, as servers commonly do.
fn connection_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given, which
    // lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return MAX_CONNECTIONS;
    }
    let wanted = limit.rlim_max.min(65_536);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = wanted;
        }
    }
    usize::try_from(limit.rlim_cur / 4)
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(8, MAX_CONNECTIONS)
}

/// One open connection, as the accept loop sees it.
struct Open {
    /// Whether a request is being answered on it.
    busy: Arc<std::sync::atomic::AtomicBool>,
    /// Closes it.
    close: tokio::sync::oneshot::Sender<()>,
}

/// Accepts connections and serves each on its own task, with a header
/// timeout and at most `limit` open. When all are taken, the oldest
/// connection that is not answering a request is closed to make room;
/// when every one is busy, the next connection waits in the kernel's
/// backlog until one ends (a request ends within [`REQUEST_TIMEOUT`]).
async fn accept(listener: tokio::net::TcpListener, app: Router, limit: usize) {
    use std::sync::atomic::Ordering;
    let open = Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u64, Open>::new(),
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut next_id = 0u64;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                close_oldest_idle(&open);
                match slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return,
                }
            }
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "The HTTP listener could not accept a connection.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (close, closed) = tokio::sync::oneshot::channel();
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        next_id += 1;
        open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            next_id,
            Open {
                busy: busy.clone(),
                close,
            },
        );
        let (id, app, open) = (next_id, app.clone(), open.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                use tower::ServiceExt;
                let busy = busy.clone();
                busy.store(true, Ordering::Relaxed);
                let answer = app.clone().oneshot(req);
                async move {
                    let response = answer.await;
                    busy.store(false, Ordering::Relaxed);
                    response
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = closed => {}
            }
            open.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
    }
}

/// Closes the oldest open connection that is not answering a request.
fn close_oldest_idle(open: &std::sync::Mutex<std::collections::BTreeMap<u64, Open>>) {
    let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
    let idle = open
        .iter()
        .find(|(_, c)| !c.busy.load(std::sync::atomic::Ordering::Relaxed))
        .map(|(id, _)| *id);
    if let Some(oldest) = idle.and_then(|id| open.remove(&id)) {
        // The connection may have ended on its own meanwhile.
        let _ = oldest.close.send(());
    }
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

/// Reads an authenticated hook's body, at most `limit` bytes, while at
/// most [`HOOK_READS`] are read at once.
async fn read_body(
    reads: &tokio::sync::Semaphore,
    body: Body,
    limit: usize,
) -> Result<Bytes, (StatusCode, String)> {
    let _turn = reads.acquire().await.map_err(|_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the listener is stopping\n".to_string(),
        )
    })?;
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body could not be read within {limit} bytes: {e}\n"),
        )
    })
}

/// The delivery ids of GitHub webhook deliveries already handled, the
/// newest [`Deliveries::KEPT`]: a replayed delivery starts nothing.
#[derive(Default)]
struct Deliveries {
    order: std::collections::VecDeque<String>,
    seen: std::collections::HashSet<String>,
}

impl Deliveries {
    const KEPT: usize = 1024;

    /// Records `id`; false when it was already recorded.
    fn first(&mut self, id: &str) -> bool {
        if !self.seen.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > Self::KEPT {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    let s = &shared.service;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn ready(State(shared): State<Shared>) -> impl IntoResponse {
    let s = &shared.service;
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
/// unsigned or wrongly signed is 401 and changes nothing. A delivery
/// without a well-formed signature header is refused before its body is
/// read; a delivery id already handled starts nothing.
async fn github(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let s = &shared.service;
    let Some(secret) = &s.github_secret else {
        return (
            StatusCode::NOT_FOUND,
            "the GitHub webhook is off: set TEND_GITHUB_WEBHOOK_SECRET\n".into(),
        );
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let signature = header("x-hub-signature-256");
    let unsigned = (
        StatusCode::UNAUTHORIZED,
        "missing or wrong X-Hub-Signature-256\n".to_string(),
    );
    if !well_formed(signature) {
        return unsigned;
    }
    let event = header("x-github-event");
    if !matches!(event, "ping" | "push") {
        return (StatusCode::OK, format!("ignored: event `{event}`\n"));
    }
    let body = match read_body(&shared.reads, body, GITHUB_BODY_LIMIT).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    if !signed(secret.as_bytes(), &body, signature) {
        return unsigned;
    }
    let delivery = header("x-github-delivery");
    if delivery.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Delivery\n".into(),
        );
    }
    let first = shared
        .deliveries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .first(delivery);
    if !first {
        return (
            StatusCode::OK,
            format!("ignored: delivery {delivery} was already handled\n"),
        );
    }
    if event == "ping" {
        return (StatusCode::OK, "pong\n".into());
    }
    let pushed = match pushed_ref(&body) {
        Ok(r) => r,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    match &s.branch {
        Some(b) if pushed != format!("refs/heads/{b}") && pushed != *b => (
            StatusCode::OK,
            format!("ignored: a push to {pushed}; tend watches {b}\n"),
        ),
        _ => {
            tracing::info!(pushed, "A push: reconciling now.");
            (s.wake)();
            (s.announce)(crate::fleet::Announcement::Changed);
            (StatusCode::ACCEPTED, "a full pass starts now\n".into())
        }
    }
}

/// Whether a signature header has the form GitHub sends
/// (`sha256=` and 64 hexadecimal digits).
fn well_formed(signature: &str) -> bool {
    signature
        .strip_prefix("sha256=")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The ref of a push payload. The event type is not signed, so the body
/// must be a push: `ref`, `before` and `after` are all strings.
fn pushed_ref(body: &[u8]) -> Result<String, String> {
    let payload: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the push payload is not JSON: {e}"))?;
    let field = |k: &str| payload.get(k).and_then(|v| v.as_str());
    match (field("ref"), field("before"), field("after")) {
        (Some(r), Some(_), Some(_)) => Ok(r.to_string()),
        _ => Err("not a push payload: it needs `ref`, `before` and `after`".into()),
    }
}

/// `POST /hooks/alertmanager`: Alertmanager's webhook (version 4), with
/// `Authorization: Bearer <TEND_ALERTMANAGER_TOKEN>` compared in constant
/// time. Each alert labelled `tend_resource="<kind>/<name>"` becomes the
/// signal `alert/<alertname>` of that resource, and a healing pass starts
/// at once. A missing or wrong token is 401, before the body is read, and
/// records nothing; a malformed payload is 400 with the reason.
async fn alertmanager(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let s = &shared.service;
    if let Err(refused) = bearer(
        s.alertmanager_token.as_deref(),
        "the Alertmanager webhook is off: set TEND_ALERTMANAGER_TOKEN",
        &headers,
    ) {
        return refused;
    }
    let body = match read_body(&shared.reads, body, ALERTMANAGER_BODY_LIMIT).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
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
            (s.announce)(crate::fleet::Announcement::Alert {
                kind: key.kind.as_str().to_string(),
                name: key.name.clone(),
                alertname: a.name.clone(),
                instance: a.instance.clone(),
                firing: a.firing,
                summary: a.summary.clone(),
            });
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

/// A hook's bearer token, checked from the request's head before its
/// body is read: 404 while the hook is off (`off` says how to turn it
/// on), 401 when the token is missing or wrong.
fn bearer(token: Option<&str>, off: &str, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let Some(token) = token else {
        return Err((StatusCode::NOT_FOUND, format!("{off}\n")));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same(given.as_bytes(), token.as_bytes()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token\n".into(),
        ));
    }
    Ok(())
}

/// A pause or resume body: JSON with `selector`, and for a pause `reason`
/// and `for` (a duration such as `30m`).
fn pause_body(body: &[u8], pause: bool) -> Result<PauseRequest, String> {
    let v: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?
    };
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let selector = text("selector");
    if let Some(sel) = &selector {
        crate::policy::gates::check_pause_selector(sel)?;
    }
    if !pause {
        return Ok(PauseRequest::Resume { selector });
    }
    let reason = text("reason")
        .filter(|r| !r.trim().is_empty())
        .ok_or("a pause needs a `reason`")?;
    let until = match text("for") {
        Some(d) => {
            let d = humantime::parse_duration(&d).map_err(|e| format!("`for`: {e}"))?;
            Some(chrono::Utc::now() + chrono::Duration::from_std(d).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    Ok(PauseRequest::Pause {
        selector: selector.unwrap_or_default(),
        until,
        reason,
    })
}

async fn pause_or_resume(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
    pause: bool,
) -> (StatusCode, String) {
    let s = &shared.service;
    if let Err(refused) = bearer(
        s.pause_token.as_deref(),
        "pause and resume are off: set TEND_PAUSE_TOKEN",
        headers,
    ) {
        return refused;
    }
    let body = match read_body(&shared.reads, body, 64 * 1024).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let request = match pause_body(&body, pause) {
        Ok(r) => r,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    match (s.pauses)(request) {
        Ok(done) => {
            // Honoured at once: a pass reads it now, on every member.
            (s.wake)();
            (s.announce)(crate::fleet::Announcement::Changed);
            (StatusCode::OK, format!("{done}\n"))
        }
        Err(why) => (StatusCode::CONFLICT, format!("{why}\n")),
    }
}

async fn pause(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    pause_or_resume(&shared, &headers, body, true).await
}

async fn resume(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    pause_or_resume(&shared, &headers, body, false).await
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

    /// Regression (L3): the event type is not signed, so only a body
    /// shaped like a push is one; a delivery id counts once.
    #[test]
    fn l3_only_a_push_payload_is_a_push_and_a_delivery_counts_once() {
        assert_eq!(
            pushed_ref(br#"{"ref":"refs/heads/main","before":"a","after":"b"}"#),
            Ok("refs/heads/main".to_string())
        );
        assert!(pushed_ref(br#"{"zen":"Keep it logically awesome.","hook_id":1}"#).is_err());
        assert!(pushed_ref(br#"{"ref":"refs/heads/main"}"#).is_err());
        let mut seen = Deliveries::default();
        assert!(seen.first("d-1"));
        assert!(!seen.first("d-1"));
        for i in 0..Deliveries::KEPT {
            assert!(seen.first(&format!("other-{i}")));
        }
        assert!(seen.first("d-1"), "the oldest ids are forgotten");
        assert!(seen.seen.len() <= Deliveries::KEPT);
    }

    #[test]
    fn a_signature_header_must_look_like_githubs_before_a_body_is_read() {
        assert!(well_formed(&format!("sha256={}", "a1".repeat(32))));
        assert!(!well_formed("sha256=a1"));
        assert!(!well_formed(&format!("sha1={}", "a1".repeat(32))));
        assert!(!well_formed(&format!("sha256={}", "zz".repeat(32))));
        assert!(!well_formed(""));
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
