//! Changes under verification, the holds on failed specs, emergency
//! pauses, the notifications sent, the matches of signatures in shadow,
//! and the samples forecasts and baselines learn from.

use super::sql::{vals, Row, W};
use super::sql_store::{rows, SqlStore};
use super::{
    now, ChangeRow, ChangeStatus, ChangeVerdict, LastGood, NewChange, NewPause, Notified,
    NotifyEvent, Pause, SampleRow, ShadowRow, StateError, MAX_SAMPLES, SAMPLE_DAYS,
};
use crate::vocab::ResourceKey;

pub(super) const COLUMNS: &str = "id, kind, name, digest, commit_sha, fields, applied_at, until, status, cause, incident_id, wave, rolled_back, settled_at, good_commit, good_spec";

impl SqlStore {
    pub(super) fn insert_change(&self, c: &NewChange<'_>) -> Result<i64, StateError> {
        self.insert(
            "INSERT INTO changes (kind, name, digest, commit_sha, fields, applied_at, until, status, wave, rolled_back, good_commit, good_spec, node)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10, ?11, ?12)",
            vals![
                c.key.kind.as_str(),
                c.key.name.as_str(),
                c.digest,
                c.commit,
                c.fields.to_string(),
                W(&c.applied_at),
                W(&c.until),
                W(&ChangeStatus::Verifying),
                c.wave,
                c.good.and_then(|g| g.commit.as_deref()),
                c.good.map(|g| g.spec.to_string()),
                self.scope(c.key),
            ],
        )
    }

    pub(super) fn update_change(&self, id: i64, v: &ChangeVerdict<'_>) -> Result<(), StateError> {
        self.execute(
            "UPDATE changes SET status = ?2, cause = COALESCE(?3, cause), incident_id = COALESCE(?4, incident_id),
               rolled_back = CASE WHEN ?5 = 1 THEN 1 ELSE rolled_back END, settled_at = ?6 WHERE id = ?1",
            vals![id, W(&v.status), v.cause, v.incident, v.rolled_back, now()],
        )?;
        Ok(())
    }

    pub(super) fn list_changes(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ChangeRow>, StateError> {
        rows(
            self.query(
                &format!(
                    "SELECT {COLUMNS} FROM changes WHERE (applied_at >= ?1 OR status IN (?2, ?3)) AND node IN ('', ?4) ORDER BY id"
                ),
                vals![
                    W(&since),
                    W(&ChangeStatus::Verifying),
                    W(&ChangeStatus::Failed),
                    self.me()
                ],
            )?,
            change_row,
        )
    }

    pub(super) fn insert_shadow(&self, r: &ShadowRow) -> Result<(), StateError> {
        self.execute(
            "INSERT INTO shadow_matches (signature, kind, name, cause, step, started_at, node)
             SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), CAST(?3 AS TEXT), CAST(?4 AS TEXT), CAST(?5 AS TEXT), CAST(?6 AS TEXT), CAST(?7 AS TEXT)
             WHERE NOT EXISTS (SELECT 1 FROM shadow_matches WHERE signature = ?1 AND kind = ?2 AND name = ?3 AND node = ?7 AND ended_at IS NULL)",
            vals![r.signature.as_str(), r.key.kind.as_str(), r.key.name.as_str(), r.cause.as_str(), W(&r.step), W(&r.started_at), self.scope(&r.key)],
        )?;
        Ok(())
    }

    pub(super) fn end_shadow(
        &self,
        signature: &str,
        key: &ResourceKey,
        at: chrono::DateTime<chrono::Utc>,
        on_its_own: bool,
    ) -> Result<(), StateError> {
        self.execute(
            "UPDATE shadow_matches SET ended_at = ?4, on_its_own = ?5 WHERE signature = ?1 AND kind = ?2 AND name = ?3 AND node = ?6 AND ended_at IS NULL",
            vals![signature, key.kind.as_str(), key.name.as_str(), W(&at), on_its_own, self.scope(key)],
        )?;
        Ok(())
    }

    pub(super) fn all_shadow(&self) -> Result<Vec<ShadowRow>, StateError> {
        rows(
            self.query(
                "SELECT signature, kind, name, cause, step, started_at, ended_at, on_its_own FROM shadow_matches WHERE node IN ('', ?1) ORDER BY id",
                vals![self.me()],
            )?,
            |r| {
                Ok(ShadowRow {
                    signature: r.text(0)?,
                    key: ResourceKey::new(r.get(1)?, r.text(2)?),
                    cause: r.text(3)?,
                    step: r.get(4)?,
                    started_at: r.get(5)?,
                    ended_at: r.get_opt(6)?,
                    on_its_own: r.opt_bool(7)?,
                })
            },
        )
    }

    pub(super) fn insert_notified(&self, n: &Notified<'_>) -> Result<(), StateError> {
        self.execute(
            "INSERT INTO notifications (incident_id, kind, name, cause, event, at, node) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            vals![n.incident, n.key.kind.as_str(), n.key.name.as_str(), n.cause, W(&n.event), W(&n.at), self.scope(n.key)],
        )?;
        Ok(())
    }

    pub(super) fn any_notified(
        &self,
        n: &Notified<'_>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StateError> {
        let found = self.query_opt(
            "SELECT 1 FROM notifications WHERE event = ?1 AND (incident_id = ?2 OR (kind = ?3 AND name = ?4 AND node = ?7 AND cause = ?5 AND at >= ?6)) LIMIT 1",
            vals![W(&n.event), n.incident, n.key.kind.as_str(), n.key.name.as_str(), n.cause, W(&since), self.scope(n.key)],
        )?;
        Ok(found.is_some())
    }

    pub(super) fn events_of(&self, incident: i64) -> Result<Vec<NotifyEvent>, StateError> {
        rows(
            self.query(
                "SELECT event FROM notifications WHERE incident_id = ?1 ORDER BY at",
                vals![incident],
            )?,
            |r| r.get(0),
        )
    }

    pub(super) fn insert_pause(&self, p: &NewPause<'_>) -> Result<i64, StateError> {
        self.insert(
            "INSERT INTO pauses (selector, reason, who, since, until) VALUES (?1, ?2, ?3, ?4, ?5)",
            vals![p.selector, p.reason, p.who, now(), p.until.map(super::ts)],
        )
    }

    pub(super) fn end_pauses(
        &self,
        selector: Option<&str>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Pause>, StateError> {
        let ended: Vec<Pause> = self
            .live_pauses(at)?
            .into_iter()
            .filter(|p| selector.is_none_or(|s| s == p.selector))
            .collect();
        self.with(true, |c| {
            for p in &ended {
                c.execute(
                    "UPDATE pauses SET resumed_at = ?2 WHERE id = ?1",
                    vals![p.id, W(&at)],
                )?;
            }
            Ok(())
        })?;
        Ok(ended)
    }

    pub(super) fn live_pauses(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Pause>, StateError> {
        rows(
            self.query(
                "SELECT id, selector, reason, who, since, until FROM pauses WHERE resumed_at IS NULL AND (until IS NULL OR until > ?1) ORDER BY id",
                vals![W(&now)],
            )?,
            |r| {
                Ok(Pause {
                    id: r.int(0)?,
                    selector: r.text(1)?,
                    reason: r.text(2)?,
                    who: r.text(3)?,
                    since: r.get(4)?,
                    until: r.get_opt(5)?,
                })
            },
        )
    }

    /// Adds samples in one transaction, then trims each series it touched
    /// to its last `SAMPLE_DAYS` days and at most `MAX_SAMPLES` values.
    pub(super) fn insert_samples(&self, rows: &[SampleRow]) -> Result<(), StateError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.with(true, |c| {
            for r in rows.iter().filter(|r| r.value.is_finite()) {
                c.execute(
                    "INSERT INTO samples (kind, name, signal, at, value, node) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (node, kind, name, signal, at) DO UPDATE SET value = excluded.value",
                    vals![
                        r.key.kind.as_str(),
                        r.key.name.as_str(),
                        r.signal.as_str(),
                        W(&r.at),
                        r.value,
                        self.scope(&r.key)
                    ],
                )?;
            }
            let mut series: Vec<(&ResourceKey, &str)> =
                rows.iter().map(|r| (&r.key, r.signal.as_str())).collect();
            series.sort_unstable();
            series.dedup();
            for (key, signal) in series {
                c.execute(
                    "DELETE FROM samples WHERE kind = ?1 AND name = ?2 AND signal = ?3 AND node = ?5 AND at < COALESCE(
                        (SELECT at FROM samples WHERE kind = ?1 AND name = ?2 AND signal = ?3 AND node = ?5 ORDER BY at DESC LIMIT 1 OFFSET ?4), '')",
                    vals![key.kind.as_str(), key.name.as_str(), signal, MAX_SAMPLES as i64 - 1, self.scope(key)],
                )?;
            }
            // Every series, those no longer read too, keeps SAMPLE_DAYS.
            let oldest = chrono::Utc::now() - chrono::Duration::days(SAMPLE_DAYS);
            c.execute("DELETE FROM samples WHERE at < ?1", vals![W(&oldest)])?;
            Ok(())
        })
    }

    pub(super) fn samples_of(
        &self,
        key: &ResourceKey,
        signal: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(chrono::DateTime<chrono::Utc>, f64)>, StateError> {
        rows(
            self.query(
                "SELECT at, value FROM samples WHERE kind = ?1 AND name = ?2 AND signal = ?3 AND node = ?5 AND at >= ?4 ORDER BY at",
                vals![key.kind.as_str(), key.name.as_str(), signal, W(&since), self.scope(key)],
            )?,
            |r| Ok((r.get(0)?, r.real(1)?)),
        )
    }
}

pub(super) fn change_row(r: &Row) -> Result<ChangeRow, StateError> {
    let good = match r.opt_json(15)? {
        Some(spec) => Some(LastGood {
            commit: r.opt_text(14)?,
            spec,
        }),
        None => None,
    };
    Ok(ChangeRow {
        id: r.int(0)?,
        key: ResourceKey::new(r.get(1)?, r.text(2)?),
        digest: r.text(3)?,
        commit: r.opt_text(4)?,
        fields: r.json(5)?,
        applied_at: r.get(6)?,
        until: r.get(7)?,
        status: r.get(8)?,
        cause: r.opt_text(9)?,
        incident: r.opt_int(10)?,
        wave: r.opt_int(11)?.map(|w| w as u32),
        rolled_back: r.int(12)? != 0,
        settled_at: r.get_opt(13)?,
        good,
    })
}
