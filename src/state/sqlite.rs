//! The embedded default store: one SQLite database, `tend.db`, in the state
//! directory. The directory is private (0700) and every file tend keeps
//! there is 0600: the store holds declared specs, which may carry secrets.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql};

use super::sql::{fingerprint_key, Conn, Db, Row, Val, Work, BUDGET_SCHEMA, NODE_TABLES, SCHEMA};
use super::sql_store::SqlStore;
use super::{hostname, now, BackendError, StateError};

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> StateError {
        StateError::Backend(BackendError::new(e))
    }
}

/// SQLite behind a mutex: one connection, shared by every task of a pass.
pub struct Sqlite {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// Whether `table` has `column` (a state written by an earlier tend and
/// opened read-only may lack one).
pub(super) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    for name in names {
        if name? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Adds the columns a state written by an earlier tend lacks.
fn add_columns(conn: &Connection) -> rusqlite::Result<()> {
    if !has_column(conn, "proposals", "head")? {
        conn.execute_batch("ALTER TABLE proposals ADD COLUMN head TEXT")?;
    }
    for column in ["why", "change"] {
        if !has_column(conn, "incidents", column)? {
            conn.execute_batch(&format!("ALTER TABLE incidents ADD COLUMN {column} TEXT"))?;
        }
    }
    // Every row of one machine's store is its own (node ''); the upserts
    // name the node in their conflict target, which an index must match.
    for (table, unique) in NODE_TABLES {
        if !has_column(conn, table, "node")? {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN node TEXT NOT NULL DEFAULT ''"
            ))?;
            if let Some(columns) = unique {
                conn.execute_batch(&format!(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {table}_node ON {table} ({columns})"
                ))?;
            }
        }
    }
    Ok(())
}

const RUN_LOCK: &str = "
CREATE TABLE IF NOT EXISTS run_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    start_time INTEGER NOT NULL,
    host TEXT NOT NULL,
    command TEXT NOT NULL,
    since TEXT NOT NULL
);
";

/// Kernel start time of a pid, to tell a live lock holder from a reused pid.
fn start_time(pid: i64) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

const DB: &str = "tend.db";

impl Sqlite {
    /// Opens an existing state database, or `None` when there is none yet
    /// (a plan before the first apply).
    ///
    /// For commands that only read (`plan`, `history`, `incidents`): a
    /// store that cannot be written (a read-only mount, a restored cache)
    /// is read as it is, with a warning that names why.
    pub fn open_existing(dir: &Path) -> Result<Option<SqlStore>, StateError> {
        if !dir.join(DB).exists() {
            return Ok(None);
        }
        match Sqlite::open(dir) {
            Ok(s) => Ok(Some(s)),
            Err(e @ (StateError::Open { .. } | StateError::Dir { .. })) => {
                let Ok(s) = Sqlite::open_read_only(dir) else {
                    return Err(e);
                };
                tracing::warn!(
                    dir = %dir.display(),
                    "The state directory cannot be written ({e}); reading it as it is."
                );
                Ok(Some(s))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the database without writing anything, not even SQLite's
    /// lock and log files.
    pub fn open_read_only(dir: &Path) -> Result<SqlStore, StateError> {
        use rusqlite::OpenFlags;
        let path = dir.join(DB);
        let uri = format!("file:{}?immutable=1", path.display());
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .and_then(|c| {
            // Reading is what fails on a file that is not a database.
            c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
            Ok(c)
        })
        .map_err(|source| StateError::Open {
            path: path.display().to_string(),
            cause: BackendError::new(source),
        })?;
        // An older state has no key yet; fingerprints of secret values are
        // then keyed for this process only.
        let _ = fingerprint_key(&mut SqliteConn(&conn), false);
        Ok(SqlStore::new(Sqlite {
            conn: Mutex::new(conn),
            path,
        }))
    }

    pub fn open(dir: &Path) -> Result<SqlStore, StateError> {
        private_dir(dir)?;
        let path = dir.join(DB);
        let conn = Connection::open(&path).map_err(|source| StateError::Open {
            path: path.display().to_string(),
            cause: BackendError::new(source),
        })?;
        let open = |e: rusqlite::Error| StateError::Open {
            path: path.display().to_string(),
            cause: BackendError::new(e),
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(open)?;
        conn.execute_batch(&SCHEMA.replace("{id}", "INTEGER PRIMARY KEY AUTOINCREMENT"))
            .map_err(open)?;
        conn.execute_batch(BUDGET_SCHEMA).map_err(open)?;
        conn.execute_batch(RUN_LOCK).map_err(open)?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(open)?;
        match add_columns(&conn) {
            Ok(()) => conn.execute_batch("COMMIT").map_err(open)?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(open(e));
            }
        }
        for f in [DB, "tend.db-wal", "tend.db-shm"] {
            private_file(&dir.join(f))?;
        }
        fingerprint_key(&mut SqliteConn(&conn), true).map_err(|e| StateError::Open {
            path: path.display().to_string(),
            cause: BackendError::new(std::io::Error::other(e.to_string())),
        })?;
        Ok(SqlStore::new(Sqlite {
            conn: Mutex::new(conn),
            path,
        }))
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere while holding the lock leaves SQLite itself
        // consistent (every write is one statement or a transaction).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates the state directory 0700, or tightens an existing one.
pub(super) fn private_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |cause| StateError::Dir {
        path: dir.display().to_string(),
        cause,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let meta = std::fs::metadata(dir).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), "The state directory was readable by others; tightened to 0700.");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Makes a file tend keeps in the state directory 0600, when it exists.
pub(super) fn private_file(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |cause| StateError::Dir {
                path: path.display().to_string(),
                cause,
            },
        )?;
    }
    Ok(())
}

impl Db for Sqlite {
    fn run(&self, tx: bool, work: &mut Work<'_>) -> Result<(), StateError> {
        let mut conn = self.conn();
        if !tx {
            return work(&mut SqliteConn(&conn));
        }
        let t = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        work(&mut SqliteConn(&t))?;
        t.commit()?;
        Ok(())
    }

    fn lock(&self, command: &str) -> Result<(), StateError> {
        let me = std::process::id() as i64;
        let my_start = start_time(me).unwrap_or(0);
        let host = hostname();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let holder: Option<(i64, i64, String, String, String)> = tx
            .query_row(
                "SELECT pid, start_time, host, command, since FROM run_lock WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        if let Some((pid, start, h, cmd, since)) = holder {
            let alive = h != host || start_time(pid) == Some(start);
            if alive && pid != me {
                return Err(StateError::Locked {
                    path: self.path.display().to_string(),
                    pid,
                    host: h,
                    command: cmd,
                    since,
                });
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO run_lock (id, pid, start_time, host, command, since) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![me, my_start, host, command, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn unlock(&self) -> Result<(), StateError> {
        self.conn().execute(
            "DELETE FROM run_lock WHERE id = 1 AND pid = ?1",
            params![std::process::id() as i64],
        )?;
        Ok(())
    }

    fn has_column(&self, table: &str, column: &str) -> Result<bool, StateError> {
        Ok(has_column(&self.conn(), table, column)?)
    }
}

impl ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::from(rusqlite::types::Null),
            Val::Int(n) => ToSqlOutput::from(*n),
            Val::Real(n) => ToSqlOutput::from(*n),
            Val::Text(s) => ToSqlOutput::from(s.as_str()),
        })
    }
}

/// One SQLite connection (or a transaction on it) as a [`Conn`].
struct SqliteConn<'a>(&'a Connection);

impl Conn for SqliteConn<'_> {
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StateError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StateError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let names: Arc<[String]> = stmt.column_names().map(str::to_string).collect();
        let width = names.len();
        let mut found = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(r) = found.next()? {
            let mut vals = Vec::with_capacity(width);
            for i in 0..width {
                vals.push(match r.get_ref(i)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(n) => Val::Int(n),
                    ValueRef::Real(n) => Val::Real(n),
                    ValueRef::Text(b) | ValueRef::Blob(b) => {
                        Val::Text(String::from_utf8_lossy(b).into_owned())
                    }
                });
            }
            out.push(Row::new(Arc::clone(&names), vals));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{JournalRecord, NewRun, Store};
    use crate::vocab::ResourceKey;

    fn rec<'a>(run_id: i64, fp: &'a str, key: &'a ResourceKey) -> JournalRecord<'a> {
        JournalRecord {
            run_id,
            fingerprint: fp,
            action: crate::vocab::JournalAction::Act(crate::vocab::ActionType::Update),
            key,
            commit: None,
            outcome: None,
            detail: "",
        }
    }

    fn key() -> ResourceKey {
        ResourceKey::new(crate::model::Kind::HostFile, "a")
    }

    fn begin(s: &SqlStore) -> i64 {
        s.begin_run(&NewRun {
            command: "apply",
            origin: "x",
            commit: None,
            mode: crate::model::Mode::Auto,
        })
        .unwrap()
    }

    /// A store that cannot be written is read as it is by the commands that
    /// only read. (Root writes through file modes, so the write failure is
    /// made here with a directory where SQLite's log file must go.)
    #[test]
    fn a_store_that_cannot_be_written_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sqlite::open(dir.path()).unwrap();
        let k = key();
        let run = begin(&s);
        s.intent(&rec(run, "a", &k)).unwrap();
        drop(s);
        std::fs::create_dir(dir.path().join("tend.db-wal")).unwrap();
        assert!(Sqlite::open(dir.path()).is_err());
        let s = Sqlite::open_existing(dir.path()).unwrap().unwrap();
        assert_eq!(s.history(None, 10, None).unwrap().len(), 1);
        assert!(s.intent(&rec(run, "b", &k)).is_err(), "nothing is written");
    }

    /// Regression: the database was created 0644 in a 0755 directory and
    /// holds declared specs with their secrets.
    #[test]
    fn the_state_directory_and_database_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(Sqlite::open(&state).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(DB)), 0o600);
        std::fs::set_permissions(state.join(DB), std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Sqlite::open(&state).unwrap());
        assert_eq!(mode(&state.join(DB)), 0o600);
    }

    #[test]
    fn a_second_holder_is_refused_and_a_dead_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sqlite::open(dir.path()).unwrap();
        s.lock("apply").unwrap();
        // A live foreign holder: pid 1 with its real start time.
        s.execute(
            "UPDATE run_lock SET pid = 1, start_time = ?1",
            crate::state::sql::vals![start_time(1).unwrap_or(0)],
        )
        .unwrap();
        assert!(matches!(
            s.lock("apply"),
            Err(StateError::Locked { pid: 1, .. })
        ));
        // A holder whose start time no longer matches is gone.
        s.execute("UPDATE run_lock SET start_time = -5", &[])
            .unwrap();
        s.lock("apply").unwrap();
    }

    #[test]
    fn the_run_lock_guard_releases_the_lock_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = std::sync::Arc::new(Sqlite::open(dir.path()).unwrap());
        let store: std::sync::Arc<dyn Store> = sqlite.clone();
        let held = || -> i64 {
            sqlite.query("SELECT COUNT(*) FROM run_lock", &[]).unwrap()[0]
                .int(0)
                .unwrap()
        };
        let guard = crate::state::lock(&store, "tend apply").unwrap();
        assert_eq!(held(), 1);
        drop(guard);
        assert_eq!(held(), 0);
    }

    /// A state written before rows named their node is brought up to date
    /// in place: every row is this machine's, and the upserts that name
    /// the node in their conflict target still update one row.
    #[test]
    fn a_state_from_before_nodes_gains_them_and_upserts_still_update() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join(DB)).unwrap();
        old.execute_batch(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL,
                finished_at TEXT, command TEXT NOT NULL, origin TEXT NOT NULL, commit_sha TEXT,
                mode TEXT NOT NULL, status TEXT);
             CREATE TABLE signal_state (kind TEXT NOT NULL, name TEXT NOT NULL, signal TEXT NOT NULL,
                status TEXT NOT NULL, since TEXT NOT NULL, last_healthy TEXT, value REAL,
                detail TEXT NOT NULL, observed_at TEXT NOT NULL, PRIMARY KEY (kind, name, signal));
             INSERT INTO signal_state VALUES ('host.File', 'a', 'up', 'healthy',
                '2026-01-01T00:00:00.000Z', NULL, 1.0, '', '2026-01-01T00:00:00.000Z');",
        )
        .unwrap();
        drop(old);
        let s = Sqlite::open(dir.path()).unwrap();
        let k = key();
        let now = chrono::Utc::now();
        let row = |status| crate::state::SignalRow {
            signal: "up".into(),
            status,
            since: now,
            last_healthy: None,
            value: None,
            detail: String::new(),
        };
        s.remember(&k, &[row(crate::vocab::Status::Unhealthy)])
            .unwrap();
        s.remember(&k, &[row(crate::vocab::Status::Unknown)])
            .unwrap();
        let rows = s.query("SELECT status FROM signal_state", &[]).unwrap();
        assert_eq!(rows.len(), 1, "one row, updated in place");
        assert_eq!(rows[0].text(0).unwrap(), "unknown");
        let run = begin(&s);
        s.intent(&rec(run, "a", &k)).unwrap();
        assert_eq!(s.history(None, 10, None).unwrap().len(), 1);
    }
}
