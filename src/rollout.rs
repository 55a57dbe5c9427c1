//! How a pass rolls out the changes it applies: the holds on specs that
//! failed verification (a held resource is kept at its last good spec, or
//! frozen), the waves a change to many resources goes out in, and the
//! changes handed to the runner to verify for a window. The verification
//! itself is the runner's (`heal::Window`). See ARCHITECTURE.md.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::info;

use crate::act::ActionResult;
use crate::heal::Window;
use crate::health as health_stage;
use crate::model::changes::{self, Waves};
use crate::model::{DesiredState, Resource, ResourceKey};
use crate::plan::{Held, Plan};
use crate::state::{
    ChangeRow, ChangeStatus, ChangeVerdict, JournalRecord, LastGood, NewChange, StateError, Store,
};
use crate::vocab::{
    spec_digest, Action, ActionType, ChangeRef, Decision, JournalAction, JournalOutcome,
    JournalPhase,
};

/// A hold on a declared spec that failed verification.
#[derive(Debug, Clone)]
pub struct Hold {
    pub change: ChangeRow,
    /// Frozen (nothing changes) rather than kept at the last good spec.
    pub frozen: bool,
}

impl Hold {
    pub fn held(&self) -> Held {
        let c = &self.change;
        Held {
            target: c.key.clone(),
            fingerprint: c.digest.clone(),
            failed_commit: c.commit.clone(),
            good_commit: (!self.frozen)
                .then(|| c.good.as_ref().and_then(|g| g.commit.clone()))
                .flatten(),
            cause: c.cause.clone().unwrap_or_else(|| "a regression".into()),
            fields: fields_of(&c.fields),
            frozen: self.frozen,
            incident: c.incident,
            declared_at: None,
            revert: self.revert(),
        }
    }

    /// The changed fields at their last good values: what a revert of the
    /// declaration writes.
    fn revert(&self) -> Result<Vec<(String, serde_json::Value)>, String> {
        let c = &self.change;
        let Some(good) = &c.good else {
            return Err("no last good spec of this resource is known".into());
        };
        fields_of(&c.fields)
            .into_iter()
            .map(|path| {
                if crate::vocab::secret_path(&path) {
                    return Err(format!(
                        "{path} holds a secret value, and tend never sends a secret to GitHub; revert it where the repository is checked out"
                    ));
                }
                let inner = path.strip_prefix("/spec").unwrap_or(&path);
                match good.spec.pointer(inner) {
                    Some(v) => Ok((path, v.clone())),
                    None => Err(format!(
                        "the failed change added {path}, which a revert removes; remove it where the repository is checked out"
                    )),
                }
            })
            .collect()
    }
}

/// The holds, as the plan lists them, with where each resource is declared.
pub fn held_list(holds: &[Hold], desired: &DesiredState) -> Vec<Held> {
    let index = desired.index();
    holds
        .iter()
        .map(|h| Held {
            declared_at: index.get(&h.change.key).map(|r| r.origin.clone()),
            ..h.held()
        })
        .collect()
}

fn fields_of(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("path").and_then(|p| p.as_str()).map(str::to_string))
        .collect()
}

/// How far back the rollout looks: the rollback window, at least a day.
fn horizon(desired: &DesiredState, now: DateTime<Utc>) -> DateTime<Utc> {
    let w = desired
        .settings
        .changes
        .rollback_window
        .0
        .max(std::time::Duration::from_secs(24 * 3600));
    now - chrono::Duration::from_std(w).unwrap_or(chrono::Duration::MAX)
}

/// What the store says about recent changes, once per pass.
pub struct Known {
    pub rows: Vec<ChangeRow>,
    pub holds: Vec<Hold>,
    /// In a fleet: every live member's changes, for waves across nodes.
    pub fleet: Option<FleetChanges>,
}

/// Every live member's changes and last good specs, as a fleet's waves
/// read them.
pub struct FleetChanges {
    pub me: String,
    /// The live members' nodes, sorted.
    pub live: Vec<String>,
    /// Each node's changes, oldest first.
    pub rows: Vec<(String, ChangeRow)>,
    /// The digest of each node's last good spec of each resource.
    pub good: HashMap<(String, ResourceKey), String>,
}

fn fleet_changes(
    store: &dyn Store,
    desired: &DesiredState,
    now: DateTime<Utc>,
) -> Result<Option<FleetChanges>, StateError> {
    let Some(fleet) = store.fleet() else {
        return Ok(None);
    };
    if desired.settings.changes.waves.is_empty() {
        return Ok(None);
    }
    let mut live = fleet.live_nodes(desired.settings.lease())?;
    let me = fleet.node().to_string();
    if !live.contains(&me) {
        live.push(me.clone());
    }
    live.sort();
    let rows = store.fleet_rows().fleet_changes(horizon(desired, now))?;
    let good = store
        .fleet_rows()
        .fleet_last_good()?
        .into_iter()
        .map(|(node, key, spec)| ((node, key), spec_digest(&spec)))
        .collect();
    Ok(Some(FleetChanges {
        me,
        live,
        rows,
        good,
    }))
}

/// Reads the recent changes and the holds in force. A hold on a spec that
/// is no longer declared is over (cleared); one whose fingerprint a merged
/// `Approval` names is released. `run`: the pass that records both, else
/// (`tend plan`) nothing is written and such holds simply do not apply.
pub fn read(
    store: &dyn Store,
    desired: &DesiredState,
    now: DateTime<Utc>,
    run: Option<(i64, Option<&str>)>,
) -> Result<Known, StateError> {
    let rows = store.changes(horizon(desired, now))?;
    let index = desired.index();
    // An approval releases a hold once, like any approval.
    let used: HashSet<(ResourceKey, String, DateTime<Utc>)> = store
        .used_approvals()?
        .into_iter()
        .map(|u| (u.key, u.fingerprint, u.expires))
        .collect();
    let mut holds: Vec<Hold> = Vec::new();
    for row in rows.iter().filter(|r| r.status == ChangeStatus::Failed) {
        let declared = index.get(&row.key).map(|r| spec_digest(&r.spec));
        let approval = desired.approvals.iter().find(|a| {
            a.target == row.key
                && a.fingerprint == row.digest
                && a.expires > now
                && !used.contains(&(a.target.clone(), a.fingerprint.clone(), a.expires))
        });
        let approved = approval.is_some();
        let (status, why) = if declared.as_deref() != Some(row.digest.as_str()) {
            (ChangeStatus::Cleared, "the declared spec changed")
        } else if approved {
            (
                ChangeStatus::Released,
                "released by a merged Approval of the failed spec",
            )
        } else {
            holds.retain(|h| h.change.key != row.key);
            holds.push(Hold {
                frozen: !row.rolled_back || row.good.is_none(),
                change: row.clone(),
            });
            continue;
        };
        if let Some((run_id, commit)) = run {
            if let (ChangeStatus::Released, Some(a)) = (status, approval) {
                store.use_approval(&crate::state::UsedApproval {
                    key: a.target.clone(),
                    fingerprint: a.fingerprint.clone(),
                    file: a.origin.file.to_string(),
                    expires: a.expires,
                    commit: commit.map(str::to_string),
                    run_id,
                    at: now,
                })?;
            }
            settle(store, row, status, why, run_id, commit)?;
        }
    }
    let fleet = fleet_changes(store, desired, now)?;
    Ok(Known { rows, holds, fleet })
}

/// Ends a hold, journaled.
pub fn settle(
    store: &dyn Store,
    row: &ChangeRow,
    status: ChangeStatus,
    why: &str,
    run_id: i64,
    commit: Option<&str>,
) -> Result<(), StateError> {
    store.settle_change(
        row.id,
        &ChangeVerdict {
            status,
            cause: None,
            incident: None,
            rolled_back: false,
        },
    )?;
    let detail = format!(
        "hold on {} lifted ({status}): {why}",
        row.digest,
        status = status.as_str()
    );
    store.journal(
        JournalPhase::Outcome,
        &JournalRecord {
            run_id,
            fingerprint: &row.digest,
            action: JournalAction::Release,
            key: &row.key,
            commit,
            outcome: Some(JournalOutcome::Synced),
            detail: &detail,
        },
    )?;
    info!(resource = %row.key, "{detail}");
    Ok(())
}

/// The desired state as this pass applies it: each resource held after a
/// rollback is kept at its last good spec (its drift is measured against
/// that spec, and healing restores that spec), so the failed spec is not
/// applied again.
pub fn pinned(desired: &Arc<DesiredState>, holds: &[Hold]) -> Arc<DesiredState> {
    let pins: HashMap<&ResourceKey, &LastGood> = holds
        .iter()
        .filter(|h| !h.frozen)
        .filter_map(|h| Some((&h.change.key, h.change.good.as_ref()?)))
        .collect();
    if pins.is_empty() {
        return Arc::clone(desired);
    }
    let mut d = (**desired).clone();
    for r in &mut d.resources {
        if let Some(good) = pins.get(&r.key) {
            r.spec = good.spec.clone();
        }
    }
    Arc::new(d)
}

/// Whether tend verifies the changes it applies to `r`.
fn verified(r: &Resource, desired: &DesiredState) -> bool {
    health_stage::watched(r, &desired.signatures)
        && changes::policy_of(r, &desired.settings.changes).0
}

fn changes_spec(t: ActionType) -> bool {
    matches!(t, ActionType::Update | ActionType::Replace)
}

/// Before the plan is decided: each change to a verified resource (its
/// declared spec is not its last good one) carries its change (commit, fields, wave, whether a window is
/// open), so policies see it; returns the actions a wave holds back, by
/// fingerprint, with the reason.
pub fn prepare(
    plan: &mut Plan,
    desired: &DesiredState,
    known: &Known,
    commit: Option<&str>,
    last_good: &dyn Fn(&ResourceKey) -> Option<String>,
    now: DateTime<Utc>,
) -> HashMap<String, String> {
    let index = desired.index();
    let verifying: HashSet<&ResourceKey> = known
        .rows
        .iter()
        .filter(|r| r.status == ChangeStatus::Verifying)
        .map(|r| &r.key)
        .collect();
    for a in plan.actions.iter_mut() {
        if a.incident.is_some() || !changes_spec(a.action_type) {
            continue;
        }
        let Some(r) = index.get(&a.target) else {
            continue;
        };
        // A change departs from a known good spec: restoring the last good
        // spec (drift of live) is a correction, and a resource never known
        // good (a create, a first deploy) is healed as before.
        let Some(good) = last_good(&a.target) else {
            continue;
        };
        if !verified(r, desired) || good == spec_digest(&r.spec) {
            continue;
        }
        a.change = Some(Box::new(ChangeRef {
            commit: commit.map(str::to_string),
            fields: a.changes.iter().map(|c| c.path.clone()).collect(),
            wave: None,
            in_window: verifying.contains(&a.target),
            applied_at: None,
        }));
    }
    let mut held_back = HashMap::new();
    for w in &desired.settings.changes.waves {
        match &known.fleet {
            Some(f) => fleet_waves(plan, desired, w, f, now, &mut held_back),
            None => waves(plan, desired, w, known, now, &mut held_back),
        }
    }
    held_back
}

/// One wave selector's rollout across the fleet: the rollout is every
/// live node's copy of each selected `host.*` resource (and each shared
/// one once), in the order of node and name, cut into the waves. A
/// member changes its copy when every copy of the waves before its own
/// has passed verification (its change verified, or its last good spec
/// is the declared one) and their bake time is over; a failed copy stops
/// the rest. Every member computes the same order from the database.
fn fleet_waves(
    plan: &mut Plan,
    desired: &DesiredState,
    w: &Waves,
    f: &FleetChanges,
    now: DateTime<Utc>,
    held_back: &mut HashMap<String, String>,
) {
    let mut units: Vec<(&str, &Resource)> = Vec::new();
    for r in desired
        .resources
        .iter()
        .filter(|r| w.selector.selects(r) && verified(r, desired))
    {
        if crate::state::shared(&r.key) {
            units.push(("", r));
        } else {
            units.extend(f.live.iter().map(|n| (n.as_str(), r)));
        }
    }
    units.sort_by(|a, b| (a.0, &a.1.key.name).cmp(&(b.0, &b.1.key.name)));
    let total = units.len();
    let index = desired.index();
    let mut pending: Vec<&mut Action> = plan
        .actions
        .iter_mut()
        .filter(|a| {
            a.change.is_some() && index.get(&a.target).is_some_and(|r| w.selector.selects(r))
        })
        .collect();
    if pending.is_empty() || total < 2 {
        return;
    }
    let waves = w.count(total);
    let wave_of = |pos: usize| {
        (0..waves)
            .find(|&n| w.reached(n, total) > pos)
            .unwrap_or(waves - 1)
    };
    // Each copy's latest change to the spec declared now.
    let mut latest: HashMap<(&str, &ResourceKey), &ChangeRow> = HashMap::new();
    for (node, row) in &f.rows {
        let node = if crate::state::shared(&row.key) {
            ""
        } else {
            node.as_str()
        };
        if index
            .get(&row.key)
            .is_some_and(|d| spec_digest(&d.spec) == row.digest)
        {
            latest.insert((node, &row.key), row);
        }
    }
    let failed = units.iter().find_map(|(node, r)| {
        latest
            .get(&(*node, &r.key))
            .filter(|c| c.status == ChangeStatus::Failed)
            .map(|c| (*node, *c))
    });
    for a in pending.iter_mut() {
        let me = if crate::state::shared(&a.target) {
            ""
        } else {
            f.me.as_str()
        };
        let Some(pos) = units
            .iter()
            .position(|(node, r)| *node == me && r.key == a.target)
        else {
            continue;
        };
        let wave = wave_of(pos);
        if let Some(c) = a.change.as_mut() {
            c.wave = Some(u32::try_from(wave + 1).unwrap_or(u32::MAX));
        }
        // The copies of the waves before this one's.
        let before = if wave == 0 {
            &units[..0]
        } else {
            &units[..w.reached(wave - 1, total).min(units.len())]
        };
        let mut waiting = Vec::new();
        let mut settled: Option<DateTime<Utc>> = None;
        for (node, r) in before {
            let declared = spec_digest(&r.spec);
            let row = latest.get(&(*node, &r.key));
            let done = match row {
                Some(c) => c.status == ChangeStatus::Verified,
                None => f.good.get(&(node.to_string(), r.key.clone())) == Some(&declared),
            };
            if done {
                settled = settled.max(row.and_then(|c| c.settled_at));
            } else {
                waiting.push(format!(
                    "{} on {}",
                    r.key,
                    if node.is_empty() { "the fleet" } else { node }
                ));
            }
        }
        let bake_until = settled.map(|t| {
            t + chrono::Duration::from_std(w.bake.map(|b| b.0).unwrap_or_default())
                .unwrap_or_default()
        });
        let why = if let Some((node, c)) = failed {
            Some(format!(
                "rollout stopped: wave {} failed ({} on {} of node {}); the rest is not changed until the declared specs change",
                c.wave.unwrap_or(1),
                c.cause.as_deref().unwrap_or("a regression"),
                c.key,
                if node.is_empty() { "the fleet" } else { node }
            ))
        } else if !waiting.is_empty() {
            let shown: Vec<&String> = waiting.iter().take(3).collect();
            Some(format!(
                "wave {} of {waves} across the fleet: goes out once the waves before it passed verification (waiting for {}{})",
                wave + 1,
                shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                if waiting.len() > 3 { format!(" and {} more", waiting.len() - 3) } else { String::new() }
            ))
        } else {
            bake_until.filter(|t| *t > now).map(|t| {
                format!(
                    "wave {} of {waves} waits for the bake time after the wave before it: until {}",
                    wave + 1,
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
        };
        if let Some(why) = why {
            held_back.insert(a.fingerprint.clone(), why);
        }
    }
}

/// One wave selector's rollout: which of this pass's changes go out now.
fn waves(
    plan: &mut Plan,
    desired: &DesiredState,
    w: &Waves,
    known: &Known,
    now: DateTime<Utc>,
    held_back: &mut HashMap<String, String>,
) {
    let index = desired.index();
    let group = |k: &ResourceKey| index.get(k).is_some_and(|r| w.selector.selects(r));
    let mut pending: Vec<&mut Action> = plan
        .actions
        .iter_mut()
        .filter(|a| a.change.is_some() && group(&a.target))
        .collect();
    // This rollout so far: the group's latest change to each spec
    // declared now (a released one is tried again).
    let mut latest: HashMap<&ResourceKey, &ChangeRow> = HashMap::new();
    for r in known.rows.iter().filter(|r| group(&r.key)) {
        if index
            .get(&r.key)
            .is_some_and(|d| spec_digest(&d.spec) == r.digest)
        {
            latest.insert(&r.key, r);
        }
    }
    let current: Vec<&ChangeRow> = latest
        .into_values()
        .filter(|r| r.status != ChangeStatus::Released)
        .collect();
    let done = current
        .iter()
        .filter(|r| r.status == ChangeStatus::Verified)
        .count();
    let total = done
        + current
            .iter()
            .filter(|r| r.status != ChangeStatus::Verified)
            .count()
        + pending.len();
    if pending.is_empty() || total < 2 {
        return;
    }
    pending.sort_by(|a, b| a.target.name.cmp(&b.target.name));
    let waves = w.count(total);
    // A held resource is planned at its last good spec: its failed change
    // is found through the hold.
    let failed = current
        .iter()
        .copied()
        .find(|r| r.status == ChangeStatus::Failed)
        .or_else(|| {
            known
                .holds
                .iter()
                .map(|h| &h.change)
                .find(|c| group(&c.key))
        });
    let verifying = current.iter().any(|r| r.status == ChangeStatus::Verifying);
    let wave = (0..waves)
        .find(|&n| w.reached(n, total) > done)
        .unwrap_or(waves - 1);
    let baked = current
        .iter()
        .filter(|r| r.status == ChangeStatus::Verified)
        .filter_map(|r| r.settled_at)
        .max()
        .map(|t| {
            t + chrono::Duration::from_std(w.bake.map(|b| b.0).unwrap_or_default())
                .unwrap_or_default()
        });
    let stop: Option<String> = if let Some(f) = failed {
        Some(format!(
            "rollout stopped: wave {} failed ({} on {}); the rest is not changed until the declared specs change",
            f.wave.unwrap_or(1),
            f.cause.as_deref().unwrap_or("a regression"),
            f.key
        ))
    } else if verifying {
        Some(format!(
            "wave {} of {waves} waits: the wave before it is being verified",
            wave + 1
        ))
    } else {
        baked.filter(|t| *t > now).map(|t| {
            format!(
                "wave {} of {waves} waits for the bake time after the wave before it: until {}",
                wave + 1,
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
    };
    let allowed = if stop.is_some() {
        0
    } else {
        w.reached(wave, total).saturating_sub(
            done + current
                .iter()
                .filter(|r| r.status == ChangeStatus::Verifying)
                .count(),
        )
    };
    for (i, a) in pending.into_iter().enumerate() {
        let n = if i < allowed { wave + 1 } else { wave + 2 };
        if let Some(c) = a.change.as_mut() {
            c.wave = Some(u32::try_from(n.min(waves)).unwrap_or(u32::MAX));
        }
        if i >= allowed {
            let why = stop.clone().unwrap_or_else(|| {
                format!(
                    "wave {} of {waves}: goes out once wave {} passed verification",
                    (wave + 2).min(waves),
                    wave + 1
                )
            });
            held_back.insert(a.fingerprint.clone(), why);
        }
    }
}

/// After the plan is decided: what a wave holds back and what touches a
/// frozen resource is deferred (only ever stricter), and the holds are
/// listed on the plan.
pub fn restrain(
    plan: &mut Plan,
    desired: &DesiredState,
    known: &Known,
    held_back: &HashMap<String, String>,
) {
    let frozen: HashMap<&ResourceKey, &Hold> = known
        .holds
        .iter()
        .filter(|h| h.frozen)
        .map(|h| (&h.change.key, h))
        .collect();
    for a in plan.actions.iter_mut() {
        if let Some(h) = frozen.get(&a.target) {
            if !matches!(a.decision, Decision::Deny) {
                a.decision = Decision::Deferred;
                a.reasons.push(h.held().in_words());
            }
        } else if let Some(why) = held_back.get(&a.fingerprint) {
            if a.decision == Decision::Auto {
                a.decision = Decision::Deferred;
                a.reasons.push(why.clone());
            }
        }
    }
    plan.held = held_list(&known.holds, desired);
}

/// After the executor: each change applied to a verified resource is
/// recorded and handed to the runner to verify for its window.
pub fn record(
    store: &dyn Store,
    desired: &DesiredState,
    plan: &Plan,
    results: &[ActionResult],
    commit: Option<&str>,
) -> Result<Vec<Window>, StateError> {
    let index = desired.index();
    let mut windows = Vec::new();
    for a in plan.actions.iter().filter(|a| a.change.is_some()) {
        let synced = results.iter().any(|r| {
            r.fingerprint == a.fingerprint
                && r.target == a.target
                && matches!(r.outcome, crate::act::Outcome::Synced { .. })
        });
        let Some(r) = index.get(&a.target) else {
            continue;
        };
        if !synced {
            continue;
        }
        let window = changes::window(r, &desired.settings.changes, &desired.signatures);
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(window).unwrap_or_default();
        let good = store.last_good(&r.key)?;
        let digest = spec_digest(&r.spec);
        let wave = a.change.as_ref().and_then(|c| c.wave);
        let fields = serde_json::to_value(&a.changes).unwrap_or_default();
        let id = store.record_change(&NewChange {
            key: &r.key,
            digest: &digest,
            commit,
            fields,
            applied_at: now,
            until,
            wave,
            good: good.as_ref(),
        })?;
        let mut what = (**a.change.as_ref().expect("filtered")).clone();
        what.applied_at = Some(now);
        info!(resource = %r.key, window = %humantime::format_duration(window), "Change applied; verifying it.");
        windows.push(Window {
            change: id,
            key: r.key.clone(),
            until: tokio::time::Instant::now() + window,
            what,
            good,
        });
    }
    Ok(windows)
}

/// Changes still verifying that no runner looks at (a stop of tend cut
/// their window short): looked at again for what is left of it. One whose
/// spec is no longer declared is over (cleared): nothing verifies it.
pub fn resume(
    store: &dyn Store,
    desired: &DesiredState,
    known: &Known,
    under_way: &dyn Fn(&ResourceKey) -> bool,
) -> Result<Vec<Window>, StateError> {
    let index = desired.index();
    let now = Utc::now();
    let mut windows = Vec::new();
    for r in known
        .rows
        .iter()
        .filter(|r| r.status == ChangeStatus::Verifying && !under_way(&r.key))
    {
        let declared = index
            .get(&r.key)
            .is_some_and(|d| spec_digest(&d.spec) == r.digest);
        if !declared {
            store.settle_change(
                r.id,
                &ChangeVerdict {
                    status: ChangeStatus::Cleared,
                    cause: None,
                    incident: None,
                    rolled_back: false,
                },
            )?;
            continue;
        }
        windows.push(Window {
            change: r.id,
            key: r.key.clone(),
            until: tokio::time::Instant::now() + (r.until - now).to_std().unwrap_or_default(),
            what: ChangeRef {
                commit: r.commit.clone(),
                fields: fields_of(&r.fields),
                wave: r.wave,
                in_window: false,
                applied_at: Some(r.applied_at),
            },
            good: r.good.clone(),
        });
    }
    Ok(windows)
}
