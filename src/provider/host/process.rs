//! `host.Process`: a long-running process that outlives tend.
//!
//! A process tend starts gets its own session (so it survives tend's exit and
//! its terminal), a pidfile, a JSON record and a log under
//! `<state>/host/processes/`. A pid counts as ours only while both its start
//! time and its command line match the record: a pid the kernel reused for
//! another program is never adopted, signalled or reported as running.

use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{record_names, write_atomic, HostRefs};
use crate::model::{Kind, ResourceKey};
use crate::provider::{Applied, LiveResource, ProviderError};
use crate::vocab::{Action, ActionType, PORT_CONFLICT};

/// How long a new process must stay up before its start counts.
const START_GRACE: Duration = Duration::from_millis(300);
/// How long a process gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What tend knows about a process it started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    pub name: String,
    /// 0 when tend stopped it on purpose.
    pub pid: i32,
    /// Kernel start time (clock ticks since boot) of `pid`.
    pub start_time: u64,
    /// The command line as the kernel reports it.
    pub cmdline: Vec<String>,
    /// The declared spec it was started with.
    pub spec: Value,
    pub started_at: String,
    pub log: String,
    /// Where this start's output begins in `log` (the log is appended to
    /// across starts).
    #[serde(default)]
    pub log_from: u64,
    /// The marker tend put in the process's environment
    /// (`TEND_INSTANCE=<name>:<instance>`), so that a process started by a
    /// run killed before it recorded the pid is recognised and adopted
    /// instead of started twice.
    #[serde(default)]
    pub instance: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Ours,
    Gone,
    /// The pid is alive but is another program.
    Foreign(String),
}

fn record_path(refs: &HostRefs, name: &str) -> PathBuf {
    refs.procs_dir.join(format!("{name}.json"))
}

/// Reads a process record from a state directory's host records.
pub fn read_record(procs_dir: &Path, name: &str) -> std::io::Result<Option<ProcessRecord>> {
    match std::fs::read(procs_dir.join(format!("{name}.json"))) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e)),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records hold the declared environment, which may include secrets: they
/// are readable by tend's user only.
fn write_record(refs: &HostRefs, rec: &ProcessRecord) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bytes = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
    let path = record_path(refs, &rec.name);
    write_atomic(&path, &bytes)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let pidfile = refs.procs_dir.join(format!("{}.pid", rec.name));
    if rec.pid > 0 {
        write_atomic(&pidfile, format!("{}\n", rec.pid).as_bytes())
    } else {
        match std::fs::remove_file(pidfile) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// State letter and start time from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn cmdline(pid: i32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).to_string())
            .collect(),
    )
}

/// Whether the recorded pid is still the process tend started.
pub fn process_alive(rec: &ProcessRecord) -> Liveness {
    if rec.pid <= 0 {
        return Liveness::Gone;
    }
    match stat(rec.pid) {
        None => Liveness::Gone,
        Some(('Z', _)) | Some(('X', _)) => Liveness::Gone,
        Some((_, start)) => {
            let cmd = cmdline(rec.pid).unwrap_or_default();
            if start == rec.start_time && cmd == rec.cmdline {
                Liveness::Ours
            } else {
                Liveness::Foreign(cmd.join(" "))
            }
        }
    }
}

fn list_err(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::List {
        kind: Kind::HostProcess,
        message: e.to_string(),
    }
}

fn with_state(spec: &Value, state: &str) -> Value {
    let mut spec = spec.clone();
    if let Some(obj) = spec.as_object_mut() {
        obj.insert("state".into(), Value::from(state));
    }
    spec
}

fn live_from_record(rec: &ProcessRecord, owned: bool) -> LiveResource {
    let (state, note) = match process_alive(rec) {
        Liveness::Ours => ("running", None),
        Liveness::Gone => match (port_conflict(rec), rec.pid) {
            (Some(line), _) => ("stopped", Some(format!("{PORT_CONFLICT}: {line}"))),
            (None, 0) => ("stopped", None),
            (None, pid) => ("stopped", Some(format!("pid {pid} has exited"))),
        },
        Liveness::Foreign(cmd) => (
            "stopped",
            Some(format!(
                "pid {} now belongs to another program ({cmd}); not adopted",
                rec.pid
            )),
        ),
    };
    LiveResource {
        key: ResourceKey::new(Kind::HostProcess, rec.name.clone()),
        spec: with_state(&rec.spec, state),
        owned,
        id: if rec.pid > 0 {
            format!("pid {}", rec.pid)
        } else {
            "not running".into()
        },
        note,
    }
}

pub(super) fn list(
    refs: &HostRefs,
    desired: &[(String, Value)],
) -> Result<Vec<LiveResource>, ProviderError> {
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (name, spec) in desired {
        names.insert(name.as_str());
        match read_record(&refs.procs_dir, name).map_err(|e| list_err(format!("{name}: {e}")))? {
            Some(rec) => out.push(live_from_record(&adopt_orphan(refs, rec), true)),
            // Nothing recorded and nothing wanted running: already as declared.
            None if spec.get("state").and_then(Value::as_str) == Some("stopped") => {
                out.push(LiveResource {
                    key: ResourceKey::new(Kind::HostProcess, name.clone()),
                    spec: spec.clone(),
                    owned: false,
                    id: "not running".into(),
                    note: None,
                })
            }
            None => {}
        }
    }
    for name in record_names(&refs.procs_dir).map_err(list_err)? {
        if names.contains(name.as_str()) {
            continue;
        }
        if let Some(rec) =
            read_record(&refs.procs_dir, &name).map_err(|e| list_err(format!("{name}: {e}")))?
        {
            out.push(live_from_record(&rec, true));
        }
    }
    Ok(out)
}

/// Stops the process if, and only if, it is still ours.
fn stop(rec: &ProcessRecord) -> Result<String, String> {
    if process_alive(rec) != Liveness::Ours {
        return Ok("was not running".into());
    }
    let pid = rec.pid;
    // It leads its own session and process group: signal the group so
    // children it forked stop too.
    // SAFETY: kill takes integers only and touches no memory of ours.
    unsafe {
        if libc::kill(-pid, libc::SIGTERM) != 0 {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if wait_gone(rec, STOP_TIMEOUT) {
        return Ok(format!("stopped pid {pid}"));
    }
    // SAFETY: kill takes integers only and touches no memory of ours.
    unsafe {
        if libc::kill(-pid, libc::SIGKILL) != 0 {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    if wait_gone(rec, Duration::from_secs(2)) {
        Ok(format!(
            "killed pid {pid} after {}s",
            STOP_TIMEOUT.as_secs()
        ))
    } else {
        Err(format!("pid {pid} did not exit after SIGKILL"))
    }
}

fn wait_gone(rec: &ProcessRecord, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if process_alive(rec) != Liveness::Ours {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

struct Launch {
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

fn launch_of(refs: &HostRefs, exe: &Path, spec: &Value) -> Launch {
    let exe = exe.display().to_string();
    let expand = |s: &str| s.replace("${TEND_EXE}", &exe);
    let str_list = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(expand).collect())
            .unwrap_or_default()
    };
    Launch {
        command: expand(
            spec.get("command")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        ),
        args: str_list(spec.get("args")),
        env: spec
            .get("env")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        dir: refs.resolve(
            spec.get("workingDir")
                .and_then(Value::as_str)
                .unwrap_or("."),
        ),
    }
}

/// The last `lines` lines a process wrote since `from`, reading at most
/// the last 16 KiB of its log.
fn tail(path: &Path, from: u64, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(16 * 1024)).min(len);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The environment entry that marks a process tend started.
const INSTANCE_VAR: &str = "TEND_INSTANCE";

fn marker(name: &str, instance: &str) -> String {
    format!("{INSTANCE_VAR}={name}:{instance}")
}

/// A record whose start was begun but whose pid was never written (tend
/// was killed between spawning the process and recording it): the process
/// carrying the record's marker, if it runs, is adopted and recorded.
fn adopt_orphan(refs: &HostRefs, rec: ProcessRecord) -> ProcessRecord {
    if rec.pid != 0 || rec.instance.is_empty() {
        return rec;
    }
    let Some(pid) = find_marked(&marker(&rec.name, &rec.instance)) else {
        return rec;
    };
    let Some((_, start_time)) = stat(pid) else {
        return rec;
    };
    let adopted = ProcessRecord {
        pid,
        start_time,
        cmdline: cmdline(pid).unwrap_or_default(),
        ..rec
    };
    if write_record(refs, &adopted).is_err() {
        return adopted;
    }
    tracing::warn!(name = %adopted.name, pid, "Adopted a process an interrupted run started.");
    adopted
}

/// The live process whose environment holds `entry` exactly.
fn find_marked(entry: &str) -> Option<i32> {
    let want = entry.as_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let alive = !matches!(stat(pid), None | Some(('Z', _)) | Some(('X', _)));
        (alive && environ.split(|b| *b == 0).any(|v| v == want)).then_some(pid)
    })
}

/// The line in which a process that exited said its address was in use.
fn port_conflict(rec: &ProcessRecord) -> Option<String> {
    if rec.log.is_empty() {
        return None;
    }
    let text = tail(Path::new(&rec.log), rec.log_from, 20);
    text.lines()
        .rev()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("address already in use") || l.contains("eaddrinuse")
        })
        .map(|l| l.trim().chars().take(300).collect())
}

fn start(refs: &HostRefs, exe: &Path, name: &str, spec: &Value) -> Result<ProcessRecord, String> {
    let launch = launch_of(refs, exe, spec);
    std::fs::create_dir_all(&refs.procs_dir)
        .map_err(|e| format!("{}: {e}", refs.procs_dir.display()))?;
    let log_path = refs.procs_dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&launch.command);
    cmd.args(&launch.args)
        .current_dir(&launch.dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // Secrets in tend's environment (cloud credentials, tokens) must not
    // leak into workloads: only these pass through.
    for var in ["PATH", "HOME", "LANG", "TZ"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
    let instance = format!("{:016x}", rand::random::<u64>());
    cmd.env(INSTANCE_VAR, format!("{name}:{instance}"));
    // SAFETY: setsid is async-signal-safe and touches no memory of the
    // parent; it makes the child lead a new session so it outlives tend.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut expected = vec![launch.command.clone()];
    expected.extend(launch.args.iter().cloned());
    let mut rec = ProcessRecord {
        name: name.to_string(),
        pid: 0,
        start_time: 0,
        cmdline: expected,
        spec: spec.clone(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        log: log_path.display().to_string(),
        log_from,
        instance,
    };
    // The start is recorded before the process exists: if tend dies
    // before it records the pid, the next pass finds the process by its
    // marker and adopts it.
    write_record(refs, &rec).map_err(|e| e.to_string())?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("failed to start `{}`: {e}", launch.command))?;
    let pid = child.id() as i32;
    fault_point_after_spawn();
    rec.pid = pid;
    rec.start_time = stat(pid).map(|(_, t)| t).unwrap_or(0);
    // Record at once: a crash from here on still leaves tend knowing the pid.
    write_record(refs, &rec).map_err(|e| e.to_string())?;

    std::thread::sleep(START_GRACE);
    if let Ok(Some(status)) = child.try_wait() {
        rec.pid = 0;
        let _ = write_record(refs, &rec);
        let last = tail(&log_path, log_from, 5);
        return Err(if last.is_empty() {
            format!("`{}` exited at once ({status})", launch.command)
        } else {
            format!(
                "`{}` exited at once ({status}); last lines of {}:\n{last}",
                launch.command,
                log_path.display()
            )
        });
    }
    // Until exec completes, /proc shows tend's own command line; the kernel
    // may also rewrite it (scripts run through their interpreter), so record
    // what it reports once the program runs.
    let own = cmdline(std::process::id() as i32).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match cmdline(pid) {
            Some(c) if !c.is_empty() && c != own => {
                rec.cmdline = c;
                break;
            }
            _ if Instant::now() >= deadline => break,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    write_record(refs, &rec).map_err(|e| e.to_string())?;
    // Reap it if it exits while tend still runs (watch mode), so it never
    // lingers as a zombie.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(rec)
}

/// Crash tests: `TEND_FAULT=kill-after-spawn` makes tend kill itself with
/// SIGKILL right after spawning a process, before recording its pid (the
/// window a crash-safe start must survive).
fn fault_point_after_spawn() {
    if std::env::var("TEND_FAULT").is_ok_and(|f| f == "kill-after-spawn") {
        // SAFETY: kill(2) on our own pid with a signal that cannot be caught.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// The change a runbook restart carries: from the running instance (`pid
/// N`) to a new one.
pub use crate::vocab::RESTART_PATH;

pub(super) fn apply(
    refs: &HostRefs,
    exe: &Path,
    action: &Action,
    spec: Option<&Value>,
) -> Result<Applied, ProviderError> {
    let fail = |message: String| ProviderError::Apply {
        action: action.action_type.as_str(),
        target: action.target.clone(),
        message,
    };
    let name = &action.target.name;
    let existing = read_record(&refs.procs_dir, name).map_err(|e| fail(e.to_string()))?;
    let mut did = Vec::new();
    if action.action_type == ActionType::Scale {
        return Err(fail("a host.Process cannot be scaled".into()));
    }
    if let Some(rec) = &existing {
        // Idempotence: a restart whose process already runs as declared is
        // a no-op, not a second restart. A runbook restart names the
        // instance it replaces, so it acts only while that one still runs.
        let instance = format!("pid {}", rec.pid);
        let names_this_instance = action
            .changes
            .iter()
            .any(|c| c.path == RESTART_PATH && c.from.as_str() == Some(instance.as_str()));
        if action.action_type == ActionType::Restart
            && process_alive(rec) == Liveness::Ours
            && !names_this_instance
        {
            return Ok(Applied {
                detail: format!("already running as pid {}", rec.pid),
            });
        }
        did.push(stop(rec).map_err(fail)?);
    }
    match action.action_type {
        ActionType::Delete => {
            for ext in ["json", "pid"] {
                match std::fs::remove_file(refs.procs_dir.join(format!("{name}.{ext}"))) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(fail(e.to_string())),
                    _ => {}
                }
            }
            did.push("record removed".into());
        }
        _ => {
            let spec = spec.ok_or_else(|| fail("no desired state for this process".into()))?;
            if spec.get("state").and_then(Value::as_str) == Some("stopped") {
                let rec = ProcessRecord {
                    name: name.clone(),
                    pid: 0,
                    start_time: 0,
                    cmdline: Vec::new(),
                    spec: spec.clone(),
                    started_at: String::new(),
                    log: existing.map(|r| r.log).unwrap_or_default(),
                    log_from: 0,
                    instance: String::new(),
                };
                write_record(refs, &rec).map_err(|e| fail(e.to_string()))?;
            } else {
                let rec = start(refs, exe, name, spec).map_err(fail)?;
                did.push(format!("started pid {}", rec.pid));
            }
        }
    }
    Ok(Applied {
        detail: did.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_stat() {
        let pid = std::process::id() as i32;
        let (state, start) = stat(pid).unwrap();
        assert!(state == 'R' || state == 'S');
        assert!(start > 0);
    }

    #[test]
    fn a_reused_pid_is_not_ours() {
        let pid = std::process::id() as i32;
        let (_, start) = stat(pid).unwrap();
        let rec = ProcessRecord {
            name: "x".into(),
            pid,
            start_time: start,
            cmdline: vec!["/bin/some-other-program".into()],
            spec: Value::Null,
            started_at: String::new(),
            log: String::new(),
            log_from: 0,
            instance: String::new(),
        };
        assert!(matches!(process_alive(&rec), Liveness::Foreign(_)));
        let rec = ProcessRecord {
            cmdline: cmdline(pid).unwrap(),
            start_time: start + 1,
            ..rec
        };
        assert!(matches!(process_alive(&rec), Liveness::Foreign(_)));
    }
}
