//! How typed values become SQLite text, and back: the only place the
//! store's words and times are text. A column that cannot be read back is
//! an error naming the column and the value, never a row silently dropped
//! or a default made up.

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSqlError, ToSqlOutput, Type, ValueRef};
use rusqlite::{Row, ToSql};

use crate::model::health::{Severity, StepAction};
use crate::model::{Kind, Mode};
use crate::vocab::{
    Decision, IncidentStatus, JournalAction, JournalOutcome, JournalPhase, Status, StepOutcome,
};

/// A value kept as one text column.
pub(super) trait Text: Sized {
    fn to_text(&self) -> String;
    fn from_text(s: &str) -> Option<Self>;
}

macro_rules! words_as_text {
    ($($t:ty),* $(,)?) => {$(
        impl Text for $t {
            fn to_text(&self) -> String {
                self.as_str().to_string()
            }

            fn from_text(s: &str) -> Option<Self> {
                <$t>::parse(s)
            }
        }
    )*};
}

words_as_text!(
    super::ProposalState,
    super::ReviewOutcome,
    super::ReviewOperation,
    super::ChangeStatus,
    super::NotifyEvent,
    Kind,
    Mode,
    Severity,
    StepAction,
    Decision,
    IncidentStatus,
    JournalAction,
    JournalOutcome,
    JournalPhase,
    Status,
    StepOutcome,
);

/// RFC 3339 with milliseconds, UTC: text that sorts as time does, so
/// `at >= ?` compares times.
impl Text for DateTime<Utc> {
    fn to_text(&self) -> String {
        super::ts(*self)
    }

    fn from_text(s: &str) -> Option<Self> {
        super::parse_ts(s)
    }
}

/// A typed value as a statement parameter.
pub(super) struct W<'a, T: Text>(pub &'a T);

impl<T: Text> ToSql for W<'_, T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.to_text()))
    }
}

/// An optional typed value as a statement parameter (NULL when absent).
pub(super) struct Wo<'a, T: Text>(pub Option<&'a T>);

impl<T: Text> ToSql for Wo<'_, T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Some(v) => ToSqlOutput::from(v.to_text()),
            None => ToSqlOutput::from(rusqlite::types::Null),
        })
    }
}

#[derive(Debug)]
struct Unreadable {
    column: String,
    value: String,
    what: &'static str,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "column `{}` holds `{}`, which is not a {}",
            self.column, self.value, self.what
        )
    }
}

impl std::error::Error for Unreadable {}

fn unreadable<T>(r: &Row<'_>, i: usize, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        i,
        Type::Text,
        Box::new(Unreadable {
            column: r
                .as_ref()
                .column_name(i)
                .map_or_else(|_| i.to_string(), str::to_string),
            value: value.chars().take(80).collect(),
            what: std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("value"),
        }),
    )
}

/// Reads column `i` as `T`; a value that is not one is an error.
pub(super) fn get<T: Text>(r: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    T::from_text(&s).ok_or_else(|| unreadable::<T>(r, i, &s))
}

/// Reads column `i` as `T` when it is not NULL.
pub(super) fn get_opt<T: Text>(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<T>> {
    match r.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(b) => {
            let s = String::from_utf8_lossy(b);
            T::from_text(&s)
                .map(Some)
                .ok_or_else(|| unreadable::<T>(r, i, &s))
        }
        other => Err(rusqlite::Error::FromSqlConversionFailure(
            i,
            other.data_type(),
            Box::new(FromSqlError::InvalidType),
        )),
    }
}

/// A step index: stored as -1 when it is no step of the runbook.
pub(super) fn step_to_sql(step: Option<u32>) -> i64 {
    step.map_or(-1, i64::from)
}

pub(super) fn step_from_sql(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<u32>> {
    let n: i64 = r.get(i)?;
    Ok(u32::try_from(n).ok())
}

/// A step's action: `observe` when nothing was done.
pub(super) fn step_action_to_sql(a: Option<StepAction>) -> &'static str {
    a.map_or("observe", StepAction::as_str)
}

pub(super) fn step_action_from_sql(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<StepAction>> {
    let s: String = r.get(i)?;
    if s == "observe" {
        return Ok(None);
    }
    StepAction::parse(&s)
        .map(Some)
        .ok_or_else(|| unreadable::<StepAction>(r, i, &s))
}

/// A step's decision: `none` when it was not decided (older stores also
/// wrote `skipped`).
pub(super) fn decision_to_sql(d: Option<Decision>) -> &'static str {
    d.map_or("none", Decision::as_str)
}

pub(super) fn decision_from_sql(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<Decision>> {
    let s: String = r.get(i)?;
    if s == "none" || s == "skipped" {
        return Ok(None);
    }
    Decision::parse(&s)
        .map(Some)
        .ok_or_else(|| unreadable::<Decision>(r, i, &s))
}
