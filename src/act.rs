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

/// Runs every `auto` action of the plan, in plan order.
pub async fn run(
    plan: &Plan,
    desired: &DesiredState,
    providers: &Providers,
    state: &State,
    run_id: i64,
) -> Result<Vec<ActionResult>, StateError> {
    let index = desired.index();
    let mut results = Vec::with_capacity(plan.actions.len());
    for action in &plan.actions {
        let started = Instant::now();
        let outcome = if action.decision != Decision::Auto {
            Outcome::Skipped {
                reason: format!("decision is {}", action.decision.as_str()),
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
    let detail = serde_json::to_string(&action.changes).unwrap_or_default();
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
