//! The embedded default store: one SQLite database, `tend.db`, in the state
//! directory. The directory is private (0700) and every file tend keeps
//! there is 0600: the store holds declared specs, which may carry secrets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::sqlite_text::{get, get_opt, Wo, W};
use super::{
    now, ts, BackendError, ChangeRow, ChangeVerdict, CorrectionRow, Incident, IncidentStep,
    IncidentUpdate, JournalEntry, JournalRecord, LastGood, NewChange, NewIncident, NewPause,
    NewRun, Notified, NotifyEvent, Pause, ProposalRow, ReviewEvent, RunStatus, SampleRow,
    ShadowRow, SignalRow, StateError, StepResult, StepStats, Store, UsedApproval,
};
use crate::vocab::{JournalPhase, Remembered, ResourceKey, StepOutcome};

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> StateError {
        StateError::Backend(BackendError::new(e))
    }
}

/// SQLite behind a mutex: one connection, shared by every task of a pass.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// Whether `table` has `column` (a state written by an earlier tend and
/// opened read-only may lack one).
pub(super) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    for name in names {
        if name? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Adds the columns a state written by an earlier tend lacks.
fn add_columns(conn: &Connection) -> rusqlite::Result<()> {
    if !has_column(conn, "proposals", "head")? {
        conn.execute_batch("ALTER TABLE proposals ADD COLUMN head TEXT")?;
    }
    for column in ["why", "change"] {
        if !has_column(conn, "incidents", column)? {
            conn.execute_batch(&format!("ALTER TABLE incidents ADD COLUMN {column} TEXT"))?;
        }
    }
    Ok(())
}

/// Reads the key that secret values are fingerprinted under (drawing and
/// keeping one when `create` and there is none) and hands it to
/// [`crate::vocab::use_fingerprint_key`].
fn fingerprint_key(conn: &Connection, create: bool) -> rusqlite::Result<()> {
    use rusqlite::OptionalExtension;
    let read = |conn: &Connection| {
        conn.query_row(
            "SELECT value FROM meta WHERE name = 'fingerprint_key'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()
    };
    let mut text = read(conn)?;
    if text.is_none() && create {
        let key: [u8; 32] = rand::random();
        conn.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('fingerprint_key', ?1)",
            [hex::encode(key)],
        )?;
        text = read(conn)?;
    }
    let key = text
        .and_then(|t| hex::decode(t).ok())
        .and_then(|k| <[u8; 32]>::try_from(k).ok());
    if let Some(key) = key {
        crate::vocab::use_fingerprint_key(key);
    }
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    command TEXT NOT NULL,
    origin TEXT NOT NULL,
    commit_sha TEXT,
    mode TEXT NOT NULL,
    status TEXT
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS corrections_at ON corrections(at);
CREATE TABLE IF NOT EXISTS signal_state (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    signal TEXT NOT NULL,
    status TEXT NOT NULL,
    since TEXT NOT NULL,
    last_healthy TEXT,
    value REAL,
    detail TEXT NOT NULL,
    observed_at TEXT NOT NULL,
    PRIMARY KEY (kind, name, signal)
);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    next_step INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '',
    recommendation TEXT NOT NULL DEFAULT '',
    why TEXT,
    change TEXT
);
CREATE INDEX IF NOT EXISTS incidents_resource ON incidents(kind, name, status);
CREATE TABLE IF NOT EXISTS incident_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents(id),
    step INTEGER NOT NULL,
    action TEXT NOT NULL,
    decision TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS remediation_stats (
    cause TEXT NOT NULL,
    runbook TEXT NOT NULL,
    step INTEGER NOT NULL,
    action TEXT NOT NULL,
    successes INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (cause, runbook, step)
);
CREATE TABLE IF NOT EXISTS shadow_matches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    signature TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    cause TEXT NOT NULL,
    step TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    on_its_own INTEGER
);
CREATE TABLE IF NOT EXISTS samples (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    signal TEXT NOT NULL,
    at TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (kind, name, signal, at)
);
CREATE INDEX IF NOT EXISTS samples_at ON samples (at);
CREATE TABLE IF NOT EXISTS notifications (
    incident_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    cause TEXT NOT NULL,
    event TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_incident ON notifications(incident_id, event);
CREATE TABLE IF NOT EXISTS pauses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    selector TEXT NOT NULL,
    reason TEXT NOT NULL,
    who TEXT NOT NULL,
    since TEXT NOT NULL,
    until TEXT,
    resumed_at TEXT
);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    commit_sha TEXT,
    fields TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    until TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('verifying', 'verified', 'failed', 'released', 'cleared')),
    cause TEXT,
    incident_id INTEGER,
    wave INTEGER,
    rolled_back INTEGER NOT NULL DEFAULT 0,
    settled_at TEXT,
    good_commit TEXT,
    good_spec TEXT
);
CREATE INDEX IF NOT EXISTS changes_status ON changes(status, applied_at);
CREATE TABLE IF NOT EXISTS last_good (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    commit_sha TEXT,
    spec TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS approvals_used (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    file TEXT NOT NULL,
    expires TEXT NOT NULL,
    commit_sha TEXT,
    run_id INTEGER NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (kind, name, fingerprint, expires)
);
CREATE TABLE IF NOT EXISTS review_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    operation TEXT NOT NULL,
    subject TEXT NOT NULL,
    number INTEGER,
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
    number INTEGER,
    url TEXT,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    head TEXT,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS run_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    start_time INTEGER NOT NULL,
    host TEXT NOT NULL,
    command TEXT NOT NULL,
    since TEXT NOT NULL
);
";

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Kernel start time of a pid, to tell a live lock holder from a reused pid.
fn start_time(pid: i64) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

const DB: &str = "tend.db";

impl SqliteStore {
    /// Opens an existing state database, or `None` when there is none yet
    /// (a plan before the first apply).
    ///
    /// For commands that only read (`plan`, `history`, `incidents`): a
    /// store that cannot be written (a read-only mount, a restored cache)
    /// is read as it is, with a warning that names why.
    pub fn open_existing(dir: &Path) -> Result<Option<SqliteStore>, StateError> {
        if !dir.join(DB).exists() {
            return Ok(None);
        }
        match SqliteStore::open(dir) {
            Ok(s) => Ok(Some(s)),
            Err(e @ (StateError::Open { .. } | StateError::Dir { .. })) => {
                let Ok(s) = SqliteStore::open_read_only(dir) else {
                    return Err(e);
                };
                tracing::warn!(
                    dir = %dir.display(),
                    "The state directory cannot be written ({e}); reading it as it is."
                );
                Ok(Some(s))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the database without writing anything, not even SQLite's
    /// lock and log files.
    pub fn open_read_only(dir: &Path) -> Result<SqliteStore, StateError> {
        use rusqlite::OpenFlags;
        let path = dir.join(DB);
        let uri = format!("file:{}?immutable=1", path.display());
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .and_then(|c| {
            // Reading is what fails on a file that is not a database.
            c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
            Ok(c)
        })
        .map_err(|source| StateError::Open {
            path: path.display().to_string(),
            cause: BackendError::new(source),
        })?;
        // An older state has no key yet; fingerprints of secret values are
        // then keyed for this process only.
        let _ = fingerprint_key(&conn, false);
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn open(dir: &Path) -> Result<SqliteStore, StateError> {
        private_dir(dir)?;
        let path = dir.join(DB);
        let conn = Connection::open(&path).map_err(|source| StateError::Open {
            path: path.display().to_string(),
            cause: BackendError::new(source),
        })?;
        let open = |e: rusqlite::Error| StateError::Open {
            path: path.display().to_string(),
            cause: BackendError::new(e),
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        add_columns(&conn).map_err(open)?;
        for f in [DB, "tend.db-wal", "tend.db-shm"] {
            private_file(&dir.join(f))?;
        }
        fingerprint_key(&conn, true).map_err(open)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere while holding the lock leaves SQLite itself
        // consistent (every write is one statement or a transaction).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates the state directory 0700, or tightens an existing one.
fn private_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |cause| StateError::Dir {
        path: dir.display().to_string(),
        cause,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let meta = std::fs::metadata(dir).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), "The state directory was readable by others; tightened to 0700.");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Makes a file tend keeps in the state directory 0600, when it exists.
pub(super) fn private_file(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |cause| StateError::Dir {
                path: path.display().to_string(),
                cause,
            },
        )?;
    }
    Ok(())
}

const JOURNAL_COLUMNS: &str =
    "id, run_id, at, phase, fingerprint, action, kind, name, commit_sha, outcome, detail";

impl Store for SqliteStore {
    fn lock(&self, command: &str) -> Result<(), StateError> {
        let me = std::process::id() as i64;
        let my_start = start_time(me).unwrap_or(0);
        let host = hostname();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let holder: Option<(i64, i64, String, String, String)> = tx
            .query_row(
                "SELECT pid, start_time, host, command, since FROM run_lock WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        if let Some((pid, start, h, cmd, since)) = holder {
            let alive = h != host || start_time(pid) == Some(start);
            if alive && pid != me {
                return Err(StateError::Locked {
                    path: self.path.display().to_string(),
                    pid,
                    host: h,
                    command: cmd,
                    since,
                });
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO run_lock (id, pid, start_time, host, command, since) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![me, my_start, host, command, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn unlock(&self) -> Result<(), StateError> {
        self.conn().execute(
            "DELETE FROM run_lock WHERE id = 1 AND pid = ?1",
            params![std::process::id() as i64],
        )?;
        Ok(())
    }

    fn begin_run(&self, run: &NewRun<'_>) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (started_at, command, origin, commit_sha, mode) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now(), run.command, run.origin, run.commit, W(&run.mode)],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn finish_run(&self, run_id: i64, status: RunStatus) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE runs SET finished_at = ?1, status = ?2 WHERE id = ?3",
            params![now(), <&str>::from(status), run_id],
        )?;
        Ok(())
    }

    fn journal(&self, phase: JournalPhase, r: &JournalRecord<'_>) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO journal (run_id, at, phase, fingerprint, action, kind, name, commit_sha, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![r.run_id, now(), W(&phase), r.fingerprint, W(&r.action), W(&r.key.kind), r.key.name, r.commit, Wo(r.outcome.as_ref()), r.detail],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn history(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOURNAL_COLUMNS}
             FROM (SELECT * FROM journal WHERE at >= ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id"
        ))?;
        let since = since.map(ts).unwrap_or_default();
        let rows = stmt.query_map(params![since, limit as i64], row_entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn outcomes_since(&self, since: DateTime<Utc>) -> Result<Vec<JournalEntry>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOURNAL_COLUMNS}
             FROM journal WHERE phase = 'outcome' AND outcome IN ('synced', 'failed') AND at >= ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![ts(since)], row_entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn dangling_intents(&self) -> Result<Vec<JournalEntry>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT i.id, i.run_id, i.at, i.phase, i.fingerprint, i.action, i.kind, i.name, i.commit_sha, i.outcome, i.detail
             FROM journal i
             WHERE i.phase = 'intent' AND NOT EXISTS (
                SELECT 1 FROM journal o WHERE o.phase = 'outcome' AND o.run_id = i.run_id
                  AND o.fingerprint = i.fingerprint AND o.id > i.id)
             ORDER BY i.id",
        )?;
        let rows = stmt.query_map([], row_entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn record_corrections(&self, key: &ResourceKey, paths: &[&str]) -> Result<(), StateError> {
        let at = now();
        let conn = self.conn();
        for p in paths {
            conn.execute(
                "INSERT INTO corrections (at, kind, name, path) VALUES (?1, ?2, ?3, ?4)",
                params![at, key.kind.as_str(), key.name, p],
            )?;
        }
        Ok(())
    }

    fn corrections_since(&self, since: DateTime<Utc>) -> Result<Vec<CorrectionRow>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT at, kind, name, path FROM corrections WHERE at >= ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![ts(since)], |r| {
            Ok(CorrectionRow {
                at: get(r, 0)?,
                key: ResourceKey::new(get(r, 1)?, r.get::<_, String>(2)?),
                path: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn remembered(&self, key: &ResourceKey) -> Result<HashMap<String, Remembered>, StateError> {
        self.remembered_rows(key)
    }

    fn remember(&self, key: &ResourceKey, rows: &[SignalRow]) -> Result<(), StateError> {
        self.remember_rows(key, rows)
    }

    fn open_incident(&self, n: &NewIncident<'_>) -> Result<i64, StateError> {
        self.insert_incident(n)
    }

    fn active_incident(&self, key: &ResourceKey) -> Result<Option<Incident>, StateError> {
        self.active(key)
    }

    fn add_step(&self, incident: i64, s: &IncidentStep) -> Result<(), StateError> {
        self.insert_step(incident, s)
    }

    fn update_last_step(
        &self,
        incident: i64,
        was: StepOutcome,
        s: &IncidentStep,
    ) -> Result<bool, StateError> {
        self.update_newest_step(incident, was, s)
    }

    fn running_steps(&self) -> Result<Vec<(Incident, IncidentStep)>, StateError> {
        let mut out = Vec::new();
        for i in self.list_incidents(false, 1000)? {
            let last = i
                .steps
                .iter()
                .rev()
                .find(|s| s.outcome != StepOutcome::Diagnosed);
            if let Some(last) = last.filter(|s| s.outcome == StepOutcome::Running) {
                let last = last.clone();
                out.push((i, last));
            }
        }
        Ok(out)
    }

    fn update_incident(&self, id: i64, u: &IncidentUpdate<'_>) -> Result<(), StateError> {
        self.move_incident(id, u)
    }

    fn incident(&self, id: i64) -> Result<Option<Incident>, StateError> {
        self.load_incident(&self.conn(), id)
    }

    fn incidents(&self, all: bool, limit: usize) -> Result<Vec<Incident>, StateError> {
        self.list_incidents(all, limit)
    }

    fn incidents_of(
        &self,
        key: &ResourceKey,
        since: DateTime<Utc>,
    ) -> Result<Vec<Incident>, StateError> {
        let conn = self.conn();
        let ids: Vec<i64> = {
            let mut stmt = conn.prepare(
                "SELECT id FROM incidents WHERE kind = ?1 AND name = ?2 AND detected_at >= ?3 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![key.kind.as_str(), key.name, ts(since)], |r| {
                r.get(0)
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.load_incident(&conn, id)?);
        }
        Ok(out)
    }

    fn consecutive_failures(
        &self,
        cause: &str,
        runbook: &str,
        step: u32,
    ) -> Result<i64, StateError> {
        self.failures(cause, runbook, step)
    }

    fn record_step_result(&self, r: &StepResult<'_>) -> Result<(), StateError> {
        self.count_step(r)
    }

    fn remediation_stats(&self) -> Result<Vec<StepStats>, StateError> {
        self.stats()
    }

    fn set_last_good(
        &self,
        key: &ResourceKey,
        commit: Option<&str>,
        spec: &serde_json::Value,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO last_good (kind, name, commit_sha, spec, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.kind.as_str(), key.name, commit, spec.to_string(), now()],
        )?;
        Ok(())
    }

    fn use_approval(&self, u: &UsedApproval) -> Result<(), StateError> {
        self.insert_used_approval(u)
    }

    fn used_approvals(&self) -> Result<Vec<UsedApproval>, StateError> {
        self.list_used_approvals()
    }

    fn log_review(&self, e: &ReviewEvent) -> Result<(), StateError> {
        self.insert_review_event(e)
    }

    fn review_log(&self, limit: usize) -> Result<Vec<ReviewEvent>, StateError> {
        self.list_review_events(limit)
    }

    fn save_proposals(&self, rows: &[ProposalRow]) -> Result<(), StateError> {
        self.replace_proposals(rows)
    }

    fn proposals(&self) -> Result<Vec<ProposalRow>, StateError> {
        self.list_proposals()
    }

    fn shadow_match(&self, r: &ShadowRow) -> Result<(), StateError> {
        self.insert_shadow(r)
    }

    fn shadow_end(
        &self,
        signature: &str,
        key: &ResourceKey,
        at: DateTime<Utc>,
        on_its_own: bool,
    ) -> Result<(), StateError> {
        self.end_shadow(signature, key, at, on_its_own)
    }

    fn shadow_matches(&self) -> Result<Vec<ShadowRow>, StateError> {
        self.all_shadow()
    }

    fn add_samples(&self, rows: &[SampleRow]) -> Result<(), StateError> {
        self.insert_samples(rows)
    }

    fn samples(
        &self,
        key: &ResourceKey,
        signal: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, f64)>, StateError> {
        self.samples_of(key, signal, since)
    }

    fn record_notified(&self, n: &Notified<'_>) -> Result<(), StateError> {
        self.insert_notified(n)
    }

    fn was_notified(&self, n: &Notified<'_>, since: DateTime<Utc>) -> Result<bool, StateError> {
        self.any_notified(n, since)
    }

    fn notified_events(&self, incident: i64) -> Result<Vec<NotifyEvent>, StateError> {
        self.events_of(incident)
    }

    fn pause(&self, p: &NewPause<'_>) -> Result<i64, StateError> {
        self.insert_pause(p)
    }

    fn resume(&self, selector: Option<&str>, at: DateTime<Utc>) -> Result<Vec<Pause>, StateError> {
        self.end_pauses(selector, at)
    }

    fn pauses(&self, now: DateTime<Utc>) -> Result<Vec<Pause>, StateError> {
        self.live_pauses(now)
    }

    fn record_change(&self, c: &NewChange<'_>) -> Result<i64, StateError> {
        self.insert_change(c)
    }

    fn settle_change(&self, id: i64, v: &ChangeVerdict<'_>) -> Result<(), StateError> {
        self.update_change(id, v)
    }

    fn changes(&self, since: DateTime<Utc>) -> Result<Vec<ChangeRow>, StateError> {
        self.list_changes(since)
    }

    fn last_good(&self, key: &ResourceKey) -> Result<Option<LastGood>, StateError> {
        let row: Option<(Option<String>, String)> = self
            .conn()
            .query_row(
                "SELECT commit_sha, spec FROM last_good WHERE kind = ?1 AND name = ?2",
                params![key.kind.as_str(), key.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(commit, s)| {
            Some(LastGood {
                commit,
                spec: serde_json::from_str(&s).ok()?,
            })
        }))
    }
}

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalEntry> {
    Ok(JournalEntry {
        id: r.get(0)?,
        run_id: r.get(1)?,
        at: get(r, 2)?,
        phase: get(r, 3)?,
        fingerprint: r.get(4)?,
        action: get(r, 5)?,
        key: ResourceKey::new(get(r, 6)?, r.get::<_, String>(7)?),
        commit: r.get(8)?,
        outcome: get_opt(r, 9)?,
        detail: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MAX_SAMPLES, SAMPLE_DAYS};

    fn rec<'a>(run_id: i64, fp: &'a str, key: &'a ResourceKey) -> JournalRecord<'a> {
        JournalRecord {
            run_id,
            fingerprint: fp,
            action: crate::vocab::JournalAction::Act(crate::vocab::ActionType::Update),
            key,
            commit: None,
            outcome: None,
            detail: "",
        }
    }

    fn key() -> ResourceKey {
        ResourceKey::new(crate::model::Kind::HostFile, "a")
    }

    fn begin(s: &SqliteStore) -> i64 {
        s.begin_run(&NewRun {
            command: "apply",
            origin: "x",
            commit: None,
            mode: crate::model::Mode::Auto,
        })
        .unwrap()
    }

    #[test]
    fn dangling_intents_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let k = key();
        let run = begin(&s);
        s.intent(&rec(run, "a", &k)).unwrap();
        s.outcome(&JournalRecord {
            outcome: Some(crate::vocab::JournalOutcome::Synced),
            ..rec(run, "a", &k)
        })
        .unwrap();
        s.intent(&rec(run, "b", &k)).unwrap();
        let d = s.dangling_intents().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].fingerprint, "b");
        assert_eq!(s.history(None, 100).unwrap().len(), 3);
    }

    /// A store that cannot be written is read as it is by the commands that
    /// only read. (Root writes through file modes, so the write failure is
    /// made here with a directory where SQLite's log file must go.)
    #[test]
    fn a_store_that_cannot_be_written_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let k = key();
        let run = begin(&s);
        s.intent(&rec(run, "a", &k)).unwrap();
        drop(s);
        std::fs::create_dir(dir.path().join("tend.db-wal")).unwrap();
        assert!(SqliteStore::open(dir.path()).is_err());
        let s = SqliteStore::open_existing(dir.path()).unwrap().unwrap();
        assert_eq!(s.history(None, 10).unwrap().len(), 1);
        assert!(s.intent(&rec(run, "b", &k)).is_err(), "nothing is written");
    }

    /// Regression: the database was created 0644 in a 0755 directory and
    /// holds declared specs with their secrets.
    #[test]
    fn the_state_directory_and_database_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(SqliteStore::open(&state).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(DB)), 0o600);
        std::fs::set_permissions(state.join(DB), std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(SqliteStore::open(&state).unwrap());
        assert_eq!(mode(&state.join(DB)), 0o600);
    }

    /// A row that cannot be read back is an error naming the column and
    /// the value, never a row silently dropped or a default made up.
    #[test]
    fn an_unreadable_row_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let k = key();
        let run = begin(&s);
        s.intent(&rec(run, "a", &k)).unwrap();
        s.conn()
            .execute("UPDATE journal SET action = 'teleport'", [])
            .unwrap();
        let err = s.history(None, 10).unwrap_err().to_string();
        assert!(
            err.contains("`action`") && err.contains("`teleport`"),
            "{err}"
        );
        s.conn()
            .execute("UPDATE journal SET action = 'update', at = 'yesterday'", [])
            .unwrap();
        let err = s.history(None, 10).unwrap_err().to_string();
        assert!(err.contains("`at`") && err.contains("`yesterday`"), "{err}");
    }

    #[test]
    fn a_second_holder_is_refused_and_a_dead_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        s.lock("apply").unwrap();
        // A live foreign holder: pid 1 with its real start time.
        s.conn()
            .execute(
                "UPDATE run_lock SET pid = 1, start_time = ?1",
                params![start_time(1).unwrap_or(0)],
            )
            .unwrap();
        assert!(matches!(
            s.lock("apply"),
            Err(StateError::Locked { pid: 1, .. })
        ));
        // A holder whose start time no longer matches is gone.
        s.conn()
            .execute("UPDATE run_lock SET start_time = -5", [])
            .unwrap();
        s.lock("apply").unwrap();
    }

    #[test]
    fn the_run_lock_guard_releases_the_lock_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = std::sync::Arc::new(SqliteStore::open(dir.path()).unwrap());
        let store: std::sync::Arc<dyn Store> = sqlite.clone();
        let held = || -> i64 {
            sqlite
                .conn()
                .query_row("SELECT COUNT(*) FROM run_lock", [], |r| r.get(0))
                .unwrap()
        };
        let guard = crate::state::lock(&store, "tend apply").unwrap();
        assert_eq!(held(), 1);
        drop(guard);
        assert_eq!(held(), 0);
    }

    #[test]
    fn samples_are_kept_per_series_capped_and_aged_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let now = chrono::Utc::now();
        let row = |signal: &str, secs_ago: i64, value: f64| SampleRow {
            key: key(),
            signal: signal.into(),
            at: now - chrono::Duration::seconds(secs_ago),
            value,
        };
        let mut rows: Vec<SampleRow> = (0..MAX_SAMPLES as i64 + 10)
            .map(|i| row("disk", i, i as f64))
            .collect();
        // Older than the days kept, of a series not written again.
        rows.push(row("gone", (SAMPLE_DAYS + 1) * 86_400, 1.0));
        rows.push(row("nan", 5, f64::NAN));
        s.add_samples(&rows).unwrap();
        let since = now - chrono::Duration::days(SAMPLE_DAYS + 2);
        let disk = s.samples(&key(), "disk", since).unwrap();
        assert_eq!(disk.len(), MAX_SAMPLES, "capped to the newest");
        assert_eq!(disk.last().unwrap().1, 0.0, "oldest first, newest last");
        assert_eq!(disk[0].1, (MAX_SAMPLES - 1) as f64);
        assert!(s.samples(&key(), "gone", since).unwrap().is_empty());
        assert!(s.samples(&key(), "nan", since).unwrap().is_empty());
        let recent = s
            .samples(&key(), "disk", now - chrono::Duration::seconds(9))
            .unwrap();
        assert_eq!(recent.len(), 10);
    }
}
