//! The SQLite side of changes under verification, the holds on failed
//! specs, emergency pauses, the notifications sent, the matches of
//! signatures in shadow, and the samples forecasts and baselines learn from.

use rusqlite::params;

use super::sqlite::SqliteStore;
use super::sqlite_text::{get, get_opt, W};
use super::{
    now, ChangeRow, ChangeStatus, ChangeVerdict, LastGood, NewChange, NewPause, Notified,
    NotifyEvent, Pause, SampleRow, ShadowRow, StateError, MAX_SAMPLES, SAMPLE_DAYS,
};
use crate::vocab::ResourceKey;

const COLUMNS: &str = "id, kind, name, digest, commit_sha, fields, applied_at, until, status, cause, incident_id, wave, rolled_back, settled_at, good_commit, good_spec";

impl SqliteStore {
    pub(super) fn insert_change(&self, c: &NewChange<'_>) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO changes (kind, name, digest, commit_sha, fields, applied_at, until, status, wave, rolled_back, good_commit, good_spec)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10, ?11)",
            params![
                c.key.kind.as_str(),
                c.key.name,
                c.digest,
                c.commit,
                c.fields.to_string(),
                W(&c.applied_at),
                W(&c.until),
                W(&ChangeStatus::Verifying),
                c.wave,
                c.good.and_then(|g| g.commit.as_deref()),
                c.good.map(|g| g.spec.to_string()),
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub(super) fn update_change(&self, id: i64, v: &ChangeVerdict<'_>) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE changes SET status = ?2, cause = COALESCE(?3, cause), incident_id = COALESCE(?4, incident_id), rolled_back = (rolled_back OR ?5), settled_at = ?6 WHERE id = ?1",
            params![id, W(&v.status), v.cause, v.incident, v.rolled_back, now()],
        )?;
        Ok(())
    }

    pub(super) fn list_changes(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ChangeRow>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM changes WHERE applied_at >= ?1 OR status IN (?2, ?3) ORDER BY id"
        ))?;
        let rows = stmt.query_map(
            params![
                W(&since),
                W(&ChangeStatus::Verifying),
                W(&ChangeStatus::Failed)
            ],
            change_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl SqliteStore {
    pub(super) fn insert_shadow(&self, r: &ShadowRow) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO shadow_matches (signature, kind, name, cause, step, started_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6
             WHERE NOT EXISTS (SELECT 1 FROM shadow_matches WHERE signature = ?1 AND kind = ?2 AND name = ?3 AND ended_at IS NULL)",
            params![r.signature, r.key.kind.as_str(), r.key.name, r.cause, W(&r.step), W(&r.started_at)],
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
        self.conn().execute(
            "UPDATE shadow_matches SET ended_at = ?4, on_its_own = ?5 WHERE signature = ?1 AND kind = ?2 AND name = ?3 AND ended_at IS NULL",
            params![signature, key.kind.as_str(), key.name, W(&at), on_its_own],
        )?;
        Ok(())
    }

    pub(super) fn all_shadow(&self) -> Result<Vec<ShadowRow>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT signature, kind, name, cause, step, started_at, ended_at, on_its_own FROM shadow_matches ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ShadowRow {
                signature: r.get(0)?,
                key: ResourceKey::new(get(r, 1)?, r.get::<_, String>(2)?),
                cause: r.get(3)?,
                step: get(r, 4)?,
                started_at: get(r, 5)?,
                ended_at: get_opt(r, 6)?,
                on_its_own: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn insert_notified(&self, n: &Notified<'_>) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO notifications (incident_id, kind, name, cause, event, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![n.incident, n.key.kind.as_str(), n.key.name, n.cause, W(&n.event), W(&n.at)],
        )?;
        Ok(())
    }

    pub(super) fn any_notified(
        &self,
        n: &Notified<'_>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StateError> {
        let count: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM notifications WHERE event = ?1 AND (incident_id = ?2 OR (kind = ?3 AND name = ?4 AND cause = ?5 AND at >= ?6))",
            params![W(&n.event), n.incident, n.key.kind.as_str(), n.key.name, n.cause, W(&since)],
            |r| r.get(0),
        )?;
        Ok(count > 0)
    }

    pub(super) fn events_of(&self, incident: i64) -> Result<Vec<NotifyEvent>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT event FROM notifications WHERE incident_id = ?1 ORDER BY at")?;
        let rows = stmt.query_map(params![incident], |r| get(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn insert_pause(&self, p: &NewPause<'_>) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO pauses (selector, reason, who, since, until) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![p.selector, p.reason, p.who, now(), p.until.map(super::ts)],
        )?;
        Ok(conn.last_insert_rowid())
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
        let conn = self.conn();
        for p in &ended {
            conn.execute(
                "UPDATE pauses SET resumed_at = ?2 WHERE id = ?1",
                params![p.id, W(&at)],
            )?;
        }
        Ok(ended)
    }

    pub(super) fn live_pauses(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Pause>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, selector, reason, who, since, until FROM pauses WHERE resumed_at IS NULL AND (until IS NULL OR until > ?1) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![W(&now)], |r| {
            Ok(Pause {
                id: r.get(0)?,
                selector: r.get(1)?,
                reason: r.get(2)?,
                who: r.get(3)?,
                since: get(r, 4)?,
                until: get_opt(r, 5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn change_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChangeRow> {
    let json = |i: usize, text: String| {
        serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    let good_spec: Option<String> = r.get(15)?;
    let good = match good_spec {
        Some(text) => Some(LastGood {
            commit: r.get(14)?,
            spec: json(15, text)?,
        }),
        None => None,
    };
    Ok(ChangeRow {
        id: r.get(0)?,
        key: ResourceKey::new(get(r, 1)?, r.get::<_, String>(2)?),
        digest: r.get(3)?,
        commit: r.get(4)?,
        fields: json(5, r.get(5)?)?,
        applied_at: get(r, 6)?,
        until: get(r, 7)?,
        status: get(r, 8)?,
        cause: r.get(9)?,
        incident: r.get(10)?,
        wave: r.get(11)?,
        rolled_back: r.get(12)?,
        settled_at: get_opt(r, 13)?,
        good,
    })
}

impl SqliteStore {
    /// Adds samples in one transaction, then trims each series it touched
    /// to its last `SAMPLE_DAYS` days and at most `MAX_SAMPLES` values.
    pub(super) fn insert_samples(&self, rows: &[SampleRow]) -> Result<(), StateError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut add = tx.prepare_cached(
                "INSERT OR REPLACE INTO samples (kind, name, signal, at, value) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in rows.iter().filter(|r| r.value.is_finite()) {
                add.execute(params![
                    r.key.kind.as_str(),
                    r.key.name,
                    r.signal,
                    W(&r.at),
                    r.value
                ])?;
            }
            let mut series: Vec<(&ResourceKey, &str)> =
                rows.iter().map(|r| (&r.key, r.signal.as_str())).collect();
            series.sort_unstable();
            series.dedup();
            let mut trim = tx.prepare_cached(
                "DELETE FROM samples WHERE kind = ?1 AND name = ?2 AND signal = ?3 AND at < COALESCE(
                    (SELECT at FROM samples WHERE kind = ?1 AND name = ?2 AND signal = ?3 ORDER BY at DESC LIMIT 1 OFFSET ?4), '')",
            )?;
            for (key, signal) in series {
                trim.execute(params![
                    key.kind.as_str(),
                    key.name,
                    signal,
                    MAX_SAMPLES as i64 - 1
                ])?;
            }
            // Every series, those no longer read too, keeps SAMPLE_DAYS.
            let oldest = chrono::Utc::now() - chrono::Duration::days(SAMPLE_DAYS);
            tx.prepare_cached("DELETE FROM samples WHERE at < ?1")?
                .execute(params![W(&oldest)])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(super) fn samples_of(
        &self,
        key: &ResourceKey,
        signal: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(chrono::DateTime<chrono::Utc>, f64)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at, value FROM samples WHERE kind = ?1 AND name = ?2 AND signal = ?3 AND at >= ?4 ORDER BY at",
        )?;
        let rows = stmt.query_map(
            params![key.kind.as_str(), key.name, signal, W(&since)],
            |row| Ok((get(row, 0)?, row.get::<_, f64>(1)?)),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
