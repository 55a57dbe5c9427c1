//! Diagnosis while an incident is open: each look reads all of the
//! resource's signals, and they are assessed again with what the job
//! remembers of them (so a `for` runs on between looks as it does between
//! passes). A diagnosis more specific than the incident's (a signature over
//! an SLO or a dead process, or a signature with more conditions) names the
//! incident from then on: journaled as a diagnosis, and where its runbook
//! differs, that runbook goes on from its first step once the step in
//! flight has ended. A new incident opened by a symptom lets its first
//! step wait a short grace for a signature about to match.

use tokio::time::Instant;
use tracing::info;

use super::lifecycle::Event;
use super::{next_step, transition, verify, Healer, Job, Phase};
use crate::health::{self, Problem, Reading};
use crate::model::Resource;
use crate::plan::remedy::{self, Was};
use crate::state::{Diagnosis, IncidentStep, StateError};
use crate::vocab::{Action, IncidentStatus, StepOutcome};

/// What one look during the diagnosis grace ends with.
pub(super) enum Waited {
    /// Still waiting: look again.
    Again(Phase),
    /// The grace is over: the first step (`None`: the runbook is
    /// exhausted, escalate).
    Then(Option<Phase>),
}

/// One look while a new incident's first step waits for a more specific
/// signature: it waits on while one is about to match and the grace lasts.
pub(super) async fn wait(
    h: &Healer<'_>,
    job: &mut Job,
    resource: &Resource,
    until: Instant,
    action: Action,
) -> Result<Waited, StateError> {
    let before = job.remedy.problem.signature.clone();
    if h.stop.load(std::sync::atomic::Ordering::SeqCst) {
        let index = job.remedy.step.unwrap_or(0);
        return Ok(Waited::Then(Some(Phase::Step { index, action })));
    }
    let assessed = match verify::read(h, resource).await {
        Ok(readings) => look(h, job, resource, readings, false)?,
        // Unreadable: nothing to wait for.
        Err(_) => None,
    };
    let rank = |s: Option<&str>| health::rank(s, &h.desired.signatures);
    let mine = rank(job.remedy.problem.signature.as_deref());
    let still = assessed
        .as_ref()
        .and_then(|p| p.pending.as_ref())
        .is_some_and(|p| rank(Some(&p.signature)) > mine);
    if still && Instant::now() < until {
        return Ok(Waited::Again(Phase::Diagnosing { until, action }));
    }
    let index = job.remedy.step.unwrap_or(0);
    if job.remedy.problem.signature == before {
        return Ok(Waited::Then(Some(Phase::Step { index, action })));
    }
    // Diagnosed: the step is planned and decided again, for the new cause
    // (and from the first step of its runbook when that changed).
    let inc = job.incident(resource);
    Ok(Waited::Then(
        next_step(h, &inc, job.from)
            .await?
            .map(|(index, action)| Phase::Step { index, action }),
    ))
}

/// Assesses the resource from one look's readings with what the job
/// remembers. A problem more specific than the incident's names it from
/// now on; `in_flight` when a step under verification finishes first.
/// Returns the problem this look found, if any.
pub(super) fn look(
    h: &Healer<'_>,
    job: &mut Job,
    resource: &Resource,
    readings: Vec<Reading>,
    in_flight: bool,
) -> Result<Option<Problem>, StateError> {
    let signatures = &h.desired.signatures;
    let now = chrono::Utc::now();
    let a = health::assess(resource, readings, &job.memory, signatures, now);
    job.memory = health::memory_of(&a);
    let Some(found) = a.problem else {
        return Ok(None);
    };
    let rank = |s: Option<&str>| health::rank(s, signatures);
    if rank(found.signature.as_deref()) <= rank(job.remedy.problem.signature.as_deref()) {
        return Ok(Some(found));
    }
    let (name, spec) = remedy::runbook_for(
        resource.key.kind,
        found.runbook.as_deref(),
        &h.desired.runbooks,
    );
    let was = Was {
        cause: job.remedy.problem.cause.clone(),
        runbook: (name != job.remedy.runbook).then(|| job.remedy.runbook.clone()),
    };
    // Every symptom stays: the new cause's, then the ones it opened with.
    let mut problem = found.clone();
    for t in &job.remedy.problem.symptoms {
        if !problem
            .symptoms
            .iter()
            .any(|s| s.reading.signal == t.reading.signal)
        {
            problem.symptoms.push(t.clone());
        }
    }
    problem.onset = problem.onset.min(job.remedy.problem.onset);
    job.symptoms = problem
        .symptoms
        .iter()
        .map(|t| t.reading.signal.clone())
        .collect();
    job.remedy.problem = problem;
    if was.runbook.is_some() {
        job.remedy.runbook = name;
        if in_flight {
            job.switch = Some(spec);
        } else {
            job.spec = spec;
            job.from = 0;
        }
    }
    record(h, job, &was, in_flight)?;
    Ok(Some(found))
}

/// Records on the incident that its problem (`job.remedy`'s, already the
/// new one) names it from now on, replacing `was`.
pub(super) fn record(
    h: &Healer<'_>,
    job: &Job,
    was: &Was,
    in_flight: bool,
) -> Result<(), StateError> {
    let p = &job.remedy.problem;
    let named = p
        .signature
        .as_deref()
        .map_or_else(String::new, |s| format!("`{s}`: "));
    let mut detail = format!("diagnosed as {named}{} (was: {})", p.cause, was.cause);
    if let Some(why) = &p.why {
        detail.push_str(&format!("; {why}"));
    }
    if let Some(old) = &was.runbook {
        detail.push_str(&format!(
            "; runbook `{}` replaces `{old}`{}, from its first step",
            job.remedy.runbook,
            if in_flight {
                " once the step in flight ends"
            } else {
                ""
            }
        ));
    }
    h.store.add_step(
        job.id,
        &IncidentStep::ended_now(
            None,
            None,
            None,
            StepOutcome::Diagnosed,
            detail,
            chrono::Utc::now(),
        ),
    )?;
    let diagnosis = Diagnosis {
        cause: p.cause.clone(),
        signature: p.signature.clone(),
        why: p.why.clone(),
        runbook: Some(job.remedy.runbook.clone()),
        severity: p.severity,
        symptoms: serde_json::to_value(&p.symptoms).unwrap_or_default(),
    };
    let next = if was.runbook.is_some() { 0 } else { job.from };
    transition(
        h.store,
        job.id,
        IncidentStatus::Open,
        &Event::Diagnosed {
            diagnosis: &diagnosis,
            next_step: next,
            in_flight,
        },
    )?;
    info!(
        incident = job.id,
        signature = p.signature.as_deref().unwrap_or(""),
        "Incident diagnosed."
    );
    Ok(())
}
