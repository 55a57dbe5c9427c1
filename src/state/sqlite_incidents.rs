//! The SQLite side of incidents, remembered signal states, remediation
//! statistics.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::sqlite::SqliteStore;
use super::sqlite_text::{
    decision_from_sql, decision_to_sql, get, get_opt, step_action_from_sql, step_action_to_sql,
    step_from_sql, step_to_sql, W,
};
use super::{
    now, ts, Incident, IncidentStep, IncidentUpdate, NewIncident, SignalRow, StateError,
    StepResult, StepStats,
};
use crate::vocab::{IncidentStatus, Remembered, ResourceKey, StepOutcome};

const INCIDENT_COLUMNS: &str = "id, kind, name, status, cause, signature, runbook, severity, symptoms, onset_at, detected_at, resolved_at, next_step, state, recommendation, why, change";

impl SqliteStore {
    pub(super) fn remembered_rows(
        &self,
        key: &ResourceKey,
    ) -> Result<HashMap<String, Remembered>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT signal, status, since, last_healthy FROM signal_state WHERE kind = ?1 AND name = ?2",
        )?;
        let rows = stmt.query_map(params![key.kind.as_str(), key.name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Remembered {
                    status: get(r, 1)?,
                    since: get(r, 2)?,
                    last_healthy: get_opt(r, 3)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
    }

    pub(super) fn remember_rows(
        &self,
        key: &ResourceKey,
        rows: &[SignalRow],
    ) -> Result<(), StateError> {
        let at = now();
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "INSERT OR REPLACE INTO signal_state (kind, name, signal, status, since, last_healthy, value, detail, observed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for r in rows {
            stmt.execute(params![
                key.kind.as_str(),
                key.name,
                r.signal,
                r.status.as_str(),
                ts(r.since),
                r.last_healthy.map(ts),
                r.value,
                r.detail,
                at
            ])?;
        }
        Ok(())
    }

    pub(super) fn insert_incident(&self, n: &NewIncident<'_>) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO incidents (kind, name, status, cause, signature, runbook, severity, symptoms, onset_at, detected_at, state, why, change)
             VALUES (?1, ?2, 'open', ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'unhealthy', ?10, ?11)",
            params![n.key.kind.as_str(), n.key.name, n.cause, n.signature, n.runbook, W(&n.severity), n.symptoms.to_string(), ts(n.onset), ts(n.detected), n.why, n.change.as_ref().map(|c| c.to_string())],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub(super) fn active(&self, key: &ResourceKey) -> Result<Option<Incident>, StateError> {
        let conn = self.conn();
        let id: Option<i64> = conn
            .query_row(
                "SELECT id FROM incidents WHERE kind = ?1 AND name = ?2 AND status != 'resolved' ORDER BY id DESC LIMIT 1",
                params![key.kind.as_str(), key.name],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => self.load_incident(&conn, id),
            None => Ok(None),
        }
    }

    pub(super) fn insert_step(&self, incident: i64, s: &IncidentStep) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO incident_steps (incident_id, step, action, decision, outcome, detail, started_at, finished_at, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![incident, step_to_sql(s.step), step_action_to_sql(s.action), decision_to_sql(s.decision), W(&s.outcome), s.detail, W(&s.started_at), W(&s.finished_at), s.duration_ms],
        )?;
        Ok(())
    }

    pub(super) fn update_newest_step(
        &self,
        incident: i64,
        was: StepOutcome,
        s: &IncidentStep,
    ) -> Result<bool, StateError> {
        let conn = self.conn();
        let newest: Option<(i64, Option<u32>, StepOutcome, chrono::DateTime<chrono::Utc>)> = conn
            .query_row(
                "SELECT id, step, outcome, started_at FROM incident_steps WHERE incident_id = ?1 AND outcome != ?2 ORDER BY id DESC LIMIT 1",
                params![incident, W(&StepOutcome::Diagnosed)],
                |r| Ok((r.get(0)?, step_from_sql(r, 1)?, get(r, 2)?, get(r, 3)?)),
            )
            .optional()?;
        let Some((id, step, outcome, started_at)) = newest else {
            return Ok(false);
        };
        if step != s.step || outcome != was {
            return Ok(false);
        }
        let duration = (s.finished_at - started_at).num_milliseconds().max(0);
        conn.execute(
            "UPDATE incident_steps SET outcome = ?2, decision = ?3, detail = ?4, finished_at = ?5, duration_ms = ?6 WHERE id = ?1",
            params![id, W(&s.outcome), decision_to_sql(s.decision), s.detail, W(&s.finished_at), duration],
        )?;
        Ok(true)
    }

    pub(super) fn move_incident(&self, id: i64, u: &IncidentUpdate<'_>) -> Result<(), StateError> {
        let resolved = (u.status == IncidentStatus::Resolved).then(now);
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE incidents SET status = ?2, next_step = ?3, state = ?4, recommendation = ?5, resolved_at = COALESCE(?6, resolved_at) WHERE id = ?1",
            params![id, W(&u.status), u.next_step, u.state, u.recommendation, resolved],
        )?;
        if let Some(d) = u.diagnosis {
            tx.execute(
                "UPDATE incidents SET cause = ?2, signature = ?3, why = ?4, runbook = ?5, severity = ?6, symptoms = ?7 WHERE id = ?1",
                params![id, d.cause, d.signature, d.why, d.runbook, W(&d.severity), d.symptoms.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(super) fn load_incident(
        &self,
        conn: &Connection,
        id: i64,
    ) -> Result<Option<Incident>, StateError> {
        let row = conn
            .query_row(
                &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"),
                params![id],
                incident_row,
            )
            .optional()?;
        let Some(mut inc) = row else { return Ok(None) };
        let mut stmt = conn.prepare_cached(
            "SELECT step, action, decision, outcome, detail, started_at, finished_at, duration_ms
             FROM incident_steps WHERE incident_id = ?1 ORDER BY id",
        )?;
        let steps = stmt.query_map(params![id], |r| {
            Ok(IncidentStep {
                step: step_from_sql(r, 0)?,
                action: step_action_from_sql(r, 1)?,
                decision: decision_from_sql(r, 2)?,
                outcome: get(r, 3)?,
                detail: r.get(4)?,
                started_at: get(r, 5)?,
                finished_at: get(r, 6)?,
                duration_ms: r.get(7)?,
            })
        })?;
        inc.steps = steps.collect::<Result<_, _>>()?;
        Ok(Some(inc))
    }

    pub(super) fn list_incidents(
        &self,
        all: bool,
        limit: usize,
    ) -> Result<Vec<Incident>, StateError> {
        let conn = self.conn();
        let ids: Vec<i64> = {
            let mut stmt = conn.prepare(&format!(
                "SELECT id FROM incidents {} ORDER BY id DESC LIMIT ?1",
                if all {
                    ""
                } else {
                    "WHERE status != 'resolved'"
                }
            ))?;
            let rows = stmt.query_map(params![limit as i64], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.load_incident(&conn, id)?);
        }
        Ok(out)
    }

    pub(super) fn failures(
        &self,
        cause: &str,
        runbook: &str,
        step: u32,
    ) -> Result<i64, StateError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT consecutive_failures FROM remediation_stats WHERE cause = ?1 AND runbook = ?2 AND step = ?3",
                params![cause, runbook, step],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// A success resets the run of consecutive failures.
    pub(super) fn count_step(&self, r: &StepResult<'_>) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO remediation_stats (cause, runbook, step, action, successes, failures, consecutive_failures)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (cause, runbook, step) DO UPDATE SET
               action = excluded.action,
               successes = successes + excluded.successes,
               failures = failures + excluded.failures,
               consecutive_failures = CASE WHEN excluded.successes > 0 THEN 0 ELSE consecutive_failures + 1 END",
            params![r.cause, r.runbook, r.step, W(&r.action), i64::from(r.success), i64::from(!r.success)],
        )?;
        Ok(())
    }

    pub(super) fn stats(&self) -> Result<Vec<StepStats>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT cause, runbook, step, action, successes, failures, consecutive_failures FROM remediation_stats ORDER BY cause, runbook, step",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StepStats {
                cause: r.get(0)?,
                runbook: r.get(1)?,
                step: r.get(2)?,
                action: get(r, 3)?,
                successes: r.get(4)?,
                failures: r.get(5)?,
                consecutive_failures: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let symptoms: String = r.get(8)?;
    let onset_at: chrono::DateTime<chrono::Utc> = get(r, 9)?;
    let detected_at: chrono::DateTime<chrono::Utc> = get(r, 10)?;
    let resolved_at: Option<chrono::DateTime<chrono::Utc>> = get_opt(r, 11)?;
    Ok(Incident {
        id: r.get(0)?,
        key: ResourceKey::new(get(r, 1)?, r.get::<_, String>(2)?),
        status: get(r, 3)?,
        cause: r.get(4)?,
        signature: r.get(5)?,
        runbook: r.get(6)?,
        severity: get(r, 7)?,
        symptoms: serde_json::from_str(&symptoms).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, Box::new(e))
        })?,
        time_to_detect_ms: (detected_at - onset_at).num_milliseconds(),
        time_to_recover_ms: resolved_at.map(|r| (r - detected_at).num_milliseconds()),
        onset_at,
        detected_at,
        resolved_at,
        next_step: r.get(12)?,
        state: r.get(13)?,
        recommendation: r.get(14)?,
        why: r.get(15)?,
        change: match r.get::<_, Option<String>>(16)? {
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    16,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?),
            None => None,
        },
        steps: Vec::new(),
    })
}
