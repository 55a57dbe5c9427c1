//! One pass of the loop: source → load+validate → inventory → diff → plan,
//! then (for `apply`) act and report.
//!
//! Every stage before `act` is read-only. Any failure before a plan exists —
//! an unreadable source, invalid desired state, a failed inventory — ends the
//! pass with an error and no action at all.

use std::collections::HashMap;
use std::path::PathBuf;

use futures::StreamExt;

use crate::diff::{self, DiffOptions};
use crate::health::remedy::{self, Prior};
use crate::health::{self as health_stage, Prober};
use crate::model::ResourceKey;
use crate::model::{self, DesiredState, Invalid, Mode, ProviderName};
use crate::plan::{self, Plan, PlanInput, SourceInfo};
use crate::policy::{self, Facts, GateError, Policies};
use crate::provider::{
    aws::AwsProvider, host::HostProvider, BuiltIn, Listing, LiveResource, ProviderError, Providers,
};
use crate::source::{Source, SourceError};
use crate::state::{SignalRow, State, StateError};

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("failed to read the source: {0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("failed to read live state, so nothing was changed: {0}")]
    Inventory(#[from] ProviderError),
    #[error("failed to determine the working directory: {0}")]
    Cwd(std::io::Error),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    AwsConfig(#[from] crate::provider::aws::ConfigError),
}

/// Where tend keeps state, as given on the command line or in the
/// environment, before any desired state is read.
#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: Option<PathBuf>,
    pub mode: Option<Mode>,
}

/// Desired state read and validated, and where this pass keeps its state.
pub struct Loaded {
    pub origin: String,
    pub commit: Option<String>,
    pub desired: DesiredState,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    /// The default pack and the repository's policies, compiled once.
    pub policies: Policies,
}

/// The state directory before desired state is known (it holds the Git
/// cache): the flag or environment, else `.tend` in the working directory.
pub fn bootstrap_state_dir(opts: &Options) -> Result<PathBuf, PassError> {
    match &opts.state_dir {
        Some(d) => Ok(d.clone()),
        None => Ok(std::env::current_dir()
            .map_err(PassError::Cwd)?
            .join(".tend")),
    }
}

/// Reads and validates desired state; nothing live is touched.
pub fn load(source: &Source, opts: &Options) -> Result<Loaded, PassError> {
    let cache = bootstrap_state_dir(opts)?.join("sources");
    let snapshot = source.snapshot(&cache)?;
    let desired = model::load(&snapshot.files)?;
    let policy_files = policy::policy_files(&desired.settings.policies.dirs, &snapshot.rego);
    let policies = Policies::compile(&policy_files).map_err(|diagnostics| {
        let mut sources = model::SourceTexts::default();
        for f in &policy_files {
            sources.insert(&f.path, &f.text);
        }
        PassError::Invalid(Invalid {
            diagnostics,
            sources,
        })
    })?;
    let root = host_root(&desired)?;
    let state_dir = match (&opts.state_dir, &desired.settings.state_dir) {
        (None, Some(d)) => root.join(d),
        _ => bootstrap_state_dir(opts)?,
    };
    Ok(Loaded {
        origin: snapshot.origin,
        commit: snapshot.commit,
        desired,
        root,
        state_dir,
        policies,
    })
}

/// What the journal says about recent passes, as the safety gates need it.
pub fn facts(
    state: Option<&State>,
    settings: &model::Settings,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Facts, PassError> {
    let Some(state) = state else {
        return Ok(Facts::default());
    };
    let parse = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let back = |d: std::time::Duration| {
        (now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let safety = &settings.safety;
    let horizon = safety
        .cooldown
        .0
        .max(safety.circuit_breaker.window.0)
        .max(std::time::Duration::from_secs(24 * 3600));
    let outcomes = state
        .outcomes_since(&back(horizon))?
        .into_iter()
        .filter_map(|e| {
            Some(policy::PastOutcome {
                key: model::ResourceKey::new(model::Kind::parse(&e.kind)?, e.name),
                action: e.action,
                outcome: e.outcome?,
                at: parse(&e.at)?,
            })
        })
        .collect();
    let corrections = state
        .corrections_since(&back(safety.fight_detection.window.0))?
        .into_iter()
        .filter_map(|(at, kind, name, path)| {
            Some(policy::Correction {
                key: model::ResourceKey::new(model::Kind::parse(&kind)?, name),
                path,
                at: parse(&at)?,
            })
        })
        .collect();
    Ok(Facts {
        corrections,
        outcomes,
    })
}

fn host_root(desired: &DesiredState) -> Result<PathBuf, PassError> {
    let cwd = std::env::current_dir().map_err(PassError::Cwd)?;
    Ok(match &desired.settings.host.root {
        Some(r) => cwd.join(r),
        None => cwd,
    })
}

/// A plan and what made it.
pub struct Planned {
    pub providers: Providers,
    pub plan: Plan,
    pub live: HashMap<ResourceKey, LiveResource>,
    pub prober: Prober,
    /// Unresolved incidents of resources that are healthy again.
    pub recovered: Vec<i64>,
}

/// Inventories, diffs, reads health, plans and decides. Normalises the
/// declared specs in place. Reads the state database (signal history,
/// incidents) but never writes it.
pub async fn plan(
    loaded: &mut Loaded,
    opts: &Options,
    facts: &Facts,
    state: Option<&State>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Planned, PassError> {
    let desired = &mut loaded.desired;
    let mut all = Vec::with_capacity(desired.settings.providers.len());
    for p in &desired.settings.providers {
        all.push(match p {
            ProviderName::Host => BuiltIn::Host(HostProvider::new(&loaded.root, &loaded.state_dir)),
            ProviderName::Aws => {
                BuiltIn::Aws(Box::new(AwsProvider::new(&desired.settings.aws).await?))
            }
        });
    }
    let providers = Providers { all };
    providers.normalize_all(&mut desired.resources);
    let status = desired
        .resources
        .iter()
        .any(|r| health_stage::watched(r, &desired.signatures));
    let live = providers
        .inventory(&desired.resources, Listing::Everything { status })
        .await?;
    let diff = diff::diff(
        &desired.resources,
        &live,
        DiffOptions {
            prune: desired.settings.prune.enabled,
        },
    );
    let mode = opts.mode.unwrap_or(desired.settings.mode);
    let desired = &loaded.desired;
    let index = desired.index();
    let resource_mode = |k: &model::ResourceKey| index.get(k).and_then(|r| r.mode);
    let mut plan = plan::plan(
        &diff,
        PlanInput {
            source: SourceInfo {
                origin: loaded.origin.clone(),
                commit: loaded.commit.clone(),
            },
            mode,
            resources: desired.resources.len(),
            resource_mode: &resource_mode,
        },
    );
    for action in &mut plan.actions {
        action.note = live.get(&action.target).and_then(|l| l.note.clone());
        action.declared_at = index.get(&action.target).map(|r| r.origin.clone());
    }
    let prober = Prober::new(&desired.settings.healing);
    let recovered = assess_health(desired, &live, state, &prober, &mut plan, now).await?;
    policy::decide(
        &mut plan,
        &mut loaded.policies,
        &policy::Context {
            desired,
            index: &index,
            live: &live,
            facts,
            now,
        },
    )?;
    Ok(Planned {
        providers,
        plan,
        live,
        prober,
        recovered,
    })
}

/// Reads the signals of every watched resource, diagnoses problems and puts
/// the next runbook step of each unhealthy resource into the plan in place
/// of its drift corrections (one resource, one action at a time). Returns
/// the unresolved incidents whose resources are healthy again.
async fn assess_health(
    desired: &DesiredState,
    live: &HashMap<ResourceKey, LiveResource>,
    state: Option<&State>,
    prober: &Prober,
    plan: &mut Plan,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<i64>, PassError> {
    let watched = health_stage::watched_resources(desired);
    if watched.is_empty() {
        return Ok(Vec::new());
    }
    let readings: Vec<_> =
        futures::stream::iter(watched.iter().map(|r| prober.read(r, live.get(&r.key))))
            .buffered(16)
            .collect()
            .await;
    let ineffective_after = desired.settings.healing.ineffective_after;
    let mut recovered = Vec::new();
    for (r, readings) in watched.iter().zip(readings) {
        let (kind, name) = (r.key.kind.as_str(), r.key.name.as_str());
        let remembered = match state {
            Some(s) => s.remembered(kind, name)?,
            None => HashMap::new(),
        };
        let assessment = health_stage::assess(r, readings, &remembered, &desired.signatures, now);
        let active = match state {
            Some(s) => s.active_incident(kind, name)?,
            None => None,
        };
        // A resource that does not exist yet is created by the drift
        // correction; that is not an incident.
        let exists = live.contains_key(&r.key);
        match assessment.problem.as_ref().filter(|_| exists) {
            None if !exists => {}
            None => recovered.extend(active.map(|i| i.id)),
            Some(problem) => {
                let prior = active.map(|i| Prior {
                    id: i.id,
                    escalated: i.status == "escalated",
                    next_step: usize::try_from(i.next_step).unwrap_or(0),
                });
                let (runbook, spec) =
                    remedy::runbook_for(r.key.kind, problem.runbook.as_deref(), &desired.runbooks);
                let failures = |cause: &str, step: usize| {
                    state
                        .and_then(|s| s.consecutive_failures(cause, &runbook, step as i64).ok())
                        .unwrap_or(0)
                };
                let remedy = remedy::remedy(
                    r,
                    problem.clone(),
                    (&runbook, &spec),
                    prior.as_ref(),
                    &failures,
                    ineffective_after,
                );
                if let Some(i) = remedy.step {
                    let drift: Vec<_> = plan
                        .actions
                        .iter()
                        .filter(|a| a.target == r.key)
                        .flat_map(|a| a.changes.clone())
                        .collect();
                    plan.actions.retain(|a| a.target != r.key);
                    let mut action =
                        remedy::step_action(&remedy, i, &spec.steps[i], live.get(&r.key), &drift);
                    let (decision, reasons) = plan::ceiling(plan.mode, r.mode);
                    action.decision = decision;
                    action.reasons = reasons;
                    action.declared_at = Some(r.origin.clone());
                    plan.actions.push(action);
                } else {
                    // The runbook is exhausted or the incident escalated:
                    // restarting is what failed, so it is not retried as
                    // drift. Other drift still applies, so a fix committed
                    // to Git reaches the resource.
                    plan.actions.retain(|a| {
                        a.target != r.key || a.action_type != crate::plan::ActionType::Restart
                    });
                }
                plan.remedies.push(remedy);
            }
        }
        plan.health.push(assessment);
    }
    Ok(recovered)
}

/// Everything one `apply` pass did.
pub struct Applied {
    pub plan: Plan,
    pub results: Vec<crate::act::ActionResult>,
    pub healed: Vec<crate::verify::Healed>,
    /// Incidents resolved because their resources recovered.
    pub recovered: Vec<i64>,
    /// Every incident this pass touched, and every one still escalated.
    pub incidents: Vec<crate::state::Incident>,
}

impl Applied {
    pub fn failed(&self) -> bool {
        self.results.iter().any(|r| r.outcome.label() == "failed")
    }

    pub fn escalated(&self) -> usize {
        self.incidents
            .iter()
            .filter(|i| i.status == "escalated")
            .count()
    }
}

/// One `apply` pass on loaded desired state: plan, act on drift, heal
/// unhealthy resources, and record it all. `stop` is checked between runbook
/// steps (a shutdown lets the step in flight finish).
pub async fn apply(
    loaded: &mut Loaded,
    opts: &Options,
    state: &State,
    command: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Applied, PassError> {
    let mode = opts.mode.unwrap_or(loaded.desired.settings.mode);
    let run_id = state.begin_run(
        command,
        &loaded.origin,
        loaded.commit.as_deref(),
        mode.as_str(),
    )?;
    let result = apply_run(loaded, opts, state, run_id, stop).await;
    let status = match &result {
        Err(_) => "error",
        Ok(a) if a.failed() => "failed",
        Ok(a) if a.escalated() > 0 => "escalated",
        Ok(_) => "ok",
    };
    state.finish_run(run_id, status)?;
    result
}

async fn apply_run(
    loaded: &mut Loaded,
    opts: &Options,
    state: &State,
    run_id: i64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Applied, PassError> {
    // An earlier run died between calling a provider and recording what
    // happened. Live state is re-read below, so the action is re-planned
    // from facts, never repeated blindly.
    for d in state.dangling_intents()? {
        state.outcome(&crate::state::JournalRecord {
            run_id: d.run_id,
            fingerprint: &d.fingerprint,
            action: &d.action,
            kind: &d.kind,
            name: &d.name,
            commit: d.commit.as_deref(),
            outcome: Some("interrupted"),
            detail: &format!(
                "run {} ended before recording an outcome; live state re-read by run {run_id}",
                d.run_id
            ),
        })?;
    }
    let now = chrono::Utc::now();
    let facts = facts(Some(state), &loaded.desired.settings, now)?;
    let planned = plan(loaded, opts, &facts, Some(state), now).await?;
    remember_health(state, &planned.plan)?;
    let Loaded {
        desired,
        policies,
        commit,
        ..
    } = loaded;
    let desired = &*desired;
    let results = crate::act::run(
        &planned.plan,
        desired,
        &planned.providers,
        state,
        run_id,
        desired.settings.safety.circuit_breaker.failures,
        stop,
    )
    .await?;

    let index = desired.index();
    let policies = std::sync::Mutex::new(policies);
    let decide = |a: crate::plan::Action| -> crate::plan::Action {
        let mut one = Plan {
            source: planned.plan.source.clone(),
            mode: planned.plan.mode,
            resources: planned.plan.resources,
            in_sync: 0,
            actions: vec![a],
            unmanaged: Vec::new(),
            health: Vec::new(),
            remedies: Vec::new(),
        };
        let mut guard = policies.lock().unwrap_or_else(|e| e.into_inner());
        let ctx = policy::Context {
            desired,
            index: &index,
            live: &planned.live,
            facts: &facts,
            now: chrono::Utc::now(),
        };
        let decided = policy::decide(&mut one, &mut guard, &ctx);
        let mut a = one.actions.remove(0);
        if let Err(e) = decided {
            a.decision = crate::plan::Decision::Deny;
            a.reasons = vec![e.to_string()];
        }
        a
    };
    let work: Vec<crate::verify::Work> = planned
        .plan
        .remedies
        .iter()
        .map(|r| crate::verify::Work {
            remedy: r.clone(),
            action: planned
                .plan
                .actions
                .iter()
                .find(|a| a.target == r.target && a.incident.is_some())
                .cloned(),
        })
        .collect();
    let healer = crate::verify::Healer {
        desired,
        providers: &planned.providers,
        state,
        prober: &planned.prober,
        run_id,
        commit: commit.as_deref(),
        decide: &decide,
        stop,
    };
    let healed =
        crate::verify::heal_all(&healer, work, desired.settings.healing.concurrency).await?;
    for id in &planned.recovered {
        state.add_step(
            *id,
            &crate::state::IncidentStep::ended_now(
                -1,
                "observe",
                "none",
                "recovered",
                "every signal of the problem is healthy again".into(),
                chrono::Utc::now(),
            ),
        )?;
        state.update_incident(*id, "resolved", 0, "healthy", "none")?;
    }
    // Healthy and in sync: this spec is the last known good one.
    for a in &planned.plan.health {
        let in_sync = !planned.plan.actions.iter().any(|x| x.target == a.target);
        let healthy = a
            .signals
            .iter()
            .all(|s| s.reading.status == health_stage::Status::Healthy);
        if in_sync && healthy && a.problem.is_none() {
            if let Some(r) = index.get(&a.target) {
                state.set_last_good(
                    r.key.kind.as_str(),
                    &r.key.name,
                    commit.as_deref(),
                    &r.spec,
                )?;
            }
        }
    }
    let mut ids: Vec<i64> = healed.iter().map(|h| h.incident).collect();
    ids.extend(&planned.recovered);
    for i in state.incidents(false, 1000)? {
        if i.status == "escalated" {
            ids.push(i.id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let mut incidents = Vec::with_capacity(ids.len());
    for id in ids {
        incidents.extend(state.incident(id)?);
    }
    Ok(Applied {
        plan: planned.plan,
        results,
        healed,
        recovered: planned.recovered,
        incidents,
    })
}

/// Stores this pass's signal and SLO states so `for` and recovery
/// durations hold across passes.
fn remember_health(state: &State, plan: &Plan) -> Result<(), PassError> {
    for a in &plan.health {
        let mut rows: Vec<SignalRow> = a.signals.iter().map(SignalRow::signal).collect();
        rows.extend(
            a.slos
                .iter()
                .map(|s| SignalRow::slo(&s.name, s.breached, s.since)),
        );
        state.remember(a.target.kind.as_str(), &a.target.name, &rows)?;
    }
    Ok(())
}
