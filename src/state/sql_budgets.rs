//! The fleet budgets' bookkeeping: the slots of actions in flight and the
//! health each member reports of the resources a budget selects.

use chrono::{DateTime, Utc};

use super::sql::{vals, Row};
use super::sql_store::{rows, SqlStore};
use super::{
    now, ts, ChangeRow, Finding, FleetRows, Health, HealthReport, JournalEntry, NewSlot, Slot,
    StateError,
};
use crate::vocab::ResourceKey;

fn slot_row(r: &Row) -> Result<Slot, StateError> {
    Ok(Slot {
        budget: r.text(0)?,
        node: r.text(1)?,
        key: ResourceKey::new(r.get(2)?, r.text(3)?),
        at: r.get(4)?,
        until: r.get(5)?,
    })
}

impl FleetRows for SqlStore {
    fn take_slot(&self, s: &NewSlot<'_>) -> Result<Vec<Slot>, StateError> {
        let me = self.me().to_string();
        self.with(true, |c| {
            // The budget's row is locked first: takers of one budget queue
            // here, so each counts the slots the one before it committed.
            c.execute(
                "INSERT INTO budget_locks (name, touched) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET touched = excluded.touched",
                vals![s.budget, now()],
            )?;
            c.execute(
                "DELETE FROM budget_slots WHERE budget = ?1 AND expires_at < ?2",
                vals![s.budget, now()],
            )?;
            let taken = rows(
                c.query(
                    "SELECT budget, node, kind, name, at, expires_at FROM budget_slots
                     WHERE budget = ?1 ORDER BY at",
                    vals![s.budget],
                )?,
                slot_row,
            )?;
            let (ours, others): (Vec<Slot>, Vec<Slot>) = taken
                .into_iter()
                .partition(|t| t.node == me && &t.key == s.key);
            // A member that left the fleet holds nothing in flight.
            let held: Vec<Slot> = others
                .into_iter()
                .filter(|t| s.live.is_none_or(|live| live.contains(&t.node)))
                .collect();
            if ours.is_empty() && held.len() >= s.max {
                return Ok(held);
            }
            c.execute(
                "INSERT INTO budget_slots (budget, node, kind, name, run_id, at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (budget, node, kind, name) DO UPDATE SET run_id = excluded.run_id,
                   at = excluded.at, expires_at = excluded.expires_at",
                vals![
                    s.budget,
                    me.as_str(),
                    s.key.kind.as_str(),
                    s.key.name.as_str(),
                    s.run_id,
                    now(),
                    ts(s.until)
                ],
            )?;
            Ok(Vec::new())
        })
    }

    fn release_slots(&self, key: &ResourceKey) -> Result<(), StateError> {
        self.execute(
            "DELETE FROM budget_slots WHERE node = ?1 AND kind = ?2 AND name = ?3",
            vals![self.me(), key.kind.as_str(), key.name.as_str()],
        )?;
        Ok(())
    }

    fn release_all_slots(&self) -> Result<(), StateError> {
        self.execute("DELETE FROM budget_slots WHERE node = ?1", vals![self.me()])?;
        Ok(())
    }

    fn slots(&self) -> Result<Vec<Slot>, StateError> {
        rows(
            self.query(
                "SELECT budget, node, kind, name, at, expires_at FROM budget_slots ORDER BY budget, at",
                &[],
            )?,
            slot_row,
        )
    }

    fn report_health(
        &self,
        budget: &str,
        rows: &[(ResourceKey, Health)],
    ) -> Result<(), StateError> {
        let me = self.me().to_string();
        let at = now();
        // 1 healthy, 0 unhealthy with a problem tend would heal, 2
        // unhealthy without one; -1 on the row that says the member looked.
        let scoped: Vec<(String, &ResourceKey, i64)> = rows
            .iter()
            .map(|(k, h)| {
                let code = match h {
                    Health::Healthy => 1,
                    Health::Problem => 0,
                    Health::Unwell => 2,
                };
                (self.scope(k).to_string(), k, code)
            })
            .collect();
        self.with(true, |c| {
            c.execute(
                "DELETE FROM budget_health WHERE budget = ?1 AND node = ?2",
                vals![budget, me.as_str()],
            )?;
            for (scope, key, healthy) in &scoped {
                c.execute(
                    "INSERT INTO budget_health (budget, scope, kind, name, node, healthy, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (budget, scope, kind, name) DO UPDATE SET node = excluded.node,
                       healthy = excluded.healthy, at = excluded.at",
                    vals![
                        budget,
                        scope.as_str(),
                        key.kind.as_str(),
                        key.name.as_str(),
                        me.as_str(),
                        *healthy,
                        at.as_str()
                    ],
                )?;
            }
            // A member with nothing selected still says it looked.
            c.execute(
                "INSERT INTO budget_health (budget, scope, kind, name, node, healthy, at)
                 VALUES (?1, ?2, '', '', ?2, -1, ?3)
                 ON CONFLICT (budget, scope, kind, name) DO UPDATE SET at = excluded.at",
                vals![budget, me.as_str(), at.as_str()],
            )?;
            Ok(())
        })
    }

    fn fleet_health(&self, budget: &str) -> Result<Vec<HealthReport>, StateError> {
        rows(
            self.query(
                "SELECT node, kind, name, healthy, at FROM budget_health WHERE budget = ?1 ORDER BY node, kind, name",
                vals![budget],
            )?,
            |r| {
                let healthy = r.int(3)?;
                Ok(HealthReport {
                    node: r.text(0)?,
                    key: (healthy >= 0)
                        .then(|| Ok::<_, StateError>(ResourceKey::new(r.get(1)?, r.text(2)?)))
                        .transpose()?,
                    healthy: healthy == 1,
                    problem: healthy == 0,
                    at: r.get(4)?,
                })
            },
        )
    }

    fn fleet_changes(&self, since: DateTime<Utc>) -> Result<Vec<(String, ChangeRow)>, StateError> {
        rows(
            self.query(
                &format!(
                    "SELECT {}, node FROM changes WHERE applied_at >= ?1 OR status IN ('verifying', 'failed') ORDER BY id",
                    super::sql_changes::COLUMNS
                ),
                vals![ts(since)],
            )?,
            |r| Ok((r.text(16)?, super::sql_changes::change_row(r)?)),
        )
    }

    fn fleet_last_good(&self) -> Result<Vec<(String, ResourceKey, serde_json::Value)>, StateError> {
        rows(
            self.query("SELECT node, kind, name, spec FROM last_good", &[])?,
            |r| {
                Ok((
                    r.text(0)?,
                    ResourceKey::new(r.get(1)?, r.text(2)?),
                    r.json(3)?,
                ))
            },
        )
    }

    fn save_findings(&self, found: &[Finding]) -> Result<(), StateError> {
        let me = self.me().to_string();
        let at = now();
        self.with(true, |c| {
            c.execute("DELETE FROM findings WHERE node = ?1", vals![me.as_str()])?;
            for f in found {
                c.execute(
                    "INSERT INTO findings (node, kind, name, fingerprint, action, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (node, kind, name, fingerprint) DO UPDATE SET
                       action = excluded.action, at = excluded.at",
                    vals![
                        me.as_str(),
                        f.key.kind.as_str(),
                        f.key.name.as_str(),
                        f.fingerprint.as_str(),
                        f.action.to_string(),
                        at.as_str()
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn findings(&self) -> Result<Vec<Finding>, StateError> {
        rows(
            self.query(
                "SELECT node, kind, name, fingerprint, action, at FROM findings ORDER BY node, kind, name, fingerprint",
                &[],
            )?,
            |r| {
                Ok(Finding {
                    node: r.text(0)?,
                    key: ResourceKey::new(r.get(1)?, r.text(2)?),
                    fingerprint: r.text(3)?,
                    action: r.json(4)?,
                    at: r.get(5)?,
                })
            },
        )
    }

    fn fleet_errors(&self, since: DateTime<Utc>) -> Result<Vec<JournalEntry>, StateError> {
        rows(
            self.query(
                "SELECT id, run_id, at, phase, fingerprint, action, kind, name, commit_sha, outcome, detail, node
                 FROM journal WHERE phase = 'outcome' AND outcome IN ('failed', 'not-verified') AND at >= ?1 ORDER BY id",
                vals![ts(since)],
            )?,
            super::sql_store::journal_row,
        )
    }
}
