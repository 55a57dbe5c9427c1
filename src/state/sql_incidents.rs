//! Incidents, remembered signal states, remediation statistics.

use std::collections::HashMap;

use super::sql::{decision_to_sql, step_action_to_sql, step_to_sql, vals, Conn, Row, Val, W};
use super::sql_store::{rows, SqlStore};
use super::{
    now, ts, Incident, IncidentStep, IncidentUpdate, NewIncident, SignalRow, StateError,
    StepResult, StepStats,
};
use crate::vocab::{IncidentStatus, Remembered, ResourceKey, StepOutcome};

const INCIDENT_COLUMNS: &str = "id, kind, name, status, cause, signature, runbook, severity, symptoms, onset_at, detected_at, resolved_at, next_step, state, recommendation, why, change, node";

/// Incident `id` with its steps, on one connection.
fn load_incident(c: &mut dyn Conn, id: i64) -> Result<Option<Incident>, StateError> {
    let row = c.query_opt(
        &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"),
        vals![id],
    )?;
    let Some(row) = row else { return Ok(None) };
    let mut inc = incident_row(&row)?;
    inc.steps = rows(
        c.query(
            "SELECT step, action, decision, outcome, detail, started_at, finished_at, duration_ms
             FROM incident_steps WHERE incident_id = ?1 ORDER BY id",
            vals![id],
        )?,
        |r| {
            Ok(IncidentStep {
                step: r.step(0)?,
                action: r.step_action(1)?,
                decision: r.decision(2)?,
                outcome: r.get(3)?,
                detail: r.text(4)?,
                started_at: r.get(5)?,
                finished_at: r.get(6)?,
                duration_ms: r.int(7)?,
            })
        },
    )?;
    Ok(Some(inc))
}

impl SqlStore {
    pub(super) fn load(&self, id: i64) -> Result<Option<Incident>, StateError> {
        self.with(false, |c| load_incident(c, id))
    }

    /// A resource's incidents detected at or after `since`, oldest first.
    pub(super) fn incidents_since(
        &self,
        key: &ResourceKey,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Incident>, StateError> {
        self.incidents_where(
            "SELECT id FROM incidents WHERE kind = ?1 AND name = ?2 AND detected_at >= ?3 AND node = ?4 ORDER BY id",
            vals![key.kind.as_str(), key.name.as_str(), ts(since), self.scope(key)],
        )
    }

    /// The incidents whose ids `sql` selects, in its order, with their
    /// steps, read on one connection.
    fn incidents_where(&self, sql: &str, params: &[Val]) -> Result<Vec<Incident>, StateError> {
        self.with(false, |c| {
            let ids = rows(c.query(sql, params)?, |r| r.int(0))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.extend(load_incident(c, id)?);
            }
            Ok(out)
        })
    }

    pub(super) fn remembered_rows(
        &self,
        key: &ResourceKey,
    ) -> Result<HashMap<String, Remembered>, StateError> {
        let found = self.query(
            "SELECT signal, status, since, last_healthy FROM signal_state WHERE kind = ?1 AND name = ?2 AND node = ?3",
            vals![key.kind.as_str(), key.name.as_str(), self.scope(key)],
        )?;
        found
            .iter()
            .map(|r| {
                Ok((
                    r.text(0)?,
                    Remembered {
                        status: r.get(1)?,
                        since: r.get(2)?,
                        last_healthy: r.get_opt(3)?,
                    },
                ))
            })
            .collect()
    }

    pub(super) fn remember_rows(
        &self,
        key: &ResourceKey,
        rows: &[SignalRow],
    ) -> Result<(), StateError> {
        let at = now();
        self.with(true, |c| {
            for r in rows {
                c.execute(
                    "INSERT INTO signal_state (kind, name, signal, status, since, last_healthy, value, detail, observed_at, node)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (node, kind, name, signal) DO UPDATE SET status = excluded.status, since = excluded.since,
                       last_healthy = excluded.last_healthy, value = excluded.value, detail = excluded.detail,
                       observed_at = excluded.observed_at",
                    vals![
                        key.kind.as_str(),
                        key.name.as_str(),
                        r.signal.as_str(),
                        r.status.as_str(),
                        ts(r.since),
                        r.last_healthy.map(ts),
                        r.value,
                        r.detail.as_str(),
                        at.as_str(),
                        self.scope(key)
                    ],
                )?;
            }
            Ok(())
        })
    }

    pub(super) fn insert_incident(&self, n: &NewIncident<'_>) -> Result<i64, StateError> {
        self.insert(
            "INSERT INTO incidents (kind, name, status, cause, signature, runbook, severity, symptoms, onset_at, detected_at, state, why, change, node)
             VALUES (?1, ?2, 'open', ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'unhealthy', ?10, ?11, ?12)",
            vals![n.key.kind.as_str(), n.key.name.as_str(), n.cause, n.signature, n.runbook, W(&n.severity), n.symptoms.to_string(), ts(n.onset), ts(n.detected), n.why, n.change.as_ref().map(|c| c.to_string()), self.scope(n.key)],
        )
    }

    pub(super) fn active(&self, key: &ResourceKey) -> Result<Option<Incident>, StateError> {
        self.with(false, |c| {
            let id = c.query_opt(
                "SELECT id FROM incidents WHERE kind = ?1 AND name = ?2 AND node = ?3 AND status != 'resolved' ORDER BY id DESC LIMIT 1",
                vals![key.kind.as_str(), key.name.as_str(), self.scope(key)],
            )?;
            match id {
                Some(row) => load_incident(c, row.int(0)?),
                None => Ok(None),
            }
        })
    }

    pub(super) fn insert_step(&self, incident: i64, s: &IncidentStep) -> Result<(), StateError> {
        self.execute(
            "INSERT INTO incident_steps (incident_id, step, action, decision, outcome, detail, started_at, finished_at, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            vals![incident, step_to_sql(s.step), step_action_to_sql(s.action), decision_to_sql(s.decision), W(&s.outcome), s.detail.as_str(), W(&s.started_at), W(&s.finished_at), s.duration_ms],
        )?;
        Ok(())
    }

    pub(super) fn update_newest_step(
        &self,
        incident: i64,
        was: StepOutcome,
        s: &IncidentStep,
    ) -> Result<bool, StateError> {
        self.with(true, |c| {
            let newest = c.query_opt(
                "SELECT id, step, outcome, started_at FROM incident_steps WHERE incident_id = ?1 AND outcome != ?2 ORDER BY id DESC LIMIT 1",
                vals![incident, W(&StepOutcome::Diagnosed)],
            )?;
            let Some(newest) = newest else {
                return Ok(false);
            };
            let (id, step, outcome, started_at): (i64, Option<u32>, StepOutcome, chrono::DateTime<chrono::Utc>) =
                (newest.int(0)?, newest.step(1)?, newest.get(2)?, newest.get(3)?);
            if step != s.step || outcome != was {
                return Ok(false);
            }
            let duration = (s.finished_at - started_at).num_milliseconds().max(0);
            c.execute(
                "UPDATE incident_steps SET outcome = ?2, decision = ?3, detail = ?4, finished_at = ?5, duration_ms = ?6 WHERE id = ?1",
                vals![id, W(&s.outcome), decision_to_sql(s.decision), s.detail.as_str(), W(&s.finished_at), duration],
            )?;
            Ok(true)
        })
    }

    pub(super) fn move_incident(&self, id: i64, u: &IncidentUpdate<'_>) -> Result<(), StateError> {
        let resolved = (u.status == IncidentStatus::Resolved).then(now);
        self.with(true, |c| {
            c.execute(
                "UPDATE incidents SET status = ?2, next_step = ?3, state = ?4, recommendation = ?5, resolved_at = COALESCE(?6, resolved_at) WHERE id = ?1",
                vals![id, W(&u.status), u.next_step, u.state, u.recommendation, resolved],
            )?;
            if let Some(d) = u.diagnosis {
                c.execute(
                    "UPDATE incidents SET cause = ?2, signature = ?3, why = ?4, runbook = ?5, severity = ?6, symptoms = ?7 WHERE id = ?1",
                    vals![id, d.cause.as_str(), d.signature.as_deref(), d.why.as_deref(), d.runbook.as_deref(), W(&d.severity), d.symptoms.to_string()],
                )?;
            }
            Ok(())
        })
    }

    /// The newest incidents (open ones only unless `all`): of `node` and
    /// the shared resources, or of the whole fleet when `node` is `None`.
    pub(super) fn list_incidents(
        &self,
        all: bool,
        limit: usize,
        node: Option<&str>,
    ) -> Result<Vec<Incident>, StateError> {
        self.incidents_where(
            &format!(
                "SELECT id FROM incidents WHERE (?2 = '*' OR node IN ('', ?2)) {} ORDER BY id DESC LIMIT ?1",
                if all { "" } else { "AND status != 'resolved'" }
            ),
            vals![super::sql_store::clamp(limit), node.unwrap_or("*")],
        )
    }

    pub(super) fn failures(
        &self,
        cause: &str,
        runbook: &str,
        step: u32,
    ) -> Result<i64, StateError> {
        self.query_opt(
            "SELECT consecutive_failures FROM remediation_stats WHERE cause = ?1 AND runbook = ?2 AND step = ?3",
            vals![cause, runbook, step],
        )?
        .map_or(Ok(0), |r| r.int(0))
    }

    /// A success resets the run of consecutive failures.
    pub(super) fn count_step(&self, r: &StepResult<'_>) -> Result<(), StateError> {
        self.execute(
            "INSERT INTO remediation_stats (cause, runbook, step, action, successes, failures, consecutive_failures)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (cause, runbook, step) DO UPDATE SET
               action = excluded.action,
               successes = remediation_stats.successes + excluded.successes,
               failures = remediation_stats.failures + excluded.failures,
               consecutive_failures = CASE WHEN excluded.successes > 0 THEN 0 ELSE remediation_stats.consecutive_failures + 1 END",
            vals![r.cause, r.runbook, r.step, W(&r.action), i64::from(r.success), i64::from(!r.success)],
        )?;
        Ok(())
    }

    pub(super) fn stats(&self) -> Result<Vec<StepStats>, StateError> {
        rows(
            self.query(
                "SELECT cause, runbook, step, action, successes, failures, consecutive_failures FROM remediation_stats ORDER BY cause, runbook, step",
                &[],
            )?,
            |r| {
                Ok(StepStats {
                    cause: r.text(0)?,
                    runbook: r.text(1)?,
                    step: r.u32(2)?,
                    action: r.get(3)?,
                    successes: r.int(4)?,
                    failures: r.int(5)?,
                    consecutive_failures: r.int(6)?,
                })
            },
        )
    }
}

fn incident_row(r: &Row) -> Result<Incident, StateError> {
    let onset_at: chrono::DateTime<chrono::Utc> = r.get(9)?;
    let detected_at: chrono::DateTime<chrono::Utc> = r.get(10)?;
    let resolved_at: Option<chrono::DateTime<chrono::Utc>> = r.get_opt(11)?;
    Ok(Incident {
        id: r.int(0)?,
        key: ResourceKey::new(r.get(1)?, r.text(2)?),
        status: r.get(3)?,
        cause: r.text(4)?,
        signature: r.opt_text(5)?,
        runbook: r.opt_text(6)?,
        severity: r.get(7)?,
        symptoms: r.json(8)?,
        time_to_detect_ms: (detected_at - onset_at).num_milliseconds(),
        time_to_recover_ms: resolved_at.map(|r| (r - detected_at).num_milliseconds()),
        onset_at,
        detected_at,
        resolved_at,
        next_step: r.u32(12)?,
        state: r.text(13)?,
        recommendation: r.text(14)?,
        why: r.opt_text(15)?,
        change: r.opt_json(16)?,
        node: Some(r.text(17)?).filter(|n| !n.is_empty()),
        steps: Vec::new(),
    })
}
