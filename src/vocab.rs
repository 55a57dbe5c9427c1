//! The shared vocabulary of the loop: what every stage speaks of.
//!
//! Resource identities, live resources, field changes, actions with their
//! decisions and fingerprints, signal statuses and the typed states that
//! incidents and the journal move through. Every stage may use this module;
//! it uses nothing but `model` (the documents tend reads), and it must never
//! import a stage. See ARCHITECTURE.md.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use crate::model::health::{Severity, StepAction};
pub use crate::model::{Kind, Origin, ResourceKey};

/// The change a restart makes: the running instance is replaced. It is not
/// a field of any spec, so fight detection and diffs never see it as one.
pub const RESTART_PATH: &str = "/status/instance";

/// How a provider's note starts for a process that exited because its
/// address was in use: the health stage states it as the cause.
pub const PORT_CONFLICT: &str = "port conflict";

/// What kind of cause a cause is, for telling recurrences apart: the
/// stable part of its text. A port conflict carries the process's log line
/// (timestamps and all), which says nothing about whether the same failure
/// recurred; every other cause is a fixed text or a name from desired
/// state.
pub fn cause_kind(cause: &str) -> &str {
    if cause.starts_with(PORT_CONFLICT) {
        PORT_CONFLICT
    } else {
        cause
    }
}

/// One field that differs: where, what it is, what it should be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub path: String,
    pub from: Value,
    pub to: Value,
}

/// A live resource as a provider sees it, shaped like a desired `spec`.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveResource {
    pub key: ResourceKey,
    pub spec: Value,
    /// Carries tend's ownership marker (tag, record).
    pub owned: bool,
    /// The provider's own identifier (a path, a pid, an ARN).
    pub id: String,
    /// Something a human should know about this resource's live state.
    pub note: Option<String>,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ActionType {
    Create,
    Update,
    Delete,
    Restart,
    Stop,
    /// Delete and re-create (a runbook step).
    Replace,
    /// Change capacity (a runbook step).
    Scale,
    /// Run an allowlisted command on the host (a runbook step).
    Command,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
}

/// What may happen to an action: run it (`auto`), hold it for a later pass
/// (`deferred`, by a safety gate), propose it to a human (`review`), only
/// report it (`observe`), or refuse it (`deny`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Decision {
    Auto,
    Deferred,
    Review,
    Observe,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Stable across runs for the same correction: a hash of type, target
    /// and changes.
    pub fingerprint: String,
    #[serde(rename = "type")]
    pub action_type: ActionType,
    pub target: ResourceKey,
    pub changes: Vec<FieldChange>,
    pub risk: Risk,
    pub reversible: bool,
    pub decision: Decision,
    pub reasons: Vec<String>,
    /// What the provider noticed about the live resource (e.g. "pid 42 has
    /// exited"), for the human reading the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Fight detection stopped auto-correcting this action's fields.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub contested: bool,
    /// Where the resource is declared (absent for deletions).
    #[serde(rename = "declaredAt", skip_serializing_if = "Option::is_none")]
    pub declared_at: Option<Origin>,
    /// The incident this action is a runbook step of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentRef>,
    /// The merged approval that lets this action run although a policy
    /// asked for review.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// The spec a rollback step gives the provider in place of the
    /// declared one. Its changes, fingerprint and policy input are those of
    /// this spec: every action is decided on the change it makes.
    #[serde(skip)]
    pub rollback: Option<Box<Rollback>>,
    /// The change this action makes or answers (a change to a watched
    /// resource, verified for a window; a rollback of one that regressed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<Box<ChangeRef>>,
}

/// A change as policies, plans and incidents see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRef {
    /// The commit that declared the change, when known.
    pub commit: Option<String>,
    /// The changed fields' paths.
    pub fields: Vec<String>,
    /// The wave of its rollout (1-based), when it goes out in waves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// The resource is inside a change's verification window: this action
    /// answers a regression of that change.
    pub in_window: bool,
    /// When the change was applied (absent before it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A last known good spec a `reapply-last-good` step applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    /// The commit it was declared at, when known.
    pub commit: Option<String>,
    pub spec: Value,
}

/// Which approval authorised an action (the journal adds the commit that
/// carried it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRef {
    /// The approval document (`approvals/<kind>/<name>.yaml`).
    pub file: String,
    /// The fingerprint of the change it approves.
    pub fingerprint: String,
    /// When it expires (to the millisecond): a later approval of the same
    /// change is another approval.
    pub expires: DateTime<Utc>,
}

/// Which incident and runbook step an action carries out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentRef {
    pub cause: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    pub runbook: String,
    /// Zero-based index of the step in the runbook.
    pub step: usize,
    pub step_action: StepAction,
    pub severity: Severity,
    /// The trust of the signature that names the incident.
    pub trust: crate::model::health::Trust,
}

/// A signal's outcome, ordered so that worse compares greater.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Status {
    Healthy,
    Unknown,
    Unhealthy,
}

/// What the state store remembers of a signal from earlier passes.
#[derive(Debug, Clone, PartialEq)]
pub struct Remembered {
    pub status: Status,
    pub since: DateTime<Utc>,
    pub last_healthy: Option<DateTime<Utc>>,
}

/// Where an incident stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum IncidentStatus {
    /// tend is working on it (or a step waits for a human).
    Open,
    /// The runbook is exhausted: a human must act.
    Escalated,
    Resolved,
}

/// How one step tried for an incident ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumString,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum StepOutcome {
    /// Carried out, and the signals were healthy for the hold time.
    Verified,
    /// Carried out, but the signals did not recover in time.
    NotVerified,
    /// The step itself failed.
    Failed,
    /// Waiting for a human (review, deny, deferred, observe).
    Held,
    /// Passed over: it has stopped working for this cause.
    Skipped,
    /// The runbook is exhausted.
    Escalated,
    /// tend stopped while the step ran or was verified.
    Interrupted,
    /// The resource recovered without a step.
    Recovered,
    /// The declared state restored while the incident is escalated (a
    /// dead process started again, with backoff).
    Restored,
    /// Under way: carried out or being verified. A step still running
    /// when a pass begins was cut short by a stop of tend.
    Running,
    /// Not a step: a more specific cause was found, and names the
    /// incident from then on.
    Diagnosed,
}

/// Which side of a provider call a journal line records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum JournalPhase {
    /// Written before the provider is called.
    Intent,
    /// Written after, with what happened.
    Outcome,
    /// Why an action was not taken.
    Decision,
}

/// What a journal line says happened: the result of a provider call, or
/// for a `decision` line the decision that kept the action from running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JournalOutcome {
    Synced,
    Failed,
    /// A runbook step's effect held for its hold time.
    Verified,
    /// A runbook step's effect did not hold within its deadline.
    NotVerified,
    /// A pass ended between intent and outcome.
    Interrupted,
    Decided(Decision),
}

impl JournalOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalOutcome::Synced => "synced",
            JournalOutcome::Failed => "failed",
            JournalOutcome::Verified => "verified",
            JournalOutcome::NotVerified => "not-verified",
            JournalOutcome::Interrupted => "interrupted",
            JournalOutcome::Decided(d) => d.as_str(),
        }
    }

    pub fn parse(s: &str) -> Option<JournalOutcome> {
        Some(match s {
            "synced" => JournalOutcome::Synced,
            "failed" => JournalOutcome::Failed,
            "verified" => JournalOutcome::Verified,
            "not-verified" => JournalOutcome::NotVerified,
            "interrupted" => JournalOutcome::Interrupted,
            other => JournalOutcome::Decided(Decision::parse(other)?),
        })
    }
}

impl fmt::Display for JournalOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a journal line is about: an action, or the verification of a
/// runbook step that was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JournalAction {
    Act(ActionType),
    Verify,
    /// A human released the hold on a spec that failed verification.
    Release,
}

impl JournalAction {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalAction::Act(a) => a.as_str(),
            JournalAction::Verify => "verify",
            JournalAction::Release => "release",
        }
    }

    pub fn parse(s: &str) -> Option<JournalAction> {
        match s {
            "verify" => Some(JournalAction::Verify),
            "release" => Some(JournalAction::Release),
            other => ActionType::parse(other).map(JournalAction::Act),
        }
    }

    /// Whether the line is about a start of the resource (a process that
    /// ran again): a create, restart or replace.
    pub fn starts(self) -> bool {
        matches!(
            self,
            JournalAction::Act(ActionType::Create | ActionType::Restart | ActionType::Replace)
        )
    }
}

impl Serialize for JournalAction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for JournalAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for JournalOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

crate::model::words!(
    ActionType,
    Risk,
    Decision,
    Status,
    IncidentStatus,
    StepOutcome,
    JournalPhase
);

/// Whether a field name looks like it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "APIKEY",
        "API_KEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
        "ACCESS_KEY",
    ]
    .iter()
    .any(|s| upper.contains(s))
}

/// Every secret value tend knows of in a pass: the values of
/// secret-looking fields of the declared and live specs. Text that leaves
/// tend (reports, the journal, policy reasons, logs) is scrubbed of them,
/// the way CI systems mask registered secrets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Secrets {
    /// Longest first, so that a secret containing another is masked whole.
    values: Vec<String>,
}

/// What a secret is replaced with in text.
pub const MASK: &str = "***";

/// Shorter values are not masked in text (they would mangle every number
/// and word); their fields are still redacted wherever they are shown.
const MIN_MASKED_LEN: usize = 4;

impl Secrets {
    /// Collects the values of secret-looking fields anywhere in `specs`.
    pub fn collect<'a>(specs: impl IntoIterator<Item = &'a Value>) -> Secrets {
        let mut s = Secrets::default();
        for spec in specs {
            s.add_from(spec);
        }
        s
    }

    /// Adds the values of secret-looking fields of `spec`.
    pub fn add_from(&mut self, spec: &Value) {
        walk_secrets(spec, false, &mut |v| self.add(v));
        self.sort();
    }

    /// Adds the live values of the secret-looking fields that `declared`
    /// declares (and only those): live state cannot choose what is masked.
    pub fn add_live(&mut self, declared: &Value, live: &Value) {
        walk_declared_secrets(declared, live, false, &mut |v| self.add(v));
        self.sort();
    }

    /// Keeps `v` to mask, unless masking it would mangle tend's own output:
    /// short values, JSON keywords and numbers, and tend's markers.
    fn add(&mut self, v: &str) {
        let mangles = v.len() < MIN_MASKED_LEN
            || matches!(v, "null" | "true" | "false")
            || v.parse::<f64>().is_ok()
            || v.contains("tend:")
            || v.contains("<!--")
            || v.contains("-->");
        if mangles {
            return;
        }
        // As it appears in JSON text too, when escaping changes it: the
        // JSON string without its quotes.
        let quoted = Value::from(v).to_string();
        for form in [v, &quoted[1..quoted.len() - 1]] {
            if !self.values.iter().any(|x| x == form) {
                self.values.push(form.to_string());
            }
        }
    }

    fn sort(&mut self) {
        self.values
            .sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// `text` with every known secret value replaced by [`MASK`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }

    /// A copy of `spec` with secret-looking fields replaced by a keyed
    /// digest: a policy can tell that a secret is set and whether desired
    /// and live agree (equal digests in one pass), never its value.
    pub fn redact_spec(&self, spec: &Value) -> Value {
        redact_value(spec, false)
    }
}

/// Calls `f` with every string under a secret-looking key.
fn walk_secrets(v: &Value, secret: bool, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) if secret => f(s),
        Value::Object(m) => {
            for (k, child) in m {
                walk_secrets(child, secret || is_secret_name(k), f);
            }
        }
        Value::Array(items) => {
            for child in items {
                walk_secrets(child, secret, f);
            }
        }
        _ => {}
    }
}

/// Calls `f` with every live string at a secret-looking field `declared`
/// also has.
fn walk_declared_secrets(declared: &Value, live: &Value, secret: bool, f: &mut dyn FnMut(&str)) {
    match (declared, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (k, dv) in d {
                if let Some(lv) = l.get(k) {
                    walk_declared_secrets(dv, lv, secret || is_secret_name(k), f);
                }
            }
        }
        (Value::Array(d), Value::Array(l)) => {
            for (dv, lv) in d.iter().zip(l) {
                walk_declared_secrets(dv, lv, secret, f);
            }
        }
        (_, Value::String(s)) if secret => f(s),
        _ => {}
    }
}

fn redact_value(v: &Value, secret: bool) -> Value {
    redact_with(v, secret, &digest)
}

/// `v` with every value under a secret-looking key (or all of it, when
/// `secret`) replaced by `(redacted <digest>)`.
fn redact_with(v: &Value, secret: bool, digest: &dyn Fn(&Value) -> String) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, child)| {
                    let secret = secret || is_secret_name(k);
                    (k.clone(), redact_with(child, secret, digest))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|c| redact_with(c, secret, digest))
                .collect(),
        ),
        Value::Null => Value::Null,
        other if secret => Value::from(format!("(redacted {})", digest(other))),
        other => other.clone(),
    }
}

/// The key secret values are fingerprinted under: kept in the state, so
/// that fingerprints are stable from run to run, and never published, so
/// that a published fingerprint cannot be used to test a guess.
static FINGERPRINT_KEY: std::sync::RwLock<Option<[u8; 32]>> = std::sync::RwLock::new(None);

/// Uses `key` (from the state) for the fingerprints of secret values.
/// Without one, they are keyed by a key drawn for this process.
pub fn use_fingerprint_key(key: [u8; 32]) {
    *FINGERPRINT_KEY.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
}

/// A secret value as a fingerprint sees it: an HMAC under the state's key.
fn keyed(v: &Value) -> String {
    use hmac::{Hmac, Mac};
    static PROCESS: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = FINGERPRINT_KEY
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(|| *PROCESS.get_or_init(rand::random));
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(v.to_string().as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..8])
}

/// A declared spec's fingerprint: what a hold on a failed spec is keyed
/// by, and what an `Approval` names to release it. Keyed like a secret
/// value, so a stored fingerprint tells nothing about what the spec holds.
pub fn spec_digest(spec: &Value) -> String {
    keyed(spec)
}

/// What a changed value contributes to a fingerprint: its JSON text, with
/// secret values (the field itself, or fields under it) keyed.
fn fingerprint_text(v: &Value, secret: bool) -> String {
    redact_with(v, secret, &keyed).to_string()
}

/// A digest of a secret under a key drawn once per process: equal values
/// give equal digests within one run of tend, and nothing outside it can
/// test a guess against them.
fn digest(v: &Value) -> String {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    let mut h = Sha256::new();
    h.update(key);
    h.update(v.to_string().as_bytes());
    format!("sha256:{}", hex::encode(&h.finalize()[..8]))
}

/// What a secret-looking field's value is shown as.
pub const REDACTED: &str = "(redacted)";

/// Whether a field's JSON Pointer is under a secret-looking name at any
/// depth (`/spec/credentials/pass` as well as `/spec/env/API_TOKEN`).
pub fn secret_path(path: &str) -> bool {
    path.split('/').any(is_secret_name)
}

/// Plans are shown, journaled and posted; values of secret-looking fields
/// never are. The fingerprint is taken before redaction, over keyed digests
/// of secret values, so a changed secret is still a distinct change and the
/// fingerprint tells nothing about the value.
pub fn redact(mut change: FieldChange) -> FieldChange {
    if secret_path(&change.path) {
        for v in [&mut change.from, &mut change.to] {
            if !v.is_null() {
                *v = Value::from(REDACTED);
            }
        }
    }
    change
}

/// A short stable hash of what an action does: the same correction gets
/// the same fingerprint in every run and every output format.
pub fn fingerprint(t: ActionType, key: &ResourceKey, changes: &[FieldChange]) -> String {
    let mut h = Sha256::new();
    h.update(t.as_str().as_bytes());
    h.update([0]);
    h.update(key.kind.as_str().as_bytes());
    h.update([0]);
    h.update(key.name.as_bytes());
    for c in changes {
        let secret = secret_path(&c.path);
        h.update([0]);
        h.update(c.path.as_bytes());
        h.update([0]);
        h.update(fingerprint_text(&c.from, secret).as_bytes());
        h.update([0]);
        h.update(fingerprint_text(&c.to, secret).as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// An error and its causes on one line, each cause said once: a cause
/// whose text the message already carries is not repeated.
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}

/// The fingerprint of a resource's pending review: what a pull request
/// proposes and an approval names. One action's own fingerprint, so the
/// plan and the pull request show the same; for several actions on one
/// resource, a hash of theirs in order.
pub fn change_fingerprint<'a>(fingerprints: impl IntoIterator<Item = &'a str>) -> String {
    let mut all: Vec<&str> = fingerprints.into_iter().collect();
    if all.len() == 1 {
        return all[0].to_string();
    }
    all.sort_unstable();
    let mut h = Sha256::new();
    for f in all {
        h.update(f.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (M1): live state chooses nothing tend masks. Only the
    /// live values of declared secret fields count, and values that would
    /// mangle tend's output (JSON keywords, numbers, its markers) never do.
    #[test]
    fn m1_live_state_cannot_choose_what_is_masked() {
        let declared =
            serde_json::json!({"env": {"API_TOKEN": "declared-token"}, "tags": {"team": "web"}});
        let live = serde_json::json!({
            "env": {"API_TOKEN": "hunter22-live", "X_SECRET": "web-frontend"},
            "tags": {"team": "web", "api_token": "review"},
        });
        let mut s = Secrets::collect([&declared]);
        s.add_live(&declared, &live);
        assert!(s.values().iter().any(|v| v == "hunter22-live"));
        assert!(!s
            .values()
            .iter()
            .any(|v| v == "web-frontend" || v == "review"));
        let mut s = Secrets::default();
        for v in [
            "null",
            "true",
            "12345",
            "<!-- tend:status -->",
            "tend:review",
        ] {
            s.add_from(&serde_json::json!({"password": v}));
        }
        assert!(s.is_empty(), "{:?}", s.values());
        // A secret with a quote is masked in JSON text as well.
        s.add_from(&serde_json::json!({"password": "pa\"ss-word"}));
        let json = serde_json::json!({"detail": "pa\"ss-word"}).to_string();
        assert!(!s.scrub(&json).contains("ss-word"), "{}", s.scrub(&json));
    }

    /// Regression (M5): a port conflict's cause carries the log line, so a
    /// timestamp in it made every recurrence look new and the crash-loop
    /// guard never tripped (33 incidents instead of escalation at 4).
    #[test]
    fn m5_a_changing_log_line_is_the_same_cause() {
        let a = "port conflict: 1764763200123 listen 127.0.0.1:8080: address already in use";
        let b = "port conflict: 1764763205456 listen 127.0.0.1:8080: address already in use";
        assert_eq!(cause_kind(a), cause_kind(b));
        assert_eq!(
            cause_kind("SLO availability is breached"),
            "SLO availability is breached"
        );
        assert_ne!(cause_kind(a), cause_kind("the process is not running"));
    }
    use serde_json::json;

    #[test]
    fn secret_values_are_redacted() {
        let c = redact(FieldChange {
            path: "/spec/env/API_TOKEN".into(),
            from: json!("old"),
            to: json!("new"),
        });
        assert_eq!((c.from, c.to), (json!("(redacted)"), json!("(redacted)")));
        let c = redact(FieldChange {
            path: "/spec/env/PORT".into(),
            from: json!("1"),
            to: json!("2"),
        });
        assert_eq!(c.to, json!("2"));
    }

    /// Regression (L8): a short value under a secret-named parent is
    /// redacted like any other secret field.
    #[test]
    fn l8_a_field_under_a_secret_parent_is_redacted() {
        let shown = redact(FieldChange {
            path: "/spec/credentials/pass".into(),
            from: Value::from("abc"),
            to: Value::from("xyz"),
        });
        assert_eq!(shown.from, Value::from(REDACTED));
        assert_eq!(shown.to, Value::from(REDACTED));
        let plain = redact(FieldChange {
            path: "/spec/content".into(),
            from: Value::from("abc"),
            to: Value::from("xyz"),
        });
        assert_eq!(plain.to, Value::from("xyz"));
    }

    /// Regression (M3): the fingerprint of a secret change is keyed, so
    /// it cannot be recomputed from a guess at the live value; a changed
    /// secret is still another change.
    #[test]
    fn m3_a_secret_change_fingerprint_is_no_oracle() {
        let k = ResourceKey::new(Kind::HostProcess, "web");
        let change = |from: &str| FieldChange {
            path: "/spec/env/API_TOKEN".into(),
            from: Value::from(from),
            to: Value::from("n3w-t0ken-value"),
        };
        let unkeyed = |from: &str| {
            let mut h = Sha256::new();
            for part in ["update", "host.Process", "web", "/spec/env/API_TOKEN"] {
                h.update(part.as_bytes());
                h.update([0]);
            }
            h.update(Value::from(from).to_string().as_bytes());
            h.update([0]);
            h.update(Value::from("n3w-t0ken-value").to_string().as_bytes());
            hex::encode(&h.finalize()[..8])
        };
        let fp = fingerprint(ActionType::Update, &k, &[change("hunter22")]);
        assert_ne!(fp, unkeyed("hunter22"));
        assert_eq!(
            fp,
            fingerprint(ActionType::Update, &k, &[change("hunter22")])
        );
        assert_ne!(
            fp,
            fingerprint(ActionType::Update, &k, &[change("hunter23")])
        );
        // A secret nested in an object is keyed too.
        let nested = |v: &str| FieldChange {
            path: "/spec/env".into(),
            from: serde_json::json!({"API_TOKEN": v}),
            to: serde_json::json!({}),
        };
        let text = fingerprint_text(&nested("hunter22").from, false);
        assert!(!text.contains("hunter22"), "{text}");
        // Other values are hashed as they are, as before.
        assert_eq!(fingerprint_text(&Value::from("plain"), false), "\"plain\"");
    }

    #[test]
    fn fingerprints_are_stable_and_distinct() {
        let k = ResourceKey::new(Kind::HostFile, "a");
        let a = fingerprint(ActionType::Create, &k, &[]);
        assert_eq!(a, fingerprint(ActionType::Create, &k, &[]));
        assert_ne!(a, fingerprint(ActionType::Delete, &k, &[]));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn secrets_are_collected_scrubbed_and_redacted_for_policies() {
        let desired = json!({"command": "app", "env": {"API_TOKEN": "hunter2-very-secret", "PORT": "8080"},
            "auth": {"password": "correct horse"}, "short": {"secret": "abc"}});
        let live = json!({"env": {"API_TOKEN": "older-token-value"}});
        let s = Secrets::collect([&desired, &live]);
        assert_eq!(
            s.values(),
            ["hunter2-very-secret", "older-token-value", "correct horse"]
        );
        assert_eq!(
            s.scrub("reason: token hunter2-very-secret was older-token-value"),
            "reason: token *** was ***"
        );
        let r = s.redact_spec(&desired);
        assert_eq!(r["env"]["PORT"], json!("8080"));
        let token = r["env"]["API_TOKEN"].as_str().unwrap();
        assert!(token.starts_with("(redacted sha256:"), "{token}");
        assert!(!r.to_string().contains("hunter2"));
        assert_eq!(
            r["env"]["API_TOKEN"],
            s.redact_spec(&desired)["env"]["API_TOKEN"]
        );
        assert_ne!(
            r["env"]["API_TOKEN"],
            s.redact_spec(&live)["env"]["API_TOKEN"]
        );
    }

    #[test]
    fn typed_states_round_trip_through_their_names() {
        for o in [
            "verified",
            "not-verified",
            "held",
            "interrupted",
            "recovered",
        ] {
            assert_eq!(StepOutcome::parse(o).unwrap().as_str(), o);
        }
        for o in ["synced", "failed", "interrupted", "review", "deny"] {
            assert_eq!(JournalOutcome::parse(o).unwrap().as_str(), o);
        }
        assert_eq!(
            IncidentStatus::parse("escalated"),
            Some(IncidentStatus::Escalated)
        );
        assert_eq!(JournalOutcome::parse("nonsense"), None);
    }
}
