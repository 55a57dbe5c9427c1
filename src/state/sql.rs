//! The store's SQL, written once for every engine: the values statements
//! take and rows give back, and what an engine provides ([`Db`]: a
//! connection to run statements on, in a transaction when asked, and the
//! run lock). Statements number their parameters `?1`, `?2`, …; an engine
//! that numbers them otherwise rewrites them.
//!
//! Typed values become text here, and back: the only place the store's
//! words and times are text. A column that cannot be read back is an error
//! naming the column and the value, never a row silently dropped or a
//! default made up.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{BackendError, StateError};
use crate::model::health::{Severity, StepAction};
use crate::model::{Kind, Mode};
use crate::vocab::{
    Decision, IncidentStatus, JournalAction, JournalOutcome, JournalPhase, Status, StepOutcome,
};

/// One statement parameter or column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val::Text(s.to_string())
    }
}

impl From<String> for Val {
    fn from(s: String) -> Val {
        Val::Text(s)
    }
}

impl From<&String> for Val {
    fn from(s: &String) -> Val {
        Val::Text(s.clone())
    }
}

impl From<i64> for Val {
    fn from(n: i64) -> Val {
        Val::Int(n)
    }
}

impl From<u32> for Val {
    fn from(n: u32) -> Val {
        Val::Int(i64::from(n))
    }
}

impl From<bool> for Val {
    fn from(b: bool) -> Val {
        Val::Int(i64::from(b))
    }
}

impl From<f64> for Val {
    fn from(n: f64) -> Val {
        Val::Real(n)
    }
}

impl From<DateTime<Utc>> for Val {
    fn from(t: DateTime<Utc>) -> Val {
        Val::Text(t.to_text())
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// Statement parameters: `vals![a, b]` is `&[Val::from(a), Val::from(b)]`.
macro_rules! vals {
    ($($v:expr),* $(,)?) => {
        &[$($crate::state::sql::Val::from($v)),*][..]
    };
}
pub(super) use vals;

/// A value kept as one text column.
pub(super) trait Text: Sized {
    fn to_text(&self) -> String;
    fn from_text(s: &str) -> Option<Self>;
}

macro_rules! words_as_text {
    ($($t:ty),* $(,)?) => {$(
        impl Text for $t {
            fn to_text(&self) -> String {
                self.as_str().to_string()
            }

            fn from_text(s: &str) -> Option<Self> {
                <$t>::parse(s)
            }
        }
    )*};
}

words_as_text!(
    super::ProposalState,
    super::ReviewOutcome,
    super::ReviewOperation,
    super::ChangeStatus,
    super::NotifyEvent,
    Kind,
    Mode,
    Severity,
    StepAction,
    Decision,
    IncidentStatus,
    JournalAction,
    JournalOutcome,
    JournalPhase,
    Status,
    StepOutcome,
);

/// RFC 3339 with milliseconds, UTC: text that sorts as time does, so
/// `at >= ?` compares times.
impl Text for DateTime<Utc> {
    fn to_text(&self) -> String {
        super::ts(*self)
    }

    fn from_text(s: &str) -> Option<Self> {
        super::parse_ts(s)
    }
}

/// A typed value as a statement parameter.
pub(super) struct W<'a, T: Text>(pub &'a T);

impl<T: Text> From<W<'_, T>> for Val {
    fn from(w: W<'_, T>) -> Val {
        Val::Text(w.0.to_text())
    }
}

/// An optional typed value as a statement parameter (NULL when absent).
pub(super) struct Wo<'a, T: Text>(pub Option<&'a T>);

impl<T: Text> From<Wo<'_, T>> for Val {
    fn from(w: Wo<'_, T>) -> Val {
        w.0.map_or(Val::Null, |v| Val::Text(v.to_text()))
    }
}

#[derive(Debug)]
struct Unreadable {
    column: String,
    value: String,
    what: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "column `{}` holds `{}`, which is not {}",
            self.column, self.value, self.what
        )
    }
}

impl std::error::Error for Unreadable {}

fn type_word<T>() -> String {
    let name = std::any::type_name::<T>();
    let name = name.rsplit("::").next().unwrap_or("value");
    format!("a {}", name.trim_end_matches('>'))
}

/// One row of a query's answer, with its column names for errors.
#[derive(Debug, Clone)]
pub struct Row {
    names: Arc<[String]>,
    vals: Vec<Val>,
}

impl Row {
    pub(super) fn new(names: Arc<[String]>, vals: Vec<Val>) -> Row {
        Row { names, vals }
    }

    fn val(&self, i: usize) -> &Val {
        self.vals.get(i).unwrap_or(&Val::Null)
    }

    fn wrong(&self, i: usize, what: String) -> StateError {
        let value = match self.val(i) {
            Val::Null => "NULL".to_string(),
            Val::Int(n) => n.to_string(),
            Val::Real(n) => n.to_string(),
            Val::Text(s) => s.chars().take(80).collect(),
        };
        StateError::Backend(BackendError::new(Unreadable {
            column: self.names.get(i).cloned().unwrap_or_else(|| i.to_string()),
            value,
            what,
        }))
    }

    pub(super) fn opt_int(&self, i: usize) -> Result<Option<i64>, StateError> {
        match self.val(i) {
            Val::Null => Ok(None),
            Val::Int(n) => Ok(Some(*n)),
            _ => Err(self.wrong(i, "an integer".into())),
        }
    }

    pub(super) fn int(&self, i: usize) -> Result<i64, StateError> {
        self.opt_int(i)?
            .ok_or_else(|| self.wrong(i, "an integer".into()))
    }

    /// A count or index that fits `u32`.
    pub(super) fn u32(&self, i: usize) -> Result<u32, StateError> {
        u32::try_from(self.int(i)?).map_err(|_| self.wrong(i, "a count".into()))
    }

    pub(super) fn opt_bool(&self, i: usize) -> Result<Option<bool>, StateError> {
        Ok(self.opt_int(i)?.map(|n| n != 0))
    }

    pub(super) fn opt_real(&self, i: usize) -> Result<Option<f64>, StateError> {
        match self.val(i) {
            Val::Null => Ok(None),
            Val::Real(n) => Ok(Some(*n)),
            Val::Int(n) => Ok(Some(*n as f64)),
            Val::Text(_) => Err(self.wrong(i, "a number".into())),
        }
    }

    pub(super) fn real(&self, i: usize) -> Result<f64, StateError> {
        self.opt_real(i)?
            .ok_or_else(|| self.wrong(i, "a number".into()))
    }

    pub(super) fn opt_text(&self, i: usize) -> Result<Option<String>, StateError> {
        match self.val(i) {
            Val::Null => Ok(None),
            Val::Text(s) => Ok(Some(s.clone())),
            _ => Err(self.wrong(i, "text".into())),
        }
    }

    pub(super) fn text(&self, i: usize) -> Result<String, StateError> {
        self.opt_text(i)?
            .ok_or_else(|| self.wrong(i, "text".into()))
    }

    /// Column `i` as `T`; a value that is not one is an error.
    pub(super) fn get<T: Text>(&self, i: usize) -> Result<T, StateError> {
        self.get_opt(i)?
            .ok_or_else(|| self.wrong(i, type_word::<T>()))
    }

    /// Column `i` as `T` when it is not NULL.
    pub(super) fn get_opt<T: Text>(&self, i: usize) -> Result<Option<T>, StateError> {
        match self.val(i) {
            Val::Null => Ok(None),
            Val::Text(s) => T::from_text(s)
                .map(Some)
                .ok_or_else(|| self.wrong(i, type_word::<T>())),
            _ => Err(self.wrong(i, type_word::<T>())),
        }
    }

    /// Column `i` as JSON when it is not NULL.
    pub(super) fn opt_json(&self, i: usize) -> Result<Option<serde_json::Value>, StateError> {
        match self.opt_text(i)? {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|_| self.wrong(i, "JSON".into())),
            None => Ok(None),
        }
    }

    pub(super) fn json(&self, i: usize) -> Result<serde_json::Value, StateError> {
        self.opt_json(i)?
            .ok_or_else(|| self.wrong(i, "JSON".into()))
    }

    /// A step index: stored as -1 when it is no step of the runbook.
    pub(super) fn step(&self, i: usize) -> Result<Option<u32>, StateError> {
        Ok(u32::try_from(self.int(i)?).ok())
    }

    /// A step's action: `observe` when nothing was done.
    pub(super) fn step_action(&self, i: usize) -> Result<Option<StepAction>, StateError> {
        if self.text(i)? == "observe" {
            return Ok(None);
        }
        self.get(i).map(Some)
    }

    /// A step's decision: `none` when it was not decided (older stores
    /// also wrote `skipped`).
    pub(super) fn decision(&self, i: usize) -> Result<Option<Decision>, StateError> {
        let s = self.text(i)?;
        if s == "none" || s == "skipped" {
            return Ok(None);
        }
        self.get(i).map(Some)
    }
}

/// A step index: stored as -1 when it is no step of the runbook.
pub(super) fn step_to_sql(step: Option<u32>) -> i64 {
    step.map_or(-1, i64::from)
}

/// A step's action: `observe` when nothing was done.
pub(super) fn step_action_to_sql(a: Option<StepAction>) -> &'static str {
    a.map_or("observe", StepAction::as_str)
}

/// A step's decision: `none` when it was not decided.
pub(super) fn decision_to_sql(d: Option<Decision>) -> &'static str {
    d.map_or("none", Decision::as_str)
}

/// A connection statements run on (inside a transaction when the engine
/// was asked for one).
pub trait Conn {
    /// Runs a statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StateError>;
    /// Runs a query; its rows.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StateError>;

    /// Runs an `INSERT` into a table with an `id` column; the new row's id.
    fn insert(&mut self, sql: &str, params: &[Val]) -> Result<i64, StateError> {
        let rows = self.query(&format!("{sql} RETURNING id"), params)?;
        match rows.first() {
            Some(row) => row.int(0),
            None => Err(StateError::Backend(BackendError::new(
                std::io::Error::other("an insert returned no id"),
            ))),
        }
    }

    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, params: &[Val]) -> Result<Option<Row>, StateError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// What runs on a connection.
pub type Work<'a> = dyn FnMut(&mut dyn Conn) -> Result<(), StateError> + Send + 'a;

/// Runs `work` on a connection of `db`, in one transaction when `tx`.
pub(super) fn with<R: Send>(
    db: &dyn Db,
    tx: bool,
    work: impl FnOnce(&mut dyn Conn) -> Result<R, StateError> + Send,
) -> Result<R, StateError> {
    let mut work = Some(work);
    let mut out = None;
    db.run(tx, &mut |c| {
        if let Some(work) = work.take() {
            out = Some(work(c)?);
        }
        Ok(())
    })?;
    out.ok_or_else(|| {
        StateError::Backend(BackendError::new(std::io::Error::other(
            "the database did not run the statement",
        )))
    })
}

/// A database engine the store runs on.
pub trait Db: Send + Sync {
    /// Runs `work` on a connection, in one transaction when `tx` (committed
    /// when `work` returns `Ok`, rolled back otherwise).
    fn run(&self, tx: bool, work: &mut Work<'_>) -> Result<(), StateError>;
    /// Takes the run lock, or reports who holds it.
    fn lock(&self, command: &str) -> Result<(), StateError>;
    fn unlock(&self) -> Result<(), StateError>;
    /// Whether `table` has `column` (a state written by an earlier tend
    /// and opened read-only may lack one).
    fn has_column(&self, _table: &str, _column: &str) -> Result<bool, StateError> {
        Ok(true)
    }
    /// This member's node name when the database is shared by a fleet.
    fn node(&self) -> Option<&str> {
        None
    }
    /// The fleet sharing the database, if one does.
    fn fleet(&self) -> Option<&dyn super::Fleet> {
        None
    }
}

/// The tables every engine keeps, in the words both SQLite and PostgreSQL
/// read; `{id}` is the engine's own auto-numbered primary key.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    node TEXT NOT NULL DEFAULT '',
    id {id},
    started_at TEXT NOT NULL,
    finished_at TEXT,
    command TEXT NOT NULL,
    origin TEXT NOT NULL,
    commit_sha TEXT,
    mode TEXT NOT NULL,
    status TEXT
);
CREATE TABLE IF NOT EXISTS journal (
    node TEXT NOT NULL DEFAULT '',
    id {id},
    run_id BIGINT NOT NULL REFERENCES runs(id),
    at TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('intent', 'outcome', 'decision')),
    fingerprint TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    commit_sha TEXT,
    outcome TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_at ON journal(at);
CREATE TABLE IF NOT EXISTS corrections (
    node TEXT NOT NULL DEFAULT '',
    id {id},
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS corrections_at ON corrections(at);
CREATE TABLE IF NOT EXISTS signal_state (
    node TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    signal TEXT NOT NULL,
    status TEXT NOT NULL,
    since TEXT NOT NULL,
    last_healthy TEXT,
    value DOUBLE PRECISION,
    detail TEXT NOT NULL,
    observed_at TEXT NOT NULL,
    PRIMARY KEY (node, kind, name, signal)
);
CREATE TABLE IF NOT EXISTS incidents (
    node TEXT NOT NULL DEFAULT '',
    id {id},
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'escalated', 'resolved')),
    cause TEXT NOT NULL,
    signature TEXT,
    runbook TEXT,
    severity TEXT NOT NULL,
    symptoms TEXT NOT NULL,
    onset_at TEXT NOT NULL,
    detected_at TEXT NOT NULL,
    resolved_at TEXT,
    next_step BIGINT NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '',
    recommendation TEXT NOT NULL DEFAULT '',
    why TEXT,
    change TEXT
);
CREATE INDEX IF NOT EXISTS incidents_resource ON incidents(kind, name, status);
CREATE TABLE IF NOT EXISTS incident_steps (
    id {id},
    incident_id BIGINT NOT NULL REFERENCES incidents(id),
    step BIGINT NOT NULL,
    action TEXT NOT NULL,
    decision TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_steps_incident ON incident_steps(incident_id);
CREATE TABLE IF NOT EXISTS remediation_stats (
    cause TEXT NOT NULL,
    runbook TEXT NOT NULL,
    step BIGINT NOT NULL,
    action TEXT NOT NULL,
    successes BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (cause, runbook, step)
);
CREATE TABLE IF NOT EXISTS shadow_matches (
    node TEXT NOT NULL DEFAULT '',
    id {id},
    signature TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    cause TEXT NOT NULL,
    step TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    on_its_own BIGINT
);
CREATE TABLE IF NOT EXISTS samples (
    node TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    signal TEXT NOT NULL,
    at TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node, kind, name, signal, at)
);
CREATE INDEX IF NOT EXISTS samples_at ON samples (at);
CREATE TABLE IF NOT EXISTS notifications (
    node TEXT NOT NULL DEFAULT '',
    incident_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    cause TEXT NOT NULL,
    event TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_incident ON notifications(incident_id, event);
CREATE TABLE IF NOT EXISTS pauses (
    id {id},
    selector TEXT NOT NULL,
    reason TEXT NOT NULL,
    who TEXT NOT NULL,
    since TEXT NOT NULL,
    until TEXT,
    resumed_at TEXT
);
CREATE TABLE IF NOT EXISTS changes (
    node TEXT NOT NULL DEFAULT '',
    id {id},
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    commit_sha TEXT,
    fields TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    until TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('verifying', 'verified', 'failed', 'released', 'cleared')),
    cause TEXT,
    incident_id BIGINT,
    wave BIGINT,
    rolled_back BIGINT NOT NULL DEFAULT 0,
    settled_at TEXT,
    good_commit TEXT,
    good_spec TEXT
);
CREATE INDEX IF NOT EXISTS changes_status ON changes(status, applied_at);
CREATE TABLE IF NOT EXISTS last_good (
    node TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    commit_sha TEXT,
    spec TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (node, kind, name)
);
CREATE TABLE IF NOT EXISTS approvals_used (
    node TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    file TEXT NOT NULL,
    expires TEXT NOT NULL,
    commit_sha TEXT,
    run_id BIGINT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (node, kind, name, fingerprint, expires)
);
CREATE TABLE IF NOT EXISTS review_log (
    id {id},
    at TEXT NOT NULL,
    operation TEXT NOT NULL,
    subject TEXT NOT NULL,
    number BIGINT,
    url TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS proposals (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    number BIGINT,
    url TEXT,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    head TEXT,
    PRIMARY KEY (kind, name)
);
";

/// The tables a fleet shares beyond the first schema version (the fleet
/// budgets', the findings the publisher proposes):
/// created (when missing) each time a store is opened, by every engine,
/// so a database an earlier tend wrote gains them without a new version
/// (members of the earlier version go on running beside).
pub(super) const BUDGET_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS findings (
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    action TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (node, kind, name, fingerprint)
);
CREATE TABLE IF NOT EXISTS budget_locks (
    name TEXT PRIMARY KEY,
    touched TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_slots (
    budget TEXT NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    run_id BIGINT NOT NULL,
    at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (budget, node, kind, name)
);
CREATE TABLE IF NOT EXISTS budget_health (
    budget TEXT NOT NULL,
    scope TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    node TEXT NOT NULL,
    healthy BIGINT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (budget, scope, kind, name)
);
";

/// The tables whose rows say which node they belong to (added to a state
/// an earlier tend wrote), and the keys those rows are unique by.
pub(super) const NODE_TABLES: [(&str, Option<&str>); 11] = [
    ("runs", None),
    ("journal", None),
    ("corrections", None),
    ("signal_state", Some("node, kind, name, signal")),
    ("incidents", None),
    ("shadow_matches", None),
    ("samples", Some("node, kind, name, signal, at")),
    ("notifications", None),
    ("changes", None),
    ("last_good", Some("node, kind, name")),
    (
        "approvals_used",
        Some("node, kind, name, fingerprint, expires"),
    ),
];

/// Reads the key that secret values are fingerprinted under (drawing and
/// keeping one when `create` and there is none) and hands it to
/// [`crate::vocab::use_fingerprint_key`].
pub(super) fn fingerprint_key(c: &mut dyn Conn, create: bool) -> Result<(), StateError> {
    const READ: &str = "SELECT value FROM meta WHERE name = 'fingerprint_key'";
    let mut text = c.query_opt(READ, &[])?.map(|r| r.text(0)).transpose()?;
    if text.is_none() && create {
        let key: [u8; 32] = rand::random();
        c.execute(
            "INSERT INTO meta (name, value) VALUES ('fingerprint_key', ?1) ON CONFLICT (name) DO NOTHING",
            vals![hex::encode(key)],
        )?;
        text = c.query_opt(READ, &[])?.map(|r| r.text(0)).transpose()?;
    }
    let key = text
        .and_then(|t| hex::decode(t).ok())
        .and_then(|k| <[u8; 32]>::try_from(k).ok());
    if let Some(key) = key {
        crate::vocab::use_fingerprint_key(key);
    }
    Ok(())
}
