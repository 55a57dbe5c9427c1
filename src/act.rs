//! Carrying out the actions a plan allows.
//!
//! Only `auto` actions run. The intent is journaled before the provider is
//! called and the outcome after, so the audit trail survives a crash in
//! between. This module never decides what is allowed; the plan did.

use std::time::Instant;

use serde::Serialize;
use tracing::{info, info_span, warn, Instrument};

use crate::model::{DesiredState, ResourceKey};
use crate::plan::{Action, Decision, Plan};
use crate::provider::Providers;
use crate::state::{JournalRecord, State, StateError};

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

/// Runs every `auto` action of the plan, in plan order. After
/// `breaker_failures` consecutive failures the circuit breaker opens and the
/// remaining actions are skipped.
pub async fn run(
    plan: &Plan,
    desired: &DesiredState,
    providers: &Providers,
    state: &State,
    run_id: i64,
    breaker_failures: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Vec<ActionResult>, StateError> {
    let index = desired.index();
    let mut results = Vec::with_capacity(plan.actions.len());
    let mut consecutive_failures = 0;
    // Runbook steps are carried out and verified by `verify`.
    for action in plan.actions.iter().filter(|a| a.incident.is_none()) {
        let started = Instant::now();
        if action.decision != Decision::Auto {
            state.record_decision(
                &JournalRecord {
                    run_id,
                    fingerprint: &action.fingerprint,
                    action: action.action_type.as_str(),
                    kind: action.target.kind.as_str(),
                    name: &action.target.name,
                    commit: plan.source.commit.as_deref(),
                    outcome: None,
                    detail: "",
                },
                action.decision.as_str(),
                &action.reasons,
            )?;
        }
        let outcome = if action.decision != Decision::Auto {
            Outcome::Skipped {
                reason: format!("decision is {}", action.decision.as_str()),
            }
        } else if stop.load(std::sync::atomic::Ordering::SeqCst) {
            Outcome::Skipped {
                reason: "tend is stopping; the next pass re-plans it".into(),
            }
        } else if consecutive_failures >= breaker_failures {
            Outcome::Skipped {
                reason: format!("circuit breaker opened after {consecutive_failures} consecutive failures in this pass"),
            }
        } else {
            let span = info_span!("action", resource = %action.target, action = action.action_type.as_str(), reason = %action.reasons.join("; "));
            execute(
                action,
                index.get(&action.target).copied(),
                providers,
                state,
                plan,
                run_id,
            )
            .instrument(span)
            .await?
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

async fn execute(
    action: &Action,
    desired: Option<&crate::model::Resource>,
    providers: &Providers,
    state: &State,
    plan: &Plan,
    run_id: i64,
) -> Result<Outcome, StateError> {
    let kind = action.target.kind.as_str();
    let detail = serde_json::json!({
        "changes": action.changes,
        "decision": action.decision,
        "reasons": action.reasons,
    })
    .to_string();
    let record = |outcome: Option<&'static str>, detail: &str| -> Result<i64, StateError> {
        let r = JournalRecord {
            run_id,
            fingerprint: &action.fingerprint,
            action: action.action_type.as_str(),
            kind,
            name: &action.target.name,
            commit: plan.source.commit.as_deref(),
            outcome,
            detail,
        };
        if outcome.is_none() {
            state.intent(&r)
        } else {
            state.outcome(&r)
        }
    };
    record(None, &detail)?;
    let Some(provider) = providers.for_kind(action.target.kind) else {
        let error = format!("no provider for {kind} is enabled in Settings");
        record(Some("failed"), &error)?;
        return Ok(Outcome::Failed { error });
    };
    match provider.apply(action, desired).await {
        Ok(applied) => {
            info!(detail = %applied.detail, "Action applied.");
            record(Some("synced"), &applied.detail)?;
            if action.action_type != crate::plan::ActionType::Delete {
                let paths: Vec<&str> = action.changes.iter().map(|c| c.path.as_str()).collect();
                state.record_corrections(kind, &action.target.name, &paths)?;
            }
            Ok(Outcome::Synced {
                detail: applied.detail,
            })
        }
        Err(e) => {
            let error = e.to_string();
            warn!(%error, "Action failed.");
            record(Some("failed"), &error)?;
            Ok(Outcome::Failed { error })
        }
    }
}
