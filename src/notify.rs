//! Reaching on-call: a publish sink that tells people about incident state
//! changes that matter (opened with a matched signature, escalated,
//! resolved after an earlier notification, a step held), once each, never
//! once per pass. Two routes, both what operators already run:
//!
//! - **Alertmanager** (`POST /api/v2/alerts`): each incident is an alert
//!   tend owns (`alertname="TendIncident"`), re-posted while it is open so
//!   Alertmanager keeps it firing, and posted with `endsAt` when it is
//!   resolved. Alertmanager's routing, grouping, inhibition and silences
//!   decide who is paged.
//! - **A webhook**: a CloudEvents 1.0 JSON event per state change, signed
//!   with HMAC-SHA256 (`X-Tend-Signature: t=<unix time>,v1=<hex>` over
//!   `<t>.<body>`), retried with backoff, carrying its dedupe key as the
//!   event `id` and `Idempotency-Key`.
//!
//! Every text is scrubbed of the pass's secrets. It never decides or acts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::model::Notify;
use crate::publish::{PublishError, Published, Sink};
use crate::state::{Incident, Notified, NotifyEvent};
use crate::vocab::{IncidentStatus, Secrets, StepOutcome};

/// How many times a webhook delivery is tried, and the first wait.
const ATTEMPTS: u32 = 4;
const FIRST_WAIT: Duration = Duration::from_millis(250);

/// The lines of a process's log a notification carries.
const LOG_LINES: usize = 20;

pub struct NotifySink {
    client: reqwest::Client,
    /// The state store of the last pass, kept open: a pass of `tend
    /// watch` does not open (and migrate) it again.
    store: Option<(crate::state::Location, Box<dyn crate::state::Store>)>,
}

impl Default for NotifySink {
    fn default() -> Self {
        NotifySink {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            store: None,
        }
    }
}

impl Sink for NotifySink {
    fn publish<'a>(
        &'a mut self,
        what: &'a Published<'a>,
    ) -> futures::future::BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.send(what))
    }
}

/// The state change of an incident worth telling, if any.
pub fn event_of(i: &Incident, told: &[NotifyEvent]) -> Option<NotifyEvent> {
    match i.status {
        IncidentStatus::Escalated => Some(NotifyEvent::Escalated),
        // Only after something was said: a quick self-heal is no news.
        IncidentStatus::Resolved => (!told.is_empty()).then_some(NotifyEvent::Resolved),
        IncidentStatus::Open => {
            if i.steps
                .last()
                .is_some_and(|s| s.outcome == StepOutcome::Held)
            {
                Some(NotifyEvent::Held)
            } else {
                i.signature.is_some().then_some(NotifyEvent::Opened)
            }
        }
    }
}

fn wanted(cfg: &Notify, i: &Incident, event: NotifyEvent) -> bool {
    (cfg.on.severities.is_empty() || cfg.on.severities.contains(&i.severity))
        && (cfg.on.events.is_empty() || cfg.on.events.iter().any(|e| e == event.as_str()))
}

fn node(cfg: &Notify) -> String {
    cfg.node
        .clone()
        .unwrap_or_else(|| nix_hostname().unwrap_or_else(|| "unknown".into()))
}

fn nix_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes a
    // NUL-terminated name into it (truncated if longer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The last lines of a host process's own log, scrubbed.
fn log_tail(state_dir: &std::path::Path, i: &Incident, secrets: &Secrets) -> Option<String> {
    if i.key.kind != crate::model::Kind::HostProcess {
        return None;
    }
    let path = state_dir
        .join("host/processes")
        .join(format!("{}.log", i.key.name));
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_LINES)..].join("\n");
    (!tail.is_empty()).then(|| secrets.scrub(&tail))
}

impl NotifySink {
    async fn send(&mut self, what: &Published<'_>) -> Result<(), PublishError> {
        let Published::Pass { applied, .. } = what else {
            return Ok(());
        };
        let Some(cfg) = &applied.notify else {
            return Ok(());
        };
        let at = (applied.state_dir.clone(), applied.shared.clone());
        if self.store.as_ref().is_none_or(|(was, _)| *was != at) {
            let opened = crate::state::open(&at.0, at.1.as_deref())
                .map_err(|e| PublishError::Notify(e.to_string()))?;
            self.store = Some((at, opened));
        }
        let store = match &self.store {
            Some((_, s)) => s.as_ref(),
            None => return Ok(()),
        };
        let secrets = &applied.secrets;
        let node = node(cfg);
        let mut failed = Vec::new();
        let now = Utc::now();
        let since = now
            - chrono::Duration::from_std(cfg.min_interval.0).unwrap_or(chrono::Duration::zero());
        let mut alerts = Vec::new();
        // The issue tend opened for an incident, where review is on.
        let issues: std::collections::HashMap<String, String> = store
            .review_log(1000)
            .map_err(|e| PublishError::Notify(e.to_string()))?
            .into_iter()
            .filter_map(|e| Some((e.subject, e.url?)))
            .filter(|(s, _)| s.starts_with("incident #"))
            .collect();
        for i in &applied.incidents {
            let issue = issues
                .get(&format!("incident #{}", i.id))
                .map(String::as_str);
            let told = store
                .notified_events(i.id)
                .map_err(|e| PublishError::Notify(e.to_string()))?;
            let event = event_of(i, &told);
            let tail = log_tail(&applied.state_dir, i, secrets);
            // Alertmanager: every open incident that was worth telling,
            // again each pass; a resolved one once, with its end.
            if cfg.alertmanager.is_some() {
                let firing = i.status != IncidentStatus::Resolved;
                let shown = match event {
                    Some(e) => wanted(cfg, i, e),
                    None => false,
                };
                if shown && (firing || !told.contains(&NotifyEvent::Resolved)) {
                    alerts.push(alert(i, &node, tail.as_deref(), issue, secrets));
                }
            }
            let Some(event) = event.filter(|e| wanted(cfg, i, *e)) else {
                continue;
            };
            let n = Notified {
                incident: i.id,
                key: &i.key,
                cause: &i.cause,
                event,
                at: now,
            };
            if store
                .was_notified(&n, since)
                .map_err(|e| PublishError::Notify(e.to_string()))?
            {
                continue;
            }
            if let Some(hook) = &cfg.webhook {
                let body = secrets
                    .scrub(&cloud_event(i, event, &node, tail.as_deref(), secrets).to_string());
                let secret = std::env::var(&hook.secret_env).unwrap_or_default();
                if let Err(e) = self
                    .deliver(&hook.url, &body, &secret, &event_id(i.id, event))
                    .await
                {
                    failed.push(e);
                    continue;
                }
            }
            store
                .record_notified(&n)
                .map_err(|e| PublishError::Notify(e.to_string()))?;
        }
        if let (Some(am), false) = (&cfg.alertmanager, alerts.is_empty()) {
            let url = format!("{}/api/v2/alerts", am.url.trim_end_matches('/'));
            let body = secrets.scrub(&Value::Array(alerts).to_string());
            let sent = self
                .client
                .post(&url)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => failed.push(format!("Alertmanager answered {}", r.status())),
                Err(e) => failed.push(format!("Alertmanager is unreachable: {e}")),
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(PublishError::Notify(secrets.scrub(&failed.join("; ")))),
        }
    }

    /// Posts a signed event, retrying with backoff on a failure or a 5xx.
    async fn deliver(&self, url: &str, body: &str, secret: &str, id: &str) -> Result<(), String> {
        let mut wait = FIRST_WAIT;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let t = Utc::now().timestamp();
            let sent = self
                .client
                .post(url)
                .header("Content-Type", "application/cloudevents+json")
                .header("Idempotency-Key", id)
                .header("X-Tend-Signature", signature(secret, t, body))
                .body(body.to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status().is_client_error() => {
                    return Err(format!("the webhook refused event {id}: {}", r.status()))
                }
                Ok(r) => last = format!("answered {}", r.status()),
                Err(e) => last = format!("unreachable: {e}"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        Err(format!(
            "the webhook did not take event {id} after {ATTEMPTS} tries: {last}"
        ))
    }
}

/// The dedupe key of one state change of one incident.
pub fn event_id(incident: i64, event: NotifyEvent) -> String {
    format!("tend-incident-{incident}-{}", event.as_str())
}

/// `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The incident as an Alertmanager alert.
fn alert(
    i: &Incident,
    node: &str,
    tail: Option<&str>,
    issue: Option<&str>,
    secrets: &Secrets,
) -> Value {
    let summary = secrets.scrub(&crate::report::render_incident(i, false));
    let mut annotations = json!({
        "summary": format!("{}/{}: {}", i.key.kind, i.key.name, i.cause),
        "description": summary,
        "state": i.state,
        "recommendation": i.recommendation,
    });
    if let Some(t) = tail {
        annotations["log_tail"] = json!(t);
    }
    if let Some(url) = issue {
        annotations["issue"] = json!(url);
    }
    let mut a = json!({
        "labels": {
            "alertname": "TendIncident",
            "tend_resource": format!("{}/{}", i.key.kind, i.key.name),
            "tend_incident": i.id.to_string(),
            "cause": i.cause,
            "severity": i.severity.to_string(),
            "node": node,
        },
        "annotations": annotations,
        "startsAt": rfc3339(i.detected_at),
    });
    a["endsAt"] = json!(match i.resolved_at {
        Some(t) => rfc3339(t),
        // Firing: Alertmanager keeps it while tend re-posts it.
        None => rfc3339(Utc::now() + chrono::Duration::hours(1)),
    });
    a
}

/// The incident as a CloudEvents 1.0 event.
fn cloud_event(
    i: &Incident,
    event: NotifyEvent,
    node: &str,
    tail: Option<&str>,
    secrets: &Secrets,
) -> Value {
    json!({
        "specversion": "1.0",
        "id": event_id(i.id, event),
        "source": format!("tend://{node}"),
        "type": format!("dev.tend.incident.{}", event.as_str()),
        "subject": format!("{}/{}", i.key.kind, i.key.name),
        "time": rfc3339(Utc::now()),
        "datacontenttype": "application/json",
        "data": {
            "incident": i,
            "summary": secrets.scrub(&crate::report::render_incident(i, false)),
            "logTail": tail,
            "node": node,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature a receiver recomputes from the shared secret, the
    /// timestamp and the raw body.
    #[test]
    fn the_signature_is_an_hmac_of_time_and_body() {
        let s = signature("shh", 1_800_000_000, "{\"a\":1}");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"shh").unwrap();
        mac.update(b"1800000000.{\"a\":1}");
        assert_eq!(
            s,
            format!(
                "t=1800000000,v1={}",
                hex::encode(mac.finalize().into_bytes())
            )
        );
        assert_eq!(
            event_id(7, NotifyEvent::Escalated),
            "tend-incident-7-escalated"
        );
    }

    fn incident(status: IncidentStatus, signature: Option<&str>) -> Incident {
        let t = Utc::now();
        Incident {
            id: 1,
            key: crate::model::ResourceKey::new(crate::model::Kind::HostProcess, "web"),
            status,
            cause: "c".into(),
            signature: signature.map(str::to_string),
            why: None,
            runbook: None,
            severity: crate::model::health::Severity::Warning,
            symptoms: json!([]),
            change: None,
            onset_at: t,
            detected_at: t,
            resolved_at: None,
            next_step: 0,
            state: String::new(),
            recommendation: String::new(),
            time_to_detect_ms: 0,
            time_to_recover_ms: None,
            node: None,
            steps: Vec::new(),
        }
    }

    /// What is worth telling: an escalation always; an opening only with
    /// a matched signature; a resolution only after something was said.
    #[test]
    fn each_state_change_that_matters_is_an_event() {
        use IncidentStatus::*;
        assert_eq!(
            event_of(&incident(Escalated, None), &[]),
            Some(NotifyEvent::Escalated)
        );
        assert_eq!(event_of(&incident(Open, None), &[]), None);
        assert_eq!(
            event_of(&incident(Open, Some("s")), &[]),
            Some(NotifyEvent::Opened)
        );
        assert_eq!(event_of(&incident(Resolved, None), &[]), None);
        assert_eq!(
            event_of(&incident(Resolved, None), &[NotifyEvent::Escalated]),
            Some(NotifyEvent::Resolved)
        );
    }
}
