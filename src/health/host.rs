//! Host signals, read from the machine tend runs on with no exporter or
//! Prometheus: CPU and memory of a `host.Process` (or of the host), memory
//! growth over a window, disk usage of a path's filesystem, the rate of log
//! lines matching a pattern, and restarts within a window.
//!
//! Values and units: `cpu` in cores (1.0 = one core busy), `memory` in MiB
//! resident, `memoryGrowth` in MiB per minute (a least-squares slope over
//! `window`), `disk` as the used share of the filesystem (0–1), `diskFree`
//! in MiB, `logRate` in matching lines per minute over `window`, `restarts`
//! as starts within `window`. A signal that cannot be read yet (a process
//! that is not running, too few samples for a slope) is unknown, which
//! never acts. This module only reads.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Status;
use crate::model::health::{HostMetric, HostProbe};
use crate::model::{Kind, Resource, ResourceKey};
use crate::vocab::LiveResource;

const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// How long the first CPU reading samples the process.
const CPU_SAMPLE: Duration = Duration::from_millis(200);
/// At most this much of a log is read per reading.
const MAX_LOG_READ: u64 = 8 << 20;

/// What one reading of one signal remembers for the next.
#[derive(Default)]
struct History {
    /// (when, value) samples within the window (memory growth, log rate).
    samples: VecDeque<(Instant, f64)>,
    /// CPU: the last (when, clock ticks) of the process.
    cpu: Option<(Instant, u64)>,
    /// Log: where the last read stopped, in which file (inode).
    log: Option<(u64, u64)>,
    /// Log: lines counted per reading, as (from, to, lines).
    lines: VecDeque<(Instant, Instant, f64)>,
    /// Log: when the last reading was made.
    last_read: Option<Instant>,
}

/// The host signals of a pass's prober.
#[derive(Default)]
pub struct HostSignals {
    /// `<stateDir>/host/processes`: where a process's own log is.
    processes: PathBuf,
    /// Where relative paths resolve.
    root: PathBuf,
    history: Mutex<HashMap<(ResourceKey, String), History>>,
    /// Starts of each resource, from the journal, set before a pass reads.
    starts: Mutex<HashMap<ResourceKey, Vec<DateTime<Utc>>>>,
    /// Levels that forecasts fit.
    levels: std::sync::Arc<super::history::History>,
}

type Read3 = (Status, Option<f64>, String);

impl HostSignals {
    pub fn new(
        state_dir: &Path,
        root: &Path,
        levels: std::sync::Arc<super::history::History>,
    ) -> HostSignals {
        HostSignals {
            processes: state_dir.join("host/processes"),
            root: root.to_path_buf(),
            levels,
            ..HostSignals::default()
        }
    }

    /// The starts the journal knows of a resource (for `restarts`).
    pub fn set_starts(&self, key: &ResourceKey, starts: Vec<DateTime<Utc>>) {
        if let Ok(mut s) = self.starts.lock() {
            s.insert(key.clone(), starts);
        }
    }

    pub async fn read(
        &self,
        r: &Resource,
        signal: &str,
        p: &HostProbe,
        live: Option<&LiveResource>,
    ) -> Read3 {
        let window = p.window.map_or(DEFAULT_WINDOW, |w| w.0);
        let pid = pid_of(r, live);
        let value = match p.metric {
            HostMetric::Cpu => self.cpu(&r.key, signal, pid).await,
            HostMetric::Memory => memory_mib(pid),
            HostMetric::MemoryGrowth => match memory_mib(pid) {
                Ok(mib) => self.slope(&r.key, signal, mib, window),
                Err(e) => Err(e),
            },
            HostMetric::Disk | HostMetric::DiskFree => self.disk(p).await,
            HostMetric::LogRate => self.log_rate(r, signal, p, window),
            HostMetric::Restarts => Ok(self.restarts(&r.key, window)),
            HostMetric::DiskFullIn | HostMetric::MemoryExhaustedIn => {
                return self.forecast(r, signal, p, pid).await;
            }
        };
        match value {
            Ok(v) => threshold(p, v),
            Err(why) => (Status::Unknown, None, why),
        }
    }

    fn with_history<T>(
        &self,
        key: &ResourceKey,
        signal: &str,
        f: impl FnOnce(&mut History) -> T,
    ) -> T {
        let mut all = self.history.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry((key.clone(), signal.to_string())).or_default())
    }

    async fn cpu(&self, key: &ResourceKey, signal: &str, pid: Option<i32>) -> Result<f64, String> {
        let ticks_per_sec = clock_ticks();
        let (now, ticks) = match pid {
            Some(pid) => (Instant::now(), process_ticks(pid)?),
            None => (Instant::now(), host_busy_ticks()?),
        };
        let before = self.with_history(key, signal, |h| h.cpu.replace((now, ticks)));
        let (then, was) = match before {
            Some(b) if b.1 <= ticks && now.duration_since(b.0) >= Duration::from_millis(50) => b,
            _ => {
                // First reading: sample a moment to have a rate at once.
                tokio::time::sleep(CPU_SAMPLE).await;
                let again = match pid {
                    Some(pid) => process_ticks(pid)?,
                    None => host_busy_ticks()?,
                };
                let at = Instant::now();
                self.with_history(key, signal, |h| h.cpu = Some((at, again)));
                return Ok(again.saturating_sub(ticks) as f64
                    / ticks_per_sec
                    / at.duration_since(now).as_secs_f64());
            }
        };
        Ok(ticks.saturating_sub(was) as f64
            / ticks_per_sec
            / now.duration_since(then).as_secs_f64())
    }

    /// MiB per minute over the window: a least-squares slope of the samples.
    fn slope(
        &self,
        key: &ResourceKey,
        signal: &str,
        mib: f64,
        window: Duration,
    ) -> Result<f64, String> {
        let now = Instant::now();
        self.with_history(key, signal, |h| {
            h.samples.push_back((now, mib));
            while h
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > window)
            {
                h.samples.pop_front();
            }
            let span = h
                .samples
                .front()
                .map_or(Duration::ZERO, |(t, _)| now.duration_since(*t));
            if h.samples.len() < 3 || span < window / 4 {
                return Err(format!(
                    "collecting samples for the slope ({} so far over {:.0}s; needs 3 over {:.0}s)",
                    h.samples.len(),
                    span.as_secs_f64(),
                    (window / 4).as_secs_f64()
                ));
            }
            let first = h.samples.front().map(|(t, _)| *t).unwrap_or(now);
            let xs: Vec<f64> = h
                .samples
                .iter()
                .map(|(t, _)| t.duration_since(first).as_secs_f64() / 60.0)
                .collect();
            let ys: Vec<f64> = h.samples.iter().map(|(_, v)| *v).collect();
            let n = xs.len() as f64;
            let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
            let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
            let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
            if sxx <= f64::EPSILON {
                return Err("samples too close together for a slope".into());
            }
            Ok(sxy / sxx)
        })
    }

    /// `diskFullIn`, `memoryExhaustedIn`: the time until the level (used
    /// share of the filesystem or quota; resident MiB against the limit)
    /// reaches its capacity, from a robust fit of the level's samples.
    async fn forecast(&self, r: &Resource, signal: &str, p: &HostProbe, pid: Option<i32>) -> Read3 {
        use super::trend::{forecast, num, reading_of, Guard};
        let (level, capacity, what) = match p.metric {
            HostMetric::DiskFullIn => {
                let used = self
                    .disk(&HostProbe {
                        metric: HostMetric::Disk,
                        ..p.clone()
                    })
                    .await;
                (used, Ok(1.0), "full")
            }
            _ => (
                memory_mib(pid),
                p.limit.map_or_else(host_memory_mib, Ok),
                "out of memory",
            ),
        };
        let over = p.over();
        let (level, capacity) = match (level, capacity) {
            (Ok(l), Ok(c)) => (l, c),
            (Err(e), _) | (_, Err(e)) => return (Status::Unknown, None, e),
        };
        let now = Utc::now();
        let series = super::history::level_signal(signal);
        self.levels.push(&r.key, &series, over, now, level);
        let samples = self.levels.since(
            &r.key,
            &series,
            now - chrono::Duration::from_std(over).unwrap_or_default(),
        );
        let guard = Guard {
            min_span: over / 4,
            min_fit: p.min_fit.unwrap_or(0.8),
            floor: Some(p.floor.unwrap_or(0.5) * capacity),
            // Usage rises to the capacity (and may pass a quota).
            rising: Some(true),
        };
        let below = Duration::try_from_secs_f64(p.below.or(p.above).unwrap_or(0.0).max(0.0))
            .unwrap_or(Duration::MAX);
        let budget = if p.quota.is_some() {
            "quota"
        } else {
            "filesystem"
        };
        let rate = |per_hour: f64| match p.metric {
            HostMetric::DiskFullIn => format!("{}% of the {budget}", num(per_hour * 100.0)),
            _ => format!("{} MiB", num(per_hour)),
        };
        reading_of(&forecast(&samples, capacity, &guard), what, &rate, below)
    }

    async fn disk(&self, p: &HostProbe) -> Result<f64, String> {
        let path = self.resolve(p.path.as_deref().unwrap_or("."));
        if let Some(quota) = p.quota {
            // A walk of up to 100000 files: off the runtime's threads, so
            // probes read alongside (latency) are not delayed by it.
            let dir = path.clone();
            let used = tokio::task::spawn_blocking(move || tree_mib(&dir))
                .await
                .map_err(|e| format!("cannot measure {}: {e}", path.display()))??;
            return Ok(match p.metric {
                HostMetric::DiskFree => (quota - used).max(0.0),
                _ => used / quota.max(f64::MIN_POSITIVE),
            });
        }
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{} is not a valid path", path.display()))?;
        // SAFETY: `statvfs` is plain integers: all zeroes is a valid value,
        // overwritten below.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a zeroed out-parameter.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(format!(
                "cannot read the filesystem of {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let frsize = st.f_frsize as f64;
        let total = st.f_blocks as f64 * frsize;
        let avail = st.f_bavail as f64 * frsize;
        let free = st.f_bfree as f64 * frsize;
        if total <= 0.0 {
            return Err(format!("{} has an empty filesystem", path.display()));
        }
        Ok(match p.metric {
            HostMetric::DiskFree => avail / (1024.0 * 1024.0),
            // Used as `df` counts it: of what non-root users can have.
            _ => (total - free) / (total - free + avail),
        })
    }

    /// Matching lines per minute over the window. Follows rotation: a new
    /// file (another inode) or a shorter one is read from its start.
    fn log_rate(
        &self,
        r: &Resource,
        signal: &str,
        p: &HostProbe,
        window: Duration,
    ) -> Result<f64, String> {
        let file = match &p.file {
            Some(f) => self.resolve(f),
            None if r.key.kind == Kind::HostProcess => {
                self.processes.join(format!("{}.log", r.key.name))
            }
            None => {
                return Err("logRate needs `file` for a resource that is not a host.Process".into())
            }
        };
        let pattern = regex::Regex::new(p.regex.as_deref().unwrap_or("(?i)error"))
            .map_err(|e| format!("invalid regex: {e}"))?;
        let mut f = match std::fs::File::open(&file) {
            Ok(f) => f,
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        let meta = f.metadata().map_err(|e| e.to_string())?;
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        let len = meta.len();
        let now = Instant::now();
        let last = self.with_history(&r.key, signal, |h| h.log);
        let from = match last {
            Some((ino, off)) if ino == inode && off <= len => off,
            None => {
                // First reading: count from now on, not the whole history.
                self.with_history(&r.key, signal, |h| {
                    h.log = Some((inode, len));
                    h.last_read = Some(now);
                });
                return Err(format!(
                    "counting lines of {} from now on (a rate needs tend watch)",
                    file.display()
                ));
            }
            _ => 0,
        };
        let mut count = 0usize;
        let mut read_to = from;
        if len > from {
            f.seek(SeekFrom::Start(from)).map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            f.take(MAX_LOG_READ.min(len - from))
                .read_to_end(&mut buf)
                .map_err(|e| e.to_string())?;
            // Only whole lines; a partial last line is read next time.
            let whole = match buf.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                // A line longer than a whole read: skip what was read of it.
                None if buf.len() as u64 >= MAX_LOG_READ => buf.len(),
                None => 0,
            };
            read_to = from + whole as u64;
            count = String::from_utf8_lossy(&buf[..whole])
                .lines()
                .filter(|l| pattern.is_match(l))
                .count();
        }
        self.with_history(&r.key, signal, |h| {
            h.log = Some((inode, read_to));
            let since = h.last_read.replace(now).unwrap_or(now);
            h.lines.push_back((since, now, count as f64));
            while h
                .lines
                .front()
                .is_some_and(|(_, to, _)| now.duration_since(*to) > window)
            {
                h.lines.pop_front();
            }
            // Over the window, or over the time the readings cover when
            // they are further apart than the window.
            let covered = h
                .lines
                .front()
                .map_or(Duration::ZERO, |(from, _, _)| now.duration_since(*from));
            let lines: f64 = h.lines.iter().map(|(_, _, c)| c).sum();
            Ok(lines / window.max(covered).as_secs_f64() * 60.0)
        })
    }

    fn restarts(&self, key: &ResourceKey, window: Duration) -> f64 {
        let now = Utc::now();
        let since = chrono::Duration::from_std(window)
            .ok()
            .and_then(|w| now.checked_sub_signed(w))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.starts
            .lock()
            .map(|s| {
                s.get(key)
                    .map_or(0, |v| v.iter().filter(|t| **t >= since).count())
            })
            .unwrap_or(0) as f64
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }
}

/// The MiB taken by the files under `dir` (at most 100,000 of them).
fn tree_mib(dir: &Path) -> Result<f64, String> {
    let mut bytes = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == dir => return Ok(0.0),
            Err(e) => return Err(format!("cannot read {}: {e}", d.display())),
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > 100_000 {
                return Err(format!("{} holds more than 100000 files", dir.display()));
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => bytes += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    Ok(bytes as f64 / (1024.0 * 1024.0))
}

/// The host's memory in MiB (`MemTotal`).
fn host_memory_mib() -> Result<f64, String> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| "no MemTotal in /proc/meminfo".to_string())
}

fn threshold(p: &HostProbe, v: f64) -> Read3 {
    let shown = format!("{v:.3}");
    let shown = shown.trim_end_matches('0').trim_end_matches('.');
    let unit = p.metric.unit();
    match (p.above, p.below) {
        (Some(a), _) if v > a => (
            Status::Unhealthy,
            Some(v),
            format!("{} {shown}{unit} is above {a}{unit}", p.metric.as_str()),
        ),
        (_, Some(b)) if v < b => (
            Status::Unhealthy,
            Some(v),
            format!("{} {shown}{unit} is below {b}{unit}", p.metric.as_str()),
        ),
        _ => (
            Status::Healthy,
            Some(v),
            format!("{} {shown}{unit}", p.metric.as_str()),
        ),
    }
}

/// The pid of a running `host.Process` (its live id reads `pid N`); `None`
/// for the host itself.
fn pid_of(r: &Resource, live: Option<&LiveResource>) -> Option<i32> {
    if r.key.kind != Kind::HostProcess {
        return None;
    }
    live.and_then(|l| l.id.strip_prefix("pid "))
        .and_then(|p| p.parse().ok())
        .or(Some(-1))
}

fn not_running() -> String {
    "the process is not running".into()
}

fn memory_mib(pid: Option<i32>) -> Result<f64, String> {
    match pid {
        Some(pid) if pid > 0 => {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map_err(|_| not_running())?;
            let kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .ok_or_else(not_running)?;
            Ok(kb / 1024.0)
        }
        Some(_) => Err(not_running()),
        None => {
            let info = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            };
            match (field("MemTotal:"), field("MemAvailable:")) {
                (Some(t), Some(a)) => Ok((t - a) / 1024.0),
                _ => Err("cannot read /proc/meminfo".into()),
            }
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in clock ticks.
fn process_ticks(pid: i32) -> Result<u64, String> {
    if pid <= 0 {
        return Err(not_running());
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| not_running())?;
    let rest = &stat[stat.rfind(')').ok_or_else(not_running)? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(not_running)
    };
    Ok(n(11)? + n(12)?)
}

/// Busy clock ticks of the whole host.
fn host_busy_ticks() -> Result<u64, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| e.to_string())?;
    let line = stat.lines().next().ok_or("cannot read /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    Ok(v.iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| *x)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(metric: HostMetric) -> HostProbe {
        HostProbe {
            metric,
            above: None,
            below: None,
            path: None,
            file: None,
            regex: None,
            window: None,
            quota: None,
            limit: None,
            over: None,
            floor: None,
            min_fit: None,
        }
    }

    #[test]
    fn a_threshold_names_the_value_and_the_limit() {
        let mut p = probe(HostMetric::Memory);
        p.above = Some(100.0);
        let (s, v, d) = threshold(&p, 150.0);
        assert_eq!((s, v), (Status::Unhealthy, Some(150.0)));
        assert_eq!(d, "memory 150MiB is above 100MiB");
        assert_eq!(threshold(&p, 50.0).0, Status::Healthy);
    }

    #[test]
    fn memory_and_cpu_of_this_process_and_the_host_are_read() {
        let me = std::process::id() as i32;
        assert!(memory_mib(Some(me)).unwrap() > 1.0);
        assert!(memory_mib(None).unwrap() > 1.0);
        assert!(memory_mib(Some(-1)).is_err());
        assert!(process_ticks(me).is_ok());
        assert!(host_busy_ticks().unwrap() > 0);
    }

    #[tokio::test]
    async fn disk_usage_of_a_path_is_a_share_and_free_space_is_mib() {
        let h = HostSignals::new(Path::new("/tmp"), Path::new("/"), Default::default());
        let mut p = probe(HostMetric::Disk);
        p.path = Some("/".into());
        let used = h.disk(&p).await.unwrap();
        assert!((0.0..=1.0).contains(&used), "{used}");
        p.metric = HostMetric::DiskFree;
        assert!(h.disk(&p).await.unwrap() > 0.0);
        p.path = Some("/no/such/path".into());
        assert!(h.disk(&p).await.is_err());
    }

    #[tokio::test]
    async fn a_quota_measures_the_files_under_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.bin"), vec![0u8; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("sub/b.bin"), vec![0u8; 1 << 20]).unwrap();
        let h = HostSignals::new(Path::new("/tmp"), dir.path(), Default::default());
        let mut p = probe(HostMetric::Disk);
        p.path = Some(".".into());
        p.quota = Some(8.0);
        assert_eq!(h.disk(&p).await.unwrap(), 0.25);
        p.metric = HostMetric::DiskFree;
        assert_eq!(h.disk(&p).await.unwrap(), 6.0);
        p.path = Some("missing".into());
        assert_eq!(h.disk(&p).await.unwrap(), 8.0, "nothing written yet");
    }
}
