//! From differences to candidate actions, each with a decision.
//!
//! Every correction becomes an [`Action`] with a type, a target, the exact
//! field changes, its risk and reversibility, and a stable fingerprint. The
//! decision here is the mode ceiling (global, lowered per resource). Planning
//! is pure: no I/O, no clock.

pub mod remedy;

use serde::Serialize;

use std::collections::HashMap;

use crate::diff::{Change, Diff};
use crate::health::Assessment;
use chrono::{DateTime, Utc};

use crate::model::health::{Backoff, CrashLoop, Runbook};
use crate::model::{Kind, Mode, Resource, ResourceKey};
use crate::vocab::redact;
pub use crate::vocab::{
    fingerprint, is_secret_name, Action, ActionType, Decision, FieldChange, IncidentRef,
    LiveResource, Risk,
};

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
    pub health: Vec<Assessment>,
    /// Unhealthy resources and the runbook step each takes next.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remedies: Vec<remedy::Remedy>,
    /// Resources whose declared spec failed verification: kept at their
    /// last good spec (or frozen), not applied again automatically.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<Held>,
    /// The emergency pauses in force: no action on what they match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paused: Vec<crate::state::Pause>,
}

/// A declared spec held after it failed verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Held {
    pub target: ResourceKey,
    /// The failed spec's fingerprint: an `Approval` of it releases the hold.
    pub fingerprint: String,
    /// The commit that declared the failed spec.
    pub failed_commit: Option<String>,
    /// The commit of the last good spec the resource is kept at; absent
    /// when frozen or when there was none.
    pub good_commit: Option<String>,
    /// What failed verification.
    pub cause: String,
    /// The changed fields.
    pub fields: Vec<String>,
    /// Frozen: nothing is changed on the resource until a human acts.
    pub frozen: bool,
    pub incident: Option<i64>,
    /// Where the resource is declared.
    #[serde(skip)]
    pub declared_at: Option<crate::model::Origin>,
    /// The edit of the declaration back to the last good values (field
    /// path, value), or why there is none.
    #[serde(skip)]
    pub revert: Result<Vec<(String, serde_json::Value)>, String>,
}

impl Held {
    /// The hold, in words.
    pub fn in_words(&self) -> String {
        let commit = |c: &Option<String>| {
            c.as_deref().map_or_else(
                || "an unknown commit".to_string(),
                |c| c.chars().take(12).collect(),
            )
        };
        let failed = format!(
            "{} failed verification ({})",
            commit(&self.failed_commit),
            self.cause
        );
        if self.frozen {
            format!(
                "frozen: {failed}; a human must act (tend release, or an Approval of {})",
                self.fingerprint
            )
        } else {
            format!(
                "held at last good {}: {failed}; the declared spec {} is not applied again until it changes or a human releases it",
                commit(&self.good_commit),
                self.fingerprint
            )
        }
    }
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
            approval: None,
            rollback: None,
            change: None,
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
        held: Vec::new(),
        paused: Vec::new(),
    }
}

/// One watched resource's health in this pass, and its open incident.
pub struct Watched<'a> {
    pub resource: &'a Resource,
    pub assessment: Assessment,
    pub prior: Option<remedy::Prior>,
}

/// What healing needs to know besides the resources: the runbooks, the
/// remediation statistics and when a step counts as ineffective.
pub struct HealingInput<'a> {
    pub runbooks: &'a [Runbook],
    /// Consecutive verification failures of (cause, runbook, step).
    pub failures: &'a dyn Fn(&str, &str, usize) -> i64,
    pub ineffective_after: u32,
    /// How often the declared state is restored while escalated.
    pub backoff: &'a Backoff,
    pub crash_loop: &'a CrashLoop,
    /// Incidents of (resource, cause) opened within the crash-loop window.
    pub recurrences: &'a dyn Fn(&ResourceKey, &str) -> usize,
    /// Resources whose healing is under way (a step carried out or under
    /// verification): left to it, no step planned and nothing resolved
    /// here (their drift waits for the healing to end).
    pub healing: &'a dyn Fn(&ResourceKey) -> bool,
    /// The last known good spec of a resource and the commit it was
    /// declared at, for a `reapply-last-good` step.
    pub last_good: &'a dyn Fn(&ResourceKey) -> Option<crate::vocab::Rollback>,
    /// The declared signatures, to tell which diagnosis is more specific.
    pub signatures: &'a [crate::model::health::Signature],
    /// The storm guard (`Settings spec.safety.storm`).
    pub storm: &'a crate::model::Storm,
    /// Why a fleet budget stops automatic action on a resource, and
    /// whether the resource is the first unhealthy one of the fleet (the
    /// one whose incident names the budget).
    pub fleet: &'a dyn Fn(&Resource) -> Option<(String, bool)>,
    pub now: DateTime<Utc>,
}

/// Puts the next runbook step of each unhealthy resource into the plan in
/// place of its drift corrections (one resource, one action at a time) and
/// records every assessment. Returns the unresolved incidents whose
/// resources are healthy again.
pub fn add_health(
    plan: &mut Plan,
    watched: Vec<Watched<'_>>,
    live: &HashMap<ResourceKey, LiveResource>,
    input: &HealingInput<'_>,
) -> Vec<i64> {
    let mut recovered = Vec::new();
    let storms = storms(&watched, live, input);
    for w in watched {
        let r = w.resource;
        if let Some(storm) = storms.get(&r.key) {
            // One incident for the whole correlated failure, on its first
            // resource; no healing step on any of them.
            if storm.first == r.key {
                let inc = correlated(r, &w.assessment, storm, w.prior.as_ref(), input.now);
                plan.remedies.push(inc);
            }
            plan.health.push(w.assessment);
            continue;
        }
        if let Some((why, first)) = (input.fleet)(r).filter(|_| w.assessment.problem.is_some()) {
            // One incident for the whole fleet, on its first unhealthy
            // resource; no healing step on any (the gates hold their
            // drift corrections too).
            if first {
                plan.remedies.push(held_by_budget(
                    r,
                    &w.assessment,
                    &why,
                    w.prior.as_ref(),
                    input.now,
                ));
            }
            plan.health.push(w.assessment);
            continue;
        }
        // A resource that does not exist yet is created by the drift
        // correction; that is not an incident.
        let exists = live.contains_key(&r.key);
        if (input.healing)(&r.key) {
            plan.health.push(w.assessment);
            continue;
        }
        match w.assessment.problem.as_ref().filter(|_| exists) {
            None if !exists => {}
            None => recovered.extend(
                w.prior
                    .as_ref()
                    .filter(|p| held_healthy(p, input))
                    .map(|p| p.id),
            ),
            Some(problem) => {
                let (problem, prior, diagnosed_from) =
                    diagnosis(problem.clone(), w.prior.as_ref(), input.signatures);
                let (runbook, spec) =
                    remedy::runbook_for(r.key.kind, problem.runbook.as_deref(), input.runbooks);
                let failures = |cause: &str, step: usize| (input.failures)(cause, &runbook, step);
                let mut remedy = remedy::remedy(
                    r,
                    problem.clone(),
                    (&runbook, &spec),
                    prior.as_ref(),
                    &failures,
                    input.ineffective_after,
                );
                remedy.diagnosed_from = diagnosed_from;
                let problem = &problem;
                if w.prior.is_none() {
                    remedy.crash_loop = crash_loop(&r.key, problem, input);
                    if remedy.crash_loop.is_some() {
                        remedy.step = None;
                    }
                }
                if let Some(i) = remedy.step {
                    let drift: Vec<_> = plan
                        .actions
                        .iter()
                        .filter(|a| a.target == r.key)
                        .flat_map(|a| a.changes.clone())
                        .collect();
                    plan.actions.retain(|a| a.target != r.key);
                    let good = || (input.last_good)(&r.key);
                    let mut action = remedy::planned_step(
                        &remedy,
                        i,
                        &spec.steps[i],
                        r,
                        live.get(&r.key),
                        &drift,
                        &good,
                    );
                    (action.decision, action.reasons) = ceiling(plan.mode, r.mode);
                    // A signature trusted to recommend: its steps wait for a
                    // human.
                    if problem.trust == crate::model::health::Trust::Recommend
                        && action.decision == Decision::Auto
                    {
                        action.decision = Decision::Review;
                        action.reasons = vec![format!(
                            "signature `{}` is trusted to recommend, not to act (spec.trust)",
                            problem.signature.as_deref().unwrap_or("")
                        )];
                    }
                    action.declared_at = Some(r.origin.clone());
                    plan.actions.push(action);
                } else {
                    // The runbook is exhausted or the incident escalated:
                    // the declared state is still restored, with backoff
                    // (a dead process is not left dead until a human acts,
                    // nor restarted in a storm). Other drift applies as
                    // usual, so a fix committed to Git reaches the resource.
                    let escalated = remedy.escalated || remedy.crash_loop.is_some();
                    remedy.baseline = escalated.then(|| baseline(w.prior.as_ref(), input));
                    let now = remedy
                        .baseline
                        .as_ref()
                        .is_some_and(|b| b.not_before.is_none());
                    if !now {
                        plan.actions
                            .retain(|a| a.target != r.key || a.action_type != ActionType::Restart);
                    }
                }
                plan.remedies.push(remedy);
            }
        }
        plan.health.push(w.assessment);
    }
    recovered
}

/// How many resources read one source, and those failing on it with
/// since when.
type Readers<'a> = (usize, Vec<(&'a ResourceKey, DateTime<Utc>)>);

/// A correlated failure of one signal source.
#[derive(Debug, Clone, PartialEq)]
struct Storm {
    source: String,
    /// The resources failing together, by name.
    members: Vec<ResourceKey>,
    readers: usize,
    first: ResourceKey,
}

/// The storm guard: the resources that read one source and turned
/// unhealthy on it together (at least `share` of its readers, at least
/// `minResources`, within `window` of each other), by resource.
fn storms(
    watched: &[Watched<'_>],
    live: &HashMap<ResourceKey, LiveResource>,
    input: &HealingInput<'_>,
) -> HashMap<ResourceKey, Storm> {
    let mut out = HashMap::new();
    let guard = input.storm;
    if !guard.enabled {
        return out;
    }
    // source → (readers, the unhealthy ones with when they turned so)
    let mut by_source: std::collections::BTreeMap<String, Readers<'_>> = Default::default();
    for w in watched
        .iter()
        .filter(|w| live.contains_key(&w.resource.key))
    {
        let mut seen = std::collections::HashSet::new();
        for (signal, source) in crate::health::sources(w.resource) {
            let entry = by_source.entry(source.clone()).or_default();
            if seen.insert(source) {
                entry.0 += 1;
            }
            // Unhealthy, or unknown because the source cannot be read.
            let bad = w.assessment.signals.iter().find(|t| {
                t.reading.signal == signal && t.reading.status != crate::health::Status::Healthy
            });
            if let Some(t) = bad {
                if !entry.1.iter().any(|(k, _)| *k == &w.resource.key) {
                    entry.1.push((&w.resource.key, t.since));
                }
            }
        }
    }
    let window = chrono::Duration::from_std(guard.window.0).unwrap_or_default();
    for (source, (readers, bad)) in by_source {
        let needed = guard
            .min_resources
            .max((guard.share * readers as f64).ceil() as usize);
        if bad.len() < needed {
            continue;
        }
        let first = bad.iter().map(|(_, t)| *t).min().unwrap_or(input.now);
        let last = bad.iter().map(|(_, t)| *t).max().unwrap_or(input.now);
        if last - first > window {
            continue;
        }
        let mut members: Vec<ResourceKey> = bad.iter().map(|(k, _)| (*k).clone()).collect();
        members.sort();
        let storm = Storm {
            source,
            first: members[0].clone(),
            members,
            readers,
        };
        for k in &storm.members {
            out.entry(k.clone()).or_insert_with(|| storm.clone());
        }
    }
    out
}

/// The one incident of a correlated failure.
fn correlated(
    r: &Resource,
    a: &Assessment,
    storm: &Storm,
    prior: Option<&remedy::Prior>,
    now: DateTime<Utc>,
) -> remedy::Remedy {
    let of_source: Vec<String> = crate::health::sources(r)
        .into_iter()
        .filter(|(_, s)| *s == storm.source)
        .map(|(signal, _)| signal)
        .collect();
    let symptoms: Vec<crate::health::Tracked> = a
        .signals
        .iter()
        .filter(|t| of_source.contains(&t.reading.signal))
        .cloned()
        .collect();
    let names: Vec<String> = storm.members.iter().map(ToString::to_string).collect();
    let cause = format!(
        "correlated failure: {} fails for {} of the {} resources that read it",
        storm.source,
        storm.members.len(),
        storm.readers
    );
    let why = format!(
        "{cause} ({}); the source or a shared dependency is more likely broken than every resource (Settings spec.safety.storm)",
        names.join(", ")
    );
    escalated_at_once(r, symptoms, cause, why, prior, now)
}

/// The one incident of the fleet while a fleet budget stops automatic
/// action on what it selects: on its first unhealthy resource, naming the
/// budget.
fn held_by_budget(
    r: &Resource,
    a: &Assessment,
    why: &str,
    prior: Option<&remedy::Prior>,
    now: DateTime<Utc>,
) -> remedy::Remedy {
    let symptoms: Vec<crate::health::Tracked> = a
        .signals
        .iter()
        .filter(|t| t.reading.status != crate::health::Status::Healthy)
        .cloned()
        .collect();
    let cause = why.split(':').next().unwrap_or(why).to_string();
    escalated_at_once(r, symptoms, cause, why.to_string(), prior, now)
}

/// A remedy escalated at once with `why`, without a healing step.
fn escalated_at_once(
    r: &Resource,
    symptoms: Vec<crate::health::Tracked>,
    cause: String,
    why: String,
    prior: Option<&remedy::Prior>,
    now: DateTime<Utc>,
) -> remedy::Remedy {
    let onset = symptoms.iter().map(|t| t.since).min().unwrap_or(now);
    remedy::Remedy {
        target: r.key.clone(),
        problem: crate::health::Problem {
            cause,
            signature: None,
            runbook: None,
            severity: crate::model::health::Severity::Warning,
            symptoms,
            onset,
            why: None,
            pending: None,
            trust: crate::model::health::Trust::Auto,
        },
        incident: prior.map(|p| p.id),
        runbook: remedy::BUILTIN_RUNBOOK.to_string(),
        step: None,
        skipped: Vec::new(),
        escalated: prior.is_some_and(|p| p.escalated),
        baseline: None,
        crash_loop: None,
        declared_at: r.origin.clone(),
        diagnosed_from: None,
        change: None,
        storm: Some(why),
    }
}

/// The problem an open incident goes on with. A more specific diagnosis
/// than the incident's (a signature over an SLO or a dead process, or a
/// signature with more conditions) names it from now on: returned with
/// the cause it replaces, and where its runbook differs the runbook starts
/// at its first step (the steps already taken stay on the incident). A
/// diagnosis no more specific keeps the incident's cause and runbook, so
/// its runbook goes on where it stands.
fn diagnosis(
    problem: crate::health::Problem,
    prior: Option<&remedy::Prior>,
    signatures: &[crate::model::health::Signature],
) -> (
    crate::health::Problem,
    Option<remedy::Prior>,
    Option<remedy::Was>,
) {
    let Some(p) = prior else {
        return (problem, None, None);
    };
    if problem.signature == p.signature {
        return (problem, Some(p.clone()), None);
    }
    let rank = |s: Option<&str>| crate::health::rank(s, signatures);
    if p.escalated || rank(problem.signature.as_deref()) <= rank(p.signature.as_deref()) {
        let kept = crate::health::Problem {
            cause: p.cause.clone(),
            signature: p.signature.clone(),
            runbook: p.runbook.clone(),
            why: None,
            pending: None,
            ..problem
        };
        return (kept, Some(p.clone()), None);
    }
    let mut prior = p.clone();
    let name = |r: Option<&str>| r.unwrap_or(remedy::BUILTIN_RUNBOOK).to_string();
    let switched = name(problem.runbook.as_deref()) != name(p.runbook.as_deref());
    if switched {
        prior.next_step = 0;
    }
    let was = remedy::Was {
        cause: p.cause.clone(),
        runbook: switched.then(|| name(p.runbook.as_deref())),
    };
    (problem, Some(prior), Some(was))
}

/// Whether an incident whose resource reads healthy again is over. One
/// that tend restored while escalated (a crash loop) must stay healthy for
/// the first backoff delay after the last restart: a workload that dies a
/// few seconds after each start is not healed by starting it.
fn held_healthy(prior: &remedy::Prior, input: &HealingInput<'_>) -> bool {
    if !prior.escalated || prior.attempts == 0 {
        return true;
    }
    let hold = chrono::Duration::from_std(input.backoff.initial.0).unwrap_or_default();
    prior.last_change.is_none_or(|t| input.now - t >= hold)
}

/// The same problem on a resource recurring `incidents` times within the
/// window: a crash loop.
fn crash_loop(
    key: &ResourceKey,
    problem: &crate::health::Problem,
    input: &HealingInput<'_>,
) -> Option<String> {
    let n = (input.recurrences)(key, &problem.cause);
    let limit = input.crash_loop.incidents;
    (n >= limit).then(|| {
        format!(
            "crash loop: {} {n} times within {} (Settings spec.healing.crashLoop)",
            problem.cause,
            humantime::format_duration(input.crash_loop.window.0)
        )
    })
}

/// The next attempt to restore the declared state of an escalated
/// resource: now, or when the backoff allows.
fn baseline(prior: Option<&remedy::Prior>, input: &HealingInput<'_>) -> remedy::Baseline {
    let attempts = prior.map_or(0, |p| p.attempts);
    let since = prior.and_then(|p| p.last_change).unwrap_or(input.now);
    let wait = chrono::Duration::from_std(input.backoff.delay(attempts)).unwrap_or_default();
    let not_before = since + wait;
    remedy::Baseline {
        attempt: attempts + 1,
        not_before: (input.now < not_before).then_some(not_before),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problem(cause: &str, signature: Option<&str>, runbook: &str) -> crate::health::Problem {
        crate::health::Problem {
            cause: cause.into(),
            signature: signature.map(str::to_string),
            runbook: Some(runbook.into()),
            severity: crate::model::health::Severity::Warning,
            symptoms: Vec::new(),
            onset: DateTime::<Utc>::MIN_UTC,
            why: None,
            pending: None,
            trust: crate::model::health::Trust::Auto,
        }
    }

    fn prior(cause: &str, signature: Option<&str>, runbook: &str) -> remedy::Prior {
        remedy::Prior {
            id: 1,
            escalated: false,
            next_step: 1,
            attempts: 0,
            last_change: None,
            cause: cause.into(),
            signature: signature.map(str::to_string),
            runbook: Some(runbook.into()),
        }
    }

    /// The storm guard: resources failing together on one source they
    /// read are one escalated incident and no healing step; too few of
    /// them, or failing far apart in time, are healed one by one.
    #[test]
    fn resources_failing_together_on_one_source_are_one_correlated_incident() {
        let text: String = (0..5)
            .map(|i| format!("apiVersion: tend.dev/v1\nkind: host.Process\nmetadata: {{name: w{i}}}\nspec: {{command: /bin/sleep}}\nhealth:\n  probes:\n    - {{name: http, http: {{url: \"http://127.0.0.1:9/healthz\"}}}}\n  slos:\n    - {{name: up, signal: http, for: 0s}}\n---\n"))
            .collect();
        let desired = crate::model::load(&[crate::model::SourceFile {
            path: "a.yaml".into(),
            text,
        }])
        .unwrap();
        let now = Utc::now();
        let live: HashMap<ResourceKey, LiveResource> = desired
            .resources
            .iter()
            .map(|r| {
                let l = LiveResource {
                    key: r.key.clone(),
                    spec: json!({"state": "running"}),
                    owned: true,
                    id: "pid 1".into(),
                    note: None,
                };
                (r.key.clone(), l)
            })
            .collect();
        // `failing` of the five read the source as failing, each `apart`
        // seconds after the one before.
        let run = |failing: usize, apart: i64| {
            let watched: Vec<Watched<'_>> = desired
                .resources
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let status = if i < failing {
                        crate::health::Status::Unhealthy
                    } else {
                        crate::health::Status::Healthy
                    };
                    let since = now - chrono::Duration::seconds(apart * i as i64);
                    let mut remembered = HashMap::new();
                    remembered.insert(
                        "http".to_string(),
                        crate::health::Remembered {
                            status,
                            since,
                            last_healthy: None,
                        },
                    );
                    let mut readings = crate::health::builtin_readings(r, live.get(&r.key));
                    readings.push(crate::health::Reading {
                        signal: "http".into(),
                        status,
                        value: None,
                        detail: "status 500".into(),
                    });
                    Watched {
                        resource: r,
                        assessment: crate::health::assess(r, readings, &remembered, &[], now),
                        prior: None,
                    }
                })
                .collect();
            let mut plan = plan(&Diff::default(), input(Mode::Auto));
            let backoff = crate::model::health::Backoff::default();
            let crash = crate::model::health::CrashLoop::default();
            let storm = crate::model::Storm::default();
            let _ = add_health(
                &mut plan,
                watched,
                &live,
                &HealingInput {
                    runbooks: &[],
                    failures: &|_, _, _| 0,
                    ineffective_after: 3,
                    backoff: &backoff,
                    crash_loop: &crash,
                    recurrences: &|_, _| 0,
                    healing: &|_| false,
                    last_good: &|_| None,
                    signatures: &[],
                    storm: &storm,
                    fleet: &|_| None,
                    now,
                },
            );
            plan
        };
        let p = run(4, 1);
        assert_eq!(p.remedies.len(), 1, "{:#?}", p.remedies);
        let r = &p.remedies[0];
        assert_eq!(r.target.name, "w0");
        assert_eq!(r.step, None);
        assert!(r.problem.cause.starts_with(
            "correlated failure: HTTP 127.0.0.1:9 fails for 4 of the 5 resources that read it"
        ));
        assert!(p.actions.is_empty(), "no healing step: {:#?}", p.actions);
        // Two of five is not half: each is healed on its own.
        let p = run(2, 1);
        assert_eq!(p.remedies.len(), 2);
        assert!(p
            .remedies
            .iter()
            .all(|r| r.storm.is_none() && r.step.is_some()));
        // Four failing, but minutes apart: not together.
        let p = run(4, 120);
        assert_eq!(p.remedies.len(), 4);
        assert!(p.remedies.iter().all(|r| r.storm.is_none()));
    }

    /// An open incident takes a more specific diagnosis (and its runbook
    /// from the first step when that differs); a less specific one never
    /// replaces it; an escalated one keeps its own.
    #[test]
    fn an_open_incident_is_diagnosed_again_only_more_specifically() {
        let sigs: Vec<crate::model::health::Signature> = crate::model::load(&[
            crate::model::SourceFile {
                path: "s.yaml".into(),
                text: "apiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: error-storm}\nspec: {cause: failing, runbook: rb, all: [{signal: e}]}\n---\napiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: memory-leak}\nspec: {cause: leak, runbook: other, all: [{signal: e}, {signal: m}]}\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: rb}\nspec: {steps: [{action: restart}]}\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: other}\nspec: {steps: [{action: restart}]}\n".into(),
            },
        ])
        .unwrap()
        .signatures;
        let slo = prior("SLO `availability` is breached", None, "rb");

        // SLO → signature, same runbook: the runbook goes on where it is.
        let (p, pr, was) = diagnosis(
            problem("failing", Some("error-storm"), "rb"),
            Some(&slo),
            &sigs,
        );
        assert_eq!(p.signature.as_deref(), Some("error-storm"));
        assert_eq!(pr.unwrap().next_step, 1);
        let was = was.unwrap();
        assert_eq!(was.cause, "SLO `availability` is breached");
        assert_eq!(was.runbook, None);

        // A signature whose runbook differs: that runbook, from step 1.
        let storm = prior("failing", Some("error-storm"), "rb");
        let (p, pr, was) = diagnosis(
            problem("leak", Some("memory-leak"), "other"),
            Some(&storm),
            &sigs,
        );
        assert_eq!(p.runbook.as_deref(), Some("other"));
        assert_eq!(pr.unwrap().next_step, 0);
        assert_eq!(was.unwrap().runbook.as_deref(), Some("rb"));

        // Less specific: the incident keeps its cause and runbook.
        let leak = prior("leak", Some("memory-leak"), "other");
        let (p, pr, was) = diagnosis(
            problem("failing", Some("error-storm"), "rb"),
            Some(&leak),
            &sigs,
        );
        assert_eq!(
            (p.cause.as_str(), p.runbook.as_deref()),
            ("leak", Some("other"))
        );
        assert_eq!(pr.unwrap().next_step, 1);
        assert_eq!(was, None);
        let (p, _, was) = diagnosis(
            problem("SLO `x` is breached", None, "rb"),
            Some(&storm),
            &sigs,
        );
        assert_eq!(p.signature.as_deref(), Some("error-storm"));
        assert_eq!(was, None);

        // Escalated: a human is on it; nothing is renamed.
        let mut escalated = slo.clone();
        escalated.escalated = true;
        let (p, _, was) = diagnosis(
            problem("failing", Some("error-storm"), "rb"),
            Some(&escalated),
            &sigs,
        );
        assert_eq!(p.signature, None);
        assert_eq!(was, None);
    }

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
}
