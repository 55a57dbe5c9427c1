//! Healing: carrying out runbook steps, verifying them, escalating.
//!
//! Each step is an action that went through the policy gate and the safety
//! gates; only an `auto` step runs, journaled like every other action.
//! After a step the resource and the signals that made up the problem are
//! read again until they have been healthy for the step's hold time, or
//! its deadline passes. A verified step resolves the incident; a failed one
//! moves to the next step; an exhausted runbook escalates and the incident
//! stays open for a human. This module never decides what is allowed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tracing::{info, info_span, warn, Instrument};

use crate::health::remedy::{self, Remedy};
use crate::health::{Prober, Status};
use crate::model::health::{RunbookSpec, Step, StepAction};
use crate::model::{DesiredState, Resource};
use crate::plan::{Action, Decision};
use crate::provider::{Listing, LiveResource, Providers};
use crate::state::{IncidentStep, JournalRecord, NewIncident, SignalRow, State, StateError};

/// How often verification re-reads the resource and its signals.
const POLL: Duration = Duration::from_millis(250);

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
    pub state: &'a State,
    pub prober: &'a Prober,
    pub run_id: i64,
    pub commit: Option<&'a str>,
    /// The policy gate and safety gates for a step planned during the pass.
    pub decide: &'a dyn Fn(Action) -> Action,
    /// Set on SIGINT/SIGTERM: the step in flight finishes, no new one starts.
    pub stop: &'a AtomicBool,
}

/// One incident to work on: the remedy and, when it has a next step, the
/// decided action for it.
pub struct Work {
    pub remedy: Remedy,
    pub action: Option<Action>,
}

/// Heals every resource in `work`, at most `concurrency` at once and never
/// two steps on one resource at once (each resource appears once).
pub async fn heal_all(
    h: &Healer<'_>,
    work: Vec<Work>,
    concurrency: usize,
) -> Result<Vec<Healed>, StateError> {
    let mut seen = HashSet::new();
    let work: Vec<Work> = work
        .into_iter()
        .filter(|w| seen.insert(w.remedy.target.clone()))
        .collect();
    let results: Vec<Result<Healed, StateError>> =
        futures::stream::iter(work.into_iter().map(|w| {
            let span =
                info_span!("heal", resource = %w.remedy.target, cause = %w.remedy.problem.cause);
            heal(h, w).instrument(span)
        }))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

async fn heal(h: &Healer<'_>, w: Work) -> Result<Healed, StateError> {
    let Work { remedy, action } = w;
    let key = &remedy.target;
    let (kind, name) = (key.kind.as_str(), key.name.as_str());
    let Some(resource) = h.desired.resources.iter().find(|r| r.key == *key) else {
        // The desired state changed under a continuing incident.
        return Ok(Healed {
            incident: remedy.incident.unwrap_or(0),
            standing: Standing::Held,
        });
    };
    let id = match remedy.incident {
        Some(id) => id,
        None => {
            let id = h.state.open_incident(&NewIncident {
                kind,
                name,
                cause: &remedy.problem.cause,
                signature: remedy.problem.signature.as_deref(),
                runbook: Some(&remedy.runbook),
                severity: remedy.problem.severity.as_str(),
                symptoms: &remedy.problem.symptoms,
                onset: remedy.problem.onset,
                detected: chrono::Utc::now(),
            })?;
            info!(incident = id, "Incident opened.");
            id
        }
    };
    if remedy.escalated {
        return Ok(Healed {
            incident: id,
            standing: Standing::Escalated,
        });
    }
    let (_, spec) = remedy::runbook_for(
        key.kind,
        (remedy.runbook != remedy::BUILTIN_RUNBOOK).then_some(remedy.runbook.as_str()),
        &h.desired.runbooks,
    );
    let cause = remedy.cause_key();
    let record_skips = |skipped: &[remedy::Skipped]| -> Result<(), StateError> {
        for s in skipped {
            h.state.add_step(
                id,
                &IncidentStep::ended_now(
                    s.step as i64,
                    s.action.as_str(),
                    "skipped",
                    "skipped",
                    s.reason.clone(),
                    chrono::Utc::now(),
                ),
            )?;
        }
        Ok(())
    };
    record_skips(&remedy.skipped)?;

    let mut next = remedy.step.zip(action);
    let symptoms: Vec<String> = remedy
        .problem
        .symptoms
        .iter()
        .map(|t| t.reading.signal.clone())
        .collect();
    while let Some((index, action)) = next.take() {
        let Some(step) = spec.steps.get(index) else {
            break;
        };
        if h.stop.load(Ordering::SeqCst) {
            h.state.update_incident(
                id,
                "open",
                index as i64,
                "unhealthy",
                "tend stopped before this step; the next pass continues",
            )?;
            return Ok(Healed {
                incident: id,
                standing: Standing::Interrupted,
            });
        }
        let started = chrono::Utc::now();
        if action.decision != Decision::Auto {
            journal_decision(h, &action)?;
            h.state.add_step(
                id,
                &IncidentStep::ended_now(
                    index as i64,
                    step.action.as_str(),
                    action.decision.as_str(),
                    "held",
                    action.reasons.join("; "),
                    started,
                ),
            )?;
            h.state.update_incident(
                id,
                "open",
                index as i64,
                &format!(
                    "unhealthy; step {} ({}) is held: {}",
                    index + 1,
                    step.action.as_str(),
                    action.decision.as_str()
                ),
                &format!(
                    "approve or carry out step {} ({}) of runbook `{}`: {}",
                    index + 1,
                    step.action.as_str(),
                    remedy.runbook,
                    action.reasons.join("; ")
                ),
            )?;
            return Ok(Healed {
                incident: id,
                standing: Standing::Held,
            });
        }
        let ran = execute(h, resource, step, &action, id).await?;
        let verdict = match ran {
            Err(e) => Err(format!("the step failed: {e}")),
            Ok(detail) => verify(h, resource, &symptoms, step)
                .await
                .map(|v| format!("{detail}; verified: {v}"))
                .map_err(|v| {
                    format!(
                        "{detail}; not verified within {}: {v}",
                        humantime::format_duration(step.within())
                    )
                }),
        };
        if verdict.is_err() && h.stop.load(Ordering::SeqCst) {
            // Cut short by a shutdown: not a verdict on the step, so it is
            // not counted; the next pass reads the signals again.
            let detail = verdict.err().unwrap_or_default();
            h.state.add_step(
                id,
                &IncidentStep::ended_now(
                    index as i64,
                    step.action.as_str(),
                    "auto",
                    "interrupted",
                    format!("tend stopped during verification: {detail}"),
                    started,
                ),
            )?;
            h.state.update_incident(
                id,
                "open",
                index as i64 + 1,
                "unknown: verification was cut short",
                "the next pass reads the signals again and continues the runbook",
            )?;
            return Ok(Healed {
                incident: id,
                standing: Standing::Interrupted,
            });
        }
        let verified = verdict.is_ok();
        h.state.record_step_result(
            &cause,
            &remedy.runbook,
            index as i64,
            step.action.as_str(),
            verified,
        )?;
        let (outcome, detail) = match &verdict {
            Ok(d) => ("verified", d.clone()),
            Err(d) => ("not-verified", d.clone()),
        };
        h.state.add_step(
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
        if verified {
            info!(incident = id, step = index + 1, "Incident resolved.");
            h.state.update_incident(
                id,
                "resolved",
                index as i64 + 1,
                &format!(
                    "healthy, verified after step {} ({})",
                    index + 1,
                    step.action.as_str()
                ),
                "none",
            )?;
            settle(h, resource, &remedy)?;
            return Ok(Healed {
                incident: id,
                standing: Standing::Resolved,
            });
        }
        warn!(
            incident = id,
            step = index + 1,
            "Step did not heal the resource."
        );
        let mut skipped = Vec::new();
        let failures = |i: usize| {
            h.state
                .consecutive_failures(&cause, &remedy.runbook, i as i64)
                .unwrap_or(0)
        };
        let following = remedy::next_step(
            &spec,
            index + 1,
            &failures,
            h.desired.settings.healing.ineffective_after,
            &mut skipped,
        );
        record_skips(&skipped)?;
        next = match following {
            Some(i) => {
                let live = read_live(h, resource).await.ok().flatten();
                let drift = drift_of(resource, live.as_ref());
                let a = remedy::step_action(&remedy, i, &spec.steps[i], live.as_ref(), &drift);
                Some((i, (h.decide)(a)))
            }
            None => None,
        };
        if next.is_none() {
            return escalate(h, id, &remedy, &spec);
        }
    }
    escalate(h, id, &remedy, &spec)
}

fn escalate(
    h: &Healer<'_>,
    id: i64,
    remedy: &Remedy,
    spec: &RunbookSpec,
) -> Result<Healed, StateError> {
    let tried: Vec<String> = h
        .state
        .incident(id)?
        .map(|i| {
            i.steps
                .iter()
                .map(|s| format!("{} ({})", s.action, s.outcome))
                .collect()
        })
        .unwrap_or_default();
    h.state.add_step(
        id,
        &IncidentStep::ended_now(
            spec.steps.len() as i64,
            "escalate",
            "auto",
            "escalated",
            format!("runbook `{}` is exhausted", remedy.runbook),
            chrono::Utc::now(),
        ),
    )?;
    let symptoms: Vec<String> = remedy
        .problem
        .symptoms
        .iter()
        .map(|t| format!("{} {}", t.reading.signal, t.reading.detail))
        .collect();
    h.state.update_incident(
        id,
        "escalated",
        spec.steps.len() as i64,
        &format!("unhealthy: {}", symptoms.join("; ")),
        &format!(
            "a human should investigate {} on {}: tried {}; when it is fixed, tend resolves the incident on the next healthy pass",
            remedy.problem.cause,
            remedy.target,
            if tried.is_empty() { "nothing".to_string() } else { tried.join(", ") }
        ),
    )?;
    warn!(incident = id, "Incident escalated.");
    Ok(Healed {
        incident: id,
        standing: Standing::Escalated,
    })
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
        rows.extend(hl.slos.iter().map(|s| SignalRow::slo(&s.name, false, now)));
    }
    h.state.remember(r.key.kind.as_str(), &r.key.name, &rows)?;
    h.state
        .set_last_good(r.key.kind.as_str(), &r.key.name, h.commit, &r.spec)
}

fn journal_decision(h: &Healer<'_>, action: &Action) -> Result<(), StateError> {
    h.state.record_decision(
        &record(h, action, None, ""),
        action.decision.as_str(),
        &action.reasons,
    )
}

fn record<'b>(
    h: &'b Healer<'_>,
    action: &'b Action,
    outcome: Option<&'b str>,
    detail: &'b str,
) -> JournalRecord<'b> {
    JournalRecord {
        run_id: h.run_id,
        fingerprint: &action.fingerprint,
        action: action.action_type.as_str(),
        kind: action.target.kind.as_str(),
        name: &action.target.name,
        commit: h.commit,
        outcome,
        detail,
    }
}

/// Runs one step: the intent is journaled before, the outcome after.
async fn execute(
    h: &Healer<'_>,
    resource: &Resource,
    step: &Step,
    action: &Action,
    incident: i64,
) -> Result<Result<String, String>, StateError> {
    let intent = serde_json::json!({
        "incident": incident,
        "step": step.action.as_str(),
        "changes": action.changes,
        "reasons": action.reasons,
    })
    .to_string();
    h.state.intent(&record(h, action, None, &intent))?;
    let result = match step.action {
        StepAction::Command => run_command(h, resource, step, incident).await,
        StepAction::ReapplyLastGood => match h
            .state
            .last_good(resource.key.kind.as_str(), &resource.key.name)?
        {
            None => Err("no last known good state is recorded for this resource".to_string()),
            Some((commit, spec)) => {
                let mut good = resource.clone();
                good.spec = spec;
                apply(h, action, &good).await.map(|d| {
                    format!(
                        "{d} (spec of commit {})",
                        commit.as_deref().unwrap_or("unknown")
                    )
                })
            }
        },
        _ => apply(h, action, resource).await,
    };
    let (outcome, detail) = match &result {
        Ok(d) => ("synced", d.as_str()),
        Err(e) => ("failed", e.as_str()),
    };
    h.state.outcome(&record(h, action, Some(outcome), detail))?;
    Ok(result)
}

async fn apply(h: &Healer<'_>, action: &Action, r: &Resource) -> Result<String, String> {
    let provider = h
        .providers
        .for_kind(r.key.kind)
        .ok_or_else(|| format!("no provider for {} is enabled in Settings", r.key.kind))?;
    provider
        .apply(action, Some(r))
        .await
        .map(|a| a.detail)
        .map_err(|e| e.to_string())
}

/// Runs an allowlisted command (checked when the desired state was
/// loaded), bounded by the step's deadline.
async fn run_command(
    h: &Healer<'_>,
    r: &Resource,
    step: &Step,
    incident: i64,
) -> Result<String, String> {
    let Some((program, args)) = step.command.split_first() else {
        return Err("the step has no command".into());
    };
    if !h
        .desired
        .settings
        .healing
        .commands
        .iter()
        .any(|c| c == program)
    {
        return Err(format!("`{program}` is not an allowed command"));
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TEND_RESOURCE", r.key.to_string())
        .env("TEND_INCIDENT", incident.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(step.within(), cmd.output())
        .await
        .map_err(|_| {
            format!(
                "`{program}` did not finish within {}",
                humantime::format_duration(step.within())
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

async fn read_live(h: &Healer<'_>, r: &Resource) -> Result<Option<LiveResource>, String> {
    let mut live = h
        .providers
        .inventory(std::slice::from_ref(r), Listing::Declared)
        .await
        .map_err(|e| e.to_string())?;
    Ok(live.remove(&r.key))
}

/// The declared fields that differ from live state.
pub fn drift_of(r: &Resource, live: Option<&LiveResource>) -> Vec<crate::diff::FieldChange> {
    let mut map = std::collections::HashMap::new();
    if let Some(l) = live {
        map.insert(r.key.clone(), l.clone());
    }
    let d = crate::diff::diff(
        std::slice::from_ref(r),
        &map,
        crate::diff::DiffOptions { prune: false },
    );
    d.changes
        .into_iter()
        .flat_map(|c| match c {
            crate::diff::Change::Create { fields, .. }
            | crate::diff::Change::Update { fields, .. } => fields,
            _ => Vec::new(),
        })
        .collect()
}

/// Re-reads the resource and the signals of the problem until they have
/// all been healthy for the step's hold time, or the deadline passes.
async fn verify(
    h: &Healer<'_>,
    r: &Resource,
    symptoms: &[String],
    step: &Step,
) -> Result<String, String> {
    let deadline = Instant::now() + step.within();
    let mut healthy_since: Option<Instant> = None;
    let mut last: String;
    loop {
        match read_live(h, r).await {
            Err(e) => {
                healthy_since = None;
                last = format!("failed to read live state: {e}");
            }
            Ok(live) => {
                let readings = h.prober.read(r, live.as_ref()).await;
                let relevant: Vec<_> = readings
                    .iter()
                    .filter(|rd| {
                        symptoms.contains(&rd.signal)
                            || matches!(rd.signal.as_str(), "liveness" | "status")
                    })
                    .collect();
                let bad: Vec<String> = relevant
                    .iter()
                    .filter(|rd| rd.status != Status::Healthy)
                    .map(|rd| format!("{} {}: {}", rd.signal, rd.status.as_str(), rd.detail))
                    .collect();
                if bad.is_empty() {
                    let since = *healthy_since.get_or_insert_with(Instant::now);
                    last = relevant
                        .iter()
                        .map(|rd| format!("{} {}", rd.signal, rd.detail))
                        .collect::<Vec<_>>()
                        .join("; ");
                    if since.elapsed() >= step.hold() {
                        return Ok(last);
                    }
                } else {
                    healthy_since = None;
                    last = bad.join("; ");
                }
            }
        }
        if Instant::now() >= deadline || h.stop.load(Ordering::SeqCst) {
            return Err(last);
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
