//! A private PostgreSQL for the tests: Debian's server (installed by
//! `scripts/test.sh`), started once per test binary with a temporary data
//! directory, as the `postgres` user when the tests run as root (the
//! server refuses root), listening on 127.0.0.1 only, with a password. A
//! shell stops it and removes its directory once the test binary is gone.
//! Each test gets a database of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The password of the tests' server user `tend`.
pub const PASSWORD: &str = "tend-fleet-test";

pub struct Server {
    port: u16,
    bin: PathBuf,
    /// The authority that signed the server's TLS certificate.
    ca: PathBuf,
}

/// One test's database on the shared server.
pub struct Database {
    pub name: String,
    port: u16,
    bin: PathBuf,
}

impl Database {
    /// The URL without the password (give it in `TEND_STATE_PASSWORD`).
    pub fn url(&self) -> String {
        format!("postgres://tend@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// The URL with the password, as `TEND_STATE_URL` may carry it.
    pub fn url_with_password(&self) -> String {
        format!(
            "postgres://tend:{PASSWORD}@127.0.0.1:{}/{}",
            self.port, self.name
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM file of the authority the server's certificate is from.
    pub fn ca(&self) -> PathBuf {
        match SERVER.get() {
            Some(Ok(s)) => s.ca.clone(),
            _ => panic!("the server is not started"),
        }
    }

    /// The same database reached through another port (a relay).
    pub fn on_port(db: &Database, port: u16) -> Database {
        Database {
            name: db.name.clone(),
            port,
            bin: db.bin.clone(),
        }
    }

    /// Runs SQL with psql; its output (unaligned, tuples only).
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs SQL with psql, which may fail (before tend created a table).
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        psql(&self.bin, self.port, &self.name, sql)
    }
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A new, empty database on the tests' server, started on first use.
pub fn database() -> Database {
    let server = match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("PostgreSQL did not start: {e}"),
    };
    let name = format!("t{}", NEXT.fetch_add(1, Ordering::SeqCst));
    psql(
        &server.bin,
        server.port,
        "postgres",
        &format!("CREATE DATABASE {name}"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Database {
        name,
        port: server.port,
        bin: server.bin.clone(),
    }
}

fn psql(bin: &Path, port: u16, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(bin.join("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "tend",
            "-d",
            db,
        ])
        .args(["-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .map_err(|e| format!("run psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The newest installed server's `bin` directory.
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no /usr/lib/postgresql ({e}); scripts/test.sh installs it"))?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `cmd` as the `postgres` user when this process is root.
fn as_server_user(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start() -> Result<Server, String> {
    let bin = bin_dir()?;
    let root = unsafe { libc::geteuid() } == 0;
    let dir = std::env::temp_dir().join(format!("tend-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, PASSWORD).map_err(|e| format!("write the password file: {e}"))?;
    let ca = tls_files(&dir)?;
    if root {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?
            .success();
        if !ok {
            return Err(format!("chown postgres {} failed", dir.display()));
        }
    }
    let data = dir.join("data");
    let init = as_server_user(&bin.join("initdb"), root)
        .arg("-D")
        .arg(&data)
        .args(["-U", "tend", "-E", "UTF8", "--no-sync"])
        .args(["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run initdb: {e}"))?;
    if !init.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        ));
    }
    let port = free_port();
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        dir.display(),
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    );
    // The shell outlives the test binary by at most a second, then stops
    // the server and removes its directory.
    const WATCHDOG: &str = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        $3 "$2/pg_ctl" -D "$4/data" -m immediate stop >/dev/null 2>&1
        rm -rf "$4"
    "#;
    let log = dir.join("server.log");
    let started = as_server_user(&bin.join("pg_ctl"), root)
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-o", &options, "-w", "-t", "60", "start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("run pg_ctl: {e}"))?;
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("tend-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(&bin)
        .arg(if root { "runuser -u postgres --" } else { "" })
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start the watchdog: {e}"))?;
    if !started.status.success() {
        return Err(format!(
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match psql(&bin, port, "postgres", "SELECT 1") {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    Ok(Server { port, bin, ca })
}

/// A test authority and a server certificate for 127.0.0.1 it signed, in
/// `dir`; the authority's PEM file.
fn tls_files(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: rcgen::Error| format!("make the test certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tend tests");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .map_err(err)?
        .signed_by(&key, &issuer)
        .map_err(err)?;
    let write = |name: &str, text: String, mode: u32| -> Result<(), String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))
    };
    write("ca.pem", ca_cert.pem(), 0o644)?;
    write("server.crt", cert.pem(), 0o644)?;
    write("server.key", key.serialize_pem(), 0o600)?;
    Ok(dir.join("ca.pem"))
}
