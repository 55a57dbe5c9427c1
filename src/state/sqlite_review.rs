//! The SQLite side of reviews: approvals used, the log of operations on
//! the review host, and the proposals last published.

use rusqlite::params;

use super::sqlite::SqliteStore;
use super::sqlite_text::{get, W};
use super::{ProposalRow, ReviewEvent, StateError, UsedApproval};
use crate::vocab::ResourceKey;

impl SqliteStore {
    pub(super) fn insert_used_approval(&self, u: &UsedApproval) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO approvals_used (kind, name, fingerprint, file, expires, commit_sha, run_id, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![W(&u.key.kind), u.key.name, u.fingerprint, u.file, W(&u.expires), u.commit, u.run_id, W(&u.at)],
        )?;
        Ok(())
    }

    pub(super) fn list_used_approvals(&self) -> Result<Vec<UsedApproval>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT kind, name, fingerprint, file, expires, commit_sha, run_id, at FROM approvals_used ORDER BY at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(UsedApproval {
                key: ResourceKey::new(get(r, 0)?, r.get::<_, String>(1)?),
                fingerprint: r.get(2)?,
                file: r.get(3)?,
                expires: get(r, 4)?,
                commit: r.get(5)?,
                run_id: r.get(6)?,
                at: get(r, 7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn insert_review_event(&self, e: &ReviewEvent) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO review_log (at, operation, subject, number, url, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                W(&e.at),
                W(&e.operation),
                e.subject,
                e.number,
                e.url,
                W(&e.outcome),
                e.detail
            ],
        )?;
        Ok(())
    }

    pub(super) fn list_review_events(&self, limit: usize) -> Result<Vec<ReviewEvent>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, operation, subject, number, url, outcome, detail
             FROM (SELECT * FROM review_log ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(ReviewEvent {
                at: get(r, 0)?,
                operation: get(r, 1)?,
                subject: r.get(2)?,
                number: r.get(3)?,
                url: r.get(4)?,
                outcome: get(r, 5)?,
                detail: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn replace_proposals(&self, rows: &[ProposalRow]) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM proposals", [])?;
        for p in rows {
            tx.execute(
                "INSERT OR REPLACE INTO proposals (kind, name, fingerprint, number, url, state, updated_at, head)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![W(&p.key.kind), p.key.name, p.fingerprint, p.number, p.url, W(&p.state), W(&p.updated_at), p.head],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(super) fn list_proposals(&self) -> Result<Vec<ProposalRow>, StateError> {
        let conn = self.conn();
        let head = if super::sqlite::has_column(&conn, "proposals", "head")? {
            "head"
        } else {
            "NULL"
        };
        let mut stmt = conn.prepare(&format!(
            "SELECT kind, name, fingerprint, number, url, state, updated_at, {head} FROM proposals ORDER BY kind, name",
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(ProposalRow {
                key: ResourceKey::new(get(r, 0)?, r.get::<_, String>(1)?),
                fingerprint: r.get(2)?,
                number: r.get(3)?,
                url: r.get(4)?,
                state: get(r, 5)?,
                updated_at: get(r, 6)?,
                head: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
