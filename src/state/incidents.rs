//! Incidents, remembered signal states, remediation statistics and the last
//! known good spec of each watched resource.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now, State, StateError};
use crate::health::{Remembered, Status, Tracked};

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

impl SignalRow {
    pub fn signal(t: &Tracked) -> SignalRow {
        SignalRow {
            signal: t.reading.signal.clone(),
            status: t.reading.status,
            since: t.since,
            last_healthy: t.last_healthy,
            value: t.reading.value,
            detail: t.reading.detail.clone(),
        }
    }

    /// An SLO's breach state, kept under `slo/<name>`.
    pub fn slo(name: &str, breached: bool, since: DateTime<Utc>) -> SignalRow {
        SignalRow {
            signal: crate::health::slo_key(name),
            status: if breached {
                Status::Unhealthy
            } else {
                Status::Healthy
            },
            since,
            last_healthy: None,
            value: None,
            detail: String::new(),
        }
    }
}

/// Verified successes and failures of one runbook step for one cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStats {
    /// The signature, or the resource for problems no signature names.
    pub cause: String,
    pub runbook: String,
    /// Zero-based step index.
    pub step: i64,
    pub action: String,
    pub successes: i64,
    pub failures: i64,
    pub consecutive_failures: i64,
}

/// One step tried for an incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentStep {
    pub step: i64,
    pub action: String,
    pub decision: String,
    /// verified, not-verified, failed, held, skipped or escalated
    pub outcome: String,
    pub detail: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: i64,
}

impl IncidentStep {
    /// A step that began at `started` and has just ended.
    pub fn ended_now(
        step: i64,
        action: &str,
        decision: &str,
        outcome: &str,
        detail: String,
        started: DateTime<Utc>,
    ) -> IncidentStep {
        let now = Utc::now();
        IncidentStep {
            step,
            action: action.into(),
            decision: decision.into(),
            outcome: outcome.into(),
            detail,
            started_at: ts(started),
            finished_at: ts(now),
            duration_ms: (now - started).num_milliseconds().max(0),
        }
    }
}

/// An incident as stored, with its steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub id: i64,
    pub kind: String,
    pub name: String,
    pub status: String,
    pub cause: String,
    pub signature: Option<String>,
    pub runbook: Option<String>,
    pub severity: String,
    pub symptoms: serde_json::Value,
    pub onset_at: String,
    pub detected_at: String,
    pub resolved_at: Option<String>,
    pub next_step: i64,
    /// The resource's current state, in words.
    pub state: String,
    pub recommendation: String,
    pub time_to_detect_ms: i64,
    pub time_to_recover_ms: Option<i64>,
    pub steps: Vec<IncidentStep>,
}

/// What opening an incident records.
pub struct NewIncident<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub cause: &'a str,
    pub signature: Option<&'a str>,
    pub runbook: Option<&'a str>,
    pub severity: &'a str,
    pub symptoms: &'a [Tracked],
    pub onset: DateTime<Utc>,
    pub detected: DateTime<Utc>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn millis(from: &str, to: &str) -> Option<i64> {
    Some((parse(to)? - parse(from)?).num_milliseconds())
}

const INCIDENT_COLUMNS: &str = "id, kind, name, status, cause, signature, runbook, severity, symptoms, onset_at, detected_at, resolved_at, next_step, state, recommendation";

impl State {
    /// What earlier passes saw of a resource's signals (and SLO states).
    pub fn remembered(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<HashMap<String, Remembered>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT signal, status, since, last_healthy FROM signal_state WHERE kind = ?1 AND name = ?2",
        )?;
        let rows = stmt.query_map(params![kind, name], |r| {
            let (signal, status, since, last): (String, String, String, Option<String>) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            Ok((signal, status, since, last))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (signal, status, since, last) = row?;
            if let Some(since) = parse(&since) {
                out.insert(
                    signal,
                    Remembered {
                        status: Status::parse(&status),
                        since,
                        last_healthy: last.as_deref().and_then(parse),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Remembers signal states (`(signal, status, since, last healthy,
    /// value, detail)`).
    pub fn remember(&self, kind: &str, name: &str, rows: &[SignalRow]) -> Result<(), StateError> {
        let at = now();
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO signal_state (kind, name, signal, status, since, last_healthy, value, detail, observed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for r in rows {
            stmt.execute(params![
                kind,
                name,
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

    pub fn open_incident(&self, n: &NewIncident<'_>) -> Result<i64, StateError> {
        let symptoms = serde_json::to_string(n.symptoms).unwrap_or_else(|_| "[]".into());
        self.conn.execute(
            "INSERT INTO incidents (kind, name, status, cause, signature, runbook, severity, symptoms, onset_at, detected_at, state)
             VALUES (?1, ?2, 'open', ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'unhealthy')",
            params![n.kind, n.name, n.cause, n.signature, n.runbook, n.severity, symptoms, ts(n.onset), ts(n.detected)],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The unresolved incident of a resource, if any.
    pub fn active_incident(&self, kind: &str, name: &str) -> Result<Option<Incident>, StateError> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM incidents WHERE kind = ?1 AND name = ?2 AND status != 'resolved' ORDER BY id DESC LIMIT 1",
                params![kind, name],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => self.incident(id),
            None => Ok(None),
        }
    }

    pub fn add_step(&self, incident: i64, s: &IncidentStep) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO incident_steps (incident_id, step, action, decision, outcome, detail, started_at, finished_at, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![incident, s.step, s.action, s.decision, s.outcome, s.detail, s.started_at, s.finished_at, s.duration_ms],
        )?;
        Ok(())
    }

    /// Moves an incident along: its status, next step, current state and
    /// recommended next action.
    pub fn update_incident(
        &self,
        id: i64,
        status: &str,
        next_step: i64,
        state: &str,
        recommendation: &str,
    ) -> Result<(), StateError> {
        let resolved = (status == "resolved").then(now);
        self.conn.execute(
            "UPDATE incidents SET status = ?2, next_step = ?3, state = ?4, recommendation = ?5, resolved_at = COALESCE(?6, resolved_at) WHERE id = ?1",
            params![id, status, next_step, state, recommendation, resolved],
        )?;
        Ok(())
    }

    pub fn incident(&self, id: i64) -> Result<Option<Incident>, StateError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"),
                params![id],
                incident_row,
            )
            .optional()?;
        let Some(mut inc) = row else { return Ok(None) };
        let mut stmt = self.conn.prepare_cached(
            "SELECT step, action, decision, outcome, detail, started_at, finished_at, duration_ms
             FROM incident_steps WHERE incident_id = ?1 ORDER BY id",
        )?;
        let steps = stmt.query_map(params![id], |r| {
            Ok(IncidentStep {
                step: r.get(0)?,
                action: r.get(1)?,
                decision: r.get(2)?,
                outcome: r.get(3)?,
                detail: r.get(4)?,
                started_at: r.get(5)?,
                finished_at: r.get(6)?,
                duration_ms: r.get(7)?,
            })
        })?;
        inc.steps = steps.collect::<Result<_, _>>()?;
        Ok(Some(inc))
    }

    /// Incidents, newest first; only unresolved ones unless `all`.
    pub fn incidents(&self, all: bool, limit: usize) -> Result<Vec<Incident>, StateError> {
        let ids: Vec<i64> = {
            let mut stmt = self.conn.prepare(&format!(
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
            out.extend(self.incident(id)?);
        }
        Ok(out)
    }

    /// Consecutive verification failures of a runbook step for a cause.
    pub fn consecutive_failures(
        &self,
        cause: &str,
        runbook: &str,
        step: i64,
    ) -> Result<i64, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT consecutive_failures FROM remediation_stats WHERE cause = ?1 AND runbook = ?2 AND step = ?3",
                params![cause, runbook, step],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Counts a verified success or failure of a runbook step. A success
    /// resets the run of consecutive failures.
    pub fn record_step_result(
        &self,
        cause: &str,
        runbook: &str,
        step: i64,
        action: &str,
        success: bool,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO remediation_stats (cause, runbook, step, action, successes, failures, consecutive_failures)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (cause, runbook, step) DO UPDATE SET
               action = excluded.action,
               successes = successes + excluded.successes,
               failures = failures + excluded.failures,
               consecutive_failures = CASE WHEN excluded.successes > 0 THEN 0 ELSE consecutive_failures + 1 END",
            params![cause, runbook, step, action, i64::from(success), i64::from(!success)],
        )?;
        Ok(())
    }

    /// Every remediation statistic, by cause, runbook and step.
    pub fn remediation_stats(&self) -> Result<Vec<StepStats>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT cause, runbook, step, action, successes, failures, consecutive_failures FROM remediation_stats ORDER BY cause, runbook, step",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StepStats {
                cause: r.get(0)?,
                runbook: r.get(1)?,
                step: r.get(2)?,
                action: r.get(3)?,
                successes: r.get(4)?,
                failures: r.get(5)?,
                consecutive_failures: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Remembers the spec of a resource seen healthy and in sync.
    pub fn set_last_good(
        &self,
        kind: &str,
        name: &str,
        commit: Option<&str>,
        spec: &serde_json::Value,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO last_good (kind, name, commit_sha, spec, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind, name, commit, spec.to_string(), now()],
        )?;
        Ok(())
    }

    /// The last known good spec of a resource and the commit it came from.
    pub fn last_good(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<(Option<String>, serde_json::Value)>, StateError> {
        let row: Option<(Option<String>, String)> = self
            .conn
            .query_row(
                "SELECT commit_sha, spec FROM last_good WHERE kind = ?1 AND name = ?2",
                params![kind, name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(c, s)| Some((c, serde_json::from_str(&s).ok()?))))
    }
}

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let symptoms: String = r.get(8)?;
    let onset_at: String = r.get(9)?;
    let detected_at: String = r.get(10)?;
    let resolved_at: Option<String> = r.get(11)?;
    Ok(Incident {
        id: r.get(0)?,
        kind: r.get(1)?,
        name: r.get(2)?,
        status: r.get(3)?,
        cause: r.get(4)?,
        signature: r.get(5)?,
        runbook: r.get(6)?,
        severity: r.get(7)?,
        symptoms: serde_json::from_str(&symptoms).unwrap_or_default(),
        time_to_detect_ms: millis(&onset_at, &detected_at).unwrap_or(0),
        time_to_recover_ms: resolved_at.as_deref().and_then(|r| millis(&detected_at, r)),
        onset_at,
        detected_at,
        resolved_at,
        next_step: r.get(12)?,
        state: r.get(13)?,
        recommendation: r.get(14)?,
        steps: Vec::new(),
    })
}
