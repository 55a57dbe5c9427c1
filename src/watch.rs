//! `tend watch`: the loop, run until stopped.
//!
//! Full reconciles on an interval with jitter, healing passes (watched
//! resources only, desired state reused) in between, and a full pass at once
//! when a local source directory changes. SIGINT and SIGTERM let the action
//! in flight finish and record its outcome; no new action starts. A pass
//! that fails (an unreadable source, invalid desired state, a failed
//! inventory) changes nothing and the loop goes on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::Watcher as _;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::reconcile::{self, Applied, Loaded, Options, PassError};
use crate::source::Source;
use crate::state::State;

/// What the loop needs besides the source.
pub struct WatchOptions {
    pub interval: Duration,
    pub heal_interval: Duration,
    /// Share of the interval by which each wait varies (0.1 = ±10%).
    pub jitter: f64,
    /// Stop after this many passes (for scripts and tests); 0 = forever.
    pub max_passes: u64,
}

/// What one pass produced, for the caller to print.
pub enum PassReport<'a> {
    Done { full: bool, applied: &'a Applied },
    Failed { full: bool, error: &'a PassError },
}

enum Wake {
    Changed,
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

/// Runs passes until SIGINT/SIGTERM (or `max_passes`). `on_pass` sees each
/// pass's outcome.
pub async fn run(
    source: &Source,
    opts: &Options,
    wo: &WatchOptions,
    mut on_pass: impl FnMut(PassReport<'_>),
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<Wake>();
    spawn_signal_handler(Arc::clone(&stop), tx.clone())?;
    let _fs_watch = match source {
        Source::Dir(dir) => Some(watch_dir(dir, tx.clone())?),
        Source::Git { .. } => None,
    };

    let mut state: Option<(PathBuf, State)> = None;
    let mut loaded: Option<Loaded> = None;
    let mut passes = 0u64;
    let mut last_full: Option<Instant> = None;
    let mut force_full = true;
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let full =
            force_full || loaded.is_none() || last_full.is_none_or(|t| t.elapsed() >= wo.interval);
        if full {
            last_full = Some(Instant::now());
            match reconcile::load(source, opts) {
                Ok(l) => loaded = Some(l),
                Err(e) => {
                    on_pass(PassReport::Failed { full, error: &e });
                    loaded = None;
                }
            }
        }
        force_full = false;
        if let Some(l) = loaded.as_mut() {
            // The state directory can change with the desired state
            // (Settings spec.stateDir); the lock follows it.
            if state.as_ref().is_none_or(|(d, _)| *d != l.state_dir) {
                if let Some((_, old)) = state.take() {
                    let _ = old.unlock();
                }
                let mut s = State::open(&l.state_dir)?;
                s.lock("tend watch")?;
                state = Some((l.state_dir.clone(), s));
            }
            let Some((_, s)) = state.as_ref() else {
                continue;
            };
            let outcome = if full {
                reconcile::apply(l, opts, s, "tend watch", &stop).await
            } else {
                heal_pass(l, opts, s, &stop).await
            };
            match &outcome {
                Ok(applied) => on_pass(PassReport::Done { full, applied }),
                Err(error) => on_pass(PassReport::Failed { full, error }),
            }
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
                Some(Wake::Stop) | None => {}
            },
        }
    };
    if let Some((_, s)) = state {
        s.unlock()?;
    }
    result
}

/// A healing pass: only the watched resources, with the desired state of
/// the last full pass.
async fn heal_pass(
    loaded: &mut Loaded,
    opts: &Options,
    state: &State,
    stop: &AtomicBool,
) -> Result<Applied, PassError> {
    let all = std::mem::take(&mut loaded.desired.resources);
    let (watched, rest): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|r| crate::health::watched(r, &loaded.desired.signatures));
    loaded.desired.resources = watched;
    let prune = std::mem::replace(&mut loaded.desired.settings.prune.enabled, false);
    let result = reconcile::apply(loaded, opts, state, "tend watch (heal)", stop).await;
    loaded.desired.settings.prune.enabled = prune;
    loaded.desired.resources.extend(rest);
    result
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
