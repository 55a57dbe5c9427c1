//! From a diagnosed problem to the runbook step to take next. Pure: the
//! incident so far and the remediation statistics are passed in.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::health::Problem;
use crate::model::health::{Runbook, RunbookSpec, Step, StepAction};
use crate::model::{Kind, Resource, ResourceKey};
use crate::vocab::{
    fingerprint, Action, ActionType, Decision, FieldChange, IncidentRef, LiveResource, Risk,
    Rollback, RESTART_PATH,
};

/// The runbook tend uses when none is named: restart a process (re-apply
/// anything else), then hand over.
pub fn builtin_runbook(kind: Kind) -> RunbookSpec {
    let first = if kind == Kind::HostProcess {
        StepAction::Restart
    } else {
        StepAction::Reapply
    };
    let step = |action| Step {
        action,
        within: None,
        hold: None,
        command: Vec::new(),
        by: None,
    };
    RunbookSpec {
        description: Some("built in: correct the resource once, then escalate".into()),
        steps: vec![step(first), step(StepAction::Escalate)],
    }
}

pub const BUILTIN_RUNBOOK: &str = "built-in";

/// A step passed over because it has stopped working for this cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub step: usize,
    pub action: StepAction,
    pub reason: String,
}

/// What the incident so far says about a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Prior {
    pub id: i64,
    pub escalated: bool,
    pub next_step: usize,
    /// Attempts to restore the declared state since the escalation.
    pub attempts: u32,
    /// The last of those attempts, else the escalation.
    pub last_change: Option<DateTime<Utc>>,
    /// What the incident names as its cause, and the runbook it runs.
    pub cause: String,
    pub signature: Option<String>,
    pub runbook: Option<String>,
}

/// Restoring the declared state of a resource whose incident is escalated
/// (or a crash loop), with backoff.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// The number of the next attempt.
    pub attempt: u32,
    /// When the backoff allows it; absent when it is made in this pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
}

/// A resource that needs healing and what comes next.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Remedy {
    pub target: ResourceKey,
    pub problem: Problem,
    /// The unresolved incident this continues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<i64>,
    pub runbook: String,
    /// The next step to take; `None` when the runbook is exhausted (or
    /// reaches `escalate`) and the incident is handed to a human.
    pub step: Option<usize>,
    pub skipped: Vec<Skipped>,
    /// The incident was escalated earlier; no runbook step is tried.
    pub escalated: bool,
    /// The declared state is restored with backoff while escalated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// The same problem recurred often enough to be a crash loop: the new
    /// incident is escalated at once.
    #[serde(rename = "crashLoop", skip_serializing_if = "Option::is_none")]
    pub crash_loop: Option<String>,
    /// Where the resource is declared.
    #[serde(rename = "declaredAt")]
    pub declared_at: crate::model::Origin,
    /// The open incident named a less specific cause (an SLO, a dead
    /// process, a less specific signature): this problem's names it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnosed_from: Option<Was>,
    /// The change this problem regressed: it appeared inside the change's
    /// verification window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<crate::vocab::ChangeRef>,
    /// A correlated failure (the storm guard): no automatic healing
    /// action; the incident is escalated at once with this reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<String>,
}

/// What an incident named before a more specific diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Was {
    pub cause: String,
    /// Its runbook, when the new diagnosis's is another one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
}

impl Remedy {
    /// What tend does next about this problem, in words.
    pub fn next_in_words(&self) -> String {
        let restore = |b: &Baseline| match b.not_before {
            None => format!("restore the declared state now (attempt {})", b.attempt),
            Some(t) => format!(
                "restore the declared state after {} (attempt {}, backoff)",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                b.attempt
            ),
        };
        if let Some(why) = &self.storm {
            return format!("{why}: escalate; no automatic healing action");
        }
        match (&self.crash_loop, self.escalated, self.step, &self.baseline) {
            (Some(why), _, _, b) => format!(
                "{why}: escalate; {}",
                b.as_ref().map(restore).unwrap_or_default()
            ),
            (None, true, _, Some(b)) => format!("escalated, waiting for a human; {}", restore(b)),
            (None, true, _, None) => "escalated; waiting for a human".to_string(),
            (None, false, Some(i), _) => format!("runbook {} step {}", self.runbook, i + 1),
            (None, false, None, _) => format!("runbook {} is exhausted: escalate", self.runbook),
        }
    }

    /// How this problem names an incident that opened with a less specific
    /// cause, in words.
    pub fn diagnosis_in_words(&self) -> Option<String> {
        let was = self.diagnosed_from.as_ref()?;
        let named = self
            .problem
            .signature
            .as_deref()
            .map_or_else(String::new, |s| format!(" `{s}`"));
        let mut text = format!("diagnosed as{named} (was: {})", was.cause);
        if let Some(old) = &was.runbook {
            text.push_str(&format!(
                "; runbook `{}` replaces `{old}`, from its first step",
                self.runbook
            ));
        }
        Some(text)
    }

    /// The key remediation statistics are counted under.
    pub fn cause_key(&self) -> String {
        cause_key(&self.target, &self.problem)
    }
}

pub fn cause_key(target: &ResourceKey, problem: &Problem) -> String {
    problem
        .signature
        .clone()
        .unwrap_or_else(|| target.to_string())
}

/// Chooses the next step: continue an open incident where it stopped,
/// skip steps that failed verification `ineffective_after` consecutive
/// times for this cause, stop at `escalate` or the end.
pub fn next_step(
    spec: &RunbookSpec,
    from: usize,
    failures: &dyn Fn(usize) -> i64,
    ineffective_after: u32,
    skipped: &mut Vec<Skipped>,
) -> Option<usize> {
    let mut i = from;
    while let Some(step) = spec.steps.get(i) {
        if step.action == StepAction::Escalate {
            return None;
        }
        let failed = failures(i);
        if failed >= i64::from(ineffective_after) {
            skipped.push(Skipped {
                step: i,
                action: step.action,
                reason: format!(
                    "ineffective: failed verification {failed} consecutive times for this cause"
                ),
            });
            i += 1;
            continue;
        }
        return Some(i);
    }
    None
}

pub fn remedy(
    r: &Resource,
    problem: Problem,
    (name, spec): (&str, &RunbookSpec),
    prior: Option<&Prior>,
    failures: &dyn Fn(&str, usize) -> i64,
    ineffective_after: u32,
) -> Remedy {
    let key = cause_key(&r.key, &problem);
    let mut skipped = Vec::new();
    let escalated = prior.is_some_and(|p| p.escalated);
    let step = if escalated {
        None
    } else {
        next_step(
            spec,
            prior.map(|p| p.next_step).unwrap_or(0),
            &|i| failures(&key, i),
            ineffective_after,
            &mut skipped,
        )
    };
    Remedy {
        target: r.key.clone(),
        problem,
        incident: prior.map(|p| p.id),
        runbook: name.to_string(),
        step,
        skipped,
        escalated,
        baseline: None,
        crash_loop: None,
        declared_at: r.origin.clone(),
        diagnosed_from: None,
        change: None,
        storm: None,
    }
}

/// The runbook by name, or the built-in one when none is named.
pub fn runbook_for(kind: Kind, name: Option<&str>, runbooks: &[Runbook]) -> (String, RunbookSpec) {
    match name.and_then(|n| runbooks.iter().find(|r| r.name == n)) {
        Some(rb) => (rb.name.clone(), rb.spec.clone()),
        None => (BUILTIN_RUNBOOK.to_string(), builtin_runbook(kind)),
    }
}

/// The action that carries out runbook step `index` on `r`, before any
/// decision. A `reapply-last-good` step is planned on the last known good
/// spec `good` gives (its changes against live, its fingerprint, and the
/// spec itself for the policies and the provider); without a valid one it
/// changes nothing and fails when carried out.
pub fn planned_step(
    remedy: &Remedy,
    index: usize,
    step: &Step,
    r: &Resource,
    live: Option<&LiveResource>,
    drift: &[FieldChange],
    good: &dyn Fn() -> Option<Rollback>,
) -> Action {
    if step.action != StepAction::ReapplyLastGood {
        return step_action(remedy, index, step, live, drift);
    }
    match rollback_of(r, good(), live) {
        Ok((rollback, changes)) => {
            let mut action = step_action(remedy, index, step, live, &changes);
            action.fingerprint = crate::vocab::change_fingerprint([
                action.fingerprint.as_str(),
                StepAction::ReapplyLastGood.as_str(),
            ]);
            if let Some(note) = &mut action.note {
                note.push_str(&format!(
                    "; rolls back to the spec of commit {}",
                    rollback.commit.as_deref().unwrap_or("unknown")
                ));
            }
            action.rollback = Some(Box::new(rollback));
            action
        }
        Err(why) => {
            let mut action = step_action(remedy, index, step, live, &[]);
            if let Some(note) = &mut action.note {
                note.push_str(&format!("; cannot roll back: {why}"));
            }
            action
        }
    }
}

/// The last known good spec of `r` as a rollback, if it is still valid
/// for its kind, with the changes it makes to live state.
fn rollback_of(
    r: &Resource,
    good: Option<Rollback>,
    live: Option<&LiveResource>,
) -> Result<(Rollback, Vec<FieldChange>), String> {
    let Rollback { commit, spec } =
        good.ok_or("no last known good state is recorded for this resource")?;
    let doc = json!({
        "apiVersion": "tend.dev/v1",
        "kind": r.key.kind.as_str(),
        "metadata": {"name": r.key.name},
        "spec": spec,
    });
    if let Some(v) = crate::model::schema::validate(r.key.kind, &doc).first() {
        return Err(format!(
            "the last known good spec is no longer valid at {}: {}",
            v.pointer, v.message
        ));
    }
    let mut good = r.clone();
    good.spec = spec;
    let changes = crate::diff::drift_of(&good, live)
        .into_iter()
        .map(crate::vocab::redact)
        .collect();
    Ok((
        Rollback {
            commit,
            spec: good.spec,
        },
        changes,
    ))
}

/// The action that carries out a runbook step, before any decision.
fn step_action(
    remedy: &Remedy,
    index: usize,
    step: &Step,
    live: Option<&LiveResource>,
    drift: &[FieldChange],
) -> Action {
    let target = remedy.target.clone();
    let (action_type, changes, risk, reversible) = match step.action {
        StepAction::Restart => (
            ActionType::Restart,
            vec![FieldChange {
                path: RESTART_PATH.into(),
                from: json!(live
                    .map(|l| l.id.clone())
                    .unwrap_or_else(|| "not running".into())),
                to: json!("a new instance"),
            }],
            Risk::Low,
            true,
        ),
        StepAction::Replace => (ActionType::Replace, drift.to_vec(), Risk::Medium, false),
        StepAction::Reapply | StepAction::ReapplyLastGood => {
            (ActionType::Update, drift.to_vec(), Risk::Low, true)
        }
        StepAction::Scale => {
            let by = step.by.unwrap_or(0);
            let change = match live
                .and_then(|l| l.spec.get("desiredCapacity"))
                .and_then(serde_json::Value::as_i64)
            {
                Some(now) => FieldChange {
                    path: "/spec/desiredCapacity".into(),
                    from: json!(now),
                    to: json!((now + by).max(0)),
                },
                None => FieldChange {
                    path: "/spec/desiredCapacity".into(),
                    from: serde_json::Value::Null,
                    to: json!(format!("{by:+}")),
                },
            };
            (ActionType::Scale, vec![change], Risk::Medium, true)
        }
        StepAction::Command => (
            ActionType::Command,
            vec![FieldChange {
                path: "/command".into(),
                from: serde_json::Value::Null,
                to: json!(step.command),
            }],
            Risk::Medium,
            false,
        ),
        StepAction::Escalate => (ActionType::Command, Vec::new(), Risk::Low, true),
    };
    let incident = IncidentRef {
        cause: remedy.problem.cause.clone(),
        signature: remedy.problem.signature.clone(),
        runbook: remedy.runbook.clone(),
        step: index,
        step_action: step.action,
        severity: remedy.problem.severity,
        trust: remedy.problem.trust,
    };
    let fingerprint = fingerprint(action_type, &target, &changes);
    Action {
        fingerprint,
        action_type,
        target,
        changes,
        risk,
        reversible,
        decision: Decision::Auto,
        reasons: Vec::new(),
        note: Some(format!(
            "runbook {} step {} ({}) for: {}",
            remedy.runbook,
            index + 1,
            step.action.as_str(),
            remedy.problem.cause
        )),
        contested: false,
        declared_at: None,
        incident: Some(incident),
        approval: None,
        rollback: None,
        change: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (H3): a rollback's changes are those of the last known
    /// good spec against live, and a stored spec that no longer validates
    /// is never rolled back to.
    #[test]
    fn h3_a_rollback_is_planned_on_the_last_good_spec() {
        let r = Resource {
            key: ResourceKey::new(Kind::HostFile, "motd"),
            labels: Vec::new(),
            mode: None,
            spec: json!({"path": "motd.txt", "content": "declared"}),
            ignore: Vec::new(),
            origin: crate::model::Origin {
                file: "a.yaml".into(),
                line: 1,
                col: 1,
            },
            health: None,
            remediation: None,
            changes: None,
        };
        let live = LiveResource {
            key: r.key.clone(),
            id: "motd.txt".into(),
            spec: json!({"path": "motd.txt", "content": "live"}),
            owned: true,
            note: None,
        };
        let good = json!({"path": "motd.txt", "content": "good"});
        let (rollback, changes) = rollback_of(
            &r,
            Some(Rollback {
                commit: Some("abc".into()),
                spec: good.clone(),
            }),
            Some(&live),
        )
        .unwrap();
        assert_eq!(rollback.spec, good);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to, json!("good"));
        let invalid = json!({"path": "motd.txt", "content": "x", "owner": {"evil": true}});
        let why = rollback_of(
            &r,
            Some(Rollback {
                commit: None,
                spec: invalid,
            }),
            Some(&live),
        )
        .unwrap_err();
        assert!(why.contains("no longer valid"), "{why}");
        assert!(rollback_of(&r, None, Some(&live)).is_err());
    }

    #[test]
    fn ineffective_steps_are_skipped_and_escalate_ends_the_runbook() {
        let spec: RunbookSpec = serde_json::from_value(json!({"steps": [
            {"action": "restart"}, {"action": "replace"}, {"action": "escalate"}, {"action": "restart"}
        ]}))
        .unwrap();
        let mut skipped = Vec::new();
        assert_eq!(next_step(&spec, 0, &|_| 0, 3, &mut skipped), Some(0));
        assert_eq!(
            next_step(&spec, 0, &|i| if i == 0 { 3 } else { 0 }, 3, &mut skipped),
            Some(1)
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(next_step(&spec, 2, &|_| 0, 3, &mut skipped), None);
        assert_eq!(next_step(&spec, 9, &|_| 0, 3, &mut skipped), None);
    }
}
