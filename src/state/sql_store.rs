//! The store itself, once for every engine: [`SqlStore`] answers [`Store`]
//! with the statements of this module and its siblings on whichever
//! [`Db`] it was opened on (SQLite or PostgreSQL).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::sql::{vals, Conn, Db, Row, Val, Wo, W};
use super::{
    now, ts, ChangeRow, ChangeVerdict, CorrectionRow, Incident, IncidentStep, IncidentUpdate,
    JournalEntry, JournalRecord, LastGood, NewChange, NewIncident, NewPause, NewRun, Notified,
    NotifyEvent, Pause, ProposalRow, ReviewEvent, RunStatus, SampleRow, ShadowRow, SignalRow,
    StateError, StepResult, StepStats, Store, UsedApproval,
};
use crate::vocab::{JournalPhase, Remembered, ResourceKey, StepOutcome};

/// The state store on one database engine.
///
/// On a database a fleet shares, rows say which node they belong to: the
/// journal and runs the node that wrote them, every other row keyed by a
/// resource its scope (the node for a `host.*` resource, which belongs to
/// the node it runs on; empty for a cloud resource the fleet shares). A
/// member reads its own scope and the shared one. One machine's store is
/// all node `''`.
pub struct SqlStore {
    db: Box<dyn Db>,
    node: String,
}

/// Journal rows this member sees: its own, and every row about a shared
/// resource (whoever owned it then). `?N` is the node.
pub(super) fn visible(n: usize) -> String {
    format!("(node = ?{n} OR kind NOT LIKE 'host.%')")
}

impl SqlStore {
    pub(super) fn new(db: impl Db + 'static) -> SqlStore {
        let node = db.node().unwrap_or_default().to_string();
        SqlStore {
            db: Box::new(db),
            node,
        }
    }

    /// This member's node name (`''` on one machine's store).
    pub(super) fn me(&self) -> &str {
        &self.node
    }

    /// Whose rows about `key` are: this node's for a `host.*` resource,
    /// the fleet's (`''`) for a shared one.
    pub(super) fn scope(&self, key: &ResourceKey) -> &str {
        if super::shared(key) {
            ""
        } else {
            &self.node
        }
    }

    /// Runs `work` on a connection, in one transaction when `tx`.
    pub(super) fn with<R: Send>(
        &self,
        tx: bool,
        work: impl FnOnce(&mut dyn Conn) -> Result<R, StateError> + Send,
    ) -> Result<R, StateError> {
        super::sql::with(self.db.as_ref(), tx, work)
    }

    pub(super) fn query(&self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StateError> {
        self.with(false, |c| c.query(sql, params))
    }

    pub(super) fn query_opt(&self, sql: &str, params: &[Val]) -> Result<Option<Row>, StateError> {
        self.with(false, |c| c.query_opt(sql, params))
    }

    pub(super) fn execute(&self, sql: &str, params: &[Val]) -> Result<u64, StateError> {
        self.with(false, |c| c.execute(sql, params))
    }

    pub(super) fn insert(&self, sql: &str, params: &[Val]) -> Result<i64, StateError> {
        self.with(false, |c| c.insert(sql, params))
    }

    pub(super) fn has_column(&self, table: &str, column: &str) -> Result<bool, StateError> {
        self.db.has_column(table, column)
    }
}

/// Maps every row with `f`, stopping at the first that cannot be read.
pub(super) fn rows<T>(
    rows: Vec<Row>,
    f: impl Fn(&Row) -> Result<T, StateError>,
) -> Result<Vec<T>, StateError> {
    rows.iter().map(f).collect()
}

/// A row count as a statement's `LIMIT`.
pub(super) fn clamp(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

const JOURNAL_COLUMNS: &str =
    "id, run_id, at, phase, fingerprint, action, kind, name, commit_sha, outcome, detail, node";

impl Store for SqlStore {
    fn fleet_rows(&self) -> &dyn super::FleetRows {
        self
    }

    fn fleet(&self) -> Option<&dyn super::Fleet> {
        self.db.fleet()
    }

    fn lock(&self, command: &str) -> Result<(), StateError> {
        self.db.lock(command)
    }

    fn unlock(&self) -> Result<(), StateError> {
        self.db.unlock()
    }

    fn begin_run(&self, run: &NewRun<'_>) -> Result<i64, StateError> {
        self.insert(
            "INSERT INTO runs (started_at, command, origin, commit_sha, mode, node) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            vals![now(), run.command, run.origin, run.commit, W(&run.mode), self.me()],
        )
    }

    fn finish_run(&self, run_id: i64, status: RunStatus) -> Result<(), StateError> {
        self.execute(
            "UPDATE runs SET finished_at = ?1, status = ?2 WHERE id = ?3",
            vals![now(), <&str>::from(status), run_id],
        )?;
        Ok(())
    }

    fn journal(&self, phase: JournalPhase, r: &JournalRecord<'_>) -> Result<i64, StateError> {
        if phase == JournalPhase::Intent && self.db.fleet().is_some() && super::shared(r.key) {
            return self.fenced_intent(r);
        }
        self.insert(
            "INSERT INTO journal (run_id, at, phase, fingerprint, action, kind, name, commit_sha, outcome, detail, node)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            vals![r.run_id, now(), W(&phase), r.fingerprint, W(&r.action), W(&r.key.kind), r.key.name.as_str(), r.commit, Wo(r.outcome.as_ref()), r.detail, self.me()],
        )
    }

    fn history(
        &self,
        since: Option<DateTime<Utc>>,
        limit: usize,
        node: Option<&str>,
    ) -> Result<Vec<JournalEntry>, StateError> {
        let since = since.map(ts).unwrap_or_default();
        rows(
            self.query(
                &format!(
                    "SELECT {JOURNAL_COLUMNS}
                     FROM (SELECT * FROM journal WHERE at >= ?1 AND (?3 = '*' OR node = ?3) ORDER BY id DESC LIMIT ?2) AS j ORDER BY id"
                ),
                vals![since, clamp(limit), node.unwrap_or("*")],
            )?,
            journal_row,
        )
    }

    fn outcomes_since(&self, since: DateTime<Utc>) -> Result<Vec<JournalEntry>, StateError> {
        rows(
            self.query(
                &format!(
                    "SELECT {JOURNAL_COLUMNS}
                     FROM journal WHERE phase = 'outcome' AND outcome IN ('synced', 'failed') AND at >= ?1 AND {} ORDER BY id",
                    visible(2)
                ),
                vals![ts(since), self.me()],
            )?,
            journal_row,
        )
    }

    fn dangling_intents(&self) -> Result<Vec<JournalEntry>, StateError> {
        rows(
            self.query(
                "SELECT i.id, i.run_id, i.at, i.phase, i.fingerprint, i.action, i.kind, i.name, i.commit_sha, i.outcome, i.detail, i.node
                 FROM journal i
                 WHERE i.phase = 'intent' AND (i.node = ?1 OR i.kind NOT LIKE 'host.%') AND NOT EXISTS (
                    SELECT 1 FROM journal o WHERE o.phase = 'outcome' AND o.run_id = i.run_id
                      AND o.fingerprint = i.fingerprint AND o.id > i.id)
                 ORDER BY i.id",
                vals![self.me()],
            )?,
            journal_row,
        )
    }

    fn record_corrections(&self, key: &ResourceKey, paths: &[&str]) -> Result<(), StateError> {
        let at = now();
        self.with(true, |c| {
            for p in paths {
                c.execute(
                    "INSERT INTO corrections (at, kind, name, path, node) VALUES (?1, ?2, ?3, ?4, ?5)",
                    vals![at.as_str(), key.kind.as_str(), key.name.as_str(), *p, self.scope(key)],
                )?;
            }
            Ok(())
        })
    }

    fn corrections_since(&self, since: DateTime<Utc>) -> Result<Vec<CorrectionRow>, StateError> {
        rows(
            self.query(
                "SELECT at, kind, name, path FROM corrections WHERE at >= ?1 AND node IN ('', ?2) ORDER BY id",
                vals![ts(since), self.me()],
            )?,
            |r| {
                Ok(CorrectionRow {
                    at: r.get(0)?,
                    key: ResourceKey::new(r.get(1)?, r.text(2)?),
                    path: r.text(3)?,
                })
            },
        )
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
        for i in self.list_incidents(false, 1000, Some(self.me()))? {
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
        self.load(id)
    }

    fn incidents(&self, all: bool, limit: usize) -> Result<Vec<Incident>, StateError> {
        self.list_incidents(all, limit, Some(self.me()))
    }

    fn fleet_incidents(
        &self,
        all: bool,
        limit: usize,
        node: Option<&str>,
    ) -> Result<Vec<Incident>, StateError> {
        self.list_incidents(all, limit, node)
    }

    fn incidents_of(
        &self,
        key: &ResourceKey,
        since: DateTime<Utc>,
    ) -> Result<Vec<Incident>, StateError> {
        self.incidents_since(key, since)
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
        self.execute(
            "INSERT INTO last_good (kind, name, commit_sha, spec, at, node) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (node, kind, name) DO UPDATE SET commit_sha = excluded.commit_sha, spec = excluded.spec, at = excluded.at",
            vals![key.kind.as_str(), key.name.as_str(), commit, spec.to_string(), now(), self.scope(key)],
        )?;
        Ok(())
    }

    fn last_good(&self, key: &ResourceKey) -> Result<Option<LastGood>, StateError> {
        let row = self.query_opt(
            "SELECT commit_sha, spec FROM last_good WHERE kind = ?1 AND name = ?2 AND node = ?3",
            vals![key.kind.as_str(), key.name.as_str(), self.scope(key)],
        )?;
        let Some(row) = row else { return Ok(None) };
        // A spec that is no longer JSON is no known good spec.
        Ok(row.json(1).ok().map(|spec| LastGood {
            commit: row.opt_text(0).ok().flatten(),
            spec,
        }))
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
}

impl SqlStore {
    /// An intent on a resource the fleet shares, journaled only while this
    /// member holds its unexpired lease, with the lease's epoch: checked
    /// and written by one statement, so a member that lost the lease
    /// (paused, cut off, killed and restarted) journals nothing and acts
    /// on nothing. What nobody declared has no lease: only the publisher
    /// acts on it (a prune), under epoch 0.
    fn fenced_intent(&self, r: &JournalRecord<'_>) -> Result<i64, StateError> {
        let fenced = || StateError::Fenced {
            key: super::lease_key(r.key),
            node: self.me().to_string(),
        };
        // What this member gave up at its last round starts nothing new,
        // though its lease runs on a while (for what is under way).
        let fleet = self.db.fleet();
        let holds = fleet.is_some_and(|f| f.holds(&super::lease_key(r.key)));
        let publishes = fleet.is_some_and(|f| f.holds(super::PUBLISHER));
        if !holds && !publishes {
            return Err(fenced());
        }
        let found = self.query(
            "INSERT INTO journal (run_id, at, phase, fingerprint, action, kind, name, commit_sha, outcome, detail, node, epoch)
             SELECT CAST(?1 AS BIGINT), CAST(?2 AS TEXT), 'intent', CAST(?3 AS TEXT), CAST(?4 AS TEXT), CAST(?5 AS TEXT),
                    CAST(?6 AS TEXT), CAST(?7 AS TEXT), NULL, CAST(?8 AS TEXT), l.holder, l.epoch
             FROM (
               SELECT holder, epoch FROM leases
               WHERE kind = ?5 AND name = ?6 AND holder = ?9 AND expires_at > clock_timestamp()
                 AND CAST(?11 AS INTEGER) = 1
               UNION ALL
               SELECT holder, 0 FROM leases
               WHERE kind || '/' || name = ?10 AND holder = ?9 AND expires_at > clock_timestamp()
                 AND NOT EXISTS (SELECT 1 FROM leases x WHERE x.kind = ?5 AND x.name = ?6)
             ) AS l
             LIMIT 1
             RETURNING id",
            vals![r.run_id, now(), r.fingerprint, W(&r.action), r.key.kind.as_str(), r.key.name.as_str(), r.commit, r.detail, self.me(), super::PUBLISHER, holds],
        )?;
        match found.first() {
            Some(row) => row.int(0),
            None => Err(fenced()),
        }
    }
}

pub(super) fn journal_row(r: &Row) -> Result<JournalEntry, StateError> {
    Ok(JournalEntry {
        id: r.int(0)?,
        run_id: r.int(1)?,
        at: r.get(2)?,
        phase: r.get(3)?,
        fingerprint: r.text(4)?,
        action: r.get(5)?,
        key: ResourceKey::new(r.get(6)?, r.text(7)?),
        commit: r.opt_text(8)?,
        outcome: r.get_opt(9)?,
        detail: r.text(10)?,
        node: Some(r.text(11)?).filter(|n| !n.is_empty()),
    })
}
