//! Verification windows: after tend applies a change to a watched
//! resource, the controller looks at the resource until the window ends (a
//! "look again at T", like a runbook step's verification). Healthy for the
//! whole window: the change is verified and its spec is the last good one.
//! A problem inside it is a regression of the change: the change fails
//! (its spec is held, never applied again automatically), an incident
//! names the change, and the resource is rolled back to its last good spec
//! (decided and verified like a runbook step) or frozen and escalated.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{decide, open_incident, verify, Ctx, Healer, Job, Phase};
use crate::diff::drift_of;
use crate::health::{self, Problem, Remembered};
use crate::model::changes::{self, OnRegression};
use crate::model::health::{RunbookSpec, Step, StepAction};
use crate::model::{Resource, ResourceKey};
use crate::plan::remedy::{self, Remedy};
use crate::state::{ChangeStatus, ChangeVerdict, LastGood, StateError};
use crate::vocab::{spec_digest, ChangeRef, Rollback};

/// A change under verification, as a pass hands it to the runner.
#[derive(Debug, Clone)]
pub struct Window {
    /// The change's row in the store.
    pub change: i64,
    pub key: ResourceKey,
    pub until: Instant,
    pub what: ChangeRef,
    /// What a rollback applies: the last good spec when the change was
    /// applied.
    pub good: Option<LastGood>,
}

/// A window the runner holds.
pub(super) struct Watching {
    pub ctx: Arc<Ctx>,
    pub window: Window,
    /// The signal states since the change, looked after look. It starts
    /// empty: what the signals did before the change is not the change's
    /// doing, so every `for` runs from the change.
    pub memory: HashMap<String, Remembered>,
}

/// What one look at a window ends with.
pub(super) enum Looked {
    Again(Box<Watching>, Instant),
    /// Healthy for the whole window.
    Verified,
    /// A regression: the healing job that answers it.
    Regressed(Box<Job>),
}

/// The built-in runbooks of a regression.
pub const ROLLBACK: &str = "rollback";
pub const FREEZE: &str = "freeze";

/// Looks at the resource once.
pub(super) async fn look(h: &Healer<'_>, mut w: Watching) -> Result<Looked, StateError> {
    let key = w.window.key.clone();
    let Some(resource) = h.desired.resources.iter().find(|r| r.key == key) else {
        // No longer declared: nothing to verify.
        return Ok(Looked::Verified);
    };
    if let Ok(readings) = verify::read(h, resource).await {
        let now = chrono::Utc::now();
        let a = health::assess(resource, readings, &w.memory, &h.desired.signatures, now);
        w.memory = health::memory_of(&a);
        if let Some(problem) = a.problem {
            let job = regressed(h, w, resource, problem).await?;
            return Ok(Looked::Regressed(Box::new(job)));
        }
    }
    if Instant::now() >= w.window.until {
        h.store.settle_change(
            w.window.change,
            &ChangeVerdict {
                status: ChangeStatus::Verified,
                cause: None,
                incident: None,
                rolled_back: false,
            },
        )?;
        h.store
            .set_last_good(&key, w.window.what.commit.as_deref(), &resource.spec)?;
        info!(resource = %key, "Change verified: healthy for its whole window.");
        return Ok(Looked::Verified);
    }
    let at = (Instant::now() + super::POLL).min(w.window.until);
    Ok(Looked::Again(Box::new(w), at))
}

/// A problem inside the window: the change failed. Its spec is held, the
/// incident names the change, and the resource is rolled back (or frozen).
async fn regressed(
    h: &Healer<'_>,
    w: Watching,
    resource: &Resource,
    problem: Problem,
) -> Result<Job, StateError> {
    let settings = &h.desired.settings.changes;
    let (_, on) = changes::policy_of(resource, settings);
    let now = chrono::Utc::now();
    let since = now
        - chrono::Duration::from_std(settings.rollback_window.0).unwrap_or(chrono::Duration::MAX);
    let known = h.store.changes(since)?;
    let rolled = known
        .iter()
        .filter(|c| c.key == resource.key && c.rolled_back && c.applied_at >= since)
        .count();
    let failed: Vec<&str> = known
        .iter()
        .filter(|c| c.key == resource.key && c.status == ChangeStatus::Failed)
        .map(|c| c.digest.as_str())
        .collect();
    // Never back to a spec that is itself held as failed.
    let good = w
        .window
        .good
        .clone()
        .filter(|g| !failed.contains(&spec_digest(&g.spec).as_str()));
    let frozen = match on {
        OnRegression::Freeze => Some(
            "frozen: Settings spec.changes.onRegression is `freeze`; tend changes nothing".to_string(),
        ),
        OnRegression::Rollback if rolled as u32 >= settings.max_consecutive_rollbacks => Some(format!(
            "frozen: {rolled} automatic rollbacks of this resource within {} (Settings spec.changes.maxConsecutiveRollbacks); tend changes nothing",
            humantime::format_duration(settings.rollback_window.0)
        )),
        OnRegression::Rollback => None,
    };
    let mut what = w.window.what.clone();
    what.in_window = true;
    let (name, spec) = match frozen {
        Some(_) => (FREEZE, freeze_runbook()),
        None => (ROLLBACK, rollback_runbook(&h.desired.settings, resource)),
    };
    let mut remedy = Remedy {
        target: resource.key.clone(),
        problem,
        incident: None,
        runbook: name.to_string(),
        step: frozen.is_none().then_some(0),
        skipped: Vec::new(),
        escalated: false,
        baseline: None,
        crash_loop: None,
        declared_at: resource.origin.clone(),
        diagnosed_from: None,
        change: Some(what.clone()),
        storm: None,
    };
    let id = open_incident(h, &remedy)?;
    remedy.incident = Some(id);
    h.store.settle_change(
        w.window.change,
        &ChangeVerdict {
            status: ChangeStatus::Failed,
            cause: Some(&remedy.problem.cause),
            incident: Some(id),
            rolled_back: frozen.is_none(),
        },
    )?;
    warn!(
        resource = %resource.key,
        incident = id,
        commit = what.commit.as_deref().unwrap_or("unknown"),
        "A change regressed inside its verification window; its spec is held."
    );
    let action = match frozen {
        Some(_) => None,
        None => {
            let live = verify::read_live(h, resource).await.ok().flatten();
            let drift = drift_of(resource, live.as_ref());
            let rollback = || {
                good.as_ref().map(|g| Rollback {
                    commit: g.commit.clone(),
                    spec: g.spec.clone(),
                })
            };
            let mut action = remedy::planned_step(
                &remedy,
                0,
                &spec.steps[0],
                resource,
                live.as_ref(),
                &drift,
                &rollback,
            );
            action.change = Some(Box::new(what));
            Some(decide(h, action, live)?)
        }
    };
    let symptoms = remedy
        .problem
        .symptoms
        .iter()
        .map(|t| t.reading.signal.clone())
        .collect();
    Ok(Job {
        ctx: w.ctx,
        remedy,
        id,
        spec,
        symptoms,
        from: 0,
        phase: Phase::New(action),
        memory: w.memory,
        switch: None,
        frozen,
        waits: false,
    })
}

/// A regression rolled back: the last good spec, verified like a runbook
/// step for the resource's window, then escalation.
fn rollback_runbook(settings: &crate::model::Settings, r: &Resource) -> RunbookSpec {
    let within = changes::window(r, &settings.changes, &[]).max(changes::MIN_WINDOW);
    RunbookSpec {
        description: Some(
            "built in: a change regressed inside its verification window; roll back to the last good spec, then escalate".into(),
        ),
        steps: vec![
            Step {
                action: StepAction::ReapplyLastGood,
                within: Some(crate::model::Span(within)),
                hold: Some(crate::model::Span(std::time::Duration::from_secs(3))),
                command: Vec::new(),
                by: None,
            },
            escalate(),
        ],
    }
}

/// A regression frozen: nothing changes, a human is called.
fn freeze_runbook() -> RunbookSpec {
    RunbookSpec {
        description: Some(
            "built in: a change regressed inside its verification window; change nothing and escalate".into(),
        ),
        steps: vec![escalate()],
    }
}

fn escalate() -> Step {
    Step {
        action: StepAction::Escalate,
        within: None,
        hold: None,
        command: Vec::new(),
        by: None,
    }
}
