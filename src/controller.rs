//! The per-resource controller: a long-lived queue of work keyed by
//! resource, after kube-rs's runtime.
//!
//! Requests are deduplicated (a key is due once, at the earliest time
//! asked for) and delayed (due at a time, not at once), and two reconciles
//! of one key never run at once: a request for a key in flight waits until
//! it finishes. A reconcile never waits itself: it answers what should
//! happen next ([`Next`]), done or "look again at T", and only the
//! controller sleeps. Full passes, process exits, pushed alerts and the
//! reconciler's own answers all feed it; a pass that acts on a resource
//! outside the controller [`Handle::claim`]s the key first, so a pass and
//! a reconcile never act on one resource at once either. This module knows
//! nothing of what a reconcile does. See ARCHITECTURE.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a reconcile says should happen next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing more until something asks again.
    Done,
    /// Look again at this time (a verification's next check, a backoff).
    At(Instant),
}

/// When [`Controller::run`] returns.
#[derive(Clone, Copy)]
pub enum Until<'a> {
    /// Once nothing is due, in flight or scheduled (`tend apply`).
    Idle,
    /// Once `stop` is set: nothing new starts, what is in flight finishes
    /// (`tend watch`).
    Stopped(&'a tokio::sync::watch::Receiver<bool>),
}

/// Due times and in-flight keys: dedupe, delay, one at a time per key.
/// Pure bookkeeping; time is passed in.
pub struct Scheduler<K> {
    /// Every scheduled key, by due time (the sequence number keeps equal
    /// times in request order).
    by_time: BTreeMap<(Instant, u64), K>,
    due: HashMap<K, (Instant, u64)>,
    running: HashSet<K>,
    seq: u64,
}

impl<K: Clone + Eq + Hash> Default for Scheduler<K> {
    fn default() -> Self {
        Scheduler {
            by_time: BTreeMap::new(),
            due: HashMap::new(),
            running: HashSet::new(),
            seq: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> Scheduler<K> {
    /// Asks for a reconcile of `key` at `at`. A key already scheduled
    /// keeps the earlier of the two times.
    pub fn schedule(&mut self, key: K, at: Instant) {
        if let Some(&(was, seq)) = self.due.get(&key) {
            if was <= at {
                return;
            }
            self.by_time.remove(&(was, seq));
        }
        self.seq += 1;
        self.by_time.insert((at, self.seq), key.clone());
        self.due.insert(key, (at, self.seq));
    }

    /// The earliest key due at `now` that is not in flight, now in flight.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let (&slot, key) = self
            .by_time
            .range(..=(now, u64::MAX))
            .find(|(_, k)| !self.running.contains(*k))?;
        let key = key.clone();
        self.by_time.remove(&slot);
        self.due.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// When the next key that is not in flight is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.by_time
            .iter()
            .find(|(_, k)| !self.running.contains(*k))
            .map(|((at, _), _)| *at)
    }

    /// Takes `key` for work done outside the controller (a pass's drift
    /// correction); `false` when it is in flight or scheduled.
    pub fn claim(&mut self, key: &K) -> bool {
        if self.holds(key) {
            return false;
        }
        self.running.insert(key.clone());
        true
    }

    /// A reconcile (or a claim) of `key` ended.
    pub fn finish(&mut self, key: &K) {
        self.running.remove(key);
    }

    /// Whether `key` is in flight or scheduled.
    pub fn holds(&self, key: &K) -> bool {
        self.running.contains(key) || self.due.contains_key(key)
    }

    pub fn is_idle(&self) -> bool {
        self.by_time.is_empty() && self.running.is_empty()
    }
}

struct Shared<K> {
    scheduler: Mutex<Scheduler<K>>,
    wake: Notify,
}

/// The controller: a scheduler and what wakes its loop.
pub struct Controller<K> {
    shared: Arc<Shared<K>>,
}

/// What feeds the controller: cheap to clone, usable from any task.
pub struct Handle<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Handle<K> {
    fn clone(&self) -> Self {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: Clone + Eq + Hash> Default for Controller<K> {
    fn default() -> Self {
        Controller {
            shared: Arc::new(Shared {
                scheduler: Mutex::new(Scheduler::default()),
                wake: Notify::new(),
            }),
        }
    }
}

fn locked<K>(shared: &Shared<K>) -> std::sync::MutexGuard<'_, Scheduler<K>> {
    shared.scheduler.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K: Clone + Eq + Hash> Handle<K> {
    /// Asks for a reconcile of `key` at `at` (now when `at` has passed).
    pub fn schedule(&self, key: K, at: Instant) {
        locked(&self.shared).schedule(key, at);
        self.shared.wake.notify_one();
    }

    /// Whether a reconcile of `key` is in flight or scheduled: a pass
    /// leaves such a resource to the controller.
    pub fn holds(&self, key: &K) -> bool {
        locked(&self.shared).holds(key)
    }

    /// Takes `key` until the guard is dropped, unless the controller holds
    /// it: a pass acting on a resource claims it first.
    pub fn claim(&self, key: &K) -> Option<Claim<K>> {
        locked(&self.shared).claim(key).then(|| Claim {
            shared: Arc::clone(&self.shared),
            key: key.clone(),
        })
    }
}

/// A key taken outside the controller; released on drop.
pub struct Claim<K: Clone + Eq + Hash> {
    shared: Arc<Shared<K>>,
    key: K,
}

impl<K: Clone + Eq + Hash> Drop for Claim<K> {
    fn drop(&mut self) {
        locked(&self.shared).finish(&self.key);
        self.shared.wake.notify_one();
    }
}

impl<K: Clone + Eq + Hash> Controller<K> {
    pub fn handle(&self) -> Handle<K> {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs due reconciles, at most `concurrency` at once and never two of
    /// one key, until `until` says to return. `reconcile` answers what
    /// should happen next to its key.
    pub async fn run<F, Fut>(&self, concurrency: usize, until: Until<'_>, reconcile: F)
    where
        F: Fn(K) -> Fut,
        Fut: Future<Output = Next>,
    {
        let concurrency = concurrency.max(1);
        let mut in_flight = FuturesUnordered::new();
        let mut stop = match until {
            Until::Stopped(rx) => Some(rx.clone()),
            Until::Idle => None,
        };
        loop {
            let stopping = stop.as_ref().is_some_and(|rx| *rx.borrow());
            while !stopping && in_flight.len() < concurrency {
                let Some(key) = locked(&self.shared).pop_due(Instant::now()) else {
                    break;
                };
                let fut = reconcile(key.clone());
                in_flight.push(async move { (key, fut.await) });
            }
            let next_at = {
                let s = locked(&self.shared);
                if in_flight.is_empty() && (stopping || (stop.is_none() && s.is_idle())) {
                    return;
                }
                s.next_at()
            };
            let wake = self.shared.wake.notified();
            tokio::select! {
                Some((key, next)) = in_flight.next(), if !in_flight.is_empty() => {
                    let mut s = locked(&self.shared);
                    s.finish(&key);
                    if let Next::At(at) = next {
                        s.schedule(key, at);
                    }
                }
                _ = sleep_until(next_at), if next_at.is_some() && !stopping => {}
                _ = wake => {}
                _ = changed(&mut stop), if stop.is_some() && !stopping => {}
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

async fn changed(rx: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(rx) = rx {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_is_due_once_at_the_earliest_time_asked() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.schedule("a", t0 + Duration::from_secs(10));
        s.schedule("a", t0 + Duration::from_secs(5));
        s.schedule("a", t0 + Duration::from_secs(20));
        s.schedule("b", t0 + Duration::from_secs(7));
        assert_eq!(s.next_at(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(s.pop_due(t0 + Duration::from_secs(4)), None);
        assert_eq!(s.pop_due(t0 + Duration::from_secs(30)), Some("a"));
        assert_eq!(s.pop_due(t0 + Duration::from_secs(30)), Some("b"));
        assert_eq!(s.pop_due(t0 + Duration::from_secs(30)), None, "deduped");
    }

    #[test]
    fn a_key_in_flight_waits_and_a_claim_is_refused_while_held() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.schedule("a", t0);
        assert_eq!(s.pop_due(t0), Some("a"));
        s.schedule("a", t0);
        assert_eq!(s.pop_due(t0), None, "never two of one key at once");
        assert_eq!(s.next_at(), None);
        assert!(!s.claim(&"a"));
        s.finish(&"a");
        assert_eq!(s.pop_due(t0), Some("a"));
        s.finish(&"a");
        assert!(s.is_idle());
        assert!(s.claim(&"b"));
        s.schedule("b", t0);
        assert_eq!(s.pop_due(t0), None, "a claimed key is in flight");
    }

    /// On paused time: a reconcile that asks to look again in 10 s runs
    /// again after 10 s, not before, while another key's work goes on in
    /// between; never two reconciles of one key at once.
    #[tokio::test(start_paused = true)]
    async fn a_requeue_waits_and_other_keys_run_in_between() {
        let controller: Controller<&'static str> = Controller::default();
        let h = controller.handle();
        let t0 = Instant::now();
        h.schedule("slow", t0);
        h.schedule("fast", t0 + Duration::from_secs(3));
        let log: Arc<Mutex<Vec<(&str, u64)>>> = Arc::default();
        let running: Arc<Mutex<HashSet<&str>>> = Arc::default();
        let runs = Arc::new(Mutex::new(HashMap::<&str, u32>::new()));
        controller
            .run(4, Until::Idle, |key| {
                let (log, running, runs) = (log.clone(), running.clone(), runs.clone());
                async move {
                    assert!(running.lock().unwrap().insert(key), "{key} twice at once");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    running.lock().unwrap().remove(key);
                    log.lock().unwrap().push((key, t0.elapsed().as_secs()));
                    let mut r = runs.lock().unwrap();
                    let n = r.entry(key).or_default();
                    *n += 1;
                    if key == "slow" && *n < 3 {
                        Next::At(Instant::now() + Duration::from_secs(10))
                    } else {
                        Next::Done
                    }
                }
            })
            .await;
        assert_eq!(
            *log.lock().unwrap(),
            vec![("slow", 0), ("fast", 3), ("slow", 10), ("slow", 20)]
        );
    }

    /// Requests that arrive while a key is in flight are deduplicated into
    /// one more run after it finishes.
    #[tokio::test(start_paused = true)]
    async fn requests_during_a_run_make_one_more_run() {
        let controller: Controller<&'static str> = Controller::default();
        let h = controller.handle();
        h.schedule("a", Instant::now());
        let runs = Arc::new(Mutex::new(0u32));
        controller
            .run(2, Until::Idle, |_| {
                let (h, runs) = (h.clone(), runs.clone());
                async move {
                    let n = {
                        let mut r = runs.lock().unwrap();
                        *r += 1;
                        *r
                    };
                    if n == 1 {
                        for _ in 0..5 {
                            h.schedule("a", Instant::now());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Next::Done
                }
            })
            .await;
        assert_eq!(*runs.lock().unwrap(), 2);
    }

    /// A stop lets the reconcile in flight finish and starts nothing new,
    /// even with work due.
    #[tokio::test(start_paused = true)]
    async fn a_stop_finishes_the_work_in_flight_and_starts_nothing() {
        let controller: Controller<u32> = Controller::default();
        let h = controller.handle();
        for k in 0..3 {
            h.schedule(k, Instant::now() + Duration::from_secs(u64::from(k)));
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let done = Arc::new(Mutex::new(Vec::new()));
        let d = done.clone();
        let run = controller.run(1, Until::Stopped(&rx), move |k| {
            let (d, tx) = (d.clone(), tx.clone());
            async move {
                if k == 0 {
                    tx.send(true).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                d.lock().unwrap().push(k);
                Next::Done
            }
        });
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("returns once stopped");
        assert_eq!(*done.lock().unwrap(), vec![0]);
        assert!(h.holds(&1) && h.holds(&2), "what was not started stays");
    }
}
