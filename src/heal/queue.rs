//! Healing work queued per resource key.
//!
//! Never two items for one key at once, at most `concurrency` items at
//! once, in the order they were pushed for each key. Items pushed while the
//! queue drains (by another pass, a pushed alert, a process exit) are picked
//! up by the same drain.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use futures::stream::{FuturesUnordered, StreamExt};

pub struct Queue<K, T> {
    inner: Mutex<Inner<K, T>>,
}

struct Inner<K, T> {
    pending: VecDeque<(K, T)>,
    active: HashSet<K>,
}

impl<K: Clone + Eq + Hash, T> Default for Queue<K, T> {
    fn default() -> Self {
        Queue {
            inner: Mutex::new(Inner {
                pending: VecDeque::new(),
                active: HashSet::new(),
            }),
        }
    }
}

impl<K: Clone + Eq + Hash, T> Queue<K, T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner<K, T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, key: K, item: T) {
        self.inner().pending.push_back((key, item));
    }

    pub fn len(&self) -> usize {
        self.inner().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest item whose key has nothing in flight, now in flight.
    fn next_ready(&self) -> Option<(K, T)> {
        let mut inner = self.inner();
        let Inner { pending, active } = &mut *inner;
        let at = pending.iter().position(|(k, _)| !active.contains(k))?;
        let (key, item) = pending.remove(at)?;
        active.insert(key.clone());
        Some((key, item))
    }

    fn done(&self, key: &K) {
        self.inner().active.remove(key);
    }

    /// Runs `work` on every item until nothing is pending or in flight,
    /// and returns the results in the order items finished.
    pub async fn drain<F, Fut, R>(&self, concurrency: usize, work: F) -> Vec<R>
    where
        F: Fn(K, T) -> Fut,
        Fut: Future<Output = R>,
    {
        let concurrency = concurrency.max(1);
        let mut in_flight = FuturesUnordered::new();
        let mut results = Vec::new();
        loop {
            while in_flight.len() < concurrency {
                let Some((key, item)) = self.next_ready() else {
                    break;
                };
                let fut = work(key.clone(), item);
                in_flight.push(async move { (key, fut.await) });
            }
            let Some((key, result)) = in_flight.next().await else {
                break;
            };
            self.done(&key);
            results.push(result);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    /// Two items for one key never run at once; different keys do, up to
    /// the bound.
    #[tokio::test]
    async fn two_items_for_one_key_never_run_at_once() {
        let queue = Queue::new();
        for (key, n) in [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5), ("b", 6)] {
            queue.push(key, n);
        }
        let running: Arc<Mutex<HashMap<&str, usize>>> = Arc::default();
        let peak_per_key = Arc::new(Mutex::new(0usize));
        let peak_total = Arc::new(Mutex::new(0usize));
        let order = Arc::new(Mutex::new(Vec::new()));
        let done = queue
            .drain(2, |key, n| {
                let (running, peak_per_key, peak_total, order) = (
                    Arc::clone(&running),
                    Arc::clone(&peak_per_key),
                    Arc::clone(&peak_total),
                    Arc::clone(&order),
                );
                async move {
                    {
                        let mut r = running.lock().unwrap();
                        *r.entry(key).or_default() += 1;
                        let per_key = r[key];
                        let total: usize = r.values().sum();
                        let mut p = peak_per_key.lock().unwrap();
                        *p = (*p).max(per_key);
                        let mut t = peak_total.lock().unwrap();
                        *t = (*t).max(total);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    *running.lock().unwrap().get_mut(key).unwrap() -= 1;
                    order.lock().unwrap().push((key, n));
                    n
                }
            })
            .await;
        assert_eq!(done.len(), 6);
        assert_eq!(*peak_per_key.lock().unwrap(), 1);
        assert_eq!(*peak_total.lock().unwrap(), 2);
        let a: Vec<i32> = order
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == "a")
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(a, vec![1, 2, 4], "one key's items run in push order");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn items_pushed_while_draining_are_picked_up() {
        let queue: Arc<Queue<&str, u32>> = Arc::new(Queue::new());
        queue.push("a", 1);
        let q = Arc::clone(&queue);
        let done = queue
            .drain(4, move |_, n| {
                if n == 1 {
                    q.push("a", 2);
                }
                async move { n }
            })
            .await;
        assert_eq!(done, vec![1, 2]);
    }
}
