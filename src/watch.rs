//! `tend watch`: the loop, run until stopped.
//!
//! Full reconciles on an interval with jitter, healing passes (watched
//! resources only, desired state reused) in between, and a full pass at once
//! when a local source directory changes. Providers (with their SDK
//! clients), policies and probers live in a [`Runtime`] built once and
//! rebuilt only when what it was built from changes. Each pass is handed to
//! the [`Publisher`] after it ends. SIGINT and SIGTERM let the action in
//! flight finish and record its outcome; no new action starts. A pass that
//! fails (an unreadable source, invalid desired state, a failed inventory)
//! changes nothing and the loop goes on. See ARCHITECTURE.md.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::Watcher as _;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::publish::{Published, Publisher};
use crate::reconcile::{self, Loaded, Options, PassError, Runtime, Scope};
use crate::source::Source;
use crate::state::Store;

/// What the loop needs besides the source.
pub struct WatchOptions {
    pub interval: Duration,
    pub heal_interval: Duration,
    /// Share of the interval by which each wait varies (0.1 = ±10%).
    pub jitter: f64,
    /// Stop after this many passes (for scripts and tests); 0 = forever.
    pub max_passes: u64,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, if anywhere.
    pub listen: Option<std::net::SocketAddr>,
}

enum Wake {
    Changed,
    /// A process tend started has exited: a full pass at once.
    Exited(String),
    /// A healing pass at once (an alert was pushed).
    Heal,
    Stop,
}

/// The wait before the next pass: `base` varied by up to ±`jitter`.
pub fn jittered(base: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 || base.is_zero() {
        return base;
    }
    let factor = 1.0 + jitter * (rand::random::<f64>() * 2.0 - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// Runs passes until SIGINT/SIGTERM (or `max_passes`), handing each to
/// `publisher`.
pub async fn run(
    source: &Source,
    opts: &Options,
    wo: &WatchOptions,
    mut publisher: Publisher,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<Wake>();
    spawn_signal_handler(Arc::clone(&stop), tx.clone())?;
    let _fs_watch = match source {
        Source::Dir(dir) => Some(watch_dir(dir, tx.clone())?),
        Source::Git { .. } => None,
    };
    let alerts = std::sync::Arc::new(crate::health::alerts::AlertBook::new());
    if let Some(addr) = wo.listen {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let wake = tx.clone();
        let service = crate::serve::Service {
            metrics: std::sync::Arc::clone(&metrics),
            // Ready while the last successful pass is at most three
            // intervals old.
            ready_within: wo.interval * 3,
            github_secret: std::env::var("TEND_GITHUB_WEBHOOK_SECRET")
                .ok()
                .filter(|s| !s.is_empty()),
            branch: match source {
                Source::Git { reference, .. } => reference.clone(),
                Source::Dir(_) => None,
            },
            wake: std::sync::Arc::new(move || {
                let _ = wake.send(Wake::Changed);
            }),
            alertmanager_token: std::env::var("TEND_ALERTMANAGER_TOKEN")
                .ok()
                .filter(|s| !s.is_empty()),
            alerts: std::sync::Arc::clone(&alerts),
            heal: {
                let heal = tx.clone();
                std::sync::Arc::new(move || {
                    let _ = heal.send(Wake::Heal);
                })
            },
        };
        let bound = crate::serve::spawn(addr, service)
            .await
            .map_err(|e| anyhow::anyhow!("failed to listen on {addr}: {e}"))?;
        info!(%bound, "Serving /metrics, /healthz and /readyz.");
        publisher = publisher.with(crate::metrics::MetricsSink(metrics));
    }

    let mut exits = Exits::new(tx.clone());
    let mut state: Option<(PathBuf, Box<dyn Store>)> = None;
    let mut current: Option<(Loaded, Runtime)> = None;
    let mut passes = 0u64;
    let mut last_full: Option<Instant> = None;
    let mut force_full = true;
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let full =
            force_full || current.is_none() || last_full.is_none_or(|t| t.elapsed() >= wo.interval);
        // While the source is broken (unreadable, invalid), the resources
        // of the last valid desired state are still healed; nothing of the
        // broken state is applied.
        let mut broken = false;
        if full {
            last_full = Some(Instant::now());
            if let Err(e) = reload(source, opts, &mut current, &alerts).await {
                publish(&mut publisher, &Published::Failed(&e));
                broken = true;
            }
        }
        force_full = false;
        if let Some((l, rt)) = current.as_ref() {
            // The state directory can change with the desired state
            // (Settings spec.stateDir); the lock follows it.
            if state.as_ref().is_none_or(|(d, _)| *d != l.state_dir) {
                if let Some((_, old)) = state.take() {
                    let _ = old.unlock();
                }
                let s = crate::state::open(&l.state_dir)?;
                s.lock("tend watch")?;
                state = Some((l.state_dir.clone(), s));
            }
            let Some((_, s)) = state.as_ref() else {
                continue;
            };
            let (command, scope) = if full && !broken {
                ("tend watch", Scope::Full)
            } else {
                ("tend watch (heal)", Scope::Healing)
            };
            match reconcile::apply(l, rt, opts, &**s, command, scope, &stop).await {
                Ok(applied) => publish(
                    &mut publisher,
                    &Published::Pass {
                        applied: &applied,
                        full: scope == Scope::Full,
                    },
                ),
                Err(error) => publish(&mut publisher, &Published::Failed(&error)),
            }
            exits.follow(l);
        }
        passes += 1;
        if wo.max_passes > 0 && passes >= wo.max_passes {
            break Ok(());
        }
        let wait = jittered(wo.heal_interval.min(wo.interval), wo.jitter);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            wake = rx.recv() => match wake {
                Some(Wake::Changed) => {
                    // Let a burst of writes (a checkout, an editor) settle.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while let Ok(w) = rx.try_recv() {
                        if matches!(w, Wake::Stop) {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                    info!("Source changed; reconciling now.");
                    force_full = true;
                }
                Some(Wake::Heal) => info!("An alert was pushed; healing now."),
                Some(Wake::Exited(name)) => {
                    info!(process = %name, "A process tend started has exited; reconciling now.");
                    force_full = true;
                }
                Some(Wake::Stop) | None => {}
            },
        }
    };
    if let Some((_, s)) = state {
        s.unlock()?;
    }
    result
}

/// Loads desired state and brings the runtime up to date with it (built
/// on the first load, refreshed after). On an error, `current` is left as
/// it was: the last valid desired state and its runtime.
async fn reload(
    source: &Source,
    opts: &Options,
    current: &mut Option<(Loaded, Runtime)>,
    alerts: &std::sync::Arc<crate::health::alerts::AlertBook>,
) -> Result<(), PassError> {
    let mut loaded = reconcile::load(source, opts)?;
    alerts.set_routes(crate::health::alerts::routes(&loaded.desired));
    match current {
        Some((old, rt)) => {
            rt.refresh(&loaded).await?;
            rt.normalize(&mut loaded);
            *old = loaded;
        }
        None => {
            let mut rt = Runtime::build(&loaded).await?;
            rt.set_alerts(std::sync::Arc::clone(alerts));
            rt.normalize(&mut loaded);
            *current = Some((loaded, rt));
        }
    }
    Ok(())
}

/// Exit watches of the processes tend started: a pidfd per running
/// `host.Process`, readable the moment the process exits, so a crash is
/// handled at once instead of at the next interval (and through the same
/// decide, act and verify path, crash-loop backoff included).
struct Exits {
    watching: std::collections::HashMap<String, (i32, tokio::task::JoinHandle<()>)>,
    tx: mpsc::UnboundedSender<Wake>,
}

impl Exits {
    fn new(tx: mpsc::UnboundedSender<Wake>) -> Exits {
        Exits {
            watching: Default::default(),
            tx,
        }
    }

    /// Watches every declared process that runs now and is not watched yet.
    fn follow(&mut self, loaded: &Loaded) {
        let declared: std::collections::HashSet<&str> = loaded
            .desired
            .resources
            .iter()
            .filter(|r| r.key.kind == crate::model::Kind::HostProcess)
            .map(|r| r.key.name.as_str())
            .collect();
        self.watching.retain(|name, (_, task)| {
            let keep = declared.contains(name.as_str()) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for name in declared {
            let Some(pid) = crate::provider::host::started_pid(&loaded.state_dir, name) else {
                continue;
            };
            if self.watching.get(name).is_some_and(|(p, _)| *p == pid) {
                continue;
            }
            let fd = match pidfd(pid) {
                Ok(fd) => fd,
                Err(e) => {
                    warn!(process = name, pid, error = %e, "Cannot watch the process for its exit; it is checked every interval.");
                    continue;
                }
            };
            let tx = self.tx.clone();
            let owned = name.to_string();
            let task = tokio::spawn(async move {
                if exited(fd).await.is_ok() {
                    let _ = tx.send(Wake::Exited(owned));
                }
            });
            if let Some((_, old)) = self.watching.insert(name.to_string(), (pid, task)) {
                old.abort();
            }
        }
    }
}

/// A pidfd of `pid` (Linux 5.3 and later).
fn pidfd(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just opened and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Resolves when the process behind the pidfd exits.
async fn exited(fd: std::os::fd::OwnedFd) -> std::io::Result<()> {
    // SAFETY: an OwnedFd stays open, and is the same descriptor, for as
    // long as the AsyncFd owns it.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let _ready = fd.readable().await?;
    Ok(())
}

/// A sink that fails is logged; the loop goes on.
fn publish(publisher: &mut Publisher, what: &Published<'_>) {
    if let Err(e) = publisher.publish(what) {
        warn!(error = %e, "Publishing the pass failed.");
    }
}

fn spawn_signal_handler(
    stop: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Wake>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        warn!("Stopping: the action in flight finishes, no new one starts.");
        stop.store(true, Ordering::SeqCst);
        let _ = tx.send(Wake::Stop);
    });
    Ok(())
}

/// Wakes the loop when anything under `dir` changes, except tend's own
/// state directory.
fn watch_dir(
    dir: &std::path::Path,
    tx: mpsc::UnboundedSender<Wake>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        let relevant = ev.paths.iter().any(|p| {
            !p.components()
                .any(|c| c.as_os_str() == ".tend" || c.as_os_str() == ".git")
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "rego")
                )
        });
        if relevant && (ev.kind.is_modify() || ev.kind.is_create() || ev.kind.is_remove()) {
            let _ = tx.send(Wake::Changed);
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_share() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), 0.1);
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
        assert_eq!(
            jittered(Duration::from_secs(3), 0.0),
            Duration::from_secs(3)
        );
    }
}
