//! tend's state database: the journal (append-only audit trail of intents
//! and outcomes) and the run lock.
//!
//! The journal is written before a provider is called (intent) and after
//! (outcome). An intent without an outcome means a pass was interrupted; the
//! next pass records that and re-reads live state rather than repeating the
//! action blindly. Two processes never hold the run lock at once.

use std::path::{Path, PathBuf};

mod incidents;

use rusqlite::{params, Connection, OptionalExtension};

pub use incidents::{Incident, IncidentStep, NewIncident, SignalRow, StepStats};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("failed to open the state database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("failed to create the state directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to update the state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("another tend process holds the state lock at {path}: pid {pid} on {host}, running `{command}` since {since}")]
    Locked {
        path: String,
        pid: i64,
        host: String,
        command: String,
        since: String,
    },
}

pub struct State {
    conn: Connection,
    path: PathBuf,
}

/// One journal line.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    pub id: i64,
    pub run_id: i64,
    pub at: String,
    pub phase: String,
    pub fingerprint: String,
    pub action: String,
    pub kind: String,
    pub name: String,
    pub commit: Option<String>,
    pub outcome: Option<String>,
    pub detail: String,
}

/// What one journal write describes.
#[derive(Clone, Copy)]
pub struct JournalRecord<'a> {
    pub run_id: i64,
    pub fingerprint: &'a str,
    pub action: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub commit: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub detail: &'a str,
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
    recommendation TEXT NOT NULL DEFAULT ''
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
CREATE TABLE IF NOT EXISTS last_good (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    commit_sha TEXT,
    spec TEXT NOT NULL,
    at TEXT NOT NULL,
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

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

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

impl State {
    /// Opens an existing state database, or `None` when there is none yet
    /// (a plan before the first apply).
    pub fn open_existing(dir: &Path) -> Result<Option<State>, StateError> {
        if dir.join("tend.db").exists() {
            State::open(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn open(dir: &Path) -> Result<State, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("tend.db");
        let conn = Connection::open(&path).map_err(|source| StateError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(State { conn, path })
    }

    /// Takes the run lock, or reports who holds it. A lock left by a process
    /// that no longer exists on this host is taken over.
    pub fn lock(&mut self, command: &str) -> Result<(), StateError> {
        let me = std::process::id() as i64;
        let my_start = start_time(me).unwrap_or(0);
        let host = hostname();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
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

    pub fn unlock(&self) -> Result<(), StateError> {
        self.conn.execute(
            "DELETE FROM run_lock WHERE id = 1 AND pid = ?1",
            params![std::process::id() as i64],
        )?;
        Ok(())
    }

    pub fn begin_run(
        &self,
        command: &str,
        origin: &str,
        commit: Option<&str>,
        mode: &str,
    ) -> Result<i64, StateError> {
        self.conn.execute(
            "INSERT INTO runs (started_at, command, origin, commit_sha, mode) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now(), command, origin, commit, mode],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_run(&self, run_id: i64, status: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE runs SET finished_at = ?1, status = ?2 WHERE id = ?3",
            params![now(), status, run_id],
        )?;
        Ok(())
    }

    pub fn intent(&self, r: &JournalRecord<'_>) -> Result<i64, StateError> {
        self.write("intent", r)
    }

    pub fn outcome(&self, r: &JournalRecord<'_>) -> Result<i64, StateError> {
        self.write("outcome", r)
    }

    fn write(&self, phase: &str, r: &JournalRecord<'_>) -> Result<i64, StateError> {
        self.conn.execute(
            "INSERT INTO journal (run_id, at, phase, fingerprint, action, kind, name, commit_sha, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![r.run_id, now(), phase, r.fingerprint, r.action, r.kind, r.name, r.commit, r.outcome, r.detail],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records that tend set these fields of a resource (fight detection).
    pub fn record_corrections(
        &self,
        kind: &str,
        name: &str,
        paths: &[&str],
    ) -> Result<(), StateError> {
        let at = now();
        for p in paths {
            self.conn.execute(
                "INSERT INTO corrections (at, kind, name, path) VALUES (?1, ?2, ?3, ?4)",
                params![at, kind, name, p],
            )?;
        }
        Ok(())
    }

    /// Records why an action was not taken: a `decision` entry whose
    /// outcome is the decision and whose detail is the reasons.
    pub fn record_decision(
        &self,
        r: &JournalRecord<'_>,
        decision: &str,
        reasons: &[String],
    ) -> Result<(), StateError> {
        let detail = reasons.join("; ");
        self.write(
            "decision",
            &JournalRecord {
                outcome: Some(decision),
                detail: &detail,
                ..*r
            },
        )?;
        Ok(())
    }

    /// Corrections at or after `since` (RFC 3339), oldest first.
    pub fn corrections_since(
        &self,
        since: &str,
    ) -> Result<Vec<(String, String, String, String)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT at, kind, name, path FROM corrections WHERE at >= ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![since], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Outcomes (synced, failed) at or after `since`, oldest first.
    pub fn outcomes_since(&self, since: &str) -> Result<Vec<JournalEntry>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, run_id, at, phase, fingerprint, action, kind, name, commit_sha, outcome, detail
             FROM journal WHERE phase = 'outcome' AND outcome IN ('synced', 'failed') AND at >= ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![since], row_entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Intents of earlier runs that never got an outcome (the run was killed
    /// between calling the provider and recording the result).
    pub fn dangling_intents(&self) -> Result<Vec<JournalEntry>, StateError> {
        let mut stmt = self.conn.prepare(
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

    /// Journal entries at or after `since` (RFC 3339), oldest first.
    pub fn history(
        &self,
        since: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, run_id, at, phase, fingerprint, action, kind, name, commit_sha, outcome, detail
             FROM (SELECT * FROM journal WHERE at >= ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![since.unwrap_or(""), limit as i64], row_entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalEntry> {
    Ok(JournalEntry {
        id: r.get(0)?,
        run_id: r.get(1)?,
        at: r.get(2)?,
        phase: r.get(3)?,
        fingerprint: r.get(4)?,
        action: r.get(5)?,
        kind: r.get(6)?,
        name: r.get(7)?,
        commit: r.get(8)?,
        outcome: r.get(9)?,
        detail: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(run_id: i64, fp: &str) -> JournalRecord<'_> {
        JournalRecord {
            run_id,
            fingerprint: fp,
            action: "update",
            kind: "host.File",
            name: "a",
            commit: None,
            outcome: None,
            detail: "",
        }
    }

    #[test]
    fn dangling_intents_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(dir.path()).unwrap();
        let run = s.begin_run("apply", "x", None, "auto").unwrap();
        s.intent(&rec(run, "a")).unwrap();
        s.outcome(&JournalRecord {
            outcome: Some("synced"),
            ..rec(run, "a")
        })
        .unwrap();
        s.intent(&rec(run, "b")).unwrap();
        let d = s.dangling_intents().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].fingerprint, "b");
        assert_eq!(s.history(None, 100).unwrap().len(), 3);
    }

    #[test]
    fn a_second_holder_is_refused_and_a_dead_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::open(dir.path()).unwrap();
        s.lock("apply").unwrap();
        // A live foreign holder: pid 1 with its real start time.
        s.conn
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
        s.conn
            .execute("UPDATE run_lock SET start_time = -5", [])
            .unwrap();
        s.lock("apply").unwrap();
    }
}
