//! A shared PostgreSQL store, for several watchers on one database
//! (`--state postgres://…`, `TEND_STATE_URL` or `Settings spec.state.url`).
//! The same tables as the embedded SQLite store, created and migrated by
//! tend under a schema version; the password comes only from the
//! environment or a file, never from Git or the command line.
//!
//! The store's methods are synchronous and are called from async tasks;
//! the driver runs its own small runtime, which may not be entered from a
//! runtime thread, so statements run on a scoped thread of their own there
//! (the calling task waits, as it does on SQLite).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::config::Host;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Statement};

use super::sql::{fingerprint_key, vals, with, Conn, Db, Row, Val, Work, BUDGET_SCHEMA, SCHEMA};
use super::sql_store::SqlStore;
use super::{now, BackendError, Fleet, Lease, Member, StateError};

/// The schema version this tend writes. A database at a newer version was
/// written by a newer tend and is refused, never half-understood.
const SCHEMA_VERSION: i64 = 1;

/// Tables only the shared store keeps: the run lock of each node, the
/// members, the leases of shared resources, and the lease epoch each
/// intent was journaled under. Times here are the database's.
const SHARED_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS run_locks (
    node TEXT PRIMARY KEY,
    pid BIGINT NOT NULL,
    host TEXT NOT NULL,
    command TEXT NOT NULL,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    node TEXT PRIMARY KEY,
    pid BIGINT NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX IF NOT EXISTS leases_holder ON leases (holder, expires_at);
ALTER TABLE journal ADD COLUMN IF NOT EXISTS epoch BIGINT;
CREATE INDEX IF NOT EXISTS journal_node ON journal (node, at);
CREATE INDEX IF NOT EXISTS incidents_node ON incidents (node, status);
";

/// Serializes schema creation and migration across members starting at
/// once (a transaction-scoped advisory lock).
const MIGRATION_LOCK: i64 = 0x7465_6e64_0001;

/// Where a shared store is, with the password resolved.
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    /// TLS when the URL asks for it (`sslmode=require`), verifying the
    /// server against the system's roots and `sslrootcert`.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The URL without its password, for messages.
    shown: String,
    /// This member's node name (the run lock is per node).
    node: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.shown)
            .field("node", &self.node)
            .finish()
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.shown == other.shown
            && self.node == other.node
            && self.config.get_password() == other.config.get_password()
    }
}

/// Where a state URL was given: a password may be written into it only
/// where other users cannot read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSource {
    /// `TEND_STATE_URL`.
    Environment,
    /// `--state` (visible to every user in the process list).
    CommandLine,
    /// `Settings spec.state.url` (in Git).
    Settings,
}

impl UrlSource {
    fn words(self) -> &'static str {
        match self {
            UrlSource::Environment => "TEND_STATE_URL",
            UrlSource::CommandLine => "--state",
            UrlSource::Settings => "Settings spec.state.url",
        }
    }
}

fn bad(what: String) -> StateError {
    StateError::Url(what)
}

impl Target {
    /// Parses a state URL (`postgres://user@host:port/db?…` or libpq's
    /// `key=value` form). The password, when the URL has none, comes from
    /// `TEND_STATE_PASSWORD`, else from `password_file` (or
    /// `TEND_STATE_PASSWORD_FILE`).
    pub fn parse(
        url: &str,
        source: UrlSource,
        password_file: Option<&Path>,
        node: &str,
    ) -> Result<Target, StateError> {
        let (url, tls) = tls_params(url);
        let mut config = postgres::Config::from_str(&url).map_err(|e| {
            bad(format!(
                "{} is not a PostgreSQL URL ({e}); expected postgres://USER@HOST:PORT/DATABASE",
                source.words()
            ))
        })?;
        if config.get_password().is_some() && source != UrlSource::Environment {
            return Err(bad(format!(
                "{} carries a password; give it in TEND_STATE_PASSWORD or a password file instead",
                source.words()
            )));
        }
        if config.get_user().is_none() {
            return Err(bad(format!(
                "{} names no user; write postgres://USER@HOST/DATABASE",
                source.words()
            )));
        }
        if config.get_hosts().is_empty() {
            return Err(bad(format!(
                "{} names no host; write postgres://USER@HOST/DATABASE",
                source.words()
            )));
        }
        if config.get_password().is_none() {
            if let Some(p) = std::env::var_os("TEND_STATE_PASSWORD").filter(|p| !p.is_empty()) {
                config.password(p.to_string_lossy().as_bytes());
            } else if let Some(file) = password_file
                .map(Path::to_path_buf)
                .or_else(|| std::env::var_os("TEND_STATE_PASSWORD_FILE").map(PathBuf::from))
            {
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    bad(format!(
                        "cannot read the state password file {}: {e}",
                        file.display()
                    ))
                })?;
                config.password(text.trim_end_matches(['\r', '\n']).as_bytes());
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A peer that stops answering is noticed in seconds, not at the
        // kernel's TCP timeout of minutes.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(10));
        }
        config.keepalives_idle(Duration::from_secs(5));
        config.application_name(&format!("tend {node}"));
        let shown = shown(&config);
        let tls = match (config.get_ssl_mode(), tls.root) {
            (postgres::config::SslMode::Require, root) => Some(Arc::new(tls_config(root.as_deref())?)),
            (_, Some(root)) => {
                return Err(bad(format!(
                    "{} names sslrootcert {} but not sslmode=require (or verify-full): add it, or the certificate is never checked",
                    source.words(),
                    root.display()
                )))
            }
            (_, None) => None,
        };
        Ok(Target {
            tls,
            config,
            shown,
            node: node.to_string(),
        })
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn node(&self) -> &str {
        &self.node
    }
}

/// What the URL says of TLS beyond what the driver reads.
struct TlsParams {
    /// `sslrootcert`: a PEM file of the authorities to trust.
    root: Option<PathBuf>,
}

/// Takes `sslrootcert` out of the URL (the driver does not know it) and
/// reads libpq's `sslmode=verify-ca` and `verify-full` as `require`: the
/// server's certificate is always verified when TLS is on.
fn tls_params(url: &str) -> (String, TlsParams) {
    let mut root = None;
    let mut keep = |kv: &str| -> Option<String> {
        match kv.split_once('=') {
            Some(("sslrootcert", path)) => {
                root = Some(PathBuf::from(path));
                None
            }
            Some(("sslmode", "verify-ca" | "verify-full")) => Some("sslmode=require".into()),
            _ => Some(kv.to_string()),
        }
    };
    let url = match url.split_once('?') {
        Some((base, query)) if url.contains("://") => {
            let kept: Vec<String> = query.split('&').filter_map(&mut keep).collect();
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
        _ if url.contains("://") => url.to_string(),
        _ => url
            .split_whitespace()
            .filter_map(&mut keep)
            .collect::<Vec<_>>()
            .join(" "),
    };
    (url, TlsParams { root })
}

/// A TLS client trusting the system's roots and, when given, the
/// authorities in `root`.
fn tls_config(root: Option<&Path>) -> Result<rustls::ClientConfig, StateError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = root {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(format!("cannot read sslrootcert {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(bad(format!(
                "sslrootcert {} holds no PEM certificate",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("sslrootcert {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Target {
    /// Connects as the URL says: TLS when it asks for it, else plain.
    fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (**tls).clone(),
                )),
            None => self.config.connect(NoTls),
        }
    }
}

/// `postgres://user@host:port/db`, never with the password.
fn shown(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
    )
}

/// The driver's message with its causes ("error connecting to server:
/// Connection refused"), which its own text leaves out.
#[derive(Debug)]
struct Chain(String);

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Chain {}

fn chain(e: &(dyn std::error::Error + 'static)) -> BackendError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    BackendError::new(Chain(text))
}

impl From<postgres::Error> for StateError {
    fn from(e: postgres::Error) -> StateError {
        StateError::Backend(chain(&e))
    }
}

/// One connection and the statements prepared on it.
struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// A shared PostgreSQL database behind one connection, reconnected when
/// it is lost.
pub struct Postgres {
    target: Target,
    session: Mutex<Option<Session>>,
    /// The command holding the run lock, to take it again on a new
    /// connection (a session's advisory lock ends with the session).
    held: Mutex<Option<String>>,
    /// The leases held at the last round: when it began, and for how long.
    owned: Mutex<Owned>,
    /// This machine's state directory, and its lock while the run lock is
    /// held (the database's lock is per node name only).
    dir: PathBuf,
    machine: Mutex<Option<super::machine::MachineLock>>,
}

#[derive(Default)]
struct Owned {
    keys: HashSet<String>,
    since: Option<Instant>,
    lease: Duration,
}

impl Owned {
    /// The last round is younger than two thirds of its lease.
    fn fresh(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() < self.lease * 2 / 3)
    }
}

/// Runs `f` where the driver may block: on this thread outside a runtime,
/// else on a scoped thread of its own.
fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Postgres {
    /// Connects, creates or migrates the schema, and reads the key secret
    /// values are fingerprinted under. `dir` is this machine's state
    /// directory (its host records, and the machine's run lock).
    pub fn open(target: &Target, dir: &Path) -> Result<SqlStore, StateError> {
        let pg = Postgres {
            target: target.clone(),
            session: Mutex::new(None),
            held: Mutex::new(None),
            owned: Mutex::new(Owned::default()),
            dir: dir.to_path_buf(),
            machine: Mutex::new(None),
        };
        off_runtime(|| -> Result<(), StateError> {
            let mut session = pg.connect()?;
            migrate(&mut session.client).map_err(|e| StateError::Open {
                path: pg.target.shown.clone(),
                cause: chain(e.as_ref()),
            })?;
            fingerprint_key(
                &mut PgConn {
                    client: &mut session.client,
                    statements: &mut session.statements,
                },
                true,
            )?;
            *lock(&pg.session) = Some(session);
            Ok(())
        })?;
        Ok(SqlStore::new(pg))
    }

    fn open_error(&self, e: postgres::Error) -> StateError {
        StateError::Open {
            path: self.target.shown.clone(),
            cause: chain(&e),
        }
    }

    fn connect(&self) -> Result<Session, StateError> {
        let mut client = self.target.connect().map_err(|e| self.open_error(e))?;
        client
            .batch_execute("SET statement_timeout = '5s'; SET lock_timeout = '2s'")
            .map_err(|e| self.open_error(e))?;
        Ok(Session {
            client,
            statements: HashMap::new(),
        })
    }

    /// The live session, connecting again when the last one was lost (and
    /// taking the run lock again when this process held it).
    fn session<'a>(
        &self,
        guard: &'a mut MutexGuard<'_, Option<Session>>,
    ) -> Result<&'a mut Session, StateError> {
        if guard.as_ref().is_none_or(|s| s.client.is_closed()) {
            **guard = None;
            let mut session = self.connect()?;
            if let Some(command) = lock(&self.held).clone() {
                self.take_lock(&mut session, &command, true)?;
            }
            **guard = Some(session);
        }
        Ok(guard.as_mut().expect("connected above"))
    }

    /// Takes the run lock of this node on session `s`; `again` when this
    /// store held it on a connection it lost.
    fn take_lock(&self, s: &mut Session, command: &str, again: bool) -> Result<(), StateError> {
        let node = self.target.node.as_str();
        let mut c = PgConn {
            client: &mut s.client,
            statements: &mut s.statements,
        };
        let try_lock = |c: &mut PgConn<'_, Client>| -> Result<bool, StateError> {
            Ok(c.query(
                "SELECT pg_try_advisory_lock(hashtext('tend run ' || ?1))",
                vals![node],
            )?
            .first()
            .map(|r| r.int(0))
            .transpose()?
                == Some(1))
        };
        let mut got = try_lock(&mut c)?;
        let holder = if got {
            None
        } else {
            c.query_opt(
                "SELECT pid, host, command, since FROM run_locks WHERE node = ?1",
                vals![node],
            )?
        };
        let me = (i64::from(std::process::id()), super::hostname());
        let mine = match &holder {
            Some(r) => again && (r.int(0)?, r.text(1)?) == me,
            None => false,
        };
        if mine {
            // This process held it on a connection it lost; the server has
            // not noticed that one is gone yet (it can take hours on a
            // silent network). It is ended, and the lock taken again.
            c.query(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND a.application_name = ?1 AND l.pid <> pg_backend_pid()",
                vals![format!("tend {node}")],
            )?;
            for _ in 0..50 {
                got = try_lock(&mut c)?;
                if got {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if !got {
            let (pid, host, command, since) = match holder {
                Some(r) => (r.int(0)?, r.text(1)?, r.text(2)?, r.text(3)?),
                None => (0, node.to_string(), "tend".to_string(), String::new()),
            };
            return Err(StateError::Locked {
                path: format!("{} (node {node})", self.target.shown),
                pid,
                host,
                command,
                since,
            });
        }
        c.execute(
            "INSERT INTO run_locks (node, pid, host, command, since) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (node) DO UPDATE SET pid = excluded.pid, host = excluded.host,
               command = excluded.command, since = excluded.since",
            vals![
                node,
                i64::from(std::process::id()),
                super::hostname(),
                command,
                now()
            ],
        )?;
        Ok(())
    }
}

/// Closing a connection blocks too: it is closed where it may.
impl Drop for Postgres {
    fn drop(&mut self) {
        let session = lock(&self.session).take();
        if session.is_some() {
            off_runtime(move || drop(session));
        }
    }
}

/// Creates the schema, or migrates it to [`SCHEMA_VERSION`], under a lock
/// so members starting together do it once.
fn migrate(client: &mut Client) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )?;
    let version: Option<i64> = tx
        .query_opt("SELECT value FROM meta WHERE name = 'schema_version'", &[])?
        .and_then(|r| r.get::<_, String>(0).parse().ok());
    match version {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(format!(
                "the database holds schema version {v}, written by a newer tend; this tend knows versions up to {SCHEMA_VERSION}"
            )
            .into());
        }
        Some(SCHEMA_VERSION) => {}
        _ => {
            tx.batch_execute(&SCHEMA.replace(
                "{id}",
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            ))?;
            tx.batch_execute(SHARED_SCHEMA)?;
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('schema_version', $1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&SCHEMA_VERSION.to_string()],
            )?;
        }
    }
    // Added tables, which a member of the same version that does not
    // know them runs beside.
    tx.batch_execute(BUDGET_SCHEMA)?;
    tx.commit()?;
    Ok(())
}

impl Db for Postgres {
    fn run(&self, tx: bool, work: &mut Work<'_>) -> Result<(), StateError> {
        off_runtime(|| {
            let mut guard = lock(&self.session);
            let s = self.session(&mut guard)?;
            let result = if tx {
                let mut t = s.client.transaction()?;
                let done = work(&mut PgConn {
                    client: &mut t,
                    statements: &mut s.statements,
                });
                match done {
                    Ok(()) => t.commit().map_err(StateError::from),
                    Err(e) => Err(e),
                }
            } else {
                work(&mut PgConn {
                    client: &mut s.client,
                    statements: &mut s.statements,
                })
            };
            if result.is_err() && s.client.is_closed() {
                // The next call connects again.
                *guard = None;
            }
            result
        })
    }

    fn lock(&self, command: &str) -> Result<(), StateError> {
        {
            let mut machine = lock(&self.machine);
            if machine.is_none() {
                *machine = Some(super::machine::take(&self.dir, command)?);
            }
        }
        off_runtime(|| {
            let mut guard = lock(&self.session);
            let s = self.session(&mut guard)?;
            if lock(&self.held).is_none() {
                self.take_lock(s, command, false)?;
            }
            *lock(&self.held) = Some(command.to_string());
            Ok(())
        })
    }

    fn unlock(&self) -> Result<(), StateError> {
        lock(&self.machine).take();
        if lock(&self.held).take().is_none() {
            return Ok(());
        }
        off_runtime(|| {
            let mut guard = lock(&self.session);
            let s = self.session(&mut guard)?;
            let node = self.target.node.as_str();
            let mut c = PgConn {
                client: &mut s.client,
                statements: &mut s.statements,
            };
            c.execute(
                "DELETE FROM run_locks WHERE node = ?1 AND pid = ?2",
                vals![node, i64::from(std::process::id())],
            )?;
            c.query(
                "SELECT pg_advisory_unlock(hashtext('tend run ' || ?1))",
                vals![node],
            )?;
            Ok(())
        })
    }

    fn node(&self) -> Option<&str> {
        Some(&self.target.node)
    }

    fn fleet(&self) -> Option<&dyn Fleet> {
        Some(self)
    }
}

/// A database time as milliseconds since the epoch, read back as a time.
fn millis(r: &Row, i: usize) -> Result<chrono::DateTime<chrono::Utc>, StateError> {
    let ms = r.int(i)?;
    chrono::DateTime::from_timestamp_millis(ms).ok_or_else(|| {
        StateError::Backend(BackendError::new(std::io::Error::other(format!(
            "{ms} ms is no time"
        ))))
    })
}

const MEMBERS: &str = "SELECT m.node, m.host, m.pid, m.version,
        CAST(extract(epoch FROM m.started_at) * 1000 AS BIGINT),
        CAST(extract(epoch FROM m.heartbeat_at) * 1000 AS BIGINT),
        CAST(m.heartbeat_at > clock_timestamp() - ?1 * interval '1 millisecond' AS INTEGER),
        (SELECT count(*) FROM leases l WHERE l.holder = m.node AND l.expires_at > clock_timestamp())
    FROM members m";

fn member(r: &Row) -> Result<Member, StateError> {
    Ok(Member {
        node: r.text(0)?,
        host: r.text(1)?,
        pid: r.int(2)?,
        version: r.text(3)?,
        started_at: millis(r, 4)?,
        heartbeat_at: millis(r, 5)?,
        live: r.int(6)? != 0,
        leases: r.int(7)?,
    })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Fleet for Postgres {
    fn node(&self) -> &str {
        &self.target.node
    }

    fn heartbeat(&self, lease: Duration) -> Result<Vec<Member>, StateError> {
        let node = self.target.node.as_str();
        with(self, false, |c| {
            c.execute(
                "INSERT INTO members (node, pid, host, version, started_at, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, clock_timestamp(), clock_timestamp())
                 ON CONFLICT (node) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                   started_at = CASE WHEN members.pid = excluded.pid AND members.host = excluded.host
                                     THEN members.started_at ELSE excluded.started_at END,
                   pid = excluded.pid, host = excluded.host, version = excluded.version",
                vals![
                    node,
                    i64::from(std::process::id()),
                    super::hostname(),
                    env!("CARGO_PKG_VERSION")
                ],
            )?;
            let found = c.query(
                &format!("{MEMBERS} WHERE m.heartbeat_at > clock_timestamp() - ?1 * interval '1 millisecond' ORDER BY m.node"),
                vals![ms(lease)],
            )?;
            found.iter().map(member).collect()
        })
    }

    fn members(&self, lease: Duration) -> Result<Vec<Member>, StateError> {
        with(self, false, |c| {
            let found = c.query(&format!("{MEMBERS} ORDER BY m.node"), vals![ms(lease)])?;
            found.iter().map(member).collect()
        })
    }

    fn hold(&self, wanted: &[String], lease: Duration) -> Result<Vec<String>, StateError> {
        let began = Instant::now();
        let node = self.target.node.as_str();
        let keys = wanted.join("\n");
        // A lease this member no longer wants is not renewed and runs out:
        // an action it began under that lease has the rest of it to end
        // before the new owner may take over. It counts as held no more,
        // so nothing new starts under it.
        let held = with(self, true, |c| {
            c.execute(
                "INSERT INTO leases (kind, name, holder, epoch, expires_at)
                 SELECT split_part(k, '/', 1), substr(k, length(split_part(k, '/', 1)) + 2), CAST(?1 AS TEXT), 1,
                        clock_timestamp() + ?3 * interval '1 millisecond'
                 FROM unnest(string_to_array(?2, chr(10))) AS k
                 ON CONFLICT (kind, name) DO UPDATE SET
                   epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > clock_timestamp()
                                THEN leases.epoch ELSE leases.epoch + 1 END,
                   holder = excluded.holder,
                   expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= clock_timestamp()",
                vals![node, keys.as_str(), ms(lease)],
            )?;
            let found = c.query(
                "SELECT kind || '/' || name FROM leases WHERE holder = ?1 AND expires_at > clock_timestamp()
                   AND kind || '/' || name = ANY (string_to_array(?2, chr(10)))",
                vals![node, keys.as_str()],
            )?;
            found
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<Vec<_>, _>>()
        })?;
        *lock(&self.owned) = Owned {
            keys: held.iter().cloned().collect(),
            since: Some(began),
            lease,
        };
        Ok(held)
    }

    fn owned(&self) -> HashSet<String> {
        let owned = lock(&self.owned);
        if owned.fresh() {
            owned.keys.clone()
        } else {
            HashSet::new()
        }
    }

    fn holds(&self, key: &str) -> bool {
        let owned = lock(&self.owned);
        owned.fresh() && owned.keys.contains(key)
    }

    fn leases(&self) -> Result<Vec<Lease>, StateError> {
        with(self, false, |c| {
            let found = c.query(
                "SELECT kind || '/' || name, holder, epoch,
                        CAST(extract(epoch FROM expires_at) * 1000 AS BIGINT),
                        CAST(expires_at > clock_timestamp() AS INTEGER)
                 FROM leases ORDER BY kind, name",
                &[],
            )?;
            found
                .iter()
                .map(|r| {
                    Ok(Lease {
                        key: r.text(0)?,
                        holder: r.text(1)?,
                        epoch: r.int(2)?,
                        expires_at: millis(r, 3)?,
                        live: r.int(4)? != 0,
                    })
                })
                .collect()
        })
    }

    fn announce(&self, payload: &str) -> Result<(), StateError> {
        with(self, false, |c| {
            c.query("SELECT pg_notify('tend_fleet', ?1)", vals![payload])?;
            Ok(())
        })
    }

    fn listen(&self, on: Box<dyn Fn(&str) + Send>) -> super::Listening {
        let stop = Arc::new(AtomicBool::new(false));
        let target = self.target.clone();
        let shown = self.target.shown.clone();
        let stopped = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("tend-listen".into())
            .spawn(move || listen_loop(&target, &shown, &stopped, &*on));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "Could not listen for the other members' announcements.");
        }
        super::Listening { stop }
    }

    fn leave(&self) -> Result<(), StateError> {
        *lock(&self.owned) = Owned::default();
        let node = self.target.node.as_str();
        with(self, true, |c| {
            c.execute(
                "UPDATE leases SET expires_at = clock_timestamp() WHERE holder = ?1 AND expires_at > clock_timestamp()",
                vals![node],
            )?;
            c.execute(
                "DELETE FROM members WHERE node = ?1 AND pid = ?2",
                vals![node, i64::from(std::process::id())],
            )?;
            Ok(())
        })
    }
}

/// Listens on `tend_fleet` until `stop`, connecting again a second after
/// a lost connection.
fn listen_loop(target: &Target, shown: &str, stop: &AtomicBool, on: &dyn Fn(&str)) {
    use postgres::fallible_iterator::FallibleIterator;
    let mut said = false;
    while !stop.load(Ordering::SeqCst) {
        let connected = target
            .connect()
            .and_then(|mut c| c.batch_execute("LISTEN tend_fleet").map(|()| c));
        let mut client = match connected {
            Ok(c) => {
                said = false;
                c
            }
            Err(e) => {
                if !said {
                    tracing::warn!(database = shown, error = %e, "Cannot listen for the other members' announcements; trying again every second.");
                    said = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            let next = client
                .notifications()
                .timeout_iter(Duration::from_millis(500))
                .next();
            match next {
                Ok(Some(n)) => on(n.payload()),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(database = shown, error = %e, "Lost the connection announcements arrive on.");
                    break;
                }
            }
            if client.is_closed() {
                break;
            }
        }
    }
}

/// `?1`, `?2`, … as PostgreSQL's `$1`, `$2`, … (outside quoted text).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A connection or a transaction on it, with the statements prepared on
/// the connection.
struct PgConn<'a, C: GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> PgConn<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement, StateError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client.prepare(&numbered(sql))?;
        self.statements.insert(sql.to_string(), prepared.clone());
        Ok(prepared)
    }
}

fn params(vals: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl<C: GenericClient> Conn for PgConn<'_, C> {
    fn execute(&mut self, sql: &str, vals: &[Val]) -> Result<u64, StateError> {
        let statement = self.statement(sql)?;
        Ok(self.client.execute(&statement, &params(vals))?)
    }

    fn query(&mut self, sql: &str, vals: &[Val]) -> Result<Vec<Row>, StateError> {
        let statement = self.statement(sql)?;
        let names: Arc<[String]> = statement
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let found = self.client.query(&statement, &params(vals))?;
        found
            .iter()
            .map(|r| {
                let vals = (0..names.len())
                    .map(|i| column(r, i))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Row::new(Arc::clone(&names), vals))
            })
            .collect()
    }
}

/// Column `i` of a row as a [`Val`].
fn column(r: &postgres::Row, i: usize) -> Result<Val, postgres::Error> {
    let ty = r.columns()[i].type_().clone();
    Ok(match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map_or(Val::Null, Val::Int),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)?
            .map_or(Val::Null, |n| Val::Int(n.into())),
        Type::INT2 => r
            .try_get::<_, Option<i16>>(i)?
            .map_or(Val::Null, |n| Val::Int(n.into())),
        Type::BOOL => r
            .try_get::<_, Option<bool>>(i)?
            .map_or(Val::Null, |b| Val::Int(b.into())),
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map_or(Val::Null, Val::Real),
        Type::FLOAT4 => r
            .try_get::<_, Option<f32>>(i)?
            .map_or(Val::Null, |n| Val::Real(n.into())),
        _ => r
            .try_get::<_, Option<String>>(i)?
            .map_or(Val::Null, Val::Text),
    })
}

#[derive(Debug)]
struct Mismatch(String);

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Mismatch {}

/// A parameter takes the type PostgreSQL inferred for its place.
impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let wrong = || -> Box<dyn std::error::Error + Sync + Send> {
            Box::new(Mismatch(format!("{self:?} given where {ty} is expected")))
        };
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::FLOAT8 => (*n as f64).to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => n.to_string().to_sql(ty, out),
                _ => Err(wrong()),
            },
            Val::Real(n) => match *ty {
                Type::FLOAT8 => n.to_sql(ty, out),
                Type::FLOAT4 => (*n as f32).to_sql(ty, out),
                _ => Err(wrong()),
            },
            Val::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_str().to_sql(ty, out)
                }
                _ => Err(wrong()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_the_postgres_way_outside_quotes() {
        assert_eq!(
            numbered("SELECT ?1, '?2' WHERE a = ?12"),
            "SELECT $1, '?2' WHERE a = $12"
        );
    }

    #[test]
    fn a_password_is_refused_from_git_and_the_command_line_and_never_shown() {
        for source in [UrlSource::Settings, UrlSource::CommandLine] {
            let err = Target::parse("postgres://tend:hunter2@db/tend", source, None, "n1")
                .unwrap_err()
                .to_string();
            assert!(err.contains("carries a password"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let t = Target::parse(
            "postgres://tend:hunter2@db:5433/fleet",
            UrlSource::Environment,
            None,
            "n1",
        )
        .unwrap();
        assert_eq!(t.shown(), "postgres://tend@db:5433/fleet");
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[test]
    fn tls_words_the_driver_does_not_know_are_taken_out() {
        let (url, tls) = tls_params(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        );
        assert_eq!(url, "postgres://u@h/db?sslmode=require&application_name=x");
        assert_eq!(tls.root.as_deref(), Some(Path::new("/ca.pem")));
        let (url, tls) = tls_params("host=h user=u sslrootcert=/ca.pem sslmode=verify-ca");
        assert_eq!(url, "host=h user=u sslmode=require");
        assert!(tls.root.is_some());
        let (url, _) = tls_params("postgres://u@h/db?sslrootcert=/ca.pem");
        assert_eq!(url, "postgres://u@h/db");
        let (url, tls) = tls_params("postgres://u@h/db");
        assert_eq!(url, "postgres://u@h/db");
        assert!(tls.root.is_none());
    }

    #[test]
    fn the_password_file_is_read_when_the_url_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let t = Target::parse(
            "postgres://tend@db/tend",
            UrlSource::Settings,
            Some(&file),
            "n1",
        )
        .unwrap();
        if std::env::var_os("TEND_STATE_PASSWORD").is_none() {
            assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        }
        let err = Target::parse("mysql://x", UrlSource::Settings, None, "n1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Settings spec.state.url"), "{err}");
    }
}
