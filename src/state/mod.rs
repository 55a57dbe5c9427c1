//! tend's state, behind one store boundary: the journal (append-only audit
//! trail of intents and outcomes), the corrections fight detection counts,
//! incidents and their steps, remembered signal states, remediation
//! statistics, last known good specs and the run lock.
//!
//! Stages reach state only through [`Store`], with typed rows and an error
//! that does not name the engine behind it. SQLite ([`Sqlite`]) is the
//! embedded default; a shared PostgreSQL ([`Postgres`]) for several
//! watchers runs the same statements ([`SqlStore`]) and no stage changes. This module
//! never decides anything: it records and answers. See ARCHITECTURE.md.

mod machine;
mod postgres;
mod scrub;
mod sql;
mod sql_budgets;
mod sql_changes;
mod sql_incidents;
mod sql_review;
mod sql_store;
mod sqlite;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::health::{Severity, StepAction};
use crate::model::Mode;
use crate::vocab::{
    Decision, IncidentStatus, JournalAction, JournalOutcome, JournalPhase, Remembered, ResourceKey,
    Status, StepOutcome,
};

pub use postgres::{Postgres, Target, UrlSource};
pub use scrub::Scrubbing;
pub use sql_store::SqlStore;
pub use sqlite::Sqlite;

/// Why a backend failed, without naming the backend in the type.
#[derive(Debug)]
pub struct BackendError(Box<dyn std::error::Error + Send + Sync>);

impl BackendError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> BackendError {
        BackendError(Box::new(e))
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

// The backend's message is the whole cause: its own source repeats it in
// other words ("unable to open database file: Error code 14: Unable to
// open the database file").
impl std::error::Error for BackendError {}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("failed to open the state database {path}: {cause}")]
    Open { path: String, cause: BackendError },
    #[error("failed to prepare the state directory {path}: {cause}")]
    Dir { path: String, cause: std::io::Error },
    #[error("failed to update the state database: {0}")]
    Backend(BackendError),
    #[error("{0}")]
    Url(String),
    #[error("node {node} does not hold the lease of {key} (another member of the fleet acts on it now); nothing was done")]
    Fenced { key: String, node: String },
    #[error("another tend process holds the state lock at {path}: pid {pid} on {host}, running `{command}` since {since}")]
    Locked {
        path: String,
        pid: i64,
        host: String,
        command: String,
        since: String,
    },
}

/// What a store a fleet of watchers shares adds: members, and the leases
/// of the shared resources (one holder, an epoch, an expiry, all in the
/// database's clock).
pub trait Fleet: Send + Sync {
    /// This member's node name.
    fn node(&self) -> &str;
    /// Records this member alive; the members whose last heartbeat is
    /// younger than `lease` (this one included).
    fn heartbeat(&self, lease: std::time::Duration) -> Result<Vec<Member>, StateError>;
    /// Every member known, live or not, with the leases each holds.
    fn members(&self, lease: std::time::Duration) -> Result<Vec<Member>, StateError>;
    /// The nodes of the live members (a heartbeat younger than `lease`).
    fn live_nodes(&self, lease: std::time::Duration) -> Result<Vec<String>, StateError> {
        Ok(self
            .members(lease)?
            .into_iter()
            .filter(|m| m.live)
            .map(|m| m.node)
            .collect())
    }
    /// Takes or renews the leases of `wanted` (`kind/name`) for `lease`,
    /// gives up the others this member holds; the keys it now holds. A
    /// lease another member holds is taken only once it expired, with a
    /// new epoch.
    fn hold(
        &self,
        wanted: &[String],
        lease: std::time::Duration,
    ) -> Result<Vec<String>, StateError>;
    /// The keys this member held at its last successful round, while
    /// that round is younger than two thirds of its lease (a member that
    /// cannot renew stops acting before its leases can expire).
    fn owned(&self) -> std::collections::HashSet<String>;
    /// Whether `key` is among [`Fleet::owned`] (without copying them).
    fn holds(&self, key: &str) -> bool {
        self.owned().contains(key)
    }
    /// Every lease, live or expired.
    fn leases(&self) -> Result<Vec<Lease>, StateError>;
    /// Gives up this member's leases and leaves the members (a clean stop:
    /// the others take over at once instead of after the lease).
    fn leave(&self) -> Result<(), StateError>;
    /// Tells every member listening (this one too) `payload` at once.
    fn announce(&self, payload: &str) -> Result<(), StateError>;
    /// Hands `on` every payload announced from now on, on a connection of
    /// its own (connected again when it is lost; what is announced while
    /// it is down is missed), until the answer is dropped.
    fn listen(&self, on: Box<dyn Fn(&str) + Send>) -> Listening;
}

/// Announcements being listened to; dropping it stops listening.
pub struct Listening {
    pub(crate) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One member of a fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub node: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    #[serde(with = "time_text")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "time_text")]
    pub heartbeat_at: DateTime<Utc>,
    /// Its last heartbeat is younger than the lease.
    pub live: bool,
    /// The unexpired leases it holds.
    pub leases: i64,
}

/// One lease on a shared resource (or on the publisher's role).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// `kind/name`.
    pub key: String,
    pub holder: String,
    pub epoch: i64,
    #[serde(with = "time_text")]
    pub expires_at: DateTime<Utc>,
    pub live: bool,
}

/// A slot asked of a fleet budget (`Settings spec.safety.fleet`) for an
/// automatic action on `key`.
pub struct NewSlot<'a> {
    pub budget: &'a str,
    pub key: &'a ResourceKey,
    /// At most this many slots at once.
    pub max: usize,
    pub run_id: i64,
    /// When the slot lapses if it is never given back (a member killed
    /// mid-action).
    pub until: DateTime<Utc>,
    /// The live members' nodes, in a fleet: slots of others are not
    /// counted.
    pub live: Option<&'a [String]>,
}

/// An action in flight under a fleet budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    pub budget: String,
    pub node: String,
    #[serde(flatten)]
    pub key: ResourceKey,
    #[serde(with = "time_text")]
    pub at: DateTime<Utc>,
    #[serde(with = "time_text")]
    pub until: DateTime<Utc>,
}

/// What a member last reported of a resource a fleet budget selects;
/// `key` is `None` on the row that says the member looked (it may select
/// nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub node: String,
    pub key: Option<ResourceKey>,
    pub healthy: bool,
    /// Unhealthy with a problem tend would heal (not only a signal that
    /// is unknown or not yet failing for long enough).
    pub problem: bool,
    pub at: DateTime<Utc>,
}

/// How a member reports a resource a fleet budget selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Every signal read healthy.
    Healthy,
    /// Unhealthy, with a problem tend would heal.
    Problem,
    /// Not every signal healthy, but no problem (yet).
    Unwell,
}

/// A finding of one member that needs a human: an action a policy sent
/// to review at its last full pass, for the publisher to propose.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub node: String,
    pub key: ResourceKey,
    pub fingerprint: String,
    /// The action, scrubbed of every secret the member knew of.
    pub action: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// What the members of a fleet share beyond the journal: the fleet
/// budgets' bookkeeping and the findings the publisher proposes.
pub trait FleetRows: Send + Sync {
    /// Takes a slot of `s.budget` for this member's action on `s.key`
    /// (serialized per budget across the fleet). Returns the slots that
    /// fill the budget when it is full (nothing was taken), else nothing.
    fn take_slot(&self, s: &NewSlot<'_>) -> Result<Vec<Slot>, StateError>;
    /// Gives back this member's slots for `key`.
    fn release_slots(&self, key: &ResourceKey) -> Result<(), StateError>;
    /// Gives back every slot of this member (nothing of it is in flight
    /// when it takes its run lock).
    fn release_all_slots(&self) -> Result<(), StateError>;
    /// Every slot held, across the fleet.
    fn slots(&self) -> Result<Vec<Slot>, StateError>;
    /// Replaces this member's health report for `budget`.
    fn report_health(&self, budget: &str, rows: &[(ResourceKey, Health)])
        -> Result<(), StateError>;
    /// Every member's last health report for `budget`.
    fn fleet_health(&self, budget: &str) -> Result<Vec<HealthReport>, StateError>;
    /// The failed and not verified outcomes since `since`, across the
    /// fleet.
    fn fleet_errors(&self, since: DateTime<Utc>) -> Result<Vec<JournalEntry>, StateError>;
    /// Every node's changes applied since `since` or still verifying or
    /// failed, oldest first, with the node each is of.
    fn fleet_changes(&self, since: DateTime<Utc>) -> Result<Vec<(String, ChangeRow)>, StateError>;
    /// Every node's last known good specs: node, resource, spec.
    fn fleet_last_good(&self) -> Result<Vec<(String, ResourceKey, serde_json::Value)>, StateError>;
    /// Replaces this member's findings.
    fn save_findings(&self, rows: &[Finding]) -> Result<(), StateError>;
    /// Every member's findings.
    fn findings(&self) -> Result<Vec<Finding>, StateError>;
}

/// The state store every stage talks to.
pub trait Store: Send + Sync {
    /// The fleet this store is shared by, if it is.
    fn fleet(&self) -> Option<&dyn Fleet> {
        None
    }

    /// The fleet budgets' bookkeeping.
    fn fleet_rows(&self) -> &dyn FleetRows;

    /// Takes the run lock, or reports who holds it. A lock left by a
    /// process that no longer exists on this host is taken over.
    fn lock(&self, command: &str) -> Result<(), StateError>;
    fn unlock(&self) -> Result<(), StateError>;

    fn begin_run(&self, run: &NewRun<'_>) -> Result<i64, StateError>;
    fn finish_run(&self, run_id: i64, status: RunStatus) -> Result<(), StateError>;

    /// Appends one journal line.
    fn journal(&self, phase: JournalPhase, r: &JournalRecord<'_>) -> Result<i64, StateError>;
    /// Journal lines at or after `since`, oldest first, at most `limit`
    /// (the newest), of the whole fleet or of one `node`.
    fn history(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
        node: Option<&str>,
    ) -> Result<Vec<JournalEntry>, StateError>;
    /// Outcomes (synced, failed) at or after `since`, oldest first.
    fn outcomes_since(&self, since: DateTime<Utc>) -> Result<Vec<JournalEntry>, StateError>;
    /// Intents of earlier runs that never got an outcome (the run was
    /// killed between calling the provider and recording the result).
    fn dangling_intents(&self) -> Result<Vec<JournalEntry>, StateError>;

    /// Records that tend set these fields of a resource (fight detection).
    fn record_corrections(&self, key: &ResourceKey, paths: &[&str]) -> Result<(), StateError>;
    /// Corrections at or after `since`, oldest first.
    fn corrections_since(&self, since: DateTime<Utc>) -> Result<Vec<CorrectionRow>, StateError>;

    /// What earlier passes saw of a resource's signals (and SLO states).
    fn remembered(&self, key: &ResourceKey) -> Result<HashMap<String, Remembered>, StateError>;
    fn remember(&self, key: &ResourceKey, rows: &[SignalRow]) -> Result<(), StateError>;

    fn open_incident(&self, n: &NewIncident<'_>) -> Result<i64, StateError>;
    /// The unresolved incident of a resource, if any.
    fn active_incident(&self, key: &ResourceKey) -> Result<Option<Incident>, StateError>;
    fn add_step(&self, incident: i64, s: &IncidentStep) -> Result<(), StateError>;
    /// Updates the incident's newest step in place when it is step
    /// `s.step` and its outcome is `was` (a step still held pass after
    /// pass; a running step that ended): its outcome, decision, detail and
    /// end move on, its start stays. A diagnosis recorded meanwhile is not
    /// a step: it is passed over. Returns whether there was such a step.
    fn update_last_step(
        &self,
        incident: i64,
        was: StepOutcome,
        s: &IncidentStep,
    ) -> Result<bool, StateError>;
    /// The newest step of each unresolved incident that is still
    /// `running`: at the start of a pass, steps cut short by a stop.
    fn running_steps(&self) -> Result<Vec<(Incident, IncidentStep)>, StateError>;
    /// Moves an incident along.
    fn update_incident(&self, id: i64, u: &IncidentUpdate<'_>) -> Result<(), StateError>;
    fn incident(&self, id: i64) -> Result<Option<Incident>, StateError>;
    /// Incidents of this node and the shared resources, newest first;
    /// only unresolved ones unless `all`.
    fn incidents(&self, all: bool, limit: usize) -> Result<Vec<Incident>, StateError>;
    /// The newest incidents of the whole fleet (`node`: of that node and
    /// the shared resources only), newest first.
    fn fleet_incidents(
        &self,
        all: bool,
        limit: usize,
        node: Option<&str>,
    ) -> Result<Vec<Incident>, StateError>;
    /// A resource's incidents detected at or after `since`, oldest first.
    fn incidents_of(
        &self,
        key: &ResourceKey,
        since: DateTime<Utc>,
    ) -> Result<Vec<Incident>, StateError>;

    /// Consecutive verification failures of a runbook step for a cause.
    fn consecutive_failures(
        &self,
        cause: &str,
        runbook: &str,
        step: u32,
    ) -> Result<i64, StateError>;
    /// Counts a verified success or failure of a runbook step.
    fn record_step_result(&self, r: &StepResult<'_>) -> Result<(), StateError>;
    fn remediation_stats(&self) -> Result<Vec<StepStats>, StateError>;

    /// Remembers the spec of a resource seen healthy and in sync.
    fn set_last_good(
        &self,
        key: &ResourceKey,
        commit: Option<&str>,
        spec: &serde_json::Value,
    ) -> Result<(), StateError>;
    /// The last known good spec of a resource and the commit it came from.
    fn last_good(&self, key: &ResourceKey) -> Result<Option<LastGood>, StateError>;

    /// Records that an approval authorised an action, before it runs: an
    /// approval is used once, whatever the action's outcome.
    fn use_approval(&self, u: &UsedApproval) -> Result<(), StateError>;
    /// Every approval used so far.
    fn used_approvals(&self) -> Result<Vec<UsedApproval>, StateError>;
    /// Appends one operation on the review host (GitHub) to its log.
    fn log_review(&self, e: &ReviewEvent) -> Result<(), StateError>;
    /// The newest `limit` review operations, oldest first.
    fn review_log(&self, limit: usize) -> Result<Vec<ReviewEvent>, StateError>;
    /// Replaces the proposals tend last published.
    /// Records that a signature in shadow matches a resource (once while
    /// it keeps matching).
    fn shadow_match(&self, r: &ShadowRow) -> Result<(), StateError>;
    /// Ends a shadow match.
    fn shadow_end(
        &self,
        signature: &str,
        key: &ResourceKey,
        at: DateTime<Utc>,
        on_its_own: bool,
    ) -> Result<(), StateError>;
    /// Every shadow match, oldest first.
    fn shadow_matches(&self) -> Result<Vec<ShadowRow>, StateError>;
    /// Keeps samples of signals that forecasts and anomaly baselines
    /// learn from; each series keeps at most `MAX_SAMPLES` values of the
    /// last `SAMPLE_DAYS` days.
    fn add_samples(&self, rows: &[SampleRow]) -> Result<(), StateError>;
    /// One series' samples since `since`, oldest first.
    fn samples(
        &self,
        key: &ResourceKey,
        signal: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, f64)>, StateError>;
    /// Records a notification sent.
    fn record_notified(&self, n: &Notified<'_>) -> Result<(), StateError>;
    /// Whether `event` was sent about `incident`, or about the same
    /// resource and cause since `since`.
    fn was_notified(&self, n: &Notified<'_>, since: DateTime<Utc>) -> Result<bool, StateError>;
    /// The events sent about `incident`.
    fn notified_events(&self, incident: i64) -> Result<Vec<NotifyEvent>, StateError>;
    /// Records an emergency pause.
    fn pause(&self, p: &NewPause<'_>) -> Result<i64, StateError>;
    /// Ends the pauses of `selector` (every one when `None`) at `at`;
    /// returns those it ended.
    fn resume(&self, selector: Option<&str>, at: DateTime<Utc>) -> Result<Vec<Pause>, StateError>;
    /// The pauses in force at `now`.
    fn pauses(&self, now: DateTime<Utc>) -> Result<Vec<Pause>, StateError>;
    /// Records a change tend applied to a watched resource, to verify.
    fn record_change(&self, c: &NewChange<'_>) -> Result<i64, StateError>;
    /// Ends a change's verification (or its hold).
    fn settle_change(&self, id: i64, v: &ChangeVerdict<'_>) -> Result<(), StateError>;
    /// Changes applied since `since`, and every one still verifying or
    /// held whenever it was applied; oldest first.
    fn changes(&self, since: DateTime<Utc>) -> Result<Vec<ChangeRow>, StateError>;
    fn save_proposals(&self, rows: &[ProposalRow]) -> Result<(), StateError>;
    fn proposals(&self) -> Result<Vec<ProposalRow>, StateError>;

    /// Writes the intent of an action, before the provider is called.
    fn intent(&self, r: &JournalRecord<'_>) -> Result<i64, StateError> {
        self.journal(JournalPhase::Intent, r)
    }

    /// Writes the outcome of an action, after the provider answered.
    fn outcome(&self, r: &JournalRecord<'_>) -> Result<i64, StateError> {
        self.journal(JournalPhase::Outcome, r)
    }

    /// Records why an action was not taken: a `decision` line whose outcome
    /// is the decision and whose detail is the reasons.
    fn record_decision(
        &self,
        r: &JournalRecord<'_>,
        decision: Decision,
        reasons: &[String],
    ) -> Result<(), StateError> {
        let detail = reasons.join("; ");
        self.journal(
            JournalPhase::Decision,
            &JournalRecord {
                outcome: Some(JournalOutcome::Decided(decision)),
                detail: &detail,
                ..*r
            },
        )?;
        Ok(())
    }
}

/// Opens the store: the shared database when `shared` names one, else the
/// embedded default in `dir`, creating either.
pub fn open(dir: &Path, shared: Option<&Target>) -> Result<Box<dyn Store>, StateError> {
    Ok(match shared {
        Some(target) => Box::new(Postgres::open(target, dir)?),
        None => Box::new(Sqlite::open(dir)?),
    })
}

/// Opens the store when one exists (`None` before the first apply into
/// `dir`), for commands that only read. A shared database always exists.
pub fn open_existing(
    dir: &Path,
    shared: Option<&Target>,
) -> Result<Option<Box<dyn Store>>, StateError> {
    Ok(match shared {
        Some(target) => Some(Box::new(Postgres::open(target, dir)?)),
        None => Sqlite::open_existing(dir)?.map(|s| Box::new(s) as Box<dyn Store>),
    })
}

/// Where a store is: the state directory, and the shared database when
/// the fleet keeps one (then the directory holds only local records).
pub type Location = (std::path::PathBuf, Option<Arc<Target>>);

/// Whether a fleet shares `key` (a cloud resource) rather than one node
/// owning it (a `host.*` resource, which belongs to the node it runs on).
pub fn shared(key: &ResourceKey) -> bool {
    key.kind.shared_by_fleet()
}

/// The key of the publisher's lease: its holder publishes for the fleet
/// and reports (and prunes) what nobody declared.
pub const PUBLISHER: &str = "tend.Fleet/publisher";

/// The key of a shared resource's lease: `kind/name`.
pub fn lease_key(key: &ResourceKey) -> String {
    format!("{}/{}", key.kind.as_str(), key.name)
}

/// This host's name (the default node name of a member).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The run lock of a store, held for as long as this guard lives: taken
/// by [`lock`], released when the guard is dropped, on every path out of
/// the command that holds it (a return, an error, a panic that unwinds).
/// A failure to release is logged, never raised: the next run takes over
/// a lock whose process is gone.
#[must_use = "the run lock is released as soon as the guard is dropped"]
pub struct RunLock {
    store: Arc<dyn Store>,
}

/// Takes the run lock of `store` for `command`, or reports who holds it.
pub fn lock(store: &Arc<dyn Store>, command: &str) -> Result<RunLock, StateError> {
    store.lock(command)?;
    // Whatever this node had in flight under a fleet budget ended with
    // the process that started it.
    if let Err(e) = store.fleet_rows().release_all_slots() {
        tracing::warn!(error = %e, "Failed to give back this node's fleet budget slots.");
    }
    Ok(RunLock {
        store: Arc::clone(store),
    })
}

impl RunLock {
    /// The store this lock belongs to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

impl std::fmt::Debug for RunLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLock").finish_non_exhaustive()
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Err(e) = self.store.unlock() {
            tracing::warn!(error = %e, "Failed to release the state lock.");
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Failed,
    Escalated,
    Error,
}

/// What starting a run records.
pub struct NewRun<'a> {
    pub command: &'a str,
    pub origin: &'a str,
    pub commit: Option<&'a str>,
    pub mode: Mode,
}

/// One journal line.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    pub id: i64,
    pub run_id: i64,
    #[serde(with = "time_text")]
    pub at: DateTime<Utc>,
    pub phase: JournalPhase,
    pub fingerprint: String,
    pub action: JournalAction,
    #[serde(flatten)]
    pub key: ResourceKey,
    pub commit: Option<String>,
    pub outcome: Option<JournalOutcome>,
    pub detail: String,
    /// The node that wrote it, in a fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What one journal write describes.
#[derive(Clone, Copy)]
pub struct JournalRecord<'a> {
    pub run_id: i64,
    pub fingerprint: &'a str,
    pub action: JournalAction,
    pub key: &'a ResourceKey,
    pub commit: Option<&'a str>,
    pub outcome: Option<JournalOutcome>,
    pub detail: &'a str,
}

/// One field tend corrected.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrectionRow {
    pub at: DateTime<Utc>,
    pub key: ResourceKey,
    pub path: String,
}

/// A signal (or SLO) state to remember.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRow {
    pub signal: String,
    pub status: Status,
    pub since: DateTime<Utc>,
    pub last_healthy: Option<DateTime<Utc>>,
    pub value: Option<f64>,
    pub detail: String,
}

/// Verified successes and failures of one runbook step for one cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStats {
    /// The signature, or the resource for problems no signature names.
    pub cause: String,
    pub runbook: String,
    /// Zero-based step index.
    pub step: u32,
    pub action: StepAction,
    pub successes: i64,
    pub failures: i64,
    pub consecutive_failures: i64,
}

/// One verified success or failure to count.
pub struct StepResult<'a> {
    pub cause: &'a str,
    pub runbook: &'a str,
    /// Zero-based step index.
    pub step: u32,
    pub action: StepAction,
    pub success: bool,
}

/// One step tried for an incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentStep {
    /// The step's index in the runbook; `None` for what is no step of it
    /// (an observation, a restore while escalated, an escalation of a
    /// runbook that has no `escalate` step).
    pub step: Option<u32>,
    /// What was done; `None` when nothing was (the resource was observed).
    #[serde(serialize_with = "action_text")]
    pub action: Option<StepAction>,
    /// How the step was decided; `None` when it was not (skipped, observed).
    pub decision: Option<Decision>,
    pub outcome: StepOutcome,
    pub detail: String,
    #[serde(with = "time_text")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "time_text")]
    pub finished_at: DateTime<Utc>,
    pub duration_ms: i64,
}

impl IncidentStep {
    /// A step that began at `started` and has just ended.
    pub fn ended_now(
        step: Option<usize>,
        action: Option<StepAction>,
        decision: Option<Decision>,
        outcome: StepOutcome,
        detail: String,
        started: DateTime<Utc>,
    ) -> IncidentStep {
        let now = Utc::now();
        IncidentStep {
            step: step.and_then(|s| u32::try_from(s).ok()),
            action,
            decision,
            outcome,
            detail,
            started_at: started,
            finished_at: now,
            duration_ms: (now - started).num_milliseconds().max(0),
        }
    }
}

impl IncidentStep {
    /// What was done, in a word (`observe` when nothing was).
    pub fn action_word(&self) -> &'static str {
        self.action.map_or("observe", StepAction::as_str)
    }
}

fn action_text<S: serde::Serializer>(a: &Option<StepAction>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.map_or("observe", StepAction::as_str))
}

/// Times in reports as the store keeps them: RFC 3339, milliseconds, UTC.
pub mod time_text {
    use chrono::{DateTime, Utc};

    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::ts(*t))
    }

    pub mod option {
        use chrono::{DateTime, Utc};

        pub fn serialize<S: serde::Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::super::ts(*t)),
                None => s.serialize_none(),
            }
        }
    }
}

/// An incident as stored, with its steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub id: i64,
    #[serde(flatten)]
    pub key: ResourceKey,
    pub status: IncidentStatus,
    pub cause: String,
    pub signature: Option<String>,
    /// Why this signature names the incident rather than the others that
    /// matched too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub runbook: Option<String>,
    pub severity: Severity,
    pub symptoms: serde_json::Value,
    /// The change the problem is attributed to: it appeared inside that
    /// change's verification window (`commit`, `fields`, `appliedAt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<serde_json::Value>,
    #[serde(with = "time_text")]
    pub onset_at: DateTime<Utc>,
    #[serde(with = "time_text")]
    pub detected_at: DateTime<Utc>,
    #[serde(with = "time_text::option")]
    pub resolved_at: Option<DateTime<Utc>>,
    pub next_step: u32,
    /// The resource's current state, in words.
    pub state: String,
    pub recommendation: String,
    pub time_to_detect_ms: i64,
    pub time_to_recover_ms: Option<i64>,
    /// The node whose resource it is, in a fleet (none for a shared one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub steps: Vec<IncidentStep>,
}

/// What opening an incident records.
pub struct NewIncident<'a> {
    pub key: &'a ResourceKey,
    pub cause: &'a str,
    pub signature: Option<&'a str>,
    pub why: Option<&'a str>,
    pub runbook: Option<&'a str>,
    pub severity: Severity,
    /// The tracked signals that make up the problem, as JSON.
    pub symptoms: serde_json::Value,
    /// The change it is attributed to, as JSON.
    pub change: Option<serde_json::Value>,
    pub onset: DateTime<Utc>,
    pub detected: DateTime<Utc>,
}

/// What an open incident names as its cause once a more specific
/// diagnosis replaces the one it opened with.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    pub cause: String,
    pub signature: Option<String>,
    pub why: Option<String>,
    pub runbook: Option<String>,
    pub severity: Severity,
    /// The tracked signals that make up the problem, as JSON.
    pub symptoms: serde_json::Value,
}

/// Where an incident moves: its status, next step, current state and
/// recommended next action.
pub struct IncidentUpdate<'a> {
    pub status: IncidentStatus,
    pub next_step: u32,
    pub state: &'a str,
    pub recommendation: &'a str,
    /// A refined diagnosis: the incident's cause, signature and runbook.
    pub diagnosis: Option<&'a Diagnosis>,
}

/// An approval that authorised an action.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsedApproval {
    #[serde(flatten)]
    pub key: ResourceKey,
    pub fingerprint: String,
    /// The approval document.
    pub file: String,
    /// The approval's expiry: with the fingerprint, what tells one
    /// approval from a later one of the same change.
    #[serde(with = "time_text")]
    pub expires: DateTime<Utc>,
    /// The commit of the desired state that carried it.
    pub commit: Option<String>,
    pub run_id: i64,
    #[serde(with = "time_text")]
    pub at: DateTime<Utc>,
}

/// One operation on the review host: what was done to which pull request
/// or issue, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewEvent {
    #[serde(with = "time_text")]
    pub at: DateTime<Utc>,
    pub operation: ReviewOperation,
    /// The resource (`kind/name`) or incident (`incident #N`) it is about.
    pub subject: String,
    pub number: Option<i64>,
    pub url: Option<String>,
    pub outcome: ReviewOutcome,
    pub detail: String,
}

/// One write to the review host (GitHub), as the review log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::EnumString)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum ReviewOperation {
    CreateBlob,
    CreateTree,
    CreateCommit,
    CreateBranch,
    UpdateBranch,
    DeleteBranch,
    OpenPullRequest,
    UpdatePullRequest,
    ClosePullRequest,
    Label,
    OpenIssue,
    UpdateIssue,
    CloseIssue,
    Comment,
    EditComment,
}

/// How one operation on the review host ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::EnumString)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ReviewOutcome {
    Ok,
    Failed,
}

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::EnumString)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum ProposalState {
    /// A pull request asks for approval.
    Open,
    /// A pull request proposes the live values ("keep live" ticked).
    KeepLive,
    /// Closed unmerged by a person: not proposed again until it differs.
    Declined,
    /// Over `maxOpen` or `maxNewPerRun`: proposed in a later pass.
    Waiting,
    Merged,
    /// Someone else's commits are on tend's branch.
    Blocked,
}

/// Where a change tend applied to a watched resource stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::EnumString)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum ChangeStatus {
    /// Inside its verification window.
    Verifying,
    /// Healthy for its whole window: its spec is the last good one.
    Verified,
    /// A regression inside its window: the spec is held, never applied
    /// again automatically.
    Failed,
    /// A human released the hold (`tend release`, or an `Approval` of the
    /// failed spec's fingerprint).
    Released,
    /// The declared spec changed to another one: the hold is over.
    Cleared,
}

crate::model::words!(
    ReviewOutcome,
    ProposalState,
    ReviewOperation,
    ChangeStatus,
    NotifyEvent
);

/// An emergency pause: while it lasts, tend plans, reports and notifies
/// but takes no action on what its selector matches.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    pub id: i64,
    /// Empty: everything. Else `KIND/NAME`, `KIND`, or a label `key=value`.
    pub selector: String,
    pub reason: String,
    /// Who paused (the user, or the listener's caller).
    pub who: String,
    #[serde(with = "time_text")]
    pub since: DateTime<Utc>,
    /// When it ends by itself; absent: until resumed.
    #[serde(with = "time_text::option")]
    pub until: Option<DateTime<Utc>>,
}

/// A pause to record.
pub struct NewPause<'a> {
    pub selector: &'a str,
    pub reason: &'a str,
    pub who: &'a str,
    pub until: Option<DateTime<Utc>>,
}

/// How many samples one series keeps (and, `SAMPLE_DAYS`, for how long).
pub const MAX_SAMPLES: usize = 5000;
pub use crate::model::health::SAMPLE_DAYS;

/// One sample of one signal of one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    pub key: ResourceKey,
    pub signal: String,
    pub at: DateTime<Utc>,
    pub value: f64,
}

/// A signature in shadow that matched a resource: what tend would have
/// done, and whether the problem went away on its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowRow {
    pub signature: String,
    #[serde(flatten)]
    pub key: ResourceKey,
    pub cause: String,
    /// The runbook step it would have run.
    pub step: StepAction,
    #[serde(with = "time_text")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "time_text::option")]
    pub ended_at: Option<DateTime<Utc>>,
    /// It went away within the step's `within` with nothing done.
    pub on_its_own: Option<bool>,
}

/// An incident state change on-call is told about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumString,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum NotifyEvent {
    /// Opened with a matched signature.
    Opened,
    Escalated,
    /// Resolved, after an earlier notification.
    Resolved,
    /// A step waits: held by a budget, a pause or a freeze.
    Held,
}

/// A notification sent.
pub struct Notified<'a> {
    pub incident: i64,
    pub key: &'a ResourceKey,
    pub cause: &'a str,
    pub event: NotifyEvent,
    pub at: DateTime<Utc>,
}

/// A change about to be verified.
pub struct NewChange<'a> {
    pub key: &'a ResourceKey,
    /// The fingerprint of the spec applied ([`crate::vocab::spec_digest`]).
    pub digest: &'a str,
    pub commit: Option<&'a str>,
    /// The changed fields, values redacted, as JSON.
    pub fields: serde_json::Value,
    pub applied_at: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub wave: Option<u32>,
    /// The last good spec and its commit when the change was applied: what
    /// a rollback applies, and what a hold keeps the resource at.
    pub good: Option<&'a LastGood>,
}

/// A change as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRow {
    pub id: i64,
    #[serde(flatten)]
    pub key: ResourceKey,
    pub digest: String,
    pub commit: Option<String>,
    pub fields: serde_json::Value,
    #[serde(with = "time_text")]
    pub applied_at: DateTime<Utc>,
    #[serde(with = "time_text")]
    pub until: DateTime<Utc>,
    pub status: ChangeStatus,
    /// What failed verification, for a failed change.
    pub cause: Option<String>,
    pub incident: Option<i64>,
    pub wave: Option<u32>,
    /// Whether the regression was rolled back (not frozen).
    pub rolled_back: bool,
    #[serde(with = "time_text::option")]
    pub settled_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub good: Option<LastGood>,
}

/// How a change's verification ended.
pub struct ChangeVerdict<'a> {
    pub status: ChangeStatus,
    pub cause: Option<&'a str>,
    pub incident: Option<i64>,
    pub rolled_back: bool,
}

/// One open proposal: a resource's pending review and its pull request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProposalRow {
    #[serde(flatten)]
    pub key: ResourceKey,
    pub fingerprint: String,
    pub number: Option<i64>,
    pub url: Option<String>,
    pub state: ProposalState,
    #[serde(with = "time_text")]
    pub updated_at: DateTime<Utc>,
    /// The commit tend last put on the pull request's branch: another head
    /// means someone else pushed to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
}

/// The last known good spec of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct LastGood {
    pub commit: Option<String>,
    pub spec: serde_json::Value,
}

/// A time as the store keeps it: RFC 3339 with milliseconds, UTC.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn now() -> String {
    ts(Utc::now())
}

/// A stored time, read back.
pub fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
