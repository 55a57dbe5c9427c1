//! Reviews: approvals used, the log of operations on the review host, and
//! the proposals last published.

use super::sql::{vals, W};
use super::sql_store::{rows, SqlStore};
use super::{ProposalRow, ReviewEvent, StateError, UsedApproval};
use crate::vocab::ResourceKey;

impl SqlStore {
    pub(super) fn insert_used_approval(&self, u: &UsedApproval) -> Result<(), StateError> {
        self.execute(
            "INSERT INTO approvals_used (kind, name, fingerprint, file, expires, commit_sha, run_id, at, node)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (node, kind, name, fingerprint, expires) DO NOTHING",
            vals![W(&u.key.kind), u.key.name.as_str(), u.fingerprint.as_str(), u.file.as_str(), W(&u.expires), u.commit.as_deref(), u.run_id, W(&u.at), self.scope(&u.key)],
        )?;
        Ok(())
    }

    pub(super) fn list_used_approvals(&self) -> Result<Vec<UsedApproval>, StateError> {
        rows(
            self.query(
                "SELECT kind, name, fingerprint, file, expires, commit_sha, run_id, at FROM approvals_used WHERE node IN ('', ?1) ORDER BY at",
                vals![self.me()],
            )?,
            |r| {
                Ok(UsedApproval {
                    key: ResourceKey::new(r.get(0)?, r.text(1)?),
                    fingerprint: r.text(2)?,
                    file: r.text(3)?,
                    expires: r.get(4)?,
                    commit: r.opt_text(5)?,
                    run_id: r.int(6)?,
                    at: r.get(7)?,
                })
            },
        )
    }

    pub(super) fn insert_review_event(&self, e: &ReviewEvent) -> Result<(), StateError> {
        self.execute(
            "INSERT INTO review_log (at, operation, subject, number, url, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            vals![
                W(&e.at),
                W(&e.operation),
                e.subject.as_str(),
                e.number,
                e.url.as_deref(),
                W(&e.outcome),
                e.detail.as_str()
            ],
        )?;
        Ok(())
    }

    pub(super) fn list_review_events(&self, limit: usize) -> Result<Vec<ReviewEvent>, StateError> {
        rows(
            self.query(
                "SELECT at, operation, subject, number, url, outcome, detail
                 FROM (SELECT * FROM review_log ORDER BY id DESC LIMIT ?1) AS r ORDER BY id",
                vals![super::sql_store::clamp(limit)],
            )?,
            |r| {
                Ok(ReviewEvent {
                    at: r.get(0)?,
                    operation: r.get(1)?,
                    subject: r.text(2)?,
                    number: r.opt_int(3)?,
                    url: r.opt_text(4)?,
                    outcome: r.get(5)?,
                    detail: r.text(6)?,
                })
            },
        )
    }

    pub(super) fn replace_proposals(&self, rows: &[ProposalRow]) -> Result<(), StateError> {
        self.with(true, |c| {
            c.execute("DELETE FROM proposals", &[])?;
            for p in rows {
                c.execute(
                    "INSERT INTO proposals (kind, name, fingerprint, number, url, state, updated_at, head)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (kind, name) DO UPDATE SET fingerprint = excluded.fingerprint, number = excluded.number,
                       url = excluded.url, state = excluded.state, updated_at = excluded.updated_at, head = excluded.head",
                    vals![W(&p.key.kind), p.key.name.as_str(), p.fingerprint.as_str(), p.number, p.url.as_deref(), W(&p.state), W(&p.updated_at), p.head.as_deref()],
                )?;
            }
            Ok(())
        })
    }

    pub(super) fn list_proposals(&self) -> Result<Vec<ProposalRow>, StateError> {
        let head = if self.has_column("proposals", "head")? {
            "head"
        } else {
            "NULL"
        };
        rows(
            self.query(
                &format!(
                    "SELECT kind, name, fingerprint, number, url, state, updated_at, {head} FROM proposals ORDER BY kind, name",
                ),
                &[],
            )?,
            |r| {
                Ok(ProposalRow {
                    key: ResourceKey::new(r.get(0)?, r.text(1)?),
                    fingerprint: r.text(2)?,
                    number: r.opt_int(3)?,
                    url: r.opt_text(4)?,
                    state: r.get(5)?,
                    updated_at: r.get(6)?,
                    head: r.opt_text(7)?,
                })
            },
        )
    }
}
