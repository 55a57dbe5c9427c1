//! Healing: runbook steps carried out, verified and moved along, one
//! resource at a time, as reconciles of the per-resource controller.
//!
//! A pass hands each unhealthy resource to the [`Runner`] as a [`Work`];
//! the runner's controller reconciles it by key (never two at once for one
//! resource, at most `healing.concurrency` at once). A reconcile never
//! waits: it carries out a step through the one [`Executor`], records on
//! the incident that the step is being verified, and answers "look again
//! at T"; each look re-reads the resource and the problem's signals once
//! ([`verify`]). A step healthy for its hold time resolves the incident;
//! one past its deadline moves to the next step, decided then by the same
//! decide call as drift (mode ceiling, policies, safety gates); an
//! exhausted runbook escalates. So a slow verification on one resource
//! never delays another resource's correction or healing. This stage never
//! decides what is allowed. See ARCHITECTURE.md.

mod diagnosis;
pub mod lifecycle;
mod verify;
mod window;

pub use window::Window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::time::Instant;
use tracing::{info, info_span, warn, Instrument};

use crate::act::{Command, Effect, Executor, Outcome};
use crate::controller::{self, Controller, Next, Until};
use crate::health::{Prober, Status};
use crate::model::health::{RunbookSpec, Step, StepAction};
use crate::model::{DesiredState, Resource, ResourceKey};
use crate::plan::remedy::{self, Remedy};
use crate::policy::{Context, Decider, Facts, Policies};
use crate::provider::Providers;
use lifecycle::Event;

use crate::state::{
    IncidentStep, NewIncident, Scrubbing, SignalRow, StateError, StepResult, Store,
};
use crate::vocab::{Action, Decision, IncidentStatus, Secrets, StepOutcome};

use crate::diff::drift_of;

/// How often a step under verification is looked at again.
const POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// How often a step a full fleet budget holds asks again.
const BUDGET_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

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

/// What the healing work of one pass shares, owned, so that it outlives
/// the pass: the desired state and runtime it was planned with, the store,
/// the pass's run and the secrets it knows of.
pub struct Ctx {
    pub desired: Arc<DesiredState>,
    pub providers: Arc<Providers>,
    pub prober: Arc<Prober>,
    pub policies: Arc<Policies>,
    pub store: Arc<dyn Store>,
    pub secrets: Secrets,
    pub run_id: i64,
    pub commit: Option<String>,
    /// Set on SIGINT/SIGTERM: no new step starts.
    pub stop: Arc<AtomicBool>,
}

/// What one reconcile borrows from its [`Ctx`].
pub struct Healer<'a> {
    pub desired: &'a DesiredState,
    pub providers: &'a Providers,
    pub store: &'a dyn Store,
    pub prober: &'a Prober,
    pub policies: &'a Policies,
    pub executor: &'a Executor<'a>,
    pub secrets: &'a Secrets,
    pub stop: &'a AtomicBool,
}

/// One incident to work on: the remedy and, when it has a next step, the
/// decided action for it.
pub struct Work {
    pub remedy: Remedy,
    pub action: Option<Action>,
}

/// Where one resource's healing stands between two looks.
enum Phase {
    /// Handed over by a pass; the incident is opened or continued.
    New(Option<Action>),
    /// A new incident opened by a symptom waits, until `until` at the
    /// latest, for a more specific signature about to match before its
    /// first step (`Settings spec.healing.diagnosisGrace`).
    Diagnosing { until: Instant, action: Action },
    /// The decided step to carry out next.
    Step { index: usize, action: Action },
    /// A step carried out and under verification until `deadline`.
    Verifying(Box<Verifying>),
}

struct Verifying {
    index: usize,
    /// The step carried out, as the runbook it came from says.
    ran: Ran,
    action: Action,
    started: chrono::DateTime<chrono::Utc>,
    /// What carrying the step out said.
    detail: String,
    deadline: Instant,
    healthy_since: Option<Instant>,
    /// What the last look found.
    last: String,
}

/// A step carried out: its runbook step, and the cause and runbook its
/// verdict is counted under (a diagnosis while it is verified changes the
/// incident's, not the step's).
struct Ran {
    step: Step,
    cause: String,
    runbook: String,
}

/// One resource's healing in progress.
struct Job {
    ctx: Arc<Ctx>,
    remedy: Remedy,
    id: i64,
    spec: RunbookSpec,
    symptoms: Vec<String>,
    /// Where the runbook goes on from when nothing more is tried.
    from: usize,
    phase: Phase,
    /// The signal and SLO states as the last look assessed them, to
    /// diagnose the resource again at each look.
    memory: HashMap<String, crate::health::Remembered>,
    /// A runbook that replaces the incident's once the step in flight ends
    /// (a more specific diagnosis came while it was verified).
    switch: Option<RunbookSpec>,
    /// Why a regression is frozen rather than rolled back.
    frozen: Option<String>,
    /// A full fleet budget holds its step (said once in the log).
    waits: bool,
}

impl Job {
    /// The step under verification, if that is where the job stands.
    fn verifying_step(&self) -> Option<usize> {
        match &self.phase {
            Phase::Verifying(v) => Some(v.index),
            _ => None,
        }
    }

    fn incident<'a>(&'a self, resource: &'a Resource) -> Incident<'a> {
        Incident {
            id: self.id,
            remedy: &self.remedy,
            spec: &self.spec,
            resource,
            symptoms: &self.symptoms,
            frozen: self.frozen.as_deref(),
        }
    }
}

/// The healing runner: the per-resource controller and the work it holds.
#[derive(Default)]
pub struct Runner {
    controller: Controller<ResourceKey>,
    jobs: Mutex<HashMap<ResourceKey, Job>>,
    /// Changes under verification, by resource.
    windows: Mutex<HashMap<ResourceKey, window::Watching>>,
    healed: Mutex<Vec<Healed>>,
    /// Notified after a look that did more than wait on a verification (a
    /// step may have started a process the watcher should follow).
    looked: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runner {
    pub fn new() -> Arc<Runner> {
        Arc::new(Runner::default())
    }

    /// What a pass uses to leave held resources alone and to claim the
    /// ones it acts on.
    pub fn handle(&self) -> controller::Handle<ResourceKey> {
        self.controller.handle()
    }

    /// Hands a pass's work over: each resource is reconciled at once,
    /// unless its healing is already under way.
    pub fn submit(&self, ctx: &Arc<Ctx>, work: Vec<Work>) {
        let handle = self.handle();
        for Work { remedy, action } in work {
            let key = remedy.target.clone();
            {
                let mut jobs = lock(&self.jobs);
                if jobs.contains_key(&key) || handle.holds(&key) {
                    continue;
                }
                jobs.insert(
                    key.clone(),
                    Job {
                        ctx: Arc::clone(ctx),
                        id: remedy.incident.unwrap_or(0),
                        spec: RunbookSpec {
                            description: None,
                            steps: Vec::new(),
                        },
                        symptoms: Vec::new(),
                        from: remedy.step.unwrap_or(0),
                        remedy,
                        phase: Phase::New(action),
                        memory: HashMap::new(),
                        switch: None,
                        frozen: None,
                        waits: false,
                    },
                );
            }
            handle.schedule(key, Instant::now());
        }
    }

    /// Hands over the changes a pass applied to watched resources: each is
    /// looked at until its verification window ends.
    pub fn watch(&self, ctx: &Arc<Ctx>, windows: Vec<Window>) {
        let handle = self.handle();
        for window in windows {
            let key = window.key.clone();
            lock(&self.windows).insert(
                key.clone(),
                window::Watching {
                    ctx: Arc::clone(ctx),
                    window,
                    memory: HashMap::new(),
                },
            );
            handle.schedule(key, Instant::now());
        }
    }

    /// Runs the controller until `until` says to return. On a stop, each
    /// step still under verification is recorded as interrupted.
    pub async fn run(self: &Arc<Self>, concurrency: usize, until: Until<'_>) {
        self.controller
            .run(concurrency, until, |key| {
                let runner = Arc::clone(self);
                // Boxed: one reconcile's future type, whatever the
                // providers' SDKs make of it, stays behind a pointer.
                let fut: futures::future::BoxFuture<'static, Next> =
                    Box::pin(async move { runner.reconcile(key).await });
                fut
            })
            .await;
        if matches!(until, Until::Stopped(_)) {
            self.interrupt_all();
        }
    }

    /// Resolves after the next look at a resource's healing that carried a
    /// step out or ended it.
    pub async fn looked(&self) {
        self.looked.notified().await;
    }

    /// How incidents stood when their healing ended, since the last call.
    pub fn take_healed(&self) -> Vec<Healed> {
        std::mem::take(&mut *lock(&self.healed))
    }

    async fn reconcile(&self, key: ResourceKey) -> Next {
        let Some(mut job) = lock(&self.jobs).remove(&key) else {
            return self.verify_change(key).await;
        };
        let span = info_span!("heal", resource = %key, cause = %job.remedy.problem.cause);
        let ctx = Arc::clone(&job.ctx);
        let store = scrubbed(&ctx);
        let executor = executor(&ctx, &store);
        let h = healer(&ctx, &store, &executor);
        let verifying = job.verifying_step();
        let result = advance(&h, &mut job).instrument(span).await;
        // A look that only waited on the same verification changed nothing
        // the watcher follows.
        if !matches!(&result, Ok(Advance::At(_))) || job.verifying_step() != verifying {
            self.looked.notify_one();
        }
        match result {
            Ok(Advance::At(at)) => {
                lock(&self.jobs).insert(key, job);
                Next::At(at)
            }
            Ok(Advance::Stands(standing)) => {
                lock(&self.healed).push(healed(job.id, standing));
                Next::Done
            }
            Err(e) => {
                warn!(resource = %key, error = %e, "Healing stopped: the state store failed.");
                Next::Done
            }
        }
    }

    /// One look at a change under verification; a regression becomes the
    /// healing job that answers it, reconciled at once.
    async fn verify_change(&self, key: ResourceKey) -> Next {
        let Some(w) = lock(&self.windows).remove(&key) else {
            return Next::Done;
        };
        let ctx = Arc::clone(&w.ctx);
        let store = scrubbed(&ctx);
        let executor = executor(&ctx, &store);
        let h = healer(&ctx, &store, &executor);
        let span = info_span!("verify", resource = %key);
        match window::look(&h, w).instrument(span).await {
            Ok(window::Looked::Again(w, at)) => {
                lock(&self.windows).insert(key, *w);
                Next::At(at)
            }
            Ok(window::Looked::Verified) => {
                self.looked.notify_one();
                Next::Done
            }
            Ok(window::Looked::Regressed(job)) => {
                lock(&self.jobs).insert(key, *job);
                self.looked.notify_one();
                Next::At(Instant::now())
            }
            Err(e) => {
                warn!(resource = %key, error = %e, "Verifying a change stopped: the state store failed.");
                Next::Done
            }
        }
    }

    /// Each step still under verification is recorded as cut short by a
    /// stop; the next pass reads the signals again.
    fn interrupt_all(&self) {
        let jobs: Vec<Job> = lock(&self.jobs).drain().map(|(_, j)| j).collect();
        for job in jobs {
            let Phase::Verifying(v) = &job.phase else {
                continue;
            };
            let store = scrubbed(&job.ctx);
            let executor = executor(&job.ctx, &store);
            let h = healer(&job.ctx, &store, &executor);
            let result = match h
                .desired
                .resources
                .iter()
                .find(|r| r.key == job.remedy.target)
            {
                Some(resource) => interrupted(
                    &h,
                    &job.incident(resource),
                    (v.index, &v.ran.step),
                    v.last.clone(),
                    v.started,
                ),
                None => Ok(()),
            };
            if let Err(e) = result {
                warn!(incident = job.id, error = %e, "Failed to record the interrupted step.");
            }
            lock(&self.healed).push(healed(job.id, Standing::Interrupted));
        }
    }
}

/// The store of a pass's healing: every text written is scrubbed of the
/// pass's secrets.
fn scrubbed(ctx: &Ctx) -> Scrubbing<'_> {
    Scrubbing {
        inner: &*ctx.store,
        secrets: &ctx.secrets,
    }
}

fn executor<'a>(ctx: &'a Ctx, store: &'a dyn Store) -> Executor<'a> {
    Executor {
        providers: &ctx.providers,
        store,
        run_id: ctx.run_id,
        commit: ctx.commit.as_deref(),
        secrets: &ctx.secrets,
    }
}

fn healer<'a>(ctx: &'a Ctx, store: &'a dyn Store, executor: &'a Executor<'a>) -> Healer<'a> {
    Healer {
        desired: &ctx.desired,
        providers: &ctx.providers,
        store,
        prober: &ctx.prober,
        policies: &ctx.policies,
        executor,
        secrets: &ctx.secrets,
        stop: &ctx.stop,
    }
}

/// What one look at a resource's healing ends with.
enum Advance {
    /// Look again then.
    At(Instant),
    /// Nothing more to do until a pass finds the resource unhealthy again.
    Stands(Standing),
}

/// Moves one resource's healing as far as it goes without waiting.
async fn advance(h: &Healer<'_>, job: &mut Job) -> Result<Advance, StateError> {
    let key = job.remedy.target.clone();
    let Some(resource) = h.desired.resources.iter().find(|r| r.key == key) else {
        // The desired state changed under a continuing incident.
        return Ok(Advance::Stands(Standing::Held));
    };
    loop {
        let next = match std::mem::replace(&mut job.phase, Phase::New(None)) {
            Phase::New(action) => begin(h, job, resource, action).await?,
            Phase::Diagnosing { until, action } => {
                match diagnosis::wait(h, job, resource, until, action).await? {
                    diagnosis::Waited::Again(phase) => {
                        job.phase = phase;
                        return Ok(Advance::At((Instant::now() + POLL).min(until)));
                    }
                    diagnosis::Waited::Then(phase) => phase,
                }
            }
            Phase::Step { index, action } => {
                let inc = job.incident(resource);
                match start_step(h, &inc, index, &action).await? {
                    Started::Stands(standing) => return Ok(Advance::Stands(standing)),
                    Started::Verifying(v) => {
                        job.phase = Phase::Verifying(v);
                        return Ok(Advance::At(Instant::now()));
                    }
                    Started::NotHealed => after_failure(h, job, resource, index).await?,
                    Started::Waits(why) => {
                        if !job.waits {
                            info!(resource = %key, "{why}");
                            job.waits = true;
                        }
                        job.phase = Phase::Step { index, action };
                        return Ok(Advance::At(Instant::now() + BUDGET_RETRY));
                    }
                }
            }
            Phase::Verifying(v) => {
                let (look, readings) = look(h, &job.incident(resource), v).await?;
                if let Some(readings) = readings {
                    diagnosis::look(h, job, resource, readings, true)?;
                }
                match look {
                    Look::Again(v) => {
                        let at = (Instant::now() + POLL).min(v.deadline);
                        job.phase = Phase::Verifying(v);
                        return Ok(Advance::At(at));
                    }
                    Look::Verified => return Ok(Advance::Stands(Standing::Resolved)),
                    Look::NotVerified(index) => after_failure(h, job, resource, index).await?,
                }
            }
        };
        match next {
            Some(phase) => job.phase = phase,
            None => return Ok(Advance::Stands(Standing::Escalated)),
        }
    }
}

/// After a step that did not heal: the next step, decided, or the
/// escalation when the runbook is exhausted (`None`).
async fn after_failure(
    h: &Healer<'_>,
    job: &mut Job,
    resource: &Resource,
    index: usize,
) -> Result<Option<Phase>, StateError> {
    job.from = index + 1;
    if let Some(spec) = job.switch.take() {
        // The incident was diagnosed again while the step was verified:
        // its new runbook goes on from its first step.
        job.spec = spec;
        job.from = 0;
    }
    let inc = job.incident(resource);
    match next_step(h, &inc, job.from).await? {
        Some((index, action)) => Ok(Some(Phase::Step { index, action })),
        None => {
            escalate(h, &inc, job.from).await?;
            Ok(None)
        }
    }
}

/// Opens or continues the incident of a pass's work. Returns the first
/// phase of its healing, or `None` when it is escalated at once.
async fn begin(
    h: &Healer<'_>,
    job: &mut Job,
    resource: &Resource,
    action: Option<Action>,
) -> Result<Option<Phase>, StateError> {
    job.id = match job.remedy.incident {
        Some(id) => id,
        None => open_incident(h, &job.remedy)?,
    };
    job.memory = h.store.remembered(&job.remedy.target)?;
    let remedy = &job.remedy;
    if remedy.escalated {
        return Ok(None);
    }
    if let Some(why) = &remedy.crash_loop {
        escalate_crash_loop(h, job.id, remedy, why)?;
        return Ok(None);
    }
    if let Some(why) = &remedy.storm {
        job.frozen = Some(why.clone());
        escalate(h, &job.incident(resource), 0).await?;
        return Ok(None);
    }
    // A regression's job comes with its built-in runbook (rollback or
    // freeze); a pass's work names a declared or the built-in one.
    if job.spec.steps.is_empty() {
        let (_, spec) = remedy::runbook_for(
            remedy.target.kind,
            (remedy.runbook != remedy::BUILTIN_RUNBOOK).then_some(remedy.runbook.as_str()),
            &h.desired.runbooks,
        );
        job.spec = spec;
    }
    job.symptoms = remedy
        .problem
        .symptoms
        .iter()
        .map(|t| t.reading.signal.clone())
        .collect();
    record_skips(h, job.id, &job.remedy.skipped)?;
    if let Some(was) = job.remedy.diagnosed_from.clone() {
        diagnosis::record(h, job, &was, false)?;
    }
    match job.remedy.step.zip(action) {
        Some((index, action)) if index < job.spec.steps.len() => {
            let grace = job
                .remedy
                .problem
                .pending
                .as_ref()
                .map(|p| p.grace(h.desired.settings.healing.diagnosis_grace.0));
            match grace.filter(|g| job.remedy.incident.is_none() && !g.is_zero()) {
                Some(g) => Ok(Some(Phase::Diagnosing {
                    until: Instant::now() + g,
                    action,
                })),
                None => Ok(Some(Phase::Step { index, action })),
            }
        }
        _ => {
            escalate(h, &job.incident(resource), job.from).await?;
            Ok(None)
        }
    }
}

/// One incident's healing, as a look at it borrows it.
struct Incident<'a> {
    id: i64,
    remedy: &'a Remedy,
    spec: &'a RunbookSpec,
    resource: &'a Resource,
    /// The signals of the problem, re-read while a step is verified.
    symptoms: &'a [String],
    /// Why a regression is frozen: its escalation says so.
    frozen: Option<&'a str>,
}

impl Incident<'_> {
    /// Step `index` of the incident's runbook as it is carried out now.
    fn ran(&self, index: usize) -> Ran {
        Ran {
            step: self.spec.steps[index].clone(),
            cause: self.remedy.cause_key(),
            runbook: self.remedy.runbook.clone(),
        }
    }
}

fn healed(incident: i64, standing: Standing) -> Healed {
    Healed { incident, standing }
}

fn open_incident(h: &Healer<'_>, remedy: &Remedy) -> Result<i64, StateError> {
    let id = h.store.open_incident(&NewIncident {
        key: &remedy.target,
        cause: &remedy.problem.cause,
        signature: remedy.problem.signature.as_deref(),
        why: remedy.problem.why.as_deref(),
        change: remedy.change.as_ref().map(|c| serde_json::json!(c)),
        runbook: Some(&remedy.runbook),
        severity: remedy.problem.severity,
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
                Some(s.step),
                Some(s.action),
                None,
                StepOutcome::Skipped,
                s.reason.clone(),
                chrono::Utc::now(),
            ),
        )?;
    }
    Ok(())
}

/// How starting a step ended.
enum Started {
    /// The incident stands here (held for a human, or stopped).
    Stands(Standing),
    /// Carried out; verification begins.
    Verifying(Box<Verifying>),
    /// The step could not be carried out.
    NotHealed,
    /// A fleet budget is full: the step waits, nothing was spent.
    Waits(String),
}

/// Carries a decided step out (or holds it for a human) and records it on
/// the incident as running, to be verified.
async fn start_step(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    index: usize,
    action: &Action,
) -> Result<Started, StateError> {
    let id = inc.id;
    let step = &inc.spec.steps[index];
    if h.stop.load(Ordering::SeqCst) {
        transition(
            h.store,
            id,
            IncidentStatus::Open,
            &Event::StoppedBefore { step: index },
        )?;
        return Ok(Started::Stands(Standing::Interrupted));
    }
    let started = chrono::Utc::now();
    if action.decision != Decision::Auto {
        hold(h, inc, index, step, action, started)?;
        return Ok(Started::Stands(Standing::Held));
    }
    if crate::budget::selecting(h.desired, inc.resource)
        .next()
        .is_some()
    {
        // A budget may have stopped since the step was decided (it waited
        // for a slot, or for a diagnosis).
        let standing =
            crate::budget::standing(h.store, h.desired, &HashMap::new(), chrono::Utc::now())?;
        if let Some(s) = crate::budget::stops(&standing, h.desired, inc.resource) {
            let mut held = action.clone();
            held.decision = Decision::Deferred;
            held.reasons.push(s.stop.clone().unwrap_or_default());
            hold(h, inc, index, step, &held, started)?;
            return Ok(Started::Stands(Standing::Held));
        }
    }
    // In flight, for the fleet budgets, until its verification ends (the
    // step itself may take up to its deadline, then the verification).
    let hold_for = step.within() * 2 + std::time::Duration::from_secs(60);
    if let Err(why) = crate::budget::take(
        h.store,
        h.desired,
        inc.resource,
        h.executor.run_id,
        hold_for,
    )? {
        return Ok(Started::Waits(why));
    }
    let carried = carry_out(h, inc, index, action, started).await;
    if carried.is_err() {
        // The job ends here: nothing of it stays in flight.
        let _ = crate::budget::release(h.store, h.desired, inc.resource);
    }
    carried
}

/// Carries out a step that holds its fleet budget slots: records it as
/// running, executes it, and begins its verification.
async fn carry_out(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    index: usize,
    action: &Action,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<Started, StateError> {
    let id = inc.id;
    let step = &inc.spec.steps[index];
    // On the incident before anything happens: a stop of tend from here
    // on leaves a `running` step, which the next pass marks interrupted.
    h.store.add_step(
        id,
        &IncidentStep::ended_now(
            Some(index),
            Some(step.action),
            Some(Decision::Auto),
            StepOutcome::Running,
            "carried out, then verified".into(),
            started,
        ),
    )?;
    let failed = match execute(h, inc, step, action).await? {
        Outcome::Synced { detail } => {
            h.executor.journal_verification(action, None)?;
            let until = started + chrono::Duration::from_std(step.within()).unwrap_or_default();
            transition(
                h.store,
                id,
                IncidentStatus::Open,
                &Event::StepStarted {
                    step: index,
                    action: step.action,
                    until,
                },
            )?;
            return Ok(Started::Verifying(Box::new(Verifying {
                index,
                ran: inc.ran(index),
                action: action.clone(),
                started,
                detail,
                deadline: Instant::now() + step.within(),
                healthy_since: None,
                last: String::new(),
            })));
        }
        Outcome::Failed { error } => format!("the step failed: {error}"),
        Outcome::Skipped { reason } => reason,
    };
    end_step(h, inc, index, &inc.ran(index), Err(failed), started)?;
    Ok(Started::NotHealed)
}

/// What one look at a step under verification found.
enum Look {
    /// Not decided yet: look again.
    Again(Box<Verifying>),
    /// Healthy for the step's hold time: the incident is resolved.
    Verified,
    /// The deadline passed: step `index` did not heal the resource.
    NotVerified(usize),
}

/// Reads the resource and its signals once, and says whether the step
/// held, failed, or needs another look; with the readings, when there
/// were any, to diagnose the resource again.
async fn look(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    mut v: Box<Verifying>,
) -> Result<(Look, Option<Vec<crate::health::Reading>>), StateError> {
    let step = v.ran.step.clone();
    let (reading, readings) = match verify::read(h, inc.resource).await {
        Ok(readings) => (verify::verdict(&readings, inc.symptoms), Some(readings)),
        Err(e) => (Err(e), None),
    };
    let look = match judge(&mut v, reading, Instant::now(), step.hold()) {
        Judged::Held(text) => {
            h.executor
                .journal_verification(&v.action, Some(Ok(&text)))?;
            let verdict = Ok(format!("{}; verified: {text}", v.detail));
            end_step(h, inc, v.index, &v.ran, verdict, v.started)?;
            Look::Verified
        }
        Judged::Pending => Look::Again(v),
        Judged::Expired => {
            h.executor
                .journal_verification(&v.action, Some(Err(&v.last)))?;
            let verdict = Err(format!(
                "{}; not verified within {}: {}",
                v.detail,
                humantime::format_duration(step.within()),
                v.last
            ));
            end_step(h, inc, v.index, &v.ran, verdict, v.started)?;
            Look::NotVerified(v.index)
        }
    };
    Ok((look, readings))
}

/// What one look at a step under verification found.
#[derive(Debug, PartialEq)]
enum Judged {
    /// Healthy without a break for the step's hold: verified.
    Held(String),
    /// Not decided: look again.
    Pending,
    /// The deadline passed before the resource held healthy.
    Expired,
}

/// The verification of a step after one reading taken at `now`: a healthy
/// reading starts (or continues) the hold, an unhealthy one breaks it, and
/// a hold that lasts `hold` verifies the step, unless the deadline passed
/// first. Time is the caller's: tested on paused time.
fn judge(
    v: &mut Verifying,
    reading: Result<String, String>,
    now: Instant,
    hold: std::time::Duration,
) -> Judged {
    match reading {
        Ok(text) => {
            let since = *v.healthy_since.get_or_insert(now);
            if now.duration_since(since) >= hold {
                return Judged::Held(text);
            }
            v.last = text;
        }
        Err(bad) => {
            v.healthy_since = None;
            v.last = bad;
        }
    }
    if now < v.deadline {
        Judged::Pending
    } else {
        Judged::Expired
    }
}

/// Records the verdict on a step: counted in the remediation statistics,
/// ended on the incident, and a verified one resolves it.
fn end_step(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    index: usize,
    ran: &Ran,
    verdict: Result<String, String>,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<(), StateError> {
    let step = &ran.step;
    let verified = verdict.is_ok();
    crate::budget::release(h.store, h.desired, inc.resource)?;
    h.store.record_step_result(&StepResult {
        cause: &ran.cause,
        runbook: &ran.runbook,
        step: index as u32,
        action: step.action,
        success: verified,
    })?;
    let (outcome, detail) = match verdict {
        Ok(d) => (StepOutcome::Verified, d),
        Err(d) => (StepOutcome::NotVerified, d),
    };
    finish_step(
        h,
        inc.id,
        &IncidentStep::ended_now(
            Some(index),
            Some(step.action),
            Some(Decision::Auto),
            outcome,
            detail,
            started,
        ),
    )?;
    if verified {
        resolve(h, inc, index, step)
    } else {
        warn!(
            incident = inc.id,
            step = index + 1,
            "Step did not heal the resource."
        );
        Ok(())
    }
}

/// Moves an incident that is `from` on `event`, as the lifecycle says; an
/// illegal move is logged and changes nothing.
pub fn transition(
    store: &dyn Store,
    id: i64,
    from: IncidentStatus,
    event: &Event<'_>,
) -> Result<(), StateError> {
    match lifecycle::next(from, event) {
        Ok(t) => store.update_incident(id, &t.update()),
        Err(illegal) => {
            warn!(incident = id, "{illegal}; the incident is left as it is.");
            Ok(())
        }
    }
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
pub fn close_running_steps(
    store: &dyn Store,
    run_id: i64,
    under_way: &dyn Fn(&ResourceKey) -> bool,
) -> Result<(), StateError> {
    for (incident, step) in store.running_steps()? {
        if under_way(&incident.key) || !crate::fleet::owns(store, &incident.key) {
            continue;
        }
        let ended = IncidentStep {
            outcome: StepOutcome::Interrupted,
            detail: format!(
                "tend stopped while this step was carried out or verified; run {run_id} reads the signals again"
            ),
            finished_at: chrono::Utc::now(),
            ..step.clone()
        };
        store.update_last_step(incident.id, StepOutcome::Running, &ended)?;
        let at = step.step.unwrap_or(0) as usize;
        transition(
            store,
            incident.id,
            incident.status,
            &Event::CutShort { step: at },
        )?;
        warn!(
            incident = incident.id,
            step = step.step.map_or(0, |s| s + 1),
            "A step was cut short by a stop of tend."
        );
    }
    Ok(())
}

fn interrupted(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    (index, step): (usize, &Step),
    detail: String,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<(), StateError> {
    finish_step(
        h,
        inc.id,
        &IncidentStep::ended_now(
            Some(index),
            Some(step.action),
            Some(Decision::Auto),
            StepOutcome::Interrupted,
            format!("tend stopped during verification: {detail}"),
            started,
        ),
    )?;
    transition(
        h.store,
        inc.id,
        IncidentStatus::Open,
        &Event::StoppedDuring { step: index },
    )
}

fn resolve(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    index: usize,
    step: &Step,
) -> Result<(), StateError> {
    info!(incident = inc.id, step = index + 1, "Incident resolved.");
    transition(
        h.store,
        inc.id,
        IncidentStatus::Open,
        &Event::StepVerified {
            step: index,
            action: step.action,
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
        Some(index),
        Some(step.action),
        Some(action.decision),
        StepOutcome::Held,
        action.reasons.join("; "),
        started,
    );
    if !h.store.update_last_step(inc.id, StepOutcome::Held, &held)? {
        h.store.add_step(inc.id, &held)?;
    }
    transition(
        h.store,
        inc.id,
        IncidentStatus::Open,
        &Event::StepHeld {
            step: index,
            action: step.action,
            decision: action.decision,
            runbook: &inc.remedy.runbook,
            reasons: &action.reasons,
        },
    )
}

/// The first step at or after `from` that is not skipped as ineffective,
/// decided; `None` when the runbook is exhausted.
async fn next_step(
    h: &Healer<'_>,
    inc: &Incident<'_>,
    from: usize,
) -> Result<Option<(usize, Action)>, StateError> {
    let cause = inc.remedy.cause_key();
    let mut skipped = Vec::new();
    let failures = |i: usize| {
        h.store
            .consecutive_failures(&cause, &inc.remedy.runbook, i as u32)
            .unwrap_or(0)
    };
    let following = remedy::next_step(
        inc.spec,
        from,
        &failures,
        h.desired.settings.healing.ineffective_after,
        &mut skipped,
    );
    record_skips(h, inc.id, &skipped)?;
    let Some(i) = following else {
        return Ok(None);
    };
    Ok(Some((i, planned(h, inc, i).await?)))
}

/// Step `i` of the incident's runbook, planned on the resource as it is
/// now and decided.
async fn planned(h: &Healer<'_>, inc: &Incident<'_>, i: usize) -> Result<Action, StateError> {
    let live = verify::read_live(h, inc.resource).await.ok().flatten();
    let drift = drift_of(inc.resource, live.as_ref());
    let good = || {
        h.store
            .last_good(&inc.resource.key)
            .ok()
            .flatten()
            .map(|g| crate::vocab::Rollback {
                commit: g.commit,
                spec: g.spec,
            })
    };
    let action = remedy::planned_step(
        inc.remedy,
        i,
        &inc.spec.steps[i],
        inc.resource,
        live.as_ref(),
        &drift,
        &good,
    );
    decide(h, action, live)
}

/// Decides a step planned after an earlier one failed: the same decide
/// call as the pass's actions, over what the journal says now.
fn decide(
    h: &Healer<'_>,
    action: Action,
    live: Option<crate::vocab::LiveResource>,
) -> Result<Action, StateError> {
    let now = chrono::Utc::now();
    let mut facts = Facts::read(h.store, &h.desired.settings, now)?;
    facts.fleet = crate::budget::standing(h.store, h.desired, &HashMap::new(), now)?;
    let index = h.desired.index();
    let live: HashMap<ResourceKey, crate::vocab::LiveResource> = live
        .map(|l| (action.target.clone(), l))
        .into_iter()
        .collect();
    let decider = Decider::new(
        h.policies,
        Context {
            desired: h.desired,
            index: &index,
            live: &live,
            facts: &facts,
            now,
            secrets: h.secrets,
        },
    );
    Ok(decider.decide_one(action))
}

/// Hands the incident to a human: the runbook's `escalate` step (the first
/// one at or after `from`), or the end of a runbook that has none.
async fn escalate(h: &Healer<'_>, inc: &Incident<'_>, from: usize) -> Result<(), StateError> {
    let (id, remedy, spec) = (inc.id, inc.remedy, &inc.spec);
    let tried: Vec<String> = h
        .store
        .incident(id)?
        .map(|i| {
            i.steps
                .iter()
                .map(|s| format!("{} ({})", s.action_word(), s.outcome))
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
        .map(|(i, _)| i);
    h.store.add_step(
        id,
        &IncidentStep::ended_now(
            index,
            Some(StepAction::Escalate),
            Some(Decision::Auto),
            StepOutcome::Escalated,
            inc.frozen.map_or_else(
                || format!("runbook `{}` is exhausted", remedy.runbook),
                str::to_string,
            ),
            chrono::Utc::now(),
        ),
    )?;
    let state = current_state(h, inc).await;
    transition(
        h.store,
        id,
        IncidentStatus::Open,
        &Event::Exhausted {
            runbook_len: spec.steps.len(),
            cause: &remedy.problem.cause,
            target: &remedy.target,
            tried: &tried,
            state: &state,
        },
    )?;
    warn!(incident = id, "Incident escalated.");
    Ok(())
}

/// A crash loop is escalated when its incident opens: another run of the
/// runbook would be one more turn of the loop. The declared state is
/// restored with backoff only.
fn escalate_crash_loop(
    h: &Healer<'_>,
    id: i64,
    remedy: &Remedy,
    why: &str,
) -> Result<(), StateError> {
    h.store.add_step(
        id,
        &IncidentStep::ended_now(
            None,
            Some(StepAction::Escalate),
            Some(Decision::Auto),
            StepOutcome::Escalated,
            why.to_string(),
            chrono::Utc::now(),
        ),
    )?;
    transition(
        h.store,
        id,
        IncidentStatus::Open,
        &Event::CrashLoop {
            cause: &remedy.problem.cause,
            target: &remedy.target,
            why,
            next_attempt: remedy.baseline.as_ref().and_then(|b| b.not_before),
        },
    )?;
    warn!(incident = id, "Crash loop: incident escalated.");
    Ok(())
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
    // A rollback healed a change that regressed: the declared spec is the
    // one that failed, never a last good one.
    if remedy.change.is_some() {
        return Ok(());
    }
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
        StepAction::ReapplyLastGood => match &action.rollback {
            None => Ok(Outcome::Failed {
                error: "nothing to roll back to: no valid last known good spec is recorded for this resource".to_string(),
            }),
            Some(good) => {
                // The spec the policies decided on, not the store's now.
                let mut r = resource.clone();
                r.spec = good.spec.clone();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::vocab::{ActionType, Decision, Risk};

    fn verifying(deadline: Instant) -> Verifying {
        Verifying {
            index: 0,
            ran: Ran {
                step: Step {
                    action: StepAction::Restart,
                    within: None,
                    hold: None,
                    command: Vec::new(),
                    by: None,
                },
                cause: "web".into(),
                runbook: "built-in".into(),
            },
            action: Action {
                fingerprint: "0000000000000000".into(),
                action_type: ActionType::Restart,
                target: ResourceKey::new(crate::model::Kind::HostProcess, "web"),
                changes: Vec::new(),
                risk: Risk::Low,
                reversible: true,
                decision: Decision::Auto,
                reasons: Vec::new(),
                note: None,
                contested: false,
                declared_at: None,
                incident: None,
                approval: None,
                rollback: None,
                change: None,
            },
            started: chrono::Utc::now(),
            detail: "restarted".into(),
            deadline,
            healthy_since: None,
            last: String::new(),
        }
    }

    /// A step is verified once the resource held healthy for the hold, an
    /// unhealthy reading starts the hold again, and the deadline ends it:
    /// on paused time, with no real sleep.
    #[tokio::test(start_paused = true)]
    async fn a_step_is_verified_by_a_hold_and_ended_by_its_deadline() {
        let hold = Duration::from_secs(2);
        let ok = || Ok("healthy".to_string());
        let bad = || Err("liveness unhealthy".to_string());
        let start = Instant::now();
        let mut v = verifying(start + Duration::from_secs(10));
        assert_eq!(judge(&mut v, bad(), Instant::now(), hold), Judged::Pending);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(judge(&mut v, ok(), Instant::now(), hold), Judged::Pending);
        tokio::time::advance(Duration::from_millis(1500)).await;
        // Healthy for 1.5 s, then a flap: the hold starts again.
        assert_eq!(judge(&mut v, bad(), Instant::now(), hold), Judged::Pending);
        assert_eq!(v.last, "liveness unhealthy");
        assert_eq!(judge(&mut v, ok(), Instant::now(), hold), Judged::Pending);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            judge(&mut v, ok(), Instant::now(), hold),
            Judged::Held("healthy".into())
        );
        assert_eq!(start.elapsed(), Duration::from_millis(4500));

        // Never healthy for long enough: pending until the deadline, then
        // expired with what the last look found.
        let mut v = verifying(Instant::now() + Duration::from_secs(3));
        for _ in 0..2 {
            assert_eq!(judge(&mut v, ok(), Instant::now(), hold), Judged::Pending);
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(judge(&mut v, bad(), Instant::now(), hold), Judged::Pending);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(judge(&mut v, bad(), Instant::now(), hold), Judged::Expired);
        assert_eq!(v.last, "liveness unhealthy");
    }
}
