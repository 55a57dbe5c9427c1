//! Healing: the runner that carries out runbook steps, verifies them and
//! moves incidents along.
//!
//! Work is queued per resource key ([`queue::Queue`]): never two steps on
//! one resource at once, at most `healing.concurrency` resources at once.
//! Each step is an action decided by the same [`Decider`] as drift (the
//! mode ceiling, the policies, the safety gates, the pass's action budget)
//! and carried out by the one [`Executor`], so it is journaled and counted
//! by fight detection and the circuit breaker like every other action.
//! After a step, the resource and the signals that made up the problem are
//! read again ([`verify`]) until they have been healthy for the step's hold
//! time, or its deadline passes. A verified step resolves the incident; a
//! failed one moves to the next step; an exhausted runbook escalates and
//! the incident stays open for a human. This stage never decides what is
//! allowed. See ARCHITECTURE.md.

pub mod queue;
mod verify;

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use tracing::{info, info_span, warn, Instrument};

use crate::act::{Command, Effect, Executor, Outcome};
use crate::health::{Prober, Status};
use crate::model::health::{RunbookSpec, Step, StepAction};
use crate::model::{DesiredState, Resource};
use crate::plan::remedy::{self, Remedy};
use crate::policy::Decider;
use crate::provider::Providers;
use crate::state::{
    IncidentStep, IncidentUpdate, NewIncident, SignalRow, StateError, StepResult, Store,
};
use crate::vocab::{Action, Decision, IncidentStatus, StepOutcome};

use crate::diff::drift_of;

/// Where an incident stands after this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    Resolved,
    /// A step waits for a human (review, deny, deferred, observe).
    Held,
    Escalated,
    /// Stopped by a shutdown before the runbook finished.
    Interrupted,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Healed {
    pub incident: i64,
    pub standing: Standing,
}

/// What healing needs from the pass.
pub struct Healer<'a> {
    pub desired: &'a DesiredState,
    pub providers: &'a Providers,
    pub store: &'a dyn Store,
    pub prober: &'a Prober,
    pub executor: &'a Executor<'a>,
    /// The same decide call the plan went through, for steps planned
    /// during the pass.
    pub decider: &'a Decider<'a>,
    /// Set on SIGINT/SIGTERM: the step in flight finishes, no new one starts.
    pub stop: &'a AtomicBool,
}

/// One incident to work on: the remedy and, when it has a next step, the
/// decided action for it.
pub struct Work {
    pub remedy: Remedy,
    pub action: Option<Action>,
}

/// Heals every resource in `work` through the per-resource queue.
pub async fn heal_all(
    h: &Healer<'_>,
    work: Vec<Work>,
    concurrency: usize,
) -> Result<Vec<Healed>, StateError> {
    let queue = queue::Queue::new();
    for w in work {
        queue.push(w.remedy.target.clone(), w);
    }
    let results = queue
        .drain(concurrency, |_, w| {
            let span =
                info_span!("heal", resource = %w.remedy.target, cause = %w.remedy.problem.cause);
            heal(h, w).instrument(span)
        })
        .await;
    results.into_iter().collect()
}

/// One incident's work in this pass, as it goes from step to step.
struct Incident<'a> {
    id: i64,
    remedy: &'a Remedy,
    spec: RunbookSpec,
    resource: &'a Resource,
    /// The signals of the problem, re-read while a step is verified.
    symptoms: Vec<String>,
}

async fn heal(h: &Healer<'_>, w: Work) -> Result<Healed, StateError> {
    let Work { remedy, action } = w;
    let key = &remedy.target;
    let Some(resource) = h.desired.resources.iter().find(|r| r.key == *key) else {
        // The desired state changed under a continuing incident.
        return Ok(Healed {
            incident: remedy.incident.unwrap_or(0),
            standing: Standing::Held,
        });
    };
    let id = match remedy.incident {
        Some(id) => id,
        None => open_incident(h, &remedy)?,
    };
    if remedy.escalated {
        return Ok(healed(id, Standing::Escalated));
    }
    if let Some(why) = &remedy.crash_loop {
        return escalate_crash_loop(h, id, &remedy, why);
    }
    let (_, spec) = remedy::runbook_for(
        key.kind,
        (remedy.runbook != remedy::BUILTIN_RUNBOOK).then_some(remedy.runbook.as_str()),
        &h.desired.runbooks,
    );
    let inc = Incident {
        id,
        remedy: &remedy,
        spec,
        resource,
        symptoms: remedy
            .problem
            .symptoms
            .iter()
            .map(|t| t.reading.signal.clone())
            .collect(),
    };
    record_skips(h, id, &remedy.skipped)?;
    let mut next = remedy.step.zip(action);
    // Where the runbook goes on from when nothing more is tried.
    let mut from = remedy.step.unwrap_or(0);
    while let Some((index, action)) = next.take() {
        let Some(step) = inc.spec.steps.get(index) else {
            break;
        };
        from = index + 1;
        match run_step(h, &inc, index, step, &action).await? {
            StepEnd::Stands(standing) => return Ok(healed(id, standing)),
            StepEnd::NotHealed => next = next_step(h, &inc, index).await?,
        }
    }
    escalate(h, &inc, from).await
}

fn healed(incident: i64, standing: Standing) -> Healed {
    Healed { incident, standing }
}

fn open_incident(h: &Healer<'_>, remedy: &Remedy) -> Result<i64, StateError> {
    let id = h.store.open_incident(&NewIncident {
        key: &remedy.target,
        cause: &remedy.problem.cause,
        signature: remedy.problem.signature.as_deref(),
        runbook: Some(&remedy.runbook),
        severity: remedy.problem.severity.as_str(),
        symptoms: serde_json::to_value(&remedy.problem.symptoms).unwrap_or_default(),
        onset: remedy.problem.onset,
        detected: chrono::Utc::now(),
    })?;
    info!(incident = id, "Incident opened.");
    Ok(id)
}

fn record_skips(h: &Healer<'_>, id: i64, skipped: &[remedy::Skipped]) -> Result<(), StateError> {
    for s in skipped {
        h.store.add_step(
            id,
            &IncidentStep::ended_now(
                s.step as i64,
                s.action.as_str(),
                "skipped",
                StepOutcome::Skipped,
                s.reason.clone(),
                chrono::Utc::now(),
            ),
        )?;
    }
    Ok(())
}

/// How one step ended.
enum StepEnd {
    /// The incident stands here for this pass.
    Stands(Standing),
    /// The step ran and did not heal the resource.
    NotHealed,
}

async fn run_step(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    index: usize,
    step: &Step,
    action: &Action,
) -> Result<StepEnd, StateError> {
    let id = inc.id;
    if h.stop.load(Ordering::SeqCst) {
        h.store.update_incident(
            id,
            &IncidentUpdate {
                status: IncidentStatus::Open,
                next_step: index as i64,
                state: "unhealthy",
                recommendation: "tend stopped before this step; the next pass continues",
            },
        )?;
        return Ok(StepEnd::Stands(Standing::Interrupted));
    }
    let started = chrono::Utc::now();
    if action.decision != Decision::Auto {
        hold(h, inc, index, step, action, started)?;
        return Ok(StepEnd::Stands(Standing::Held));
    }
    // On the incident before anything happens: a stop of tend from here
    // on leaves a `running` step, which the next pass marks interrupted.
    h.store.add_step(
        id,
        &IncidentStep::ended_now(
            index as i64,
            step.action.as_str(),
            "auto",
            StepOutcome::Running,
            "carried out, then verified".into(),
            started,
        ),
    )?;
    let verdict = match execute(h, inc, step, action).await? {
        Outcome::Synced { detail } => {
            h.executor.journal_verification(action, None)?;
            let verdict = verify::verify(h, inc.resource, &inc.symptoms, step).await;
            if verdict.is_ok() || !h.stop.load(Ordering::SeqCst) {
                let said = match &verdict {
                    Ok(v) => Ok(v.as_str()),
                    Err(v) => Err(v.as_str()),
                };
                h.executor.journal_verification(action, Some(said))?;
            }
            verdict
                .map(|v| format!("{detail}; verified: {v}"))
                .map_err(|v| {
                    format!(
                        "{detail}; not verified within {}: {v}",
                        humantime::format_duration(step.within())
                    )
                })
        }
        Outcome::Failed { error } => Err(format!("the step failed: {error}")),
        Outcome::Skipped { reason } => Err(reason),
    };
    if verdict.is_err() && h.stop.load(Ordering::SeqCst) {
        // Cut short by a shutdown: not a verdict on the step, so it is not
        // counted; the next pass reads the signals again.
        let detail = verdict.err().unwrap_or_default();
        interrupted(h, inc, index, step, detail, started)?;
        return Ok(StepEnd::Stands(Standing::Interrupted));
    }
    let verified = verdict.is_ok();
    h.store.record_step_result(&StepResult {
        cause: &inc.remedy.cause_key(),
        runbook: &inc.remedy.runbook,
        step: index as i64,
        action: step.action.as_str(),
        success: verified,
    })?;
    let (outcome, detail) = match verdict {
        Ok(d) => (StepOutcome::Verified, d),
        Err(d) => (StepOutcome::NotVerified, d),
    };
    finish_step(
        h,
        id,
        &IncidentStep::ended_now(
            index as i64,
            step.action.as_str(),
            "auto",
            outcome,
            detail,
            started,
        ),
    )?;
    if !verified {
        warn!(
            incident = id,
            step = index + 1,
            "Step did not heal the resource."
        );
        return Ok(StepEnd::NotHealed);
    }
    resolve(h, inc, index, step)?;
    Ok(StepEnd::Stands(Standing::Resolved))
}

/// Ends the step that is `running` on the incident.
fn finish_step(h: &Healer<'_>, id: i64, s: &IncidentStep) -> Result<(), StateError> {
    if !h.store.update_last_step(id, StepOutcome::Running, s)? {
        h.store.add_step(id, s)?;
    }
    Ok(())
}

/// Steps a stop of tend cut short (killed while a step was carried out or
/// verified): marked interrupted at the start of the next pass, which reads
/// the signals again and continues the runbook from that step.
pub fn close_running_steps(store: &dyn Store, run_id: i64) -> Result<(), StateError> {
    for (incident, step) in store.running_steps()? {
        let ended = IncidentStep {
            outcome: StepOutcome::Interrupted,
            detail: format!(
                "tend stopped while this step was carried out or verified; run {run_id} reads the signals again"
            ),
            finished_at: crate::state::now(),
            ..step.clone()
        };
        store.update_last_step(incident.id, StepOutcome::Running, &ended)?;
        store.update_incident(
            incident.id,
            &IncidentUpdate {
                status: incident.status,
                next_step: step.step.max(0),
                state: "unknown: the step was cut short",
                recommendation: "the next pass reads the signals again and continues the runbook",
            },
        )?;
        warn!(
            incident = incident.id,
            step = step.step + 1,
            "A step was cut short by a stop of tend."
        );
    }
    Ok(())
}

fn interrupted(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    index: usize,
    step: &Step,
    detail: String,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<(), StateError> {
    finish_step(
        h,
        inc.id,
        &IncidentStep::ended_now(
            index as i64,
            step.action.as_str(),
            "auto",
            StepOutcome::Interrupted,
            format!("tend stopped during verification: {detail}"),
            started,
        ),
    )?;
    h.store.update_incident(
        inc.id,
        &IncidentUpdate {
            status: IncidentStatus::Open,
            next_step: index as i64 + 1,
            state: "unknown: verification was cut short",
            recommendation: "the next pass reads the signals again and continues the runbook",
        },
    )
}

fn resolve(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    index: usize,
    step: &Step,
) -> Result<(), StateError> {
    info!(incident = inc.id, step = index + 1, "Incident resolved.");
    h.store.update_incident(
        inc.id,
        &IncidentUpdate {
            status: IncidentStatus::Resolved,
            next_step: index as i64 + 1,
            state: &format!(
                "healthy, verified after step {} ({})",
                index + 1,
                step.action.as_str()
            ),
            recommendation: "none",
        },
    )?;
    settle(h, inc.resource, inc.remedy)
}

/// A step that is not `auto` waits for a human: journaled, recorded on the
/// incident, and the incident says what would move it on.
fn hold(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    index: usize,
    step: &Step,
    action: &Action,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<(), StateError> {
    h.executor.journal_decision(action)?;
    // Held pass after pass: one step, whose end moves on.
    let held = IncidentStep::ended_now(
        index as i64,
        step.action.as_str(),
        action.decision.as_str(),
        StepOutcome::Held,
        action.reasons.join("; "),
        started,
    );
    if !h.store.update_last_step(inc.id, StepOutcome::Held, &held)? {
        h.store.add_step(inc.id, &held)?;
    }
    h.store.update_incident(
        inc.id,
        &IncidentUpdate {
            status: IncidentStatus::Open,
            next_step: index as i64,
            state: &format!(
                "unhealthy; step {} ({}) is held: {}",
                index + 1,
                step.action.as_str(),
                action.decision.as_str()
            ),
            recommendation: &format!(
                "approve or carry out step {} ({}) of runbook `{}`: {}",
                index + 1,
                step.action.as_str(),
                inc.remedy.runbook,
                action.reasons.join("; ")
            ),
        },
    )
}

/// The step after one that did not heal, decided; `None` when the runbook
/// is exhausted.
async fn next_step(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    index: usize,
) -> Result<Option<(usize, Action)>, StateError> {
    let cause = inc.remedy.cause_key();
    let mut skipped = Vec::new();
    let failures = |i: usize| {
        h.store
            .consecutive_failures(&cause, &inc.remedy.runbook, i as i64)
            .unwrap_or(0)
    };
    let following = remedy::next_step(
        &inc.spec,
        index + 1,
        &failures,
        h.desired.settings.healing.ineffective_after,
        &mut skipped,
    );
    record_skips(h, inc.id, &skipped)?;
    let Some(i) = following else {
        return Ok(None);
    };
    let live = verify::read_live(h, inc.resource).await.ok().flatten();
    let drift = drift_of(inc.resource, live.as_ref());
    let action = remedy::step_action(inc.remedy, i, &inc.spec.steps[i], live.as_ref(), &drift);
    Ok(Some((i, h.decider.decide_one(action))))
}

/// Hands the incident to a human: the runbook's `escalate` step (the first
/// one at or after `from`), or the end of a runbook that has none.
async fn escalate(h: &Healer<'_>, inc: &Incident<'_>, from: usize) -> Result<Healed, StateError> {
    let (id, remedy, spec) = (inc.id, inc.remedy, &inc.spec);
    let tried: Vec<String> = h
        .store
        .incident(id)?
        .map(|i| {
            i.steps
                .iter()
                .map(|s| format!("{} ({})", s.action, s.outcome))
                .collect()
        })
        .unwrap_or_default();
    // -1: not a step of the runbook (it has no `escalate` step).
    let index = spec
        .steps
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, s)| s.action == StepAction::Escalate)
        .map_or(-1, |(i, _)| i as i64);
    h.store.add_step(
        id,
        &IncidentStep::ended_now(
            index,
            "escalate",
            "auto",
            StepOutcome::Escalated,
            format!("runbook `{}` is exhausted", remedy.runbook),
            chrono::Utc::now(),
        ),
    )?;
    let state = current_state(h, inc).await;
    h.store.update_incident(
        id,
        &IncidentUpdate {
            status: IncidentStatus::Escalated,
            next_step: spec.steps.len() as i64,
            state: &state,
            recommendation: &format!(
                "a human should investigate {} on {}: tried {}; when it is fixed, tend resolves the incident on the next healthy pass",
                remedy.problem.cause,
                remedy.target,
                if tried.is_empty() { "nothing".to_string() } else { tried.join(", ") }
            ),
        },
    )?;
    warn!(incident = id, "Incident escalated.");
    Ok(healed(id, Standing::Escalated))
}

/// A crash loop is escalated when its incident opens: another run of the
/// runbook would be one more turn of the loop. The declared state is
/// restored with backoff only.
fn escalate_crash_loop(
    h: &Healer<'_>,
    id: i64,
    remedy: &Remedy,
    why: &str,
) -> Result<Healed, StateError> {
    h.store.add_step(
        id,
        &IncidentStep::ended_now(
            -1,
            "escalate",
            "auto",
            StepOutcome::Escalated,
            why.to_string(),
            chrono::Utc::now(),
        ),
    )?;
    let next = remedy
        .baseline
        .as_ref()
        .and_then(|b| b.not_before)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "now".into());
    h.store.update_incident(
        id,
        &IncidentUpdate {
            status: IncidentStatus::Escalated,
            next_step: 0,
            state: &format!("unhealthy: {}", remedy.problem.cause),
            recommendation: &format!(
                "a human should find why {} keeps failing ({why}); tend restores the declared state with backoff (next attempt {next}) and resolves the incident once it is healthy",
                remedy.target
            ),
        },
    )?;
    warn!(incident = id, "Crash loop: incident escalated.");
    Ok(healed(id, Standing::Escalated))
}

/// The resource's state now, in words: the problem's signals read again
/// (after the steps tried, the first reading is out of date).
async fn current_state(h: &Healer<'_>, inc: &Incident<'_>) -> String {
    let live = match verify::read_live(h, inc.resource).await {
        Ok(l) => l,
        Err(e) => return format!("unknown: failed to read live state: {e}"),
    };
    let readings = h.prober.read(inc.resource, live.as_ref()).await;
    let bad: Vec<String> = readings
        .iter()
        .filter(|r| inc.symptoms.contains(&r.signal) || r.signal == "liveness")
        .filter(|r| r.status != Status::Healthy)
        .map(|r| format!("{} {}", r.signal, r.detail))
        .collect();
    if bad.is_empty() {
        "the problem's signals read healthy; tend resolves the incident once they hold".into()
    } else {
        format!("unhealthy: {}", bad.join("; "))
    }
}

/// After a verified step: the SLO and signal states start healthy again,
/// so a breach that was just healed is not read again from memory, and the
/// spec is the last known good one.
fn settle(h: &Healer<'_>, r: &Resource, remedy: &Remedy) -> Result<(), StateError> {
    let now = chrono::Utc::now();
    let mut rows: Vec<SignalRow> = remedy
        .problem
        .symptoms
        .iter()
        .map(|t| SignalRow {
            signal: t.reading.signal.clone(),
            status: Status::Healthy,
            since: now,
            last_healthy: Some(now),
            value: None,
            detail: "verified healthy".to_string(),
        })
        .collect();
    if let Some(hl) = &r.health {
        rows.extend(
            hl.slos
                .iter()
                .map(|s| crate::health::slo_row(&s.name, false, now)),
        );
    }
    h.store.remember(&r.key, &rows)?;
    h.store.set_last_good(&r.key, h.executor.commit, &r.spec)
}

/// Carries out one step through the executor. `reapply-last-good` applies
/// the last known good spec; `command` runs an allowlisted command.
async fn execute(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    step: &Step,
    action: &Action,
) -> Result<Outcome, StateError> {
    let resource = inc.resource;
    match step.action {
        StepAction::Command => {
            let command = Command {
                argv: &step.command,
                allowed: &h.desired.settings.healing.commands,
                within: step.within(),
                incident: inc.id,
            };
            h.executor.execute(action, Effect::Command(command)).await
        }
        StepAction::ReapplyLastGood => match h.store.last_good(&resource.key)? {
            None => Ok(Outcome::Failed {
                error: "no last known good state is recorded for this resource".to_string(),
            }),
            Some(good) => {
                let mut r = resource.clone();
                r.spec = good.spec;
                let out = h
                    .executor
                    .execute(action, Effect::Provider { desired: Some(&r) })
                    .await?;
                Ok(match out {
                    Outcome::Synced { detail } => Outcome::Synced {
                        detail: format!(
                            "{detail} (spec of commit {})",
                            good.commit.as_deref().unwrap_or("unknown")
                        ),
                    },
                    other => other,
                })
            }
        },
        _ => {
            h.executor
                .execute(
                    action,
                    Effect::Provider {
                        desired: Some(resource),
                    },
                )
                .await
        }
    }
}
