//! A fleet of watchers on one shared store: which member owns which
//! shared (cloud) resource, and the member's own loop that keeps its
//! leases. `host.*` resources are never sharded: they belong to the node
//! they run on.
//!
//! Ownership is rendezvous hashing with bounded load: each key goes to the
//! live member that ranks it highest, unless that member already has its
//! share (the keys over the members, plus a quarter), then to the next.
//! Every member computes the same answer from the same members and keys,
//! so no coordinator is needed; the leases in the store (holder, epoch,
//! expiry) make it safe while members disagree (one joined, one died):
//! a key is acted on only by the holder of its unexpired lease, checked
//! in the statement that journals the intent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::state::Store;
use crate::vocab::ResourceKey;

pub use crate::state::{lease_key, shared, PUBLISHER};

/// What one member tells the others at once, through the store
/// (PostgreSQL `NOTIFY`): a hook it received that every member must hear.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Announcement {
    /// A push, a pause or a resume: a full pass at once, everywhere.
    Changed,
    /// One instance of an alert Alertmanager pushed, for the alert book
    /// of every member (the resource's owner heals it).
    Alert {
        kind: String,
        name: String,
        alertname: String,
        instance: String,
        firing: bool,
        summary: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    what: Announcement,
}

/// Tells the other members of the store's fleet, if it has one. A failure
/// costs them only the wait for their next pass.
pub fn announce(store: &dyn Store, what: Announcement) {
    let Some(fleet) = store.fleet() else { return };
    let envelope = Envelope {
        from: fleet.node().to_string(),
        what,
    };
    let payload = serde_json::to_string(&envelope).unwrap_or_default();
    if let Err(e) = fleet.announce(&payload) {
        tracing::warn!(error = %e, "Could not tell the other members; they see it at their next pass.");
    }
}

/// Hands `on` what the other members announce (never this member's own),
/// while the answer is kept.
pub fn listen(
    store: &dyn Store,
    on: impl Fn(Announcement) + Send + 'static,
) -> Option<crate::state::Listening> {
    let fleet = store.fleet()?;
    let me = fleet.node().to_string();
    Some(fleet.listen(Box::new(move |payload| {
        match serde_json::from_str::<Envelope>(payload) {
            Ok(e) if e.from != me => on(e.what),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "An announcement tend cannot read is ignored."),
        }
    })))
}

fn score(member: &str, key: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(member.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The keys `me` owns among `keys`, given the live `members` (`me`
/// included): rendezvous hashing, each member taking at most its share
/// plus a quarter. Deterministic: every member computes the same split.
pub fn assign<'a>(keys: &'a [String], members: &[String], me: &str) -> Vec<&'a str> {
    if members.is_empty() {
        return Vec::new();
    }
    let mut members: Vec<&str> = members.iter().map(String::as_str).collect();
    members.sort_unstable();
    members.dedup();
    let cap = (keys.len() * 5).div_ceil(members.len() * 4).max(1);
    let mut load = vec![0usize; members.len()];
    let mut sorted: Vec<&str> = keys.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut mine = Vec::new();
    for key in sorted {
        let mut ranked: Vec<(u64, usize)> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (score(m, key), i))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        let chosen = ranked
            .iter()
            .find(|(_, i)| load[*i] < cap)
            .map_or(ranked[0].1, |(_, i)| *i);
        load[chosen] += 1;
        if members[chosen] == me {
            mine.push(key);
        }
    }
    mine
}

/// This process as a member of the fleet: it heartbeats, keeps the leases
/// of the shared resources it is assigned, and tells the watcher when it
/// took over new ones. Stops (and gives its leases up) when dropped.
pub struct Member {
    /// Held by a round while it works; set once the member leaves, so no
    /// round that was under way takes the leases again after it.
    left: Arc<Mutex<bool>>,
    keys: Arc<Mutex<Vec<String>>>,
    gained: Arc<tokio::sync::Notify>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    store: Arc<dyn Store>,
}

impl Member {
    /// Joins the fleet of `store` (when it is shared) with the shared keys
    /// of `resources`, holding their leases for `lease`: one round now,
    /// then every third of `lease` in the background.
    pub async fn join(
        store: &Arc<dyn Store>,
        resources: &[ResourceKey],
        lease: Duration,
    ) -> Option<Member> {
        store.fleet()?;
        // A lease shorter than a second would renew in a busy loop.
        let lease = lease.max(Duration::from_secs(1));
        let left = Arc::new(Mutex::new(false));
        let keys = Arc::new(Mutex::new(wanted(resources)));
        let gained = Arc::new(tokio::sync::Notify::new());
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        round(store, &left, &keys, lease, &gained).await;
        let (s, l, k, g) = (
            Arc::clone(store),
            Arc::clone(&left),
            Arc::clone(&keys),
            Arc::clone(&gained),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => round(&s, &l, &k, lease, &g).await,
                    _ = &mut rx => break,
                }
            }
        });
        Some(Member {
            left,
            keys,
            gained,
            stop: Some(tx),
            store: Arc::clone(store),
        })
    }

    /// The shared resources of a new load.
    pub fn set_resources(&self, resources: &[ResourceKey]) {
        *self.keys.lock().unwrap_or_else(|e| e.into_inner()) = wanted(resources);
    }

    /// Resolves when this member took over resources it did not hold.
    pub fn gained(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.gained)
    }

    /// Whether this is the membership of `store`.
    pub fn of(&self, store: &Arc<dyn Store>) -> bool {
        Arc::ptr_eq(&self.store, store)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Waits for a round under way to end.
        *self.left.lock().unwrap_or_else(|e| e.into_inner()) = true;
        if let Some(fleet) = self.store.fleet() {
            if let Err(e) = fleet.leave() {
                tracing::warn!(error = %e, "Failed to leave the fleet; its leases expire.");
            }
        }
    }
}

fn wanted(resources: &[ResourceKey]) -> Vec<String> {
    let mut keys: Vec<String> = resources
        .iter()
        .filter(|k| shared(k))
        .map(lease_key)
        .collect();
    keys.push(PUBLISHER.to_string());
    keys
}

/// What this process last saw of its fleet, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Live members, this one included.
    pub members: usize,
    /// Leases this member holds (the publisher's role included).
    pub leases: usize,
    pub publisher: bool,
    /// Rounds that could not heartbeat or renew.
    pub failed_rounds: u64,
}

static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

/// What this process last saw of its fleet; `None` outside a fleet.
pub fn seen() -> Option<Seen> {
    *SEEN.lock().unwrap_or_else(|e| e.into_inner())
}

fn saw(f: impl FnOnce(&mut Seen)) {
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    f(seen.get_or_insert_with(Seen::default));
}

/// One heartbeat and lease round, off the runtime threads.
async fn round(
    store: &Arc<dyn Store>,
    left: &Arc<Mutex<bool>>,
    keys: &Arc<Mutex<Vec<String>>>,
    lease: Duration,
    gained: &tokio::sync::Notify,
) {
    let store = Arc::clone(store);
    let left = Arc::clone(left);
    let keys = keys.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let done = tokio::task::spawn_blocking(move || -> Result<bool, String> {
        let left = left.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fleet) = store.fleet().filter(|_| !*left) else {
            return Ok(false);
        };
        let live = fleet.heartbeat(lease).map_err(|e| e.to_string())?;
        let nodes: Vec<String> = live.into_iter().map(|m| m.node).collect();
        let mine: Vec<String> = assign(&keys, &nodes, fleet.node())
            .into_iter()
            .map(str::to_string)
            .collect();
        let before: HashSet<String> = fleet.owned();
        let held = fleet.hold(&mine, lease).map_err(|e| e.to_string())?;
        saw(|s| {
            s.members = nodes.len();
            s.leases = held.len();
            s.publisher = held.iter().any(|k| k == PUBLISHER);
        });
        Ok(held.iter().any(|k| !before.contains(k)))
    })
    .await;
    match done {
        Ok(Ok(true)) => gained.notify_one(),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => {
            saw(|s| s.failed_rounds += 1);
            tracing::warn!(
                error = %e,
                "Failed to renew this member's leases; it acts on no shared resource until it can."
            )
        }
        Err(e) => tracing::warn!(error = %e, "The lease round stopped."),
    }
}

/// Whether this process may act on `key` now: always on one machine's
/// store and for a node's own resources; for a shared resource only while
/// this member holds its lease.
pub fn owns(store: &dyn Store, key: &ResourceKey) -> bool {
    match store.fleet() {
        Some(fleet) if shared(key) => fleet.holds(&lease_key(key)),
        _ => true,
    }
}

/// Whether this process publishes for the fleet (always on one machine).
pub fn publishes(store: &dyn Store) -> bool {
    store.fleet().is_none_or(|f| f.holds(PUBLISHER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("aws.s3.Bucket/b{i}")).collect()
    }

    #[test]
    fn every_key_has_exactly_one_owner_and_loads_are_bounded() {
        let keys = keys(300);
        let members: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let mut seen = HashSet::new();
        for m in &members {
            let mine = assign(&keys, &members, m);
            assert!(mine.len() <= 125, "{m}: {}", mine.len());
            assert!(mine.len() >= 50, "{m}: {}", mine.len());
            for k in mine {
                assert!(seen.insert(k.to_string()), "{k} twice");
            }
        }
        assert_eq!(seen.len(), 300);
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_keys() {
        let keys = keys(300);
        let three: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let two: Vec<String> = ["n1", "n2"].map(String::from).to_vec();
        for m in ["n1", "n2"] {
            let before: HashSet<&str> = assign(&keys, &three, m).into_iter().collect();
            let after: HashSet<&str> = assign(&keys, &two, m).into_iter().collect();
            let kept = before.intersection(&after).count();
            // Bounded load may move a few more, never most.
            assert!(
                kept * 10 >= before.len() * 9,
                "{m}: kept {kept} of {}",
                before.len()
            );
        }
    }

    #[test]
    fn host_resources_are_never_shared() {
        let host = ResourceKey::new(crate::model::Kind::HostFile, "motd");
        let bucket = ResourceKey::new(crate::model::Kind::AwsBucket, "logs");
        assert!(!shared(&host) && shared(&bucket));
        assert_eq!(wanted(&[host, bucket]), ["aws.s3.Bucket/logs", PUBLISHER]);
    }
}
