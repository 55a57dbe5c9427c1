//! Carrying out decided actions: the one executor.
//!
//! Every action, a drift correction or a runbook step, goes through
//! [`Executor::execute`]: the intent is journaled before the provider (or
//! the allowlisted command) is called, the outcome after, and then the
//! bookkeeping the safety gates read (the fields tend corrected, for fight
//! detection; failed outcomes, for the circuit breaker) is recorded. Only
//! `auto` actions run. This module never decides what is allowed; the
//! decide stage did. See ARCHITECTURE.md.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, info_span, warn, Instrument};

use crate::model::{DesiredState, Resource};
use crate::plan::Plan;
use crate::provider::Providers;
use crate::state::{JournalRecord, StateError, Store};
use crate::vocab::{
    Action, ActionType, Decision, JournalAction, JournalOutcome, ResourceKey, Secrets,
};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Outcome {
    Synced { detail: String },
    Failed { error: String },
    Skipped { reason: String },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Synced { .. } => "synced",
            Outcome::Failed { .. } => "failed",
            Outcome::Skipped { .. } => "skipped",
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self, Outcome::Failed { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionResult {
    pub fingerprint: String,
    pub target: ResourceKey,
    #[serde(rename = "type")]
    pub action_type: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub duration_ms: u64,
}

/// What carrying out an action means.
pub enum Effect<'a> {
    /// The provider applies the action; `desired` is the resource as it
    /// should be (absent for deletions).
    Provider { desired: Option<&'a Resource> },
    /// An allowlisted command runs on the host, bounded by `within`.
    Command(Command<'a>),
}

/// A runbook's `command` step.
pub struct Command<'a> {
    pub argv: &'a [String],
    /// Settings spec.healing.commands.
    pub allowed: &'a [String],
    pub within: Duration,
    pub incident: i64,
}

/// How long a drift correction holds its fleet budget slot at most, if
/// it is never given back (the member was killed mid-action).
const IN_FLIGHT: Duration = Duration::from_secs(600);

/// Carries out actions for one run, journaling each.
pub struct Executor<'a> {
    pub providers: &'a Providers,
    pub store: &'a dyn Store,
    pub run_id: i64,
    pub commit: Option<&'a str>,
    /// Scrubbed from what a provider or command says before it is logged,
    /// journaled or reported.
    pub secrets: &'a Secrets,
}

impl Executor<'_> {
    fn record<'b>(
        &'b self,
        action: &'b Action,
        outcome: Option<JournalOutcome>,
        detail: &'b str,
    ) -> JournalRecord<'b> {
        JournalRecord {
            run_id: self.run_id,
            fingerprint: &action.fingerprint,
            action: JournalAction::Act(action.action_type),
            key: &action.target,
            commit: self.commit,
            outcome,
            detail,
        }
    }

    /// Journals why an action that was not `auto` did not run.
    pub fn journal_decision(&self, action: &Action) -> Result<(), StateError> {
        self.store.record_decision(
            &self.record(action, None, ""),
            action.decision,
            &action.reasons,
        )
    }

    /// Journals the verification of a runbook step that was carried out:
    /// `None` before it starts (an intent, so a stop during verification
    /// is found and recorded by the next pass), then what it found.
    pub fn journal_verification(
        &self,
        action: &Action,
        verdict: Option<Result<&str, &str>>,
    ) -> Result<(), StateError> {
        let (outcome, detail) = match verdict {
            None => (None, "verifying"),
            Some(Ok(d)) => (Some(JournalOutcome::Verified), d),
            Some(Err(d)) => (Some(JournalOutcome::NotVerified), d),
        };
        let detail = self.secrets.scrub(detail);
        let r = JournalRecord {
            action: JournalAction::Verify,
            ..self.record(action, outcome, &detail)
        };
        match outcome {
            None => self.store.intent(&r)?,
            Some(_) => self.store.outcome(&r)?,
        };
        Ok(())
    }

    /// Carries out one `auto` action: intent, call, outcome, bookkeeping.
    pub async fn execute(
        &self,
        action: &Action,
        effect: Effect<'_>,
    ) -> Result<Outcome, StateError> {
        let mut intent = serde_json::json!({
            "changes": action.changes,
            "decision": action.decision,
            "reasons": action.reasons,
        });
        if let Some(i) = &action.incident {
            intent["step"] = i.step_action.as_str().into();
        }
        if let Some(a) = &action.approval {
            intent["approval"] = serde_json::json!({
                "file": a.file,
                "fingerprint": a.fingerprint,
                "commit": self.commit,
            });
        }
        // In a fleet, the intent of an action on a shared resource is
        // written only under this member's lease: without it, nothing is
        // done and nothing is spent.
        match self
            .store
            .intent(&self.record(action, None, &intent.to_string()))
        {
            Err(StateError::Fenced { key, node }) => {
                return Ok(Outcome::Skipped {
                    reason: format!(
                        "node {node} no longer holds the lease of {key}; its new owner acts on it"
                    ),
                })
            }
            other => other?,
        };
        if let Some(a) = &action.approval {
            // Used before the provider is called: a crash in between must
            // not leave the approval usable a second time.
            self.store.use_approval(&crate::state::UsedApproval {
                key: action.target.clone(),
                fingerprint: a.fingerprint.clone(),
                file: a.file.clone(),
                expires: a.expires,
                commit: self.commit.map(str::to_string),
                run_id: self.run_id,
                at: chrono::Utc::now(),
            })?;
        }
        let result = match effect {
            Effect::Provider { desired } => self.apply(action, desired).await,
            Effect::Command(c) => run_command(&c, &action.target).await,
        };
        let result = result
            .map(|d| self.secrets.scrub(&d))
            .map_err(|e| self.secrets.scrub(&e));
        let outcome = match result {
            Ok(detail) => {
                info!(%detail, "Action applied.");
                self.store
                    .outcome(&self.record(action, Some(JournalOutcome::Synced), &detail))?;
                // Declared fields tend set again, whichever stage planned
                // it. Creating a resource sets its fields for the first
                // time, which is no correction; a restart or a command
                // changes no field another controller could fight over.
                let paths: Vec<&str> = action
                    .changes
                    .iter()
                    .map(|c| c.path.as_str())
                    .filter(|p| p.starts_with("/spec/"))
                    .collect();
                let corrects =
                    !matches!(action.action_type, ActionType::Create | ActionType::Delete);
                if corrects && !paths.is_empty() {
                    self.store.record_corrections(&action.target, &paths)?;
                }
                Outcome::Synced { detail }
            }
            Err(error) => {
                warn!(%error, "Action failed.");
                self.store
                    .outcome(&self.record(action, Some(JournalOutcome::Failed), &error))?;
                Outcome::Failed { error }
            }
        };
        Ok(outcome)
    }

    async fn apply(&self, action: &Action, desired: Option<&Resource>) -> Result<String, String> {
        let kind = action.target.kind;
        let provider = self
            .providers
            .for_kind(kind)
            .ok_or_else(|| format!("no provider for {kind} is enabled in Settings"))?;
        provider
            .apply(action, desired)
            .await
            .map(|a| a.detail)
            .map_err(|e| e.to_string())
    }

    /// Runs every drift correction of the plan, in plan order (runbook
    /// steps are carried out by the healing stage, through the same
    /// [`Executor::execute`]). After `breaker_failures` consecutive failures
    /// the circuit breaker opens and the remaining actions are skipped.
    pub async fn run_plan(
        &self,
        plan: &Plan,
        desired: &DesiredState,
        breaker_failures: usize,
        stop: &AtomicBool,
        controller: Option<&crate::controller::Handle<ResourceKey>>,
    ) -> Result<Vec<ActionResult>, StateError> {
        let index = desired.index();
        let mut results = Vec::with_capacity(plan.actions.len());
        let mut consecutive_failures = 0;
        for action in plan.actions.iter().filter(|a| a.incident.is_none()) {
            let started = Instant::now();
            // A resource whose healing is under way is the controller's:
            // its drift is corrected after the healing ends.
            let claim = controller.map(|c| c.claim(&action.target));
            let outcome = if matches!(claim, Some(None)) {
                Outcome::Skipped {
                    reason: "healing of this resource is under way; its drift is corrected after it ends".into(),
                }
            } else if action.decision != Decision::Auto {
                self.journal_decision(action)?;
                Outcome::Skipped {
                    reason: format!("decision is {}", action.decision.as_str()),
                }
            } else if stop.load(Ordering::SeqCst) {
                Outcome::Skipped {
                    reason: "tend is stopping; the next pass re-plans it".into(),
                }
            } else if consecutive_failures >= breaker_failures {
                Outcome::Skipped {
                    reason: format!("circuit breaker opened after {consecutive_failures} consecutive failures in this pass"),
                }
            } else {
                let span = info_span!("action", resource = %action.target, action = action.action_type.as_str(), reason = %action.reasons.join("; "));
                let resource = index.get(&action.target).copied();
                // Declared resources count against the fleet budgets that
                // select them, while the action is in flight.
                let waits = match resource {
                    Some(r) => {
                        crate::budget::take(self.store, desired, r, self.run_id, IN_FLIGHT)?.err()
                    }
                    None => None,
                };
                match waits {
                    Some(reason) => Outcome::Skipped { reason },
                    None => {
                        let out = self
                            .execute(action, Effect::Provider { desired: resource })
                            .instrument(span)
                            .await;
                        if let Some(r) = resource {
                            if let Err(e) = crate::budget::release(self.store, desired, r) {
                                warn!(error = %e, "Could not give back a fleet budget slot; it lapses.");
                            }
                        }
                        out?
                    }
                }
            };
            match &outcome {
                Outcome::Failed { .. } => consecutive_failures += 1,
                Outcome::Synced { .. } => consecutive_failures = 0,
                Outcome::Skipped { .. } => {}
            }
            results.push(ActionResult {
                fingerprint: action.fingerprint.clone(),
                target: action.target.clone(),
                action_type: action.action_type.as_str().to_string(),
                outcome,
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        Ok(results)
    }
}

/// Runs an allowlisted command (checked when the desired state was
/// loaded, and again here), bounded by the step's deadline.
async fn run_command(c: &Command<'_>, target: &ResourceKey) -> Result<String, String> {
    let Some((program, args)) = c.argv.split_first() else {
        return Err("the step has no command".into());
    };
    if !c.allowed.iter().any(|a| a == program) {
        return Err(format!("`{program}` is not an allowed command"));
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TEND_RESOURCE", target.to_string())
        .env("TEND_INCIDENT", c.incident.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(c.within, cmd.output())
        .await
        .map_err(|_| {
            format!(
                "`{program}` did not finish within {}",
                humantime::format_duration(c.within)
            )
        })?
        .map_err(|e| format!("failed to run `{program}`: {e}"))?;
    let text = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim();
        s.chars().take(500).collect::<String>()
    };
    if out.status.success() {
        Ok(format!("`{program}` succeeded: {}", text(&out.stdout)))
    } else {
        Err(format!(
            "`{program}` exited with {}: {}",
            out.status,
            text(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, SourceFile};
    use crate::plan::Plan;
    use crate::policy::gates;
    use crate::provider::{host::HostProvider, BuiltIn};
    use crate::state::{NewRun, Sqlite};
    use crate::vocab::{FieldChange, IncidentRef, Kind, Risk, Severity, StepAction};
    use serde_json::json;

    fn step(action_type: ActionType, step_action: StepAction, path: &str) -> Action {
        let target = ResourceKey::new(Kind::HostFile, "motd");
        let changes = vec![FieldChange {
            path: path.into(),
            from: json!("changed by someone else\n"),
            to: json!("hello\n"),
        }];
        Action {
            fingerprint: crate::vocab::fingerprint(action_type, &target, &changes),
            action_type,
            target,
            changes,
            risk: Risk::Low,
            reversible: true,
            decision: Decision::Auto,
            reasons: vec![],
            note: None,
            contested: false,
            declared_at: None,
            incident: Some(IncidentRef {
                cause: "content drifts".into(),
                signature: None,
                runbook: "fix".into(),
                step: 0,
                step_action,
                severity: Severity::Warning,
                trust: crate::model::health::Trust::Auto,
            }),
            approval: None,
            rollback: None,
            change: None,
        }
    }

    fn plan_of(actions: Vec<Action>) -> Plan {
        Plan {
            source: crate::plan::SourceInfo {
                origin: "test".into(),
                commit: None,
            },
            mode: Mode::Auto,
            resources: 1,
            in_sync: 0,
            actions,
            unmanaged: vec![],
            health: vec![],
            remedies: vec![],
            held: Vec::new(),
            paused: Vec::new(),
        }
    }

    /// Regression: runbook steps were carried out by a second copy of the
    /// executor that recorded no corrections, so fight detection never saw
    /// a field a runbook kept correcting; and their failures must open the
    /// circuit breaker like any other.
    #[tokio::test]
    async fn runbook_step_corrections_count_for_fight_detection_and_the_breaker() {
        let dir = tempfile::tempdir().unwrap();
        let (root, state) = (dir.path().join("root"), dir.path().join("state"));
        std::fs::create_dir_all(&root).unwrap();
        let desired = crate::model::load(&[SourceFile {
            path: "d.yaml".into(),
            text: "apiVersion: tend.dev/v1\nkind: host.File\nmetadata: {name: motd}\nspec: {path: motd, content: \"hello\\n\"}\n".into(),
        }])
        .unwrap();
        let store = Sqlite::open(&state).unwrap();
        let providers = Providers {
            all: vec![BuiltIn::Host(HostProvider::new(&root, &state))],
        };
        let run_id = store
            .begin_run(&NewRun {
                command: "test",
                origin: "test",
                commit: None,
                mode: crate::model::Mode::Auto,
            })
            .unwrap();
        let secrets = crate::vocab::Secrets::default();
        let exec = Executor {
            providers: &providers,
            store: &store,
            run_id,
            commit: None,
            secrets: &secrets,
        };
        let resource = &desired.resources[0];
        let reapply = step(ActionType::Update, StepAction::Reapply, "/spec/content");
        for _ in 0..3 {
            std::fs::write(root.join("motd"), "changed by someone else\n").unwrap();
            let out = exec
                .execute(
                    &reapply,
                    Effect::Provider {
                        desired: Some(resource),
                    },
                )
                .await
                .unwrap();
            assert!(matches!(out, Outcome::Synced { .. }), "{out:?}");
        }
        let now = chrono::Utc::now();
        let facts = crate::reconcile::facts(Some(&store), &desired.settings, now).unwrap();
        assert_eq!(facts.corrections.len(), 3);
        let mut drift = step(ActionType::Update, StepAction::Reapply, "/spec/content");
        drift.incident = None;
        let mut plan = plan_of(vec![drift]);
        gates::apply(&mut plan, &desired.settings, &facts, now);
        assert!(plan.actions[0].contested, "{:?}", plan.actions[0]);
        assert_eq!(plan.actions[0].decision, Decision::Review);

        let command = step(ActionType::Command, StepAction::Command, "/command");
        for _ in 0..3 {
            let out = exec
                .execute(
                    &command,
                    Effect::Command(Command {
                        argv: &["false".to_string()],
                        allowed: &[],
                        within: Duration::from_secs(5),
                        incident: 1,
                    }),
                )
                .await
                .unwrap();
            assert!(out.failed(), "{out:?}");
        }
        let facts = crate::reconcile::facts(Some(&store), &desired.settings, now).unwrap();
        let mut other = step(ActionType::Update, StepAction::Reapply, "/spec/mode");
        other.incident = None;
        let mut plan = plan_of(vec![other]);
        gates::apply(&mut plan, &desired.settings, &facts, chrono::Utc::now());
        assert_eq!(plan.actions[0].decision, Decision::Deferred);
        assert!(
            plan.actions[0]
                .reasons
                .iter()
                .any(|r| r.contains("circuit breaker open")),
            "{:?}",
            plan.actions[0].reasons
        );
    }
}
