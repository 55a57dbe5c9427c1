//! From differences to candidate actions, each with a decision.
//!
//! Every correction becomes an [`Action`] with a type, a target, the exact
//! field changes, its risk and reversibility, and a stable fingerprint. The
//! decision here is the mode ceiling (global, lowered per resource). Planning
//! is pure: no I/O, no clock.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::diff::{Change, Diff, FieldChange};
use crate::model::{Kind, Mode, ResourceKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
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

impl ActionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Create => "create",
            ActionType::Update => "update",
            ActionType::Delete => "delete",
            ActionType::Restart => "restart",
            ActionType::Stop => "stop",
            ActionType::Replace => "replace",
            ActionType::Scale => "scale",
            ActionType::Command => "command",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }
}

/// What may happen to an action: run it (`auto`), hold it for a later pass
/// (`deferred`, by a safety gate), propose it to a human (`review`), only
/// report it (`observe`), or refuse it (`deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Auto,
    Deferred,
    Review,
    Observe,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Auto => "auto",
            Decision::Deferred => "deferred",
            Decision::Review => "review",
            Decision::Observe => "observe",
            Decision::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
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
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub contested: bool,
    /// Where the resource is declared (absent for deletions).
    #[serde(rename = "declaredAt", skip_serializing_if = "Option::is_none")]
    pub declared_at: Option<crate::model::Origin>,
    /// The incident this action is a runbook step of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentRef>,
}

/// Which incident and runbook step an action carries out.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentRef {
    pub cause: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    pub runbook: String,
    /// Zero-based index of the step in the runbook.
    pub step: usize,
    pub step_action: crate::model::health::StepAction,
    pub severity: crate::model::health::Severity,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unmanaged {
    #[serde(flatten)]
    pub target: ResourceKey,
    pub reason: String,
}

/// Where the desired state came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceInfo {
    pub origin: String,
    pub commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub source: SourceInfo,
    pub mode: Mode,
    pub resources: usize,
    pub in_sync: usize,
    pub actions: Vec<Action>,
    pub unmanaged: Vec<Unmanaged>,
    /// The health of every watched resource.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<crate::health::Assessment>,
    /// Unhealthy resources and the runbook step each takes next.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remedies: Vec<crate::health::remedy::Remedy>,
}

impl Plan {
    /// Actions that would change something if allowed.
    pub fn pending(&self) -> usize {
        self.actions.len()
    }

    pub fn count(&self, t: ActionType) -> usize {
        self.actions.iter().filter(|a| a.action_type == t).count()
    }
}

/// Inputs that shape decisions, besides the diff.
pub struct PlanInput<'a> {
    pub source: SourceInfo,
    pub mode: Mode,
    pub resources: usize,
    /// The per-resource mode, when `metadata.mode` sets one.
    pub resource_mode: &'a dyn Fn(&ResourceKey) -> Option<Mode>,
}

pub fn plan(diff: &Diff, input: PlanInput<'_>) -> Plan {
    let mut actions = Vec::with_capacity(diff.changes.len());
    let mut unmanaged = Vec::new();
    for change in &diff.changes {
        let (action_type, changes) = match change {
            Change::Create { fields, .. } => (ActionType::Create, fields.clone()),
            Change::Update { key, fields } => (update_type(key.kind, fields), fields.clone()),
            Change::Delete { .. } => (ActionType::Delete, Vec::new()),
            Change::Unmanaged { key, reason } => {
                unmanaged.push(Unmanaged {
                    target: key.clone(),
                    reason: reason.clone(),
                });
                continue;
            }
        };
        let key = change.key();
        let (risk, reversible) = classify(key.kind, action_type);
        let (decision, reasons) = ceiling(input.mode, (input.resource_mode)(key));
        actions.push(Action {
            fingerprint: fingerprint(action_type, key, &changes),
            action_type,
            target: key.clone(),
            changes: changes.into_iter().map(redact).collect(),
            risk,
            reversible,
            decision,
            reasons,
            note: None,
            contested: false,
            declared_at: None,
            incident: None,
        });
    }
    Plan {
        source: input.source,
        mode: input.mode,
        resources: input.resources,
        in_sync: diff.in_sync,
        actions,
        unmanaged,
        health: Vec::new(),
        remedies: Vec::new(),
    }
}

/// A process whose only drift is that it is not running is restarted; one
/// that should stop is stopped; any other change is an update.
fn update_type(kind: Kind, fields: &[FieldChange]) -> ActionType {
    if kind != Kind::HostProcess {
        return ActionType::Update;
    }
    match fields {
        [only] if only.path == "/spec/state" && only.to == "running" => ActionType::Restart,
        [only] if only.path == "/spec/state" && only.to == "stopped" => ActionType::Stop,
        _ => ActionType::Update,
    }
}

fn classify(kind: Kind, t: ActionType) -> (Risk, bool) {
    match (kind, t) {
        (_, ActionType::Delete) => (Risk::High, false),
        (Kind::HostProcess, ActionType::Update) => (Risk::Medium, true),
        (_, ActionType::Stop) => (Risk::Medium, true),
        _ => (Risk::Low, true),
    }
}

pub fn ceiling(global: Mode, resource: Option<Mode>) -> (Decision, Vec<String>) {
    let effective = resource.map_or(global, |r| r.min(global));
    let why = match resource {
        Some(r) if r < global => format!("metadata.mode is {r}"),
        _ => format!("mode is {global}"),
    };
    let decision = match effective {
        Mode::Auto => Decision::Auto,
        Mode::Recommend => Decision::Review,
        Mode::Observe => Decision::Observe,
    };
    (decision, vec![why])
}

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

/// Plans are shown, journaled and posted; values of secret-looking fields
/// never are. The fingerprint is taken before redaction, so a changed secret
/// is still a distinct change.
fn redact(mut change: FieldChange) -> FieldChange {
    let last = change.path.rsplit('/').next().unwrap_or_default();
    if is_secret_name(last) {
        for v in [&mut change.from, &mut change.to] {
            if !v.is_null() {
                *v = Value::from("(redacted)");
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
        h.update([0]);
        h.update(c.path.as_bytes());
        h.update([0]);
        h.update(c.from.to_string().as_bytes());
        h.update([0]);
        h.update(c.to.to_string().as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(mode: Mode) -> PlanInput<'static> {
        PlanInput {
            source: SourceInfo {
                origin: "x".into(),
                commit: None,
            },
            mode,
            resources: 1,
            resource_mode: &|_| None,
        }
    }

    #[test]
    fn killed_process_is_a_restart() {
        let key = ResourceKey::new(Kind::HostProcess, "web");
        let d = Diff {
            changes: vec![Change::Update {
                key,
                fields: vec![FieldChange {
                    path: "/spec/state".into(),
                    from: json!("stopped"),
                    to: json!("running"),
                }],
            }],
            in_sync: 0,
        };
        let p = plan(&d, input(Mode::Auto));
        assert_eq!(p.actions[0].action_type, ActionType::Restart);
        assert_eq!(p.actions[0].decision, Decision::Auto);
    }

    #[test]
    fn resource_mode_only_lowers() {
        let d = Diff {
            changes: vec![Change::Create {
                key: ResourceKey::new(Kind::HostFile, "a"),
                fields: vec![],
            }],
            in_sync: 0,
        };
        let p = plan(
            &d,
            PlanInput {
                resource_mode: &|_| Some(Mode::Auto),
                ..input(Mode::Recommend)
            },
        );
        assert_eq!(p.actions[0].decision, Decision::Review);
        let p = plan(
            &d,
            PlanInput {
                resource_mode: &|_| Some(Mode::Observe),
                ..input(Mode::Auto)
            },
        );
        assert_eq!(p.actions[0].decision, Decision::Observe);
        assert_eq!(p.actions[0].reasons, vec!["metadata.mode is observe"]);
    }

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

    #[test]
    fn fingerprints_are_stable_and_distinct() {
        let k = ResourceKey::new(Kind::HostFile, "a");
        let a = fingerprint(ActionType::Create, &k, &[]);
        assert_eq!(a, fingerprint(ActionType::Create, &k, &[]));
        assert_ne!(a, fingerprint(ActionType::Delete, &k, &[]));
        assert_eq!(a.len(), 16);
    }
}
