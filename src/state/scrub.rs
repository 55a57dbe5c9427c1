//! A store that scrubs known secret values from every text it writes:
//! journal details, incident steps, states and recommendations, symptoms
//! and remembered signal details. Last known good specs are kept whole (a
//! `reapply-last-good` step needs them) in the private store.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{
    ChangeRow, ChangeVerdict, CorrectionRow, Incident, IncidentStep, IncidentUpdate, JournalEntry,
    JournalRecord, LastGood, NewChange, NewIncident, NewPause, NewRun, Notified, NotifyEvent,
    Pause, ProposalRow, ReviewEvent, RunStatus, SampleRow, ShadowRow, SignalRow, StateError,
    StepResult, StepStats, Store, UsedApproval,
};
use crate::vocab::{JournalPhase, Remembered, ResourceKey, Secrets, StepOutcome};

pub struct Scrubbing<'a> {
    pub inner: &'a dyn Store,
    pub secrets: &'a Secrets,
}

impl Scrubbing<'_> {
    fn text(&self, s: &str) -> String {
        self.secrets.scrub(s)
    }

    /// `v` with every string (keys included) scrubbed: walked, never
    /// rewritten as text, so it stays JSON and nothing is kept unscrubbed.
    pub fn json(&self, v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.secrets.is_empty() {
            return v.clone();
        }
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(items) => Value::Array(items.iter().map(|i| self.json(i)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, child)| (self.text(k), self.json(child)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

impl Store for Scrubbing<'_> {
    fn fleet(&self) -> Option<&dyn super::Fleet> {
        self.inner.fleet()
    }

    fn fleet_rows(&self) -> &dyn super::FleetRows {
        self.inner.fleet_rows()
    }

    fn lock(&self, command: &str) -> Result<(), StateError> {
        self.inner.lock(command)
    }

    fn unlock(&self) -> Result<(), StateError> {
        self.inner.unlock()
    }

    fn begin_run(&self, run: &NewRun<'_>) -> Result<i64, StateError> {
        self.inner.begin_run(run)
    }

    fn finish_run(&self, run_id: i64, status: RunStatus) -> Result<(), StateError> {
        self.inner.finish_run(run_id, status)
    }

    fn journal(&self, phase: JournalPhase, r: &JournalRecord<'_>) -> Result<i64, StateError> {
        let detail = self.text(r.detail);
        self.inner.journal(
            phase,
            &JournalRecord {
                detail: &detail,
                ..*r
            },
        )
    }

    fn history(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
        node: Option<&str>,
    ) -> Result<Vec<JournalEntry>, StateError> {
        self.inner.history(since, limit, node)
    }

    fn outcomes_since(&self, since: DateTime<Utc>) -> Result<Vec<JournalEntry>, StateError> {
        self.inner.outcomes_since(since)
    }

    fn dangling_intents(&self) -> Result<Vec<JournalEntry>, StateError> {
        self.inner.dangling_intents()
    }

    fn record_corrections(&self, key: &ResourceKey, paths: &[&str]) -> Result<(), StateError> {
        self.inner.record_corrections(key, paths)
    }

    fn corrections_since(&self, since: DateTime<Utc>) -> Result<Vec<CorrectionRow>, StateError> {
        self.inner.corrections_since(since)
    }

    fn remembered(&self, key: &ResourceKey) -> Result<HashMap<String, Remembered>, StateError> {
        self.inner.remembered(key)
    }

    fn remember(&self, key: &ResourceKey, rows: &[SignalRow]) -> Result<(), StateError> {
        let rows: Vec<SignalRow> = rows
            .iter()
            .map(|r| SignalRow {
                detail: self.text(&r.detail),
                ..r.clone()
            })
            .collect();
        self.inner.remember(key, &rows)
    }

    fn open_incident(&self, n: &NewIncident<'_>) -> Result<i64, StateError> {
        self.inner.open_incident(&NewIncident {
            symptoms: self.json(&n.symptoms),
            change: n.change.as_ref().map(|c| self.json(c)),
            ..*n
        })
    }

    fn active_incident(&self, key: &ResourceKey) -> Result<Option<Incident>, StateError> {
        self.inner.active_incident(key)
    }

    fn add_step(&self, incident: i64, s: &IncidentStep) -> Result<(), StateError> {
        self.inner.add_step(
            incident,
            &IncidentStep {
                detail: self.text(&s.detail),
                ..s.clone()
            },
        )
    }

    fn update_last_step(
        &self,
        incident: i64,
        was: StepOutcome,
        s: &IncidentStep,
    ) -> Result<bool, StateError> {
        self.inner.update_last_step(
            incident,
            was,
            &IncidentStep {
                detail: self.text(&s.detail),
                ..s.clone()
            },
        )
    }

    fn running_steps(&self) -> Result<Vec<(Incident, IncidentStep)>, StateError> {
        self.inner.running_steps()
    }

    fn update_incident(&self, id: i64, u: &IncidentUpdate<'_>) -> Result<(), StateError> {
        let (state, recommendation) = (self.text(u.state), self.text(u.recommendation));
        let diagnosis = u.diagnosis.map(|d| super::Diagnosis {
            symptoms: self.json(&d.symptoms),
            ..d.clone()
        });
        self.inner.update_incident(
            id,
            &IncidentUpdate {
                state: &state,
                recommendation: &recommendation,
                diagnosis: diagnosis.as_ref(),
                ..*u
            },
        )
    }

    fn shadow_match(&self, r: &ShadowRow) -> Result<(), StateError> {
        self.inner.shadow_match(r)
    }

    fn shadow_end(
        &self,
        signature: &str,
        key: &ResourceKey,
        at: chrono::DateTime<chrono::Utc>,
        on_its_own: bool,
    ) -> Result<(), StateError> {
        self.inner.shadow_end(signature, key, at, on_its_own)
    }

    fn shadow_matches(&self) -> Result<Vec<ShadowRow>, StateError> {
        self.inner.shadow_matches()
    }

    fn add_samples(&self, rows: &[SampleRow]) -> Result<(), StateError> {
        // Numbers only: nothing to scrub.
        self.inner.add_samples(rows)
    }

    fn samples(
        &self,
        key: &ResourceKey,
        signal: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, f64)>, StateError> {
        self.inner.samples(key, signal, since)
    }

    fn record_notified(&self, n: &Notified<'_>) -> Result<(), StateError> {
        self.inner.record_notified(n)
    }

    fn was_notified(
        &self,
        n: &Notified<'_>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StateError> {
        self.inner.was_notified(n, since)
    }

    fn notified_events(&self, incident: i64) -> Result<Vec<NotifyEvent>, StateError> {
        self.inner.notified_events(incident)
    }

    fn pause(&self, p: &NewPause<'_>) -> Result<i64, StateError> {
        let reason = self.text(p.reason);
        self.inner.pause(&NewPause {
            reason: &reason,
            ..*p
        })
    }

    fn resume(
        &self,
        selector: Option<&str>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Pause>, StateError> {
        self.inner.resume(selector, at)
    }

    fn pauses(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Vec<Pause>, StateError> {
        self.inner.pauses(now)
    }

    fn record_change(&self, c: &NewChange<'_>) -> Result<i64, StateError> {
        self.inner.record_change(&NewChange {
            fields: self.json(&c.fields),
            ..*c
        })
    }

    fn settle_change(&self, id: i64, v: &ChangeVerdict<'_>) -> Result<(), StateError> {
        let cause = v.cause.map(|c| self.text(c));
        self.inner.settle_change(
            id,
            &ChangeVerdict {
                cause: cause.as_deref(),
                ..*v
            },
        )
    }

    fn changes(&self, since: chrono::DateTime<chrono::Utc>) -> Result<Vec<ChangeRow>, StateError> {
        self.inner.changes(since)
    }

    fn incident(&self, id: i64) -> Result<Option<Incident>, StateError> {
        self.inner.incident(id)
    }

    fn incidents(&self, all: bool, limit: usize) -> Result<Vec<Incident>, StateError> {
        self.inner.incidents(all, limit)
    }

    fn fleet_incidents(
        &self,
        all: bool,
        limit: usize,
        node: Option<&str>,
    ) -> Result<Vec<Incident>, StateError> {
        self.inner.fleet_incidents(all, limit, node)
    }

    fn incidents_of(
        &self,
        key: &ResourceKey,
        since: DateTime<Utc>,
    ) -> Result<Vec<Incident>, StateError> {
        self.inner.incidents_of(key, since)
    }

    fn consecutive_failures(
        &self,
        cause: &str,
        runbook: &str,
        step: u32,
    ) -> Result<i64, StateError> {
        self.inner.consecutive_failures(cause, runbook, step)
    }

    fn record_step_result(&self, r: &StepResult<'_>) -> Result<(), StateError> {
        self.inner.record_step_result(r)
    }

    fn remediation_stats(&self) -> Result<Vec<StepStats>, StateError> {
        self.inner.remediation_stats()
    }

    fn set_last_good(
        &self,
        key: &ResourceKey,
        commit: Option<&str>,
        spec: &serde_json::Value,
    ) -> Result<(), StateError> {
        self.inner.set_last_good(key, commit, spec)
    }

    fn last_good(&self, key: &ResourceKey) -> Result<Option<LastGood>, StateError> {
        self.inner.last_good(key)
    }

    fn use_approval(&self, u: &UsedApproval) -> Result<(), StateError> {
        self.inner.use_approval(u)
    }

    fn used_approvals(&self) -> Result<Vec<UsedApproval>, StateError> {
        self.inner.used_approvals()
    }

    fn log_review(&self, e: &ReviewEvent) -> Result<(), StateError> {
        self.inner.log_review(&ReviewEvent {
            detail: self.text(&e.detail),
            ..e.clone()
        })
    }

    fn review_log(&self, limit: usize) -> Result<Vec<ReviewEvent>, StateError> {
        self.inner.review_log(limit)
    }

    fn save_proposals(&self, rows: &[ProposalRow]) -> Result<(), StateError> {
        self.inner.save_proposals(rows)
    }

    fn proposals(&self) -> Result<Vec<ProposalRow>, StateError> {
        self.inner.proposals()
    }
}
