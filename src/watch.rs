//! `tend watch`: the loop, run until stopped.
//!
//! Full reconciles on an interval with jitter, healing passes (watched
//! resources only, desired state reused) in between, and a full pass at once
//! when a local source directory changes, a signed push arrives or a
//! process tend started exits. Each pass hands its healing work to the
//! per-resource controller ([`heal::Runner`]), which runs beside the loop:
//! a runbook step under verification on one resource never delays a pass
//! or another resource's healing. Desired state, providers (with their SDK
//! clients), policies and probers are [`Prepared`] once and rebuilt only
//! when what they were built from changes. Each pass is handed to the
//! sinks off the loop ([`crate::publish::Background`]). SIGINT and SIGTERM
//! let the action in flight finish and record its outcome; no new action
//! starts, and a sink still publishing is cut short. A pass that fails (an
//! unreadable source, invalid desired state, a failed inventory) changes
//! nothing and the loop goes on. See ARCHITECTURE.md.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::Watcher as _;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::controller::Until;
use crate::heal;
use crate::health::alerts::AlertBook;
use crate::publish::{Background, Owned, Publisher};
use crate::reconcile::{self, Applied, Healing, Options, Prepared, Scope};
use crate::source::Source;
use crate::state::{RunLock, Store};

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

/// Why the loop woke up before its interval.
enum Wake {
    Changed,
    /// A process tend started has exited: a full pass at once.
    Exited(String),
    /// A healing pass at once (an alert was pushed).
    Heal,
    Stop,
}

/// How long sinks may go on publishing after a stop.
const PUBLISH_GRACE: Duration = Duration::from_secs(2);

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
    publisher: Publisher,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel::<Wake>();
    let stop = Stop::new();
    spawn_signal_handler(stop.clone(), tx.clone())?;
    let _fs_watch = match source {
        Source::Dir(dir) => Some(watch_dir(dir, tx.clone())?),
        Source::Git { .. } => None,
    };
    let alerts = Arc::new(AlertBook::new());
    let store: StoreSlot = Arc::new(std::sync::Mutex::new(None));
    let publisher = match wo.listen {
        Some(addr) => listen(addr, source, wo, &tx, &alerts, &store, publisher).await?,
        None => publisher,
    };
    let mut w = Watch {
        source,
        opts,
        wo,
        rx,
        stop,
        alerts,
        sinks: publisher.spawn(),
        runner: heal::Runner::new(),
        controller: None,
        exits: Exits::new(tx.clone()),
        state: None,
        store,
        member: None,
        listening: None,
        wake: tx.clone(),
        current: None,
        passes: 0,
        last_full: None,
        force_full: true,
        wake_at: None,
        last_alert: None,
    };
    let result = w.run().await;
    // Shutting down consumes the loop, and with it its run lock: the lock
    // is released before this returns.
    w.shutdown().await;
    result
}

/// Serves `/metrics`, `/healthz`, `/readyz` and the hooks; the metrics sink
/// joins the publisher.
async fn listen(
    addr: std::net::SocketAddr,
    source: &Source,
    wo: &WatchOptions,
    tx: &mpsc::UnboundedSender<Wake>,
    alerts: &Arc<AlertBook>,
    store: &StoreSlot,
    publisher: Publisher,
) -> anyhow::Result<Publisher> {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let wake = tx.clone();
    let heal = tx.clone();
    let service = crate::serve::Service {
        metrics: Arc::clone(&metrics),
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
        wake: Arc::new(move || {
            let _ = wake.send(Wake::Changed);
        }),
        alertmanager_token: std::env::var("TEND_ALERTMANAGER_TOKEN")
            .ok()
            .filter(|s| !s.is_empty()),
        alerts: Arc::clone(alerts),
        heal: Arc::new(move || {
            let _ = heal.send(Wake::Heal);
        }),
        pause_token: std::env::var("TEND_PAUSE_TOKEN")
            .ok()
            .filter(|s| !s.is_empty()),
        pauses: {
            let store = Arc::clone(store);
            Arc::new(move |request| pause_request(&store, request))
        },
        announce: {
            let store = Arc::clone(store);
            Arc::new(move |what| {
                let store = store.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(store) = store {
                    crate::fleet::announce(&*store, what);
                }
            })
        },
    };
    let bound = crate::serve::spawn(addr, service)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {addr}: {e}"))?;
    info!(%bound, "Serving /metrics, /healthz and /readyz.");
    Ok(publisher.with(crate::metrics::MetricsSink(metrics)))
}

/// The stop signal, as the executor reads it (a flag) and as the
/// controller waits for it (a channel).
#[derive(Clone)]
struct Stop {
    flag: Arc<AtomicBool>,
    tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Stop {
    fn new() -> Stop {
        Stop {
            flag: Arc::new(AtomicBool::new(false)),
            tx: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// The loop's state between wake-ups.
struct Watch<'a> {
    source: &'a Source,
    opts: &'a Options,
    wo: &'a WatchOptions,
    rx: mpsc::UnboundedReceiver<Wake>,
    stop: Stop,
    alerts: Arc<AlertBook>,
    sinks: Background,
    runner: Arc<heal::Runner>,
    /// The controller's task, started with the first valid desired state.
    controller: Option<tokio::task::JoinHandle<()>>,
    exits: Exits,
    /// The state directory of the current desired state and its run lock,
    /// held until the loop is dropped.
    state: Option<(crate::state::Location, RunLock)>,
    /// The same store, for the listener.
    store: StoreSlot,
    /// This watcher as a member of the fleet sharing that store, if one
    /// does.
    member: Option<crate::fleet::Member>,
    /// What the other members announce, while a member.
    listening: Option<crate::state::Listening>,
    /// Wakes this loop (for what the other members announce).
    wake: mpsc::UnboundedSender<Wake>,
    /// The last valid desired state, prepared.
    current: Option<Prepared>,
    passes: u64,
    last_full: Option<Instant>,
    force_full: bool,
    /// When a backoff allows the next attempt, if sooner than the interval.
    wake_at: Option<Instant>,
    /// When the last pass an alert asked for began.
    last_alert: Option<Instant>,
}

/// A pushed alert is acted on after this, so that the rest of its burst
/// joins it.
const ALERT_SETTLE: Duration = Duration::from_millis(100);

/// At most one healing pass per this long is started by pushed alerts,
/// however many arrive: a token holder posting in a loop cannot make tend
/// do nothing but heal.
const ALERT_SPACING: Duration = Duration::from_secs(1);

impl Watch<'_> {
    /// Wakes this loop on what the other members announce: a full pass
    /// for a push or a pause, the alert recorded and a healing pass for
    /// an alert.
    fn hear(&self, store: &Arc<dyn Store>) -> Option<crate::state::Listening> {
        use crate::fleet::Announcement;
        let (wake, alerts) = (self.wake.clone(), Arc::clone(&self.alerts));
        crate::fleet::listen(&**store, move |what| match what {
            Announcement::Changed => {
                let _ = wake.send(Wake::Changed);
            }
            Announcement::Alert {
                kind,
                name,
                alertname,
                instance,
                firing,
                summary,
            } => {
                let Some(kind) = crate::model::Kind::parse(&kind) else {
                    return;
                };
                alerts.set_instance(
                    crate::vocab::ResourceKey::new(kind, name),
                    &alertname,
                    &instance,
                    firing,
                    summary,
                );
                let _ = wake.send(Wake::Heal);
            }
        })
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        loop {
            if self.stop.is_set() {
                return Ok(());
            }
            self.pass().await?;
            self.passes += 1;
            if self.wo.max_passes > 0 && self.passes >= self.wo.max_passes {
                return Ok(());
            }
            self.wait().await;
        }
    }

    /// One pass: full when due (reloading the source), else healing.
    async fn pass(&mut self) -> anyhow::Result<()> {
        let full = self.force_full
            || self.current.is_none()
            || self
                .last_full
                .is_none_or(|t| t.elapsed() >= self.wo.interval);
        self.force_full = false;
        // While the source is broken (unreadable, invalid), the resources
        // of the last valid desired state are still healed; nothing of the
        // broken state is applied.
        let mut broken = false;
        if full {
            self.last_full = Some(Instant::now());
            if let Err(e) = self.reload().await {
                self.sinks.send(Owned::Failed(Arc::new(e)));
                broken = true;
            }
        }
        let Some(prepared) = self.current.as_ref() else {
            return Ok(());
        };
        let store = locked_store(&mut self.state, prepared)?;
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&store));
        let desired = &prepared.loaded().desired;
        let keys: Vec<_> = desired.resources.iter().map(|r| r.key.clone()).collect();
        match &self.member {
            Some(m) if m.of(&store) => m.set_resources(&keys),
            _ => {
                self.member = None;
                self.listening = None;
                self.member =
                    crate::fleet::Member::join(&store, &keys, desired.settings.lease()).await;
                if self.member.is_some() {
                    self.listening = Some(self.hear(&store)).flatten();
                }
            }
        }
        start_controller(&mut self.controller, &self.runner, &self.stop, prepared);
        let (command, scope) = if full && !broken {
            ("tend watch", Scope::Full)
        } else {
            ("tend watch (heal)", Scope::Healing)
        };
        let healing = Healing {
            runner: &self.runner,
            stop: &self.stop.flag,
            to_the_end: false,
        };
        match reconcile::apply(prepared, self.opts, &store, command, scope, healing).await {
            Ok(applied) => {
                self.wake_at = backoff_ends(&applied);
                self.sinks.send(Owned::Pass {
                    applied: Arc::new(applied),
                    full: scope == Scope::Full,
                });
            }
            Err(error) => self.sinks.send(Owned::Failed(Arc::new(error))),
        }
        self.exits.follow(prepared);
        Ok(())
    }

    /// Loads desired state and brings the runtime up to date with it. On
    /// an error, the last valid desired state and its runtime stay.
    async fn reload(&mut self) -> Result<(), reconcile::PassError> {
        let next = match &self.current {
            Some(p) => p.reload(self.source, self.opts).await?,
            None => Prepared::new(self.source, self.opts, Arc::clone(&self.alerts)).await?,
        };
        self.alerts.set_desired(&next.loaded().desired);
        self.current = Some(next);
        Ok(())
    }

    /// Sleeps until the next pass is due or something wakes the loop. A
    /// process a healing step started is followed for its exit at once.
    async fn wait(&mut self) {
        let mut wait = jittered(self.wo.heal_interval.min(self.wo.interval), self.wo.jitter);
        if let Some(at) = self.wake_at {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        let until = tokio::time::Instant::now() + wait;
        let gained = self.member.as_ref().map(crate::fleet::Member::gained);
        let took_over = async {
            match &gained {
                Some(g) => g.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(took_over);
        loop {
            tokio::select! {
                _ = &mut took_over => {
                    info!("This member took over shared resources; reconciling them now.");
                    self.force_full = true;
                    return;
                }
                _ = tokio::time::sleep_until(until) => {
                    // A backoff or a pause ended: every resource it held
                    // back is reconciled, watched or not.
                    if self.wake_at.is_some_and(|at| at <= Instant::now()) {
                        self.force_full = true;
                        self.wake_at = None;
                    }
                    return;
                }
                wake = self.rx.recv() => {
                    match wake {
                        Some(Wake::Changed) => self.changed().await,
                        Some(Wake::Heal) => {
                            let settle = self.last_alert.map_or(ALERT_SETTLE, |t| {
                                ALERT_SPACING.saturating_sub(t.elapsed()).max(ALERT_SETTLE)
                            });
                            tokio::time::sleep(settle).await;
                            self.coalesce();
                            self.last_alert = Some(Instant::now());
                            info!("An alert was pushed; healing now.");
                        }
                        Some(Wake::Exited(name)) => {
                            info!(process = %name, "A process tend started has exited; reconciling now.");
                            self.force_full = true;
                        }
                        Some(Wake::Stop) | None => {}
                    }
                    return;
                }
                _ = self.runner.looked() => {
                    if let Some(prepared) = &self.current {
                        self.exits.follow(prepared);
                    }
                }
            }
        }
    }

    /// Wake-ups that queued up behind the one being handled become one
    /// pass: a burst of pushed alerts is one healing pass, not one each.
    fn coalesce(&mut self) {
        while let Ok(w) = self.rx.try_recv() {
            match w {
                Wake::Heal => {}
                Wake::Changed | Wake::Exited(_) => self.force_full = true,
                Wake::Stop => self.stop.set(),
            }
        }
    }

    async fn changed(&mut self) {
        // Let a burst of writes (a checkout, an editor) settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(w) = self.rx.try_recv() {
            if matches!(w, Wake::Stop) {
                self.stop.set();
            }
        }
        info!("Source changed; reconciling now.");
        self.force_full = true;
    }

    /// The action in flight finishes and is recorded, steps under
    /// verification are recorded as interrupted, and the sinks get a
    /// moment to finish.
    async fn shutdown(mut self) {
        self.stop.set();
        if let Some(task) = self.controller.take() {
            if let Err(e) = task.await {
                warn!(error = %e, "The healing controller ended abnormally.");
            }
        }
        self.sinks.close(PUBLISH_GRACE).await;
    }
}

/// The store of the current desired state, locked. The state directory can
/// change with the desired state (Settings spec.stateDir); the lock follows
/// it.
/// The loop's state store, once a pass has opened it: the listener
/// records pauses there.
type StoreSlot = Arc<std::sync::Mutex<Option<Arc<dyn Store>>>>;

/// `POST /pause` and `POST /resume`, recorded in the loop's state.
fn pause_request(slot: &StoreSlot, request: crate::serve::PauseRequest) -> Result<String, String> {
    use crate::policy::gates::pause_in_words;
    let store = slot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or("no pass has opened the state yet; try again in a moment")?;
    let now = chrono::Utc::now();
    match request {
        crate::serve::PauseRequest::Pause {
            selector,
            until,
            reason,
        } => {
            store
                .pause(&crate::state::NewPause {
                    selector: &selector,
                    reason: &reason,
                    who: "the listener (POST /pause)",
                    until,
                })
                .map_err(|e| e.to_string())?;
            let made = store.pauses(now).map_err(|e| e.to_string())?;
            Ok(made.last().map(pause_in_words).unwrap_or_default())
        }
        crate::serve::PauseRequest::Resume { selector } => {
            let ended = store
                .resume(selector.as_deref(), now)
                .map_err(|e| e.to_string())?;
            if ended.is_empty() {
                return Err("nothing to resume: no such pause is in force".into());
            }
            Ok(ended
                .iter()
                .map(|p| format!("resumed: {}", pause_in_words(p)))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }
}

fn locked_store(
    state: &mut Option<(crate::state::Location, RunLock)>,
    prepared: &Prepared,
) -> anyhow::Result<Arc<dyn Store>> {
    let loaded = prepared.loaded();
    let at = (loaded.state_dir.clone(), loaded.shared.clone());
    if let Some((was, lock)) = state.as_ref() {
        if *was == at {
            return Ok(Arc::clone(lock.store()));
        }
    }
    // The old store's lock is released before the new one is taken.
    drop(state.take());
    let s: Arc<dyn Store> = crate::state::open(&at.0, at.1.as_deref())?.into();
    let lock = crate::state::lock(&s, "tend watch")?;
    *state = Some((at, lock));
    Ok(s)
}

/// Starts the healing controller beside the loop, once.
fn start_controller(
    task: &mut Option<tokio::task::JoinHandle<()>>,
    runner: &Arc<heal::Runner>,
    stop: &Stop,
    prepared: &Prepared,
) {
    if task.is_some() {
        return;
    }
    let runner = Arc::clone(runner);
    let concurrency = prepared.loaded().desired.settings.healing.concurrency;
    let stop = stop.tx.subscribe();
    *task = Some(tokio::spawn(async move {
        runner.run(concurrency, Until::Stopped(&stop)).await;
    }));
}

/// When the backoff of an escalated resource next allows restoring it, as
/// a time of this process's clock.
fn backoff_ends(applied: &Applied) -> Option<Instant> {
    let now = chrono::Utc::now();
    let plan = &applied.plan;
    plan.remedies
        .iter()
        .filter_map(|r| r.baseline.as_ref()?.not_before)
        // A pause that ends by itself: the loop acts again at once.
        .chain(plan.paused.iter().filter_map(|p| p.until))
        .min()
        .map(|t| Instant::now() + (t - now).to_std().unwrap_or_default())
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
    fn follow(&mut self, prepared: &Prepared) {
        let loaded = prepared.loaded();
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

fn spawn_signal_handler(stop: Stop, tx: mpsc::UnboundedSender<Wake>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        warn!("Stopping: the action in flight finishes, no new one starts.");
        stop.set();
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
